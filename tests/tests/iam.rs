//! The local world refuses what a function's role in infra/template.yaml does not allow: the
//! roles as the evaluator reads them, and a missing grant failing a real deployment.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::Status;
use skewguard_world::engine::{Intervention, Invoker, Outcome, PlaceholderTasks};
use skewguard_world::iam::{AuthzRequest, Roles, WorldValues};
use skewguard_world::live::ProcessInvoker;
use skewguard_world::world::{CLUSTER, StandIns, TABLE};

const SERVICE: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
const REVISION: &str =
    "arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/1234567890123456789";
const DEPLOYMENT: &str =
    "arn:aws:ecs:us-east-1:123456789012:service-deployment/shop/web/EZe5RNVLH6PPzHXINuP28";
const LISTENER: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";
const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
const TABLE_ARN: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/skewguard-ledger";

fn template() -> String {
    std::fs::read_to_string(Roles::template_path()).expect("infra/template.yaml")
}

fn tagged(request: AuthzRequest, prefix: &str) -> AuthzRequest {
    request
        .with(&format!("{prefix}/skewguard:service"), vec![SERVICE.into()])
        .with(
            &format!("{prefix}/skewguard:deployment-id"),
            vec!["v2".into()],
        )
}

#[test]
fn the_roles_of_the_template_allow_what_each_function_does_and_no_more() {
    let roles = Roles::world().unwrap();
    let hook = roles.role("post-test-traffic").unwrap();
    let post_shift = roles.role("post-shift").unwrap();
    let reconciler = roles.role("reconciler").unwrap();
    let allows = |role: &skewguard_world::iam::Role, r: AuthzRequest| role.allows(&r);

    for resource in [SERVICE, REVISION] {
        assert!(allows(
            hook,
            AuthzRequest::new("ecs:DescribeServiceRevisions", resource)
        ));
    }
    for resource in [SERVICE, DEPLOYMENT] {
        assert!(allows(
            hook,
            AuthzRequest::new("ecs:DescribeServiceDeployments", resource)
        ));
        assert!(!allows(
            post_shift,
            AuthzRequest::new("ecs:DescribeServiceDeployments", resource)
        ));
    }
    let other_cluster = SERVICE.replace("/shop/", "/other/");
    assert!(!allows(
        hook,
        AuthzRequest::new("ecs:DescribeServiceRevisions", &other_cluster)
    ));
    assert!(allows(
        reconciler,
        AuthzRequest::new("ecs:ListServiceDeployments", SERVICE)
    ));
    assert!(!allows(
        hook,
        AuthzRequest::new("ecs:ListServiceDeployments", SERVICE)
    ));
    assert!(allows(
        hook,
        AuthzRequest::new("ecs:DescribeTaskDefinition", "*")
    ));

    // Pins: created only with both tags, tagged only on creation, deleted only when tagged.
    let create = AuthzRequest::new("elasticloadbalancing:CreateRule", LISTENER);
    assert!(!allows(hook, create.clone()));
    assert!(allows(hook, tagged(create, "aws:RequestTag")));
    let add_tags = tagged(
        AuthzRequest::new("elasticloadbalancing:AddTags", RULE),
        "aws:RequestTag",
    );
    assert!(!allows(hook, add_tags.clone()));
    assert!(allows(
        hook,
        add_tags.with(
            "elasticloadbalancing:CreateAction",
            vec!["CreateRule".into()]
        )
    ));
    let delete = AuthzRequest::new("elasticloadbalancing:DeleteRule", RULE);
    assert!(
        !allows(hook, delete.clone()),
        "an untagged rule (ECS's production rule)"
    );
    assert!(allows(hook, tagged(delete, "aws:ResourceTag")));
    let nlb_rule = RULE.replace("/app/", "/net/");
    assert!(!allows(
        hook,
        tagged(
            AuthzRequest::new("elasticloadbalancing:DeleteRule", &nlb_rule),
            "aws:ResourceTag"
        )
    ));
    assert!(!allows(
        hook,
        AuthzRequest::new("elasticloadbalancing:ModifyRule", RULE)
    ));

    assert!(allows(
        hook,
        AuthzRequest::new("dynamodb:UpdateItem", TABLE_ARN)
    ));
    assert!(!allows(hook, AuthzRequest::new("dynamodb:Scan", TABLE_ARN)));
    assert!(allows(
        reconciler,
        AuthzRequest::new("dynamodb:Scan", TABLE_ARN)
    ));
    assert!(allows(
        hook,
        AuthzRequest::new("dynamodb:DeleteItem", TABLE_ARN)
    ));
    assert!(!allows(
        hook,
        AuthzRequest::new("dynamodb:BatchWriteItem", TABLE_ARN)
    ));
    // The sweep queue: the reconciler sends to it (a scheduled run) and its event source mapping
    // works it with the reconciler's role; the hooks do neither; no other queue.
    let sweep = format!(
        "arn:aws:sqs:us-east-1:123456789012:{}",
        skewguard_world::sweep::QUEUE
    );
    for action in [
        "sqs:SendMessage",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    ] {
        assert!(
            allows(reconciler, AuthzRequest::new(action, &sweep)),
            "{action}"
        );
        assert!(!allows(hook, AuthzRequest::new(action, &sweep)), "{action}");
    }
    assert!(!allows(
        reconciler,
        AuthzRequest::new("sqs:PurgeQueue", &sweep)
    ));
    assert!(!allows(
        reconciler,
        AuthzRequest::new("sqs:SendMessage", &sweep.replace("-sweep", "-orders"))
    ));
    let other_table = TABLE_ARN.replace("skewguard-ledger", "orders");
    assert!(!allows(
        hook,
        AuthzRequest::new("dynamodb:Query", &other_table)
    ));
}

/// A request carrying skewguard's three tags, as a retention copy's create sends them.
fn retention_tagged(request: AuthzRequest, managed: &str) -> AuthzRequest {
    request
        .with("aws:RequestTag/skewguard:managed", vec![managed.into()])
        .with("aws:RequestTag/skewguard:service", vec!["web".into()])
        .with("aws:RequestTag/skewguard:deployment-id", vec!["v1".into()])
        .with(
            "aws:TagKeys",
            vec![
                "skewguard:managed".into(),
                "skewguard:service".into(),
                "skewguard:deployment-id".into(),
            ],
        )
}

#[test]
fn post_shift_creates_retention_copies_only_tagged_and_named_as_skewguard_names_them() {
    let roles = Roles::world().unwrap();
    let post_shift = roles.role("post-shift").unwrap();
    let others = [
        roles.role("post-test-traffic").unwrap(),
        roles.role("production-shift").unwrap(),
        roles.role("reconciler").unwrap(),
    ];
    let allows = |role: &skewguard_world::iam::Role, r: &AuthzRequest| role.allows(r);
    let copy = SERVICE.replace("/web", "/web-sg-v1");
    let copy_tg = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sg-0123456789abcdef/0000000000000000";
    let blue_tg =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-blue/6d0ecf831eec9f09";

    // The quota check and the copy's health: reads with no resource-level permissions.
    for action in [
        "elasticloadbalancing:DescribeListeners",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
    ] {
        assert!(
            allows(post_shift, &AuthzRequest::new(action, "*")),
            "{action}"
        );
    }
    assert!(!allows(
        others[0],
        &AuthzRequest::new("elasticloadbalancing:DescribeListeners", "*")
    ));
    // The service's tasks and whether its copy exists; nothing outside the cluster.
    for service in [SERVICE, copy.as_str()] {
        assert!(allows(
            post_shift,
            &AuthzRequest::new("ecs:DescribeServices", service)
        ));
    }
    assert!(!allows(
        post_shift,
        &AuthzRequest::new(
            "ecs:DescribeServices",
            &SERVICE.replace("/shop/", "/other/")
        )
    ));

    // The copy's service: created only with skewguard:managed=true, named *-sg-*, in the cluster.
    let create_service = AuthzRequest::new("ecs:CreateService", &copy);
    assert!(allows(
        post_shift,
        &retention_tagged(create_service.clone(), "true")
    ));
    assert!(!allows(post_shift, &create_service), "untagged");
    assert!(!allows(
        post_shift,
        &retention_tagged(create_service.clone(), "false")
    ));
    let mut unmanaged = retention_tagged(create_service.clone(), "true");
    unmanaged.context.remove("aws:requesttag/skewguard:managed");
    assert!(!allows(post_shift, &unmanaged), "without skewguard:managed");
    for elsewhere in [
        SERVICE.replace("/web", "/web-2"),
        copy.replace("/shop/", "/other/"),
    ] {
        assert!(
            !allows(
                post_shift,
                &retention_tagged(AuthzRequest::new("ecs:CreateService", &elsewhere), "true")
            ),
            "{elsewhere}"
        );
    }
    // Its tags: ecs:TagResource only while creating it, never on the user's service.
    let tag_service = retention_tagged(AuthzRequest::new("ecs:TagResource", &copy), "true");
    assert!(!allows(post_shift, &tag_service), "TagResource on its own");
    assert!(allows(
        post_shift,
        &tag_service
            .clone()
            .with("ecs:CreateAction", vec!["CreateService".into()])
    ));
    assert!(!allows(
        post_shift,
        &tag_service
            .clone()
            .with("ecs:CreateAction", vec!["CreateTaskSet".into()])
    ));
    assert!(!allows(
        post_shift,
        &retention_tagged(AuthzRequest::new("ecs:TagResource", SERVICE), "true")
            .with("ecs:CreateAction", vec!["CreateService".into()])
    ));

    // The copy's target group: created only tagged and named sg-*; tagged only on creation.
    let create_tg = AuthzRequest::new("elasticloadbalancing:CreateTargetGroup", copy_tg);
    assert!(allows(
        post_shift,
        &retention_tagged(create_tg.clone(), "true")
    ));
    assert!(!allows(post_shift, &create_tg), "untagged");
    assert!(!allows(
        post_shift,
        &retention_tagged(create_tg.clone(), "false")
    ));
    assert!(!allows(
        post_shift,
        &retention_tagged(
            AuthzRequest::new(
                "elasticloadbalancing:CreateTargetGroup",
                &copy_tg.replace("/sg-0123456789abcdef/", "/web-green/")
            ),
            "true"
        )
    ));
    let tag_tg = retention_tagged(
        AuthzRequest::new("elasticloadbalancing:AddTags", copy_tg),
        "true",
    );
    assert!(!allows(post_shift, &tag_tg), "AddTags on its own");
    assert!(allows(
        post_shift,
        &tag_tg.clone().with(
            "elasticloadbalancing:CreateAction",
            vec!["CreateTargetGroup".into()]
        )
    ));
    assert!(!allows(
        post_shift,
        &tag_tg.clone().with(
            "elasticloadbalancing:CreateAction",
            vec!["CreateRule".into()]
        )
    ));
    assert!(!allows(
        post_shift,
        &retention_tagged(
            AuthzRequest::new("elasticloadbalancing:AddTags", blue_tg),
            "true"
        )
        .with(
            "elasticloadbalancing:CreateAction",
            vec!["CreateTargetGroup".into()]
        )
    ));

    // A copy not healthy in time is torn down: only what carries skewguard:managed=true.
    let managed =
        |r: AuthzRequest| r.with("aws:ResourceTag/skewguard:managed", vec!["true".into()]);
    for (action, resource) in [
        ("ecs:UpdateService", copy.as_str()),
        ("ecs:DeleteService", copy.as_str()),
        ("elasticloadbalancing:DeleteTargetGroup", copy_tg),
    ] {
        let request = AuthzRequest::new(action, resource);
        assert!(!allows(post_shift, &request), "{action} untagged");
        assert!(allows(post_shift, &managed(request)), "{action}");
    }
    assert!(!allows(
        post_shift,
        &AuthzRequest::new("ecs:DeleteService", SERVICE)
    ));
    assert!(!allows(
        post_shift,
        &AuthzRequest::new("elasticloadbalancing:DeleteTargetGroup", blue_tg)
    ));

    // Only post-shift creates copies; none of the functions passes a role or changes the
    // task definition or the user's target groups.
    for role in others {
        assert!(
            !allows(role, &retention_tagged(create_service.clone(), "true")),
            "{}",
            role.name
        );
        assert!(
            !allows(role, &retention_tagged(create_tg.clone(), "true")),
            "{}",
            role.name
        );
    }
    for role in others.iter().copied().chain([post_shift]) {
        for (action, resource) in [
            ("iam:PassRole", "arn:aws:iam::123456789012:role/web-task"),
            ("ecs:RegisterTaskDefinition", "*"),
            ("elasticloadbalancing:ModifyTargetGroup", blue_tg),
            ("elasticloadbalancing:RegisterTargets", blue_tg),
        ] {
            assert!(
                !allows(role, &managed(AuthzRequest::new(action, resource))),
                "{} {action}",
                role.name
            );
        }
    }
}

#[test]
fn what_the_evaluator_cannot_read_is_an_error() {
    let values = WorldValues::world();
    let select = template().replacen(
        "Resource: !GetAtt LedgerTable.Arn",
        "Resource: !Select [0, [!GetAtt LedgerTable.Arn]]",
        1,
    );
    let err = Roles::from_yaml(&select, &values).unwrap_err();
    assert!(err.0.contains("cannot resolve Fn::Select"), "{err}");

    let arn_like = template().replacen("\"Null\":", "ArnLike:", 1);
    let err = Roles::from_yaml(&arn_like, &values).unwrap_err();
    assert!(err.0.contains("ArnLike is not modelled"), "{err}");

    let mut no_table = values.clone();
    no_table.attributes.clear();
    let err = Roles::from_yaml(&template(), &no_table).unwrap_err();
    assert!(err.0.contains("LedgerTable.Arn"), "{err}");

    let mut no_cluster = values;
    no_cluster.parameters.remove("ClusterName");
    let err = Roles::from_yaml(&template(), &no_cluster).unwrap_err();
    assert!(err.0.contains("ClusterName has no default"), "{err}");
}

/// The template with post-test-traffic's `DescribeServiceDeployments` granted on the service
/// deployments only, as it once was: the Service Authorization Reference requires the service
/// too. (Only this hook calls it, so the rollback's hooks still work.)
fn without_the_service_grant() -> String {
    let granted = "                Action: ecs:DescribeServiceDeployments\n                Resource:\n                  - !Sub arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service/${ClusterName}/*\n";
    let text = template();
    let role = text
        .find("  PostTestTrafficRole:")
        .expect("PostTestTrafficRole");
    let at = role
        + text[role..]
            .find(granted)
            .expect("the template's grant changed: update this test");
    assert!(
        text[role..at]
            .find("\n  PostTestTrafficFunction:")
            .is_none(),
        "the grant found is not post-test-traffic's"
    );
    format!(
        "{}                Action: ecs:DescribeServiceDeployments\n                Resource:\n{}",
        &text[..at],
        &text[at + granted.len()..]
    )
}

/// A service running v1 whose hooks are processes with `roles`, deploying v2: the outcome, the
/// hooks, and the invariant violations seen.
async fn deploy_with(roles: &Roles) -> (Outcome, Arc<ProcessInvoker>, Vec<String>) {
    let (outcome, invoker, violations, _) = deploy_with_details(
        roles,
        json!({"retention": "hold", "skewWindow": "1s", "pollInterval": "1s"}),
    )
    .await;
    (outcome, invoker, violations)
}

/// [`deploy_with`] with the hooks' `hookDetails`; also the world, to look at afterwards.
async fn deploy_with_details(
    roles: &Roles,
    hook_details: serde_json::Value,
) -> (
    Outcome,
    Arc<ProcessInvoker>,
    Vec<String>,
    skewguard_world::world::World,
) {
    let stand_ins = StandIns::start("/api/*").await;
    let invoker = Arc::new(
        ProcessInvoker::start_with_roles(&stand_ins.endpoints, TABLE, roles)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let observer = stand_ins.checker.clone();
    let world = stand_ins.with_engine(
        invoker.clone() as Arc<dyn Invoker>,
        Arc::new(PlaceholderTasks),
        observer,
    );
    let (service, _) = world.service("web", "v1", hook_details).await;
    assert_eq!(service, SERVICE.replace("/shop/", &format!("/{CLUSTER}/")));
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        world.engine.deploy(&service, "v2", &[], Intervention::None),
    )
    .await
    .expect("the deployment ends")
    .unwrap();
    let violations = world.checker.found();
    (outcome, invoker, violations, world)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_grant_makes_the_hook_fail_with_access_denied() {
    // With the template's roles, the deployment succeeds and nothing is refused.
    let (outcome, invoker, violations) = deploy_with(Roles::world().unwrap()).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(violations, Vec::<String>::new());
    for function in [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ] {
        assert_eq!(invoker.denials(function), [], "{function:?}");
    }

    // Without DescribeServiceDeployments on the service, post-test-traffic is refused and ECS
    // rolls the deployment back.
    let roles = Roles::from_yaml(&without_the_service_grant(), &WorldValues::world()).unwrap();
    let (outcome, invoker, _) = deploy_with(&roles).await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("post-test-traffic answered FAILED")),
        "{outcome:?}"
    );
    let denials = invoker.denials(HookFunction::PostTestTraffic);
    assert!(
        denials
            .iter()
            .any(|d| d.operation == "DescribeServiceDeployments"
                && d.action == "ecs:DescribeServiceDeployments"
                && d.resource == SERVICE),
        "{denials:?}"
    );
    // The function's output is read from its pipe asynchronously: give it a moment to arrive.
    let reported = |logs: &[String]| {
        logs.iter().any(|l| {
            l.contains("AccessDeniedException")
                && l.contains("not authorized to perform: ecs:DescribeServiceDeployments")
        })
    };
    let function = invoker.function(HookFunction::PostTestTraffic);
    for _ in 0..100 {
        if reported(&function.logs()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reported(&function.logs()),
        "the hook reports the denial:\n{}",
        function.logs().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn post_shift_starts_a_retention_copy_with_the_template_roles() {
    // retention: service, the hooks as processes confined to the template's roles: post-shift
    // creates the copy's target group and service, waits for its task, moves v1's pin there and
    // answers SUCCEEDED long before the hour's skew window; nothing is refused.
    let (outcome, invoker, violations, world) =
        deploy_with_details(Roles::world().unwrap(), retention_service()).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(violations, Vec::<String>::new());
    for function in [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ] {
        assert_eq!(invoker.denials(function), [], "{function:?}");
    }

    let service = SERVICE.replace("/shop/", &format!("/{CLUSTER}/"));
    let ledger = world.ledger().load_with_archive(&service).await.unwrap();
    let v1 = ledger
        .iter()
        .find(|e| e.deployment_id.as_str() == "v1")
        .expect("v1's entry");
    assert_eq!(v1.status, Status::Retained, "{v1:?}");
    let copy = v1.retention.clone().expect("the copy is recorded");
    assert_eq!(copy.service_name, "web-sg-v1");
    let copy_arn = copy.service_arn.clone().expect("the copy's service");
    let copy_tg = copy
        .target_group_arn
        .clone()
        .expect("the copy's target group");
    assert!(copy.healthy_at.is_some(), "{copy:?}");
    assert_eq!(v1.target_group_arn, copy_tg);

    // The copy runs, carrying skewguard's tags (which its teardown's grants require).
    let described = world
        .clients
        .ecs
        .describe_services()
        .cluster(CLUSTER)
        .services("web-sg-v1")
        .include(aws_sdk_ecs::types::ServiceField::Tags)
        .send()
        .await
        .unwrap();
    let running = &described.services()[0];
    assert_eq!(running.service_arn(), Some(copy_arn.as_str()));
    assert_eq!(running.status(), Some("ACTIVE"));
    assert_eq!(world.scheduler.task_addresses(&copy_arn).await.len(), 1);
    let tags: Vec<(&str, &str)> = running
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    assert!(tags.contains(&("skewguard:managed", "true")), "{tags:?}");
    assert!(
        tags.contains(&("skewguard:deployment-id", "v1")),
        "{tags:?}"
    );
    let tg_tags = world
        .clients
        .elbv2
        .describe_tags()
        .resource_arns(&copy_tg)
        .send()
        .await
        .unwrap();
    assert!(
        tg_tags.tag_descriptions()[0]
            .tags()
            .iter()
            .any(|t| t.key() == Some("skewguard:managed") && t.value() == Some("true")),
        "{tg_tags:?}"
    );
}

/// `retention: service` with an hour's skew window, as the copy's start tests use it.
fn retention_service() -> serde_json::Value {
    json!({
        "retention": "service",
        "skewWindow": "1h",
        "pollInterval": "1s",
        "hookTimeout": "2h",
        "retentionStartTimeout": "60s",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_created_without_tag_on_create_is_refused_and_the_version_held_instead() {
    // ECS authorises CreateService's tags as ecs:TagResource: a role that may create the copy but
    // not tag it on creation is refused the create. A refusal retrying cannot cure does not fail
    // the deployment: post-shift holds the version for its skew window instead, records why,
    // and removes the copy's target group it had created.
    let granted = "            Action: ecs:TagResource\n";
    let text = template();
    let policy = text
        .find("  RetentionStartPolicy:")
        .expect("RetentionStartPolicy");
    let at = policy
        + text[policy..]
            .find(granted)
            .expect("the template's grant changed: update this test");
    let without = format!(
        "{}            Action: ecs:ListTagsForResource\n{}",
        &text[..at],
        &text[at + granted.len()..]
    );
    let roles = Roles::from_yaml(&without, &WorldValues::world()).unwrap();
    let details = json!({
        "retention": "service",
        "skewWindow": "4s",
        "pollInterval": "1s",
        "retentionStartTimeout": "60s",
    });
    let (outcome, invoker, violations, world) = deploy_with_details(&roles, details).await;
    assert_eq!(outcome, Outcome::Succeeded, "held, not rolled back");
    assert_eq!(violations, Vec::<String>::new());
    let denials = invoker.denials(HookFunction::PostShift);
    assert!(
        denials.iter().any(|d| d.operation == "CreateService"
            && d.action == "ecs:TagResource"
            && d.resource == SERVICE.replace("/web", "/web-sg-v1")),
        "{denials:?}"
    );
    let service = SERVICE.replace("/shop/", &format!("/{CLUSTER}/"));
    let v1 = world
        .ledger()
        .load_with_archive(&service)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.deployment_id.as_str() == "v1")
        .expect("v1");
    assert_eq!(v1.reason.as_deref(), Some("start-failed"), "{v1:?}");
    assert!(
        v1.retention.is_none(),
        "nothing of the copy is left recorded"
    );
}
