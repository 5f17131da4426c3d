//! The world's CloudWatch metrics endpoint: moto 5.2.5 does not speak the protocol
//! `aws-sdk-cloudwatch` uses (Smithy RPC v2 CBOR: `POST /service/GraniteServiceVersion20100801/
//! operation/<Operation>`, `smithy-protocol: rpc-v2-cbor`, CBOR bodies; moto answers such a
//! request 404), so the world serves the metric operations itself, in the spirit of the ECS
//! emulator.
//!
//! Operations: `PutMetricData` (`Value`, `Values`/`Counts` or `StatisticValues`, `Timestamp`
//! default now, `Unit`), `GetMetricData` (`MetricStat` queries; statistics `Sum`,
//! `SampleCount`, `Average`, `Minimum`, `Maximum`), `GetMetricStatistics` and `ListMetrics`.
//! Anything else, a metric-math `Expression` or another statistic answers an error.
//!
//! As CloudWatch does: a metric is its namespace, name and exact set of dimensions; datapoints
//! are aggregated into periods aligned to multiples of the period since the epoch; a period
//! without data has no datapoint (never a 0); `GetMetricData` answers newest first unless
//! `ScanBy` is `TimestampAscending`; the window is `[StartTime, EndTime)`.
//!
//! Time: requests and answers are in the caller's time, data in world time ([`WorldClock`]);
//! see [`crate::clock`].
//!
//! Errors are HTTP 400 with `x-amzn-query-error: <Code>;Sender` and a CBOR body
//! `{"__type": "com.amazonaws.cloudwatch#<Code>", "message": ...}`, as CloudWatch's
//! query-compatible protocol answers them.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciborium::Value as Cbor;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::clock::WorldClock;
use crate::moto::WorldError;

/// The path prefix of every CloudWatch operation in the RPC v2 CBOR protocol.
pub const PATH_PREFIX: &str = "/service/GraniteServiceVersion20100801/operation/";

/// One datapoint as stored (world time).
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub namespace: String,
    pub metric_name: String,
    pub dimensions: BTreeMap<String, String>,
    pub at: SystemTime,
    pub unit: Option<String>,
    pub sum: f64,
    pub count: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Default)]
struct State {
    data: Vec<Datum>,
    calls: Vec<String>,
}

/// The running stand-in; stops when dropped.
#[derive(Debug)]
pub struct CloudWatchStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    clock: WorldClock,
    server: tokio::task::JoinHandle<()>,
}

impl CloudWatchStandIn {
    /// Serves on a free loopback port on the current tokio runtime, on `clock`'s time.
    pub async fn start(clock: WorldClock) -> Result<CloudWatchStandIn, WorldError> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(WorldError::io("binding the CloudWatch stand-in"))?;
        let addr = listener
            .local_addr()
            .map_err(WorldError::io("reading the CloudWatch stand-in's address"))?;
        let state = Arc::new(Mutex::new(State::default()));
        let server = tokio::spawn(serve(listener, state.clone(), clock.clone()));
        Ok(CloudWatchStandIn {
            addr,
            state,
            clock,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn clock(&self) -> &WorldClock {
        &self.clock
    }

    /// Every datapoint stored so far.
    pub fn data(&self) -> Vec<Datum> {
        lock(&self.state).data.clone()
    }

    /// Operation names received, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }
}

impl Drop for CloudWatchStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>, clock: WorldClock) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (state, clock) = (state.clone(), clock.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (state, clock) = (state.clone(), clock.clone());
                        async move { Ok::<_, Infallible>(handle(&state, &clock, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A CloudWatch error answer.
#[derive(Debug)]
struct ApiError {
    code: &'static str,
    message: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError {
        code: "InvalidParameterValue",
        message: message.into(),
    }
}

fn missing(member: &str) -> ApiError {
    ApiError {
        code: "MissingParameter",
        message: format!("The parameter {member} is required."),
    }
}

async fn handle(
    state: &Mutex<State>,
    clock: &WorldClock,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let operation = request
        .uri()
        .path()
        .strip_prefix(PATH_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return respond(Err(invalid(format!("reading the body: {e}")))),
    };
    lock(state).calls.push(operation.clone());
    let input: Cbor = if body.is_empty() {
        Cbor::Map(Vec::new())
    } else {
        match ciborium::from_reader(&body[..]) {
            Ok(v) => v,
            Err(e) => {
                return respond(Err(ApiError {
                    code: "SerializationException",
                    message: format!("invalid CBOR body: {e}"),
                }));
            }
        }
    };
    let result = match operation.as_str() {
        "PutMetricData" => put_metric_data(&mut lock(state), clock, &input),
        "GetMetricData" => get_metric_data(&lock(state), clock, &input),
        "GetMetricStatistics" => get_metric_statistics(&lock(state), clock, &input),
        "ListMetrics" => list_metrics(&lock(state), &input),
        other => Err(ApiError {
            code: "InvalidAction",
            message: format!("the world's CloudWatch stand-in does not implement {other:?}"),
        }),
    };
    respond(result)
}

/// A CloudWatch error answer of `status` and `code` (for the fault and IAM proxies).
pub fn error_response(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = respond(Err(ApiError {
        code: "placeholder",
        message: message.to_owned(),
    }));
    let body = map(vec![
        (
            "__type",
            Cbor::Text(format!("com.amazonaws.cloudwatch#{code}")),
        ),
        ("message", Cbor::Text(message.to_owned())),
    ]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&body, &mut bytes).expect("CBOR encodes into a Vec");
    *response.body_mut() = Full::new(Bytes::from(bytes));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    let sender = if status >= 500 { "Receiver" } else { "Sender" };
    if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("{code};{sender}")) {
        response.headers_mut().insert("x-amzn-query-error", value);
    }
    response
}

fn respond(result: Result<Cbor, ApiError>) -> Response<Full<Bytes>> {
    let (status, body, query_error) = match result {
        Ok(body) => (200, body, None),
        Err(e) => (
            400,
            map(vec![
                (
                    "__type",
                    Cbor::Text(format!("com.amazonaws.cloudwatch#{}", e.code)),
                ),
                ("message", Cbor::Text(e.message)),
            ]),
            Some(format!("{};Sender", e.code)),
        ),
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&body, &mut bytes).expect("CBOR encodes into a Vec");
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/cbor")
        .header("smithy-protocol", "rpc-v2-cbor")
        .header("x-amzn-requestid", "00000000-0000-4000-8000-00000000c10d");
    if let Some(query_error) = query_error {
        response = response.header("x-amzn-query-error", query_error);
    }
    response
        .body(Full::new(Bytes::from(bytes)))
        .expect("a valid response")
}

// --------------------------------------------------------------------------------- CBOR access

fn map(entries: Vec<(&str, Cbor)>) -> Cbor {
    Cbor::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Cbor::Text(k.to_owned()), v))
            .collect(),
    )
}

fn get<'a>(value: &'a Cbor, key: &str) -> Option<&'a Cbor> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn text(value: &Cbor, key: &str) -> Option<String> {
    get(value, key)?.as_text().map(str::to_owned)
}

fn list<'a>(value: &'a Cbor, key: &str) -> &'a [Cbor] {
    get(value, key)
        .and_then(Cbor::as_array)
        .map_or(&[], Vec::as_slice)
}

fn number(value: &Cbor) -> Option<f64> {
    match value {
        Cbor::Float(f) => Some(*f),
        Cbor::Integer(i) => Some(i128::from(*i) as f64),
        _ => None,
    }
}

fn timestamp(value: &Cbor, key: &str) -> Result<Option<SystemTime>, ApiError> {
    let Some(value) = get(value, key) else {
        return Ok(None);
    };
    let seconds = match value {
        Cbor::Tag(1, inner) => number(inner),
        other => number(other),
    }
    .ok_or_else(|| invalid(format!("{key} is not a timestamp")))?;
    if seconds < 0.0 {
        return Err(invalid(format!("{key} is before 1970")));
    }
    Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(seconds)))
}

fn encode_time(t: SystemTime) -> Cbor {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64 / 1000.0;
    Cbor::Tag(1, Box::new(Cbor::Float(secs)))
}

fn dimensions(value: &Cbor) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for dimension in list(value, "Dimensions") {
        let name = text(dimension, "Name").ok_or_else(|| missing("Dimensions.member.N.Name"))?;
        let value = text(dimension, "Value").ok_or_else(|| missing("Dimensions.member.N.Value"))?;
        if out.insert(name.clone(), value).is_some() {
            return Err(invalid(format!("The dimension {name} is given twice.")));
        }
    }
    if out.len() > 30 {
        return Err(invalid("At most 30 dimensions."));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------- operations

fn put_metric_data(state: &mut State, clock: &WorldClock, input: &Cbor) -> Result<Cbor, ApiError> {
    let namespace = text(input, "Namespace").ok_or_else(|| missing("Namespace"))?;
    let data = list(input, "MetricData");
    if data.is_empty() {
        return Err(missing("MetricData"));
    }
    if data.len() > 1000 {
        return Err(invalid("At most 1000 MetricData items per call."));
    }
    let now = clock.now();
    let mut new = Vec::new();
    for item in data {
        let metric_name = text(item, "MetricName").ok_or_else(|| missing("MetricName"))?;
        let dimensions = dimensions(item)?;
        // The sender's timestamps are its own clock: the world's data plane stamps world time.
        let at = timestamp(item, "Timestamp")?.unwrap_or(now);
        if at > now + Duration::from_secs(2 * 3600) || at + Duration::from_secs(14 * 86_400) < now {
            return Err(invalid(
                "The timestamp must be within the last two weeks and at most two hours ahead.",
            ));
        }
        let unit = text(item, "Unit");
        let mut samples: Vec<(f64, f64)> = Vec::new();
        if let Some(value) = get(item, "Value") {
            samples.push((
                number(value).ok_or_else(|| invalid("Value is not a number"))?,
                1.0,
            ));
        }
        let counts = list(item, "Counts");
        for (i, value) in list(item, "Values").iter().enumerate() {
            let value = number(value).ok_or_else(|| invalid("Values holds a non-number"))?;
            let count = counts.get(i).and_then(number).unwrap_or(1.0);
            samples.push((value, count));
        }
        let stats = get(item, "StatisticValues");
        let datum = |sum, count, min, max| Datum {
            namespace: namespace.clone(),
            metric_name: metric_name.clone(),
            dimensions: dimensions.clone(),
            at,
            unit: unit.clone(),
            sum,
            count,
            min,
            max,
        };
        match (samples.is_empty(), stats) {
            (false, None) => {
                for (value, count) in samples {
                    new.push(datum(value * count, count, value, value));
                }
            }
            (true, Some(stats)) => {
                let field = |k: &str| {
                    get(stats, k)
                        .and_then(number)
                        .ok_or_else(|| missing(&format!("StatisticValues.{k}")))
                };
                new.push(datum(
                    field("Sum")?,
                    field("SampleCount")?,
                    field("Minimum")?,
                    field("Maximum")?,
                ));
            }
            _ => {
                return Err(invalid(
                    "Give exactly one of Value, Values or StatisticValues.",
                ));
            }
        }
    }
    state.data.extend(new);
    Ok(Cbor::Map(Vec::new()))
}

/// One metric of a query.
struct Selector {
    namespace: String,
    metric_name: String,
    dimensions: BTreeMap<String, String>,
    unit: Option<String>,
}

impl Selector {
    fn parse(metric: &Cbor, unit: Option<String>) -> Result<Selector, ApiError> {
        Ok(Selector {
            namespace: text(metric, "Namespace").ok_or_else(|| missing("Namespace"))?,
            metric_name: text(metric, "MetricName").ok_or_else(|| missing("MetricName"))?,
            dimensions: dimensions(metric)?,
            unit,
        })
    }

    fn matches(&self, datum: &Datum) -> bool {
        datum.namespace == self.namespace
            && datum.metric_name == self.metric_name
            && datum.dimensions == self.dimensions
            && self
                .unit
                .as_ref()
                .is_none_or(|u| datum.unit.as_ref() == Some(u))
    }
}

#[derive(Debug, Clone, Copy)]
struct Aggregate {
    sum: f64,
    count: f64,
    min: f64,
    max: f64,
}

impl Aggregate {
    fn statistic(&self, name: &str) -> Option<f64> {
        Some(match name {
            "Sum" => self.sum,
            "SampleCount" => self.count,
            "Average" => self.sum / self.count.max(f64::MIN_POSITIVE),
            "Minimum" => self.min,
            "Maximum" => self.max,
            _ => return None,
        })
    }
}

fn check_statistic(name: &str) -> Result<(), ApiError> {
    match name {
        "Sum" | "SampleCount" | "Average" | "Minimum" | "Maximum" => Ok(()),
        other => Err(invalid(format!(
            "The statistic {other} is not modelled by the world's CloudWatch stand-in."
        ))),
    }
}

fn period_of(value: Option<&Cbor>) -> Result<u64, ApiError> {
    let period = value.and_then(number).ok_or_else(|| missing("Period"))?;
    let period = period as u64;
    if period == 0
        || (period >= 60 && !period.is_multiple_of(60))
        || (period < 60 && ![1, 5, 10, 20, 30].contains(&period))
    {
        return Err(invalid(
            "The period must be 1, 5, 10, 20, 30 or a multiple of 60 seconds.",
        ));
    }
    Ok(period)
}

/// Per period start (world time, seconds since the epoch), the aggregate of the matching data
/// in `[start, end)`.
fn buckets(
    state: &State,
    selector: &Selector,
    start: SystemTime,
    end: SystemTime,
    period: u64,
) -> BTreeMap<u64, Aggregate> {
    let mut out: BTreeMap<u64, Aggregate> = BTreeMap::new();
    for datum in state.data.iter().filter(|d| selector.matches(d)) {
        if datum.at < start || datum.at >= end {
            continue;
        }
        let secs = datum
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let bucket = secs - secs % period;
        out.entry(bucket)
            .and_modify(|a| {
                a.sum += datum.sum;
                a.count += datum.count;
                a.min = a.min.min(datum.min);
                a.max = a.max.max(datum.max);
            })
            .or_insert(Aggregate {
                sum: datum.sum,
                count: datum.count,
                min: datum.min,
                max: datum.max,
            });
    }
    out
}

fn window(
    clock: &WorldClock,
    input: &Cbor,
) -> Result<(SystemTime, SystemTime, Duration), ApiError> {
    let start = timestamp(input, "StartTime")?.ok_or_else(|| missing("StartTime"))?;
    let end = timestamp(input, "EndTime")?.ok_or_else(|| missing("EndTime"))?;
    if end <= start {
        return Err(invalid(
            "The parameter StartTime must be less than the parameter EndTime.",
        ));
    }
    let ahead = clock.ahead();
    Ok((start + ahead, end + ahead, ahead))
}

fn get_metric_data(state: &State, clock: &WorldClock, input: &Cbor) -> Result<Cbor, ApiError> {
    let (start, end, ahead) = window(clock, input)?;
    let queries = list(input, "MetricDataQueries");
    if queries.is_empty() {
        return Err(missing("MetricDataQueries"));
    }
    if queries.len() > 500 {
        return Err(invalid("At most 500 MetricDataQueries."));
    }
    let ascending = text(input, "ScanBy").as_deref() == Some("TimestampAscending");
    let mut ids = BTreeSet::new();
    let mut results = Vec::new();
    for query in queries {
        let id = text(query, "Id").ok_or_else(|| missing("MetricDataQueries.member.N.Id"))?;
        if !ids.insert(id.clone()) {
            return Err(invalid(format!("The Id {id} is used twice.")));
        }
        if get(query, "Expression").is_some() {
            return Err(invalid(
                "Metric math expressions are not modelled by the world's CloudWatch stand-in.",
            ));
        }
        let stat = get(query, "MetricStat").ok_or_else(|| missing("MetricStat"))?;
        let metric = get(stat, "Metric").ok_or_else(|| missing("MetricStat.Metric"))?;
        let selector = Selector::parse(metric, text(stat, "Unit"))?;
        let statistic = text(stat, "Stat").ok_or_else(|| missing("MetricStat.Stat"))?;
        check_statistic(&statistic)?;
        let period = period_of(get(stat, "Period"))?;
        if get(query, "ReturnData").is_some_and(|v| *v == Cbor::Bool(false)) {
            continue;
        }
        let mut points: Vec<(u64, f64)> = buckets(state, &selector, start, end, period)
            .into_iter()
            .filter_map(|(t, a)| a.statistic(&statistic).map(|v| (t, v)))
            .collect();
        if !ascending {
            points.reverse();
        }
        let label = text(query, "Label").unwrap_or_else(|| selector.metric_name.clone());
        results.push(map(vec![
            ("Id", Cbor::Text(id)),
            ("Label", Cbor::Text(label)),
            (
                "Timestamps",
                Cbor::Array(
                    points
                        .iter()
                        .map(|(t, _)| {
                            encode_time(
                                (UNIX_EPOCH + Duration::from_secs(*t))
                                    .checked_sub(ahead)
                                    .unwrap_or(UNIX_EPOCH),
                            )
                        })
                        .collect(),
                ),
            ),
            (
                "Values",
                Cbor::Array(points.iter().map(|(_, v)| Cbor::Float(*v)).collect()),
            ),
            ("StatusCode", Cbor::Text("Complete".to_owned())),
        ]));
    }
    Ok(map(vec![
        ("MetricDataResults", Cbor::Array(results)),
        ("Messages", Cbor::Array(Vec::new())),
    ]))
}

fn get_metric_statistics(
    state: &State,
    clock: &WorldClock,
    input: &Cbor,
) -> Result<Cbor, ApiError> {
    let (start, end, ahead) = window(clock, input)?;
    let selector = Selector::parse(input, text(input, "Unit"))?;
    let period = period_of(get(input, "Period"))?;
    let statistics: Vec<String> = list(input, "Statistics")
        .iter()
        .filter_map(|s| s.as_text().map(str::to_owned))
        .collect();
    if statistics.is_empty() {
        return Err(missing("Statistics"));
    }
    for s in &statistics {
        check_statistic(s)?;
    }
    let datapoints = buckets(state, &selector, start, end, period)
        .into_iter()
        .map(|(t, aggregate)| {
            let mut entries = vec![(
                "Timestamp",
                encode_time(
                    (UNIX_EPOCH + Duration::from_secs(t))
                        .checked_sub(ahead)
                        .unwrap_or(UNIX_EPOCH),
                ),
            )];
            for s in &statistics {
                let key = match s.as_str() {
                    "Sum" => "Sum",
                    "SampleCount" => "SampleCount",
                    "Average" => "Average",
                    "Minimum" => "Minimum",
                    _ => "Maximum",
                };
                entries.push((key, Cbor::Float(aggregate.statistic(s).unwrap_or_default())));
            }
            if let Some(unit) = &selector.unit {
                entries.push(("Unit", Cbor::Text(unit.clone())));
            }
            map(entries)
        })
        .collect();
    Ok(map(vec![
        ("Label", Cbor::Text(selector.metric_name)),
        ("Datapoints", Cbor::Array(datapoints)),
    ]))
}

fn list_metrics(state: &State, input: &Cbor) -> Result<Cbor, ApiError> {
    let namespace = text(input, "Namespace");
    let name = text(input, "MetricName");
    let mut seen = BTreeSet::new();
    let mut metrics = Vec::new();
    for d in &state.data {
        if namespace.as_ref().is_some_and(|n| *n != d.namespace)
            || name.as_ref().is_some_and(|n| *n != d.metric_name)
        {
            continue;
        }
        let key = (
            d.namespace.clone(),
            d.metric_name.clone(),
            d.dimensions.clone(),
        );
        if !seen.insert(key) {
            continue;
        }
        metrics.push(map(vec![
            ("Namespace", Cbor::Text(d.namespace.clone())),
            ("MetricName", Cbor::Text(d.metric_name.clone())),
            (
                "Dimensions",
                Cbor::Array(
                    d.dimensions
                        .iter()
                        .map(|(k, v)| {
                            map(vec![
                                ("Name", Cbor::Text(k.clone())),
                                ("Value", Cbor::Text(v.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]));
    }
    Ok(map(vec![("Metrics", Cbor::Array(metrics))]))
}
