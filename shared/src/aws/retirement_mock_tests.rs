//! The operations retirement adds, against mocked SDK clients: the exact requests, what counts
//! as already done, and that a missing or failed measurement is never a zero.

use aws_sdk_cloudwatch::operation::get_metric_data::{GetMetricDataError, GetMetricDataOutput};
use aws_sdk_cloudwatch::types::{MetricDataResult, StatusCode};
use aws_sdk_ecs::operation::delete_service::{DeleteServiceError, DeleteServiceOutput};
use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
use aws_sdk_ecs::operation::update_service::{UpdateServiceError, UpdateServiceOutput};
use aws_sdk_ecs::types::Service;
use aws_sdk_elasticloadbalancingv2::operation::delete_target_group::{
    DeleteTargetGroupError, DeleteTargetGroupOutput,
};
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::{
    DescribeTargetGroupsError, DescribeTargetGroupsOutput,
};
use aws_sdk_elasticloadbalancingv2::types::TargetGroup;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use time::macros::datetime;

use super::AwsErrorKind;
use super::cloudwatch::{CloudWatch, TrafficQuery};
use super::ecs::Ecs;
use super::elb::Elb;

const CLUSTER: &str = "shop";
const COPY: &str = "web-sg-3f2c1ab";
const TG: &str =
    "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/sg-0123456789abcdef/6d0ecf831eec9f09";
const LISTENER: &str =
    "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";

fn error(code: &'static str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message("said by AWS")
        .build()
}

#[tokio::test]
async fn a_copy_is_scaled_to_zero_then_deleted_by_name_in_its_cluster() {
    let update = mock!(aws_sdk_ecs::Client::update_service)
        .match_requests(|r| {
            r.cluster() == Some(CLUSTER)
                && r.service() == Some(COPY)
                && r.desired_count() == Some(0)
        })
        .then_output(|| UpdateServiceOutput::builder().build());
    let delete = mock!(aws_sdk_ecs::Client::delete_service)
        .match_requests(|r| {
            r.cluster() == Some(CLUSTER) && r.service() == Some(COPY) && r.force().is_none()
        })
        .then_output(|| DeleteServiceOutput::builder().build());
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&update, &delete]);
    let ecs = Ecs::new(client);
    ecs.scale_service_to_zero(CLUSTER, COPY).await.unwrap();
    ecs.delete_service(CLUSTER, COPY).await.unwrap();
    assert_eq!((update.num_calls(), delete.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_copy_already_gone_counts_as_scaled_down_and_deleted() {
    for code in [
        "ServiceNotFoundException",
        "ServiceNotActiveException",
        "ClusterNotFoundException",
    ] {
        let update = mock!(aws_sdk_ecs::Client::update_service)
            .then_error(move || UpdateServiceError::generic(error(code)));
        let delete = mock!(aws_sdk_ecs::Client::delete_service)
            .then_error(move || DeleteServiceError::generic(error(code)));
        let describe = mock!(aws_sdk_ecs::Client::describe_services)
            .then_output(|| DescribeServicesOutput::builder().build());
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&update, &delete, &describe]
        );
        let ecs = Ecs::new(client);
        ecs.scale_service_to_zero(CLUSTER, COPY).await.unwrap();
        ecs.delete_service(CLUSTER, COPY).await.unwrap();
        assert_eq!(describe.num_calls(), 0, "{code}: nothing more to ask");
    }
}

#[tokio::test]
async fn a_denied_delete_is_success_only_when_the_service_is_inactive() {
    for (status, gone) in [("INACTIVE", true), ("ACTIVE", false)] {
        let delete = mock!(aws_sdk_ecs::Client::delete_service)
            .then_error(|| DeleteServiceError::generic(error("AccessDeniedException")));
        let describe = mock!(aws_sdk_ecs::Client::describe_services)
            .match_requests(|r| r.cluster() == Some(CLUSTER) && r.services() == [COPY])
            .then_output(move || {
                DescribeServicesOutput::builder()
                    .services(Service::builder().service_name(COPY).status(status).build())
                    .build()
            });
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&delete, &describe]);
        let result = Ecs::new(client).delete_service(CLUSTER, COPY).await;
        if gone {
            result.unwrap();
        } else {
            let err = result.unwrap_err();
            assert_eq!(
                (err.operation, err.kind),
                ("DeleteService", AwsErrorKind::AccessDenied)
            );
        }
        assert_eq!(describe.num_calls(), 1);
    }
}

#[tokio::test]
async fn a_throttled_delete_is_reported_with_its_code() {
    let delete = mock!(aws_sdk_ecs::Client::delete_service)
        .then_error(|| DeleteServiceError::generic(error("ThrottlingException")));
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&delete], |c| c
        .retry_config(RetryConfig::disabled()));
    let err = Ecs::new(client)
        .delete_service(CLUSTER, COPY)
        .await
        .unwrap_err();
    assert_eq!(err.kind, AwsErrorKind::Throttling);
    assert!(err.is("ThrottlingException"));
}

#[tokio::test]
async fn a_target_group_is_deleted_by_arn_and_one_already_gone_is_deleted() {
    let delete = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .match_requests(|r| r.target_group_arn() == Some(TG))
        .then_output(|| DeleteTargetGroupOutput::builder().build());
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&delete]
    );
    Elb::new(client).delete_target_group(TG).await.unwrap();
    assert_eq!(delete.num_calls(), 1);

    let gone = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .then_error(|| DeleteTargetGroupError::generic(error("TargetGroupNotFound")));
    let client = mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, [&gone]);
    Elb::new(client).delete_target_group(TG).await.unwrap();
}

#[tokio::test]
async fn a_target_group_a_rule_still_uses_is_not_deleted() {
    let delete = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .then_error(|| DeleteTargetGroupError::generic(error("ResourceInUse")));
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&delete]
    );
    let err = Elb::new(client).delete_target_group(TG).await.unwrap_err();
    assert_eq!(
        (err.operation, err.code.as_str()),
        ("DeleteTargetGroup", "ResourceInUse")
    );
}

#[tokio::test]
async fn a_denied_target_group_delete_looks_whether_it_is_gone() {
    for (exists, ok) in [(false, true), (true, false)] {
        let delete = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
            .then_error(|| DeleteTargetGroupError::generic(error("AccessDenied")));
        let describe = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
            .match_requests(|r| r.target_group_arns() == [TG])
            .then_output(move || {
                let mut out = DescribeTargetGroupsOutput::builder();
                if exists {
                    out = out.target_groups(TargetGroup::builder().target_group_arn(TG).build());
                }
                out.build()
            });
        let client = mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::MatchAny,
            [&delete, &describe]
        );
        let result = Elb::new(client).delete_target_group(TG).await;
        assert_eq!(result.is_ok(), ok, "{result:?}");
    }
}

#[tokio::test]
async fn a_target_group_is_found_by_its_deterministic_name() {
    let found = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
        .match_requests(|r| r.names() == ["sg-0123456789abcdef"])
        .then_output(|| {
            DescribeTargetGroupsOutput::builder()
                .target_groups(
                    TargetGroup::builder()
                        .target_group_name("sg-0123456789abcdef")
                        .target_group_arn(TG)
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, [&found]);
    assert_eq!(
        Elb::new(client)
            .target_group_arn_by_name("sg-0123456789abcdef")
            .await
            .unwrap()
            .as_deref(),
        Some(TG)
    );
    let missing = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
        .then_error(|| DescribeTargetGroupsError::generic(error("TargetGroupNotFound")));
    let client = mock_client!(
        aws_sdk_elasticloadbalancingv2,
        RuleMode::MatchAny,
        [&missing]
    );
    assert_eq!(
        Elb::new(client)
            .target_group_arn_by_name("sg-0123456789abcdef")
            .await
            .unwrap(),
        None
    );
}

fn query() -> TrafficQuery {
    TrafficQuery {
        target_group_arn: TG.into(),
        load_balancer_of: LISTENER.into(),
    }
}

#[tokio::test]
async fn request_counts_ask_the_albs_request_count_sum_per_minute_with_both_dimensions() {
    let get = mock!(aws_sdk_cloudwatch::Client::get_metric_data)
        .match_requests(|r| {
            let [q] = r.metric_data_queries() else {
                return false;
            };
            let Some(stat) = q.metric_stat() else {
                return false;
            };
            let metric = stat.metric().unwrap();
            let dims: Vec<(&str, &str)> = metric
                .dimensions()
                .iter()
                .map(|d| (d.name().unwrap(), d.value().unwrap()))
                .collect();
            q.id() == Some("r0")
                && metric.namespace() == Some("AWS/ApplicationELB")
                && metric.metric_name() == Some("RequestCount")
                && stat.stat() == Some("Sum")
                && stat.period() == Some(60)
                && dims
                    == [
                        (
                            "TargetGroup",
                            "targetgroup/sg-0123456789abcdef/6d0ecf831eec9f09",
                        ),
                        ("LoadBalancer", "app/web/50dc6c495c0c9188"),
                    ]
                && r.start_time().map(|t| t.secs()) == Some(1_772_364_600)
                && r.end_time().map(|t| t.secs()) == Some(1_772_366_400)
        })
        .then_output(|| {
            GetMetricDataOutput::builder()
                .metric_data_results(
                    MetricDataResult::builder()
                        .id("r0")
                        .status_code(StatusCode::Complete)
                        .values(3.0)
                        .values(4.0)
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_cloudwatch, RuleMode::MatchAny, [&get]);
    let counts = CloudWatch::new(client)
        .request_counts(
            &[query()],
            datetime!(2026-03-01 11:30:20 UTC),
            datetime!(2026-03-01 12:00:59 UTC),
        )
        .await
        .unwrap();
    assert_eq!(counts, [Some(7)]);
    assert_eq!(get.num_calls(), 1);
}

#[tokio::test]
async fn zero_is_only_what_cloudwatch_measured() {
    let get = mock!(aws_sdk_cloudwatch::Client::get_metric_data).then_output(|| {
        GetMetricDataOutput::builder()
            // Measured: data points, all zero.
            .metric_data_results(
                MetricDataResult::builder()
                    .id("r0")
                    .status_code(StatusCode::Complete)
                    .values(0.0)
                    .build(),
            )
            // No data point at all: unknown.
            .metric_data_results(
                MetricDataResult::builder()
                    .id("r1")
                    .status_code(StatusCode::Complete)
                    .build(),
            )
            // CloudWatch could not answer this one: unknown, whatever it returned.
            .metric_data_results(
                MetricDataResult::builder()
                    .id("r2")
                    .status_code(StatusCode::InternalError)
                    .values(0.0)
                    .build(),
            )
            .build()
    });
    let client = mock_client!(aws_sdk_cloudwatch, RuleMode::MatchAny, [&get]);
    let not_a_target_group = TrafficQuery {
        target_group_arn: "tg-without-arn".into(),
        load_balancer_of: LISTENER.into(),
    };
    let counts = CloudWatch::new(client)
        .request_counts(
            &[query(), query(), query(), not_a_target_group],
            datetime!(2026-03-01 11:30 UTC),
            datetime!(2026-03-01 12:00 UTC),
        )
        .await
        .unwrap();
    assert_eq!(counts, [Some(0), None, None, None]);
}

#[tokio::test]
async fn pages_are_followed_and_a_failed_call_is_an_error_not_a_zero() {
    let get = mock!(aws_sdk_cloudwatch::Client::get_metric_data)
        .sequence()
        .output(|| {
            GetMetricDataOutput::builder()
                .metric_data_results(
                    MetricDataResult::builder()
                        .id("r0")
                        .status_code(StatusCode::PartialData)
                        .values(1.0)
                        .build(),
                )
                .next_token("more")
                .build()
        })
        .output(|| {
            GetMetricDataOutput::builder()
                .metric_data_results(
                    MetricDataResult::builder()
                        .id("r0")
                        .status_code(StatusCode::Complete)
                        .values(2.0)
                        .build(),
                )
                .build()
        })
        .error(|| GetMetricDataError::generic(error("AccessDenied")))
        .build();
    let client = mock_client!(aws_sdk_cloudwatch, RuleMode::Sequential, [&get], |c| c
        .retry_config(RetryConfig::disabled()));
    let cw = CloudWatch::new(client);
    let window = (
        datetime!(2026-03-01 11:30 UTC),
        datetime!(2026-03-01 12:00 UTC),
    );
    assert_eq!(
        cw.request_counts(&[query()], window.0, window.1)
            .await
            .unwrap(),
        [Some(3)]
    );
    let err = cw
        .request_counts(&[query()], window.0, window.1)
        .await
        .unwrap_err();
    assert_eq!(
        (err.operation, err.kind),
        ("GetMetricData", AwsErrorKind::AccessDenied)
    );
}

#[tokio::test]
async fn status_reads_a_copys_tasks_and_its_task_size() {
    use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
    use aws_sdk_ecs::types::{CpuArchitecture, RuntimePlatform, TaskDefinition};
    let describe = mock!(aws_sdk_ecs::Client::describe_services)
        .match_requests(|r| r.cluster() == Some(CLUSTER) && r.services() == [COPY, "gone"])
        .then_output(|| {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name(COPY)
                        .status("ACTIVE")
                        .desired_count(2)
                        .running_count(1)
                        .build(),
                )
                .build()
        });
    let td = mock!(aws_sdk_ecs::Client::describe_task_definition)
        .match_requests(|r| r.task_definition() == Some("td:7"))
        .then_output(|| {
            DescribeTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .cpu("512")
                        .memory("1024")
                        .runtime_platform(
                            RuntimePlatform::builder()
                                .cpu_architecture(CpuArchitecture::Arm64)
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe, &td]);
    let ecs = Ecs::new(client);
    let tasks = ecs
        .service_tasks(CLUSTER, &[COPY.into(), "gone".into()])
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "a service ECS does not know is absent");
    assert_eq!(
        (tasks[COPY].desired, tasks[COPY].running, tasks[COPY].active),
        (2, 1, true)
    );
    let size = ecs.task_size("td:7").await.unwrap();
    assert_eq!(
        (
            size.cpu_units,
            size.memory_mib,
            size.architecture.as_deref()
        ),
        (Some(512), Some(1024), Some("ARM64"))
    );
}
