//! `--simulate-iam` against mocked IAM and Lambda (moto cannot simulate policies), and the
//! built-in `infra/aws-operations.yaml`.

use aws_sdk_iam::operation::simulate_principal_policy::SimulatePrincipalPolicyOutput;
use aws_sdk_iam::types::{EvaluationResult, PolicyEvaluationDecisionType};
use aws_sdk_lambda::operation::get_function::{GetFunctionError, GetFunctionOutput};
use aws_sdk_lambda::types::FunctionConfiguration;
use aws_sdk_lambda::types::error::ResourceNotFoundException;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;

use super::*;

const SERVICE: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
const LISTENER: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2";
const ROLE: &str = "arn:aws:iam::123456789012:role/skewguard-PostShiftRole-X";

fn variables() -> Variables {
    Variables::new(SERVICE, LISTENER, "skewguard-ledger")
}

fn lambda_with_role() -> aws_sdk_lambda::Client {
    let get = mock!(aws_sdk_lambda::Client::get_function)
        .match_requests(|r| r.function_name() == Some("skewguard-post-shift"))
        .then_output(|| {
            GetFunctionOutput::builder()
                .configuration(FunctionConfiguration::builder().role(ROLE).build())
                .build()
        });
    mock_client!(aws_sdk_lambda, RuleMode::MatchAny, [&get])
}

fn decision(action: &str, decision: PolicyEvaluationDecisionType) -> SimulatePrincipalPolicyOutput {
    SimulatePrincipalPolicyOutput::builder()
        .evaluation_results(
            EvaluationResult::builder()
                .eval_action_name(action)
                .eval_decision(decision)
                .build()
                .unwrap(),
        )
        .build()
}

#[test]
fn the_built_in_operations_describe_every_action_of_every_function() {
    let ops = operations().unwrap();
    for function in [
        "post-test-traffic",
        "production-shift",
        "post-shift",
        "reconciler",
    ] {
        let actions = &ops.functions[function];
        assert!(!actions.is_empty(), "{function}");
        for action in actions {
            assert!(ops.actions.contains_key(action), "{function}: {action}");
        }
    }
    // Every variable a hook's resources use has a value here (the log group comes from Lambda).
    let mut vars = variables();
    vars.values.insert("LogGroup", "log-group".to_owned());
    for action in &ops.functions["post-shift"] {
        for resource in ops.actions[action].resources.values().flat_map(Arns::all) {
            let filled = vars.fill(resource).unwrap_or_else(|| panic!("{resource}"));
            assert!(!filled.contains("${"), "{filled}");
        }
    }
    assert_eq!(
        vars.fill("${ListenerRule}").unwrap(),
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2/0123456789abcdef"
    );
    assert_eq!(
        vars.fill("${Table}").unwrap(),
        "arn:aws:dynamodb:us-east-1:123456789012:table/skewguard-ledger"
    );
}

#[tokio::test]
async fn a_role_allowed_everything_passes_and_each_action_is_asked_with_its_resources() {
    let ops = operations().unwrap();
    let simulate = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| r.policy_source_arn() == Some(ROLE))
        .then_output(|| decision("any", PolicyEvaluationDecisionType::Allowed));
    // CreateRule is asked on the service's listener, with both skewguard tags in the request.
    let create = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| {
            r.action_names() == ["elasticloadbalancing:CreateRule"]
                && r.resource_arns() == [LISTENER]
                && r.context_entries().iter().any(|c| {
                    c.context_key_name() == Some("aws:TagKeys")
                        && c.context_key_values()
                            == ["skewguard:service", "skewguard:deployment-id"]
                })
        })
        .then_output(|| decision("create", PolicyEvaluationDecisionType::Allowed));
    // The tags of a retention copy's target group are asked as AddTags (the IAM action of the
    // entry `elasticloadbalancing:AddTags (CreateTargetGroup)`) with that creating call.
    let tag_target_group = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| {
            r.action_names() == ["elasticloadbalancing:AddTags"]
                && r.context_entries().iter().any(|c| {
                    c.context_key_name() == Some("elasticloadbalancing:CreateAction")
                        && c.context_key_values() == ["CreateTargetGroup"]
                })
        })
        .then_output(|| decision("tag", PolicyEvaluationDecisionType::Allowed));
    let iam = mock_client!(
        aws_sdk_iam,
        RuleMode::MatchAny,
        [&create, &tag_target_group, &simulate]
    );
    let found = simulate_function(
        &iam,
        &lambda_with_role(),
        &ops,
        "post-shift",
        "skewguard-post-shift",
        &variables(),
    )
    .await;
    assert_eq!(found.result, Verdict::Ok, "{found:?}");
    assert!(
        found
            .message
            .contains(&format!("role {ROLE} may make all 24 calls")),
        "{}",
        found.message
    );
    assert_eq!(create.num_calls(), 1);
    assert_eq!(tag_target_group.num_calls(), 1);
    assert_eq!(
        simulate.num_calls() + create.num_calls() + tag_target_group.num_calls(),
        24
    );
}

/// The reconciler sends to two queues: both are asked, the sweep queue's ARN read from the
/// function's `SKEWGUARD_SWEEP_QUEUE_URL` and the dead-letter queue's from its configuration.
#[tokio::test]
async fn the_reconciler_is_asked_about_its_sweep_queue_and_its_dead_letter_queue() {
    const SWEEP: &str = "arn:aws:sqs:us-east-1:123456789012:skewguard-sweep";
    const DLQ: &str = "arn:aws:sqs:us-east-1:123456789012:skewguard-ReconcilerDeadLetterQueue-X";
    let ops = operations().unwrap();
    let get = mock!(aws_sdk_lambda::Client::get_function).then_output(|| {
        GetFunctionOutput::builder()
            .configuration(
                FunctionConfiguration::builder()
                    .role(ROLE)
                    .dead_letter_config(
                        aws_sdk_lambda::types::DeadLetterConfig::builder()
                            .target_arn(DLQ)
                            .build(),
                    )
                    .environment(
                        aws_sdk_lambda::types::EnvironmentResponse::builder()
                            .variables(
                                skewguard_core::cold_start::SWEEP_QUEUE_ENV,
                                "https://sqs.us-east-1.amazonaws.com/123456789012/skewguard-sweep",
                            )
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let lambda = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, [&get]);
    let send = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| {
            r.action_names() == ["sqs:SendMessage"] && r.resource_arns() == [SWEEP, DLQ]
        })
        .then_output(|| decision("sqs:SendMessage", PolicyEvaluationDecisionType::Allowed));
    let receive = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| {
            r.action_names() == ["sqs:ReceiveMessage"] && r.resource_arns() == [SWEEP]
        })
        .then_output(|| decision("sqs:ReceiveMessage", PolicyEvaluationDecisionType::Allowed));
    let other = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| {
            !r.action_names()
                .iter()
                .any(|a| a == "sqs:SendMessage" || a == "sqs:ReceiveMessage")
        })
        .then_output(|| decision("any", PolicyEvaluationDecisionType::Allowed));
    let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&send, &receive, &other]);
    let found = simulate_function(
        &iam,
        &lambda,
        &ops,
        "reconciler",
        "skewguard-reconciler",
        &variables(),
    )
    .await;
    assert_eq!(found.result, Verdict::Ok, "{found:?}");
    assert_eq!((send.num_calls(), receive.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_denied_action_is_named_with_the_role_and_the_fix() {
    let ops = operations().unwrap();
    let denied = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .match_requests(|r| r.action_names() == ["elasticloadbalancing:DeleteRule"])
        .then_output(|| {
            decision(
                "elasticloadbalancing:DeleteRule",
                PolicyEvaluationDecisionType::ImplicitDeny,
            )
        });
    let allowed = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .then_output(|| decision("any", PolicyEvaluationDecisionType::Allowed));
    let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&denied, &allowed]);
    let found = simulate_function(
        &iam,
        &lambda_with_role(),
        &ops,
        "post-shift",
        "skewguard-post-shift",
        &variables(),
    )
    .await;
    assert_eq!(found.result, Verdict::Error, "{found:?}");
    assert!(
        found.message.contains(&format!(
            "post-shift (skewguard-post-shift): role {ROLE} may not: elasticloadbalancing:DeleteRule on arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2/0123456789abcdef (implicitDeny)"
        )),
        "{}",
        found.message
    );
    assert!(
        found.fix.as_deref().unwrap().contains("README: IAM"),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_function_that_is_not_there_says_which_option_names_it() {
    let ops = operations().unwrap();
    let get = mock!(aws_sdk_lambda::Client::get_function).then_error(|| {
        GetFunctionError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message("Function not found")
                .meta(
                    ErrorMetadata::builder()
                        .code("ResourceNotFoundException")
                        .build(),
                )
                .build(),
        )
    });
    let lambda = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, [&get]);
    let simulate = mock!(aws_sdk_iam::Client::simulate_principal_policy)
        .then_output(|| decision("any", PolicyEvaluationDecisionType::Allowed));
    let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&simulate]);
    let found = simulate_function(
        &iam,
        &lambda,
        &ops,
        "reconciler",
        "stack-reconciler",
        &variables(),
    )
    .await;
    assert_eq!(found.result, Verdict::Error, "{found:?}");
    assert!(
        found
            .message
            .contains("reconciler (stack-reconciler): no Lambda function stack-reconciler"),
        "{}",
        found.message
    );
    assert!(
        found
            .fix
            .as_deref()
            .unwrap()
            .contains("--reconciler-function"),
        "{found:?}"
    );
    assert_eq!(simulate.num_calls(), 0);
}

#[test]
fn hook_targets_name_their_function_with_or_without_a_qualifier() {
    assert_eq!(
        function_name_of("arn:aws:lambda:us-east-1:1:function:skewguard-post-shift"),
        "skewguard-post-shift"
    );
    assert_eq!(
        function_name_of("arn:aws:lambda:us-east-1:1:function:skewguard-post-shift:live"),
        "skewguard-post-shift"
    );
}

#[test]
fn the_report_renders_problems_with_their_fixes_and_fails_only_on_errors() {
    let warned = DoctorReport::of(
        SERVICE,
        vec![
            Finding::ok("strategy", "BLUE_GREEN on the ECS deployment controller"),
            Finding::warning("ledger-ttl", "TTL is DISABLED", "enable TTL"),
        ],
    );
    assert!(!warned.failed());
    let out = crate::render::plain(&warned.table());
    assert!(out.contains("fix ledger-ttl: enable TTL\n"), "{out}");
    assert!(out.ends_with("1 warning(s), no errors\n"), "{out}");
    let failed = DoctorReport::of(
        SERVICE,
        vec![Finding::error("strategy", "ROLLING", "set BLUE_GREEN")],
    );
    assert!(failed.failed());
    let json = crate::Rendered::Doctor(failed).json();
    assert!(json.contains("\"result\": \"error\""), "{json}");
    assert!(json.contains("\"fix\": \"set BLUE_GREEN\""), "{json}");
}
