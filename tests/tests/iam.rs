//! The local world refuses what a function's role in infra/template.yaml does not allow: the
//! roles as the evaluator reads them, and a missing grant failing a real deployment.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use skewguard_core::hook::HookFunction;
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
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1s", "pollInterval": "1s"}),
        )
        .await;
    assert_eq!(service, SERVICE.replace("/shop/", &format!("/{CLUSTER}/")));
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        world.engine.deploy(&service, "v2", &[], Intervention::None),
    )
    .await
    .expect("the deployment ends")
    .unwrap();
    (outcome, invoker, world.checker.found())
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
