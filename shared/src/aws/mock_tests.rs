//! The AWS adapters against mocked SDK clients: the exact requests each operation sends, none
//! where none should be made, and how AWS's errors are classified. The stand-in tests (moto and
//! the ECS emulator) check the same operations against working services.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ecs::operation::describe_service_revisions::DescribeServiceRevisionsOutput;
use aws_sdk_ecs::types::ServiceRevision;
use aws_sdk_elasticloadbalancingv2::operation::create_rule::CreateRuleOutput;
use aws_sdk_elasticloadbalancingv2::operation::delete_rule::DeleteRuleError;
use aws_sdk_elasticloadbalancingv2::operation::describe_rules::DescribeRulesOutput;
use aws_sdk_elasticloadbalancingv2::types::Rule;
use aws_sdk_elasticloadbalancingv2::types::error::RuleNotFoundException;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use time::macros::datetime;

use super::ecs::{Ecs, EcsError};
use super::elb::{Elb, NewRule};
use super::ledger_store::{LedgerError, LedgerStore};
use super::{AwsErrorKind, DisplayErrorContext};
use crate::DeploymentId;
use crate::aws::ecs::DiscoveryError;
use crate::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring, Status};
use crate::listener::{Condition, RuleAction, WeightedTarget};
use crate::pins::PinTags;
use crate::stages::Change;

const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener-rule/app/shop/1/2/3";
const SERVICE: &str = "arn:aws:ecs:us-east-1:1:service/shop/web";

#[tokio::test]
async fn deleting_a_rule_that_is_already_gone_counts_as_deleted_and_asks_nothing_more() {
    let delete = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_rule)
        .match_requests(|r| r.rule_arn() == Some(RULE))
        .then_error(|| {
            DeleteRuleError::RuleNotFoundException(
                RuleNotFoundException::builder()
                    .message("One or more rules not found")
                    .meta(ErrorMetadata::builder().code("RuleNotFound").build())
                    .build(),
            )
        });
    let describe = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_rules)
        .then_output(|| DescribeRulesOutput::builder().build());
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&delete, &describe]
    );
    Elb::new(client).delete_rule(RULE).await.unwrap();
    assert_eq!(delete.num_calls(), 1);
    assert_eq!(describe.num_calls(), 0);
}

#[tokio::test]
async fn errors_are_classified_by_code_and_keep_what_aws_said() {
    for (code, kind) in [
        ("Throttling", AwsErrorKind::Throttling),
        ("AccessDenied", AwsErrorKind::AccessDenied),
        ("ValidationError", AwsErrorKind::Invalid),
    ] {
        let delete =
            mock!(aws_sdk_elasticloadbalancingv2::Client::delete_rule).then_error(move || {
                DeleteRuleError::generic(
                    ErrorMetadata::builder()
                        .code(code)
                        .message("said by AWS")
                        .build(),
                )
            });
        let describe =
            mock!(aws_sdk_elasticloadbalancingv2::Client::describe_rules).then_output(|| {
                DescribeRulesOutput::builder()
                    .rules(Rule::builder().rule_arn(RULE).build())
                    .build()
            });
        let client = mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::MatchAny,
            [&delete, &describe],
            |c| c.retry_config(RetryConfig::disabled())
        );
        let err = Elb::new(client).delete_rule(RULE).await.unwrap_err();
        assert_eq!(
            (err.operation, err.code.as_str(), err.kind),
            ("DeleteRule", code, kind)
        );
        let chain = DisplayErrorContext(&err).to_string();
        assert!(chain.contains("said by AWS"), "{chain}");
    }
}

#[tokio::test]
async fn a_pin_is_created_with_its_tags_in_the_same_request() {
    let create = mock!(aws_sdk_elasticloadbalancingv2::Client::create_rule)
        .match_requests(|r| {
            let tags: Vec<(&str, &str)> = r
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
                .collect();
            r.listener_arn() == Some("listener")
                && r.priority() == Some(41)
                && tags
                    == [
                        ("skewguard:service", SERVICE),
                        ("skewguard:deployment-id", "abc1234"),
                    ]
        })
        .then_output(|| {
            CreateRuleOutput::builder()
                .rules(Rule::builder().rule_arn(RULE).build())
                .build()
        });
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&create]
    );
    let rule = NewRule {
        listener_arn: "listener".into(),
        priority: 41,
        conditions: vec![Condition::HttpHeader {
            name: "X-Deployment-ID".into(),
            values: vec!["abc1234".into()],
        }],
        action: RuleAction::Forward(vec![WeightedTarget {
            target_group_arn: "tg-green".into(),
            weight: 1,
        }]),
        tags: PinTags {
            service_arn: SERVICE.into(),
            deployment_id: "abc1234".into(),
        },
    };
    assert_eq!(Elb::new(client).create_rule(&rule).await.unwrap(), RULE);
    assert_eq!(create.num_calls(), 1);
}

fn change(id: &str, expected_version: u64) -> Change {
    let now = datetime!(2026-01-01 0:00 UTC);
    let running = RunningVersion {
        deployment_id: DeploymentId::parse(id).unwrap(),
        service_revision_arn: format!("rev-{id}"),
        target_group_arn: "tg".into(),
        task_definition_arn: "td".into(),
    };
    let wiring = ServiceWiring {
        listener_arn: "listener".into(),
        production_rule_arn: "production".into(),
    };
    Change {
        expected_version,
        entry: LedgerEntry::new(SERVICE, &running, &wiring, Status::Live, now),
        history: HistoryRecord {
            at: now,
            stage: "S".into(),
            execution_id: "x".into(),
            actor: "req-1".into(),
            change: "c".into(),
        },
    }
}

#[tokio::test]
async fn a_commit_is_one_transaction_of_entries_history_items_and_archives() {
    let expected = |values: Option<&std::collections::HashMap<String, AttributeValue>>, v: &str| {
        values.and_then(|v| v.get(":expected")) == Some(&AttributeValue::N(v.into()))
    };
    let update = mock!(aws_sdk_dynamodb::Client::update_item).then_output(|| {
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder().build()
    });
    let transact = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .match_requests(move |r| {
            let items = r.transact_items();
            let updates: Vec<_> = items.iter().filter_map(|i| i.update()).collect();
            let puts: Vec<_> = items.iter().filter_map(|i| i.put()).collect();
            let deletes: Vec<_> = items.iter().filter_map(|i| i.delete()).collect();
            let sort_key = |p: &&aws_sdk_dynamodb::types::Put| {
                p.item()["deploymentId"].as_s().unwrap().clone()
            };
            // a1 stays in play (an update on its version); b2 ends: deleted on its version and
            // archived; one history item each; nothing carries a history list.
            items.len() == 5
                && updates.len() == 1
                && expected(updates[0].expression_attribute_values(), "3")
                && !updates[0].update_expression().contains("history")
                && deletes.len() == 1
                && expected(deletes[0].expression_attribute_values(), "5")
                && puts.iter().any(|p| sort_key(p) == "~archive#b2")
                && puts
                    .iter()
                    .filter(|p| sort_key(p).starts_with("~history#"))
                    .count()
                    == 2
                && puts.iter().all(|p| !p.item().contains_key("history"))
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&update, &transact]);
    let ledger = LedgerStore::new(client, "ledger");

    ledger.commit(&[]).await.unwrap();
    assert_eq!(transact.num_calls(), 0);
    let mut ended = change("b2", 5);
    ended
        .entry
        .finish(Status::Retired, datetime!(2026-01-02 0:00 UTC));
    ledger.commit(&[change("a1", 3), ended]).await.unwrap();
    assert_eq!((update.num_calls(), transact.num_calls()), (0, 1));
}

#[tokio::test]
async fn a_lost_conditional_write_is_a_conflict() {
    let transact = mock!(aws_sdk_dynamodb::Client::transact_write_items).then_error(|| {
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::generic(
            ErrorMetadata::builder()
                .code("TransactionCanceledException")
                .message("Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed, None]")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&transact]);
    let err = LedgerStore::new(client, "ledger")
        .commit(&[change("a1", 3)])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(matches!(&err, LedgerError::Aws(e) if e.kind == AwsErrorKind::Conflict));
}

#[tokio::test]
async fn a_server_error_page_without_an_error_code_is_transient() {
    // What a proxy or an overloaded endpoint answers: HTTP 500 with an HTML body, which no AWS
    // error model parses. Retried like any 5xx, never taken for a request skewguard got wrong.
    let transact = mock!(aws_sdk_dynamodb::Client::transact_write_items).then_http_response(|| {
        aws_smithy_runtime_api::http::Response::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(500).unwrap(),
            aws_smithy_types::body::SdkBody::from(
                "<html><body>Internal Server Error</body></html>",
            ),
        )
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&transact]);
    let err = LedgerStore::new(client, "ledger")
        .commit(&[change("a1", 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::Aws(e) if e.kind == AwsErrorKind::Transient && e.code == "HTTP 500"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_revision_ecs_does_not_return_is_missing() {
    let describe = mock!(aws_sdk_ecs::Client::describe_service_revisions)
        .match_requests(|r| r.service_revision_arns() == ["rev-1", "rev-2"])
        .then_output(|| {
            DescribeServiceRevisionsOutput::builder()
                .service_revisions(
                    ServiceRevision::builder()
                        .service_revision_arn("rev-1")
                        .task_definition("td")
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe]);
    let err = Ecs::new(client)
        .describe_revisions(&["rev-1".into(), "rev-2".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EcsError::Discovery(DiscoveryError::Missing { arn, .. }) if arn == "rev-2"),
        "{err:?}"
    );
    assert_eq!(describe.num_calls(), 1);
}

fn tags_of(tags: &[(&'static str, String)]) -> Vec<(String, String)> {
    tags.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_retention_target_group_copies_blues_shape_and_carries_its_tags_in_the_request() {
    use aws_sdk_elasticloadbalancingv2::operation::create_target_group::CreateTargetGroupOutput;
    use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetGroup, TargetTypeEnum};
    let id = DeploymentId::parse("abc1234").unwrap();
    let name = crate::retention::target_group_name(SERVICE, &id);
    let tags = crate::retention::tags(SERVICE, &id);
    let want_tags = tags_of(&tags);
    let expected_tags = want_tags.clone();
    let want_name = name.clone();
    let create = mock!(aws_sdk_elasticloadbalancingv2::Client::create_target_group)
        .match_requests(move |r| {
            let sent: Vec<(String, String)> = r
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            r.name() == Some(want_name.as_str())
                && r.vpc_id() == Some("vpc-1")
                && r.protocol() == Some(&ProtocolEnum::Http)
                && r.port() == Some(8080)
                && r.target_type() == Some(&TargetTypeEnum::Ip)
                && r.health_check_path() == Some("/healthz")
                && r.matcher().and_then(|m| m.http_code()) == Some("200-299")
                && sent == want_tags
        })
        .then_output(|| {
            CreateTargetGroupOutput::builder()
                .target_groups(TargetGroup::builder().target_group_arn("tg-ret").build())
                .build()
        });
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&create]
    );
    let shape = super::elb::TargetGroupShape {
        vpc_id: Some("vpc-1".into()),
        protocol: Some("HTTP".into()),
        protocol_version: None,
        port: Some(8080),
        target_type: Some("ip".into()),
        health_check_protocol: None,
        health_check_port: None,
        health_check_path: Some("/healthz".into()),
        health_check_interval_seconds: None,
        health_check_timeout_seconds: None,
        healthy_threshold_count: None,
        unhealthy_threshold_count: None,
        matcher_http_code: Some("200-299".into()),
        load_balancer_arns: vec![],
    };
    let arn = Elb::new(client)
        .create_target_group(&name, &shape, &tags)
        .await
        .unwrap();
    assert_eq!(arn, "tg-ret");
    assert_eq!(create.num_calls(), 1);
    assert_eq!(
        expected_tags,
        [
            ("skewguard:managed".to_owned(), "true".to_owned()),
            ("skewguard:service".to_owned(), "web".to_owned()),
            ("skewguard:deployment-id".to_owned(), "abc1234".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_retention_service_is_a_tagged_rolling_copy_of_blues_launch_with_a_client_token() {
    use aws_sdk_ecs::operation::create_service::CreateServiceOutput;
    use aws_sdk_ecs::types::{
        AssignPublicIp, AwsVpcConfiguration, DeploymentControllerType, LaunchType,
        NetworkConfiguration, Service,
    };
    let id = DeploymentId::parse("abc1234").unwrap();
    let tags = crate::retention::tags(SERVICE, &id);
    let want_tags = tags_of(&tags);
    let create = mock!(aws_sdk_ecs::Client::create_service)
        .match_requests(move |r| {
            let sent: Vec<(String, String)> = r
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let lb = r.load_balancers().first();
            r.cluster() == Some("shop")
                && r.service_name() == Some("web-sg-abc1234")
                && r.task_definition() == Some("td:1")
                && r.desired_count() == Some(2)
                && r.client_token() == Some("sg-0123456789abcdef")
                && r.launch_type() == Some(&LaunchType::Fargate)
                && r.platform_version() == Some("1.4.0")
                && r.capacity_provider_strategy().is_empty()
                && r.service_registries().is_empty()
                && r.service_connect_configuration().is_none()
                && r.deployment_controller().map(|d| d.r#type())
                    == Some(&DeploymentControllerType::Ecs)
                && r.network_configuration()
                    .and_then(|n| n.awsvpc_configuration())
                    .map(|a| a.subnets().to_vec())
                    == Some(vec!["subnet-1".to_owned()])
                && lb.and_then(|l| l.target_group_arn()) == Some("tg-ret")
                && lb.and_then(|l| l.container_name()) == Some("web")
                && lb.and_then(|l| l.container_port()) == Some(8080)
                && sent == want_tags
        })
        .then_output(|| {
            CreateServiceOutput::builder()
                .service(Service::builder().service_arn("svc-ret").build())
                .build()
        });
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&create]);
    let launch = super::ecs::RevisionLaunch {
        task_definition_arn: "td:1".into(),
        network_configuration: Some(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder()
                        .subnets("subnet-1")
                        .assign_public_ip(AssignPublicIp::Disabled)
                        .build()
                        .unwrap(),
                )
                .build(),
        ),
        launch_type: Some(LaunchType::Fargate),
        capacity_provider_strategy: vec![],
        platform_version: Some("1.4.0".into()),
        container_name: Some("web".into()),
        container_port: Some(8080),
    };
    let arn = Ecs::new(client)
        .create_retention_service(&super::ecs::NewRetentionService {
            cluster: "shop",
            name: "web-sg-abc1234",
            launch: &launch,
            target_group_arn: "tg-ret",
            desired_count: 2,
            tags: &tags,
            client_token: "sg-0123456789abcdef",
        })
        .await
        .unwrap();
    assert_eq!(arn, "svc-ret");
    assert_eq!(create.num_calls(), 1);
}

#[tokio::test]
async fn only_an_active_service_and_only_healthy_targets_count() {
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::types::Service;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
    use aws_sdk_elasticloadbalancingv2::types::{
        TargetHealth, TargetHealthDescription, TargetHealthStateEnum,
    };
    let describe = mock!(aws_sdk_ecs::Client::describe_services)
        .match_requests(|r| r.cluster() == Some("shop") && r.services() == ["web-sg-a"])
        .then_output(|| {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name("web-sg-a")
                        .service_arn("svc-draining")
                        .status("DRAINING")
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe]);
    assert_eq!(
        Ecs::new(client)
            .active_service_arn("shop", "web-sg-a")
            .await
            .unwrap(),
        None
    );
    let health = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_health)
        .match_requests(|r| r.target_group_arn() == Some("tg-ret"))
        .then_output(|| {
            let described = |state| {
                TargetHealthDescription::builder()
                    .target_health(TargetHealth::builder().state(state).build())
                    .build()
            };
            DescribeTargetHealthOutput::builder()
                .target_health_descriptions(described(TargetHealthStateEnum::Healthy))
                .target_health_descriptions(described(TargetHealthStateEnum::Initial))
                .target_health_descriptions(described(TargetHealthStateEnum::Unhealthy))
                .build()
        });
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&health]
    );
    assert_eq!(Elb::new(client).healthy_targets("tg-ret").await.unwrap(), 1);
}

mod sweep_queue {
    use aws_sdk_sqs::operation::send_message_batch::{
        SendMessageBatchError, SendMessageBatchOutput,
    };
    use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::error::ErrorMetadata;

    use crate::aws::AwsErrorKind;
    use crate::aws::sweep_queue::{BATCH, SweepQueue, message_body};

    const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/1/skewguard-sweep";

    fn services(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("arn:aws:ecs:us-east-1:1:service/shop/s{i:02}"))
            .collect()
    }

    fn ok(id: &str) -> SendMessageBatchResultEntry {
        SendMessageBatchResultEntry::builder()
            .id(id)
            .message_id(format!("m-{id}"))
            .md5_of_message_body("x")
            .build()
            .unwrap()
    }

    fn failed(id: &str, code: &str, sender_fault: bool) -> BatchResultErrorEntry {
        BatchResultErrorEntry::builder()
            .id(id)
            .code(code)
            .sender_fault(sender_fault)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn every_service_is_sent_ten_per_call_with_its_arn_as_the_only_content() {
        let all = services(23);
        let expected = all.clone();
        let send = mock!(aws_sdk_sqs::Client::send_message_batch)
            .match_requests(move |r| {
                r.queue_url() == Some(QUEUE)
                    && r.entries().len() <= BATCH
                    && r.entries().iter().all(|e| {
                        expected.iter().any(|s| e.message_body() == message_body(s))
                            && e.message_attributes().is_none()
                    })
            })
            .then_output(|| {
                // Answers for the largest batch; entries absent from a request are ignored.
                let mut out = SendMessageBatchOutput::builder();
                for id in 0..BATCH {
                    out = out.successful(ok(&id.to_string()));
                }
                out.set_failed(Some(Vec::new())).build().unwrap()
            });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&send]);
        let run = SweepQueue::new(client, QUEUE).enqueue(&all).await.unwrap();
        assert_eq!(send.num_calls(), 3, "10 + 10 + 3");
        assert_eq!(run.enqueued, 23);
        assert_eq!(run.failed, []);
        assert_eq!(
            message_body(&all[0]),
            r#"{"serviceArn":"arn:aws:ecs:us-east-1:1:service/shop/s00"}"#
        );
    }

    #[tokio::test]
    async fn failed_entries_are_sent_again_alone_and_a_sender_fault_is_not() {
        let all = services(3);
        // First call: 0 succeeds, 1 fails for SQS's own reason, 2 is the sender's fault.
        let first = mock!(aws_sdk_sqs::Client::send_message_batch)
            .match_requests(|r| r.entries().len() == 3)
            .then_output(|| {
                SendMessageBatchOutput::builder()
                    .successful(ok("0"))
                    .failed(failed("1", "InternalError", false))
                    .failed(failed("2", "InvalidParameterValue", true))
                    .build()
                    .unwrap()
            });
        // Then only entry 1, which fails once more and then succeeds.
        let retried = mock!(aws_sdk_sqs::Client::send_message_batch)
            .match_requests(|r| r.entries().len() == 1 && r.entries()[0].id() == "1")
            .sequence()
            .output(|| {
                SendMessageBatchOutput::builder()
                    .set_successful(Some(Vec::new()))
                    .failed(failed("1", "RequestThrottled", false))
                    .build()
                    .unwrap()
            })
            .output(|| {
                SendMessageBatchOutput::builder()
                    .successful(ok("1"))
                    .set_failed(Some(Vec::new()))
                    .build()
                    .unwrap()
            })
            .build();
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&first, &retried]);
        let run = SweepQueue::new(client, QUEUE).enqueue(&all).await.unwrap();
        assert_eq!((first.num_calls(), retried.num_calls()), (1, 2));
        assert_eq!(run.enqueued, 2);
        assert_eq!(run.calls, 3);
        assert_eq!(run.failed.len(), 1, "{run:?}");
        assert_eq!(run.failed[0].service_arn, all[2]);
        assert_eq!(run.failed[0].code, "InvalidParameterValue");
    }

    #[tokio::test]
    async fn an_entry_failing_every_attempt_is_reported_and_the_next_batch_still_goes() {
        let all = services(11);
        let stuck = mock!(aws_sdk_sqs::Client::send_message_batch)
            .match_requests(|r| r.entries().iter().any(|e| e.message_body().contains("s00")))
            .then_output(|| {
                let mut out = SendMessageBatchOutput::builder();
                for id in 1..BATCH {
                    out = out.successful(ok(&id.to_string()));
                }
                out.failed(failed("0", "RequestThrottled", false))
                    .build()
                    .unwrap()
            });
        let rest = mock!(aws_sdk_sqs::Client::send_message_batch).then_output(|| {
            SendMessageBatchOutput::builder()
                .successful(ok("0"))
                .set_failed(Some(Vec::new()))
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&stuck, &rest]);
        let run = SweepQueue::new(client, QUEUE).enqueue(&all).await.unwrap();
        assert_eq!(stuck.num_calls(), 3, "ENTRY_ATTEMPTS");
        assert_eq!(rest.num_calls(), 1);
        assert_eq!(run.enqueued, 10);
        assert_eq!(run.failed.len(), 1);
        assert_eq!(run.failed[0].service_arn, all[0]);
        assert_eq!(run.failed[0].error_kind, "AwsThrottling");
    }

    #[tokio::test]
    async fn a_refused_call_ends_the_run_with_its_error() {
        let send = mock!(aws_sdk_sqs::Client::send_message_batch).then_error(|| {
            SendMessageBatchError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("not authorized to perform sqs:SendMessage")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&send]);
        let e = SweepQueue::new(client, QUEUE)
            .enqueue(&services(25))
            .await
            .unwrap_err();
        assert_eq!(e.kind, AwsErrorKind::AccessDenied);
        assert_eq!(send.num_calls(), 1, "no further batch once SQS refuses");
    }
}
