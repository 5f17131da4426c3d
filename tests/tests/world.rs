//! The local AWS world itself: moto lifecycle, the ECS emulator through the real SDK, and the
//! ALB/ledger fixtures in moto.

use std::path::Path;
use std::time::SystemTime;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::primitives::DateTime;
use aws_sdk_ecs::types::{
    KeyValuePair, LaunchType, ServiceDeploymentLifecycleStage, ServiceDeploymentStatus,
};
use aws_sdk_elasticloadbalancingv2::types::{ActionTypeEnum, Rule};
use skewguard_world::aws::{Clients, Endpoints, function_env};
use skewguard_world::ecs_emulator::{
    self, ContainerDefinition, EcsEmulator, LoadBalancer, Rollback, ServiceDeployment,
    ServiceRevision, ServiceRevisionSummary,
};
use skewguard_world::fixtures::{
    AlbFixture, TEST_TRAFFIC_HEADER, Vpc, create_ledger_table, describe_rules, forward_weights,
    set_forward_weights,
};
use skewguard_world::moto::{MotoServer, WorldError};

/// An endpoint nothing listens on, for the services a test does not use.
const NOWHERE: &str = "http://127.0.0.1:9";

async fn moto() -> MotoServer {
    match MotoServer::start().await {
        Ok(server) => server,
        Err(err) => panic!("{err}"),
    }
}

fn same_instant(sdk: Option<&DateTime>, expected: SystemTime) {
    let sdk = sdk.expect("a timestamp");
    let expected = DateTime::from(expected);
    let diff = (sdk.as_nanos() - expected.as_nanos()).abs();
    assert!(diff < 1_000_000, "{sdk} vs {expected}");
}

// ---------------------------------------------------------------------------------------------
// moto

#[tokio::test]
async fn moto_starts_answers_and_leaves_no_process_after_drop() {
    let server = moto().await;
    let pid = server.pid();
    let endpoint = server.endpoint();
    assert_eq!(endpoint, format!("http://127.0.0.1:{}", server.port()));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("moto accepts connections");
    server.reset().await.expect("moto answers its API");

    drop(server);
    // Killed and reaped: not even a zombie's /proc entry stays.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "moto_server (pid {pid}) outlived its handle"
    );
}

#[tokio::test]
async fn a_missing_moto_binary_says_to_run_dev_setup() {
    let err = MotoServer::start_with(Path::new("/nonexistent/.venv/bin/moto_server"))
        .await
        .expect_err("there is no moto_server there");
    assert!(matches!(err, WorldError::MotoMissing { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("run `./dev setup`"), "{message}");
    assert!(
        message.contains("/nonexistent/.venv/bin/moto_server"),
        "{message}"
    );
}

#[tokio::test]
async fn a_moto_binary_that_dies_reports_its_output() {
    // `false` exits at once: the error must say so rather than time out.
    let err = MotoServer::start_with(Path::new("/bin/false"))
        .await
        .expect_err("/bin/false is no server");
    let message = err.to_string();
    assert!(message.contains("exited"), "{message}");
}

#[tokio::test]
async fn a_port_taken_before_moto_binds_it_is_retried_then_reported() {
    use std::os::unix::fs::PermissionsExt;
    // A stand-in that always loses the port race, the way werkzeug reports it.
    let script = std::env::temp_dir().join(format!("skewguard-busy-moto-{}", std::process::id()));
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"attempt on port $4\" >&2\n\
         echo 'OSError: [Errno 98] Address already in use' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = MotoServer::start_with(&script)
        .await
        .expect_err("the port is never free");
    std::fs::remove_file(&script).unwrap();
    let message = err.to_string();
    assert!(message.contains("Address already in use"), "{message}");
    assert!(message.contains("attempt on port"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// ECS emulator

struct EcsWorld {
    ecs: EcsEmulator,
    client: aws_sdk_ecs::Client,
}

async fn ecs_world() -> EcsWorld {
    let ecs = EcsEmulator::start().await.expect("the emulator binds");
    let clients = Clients::new(&Endpoints::new(ecs.endpoint(), NOWHERE)).await;
    EcsWorld {
        client: clients.ecs,
        ecs,
    }
}

#[tokio::test]
async fn ecs_emulator_answers_what_was_put_through_the_sdk() {
    let EcsWorld { ecs, client } = ecs_world().await;
    let (cluster, service) = ("prod", "checkout");

    let blue_td = ecs.register_task_definition(
        "checkout",
        vec![
            ContainerDefinition::new("app", "checkout:1")
                .env("DEPLOYMENT_ID", "blue-1")
                .label("skewguard.deployment-id", "blue-1")
                .port(8080),
        ],
    );
    assert_eq!(
        blue_td,
        "arn:aws:ecs:us-east-1:123456789012:task-definition/checkout:1"
    );
    // Revision 2 through the API.
    let registered = client
        .register_task_definition()
        .family("checkout")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("checkout:2")
                .environment(
                    KeyValuePair::builder()
                        .name("DEPLOYMENT_ID")
                        .value("green-2")
                        .build(),
                )
                .docker_labels("skewguard.deployment-id", "green-2")
                .port_mappings(
                    aws_sdk_ecs::types::PortMapping::builder()
                        .container_port(8080)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let green_td = registered
        .task_definition()
        .and_then(|td| td.task_definition_arn())
        .expect("an ARN")
        .to_owned();
    assert_eq!(
        green_td,
        "arn:aws:ecs:us-east-1:123456789012:task-definition/checkout:2"
    );

    let (tg1, tg2) = (
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/checkout-tg1/1111",
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/checkout-tg2/2222",
    );
    let prod_rule =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/lb/1/2/3";
    let test_rule =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/lb/1/2/4";
    let blue = ServiceRevision::new(cluster, service, &blue_td)
        .with_load_balancer(LoadBalancer::blue_green(
            ("app", 8080),
            tg1,
            tg2,
            prod_rule,
            Some(test_rule),
        ))
        .with_resolved(tg1, Some(prod_rule));
    let green = ServiceRevision::new(cluster, service, &green_td)
        .with_load_balancer(LoadBalancer::blue_green(
            ("app", 8080),
            tg1,
            tg2,
            prod_rule,
            Some(test_rule),
        ))
        .with_resolved(tg2, Some(prod_rule));
    assert!(
        blue.service_revision_arn
            .starts_with("arn:aws:ecs:us-east-1:123456789012:service-revision/prod/checkout/")
    );
    let id = blue.service_revision_arn.rsplit('/').next().unwrap();
    assert!(
        id.len() == 19 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    ecs.put_service_revision(blue.clone());
    ecs.put_service_revision(green.clone());

    let mut older = ServiceDeployment::new(cluster, service, &[], &blue.service_revision_arn);
    older.status = ServiceDeploymentStatus::Successful;
    older.finished_at = Some(older.created_at);
    older.created_at -= std::time::Duration::from_secs(3600);
    ecs.put_service_deployment(older.clone());
    let mut deployment = ServiceDeployment::new(
        cluster,
        service,
        &[&blue.service_revision_arn],
        &green.service_revision_arn,
    );
    deployment.source_service_revisions[0].running_task_count = 3;
    deployment.source_service_revisions[0].requested_task_count = 3;
    deployment.lifecycle_stage = Some(ServiceDeploymentLifecycleStage::PostTestTrafficShift);
    ecs.put_service_deployment(deployment.clone());

    // DescribeServiceRevisions
    let missing = ecs_emulator::new_service_revision_arn(cluster, service);
    let out = client
        .describe_service_revisions()
        .service_revision_arns(&green.service_revision_arn)
        .service_revision_arns(&missing)
        .send()
        .await
        .expect("DescribeServiceRevisions");
    let [revision] = out.service_revisions() else {
        panic!("{out:?}")
    };
    assert_eq!(
        revision.service_revision_arn(),
        Some(green.service_revision_arn.as_str())
    );
    assert_eq!(revision.service_arn(), Some(green.service_arn.as_str()));
    assert_eq!(
        revision.cluster_arn(),
        Some("arn:aws:ecs:us-east-1:123456789012:cluster/prod")
    );
    assert_eq!(revision.task_definition(), Some(green_td.as_str()));
    assert_eq!(revision.launch_type(), Some(&LaunchType::Fargate));
    same_instant(revision.created_at(), green.created_at);
    let lb = &revision.load_balancers()[0];
    assert_eq!(lb.target_group_arn(), Some(tg1));
    assert_eq!(lb.container_name(), Some("app"));
    assert_eq!(lb.container_port(), Some(8080));
    let advanced = lb.advanced_configuration().expect("advancedConfiguration");
    assert_eq!(advanced.alternate_target_group_arn(), Some(tg2));
    assert_eq!(advanced.production_listener_rule(), Some(prod_rule));
    assert_eq!(advanced.test_listener_rule(), Some(test_rule));
    assert!(advanced.role_arn().is_some());
    let resolved = revision
        .resolved_configuration()
        .expect("resolvedConfiguration");
    assert_eq!(resolved.load_balancers()[0].target_group_arn(), Some(tg2));
    assert_eq!(
        resolved.load_balancers()[0].production_listener_rule(),
        Some(prod_rule)
    );
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].arn(), Some(missing.as_str()));
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));

    // DescribeServiceDeployments
    let out = client
        .describe_service_deployments()
        .service_deployment_arns(&deployment.service_deployment_arn)
        .send()
        .await
        .expect("DescribeServiceDeployments");
    assert!(out.failures().is_empty());
    let [got] = out.service_deployments() else {
        panic!("{out:?}")
    };
    assert_eq!(
        got.service_deployment_arn(),
        Some(deployment.service_deployment_arn.as_str())
    );
    assert!(
        deployment
            .service_deployment_arn
            .starts_with("arn:aws:ecs:us-east-1:123456789012:service-deployment/prod/checkout/")
    );
    assert_eq!(got.service_arn(), Some(deployment.service_arn.as_str()));
    assert_eq!(got.cluster_arn(), Some(deployment.cluster_arn.as_str()));
    assert_eq!(got.status(), Some(&ServiceDeploymentStatus::InProgress));
    assert_eq!(
        got.lifecycle_stage(),
        Some(&ServiceDeploymentLifecycleStage::PostTestTrafficShift)
    );
    same_instant(got.created_at(), deployment.created_at);
    same_instant(got.started_at(), deployment.started_at.unwrap());
    same_instant(got.updated_at(), deployment.updated_at);
    assert_eq!(got.finished_at(), None);
    let [source] = got.source_service_revisions() else {
        panic!("{got:?}")
    };
    assert_eq!(source.arn(), Some(blue.service_revision_arn.as_str()));
    assert_eq!(source.running_task_count(), 3);
    assert_eq!(source.requested_task_count(), 3);
    assert_eq!(source.pending_task_count(), 0);
    assert_eq!(
        got.target_service_revision().and_then(|t| t.arn()),
        Some(green.service_revision_arn.as_str())
    );
    assert_eq!(
        got.deployment_configuration()
            .and_then(|c| c.strategy())
            .map(|s| s.as_str()),
        Some("BLUE_GREEN")
    );
    assert!(got.rollback().is_none());

    // Rollback, as a deployment engine would record it.
    let rollback_started = ecs_emulator::now();
    ecs.update_service_deployment(&deployment.service_deployment_arn, |d| {
        d.status = ServiceDeploymentStatus::RollbackInProgress;
        d.lifecycle_stage = Some(ServiceDeploymentLifecycleStage::ProductionTrafficShift);
        d.rollback = Some(Rollback {
            reason: "hook failed".to_owned(),
            started_at: rollback_started,
            service_revision_arn: blue.service_revision_arn.clone(),
        });
        d.target_service_revision = Some(ServiceRevisionSummary {
            requested_production_traffic_weight: Some(0.0),
            ..ServiceRevisionSummary::new(&green.service_revision_arn)
        });
    });
    let out = client
        .describe_service_deployments()
        .service_deployment_arns(&deployment.service_deployment_arn)
        .service_deployment_arns(
            "arn:aws:ecs:us-east-1:123456789012:service-deployment/prod/checkout/nope",
        )
        .send()
        .await
        .expect("DescribeServiceDeployments");
    let got = &out.service_deployments()[0];
    assert_eq!(
        got.status(),
        Some(&ServiceDeploymentStatus::RollbackInProgress)
    );
    let rollback = got.rollback().expect("rollback");
    assert_eq!(rollback.reason(), Some("hook failed"));
    assert_eq!(
        rollback.service_revision_arn(),
        Some(blue.service_revision_arn.as_str())
    );
    same_instant(rollback.started_at(), rollback_started);
    assert_eq!(
        got.target_service_revision()
            .and_then(|t| t.requested_production_traffic_weight()),
        Some(0.0)
    );
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));

    // DescribeTaskDefinition: by ARN, family:revision and family (latest).
    for reference in [blue_td.as_str(), "checkout:1"] {
        let out = client
            .describe_task_definition()
            .task_definition(reference)
            .send()
            .await
            .expect("DescribeTaskDefinition");
        let td = out.task_definition().expect("taskDefinition");
        assert_eq!(td.task_definition_arn(), Some(blue_td.as_str()));
        assert_eq!(td.family(), Some("checkout"));
        assert_eq!(td.revision(), 1);
        assert_eq!(td.status().map(|s| s.as_str()), Some("ACTIVE"));
        let container = &td.container_definitions()[0];
        assert_eq!(container.name(), Some("app"));
        assert_eq!(container.image(), Some("checkout:1"));
        assert_eq!(container.environment()[0].name(), Some("DEPLOYMENT_ID"));
        assert_eq!(container.environment()[0].value(), Some("blue-1"));
        assert_eq!(
            container
                .docker_labels()
                .and_then(|l| l.get("skewguard.deployment-id"))
                .map(String::as_str),
            Some("blue-1")
        );
        assert_eq!(container.port_mappings()[0].container_port(), Some(8080));
    }
    let latest = client
        .describe_task_definition()
        .task_definition("checkout")
        .send()
        .await
        .expect("DescribeTaskDefinition");
    let td = latest.task_definition().unwrap();
    assert_eq!(td.revision(), 2);
    assert_eq!(
        td.container_definitions()[0].environment()[0].value(),
        Some("green-2")
    );
    let err = client
        .describe_task_definition()
        .task_definition("checkout:9")
        .send()
        .await
        .expect_err("no revision 9");
    assert_eq!(err.code(), Some("ClientException"));

    // ListServiceDeployments: newest first, by name + cluster or by ARN.
    let out = client
        .list_service_deployments()
        .service(service)
        .cluster(cluster)
        .send()
        .await
        .expect("ListServiceDeployments");
    let arns: Vec<_> = out
        .service_deployments()
        .iter()
        .map(|d| d.service_deployment_arn().unwrap())
        .collect();
    assert_eq!(
        arns,
        [
            deployment.service_deployment_arn.as_str(),
            older.service_deployment_arn.as_str()
        ]
    );
    let brief = &out.service_deployments()[1];
    assert_eq!(brief.status(), Some(&ServiceDeploymentStatus::Successful));
    assert_eq!(
        brief.target_service_revision_arn(),
        Some(blue.service_revision_arn.as_str())
    );
    assert_eq!(brief.service_arn(), Some(older.service_arn.as_str()));
    assert_eq!(brief.cluster_arn(), Some(older.cluster_arn.as_str()));
    same_instant(brief.created_at(), older.created_at);
    same_instant(brief.started_at(), older.started_at.unwrap());
    same_instant(brief.finished_at(), older.finished_at.unwrap());
    let by_arn = client
        .list_service_deployments()
        .service(&deployment.service_arn)
        .status(ServiceDeploymentStatus::Successful)
        .send()
        .await
        .expect("ListServiceDeployments");
    assert_eq!(by_arn.service_deployments().len(), 1);
    let err = client
        .list_service_deployments()
        .service("nope")
        .cluster(cluster)
        .send()
        .await
        .expect_err("no such service");
    assert_eq!(err.code(), Some("ServiceNotFoundException"));
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_service_not_found_exception())
    );

    assert_eq!(
        ecs.calls(),
        [
            "RegisterTaskDefinition",
            "DescribeServiceRevisions",
            "DescribeServiceDeployments",
            "DescribeServiceDeployments",
            "DescribeTaskDefinition",
            "DescribeTaskDefinition",
            "DescribeTaskDefinition",
            "DescribeTaskDefinition",
            "ListServiceDeployments",
            "ListServiceDeployments",
            "ListServiceDeployments",
        ]
    );
}

#[tokio::test]
async fn ecs_emulator_injects_faults_and_rejects_unknown_operations() {
    let EcsWorld { ecs, client } = ecs_world().await;
    let td = ecs.register_task_definition("web", vec![ContainerDefinition::new("web", "web:1")]);

    ecs.fail_next("DescribeTaskDefinition", 400, "ThrottlingException");
    ecs.fail_next("DescribeTaskDefinition", 500, "ServerException");
    let err = client
        .describe_task_definition()
        .task_definition(&td)
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert_eq!(
        err.message(),
        Some("injected by the test: ThrottlingException")
    );
    let err = client
        .describe_task_definition()
        .task_definition(&td)
        .send()
        .await
        .expect_err("server error");
    assert_eq!(err.code(), Some("ServerException"));
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_server_exception())
    );
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    client
        .describe_task_definition()
        .task_definition(&td)
        .send()
        .await
        .expect("faults are used up");

    ecs.fail_next("DescribeServiceRevisions", 400, "AccessDeniedException");
    let err = client
        .describe_service_revisions()
        .service_revision_arns(ecs_emulator::new_service_revision_arn("c", "s"))
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDeniedException"));

    // An operation the emulator does not implement: an error, at once.
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.list_clusters().send(),
    )
    .await
    .expect("an answer, not a hang")
    .expect_err("not emulated");
    assert_eq!(err.code(), Some("UnknownOperationException"));
    assert!(
        err.message().unwrap_or_default().contains("ListClusters"),
        "{err:?}"
    );

    // Request validation.
    let err = client
        .describe_service_deployments()
        .send()
        .await
        .expect_err("no ARNs");
    assert_eq!(err.code(), Some("InvalidParameterException"));

    assert_eq!(
        ecs.calls(),
        [
            "DescribeTaskDefinition",
            "DescribeTaskDefinition",
            "DescribeTaskDefinition",
            "DescribeServiceRevisions",
            "ListClusters",
            "DescribeServiceDeployments",
        ]
    );
    assert_eq!(ecs.call_count("DescribeTaskDefinition"), 3);
}

#[tokio::test]
async fn ecs_emulator_describes_a_service_as_its_newest_revision_and_configuration_left_it() {
    let EcsWorld { ecs, client } = ecs_world().await;
    let td = ecs.register_task_definition("web", vec![ContainerDefinition::new("web", "web:1")]);
    ecs.put_service_revision(ServiceRevision::new("shop", "web", &td).with_load_balancer(
        LoadBalancer::blue_green(
            ("web", 8080),
            "tg-1",
            "tg-2",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/a/1/2/3",
            None,
        ),
    ));
    let web = ecs_emulator::service_arn("shop", "web");
    ecs.with_state(|s| {
        s.service_mut(&web).deployment_configuration = Some(serde_json::json!({
            "strategy": "BLUE_GREEN",
            "lifecycleHooks": [{
                "hookTargetArn": "arn:aws:lambda:us-east-1:123456789012:function:skewguard-post-shift",
                "lifecycleStages": ["POST_PRODUCTION_TRAFFIC_SHIFT"],
                "hookDetails": {"retention": "hold", "skewWindow": "1h"},
                "timeoutConfiguration": {"timeoutInMinutes": 120, "action": "ROLLBACK"},
            }],
        }))
    });
    for given in ["web", web.as_str()] {
        let answer = client
            .describe_services()
            .cluster("shop")
            .services(given)
            .send()
            .await
            .unwrap();
        let service = &answer.services()[0];
        assert_eq!(service.service_arn(), Some(web.as_str()));
        assert_eq!(service.task_definition(), Some(td.as_str()));
        assert_eq!(
            service.deployment_controller().unwrap().r#type().as_str(),
            "ECS"
        );
        let configuration = service.deployment_configuration().unwrap();
        assert_eq!(configuration.strategy().unwrap().as_str(), "BLUE_GREEN");
        let hook = &configuration.lifecycle_hooks()[0];
        assert_eq!(
            hook.timeout_configuration().unwrap().timeout_in_minutes(),
            Some(120)
        );
        assert!(
            service.load_balancers()[0]
                .advanced_configuration()
                .unwrap()
                .production_listener_rule()
                .unwrap()
                .ends_with("/3")
        );
    }
    let answer = client
        .describe_services()
        .cluster("shop")
        .services("nope")
        .send()
        .await
        .unwrap();
    assert!(answer.services().is_empty());
    assert_eq!(answer.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn ecs_emulator_stops_when_dropped() {
    let ecs = EcsEmulator::start().await.unwrap();
    let addr = ecs.addr();
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("listening");
    drop(ecs);
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Fixtures in moto

fn weights(rule: &Rule) -> Vec<(String, i32)> {
    let [action] = rule.actions() else {
        panic!("one action: {rule:?}")
    };
    assert_eq!(action.r#type(), Some(&ActionTypeEnum::Forward));
    action
        .forward_config()
        .expect("a weighted ForwardConfig")
        .target_groups()
        .iter()
        .map(|t| {
            (
                t.target_group_arn().unwrap().to_owned(),
                t.weight().unwrap(),
            )
        })
        .collect()
}

fn rule<'a>(rules: &'a [Rule], arn: &str) -> &'a Rule {
    rules
        .iter()
        .find(|r| r.rule_arn() == Some(arn))
        .unwrap_or_else(|| panic!("no rule {arn} in {rules:?}"))
}

#[tokio::test]
async fn fixtures_build_an_ecs_blue_green_alb_and_the_ledger_in_moto() {
    let moto = moto().await;
    let clients = Clients::new(&Endpoints::new(NOWHERE, moto.endpoint())).await;
    let elb = &clients.elbv2;
    let vpc = Vpc::default_in(&moto.endpoint())
        .await
        .expect("default VPC");
    assert!(vpc.vpc_id.starts_with("vpc-"), "{vpc:?}");
    assert!(vpc.subnet_ids.iter().all(|s| s.starts_with("subnet-")));

    // Default rule as production, plus a header test rule.
    let alb = AlbFixture::with_default_rule_as_production(elb, &vpc, "checkout")
        .await
        .expect("default-rule ALB")
        .with_test_rule(elb, 10)
        .await
        .expect("test rule");
    assert_eq!(alb.port, 80);
    let rules = describe_rules(elb, &alb.listener_arn).await.unwrap();
    assert_eq!(rules.len(), 2);
    let production = rule(&rules, &alb.production_rule_arn);
    assert_eq!(production.is_default(), Some(true));
    assert_eq!(production.priority(), Some("default"));
    assert!(production.conditions().is_empty());
    let initial = vec![(alb.blue_tg.clone(), 1), (alb.green_tg.clone(), 0)];
    assert_eq!(weights(production), initial);
    let test = rule(&rules, alb.test_rule_arn.as_deref().unwrap());
    assert_eq!(test.priority(), Some("10"));
    assert_eq!(test.is_default(), Some(false));
    let header = test.conditions()[0]
        .http_header_config()
        .expect("HttpHeaderConfig");
    assert_eq!(header.http_header_name(), Some(TEST_TRAFFIC_HEADER.0));
    assert_eq!(header.values(), [TEST_TRAFFIC_HEADER.1]);
    assert_eq!(weights(test), initial);
    let groups = elb
        .describe_target_groups()
        .target_group_arns(&alb.blue_tg)
        .target_group_arns(&alb.green_tg)
        .send()
        .await
        .unwrap();
    for tg in groups.target_groups() {
        assert_eq!(tg.vpc_id(), Some(vpc.vpc_id.as_str()));
        assert_eq!(tg.port(), Some(80));
        assert_eq!(tg.target_type().map(|t| t.as_str()), Some("ip"));
        assert_eq!(tg.protocol().map(|p| p.as_str()), Some("HTTP"));
    }

    // Shifting weights (as ECS does) shows in DescribeRules.
    set_forward_weights(
        elb,
        &alb.production_rule_arn,
        &[(&alb.blue_tg, 0), (&alb.green_tg, 1)],
    )
    .await
    .unwrap();
    assert_eq!(
        forward_weights(elb, &alb.production_rule_arn)
            .await
            .unwrap(),
        [(alb.blue_tg.clone(), 0), (alb.green_tg.clone(), 1)]
    );

    // Two services on one listener, by path.
    let cart = AlbFixture::with_path_rule_as_production(elb, &vpc, "shop", None, 100, "/cart/*")
        .await
        .expect("path-rule ALB")
        .with_test_rule(elb, 50)
        .await
        .expect("test rule");
    let search = AlbFixture::with_path_rule_as_production(
        elb,
        &vpc,
        "search",
        Some(&cart.listener_arn),
        200,
        "/search/*",
    )
    .await
    .expect("second service on the same listener");
    assert_eq!(search.listener_arn, cart.listener_arn);
    assert_eq!(search.load_balancer_arn, cart.load_balancer_arn);
    assert_ne!(search.blue_tg, cart.blue_tg);
    let rules = describe_rules(elb, &cart.listener_arn).await.unwrap();
    assert_eq!(rules.len(), 4, "{rules:?}");
    let default = rules.iter().find(|r| r.is_default() == Some(true)).unwrap();
    assert_eq!(
        default.actions()[0].r#type(),
        Some(&ActionTypeEnum::FixedResponse)
    );
    for (fixture, priority, pattern) in [(&cart, "100", "/cart/*"), (&search, "200", "/search/*")] {
        let production = rule(&rules, &fixture.production_rule_arn);
        assert_eq!(production.priority(), Some(priority));
        let paths = production.conditions()[0]
            .path_pattern_config()
            .expect("PathPatternConfig");
        assert_eq!(paths.values(), [pattern]);
        assert_eq!(
            weights(production),
            [(fixture.blue_tg.clone(), 1), (fixture.green_tg.clone(), 0)]
        );
    }
    let cart_test = rule(&rules, cart.test_rule_arn.as_deref().unwrap());
    assert_eq!(cart_test.conditions().len(), 2);
    assert!(cart_test.conditions().iter().any(|c| {
        c.path_pattern_config()
            .is_some_and(|p| p.values() == ["/cart/*"])
    }));

    // The ledger table.
    create_ledger_table(&clients.dynamodb, "skewguard-ledger")
        .await
        .expect("ledger table");
    let table = clients
        .dynamodb
        .describe_table()
        .table_name("skewguard-ledger")
        .send()
        .await
        .expect("the table exists");
    let table = table.table().unwrap();
    let keys: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect();
    assert_eq!(keys, [("serviceArn", "HASH"), ("deploymentId", "RANGE")]);
    assert_eq!(
        table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
}

// ---------------------------------------------------------------------------------------------
// function_env, as a hook process sees it

const PROBE_MARKER: &str = "SKEWGUARD_WORLD_ENV_PROBE";

/// Runs in a child process with [`function_env`]: standard config loading must reach every
/// stand-in. Does nothing when run as an ordinary test.
#[tokio::test]
async fn function_env_probe() {
    if std::env::var_os(PROBE_MARKER).is_none() {
        return;
    }
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let ecs = aws_sdk_ecs::Client::new(&config);
    let td = ecs
        .describe_task_definition()
        .task_definition("probe")
        .send()
        .await
        .expect("ECS through AWS_ENDPOINT_URL_ECS");
    assert_eq!(td.task_definition().and_then(|t| t.family()), Some("probe"));
    aws_sdk_elasticloadbalancingv2::Client::new(&config)
        .describe_load_balancers()
        .send()
        .await
        .expect("ELBv2 through AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2");
    let tables = aws_sdk_dynamodb::Client::new(&config)
        .list_tables()
        .send()
        .await
        .expect("DynamoDB through AWS_ENDPOINT_URL_DYNAMODB");
    assert_eq!(tables.table_names(), ["probe-table"]);
}

#[tokio::test]
async fn function_env_reaches_the_stand_ins_from_another_process() {
    let moto = moto().await;
    let ecs = EcsEmulator::start().await.unwrap();
    ecs.register_task_definition("probe", vec![ContainerDefinition::new("app", "probe:1")]);
    let endpoints = Endpoints::new(ecs.endpoint(), moto.endpoint());
    let clients = Clients::new(&endpoints).await;
    create_ledger_table(&clients.dynamodb, "probe-table")
        .await
        .unwrap();

    let env = function_env(&endpoints);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "AWS_ENDPOINT_URL_ECS",
        "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_MAX_ATTEMPTS",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }

    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "function_env_probe", "--nocapture"])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .envs(env)
        .env(PROBE_MARKER, "1")
        .output()
        .await
        .expect("the test binary runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "probe failed:\n{report}");
    assert!(
        report.contains("1 passed"),
        "the probe did not run:\n{report}"
    );
    assert_eq!(ecs.calls(), ["DescribeTaskDefinition"]);
}
