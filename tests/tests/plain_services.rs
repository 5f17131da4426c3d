//! Plain ECS services in the local world (what a retention service is): the ECS emulator's
//! CreateService / UpdateService / DeleteService / tags through the real SDK, and the rolling
//! scheduler running their tasks as real processes registered in their target groups.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, LaunchType, LoadBalancer,
    NetworkConfiguration, PropagateTags, ServiceField, Tag,
};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use skewguard_world::aws::{Clients, Endpoints};
use skewguard_world::ecs_emulator::{self, ContainerDefinition, EcsEmulator};
use skewguard_world::engine::{PlaceholderTasks, TaskRunner};
use skewguard_world::fixtures::{create_target_group, forward_weights, set_forward_weights};
use skewguard_world::live::CheckoutTasks;
use skewguard_world::world::{CLUSTER, World};

/// An endpoint nothing listens on, for the services a test does not use.
const NOWHERE: &str = "http://127.0.0.1:9";

async fn emulator_alone() -> (EcsEmulator, aws_sdk_ecs::Client) {
    let ecs = EcsEmulator::start().await.expect("the emulator binds");
    let clients = Clients::new(&Endpoints::new(ecs.endpoint(), NOWHERE)).await;
    (ecs, clients.ecs)
}

fn network() -> NetworkConfiguration {
    NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets("subnet-1")
                .subnets("subnet-2")
                .security_groups("sg-1")
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .unwrap(),
        )
        .build()
}

/// The world with the hooks in process, its tasks run by `tasks`.
async fn world_running(tasks: Arc<dyn TaskRunner>) -> World {
    World::start_with(
        |clients| {
            Arc::new(skewguard_world::engine::InProcess {
                clients,
                defaults: Default::default(),
            })
        },
        tasks,
    )
    .await
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn task_definition(ecs: &EcsEmulator, id: &str) -> String {
    ecs.register_task_definition(
        "web",
        vec![
            ContainerDefinition::new("web", &format!("web:{id}"))
                .env("DEPLOYMENT_ID", id)
                .env("CART_SCHEMA", "v1")
                .port(8080),
        ],
    )
}

#[tokio::test]
async fn create_service_answers_the_service_and_a_repeated_request_is_idempotent() {
    let (ecs, client) = emulator_alone().await;
    let td = task_definition(&ecs, "v1");
    let create = || {
        client
            .create_service()
            .cluster(CLUSTER)
            .service_name("web-retained")
            .task_definition(&td)
            .desired_count(2)
            .launch_type(LaunchType::Fargate)
            .platform_version("1.4.0")
            .network_configuration(network())
            .tags(tag("skewguard:managed", "true"))
            .tags(tag("skewguard:retains", "v1"))
            .propagate_tags(PropagateTags::Service)
            .client_token("token-1")
    };
    let created = create().send().await.unwrap();
    let service = created.service().unwrap();
    let arn = ecs_emulator::service_arn(CLUSTER, "web-retained");
    assert_eq!(service.service_arn(), Some(arn.as_str()));
    assert_eq!(service.status(), Some("ACTIVE"));
    assert_eq!(service.desired_count(), 2);
    assert_eq!(service.task_definition(), Some(td.as_str()));
    assert_eq!(service.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(service.platform_version(), Some("1.4.0"));
    assert_eq!(service.propagate_tags(), Some(&PropagateTags::Service));
    assert_eq!(
        service.deployment_controller().unwrap().r#type().as_str(),
        "ECS"
    );
    assert_eq!(
        service
            .network_configuration()
            .unwrap()
            .awsvpc_configuration()
            .unwrap()
            .subnets(),
        ["subnet-1", "subnet-2"]
    );
    assert_eq!(service.deployments()[0].status(), Some("PRIMARY"));

    // The same request with the same client token answers the same service, nothing new.
    let again = create().send().await.unwrap();
    assert_eq!(
        again.service().unwrap().created_at(),
        service.created_at(),
        "the same service"
    );
    // Anything else under that name is refused.
    let err = create()
        .client_token("token-2")
        .send()
        .await
        .expect_err("another client token is another request");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    assert_eq!(
        err.message(),
        Some("Creation of service was not idempotent.")
    );
    let err = create()
        .desired_count(3)
        .send()
        .await
        .expect_err("other parameters");
    assert_eq!(err.code(), Some("InvalidParameterException"));

    // Tags: on DescribeServices with include=TAGS, and through the tagging API.
    let described = client
        .describe_services()
        .cluster(CLUSTER)
        .services("web-retained")
        .include(ServiceField::Tags)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = described.services()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(
        tags,
        [("skewguard:managed", "true"), ("skewguard:retains", "v1")]
    );
    client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("skewguard:retains", "v1-b"))
        .tags(tag("owner", "shop"))
        .send()
        .await
        .unwrap();
    client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("owner")
        .send()
        .await
        .unwrap();
    let listed = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = listed
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(
        tags,
        [("skewguard:managed", "true"), ("skewguard:retains", "v1-b")]
    );
    let err = client
        .list_tags_for_resource()
        .resource_arn(ecs_emulator::service_arn(CLUSTER, "nope"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
}

#[tokio::test]
async fn create_service_refuses_what_ecs_refuses() {
    let (ecs, client) = emulator_alone().await;
    let td = task_definition(&ecs, "v1");
    let err = client
        .create_service()
        .cluster(CLUSTER)
        .service_name("both")
        .task_definition(&td)
        .launch_type(LaunchType::Fargate)
        .capacity_provider_strategy(
            CapacityProviderStrategyItem::builder()
                .capacity_provider("FARGATE_SPOT")
                .weight(1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterException"));
    assert!(
        err.message()
            .unwrap()
            .contains("launch type and capacity provider strategy"),
        "{err:?}"
    );
    let err = client
        .create_service()
        .cluster(CLUSTER)
        .service_name("no-td")
        .task_definition("web:99")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.message(), Some("TaskDefinition not found."));

    // A capacity provider strategy is kept as given, with no launch type.
    let created = client
        .create_service()
        .cluster(CLUSTER)
        .service_name("spot")
        .task_definition(&td)
        .capacity_provider_strategy(
            CapacityProviderStrategyItem::builder()
                .capacity_provider("FARGATE_SPOT")
                .weight(1)
                .base(1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let service = created.service().unwrap();
    assert_eq!(service.launch_type(), None);
    assert_eq!(
        service.capacity_provider_strategy()[0].capacity_provider(),
        "FARGATE_SPOT"
    );
    assert_eq!(service.platform_version(), Some("LATEST"));
}

#[tokio::test]
async fn update_and_delete_follow_the_service_lifecycle() {
    let (ecs, client) = emulator_alone().await;
    let td = task_definition(&ecs, "v1");
    client
        .create_service()
        .cluster(CLUSTER)
        .service_name("retained")
        .task_definition(&td)
        .desired_count(1)
        .send()
        .await
        .unwrap();
    let err = client
        .delete_service()
        .cluster(CLUSTER)
        .service("retained")
        .send()
        .await
        .expect_err("scaled above 0");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    assert_eq!(
        err.message(),
        Some("The service cannot be stopped while it is scaled above 0.")
    );
    let updated = client
        .update_service()
        .cluster(CLUSTER)
        .service("retained")
        .desired_count(0)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.service().unwrap().desired_count(), 0);
    let deleted = client
        .delete_service()
        .cluster(CLUSTER)
        .service("retained")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.service().unwrap().status(), Some("DRAINING"));

    // A draining service takes no update, no second delete, and its name is not free yet.
    let err = client
        .update_service()
        .cluster(CLUSTER)
        .service("retained")
        .desired_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ServiceNotActiveException"));
    let err = client
        .delete_service()
        .cluster(CLUSTER)
        .service("retained")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ServiceNotActiveException"));
    let err = client
        .create_service()
        .cluster(CLUSTER)
        .service_name("retained")
        .task_definition(&td)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        Some("Unable to Start a service that is still Draining.")
    );

    // A missing service.
    for err in [
        client
            .update_service()
            .cluster(CLUSTER)
            .service("nope")
            .desired_count(1)
            .send()
            .await
            .unwrap_err()
            .into_service_error()
            .meta()
            .clone(),
        client
            .delete_service()
            .cluster(CLUSTER)
            .service("nope")
            .force(true)
            .send()
            .await
            .unwrap_err()
            .into_service_error()
            .meta()
            .clone(),
    ] {
        assert_eq!(err.code(), Some("ServiceNotFoundException"));
        assert_eq!(err.message(), Some("Service not found."));
    }

    // force deletes a service still scaled up.
    client
        .create_service()
        .cluster(CLUSTER)
        .service_name("forced")
        .task_definition(&td)
        .desired_count(3)
        .send()
        .await
        .unwrap();
    let deleted = client
        .delete_service()
        .cluster(CLUSTER)
        .service("forced")
        .force(true)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.service().unwrap().desired_count(), 0);
    assert_eq!(deleted.service().unwrap().status(), Some("DRAINING"));
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still {why} after 10 s")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn healthy_targets(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    tg: &str,
) -> Vec<(String, i32)> {
    let health = elb
        .describe_target_health()
        .target_group_arn(tg)
        .send()
        .await
        .unwrap();
    let mut targets: Vec<(String, i32)> = health
        .target_health_descriptions()
        .iter()
        .filter(|d| {
            d.target_health().and_then(|h| h.state()) == Some(&TargetHealthStateEnum::Healthy)
        })
        .map(|d| {
            let t = d.target().unwrap();
            (t.id().unwrap().to_owned(), t.port().unwrap())
        })
        .collect();
    targets.sort();
    targets
}

async fn deployment_id_at(ip: &str, port: i32) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect((ip, u16::try_from(port).unwrap()))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/healthz")
        .header("host", ip)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response
        .headers()
        .get("x-deployment-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// Needs `cargo build -p checkout` first (as every test of the example backend does).
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_service_runs_real_tasks_in_its_own_target_group_once_a_listener_uses_it() {
    let world = world_running(Arc::new(CheckoutTasks)).await;
    let (ecs, elb) = (world.clients.ecs.clone(), world.clients.elbv2.clone());
    let td = task_definition(&world.ecs, "v1");
    let tg = create_target_group(&elb, &world.vpc, "web-retained")
        .await
        .unwrap();
    let create = || {
        ecs.create_service()
            .cluster(CLUSTER)
            .service_name("web-retained")
            .task_definition(&td)
            .desired_count(2)
            .launch_type(LaunchType::Fargate)
            .network_configuration(network())
            .load_balancers(
                LoadBalancer::builder()
                    .target_group_arn(&tg)
                    .container_name("web")
                    .container_port(8080)
                    .build(),
            )
    };
    // No listener uses the target group yet: refused as ECS refuses it.
    let err = create()
        .send()
        .await
        .expect_err("no associated load balancer");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    assert_eq!(
        err.message().unwrap(),
        format!(
            "The target group with targetGroupArn {tg} does not have an associated load balancer."
        )
    );
    // At weight 0 beside production's target groups, it is associated (and gets no traffic).
    set_forward_weights(
        &elb,
        &world.alb.production_rule_arn,
        &[(&world.alb.blue_tg, 1), (&world.alb.green_tg, 0), (&tg, 0)],
    )
    .await
    .unwrap();
    assert_eq!(
        forward_weights(&elb, &world.alb.production_rule_arn)
            .await
            .unwrap()
            .len(),
        3
    );
    create().send().await.unwrap();
    let arn = ecs_emulator::service_arn(CLUSTER, "web-retained");

    // Two real processes serving v1, each on its own address, registered and healthy.
    eventually("two healthy targets", || async {
        let targets = healthy_targets(&elb, &tg).await;
        (targets.len() == 2)
            .then_some(())
            .ok_or(format!("{targets:?}"))
    })
    .await;
    let targets = healthy_targets(&elb, &tg).await;
    assert_ne!(targets[0].0, targets[1].0, "one address per task");
    for (ip, port) in &targets {
        assert_eq!(deployment_id_at(ip, *port).await.unwrap(), "v1");
    }
    world.scheduler.settle().await;
    let described = ecs
        .describe_services()
        .cluster(CLUSTER)
        .services(&arn)
        .send()
        .await
        .unwrap();
    let service = &described.services()[0];
    assert_eq!((service.running_count(), service.pending_count()), (2, 0));

    // Scaled to 1: one task deregistered and stopped.
    ecs.update_service()
        .cluster(CLUSTER)
        .service(&arn)
        .desired_count(1)
        .send()
        .await
        .unwrap();
    eventually("one healthy target", || async {
        let now = healthy_targets(&elb, &tg).await;
        (now.len() == 1).then_some(()).ok_or(format!("{now:?}"))
    })
    .await;
    let remaining = healthy_targets(&elb, &tg).await;
    let stopped: Vec<_> = targets.iter().filter(|t| !remaining.contains(t)).collect();
    assert_eq!(stopped.len(), 1);
    eventually("the stopped task's process is gone", || async {
        match deployment_id_at(&stopped[0].0, stopped[0].1).await {
            Err(_) => Ok(()),
            Ok(id) => Err(format!("still serving {id}")),
        }
    })
    .await;

    // Scaled to 0 and deleted: DRAINING, then INACTIVE with nothing registered.
    ecs.update_service()
        .cluster(CLUSTER)
        .service(&arn)
        .desired_count(0)
        .send()
        .await
        .unwrap();
    ecs.delete_service()
        .cluster(CLUSTER)
        .service(&arn)
        .send()
        .await
        .unwrap();
    eventually("INACTIVE", || async {
        let described = ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(&arn)
            .send()
            .await
            .unwrap();
        let status = described.services()[0]
            .status()
            .unwrap_or_default()
            .to_owned();
        (status == "INACTIVE").then_some(()).ok_or(status)
    })
    .await;
    assert!(healthy_targets(&elb, &tg).await.is_empty());
    assert!(world.scheduler.task_addresses(&arn).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_never_healthy_service_stays_pending_and_registers_nothing() {
    let world = world_running(Arc::new(PlaceholderTasks)).await;
    let (ecs, elb) = (world.clients.ecs.clone(), world.clients.elbv2.clone());
    let td = task_definition(&world.ecs, "v1");
    let tg = create_target_group(&elb, &world.vpc, "sick").await.unwrap();
    set_forward_weights(
        &elb,
        &world.alb.production_rule_arn,
        &[(&world.alb.blue_tg, 1), (&world.alb.green_tg, 0), (&tg, 0)],
    )
    .await
    .unwrap();
    // The fault is set before the service exists, by pattern.
    world
        .ecs
        .set_never_healthy(&ecs_emulator::service_arn(CLUSTER, "sick-*"), true);
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name("sick-v1")
        .task_definition(&td)
        .desired_count(2)
        .load_balancers(
            LoadBalancer::builder()
                .target_group_arn(&tg)
                .container_name("web")
                .container_port(8080)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let arn = ecs_emulator::service_arn(CLUSTER, "sick-v1");
    world.scheduler.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let service = world.ecs.service(&arn).unwrap();
    assert_eq!((service.running_count, service.pending_count), (0, 2));
    assert!(healthy_targets(&elb, &tg).await.is_empty());

    // Healed: the same tasks register.
    world
        .ecs
        .set_never_healthy(&ecs_emulator::service_arn(CLUSTER, "sick-*"), false);
    world.scheduler.settle().await;
    assert_eq!(healthy_targets(&elb, &tg).await.len(), 2);
    let service = world.ecs.service(&arn).unwrap();
    assert_eq!((service.running_count, service.pending_count), (2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_revision_describes_everything_a_clone_needs() {
    let world = World::start().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            serde_json::json!({"retention": "hold", "skewWindow": "1h"}),
        )
        .await;
    let described = world
        .clients
        .ecs
        .describe_services()
        .cluster(CLUSTER)
        .services(&service)
        .send()
        .await
        .unwrap();
    let revision_arn = world.ecs.with_state(|s| {
        s.service_revisions
            .values()
            .find(|r| r.service_arn == service)
            .map(|r| r.service_revision_arn.clone())
            .unwrap()
    });
    let revisions = world
        .clients
        .ecs
        .describe_service_revisions()
        .service_revision_arns(&revision_arn)
        .send()
        .await
        .unwrap();
    let revision = &revisions.service_revisions()[0];
    assert_eq!(
        revision.task_definition(),
        described.services()[0].task_definition()
    );
    assert_eq!(revision.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(revision.platform_version(), Some("1.4.0"));
    let awsvpc = revision
        .network_configuration()
        .unwrap()
        .awsvpc_configuration()
        .unwrap();
    assert_eq!(awsvpc.subnets().len(), 2);
    assert_eq!(awsvpc.security_groups().len(), 1);
    let lb = &revision.load_balancers()[0];
    assert_eq!(lb.target_group_arn(), Some(world.alb.blue_tg.as_str()));
    assert_eq!(
        (lb.container_name(), lb.container_port()),
        (Some("web"), Some(8080))
    );
    let resolved = revision.resolved_configuration().unwrap();
    assert_eq!(
        resolved.load_balancers()[0].target_group_arn(),
        Some(world.alb.blue_tg.as_str())
    );
}

/// A target group counts as associated whichever load balancer forwards to it, however many the
/// account has: ELBv2 lists load balancers a page at a time (moto: 50), and the one that uses
/// the group may be on a later page.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_group_used_by_a_later_load_balancer_counts_as_associated() {
    let world = world_running(Arc::new(PlaceholderTasks)).await;
    let (ecs, elb) = (world.clients.ecs.clone(), world.clients.elbv2.clone());
    let mut last = None;
    for n in 0..51 {
        last = Some(
            skewguard_world::fixtures::AlbFixture::with_path_rule_as_production(
                &elb,
                &world.vpc,
                &format!("many{n:02}"),
                None,
                100,
                "/many/*",
            )
            .await
            .unwrap(),
        );
    }
    let last = last.unwrap();
    let td = task_definition(&world.ecs, "v1");
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name("on-the-last-balancer")
        .task_definition(&td)
        .desired_count(1)
        .launch_type(LaunchType::Fargate)
        .network_configuration(network())
        .load_balancers(
            LoadBalancer::builder()
                .target_group_arn(&last.blue_tg)
                .container_name("web")
                .container_port(8080)
                .build(),
        )
        .send()
        .await
        .expect("its target group is used by the 52nd load balancer's production rule");
}
