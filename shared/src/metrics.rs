//! CloudWatch metrics of every function invocation, written as CloudWatch embedded metric format
//! (EMF) lines on standard output: Lambda sends standard output to the function's log group and
//! CloudWatch Logs turns each EMF line into metric values, with no extra AWS call, no agent and
//! no `cloudwatch:PutMetricData` permission.
//!
//! Each line is its own JSON object, written whole (never inside a tracing line). It follows the
//! [specification](https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html):
//! `_aws.Timestamp` (epoch milliseconds) and `_aws.CloudWatchMetrics`, a list of directives
//! (`Namespace`, `Dimensions`: lists of dimension names, `Metrics`: `{Name, Unit}`), with every
//! name a directive refers to a top-level member of the line: a string for a dimension, a
//! number for a metric. A directive has at most [`MAX_METRICS`] metrics and a dimension set at
//! most [`MAX_DIMENSIONS`] names. Members no directive names (`requestId`, `xrayTraceId`,
//! `hookStatus`) are kept for Logs Insights and cost nothing.
//!
//! A hand-written module rather than a crate: the format is small, and the one maintained Rust
//! EMF library (awslabs' `metrique`) is a framework for services emitting wide events through a
//! background writer, far more than one line per invocation needs.
//!
//! **What is counted** while an invocation runs ([`record`], a task-local [`Counts`]): the AWS
//! operations called ([`CountAwsCalls`], an SDK interceptor on every client), the pins created
//! and removed ([`crate::apply::apply`]), the errors reported, by `error_kind`, and how long
//! the post-shift hook has held the deployment so far.
//!
//! **Dimensions** are few and of bounded cardinality, because every distinct combination of
//! metric name and dimension values is one custom metric, billed monthly:
//!
//! - `Function` (4 values) and `Function` + `Stage` (the stages each hook is registered at, the
//!   reconciler's two triggers; an event whose stage cannot be read counts as `unknown`): every
//!   metric;
//! - `Service` (`cluster/service`, one per protected service): only what tells a service's
//!   story (pins, errors, hold time, repairs), not durations or call counts;
//! - `Function` + `ErrorKind`, `Function` + `RepairKind` and `Function` + `RetireReason`
//!   (fixed lists; the reconciler's `Retirements` of retained versions, by reason): one line
//!   per kind that occurred.
//!
//! The request ID is never a dimension: it is a plain member of the line.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_types::config_bag::ConfigBag;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::event::{HookAnswer, HookEvent, HookStatus};
use crate::hook::{self, Clients, HookConfig};
use crate::reconciler::{self, ReconcileError, ReconcilerConfig, Trigger};

/// The CloudWatch namespace of every skewguard metric.
pub const NAMESPACE: &str = "skewguard";

/// The specification's limit on metrics per directive.
pub const MAX_METRICS: usize = 100;

/// The specification's limit on dimension names per dimension set.
pub const MAX_DIMENSIONS: usize = 30;

/// The stage value of an event whose stage could not be read (keeps `Stage` bounded).
pub const UNKNOWN_STAGE: &str = "unknown";

/// What one invocation did, counted while it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// AWS operations called (each once, whatever the SDK's own retries).
    pub aws_calls: u64,
    /// Pin rules created.
    pub pins_created: u64,
    /// Pin rules removed.
    pub pins_removed: u64,
    /// Errors reported, by `error_kind`.
    pub errors: BTreeMap<String, u64>,
    /// How long the deployment has been held so far (post-shift: since green went live).
    pub held: Option<Duration>,
    /// Retained versions retired (their copy torn down), by reason (`max-versions`, `idle`, …).
    pub retirements: BTreeMap<String, u64>,
}

/// The invocation a line belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The Lambda request ID.
    pub request_id: String,
    /// The X-Ray trace ID, when Lambda passed one.
    pub xray_trace_id: Option<String>,
}

struct Recording {
    request_id: String,
    counts: Counts,
}

tokio::task_local! {
    static CURRENT: RefCell<Recording>;
}

/// Runs `work` as one invocation: everything it records ([`record`]) is counted apart from any
/// other invocation, and returned with its output.
pub async fn counting<F: Future>(invocation: &Invocation, work: F) -> (F::Output, Counts) {
    let recording = RefCell::new(Recording {
        request_id: invocation.request_id.clone(),
        counts: Counts::default(),
    });
    CURRENT
        .scope(recording, async move {
            let output = work.await;
            let counts = CURRENT.with(|r| r.borrow().counts.clone());
            (output, counts)
        })
        .await
}

/// Adds to the current invocation's counts; outside one (the CLI, unit tests) it does nothing.
pub fn record(update: impl FnOnce(&mut Counts)) {
    let _ = CURRENT.try_with(|r| update(&mut r.borrow_mut().counts));
}

/// The Lambda request ID of the invocation running now, if any: who acted, for the ledger.
pub fn request_id() -> Option<String> {
    CURRENT.try_with(|r| r.borrow().request_id.clone()).ok()
}

/// Counts every AWS operation a client calls into the current invocation. Registered on every
/// SDK client the functions build ([`crate::cold_start::clients`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountAwsCalls;

impl Intercept for CountAwsCalls {
    fn name(&self) -> &'static str {
        "skewguard::CountAwsCalls"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        record(|c| c.aws_calls += 1);
        Ok(())
    }
}

/// Runs one lifecycle-hook invocation ([`hook::handle`]) and writes its metrics.
pub async fn run_hook(
    config: &HookConfig,
    clients: &Clients,
    raw: Value,
    invocation: &Invocation,
) -> HookAnswer {
    let started = Instant::now();
    let event = HookEvent::parse(&raw).ok();
    // Boxed: the handler's future is deep, and the runtime nests it further.
    let handling = Box::pin(hook::handle(config, clients, raw));
    let (answer, counts) = counting(invocation, handling).await;
    let outcome = HookOutcome {
        function: config.function.name(),
        stage: event.as_ref().map(|e| e.stage.as_str()),
        service_arn: event.as_ref().map(|e| e.service_arn.as_str()),
        status: answer.hook_status,
        duration: started.elapsed(),
    };
    write_lines(&hook_lines(
        &outcome,
        &counts,
        invocation,
        OffsetDateTime::now_utc(),
    ));
    answer
}

/// Runs one reconciler invocation ([`reconciler::handle`]), writes its metrics and returns the
/// function's answer.
pub async fn run_reconciler(
    clients: &Clients,
    config: &ReconcilerConfig,
    raw: Value,
    invocation: &Invocation,
) -> Result<Value, ReconcileError> {
    let started = Instant::now();
    let stage = match reconciler::trigger_of(&raw) {
        Ok(Trigger::Service(_)) => "deployment-event",
        Ok(Trigger::AllServices) => "schedule",
        Ok(Trigger::Queued(_)) => "sweep-queue",
        Err(_) => UNKNOWN_STAGE,
    };
    // Boxed: the handler's future is deep, and the runtime nests it further.
    let handling = Box::pin(reconciler::handle(
        clients,
        config,
        raw,
        &invocation.request_id,
    ));
    let (result, counts) = counting(invocation, handling).await;
    let run = ReconcilerRun {
        stage,
        result: result.as_ref().map(|h| &h.summary).map_err(|e| e.kind()),
        duration: started.elapsed(),
    };
    write_lines(&reconciler_lines(
        &run,
        &counts,
        invocation,
        OffsetDateTime::now_utc(),
    ));
    result.map(|handled| handled.answer)
}

/// How a hook invocation ended.
#[derive(Debug, Clone)]
pub struct HookOutcome<'a> {
    /// `post-test-traffic`, `production-shift` or `post-shift`.
    pub function: &'a str,
    /// The event's lifecycle stage, when the event could be read.
    pub stage: Option<&'a str>,
    /// The event's service, when the event could be read.
    pub service_arn: Option<&'a str>,
    /// The answer given to ECS.
    pub status: HookStatus,
    pub duration: Duration,
}

/// How a reconciler invocation ended.
#[derive(Debug, Clone)]
pub struct ReconcilerRun<'a> {
    /// `deployment-event`, `schedule`, `sweep-queue` or `unknown`.
    pub stage: &'a str,
    /// The run's summary ([`reconciler::Handled::summary`]: `{"services": [...], "errors":
    /// [...]}`, or for a scheduled run `{"enqueued": n, "notEnqueued": [...]}`), or the error
    /// kind.
    pub result: Result<&'a Value, &'static str>,
    pub duration: Duration,
}

/// The EMF lines of one hook invocation: the invocation's line, and one line per error kind.
pub fn hook_lines(
    outcome: &HookOutcome<'_>,
    counts: &Counts,
    invocation: &Invocation,
    at: OffsetDateTime,
) -> Vec<Value> {
    let status = match outcome.status {
        HookStatus::Succeeded => "SUCCEEDED",
        HookStatus::Failed => "FAILED",
        HookStatus::InProgress => "IN_PROGRESS",
    };
    let errors: u64 = counts.errors.values().sum();
    let mut line = Line::new(at, invocation);
    line.member("Function", outcome.function);
    line.member("Stage", outcome.stage.unwrap_or(UNKNOWN_STAGE));
    line.member("hookStatus", status);
    let mut all = vec![
        ("Invocations", Unit::Count, 1.0),
        ("Duration", Unit::Milliseconds, millis(outcome.duration)),
        ("AwsCalls", Unit::Count, counts.aws_calls as f64),
        ("PinsCreated", Unit::Count, counts.pins_created as f64),
        ("PinsRemoved", Unit::Count, counts.pins_removed as f64),
        ("Succeeded", Unit::Count, flag(status == "SUCCEEDED")),
        ("Failed", Unit::Count, flag(status == "FAILED")),
        ("InProgress", Unit::Count, flag(status == "IN_PROGRESS")),
        ("Errors", Unit::Count, errors as f64),
    ];
    if let Some(held) = counts.held {
        all.push(("HoldTime", Unit::Seconds, held.as_secs_f64()));
    }
    line.directive(&[&["Function"], &["Function", "Stage"]], &all);
    if let Some(service) = outcome.service_arn.map(service_name) {
        line.member("Service", service);
        let per_service: Vec<_> = all
            .iter()
            .filter(|(name, ..)| {
                matches!(
                    *name,
                    "PinsCreated" | "PinsRemoved" | "Failed" | "Errors" | "HoldTime"
                )
            })
            .copied()
            .collect();
        line.directive(&[&["Service"]], &per_service);
    }
    let mut lines = vec![line.into_value()];
    lines.extend(kind_lines(
        at,
        invocation,
        outcome.function,
        "ErrorKind",
        "Errors",
        &counts.errors,
    ));
    lines
}

/// The EMF lines of one reconciler invocation: the run's line (pins, calls, repairs, errors,
/// and for a scheduled run the services enqueued and not enqueued), one line per service that
/// was repaired, failed or could not be enqueued, and one line per repair and error kind.
pub fn reconciler_lines(
    run: &ReconcilerRun<'_>,
    counts: &Counts,
    invocation: &Invocation,
    at: OffsetDateTime,
) -> Vec<Value> {
    const FUNCTION: &str = "reconciler";
    let mut by_service: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut repair_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_kinds = counts.errors.clone();
    let mut services = 0;
    let (mut enqueued, mut not_enqueued) = (None, 0u64);
    match run.result {
        Ok(answer) => {
            for report in answer["services"].as_array().into_iter().flatten() {
                services += 1;
                let repairs = report["repairs"].as_array().map_or(&[][..], Vec::as_slice);
                for repair in repairs {
                    let kind = repair["kind"].as_str().unwrap_or("unknown");
                    *repair_kinds.entry(kind.to_owned()).or_default() += 1;
                }
                if let (Some(service), false) = (report["serviceArn"].as_str(), repairs.is_empty())
                {
                    by_service
                        .entry(service_name(service).to_owned())
                        .or_default()
                        .0 += repairs.len() as u64;
                }
            }
            for failed in answer["notEnqueued"].as_array().into_iter().flatten() {
                not_enqueued += 1;
                let kind = failed["errorKind"].as_str().unwrap_or("unknown");
                *error_kinds.entry(kind.to_owned()).or_default() += 1;
                if let Some(service) = failed["serviceArn"].as_str() {
                    by_service
                        .entry(service_name(service).to_owned())
                        .or_default()
                        .1 += 1;
                }
            }
            enqueued = answer["enqueued"].as_u64();
            for error in answer["errors"].as_array().into_iter().flatten() {
                services += 1;
                let kind = error["errorKind"].as_str().unwrap_or("unknown");
                *error_kinds.entry(kind.to_owned()).or_default() += 1;
                if let Some(service) = error["serviceArn"].as_str() {
                    by_service
                        .entry(service_name(service).to_owned())
                        .or_default()
                        .1 += 1;
                }
            }
        }
        Err(kind) => *error_kinds.entry(kind.to_owned()).or_default() += 1,
    }
    let repairs: u64 = repair_kinds.values().sum();
    let errors: u64 = error_kinds.values().sum();

    let mut line = Line::new(at, invocation);
    line.member("Function", FUNCTION);
    line.member("Stage", run.stage);
    let mut metrics = vec![
        ("Invocations", Unit::Count, 1.0),
        ("Duration", Unit::Milliseconds, millis(run.duration)),
        ("AwsCalls", Unit::Count, counts.aws_calls as f64),
        ("PinsCreated", Unit::Count, counts.pins_created as f64),
        ("PinsRemoved", Unit::Count, counts.pins_removed as f64),
        ("ServicesReconciled", Unit::Count, services as f64),
        ("Repairs", Unit::Count, repairs as f64),
        ("Errors", Unit::Count, errors as f64),
    ];
    if let Some(enqueued) = enqueued {
        metrics.push(("ServicesEnqueued", Unit::Count, enqueued as f64));
        metrics.push(("EnqueueFailures", Unit::Count, not_enqueued as f64));
    }
    line.directive(&[&["Function"], &["Function", "Stage"]], &metrics);
    let mut lines = vec![line.into_value()];
    for (service, (repairs, errors)) in &by_service {
        let mut line = Line::new(at, invocation);
        line.member("Function", FUNCTION);
        line.member("Service", service);
        line.directive(
            &[&["Service"]],
            &[
                ("Repairs", Unit::Count, *repairs as f64),
                ("Errors", Unit::Count, *errors as f64),
            ],
        );
        lines.push(line.into_value());
    }
    lines.extend(kind_lines(
        at,
        invocation,
        FUNCTION,
        "RepairKind",
        "Repairs",
        &repair_kinds,
    ));
    lines.extend(kind_lines(
        at,
        invocation,
        FUNCTION,
        "RetireReason",
        "Retirements",
        &counts.retirements,
    ));
    lines.extend(kind_lines(
        at,
        invocation,
        FUNCTION,
        "ErrorKind",
        "Errors",
        &error_kinds,
    ));
    lines
}

/// One line per kind: `metric` with the dimensions `Function` + `dimension`.
fn kind_lines(
    at: OffsetDateTime,
    invocation: &Invocation,
    function: &str,
    dimension: &str,
    metric: &str,
    counts: &BTreeMap<String, u64>,
) -> Vec<Value> {
    counts
        .iter()
        .map(|(kind, n)| {
            let mut line = Line::new(at, invocation);
            line.member("Function", function);
            line.member(dimension, kind);
            line.directive(
                &[&["Function", dimension]],
                &[(metric, Unit::Count, *n as f64)],
            );
            line.into_value()
        })
        .collect()
}

/// Writes each line whole on standard output, one JSON object per line.
pub fn write_lines(lines: &[Value]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        // A metric line that cannot be written is lost, like any log line; the answer is not.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// The CloudWatch units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// One EMF document under construction.
struct Line {
    root: Map<String, Value>,
    directives: Vec<Value>,
}

impl Line {
    fn new(at: OffsetDateTime, invocation: &Invocation) -> Self {
        let millis = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut root = Map::new();
        root.insert(
            "_aws".to_owned(),
            json!({"Timestamp": millis, "CloudWatchMetrics": []}),
        );
        root.insert("requestId".to_owned(), json!(invocation.request_id));
        if let Some(trace) = &invocation.xray_trace_id {
            root.insert("xrayTraceId".to_owned(), json!(trace));
        }
        Self {
            root,
            directives: Vec::new(),
        }
    }

    /// A string member: a dimension's value, or context for Logs Insights.
    fn member(&mut self, name: &str, value: &str) {
        self.root.insert(name.to_owned(), json!(value));
    }

    /// A directive: these metrics (values set as members) under these dimension sets.
    fn directive(&mut self, dimensions: &[&[&str]], metrics: &[(&str, Unit, f64)]) {
        debug_assert!(metrics.len() <= MAX_METRICS);
        debug_assert!(dimensions.iter().all(|set| set.len() <= MAX_DIMENSIONS));
        for (name, _, value) in metrics {
            self.root.insert((*name).to_owned(), json!(value));
        }
        self.directives.push(json!({
            "Namespace": NAMESPACE,
            "Dimensions": dimensions,
            "Metrics": metrics
                .iter()
                .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                .collect::<Vec<_>>(),
        }));
    }

    fn into_value(mut self) -> Value {
        self.root["_aws"]["CloudWatchMetrics"] = Value::Array(self.directives);
        Value::Object(self.root)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// `cluster/service` from a service ARN (unique within the account and Region the metrics
/// live in, and what the CLI accepts as SERVICE).
fn service_name(service_arn: &str) -> &str {
    service_arn
        .split_once(":service/")
        .map_or(service_arn, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const AT: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";

    fn invocation() -> Invocation {
        Invocation {
            request_id: "req-1".into(),
            xray_trace_id: Some("Root=1-abc".into()),
        }
    }

    /// Each directive's names, and every member they refer to, as the specification requires.
    fn check_references(line: &Value) {
        for directive in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            for set in directive["Dimensions"].as_array().unwrap() {
                for name in set.as_array().unwrap() {
                    assert!(line[name.as_str().unwrap()].is_string(), "{name} in {line}");
                }
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                assert!(line[metric["Name"].as_str().unwrap()].is_number(), "{line}");
            }
        }
    }

    #[test]
    fn a_held_deployment_reports_its_hold_per_stage_and_per_service() {
        let counts = Counts {
            aws_calls: 3,
            held: Some(Duration::from_secs(600)),
            ..Counts::default()
        };
        let outcome = HookOutcome {
            function: "post-shift",
            stage: Some("POST_PRODUCTION_TRAFFIC_SHIFT"),
            service_arn: Some(SVC),
            status: HookStatus::InProgress,
            duration: Duration::from_millis(42),
        };
        let lines = hook_lines(&outcome, &counts, &invocation(), AT);
        assert_eq!(lines.len(), 1, "no error, no kind line: {lines:?}");
        let line = &lines[0];
        check_references(line);
        assert_eq!(line["_aws"]["Timestamp"], AT.unix_timestamp() * 1000);
        assert_eq!(line["Service"], "shop/web");
        assert_eq!(line["HoldTime"], 600.0);
        assert_eq!(line["InProgress"], 1.0);
        assert_eq!(line["Failed"], 0.0);
        assert_eq!(line["AwsCalls"], 3.0);
        assert_eq!(line["requestId"], "req-1");
        let directives = line["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(
            directives[0]["Dimensions"],
            json!([["Function"], ["Function", "Stage"]])
        );
        assert_eq!(directives[1]["Dimensions"], json!([["Service"]]));
        let per_service: Vec<_> = directives[1]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            per_service,
            ["PinsCreated", "PinsRemoved", "Failed", "Errors", "HoldTime"],
            "durations and call counts are not multiplied by the number of services"
        );
    }

    #[test]
    fn a_failed_answer_on_an_unreadable_event_counts_its_error_kind_under_a_bounded_stage() {
        let counts = Counts {
            errors: BTreeMap::from([("MalformedEvent".to_owned(), 1)]),
            ..Counts::default()
        };
        let outcome = HookOutcome {
            function: "post-test-traffic",
            stage: None,
            service_arn: None,
            status: HookStatus::Failed,
            duration: Duration::from_millis(1),
        };
        let lines = hook_lines(&outcome, &counts, &invocation(), AT);
        assert_eq!(lines.len(), 2);
        for line in &lines {
            check_references(line);
        }
        assert_eq!(lines[0]["Stage"], UNKNOWN_STAGE);
        assert_eq!(lines[0]["Failed"], 1.0);
        assert!(lines[0].get("Service").is_none());
        assert_eq!(lines[1]["ErrorKind"], "MalformedEvent");
        assert_eq!(lines[1]["Errors"], 1.0);
        assert_eq!(
            lines[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function", "ErrorKind"]])
        );
    }

    #[test]
    fn a_scheduled_run_reports_repairs_by_kind_and_by_service_and_failures_by_kind() {
        let answer = json!({
            "services": [
                {"serviceArn": SVC, "repairs": [{"kind": "pin-removed"}, {"kind": "finished"}, {"kind": "pin-removed"}]},
                {"serviceArn": "arn:aws:ecs:us-east-1:1:service/shop/quiet", "repairs": []},
            ],
            "errors": [{"serviceArn": "arn:aws:ecs:us-east-1:1:service/shop/api", "errorKind": "AwsAccessDenied"}],
        });
        let run = ReconcilerRun {
            stage: "schedule",
            result: Ok(&answer),
            duration: Duration::from_secs(2),
        };
        let lines = reconciler_lines(&run, &Counts::default(), &invocation(), AT);
        for line in &lines {
            check_references(line);
        }
        assert_eq!(lines[0]["ServicesReconciled"], 3.0);
        assert_eq!(lines[0]["Repairs"], 3.0);
        assert_eq!(lines[0]["Errors"], 1.0);
        let by_service: Vec<_> = lines
            .iter()
            .filter(|l| l.get("Service").is_some())
            .map(|l| {
                (
                    l["Service"].clone(),
                    l["Repairs"].clone(),
                    l["Errors"].clone(),
                )
            })
            .collect();
        assert_eq!(
            by_service,
            [
                (json!("shop/api"), json!(0.0), json!(1.0)),
                (json!("shop/web"), json!(3.0), json!(0.0)),
            ],
            "a service with nothing to say has no line"
        );
        let kinds: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                l.get("RepairKind")
                    .or(l.get("ErrorKind"))
                    .map(|k| (k.clone(), l["Repairs"].clone(), l["Errors"].clone()))
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (json!("finished"), json!(1.0), json!(null)),
                (json!("pin-removed"), json!(2.0), json!(null)),
                (json!("AwsAccessDenied"), json!(null), json!(1.0)),
            ]
        );
    }

    #[test]
    fn retirements_are_counted_by_reason() {
        let answer = json!({"services": [], "errors": []});
        let run = ReconcilerRun {
            stage: "schedule",
            result: Ok(&answer),
            duration: Duration::from_secs(1),
        };
        let counts = Counts {
            retirements: BTreeMap::from([("idle".to_owned(), 2), ("max-versions".to_owned(), 1)]),
            ..Counts::default()
        };
        let lines = reconciler_lines(&run, &counts, &invocation(), AT);
        for line in &lines {
            check_references(line);
        }
        let by_reason: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                l.get("RetireReason").map(|r| {
                    (
                        r.clone(),
                        l["Retirements"].clone(),
                        l["_aws"]["CloudWatchMetrics"][0]["Dimensions"].clone(),
                    )
                })
            })
            .collect();
        assert_eq!(
            by_reason,
            [
                (
                    json!("idle"),
                    json!(2.0),
                    json!([["Function", "RetireReason"]])
                ),
                (
                    json!("max-versions"),
                    json!(1.0),
                    json!([["Function", "RetireReason"]])
                ),
            ]
        );
    }

    #[tokio::test]
    async fn counts_belong_to_their_own_invocation_and_nothing_is_counted_outside_one() {
        record(|c| c.pins_created += 5);
        let one = invocation();
        let first = counting(&one, async {
            record(|c| c.pins_created += 1);
            assert_eq!(request_id().as_deref(), Some("req-1"));
            tokio::task::yield_now().await;
            record(|c| c.pins_removed += 2);
        });
        let other = Invocation {
            request_id: "req-2".into(),
            xray_trace_id: None,
        };
        let second = counting(&other, async { record(|c| c.aws_calls += 7) });
        let (((), a), ((), b)) = tokio::join!(first, second);
        assert_eq!((a.pins_created, a.pins_removed, a.aws_calls), (1, 2, 0));
        assert_eq!((b.pins_created, b.aws_calls), (0, 7));
        assert_eq!(request_id(), None);
    }
}
