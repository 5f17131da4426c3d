//! CloudWatch: how many requests the ALB sent to a target group over a time window, the
//! evidence retention's idle check and `skewguard status` read.
//!
//! Source: the ALB's own metric `AWS/ApplicationELB` `RequestCount` (statistic `Sum`, 60 s
//! periods) with the dimensions `TargetGroup` = `targetgroup/<name>/<id>` and `LoadBalancer` =
//! `app/<name>/<id>`, both derived from ARNs. ELB documents `RequestCount` as "always reported"
//! while the load balancer carries requests, so a window with data points and no requests is a
//! measured zero; a window without any data point (no traffic on the whole load balancer, a
//! metric not yet ingested, a dimension that names nothing) is *unknown*, never zero.

use aws_sdk_cloudwatch as cloudwatch;
use cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, StatusCode};
use time::OffsetDateTime;

use super::{AwsError, classify};

/// The namespace of the ALB's metrics.
pub const NAMESPACE: &str = "AWS/ApplicationELB";
/// The metric counted: requests the load balancer routed to the target group.
pub const REQUEST_COUNT: &str = "RequestCount";
/// The period of each data point, in seconds (the ALB publishes one per minute).
pub const PERIOD_SECONDS: i32 = 60;
/// GetMetricData takes at most 500 queries per call.
const QUERIES_PER_CALL: usize = 500;

/// One target group's traffic to measure: the target group and a listener (or rule, or load
/// balancer) ARN of the load balancer in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficQuery {
    pub target_group_arn: String,
    /// Any ARN that names the load balancer: `…:loadbalancer/app/N/ID`,
    /// `…:listener/app/N/ID/L` or `…:listener-rule/app/N/ID/L/R`.
    pub load_balancer_of: String,
}

/// The `TargetGroup` dimension of a target group ARN
/// (`arn:aws:elasticloadbalancing:R:A:targetgroup/NAME/ID` → `targetgroup/NAME/ID`).
pub fn target_group_dimension(target_group_arn: &str) -> Option<String> {
    let (_, path) = target_group_arn.split_once(":targetgroup/")?;
    let mut parts = path.split('/');
    let (name, id) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && !name.is_empty() && !id.is_empty())
        .then(|| format!("targetgroup/{name}/{id}"))
}

/// The `LoadBalancer` dimension (`app/NAME/ID`) of a load balancer, listener or listener-rule
/// ARN of an Application Load Balancer; `None` for anything else (an NLB has no such metric).
pub fn load_balancer_dimension(arn: &str) -> Option<String> {
    let (_, path) = [":loadbalancer/", ":listener/", ":listener-rule/"]
        .iter()
        .find_map(|kind| arn.split_once(kind))?;
    let mut parts = path.split('/');
    let (kind, name, id) = (parts.next()?, parts.next()?, parts.next()?);
    (kind == "app" && !name.is_empty() && !id.is_empty()).then(|| format!("app/{name}/{id}"))
}

/// The start of the minute `t` falls in: CloudWatch aligns 60 s data points to whole minutes.
pub fn minute_floor(t: OffsetDateTime) -> OffsetDateTime {
    let secs = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(secs - secs.rem_euclid(60)).unwrap_or(t)
}

#[derive(Clone, Debug)]
pub struct CloudWatch {
    client: cloudwatch::Client,
}

impl CloudWatch {
    pub fn new(client: cloudwatch::Client) -> Self {
        Self { client }
    }

    /// The requests each target group received over `[start, end)` (both rounded down to the
    /// minute), in the order asked: `Some(sum)` when CloudWatch has at least one data point in
    /// the window and answered completely, `None` (unknown) otherwise, including for a query
    /// whose ARNs name no ALB target group (nothing is asked for it).
    ///
    /// Errors: the GetMetricData call failed (classified by AWS code).
    pub async fn request_counts(
        &self,
        queries: &[TrafficQuery],
        start: OffsetDateTime,
        end: OffsetDateTime,
    ) -> Result<Vec<Option<u64>>, AwsError> {
        let (start, end) = (minute_floor(start), minute_floor(end));
        let mut totals: Vec<Option<f64>> = vec![None; queries.len()];
        let mut failed = vec![false; queries.len()];
        let asked: Vec<(usize, MetricDataQuery)> = queries
            .iter()
            .enumerate()
            .filter_map(|(i, q)| Some((i, metric_query(i, q)?)))
            .collect();
        if asked.is_empty() || end <= start {
            return Ok(totals.into_iter().map(|_| None).collect());
        }
        for batch in asked.chunks(QUERIES_PER_CALL) {
            let mut next_token: Option<String> = None;
            loop {
                let answer = self
                    .client
                    .get_metric_data()
                    .set_metric_data_queries(Some(batch.iter().map(|(_, q)| q.clone()).collect()))
                    .start_time(aws_smithy_types::DateTime::from_secs(
                        start.unix_timestamp(),
                    ))
                    .end_time(aws_smithy_types::DateTime::from_secs(end.unix_timestamp()))
                    .set_next_token(next_token.take())
                    .send()
                    .await
                    .map_err(|e| classify("GetMetricData", e))?;
                for result in answer.metric_data_results() {
                    let Some(i) = result.id().and_then(index_of_id) else {
                        continue;
                    };
                    if i >= queries.len() {
                        continue;
                    }
                    match result.status_code() {
                        Some(StatusCode::Complete | StatusCode::PartialData) => {}
                        // InternalError, Forbidden or anything new: not evidence of anything.
                        _ => failed[i] = true,
                    }
                    if !result.values().is_empty() {
                        let sum: f64 = result.values().iter().sum();
                        *totals[i].get_or_insert(0.0) += sum;
                    }
                }
                next_token = answer
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned);
                if next_token.is_none() {
                    break;
                }
            }
        }
        Ok(totals
            .into_iter()
            .zip(failed)
            .map(|(total, failed)| {
                total
                    .filter(|t| !failed && t.is_finite() && *t >= 0.0)
                    .map(|t| t.round() as u64)
            })
            .collect())
    }
}

/// Query IDs must start with a lower-case letter: `r<index>`.
fn index_of_id(id: &str) -> Option<usize> {
    id.strip_prefix('r')?.parse().ok()
}

fn metric_query(index: usize, query: &TrafficQuery) -> Option<MetricDataQuery> {
    let target_group = target_group_dimension(&query.target_group_arn)?;
    let load_balancer = load_balancer_dimension(&query.load_balancer_of)?;
    Some(
        MetricDataQuery::builder()
            .id(format!("r{index}"))
            .return_data(true)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace(NAMESPACE)
                            .metric_name(REQUEST_COUNT)
                            .dimensions(
                                Dimension::builder()
                                    .name("TargetGroup")
                                    .value(target_group)
                                    .build(),
                            )
                            .dimensions(
                                Dimension::builder()
                                    .name("LoadBalancer")
                                    .value(load_balancer)
                                    .build(),
                            )
                            .build(),
                    )
                    .period(PERIOD_SECONDS)
                    .stat("Sum")
                    .build(),
            )
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn dimensions_come_from_the_arns() {
        assert_eq!(
            target_group_dimension(
                "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/sg-0123456789abcdef/6d0ecf831eec9f09"
            )
            .as_deref(),
            Some("targetgroup/sg-0123456789abcdef/6d0ecf831eec9f09")
        );
        assert_eq!(target_group_dimension("tg-blue"), None);
        for arn in [
            "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/web/50dc6c495c0c9188",
            "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2",
            "arn:aws:elasticloadbalancing:us-east-1:1:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee",
        ] {
            assert_eq!(
                load_balancer_dimension(arn).as_deref(),
                Some("app/web/50dc6c495c0c9188"),
                "{arn}"
            );
        }
        assert_eq!(
            load_balancer_dimension(
                "arn:aws:elasticloadbalancing:us-east-1:1:listener/net/tcp/50dc6c495c0c9188/f2f7dc8efc522ab2"
            ),
            None
        );
    }

    #[test]
    fn windows_are_whole_minutes() {
        assert_eq!(
            minute_floor(datetime!(2026-03-01 12:34:56.7 UTC)),
            datetime!(2026-03-01 12:34 UTC)
        );
    }
}
