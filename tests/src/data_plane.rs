//! The ALB data plane: an HTTP/1.1 reverse proxy on `127.0.0.1:<port>` that routes each request
//! the way an Application Load Balancer listener would, with the listener's configuration read
//! from the ELBv2 stand-in (moto).
//!
//! Per request:
//! 1. the listener's rules ([`Elb::describe_listener_rules`]) are evaluated by the domain
//!    library's [`route`] (no rule logic lives here);
//! 2. a fixed-response action answers with its status, content type and body; a forward action
//!    picks one of its target groups at random by weight (weight 0 is never chosen);
//! 3. the group's targets come from `DescribeTargetHealth`; one is chosen round-robin among the
//!    routable ones and the request is proxied to it.
//!
//! **Freshness.** Rules and target lists are cached, each behind a single-flight lock: a request
//! uses a cached answer only if its fetch *started* no earlier than [`DEFAULT_MAX_STALENESS`]
//! (25 ms) before the request arrived, otherwise it fetches (or waits for the fetch in flight and
//! re-checks). So a request sees the listener as moto had it at most 25 ms before the request
//! arrived, and moto gets at most about one `DescribeRules` per 25 ms however busy the proxy is.
//! [`DataPlane::start_with_staleness`] with [`Duration::ZERO`] reads moto for every request
//! (serialised); [`DataPlane::invalidate`] makes the next request read moto whatever its age.
//!
//! **Routable targets.** Registered targets whose health state is anything but `draining`,
//! `unused` or `unavailable`: moto reports every registered `ip` target `healthy` at once and
//! never runs health checks; deregistered targets simply disappear from its answer (no
//! `draining` period), and `unused`/`unavailable` are its states for targets that are not
//! registered. A real ALB also routes to `initial` and (when all are unhealthy, fail-open)
//! `unhealthy` targets, so those count as routable too. Only targets whose `Id` is an IP address
//! are routable (`Id = "127.0.0.1"`, `Port = <backend port>`). Note that moto keys a target
//! group's targets by `Id` alone: registering `127.0.0.1` twice with two ports keeps only the
//! last one, so one target group holds at most one local backend.
//!
//! **Answers of its own**, like the ALB's: 503 when no rule matches or the chosen group has no
//! routable target, 502 when the target refuses the connection or breaks it, 504 when it does
//! not answer within [`TARGET_TIMEOUT`]. A failure to read moto is a 500 (the ALB has no
//! equivalent; it means the world is broken). These carry `Server: awselb/2.0` and an
//! `X-Skewguard-Error` header saying why. Every answer carries `X-Skewguard-Rule: <priority>`
//! (`default` for the default rule) once a rule matched, and `X-Skewguard-Target-Group: <arn>`
//! once a group was chosen.
//!
//! Proxied requests keep their method, path, query, headers (`Host` included) and body, minus
//! hop-by-hop headers, plus `X-Forwarded-For` (appended), `X-Forwarded-Proto` and
//! `X-Forwarded-Port`. Bodies are buffered whole, which is fine for tests.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2 as elbv2;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skewguard_core::aws::elb::Elb;
use skewguard_core::listener::{
    ListenerRule, Request as RouteRequest, RuleAction, WeightedTarget, route,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::clock::WorldClock;

/// How old (from the start of its fetch) a cached rule set or target list may be when a request
/// arrives.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(25);
/// How long a target may take to answer before the data plane answers 504 (the ALB's default
/// idle timeout).
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(60);

pub const RULE_HEADER: &str = "x-skewguard-rule";
pub const TARGET_GROUP_HEADER: &str = "x-skewguard-target-group";
pub const ERROR_HEADER: &str = "x-skewguard-error";

/// Counters since the data plane started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPlaneStats {
    pub requests: u64,
    /// Answers with a 5xx status, from the data plane itself or from a target.
    pub server_errors: u64,
    /// 502s and 503s of the data plane itself.
    pub bad_gateway: u64,
    pub unavailable: u64,
    /// `DescribeRules` and `DescribeTargetHealth` round trips to moto.
    pub rule_fetches: u64,
    pub health_fetches: u64,
}

/// A running ALB listener stand-in; stops when dropped.
pub struct DataPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    publisher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("addr", &self.addr)
            .field("listener_arn", &self.shared.listener_arn)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Serves the listener `listener_arn` on a free loopback port, reading its configuration
    /// from `elb_client` with [`DEFAULT_MAX_STALENESS`].
    pub async fn start(
        elb_client: elbv2::Client,
        listener_arn: String,
    ) -> std::io::Result<DataPlane> {
        Self::start_with_staleness(elb_client, listener_arn, DEFAULT_MAX_STALENESS).await
    }

    /// Like [`DataPlane::start`] with another bound on staleness; `Duration::ZERO` reads moto
    /// for every request.
    pub async fn start_with_staleness(
        elb_client: elbv2::Client,
        listener_arn: String,
        max_staleness: Duration,
    ) -> std::io::Result<DataPlane> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            elb: Elb::new(elb_client.clone()),
            client: elb_client,
            listener_arn,
            port: addr.port(),
            max_staleness,
            rules: Fresh::default(),
            target_groups: Mutex::new(HashMap::new()),
            not_before: Mutex::new(Instant::now()),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            round_robin: AtomicUsize::new(0),
            rng: AtomicU64::new(RandomState::new().build_hasher().finish() | 1),
            counters: Counters::default(),
            metrics: Mutex::new(None),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(DataPlane {
            addr,
            shared,
            server,
            publisher: Mutex::new(None),
        })
    }

    /// Publishes, per target group, the requests it served into CloudWatch as an ALB does:
    /// namespace `AWS/ApplicationELB`, metric `RequestCount`, dimensions `TargetGroup`
    /// (`targetgroup/<name>/<id>`) and `LoadBalancer` (`app/<name>/<id>`), unit `Count`, one
    /// datapoint per minute (stamped at the minute's start, world time from `clock`), and
    /// nothing for a minute without requests. Counts are sent every
    /// [`METRICS_FLUSH_INTERVAL`] (and by [`DataPlane::flush_metrics`]); a minute's counts may
    /// arrive as several datapoints, which CloudWatch sums.
    ///
    /// A request counts once a target of the group answered it (a target's own 5xx included);
    /// the data plane's own 502/503/504 answers do not.
    pub fn publish_metrics(&self, cloudwatch: aws_sdk_cloudwatch::Client, clock: WorldClock) {
        *self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Metrics {
            clock,
            cloudwatch,
            served: BTreeMap::new(),
        });
        let shared = Arc::clone(&self.shared);
        let publisher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(METRICS_FLUSH_INTERVAL).await;
                if let Err(e) = flush(&shared).await {
                    tracing::warn!(error = %e, "the data plane could not publish RequestCount");
                }
            }
        });
        if let Some(old) = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(publisher)
        {
            old.abort();
        }
    }

    /// Sends the counts not yet published now.
    pub async fn flush_metrics(&self) -> Result<(), String> {
        flush(&self.shared).await
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn listener_arn(&self) -> &str {
        &self.shared.listener_arn
    }

    /// Makes the next request read rules and targets from moto, however recent the cache.
    pub fn invalidate(&self) {
        *self
            .shared
            .not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn stats(&self) -> DataPlaneStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DataPlaneStats {
            requests: get(&c.requests),
            server_errors: get(&c.server_errors),
            bad_gateway: get(&c.bad_gateway),
            unavailable: get(&c.unavailable),
            rule_fetches: get(&c.rule_fetches),
            health_fetches: get(&c.health_fetches),
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(publisher) = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            publisher.abort();
        }
    }
}

/// How often the counts of served requests are sent to CloudWatch.
pub const METRICS_FLUSH_INTERVAL: Duration = Duration::from_millis(250);

struct Metrics {
    clock: WorldClock,
    cloudwatch: aws_sdk_cloudwatch::Client,
    /// Requests served per (target group ARN, minute start in world seconds since the epoch),
    /// not yet published.
    served: BTreeMap<(String, u64), u64>,
}

/// `targetgroup/<name>/<id>` of a target-group ARN (its `TargetGroup` dimension).
pub fn target_group_dimension(target_group_arn: &str) -> Option<String> {
    let (_, rest) = target_group_arn.split_once(":targetgroup/")?;
    Some(format!("targetgroup/{rest}"))
}

/// `app/<name>/<id>` of a load balancer's or listener's ARN (its `LoadBalancer` dimension).
pub fn load_balancer_dimension(arn: &str) -> Option<String> {
    let (_, rest) = arn
        .split_once(":loadbalancer/")
        .or_else(|| arn.split_once(":listener/"))?;
    let mut parts = rest.split('/');
    let (kind, name, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{kind}/{name}/{id}"))
}

/// ELB documents `RequestCount` as "always reported" while the load balancer carries requests:
/// in a minute with traffic, every target group a rule forwards to gets a data point, 0 when
/// it served nothing. Recorded (as 0) for each request's minute; served requests add to it.
fn record_reported(shared: &Shared, rules: &[ListenerRule]) {
    let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(metrics) = metrics.as_mut() {
        let secs = metrics
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for rule in rules {
            for tg in rule.forward_targets() {
                metrics
                    .served
                    .entry((tg.to_owned(), secs - secs % 60))
                    .or_default();
            }
        }
    }
}

fn record_served(shared: &Shared, target_group_arn: &str) {
    let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(metrics) = metrics.as_mut() {
        let secs = metrics
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        *metrics
            .served
            .entry((target_group_arn.to_owned(), secs - secs % 60))
            .or_default() += 1;
    }
}

async fn flush(shared: &Shared) -> Result<(), String> {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
    let (served, cloudwatch) = {
        let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let Some(metrics) = metrics.as_mut() else {
            return Ok(());
        };
        (
            std::mem::take(&mut metrics.served),
            metrics.cloudwatch.clone(),
        )
    };
    if served.is_empty() {
        return Ok(());
    }
    let load_balancer = load_balancer_dimension(&shared.listener_arn)
        .ok_or_else(|| format!("no load balancer in {}", shared.listener_arn))?;
    let data: Vec<MetricDatum> = served
        .iter()
        .filter_map(|((tg, minute), count)| {
            Some(
                MetricDatum::builder()
                    .metric_name("RequestCount")
                    .dimensions(
                        Dimension::builder()
                            .name("TargetGroup")
                            .value(target_group_dimension(tg)?)
                            .build(),
                    )
                    .dimensions(
                        Dimension::builder()
                            .name("LoadBalancer")
                            .value(&load_balancer)
                            .build(),
                    )
                    .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                        i64::try_from(*minute).unwrap_or(i64::MAX),
                    ))
                    .value(*count as f64)
                    .unit(StandardUnit::Count)
                    .storage_resolution(60)
                    .build(),
            )
        })
        .collect();
    let sent = cloudwatch
        .put_metric_data()
        .namespace("AWS/ApplicationELB")
        .set_metric_data(Some(data))
        .send()
        .await;
    if let Err(e) = sent {
        // Kept for the next flush.
        let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(metrics) = metrics.as_mut() {
            for (key, count) in served {
                *metrics.served.entry(key).or_default() += count;
            }
        }
        return Err(aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string());
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    server_errors: AtomicU64,
    bad_gateway: AtomicU64,
    unavailable: AtomicU64,
    rule_fetches: AtomicU64,
    health_fetches: AtomicU64,
}

struct Shared {
    elb: Elb,
    client: elbv2::Client,
    listener_arn: String,
    port: u16,
    max_staleness: Duration,
    rules: Fresh<Vec<ListenerRule>>,
    target_groups: Mutex<HashMap<String, Arc<Fresh<Vec<SocketAddr>>>>>,
    /// Cached answers whose fetch started before this are never used ([`DataPlane::invalidate`]).
    not_before: Mutex<Instant>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    round_robin: AtomicUsize,
    rng: AtomicU64,
    counters: Counters,
    metrics: Mutex<Option<Metrics>>,
}

impl Shared {
    /// The oldest fetch start a request arriving at `arrived` may use.
    fn oldest_usable(&self, arrived: Instant) -> Instant {
        let by_age = arrived.checked_sub(self.max_staleness).unwrap_or(arrived);
        let floor = *self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        by_age.max(floor)
    }

    async fn rules(&self, arrived: Instant) -> Result<Arc<Vec<ListenerRule>>, String> {
        self.rules
            .get(self.oldest_usable(arrived), || async {
                self.counters.rule_fetches.fetch_add(1, Ordering::Relaxed);
                self.elb
                    .describe_listener_rules(&self.listener_arn)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    async fn targets(
        &self,
        target_group_arn: &str,
        arrived: Instant,
    ) -> Result<Arc<Vec<SocketAddr>>, String> {
        let cache = {
            let mut groups = self.target_groups.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(groups.entry(target_group_arn.to_owned()).or_default())
        };
        cache
            .get(self.oldest_usable(arrived), || async {
                self.counters.health_fetches.fetch_add(1, Ordering::Relaxed);
                let answer = self
                    .client
                    .describe_target_health()
                    .target_group_arn(target_group_arn)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "DescribeTargetHealth failed: {}",
                            aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(&e)
                        )
                    })?;
                Ok(answer
                    .target_health_descriptions()
                    .iter()
                    .filter(|d| {
                        let state = d
                            .target_health()
                            .and_then(|h| h.state())
                            .map(|s| s.as_str());
                        !matches!(state, Some("draining" | "unused" | "unavailable"))
                    })
                    .filter_map(|d| {
                        let target = d.target()?;
                        let ip: IpAddr = target.id()?.parse().ok()?;
                        let port = u16::try_from(target.port()?).ok()?;
                        Some(SocketAddr::new(ip, port))
                    })
                    .collect())
            })
            .await
    }

    fn random(&self) -> u64 {
        // splitmix64 over an atomic counter: cheap, good enough for weighted picks.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Picks a target group by weight; `None` when every weight is 0.
fn pick_weighted(targets: &[WeightedTarget], random: u64) -> Option<&WeightedTarget> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for target in targets {
        let weight = u64::from(target.weight);
        if point < weight {
            return Some(target);
        }
        point -= weight;
    }
    None
}

/// A cached value behind a single-flight lock.
struct Fresh<T> {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Default for Fresh<T> {
    fn default() -> Self {
        Self {
            slot: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> Fresh<T> {
    /// The cached value if its fetch started at or after `oldest`, else a new one from `fetch`
    /// (one fetch at a time; failures are not cached).
    async fn get<F, Fut, E>(&self, oldest: Instant, fetch: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((fetched, value)) = slot.as_ref()
            && *fetched >= oldest
        {
            return Ok(Arc::clone(value));
        }
        let started = Instant::now();
        let value = Arc::new(fetch().await?);
        *slot = Some((started, Arc::clone(&value)));
        Ok(value)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task aborts every connection too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let answer = decide_and_forward(shared, peer, req).await;
    match answer.status() {
        StatusCode::BAD_GATEWAY if answer.headers().contains_key(ERROR_HEADER) => {
            counters.bad_gateway.fetch_add(1, Ordering::Relaxed);
        }
        StatusCode::SERVICE_UNAVAILABLE if answer.headers().contains_key(ERROR_HEADER) => {
            counters.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    if answer.status().is_server_error() {
        counters.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

async fn decide_and_forward(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    let arrived = Instant::now();
    let routed = route_request(&req, peer.ip());
    let rules = match shared.rules(arrived).await {
        Ok(rules) => rules,
        Err(e) => {
            return own_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the listener rules: {e}"),
            );
        }
    };
    record_reported(shared, &rules);
    let Some(rule) = route(&rules, &routed) else {
        return own_answer(StatusCode::SERVICE_UNAVAILABLE, "no rule matched");
    };
    let rule_header =
        HeaderValue::from_str(&rule.priority.to_string()).expect("a priority is ASCII");
    let mut answer = match &rule.action {
        RuleAction::FixedResponse {
            status_code,
            content_type,
            body,
        } => {
            let mut answer =
                Response::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
            *answer.status_mut() =
                StatusCode::from_u16(*status_code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let content_type = content_type.as_deref().unwrap_or("text/plain");
            if let Ok(value) = HeaderValue::from_str(content_type) {
                answer
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            answer
                .headers_mut()
                .insert("server", HeaderValue::from_static("awselb/2.0"));
            answer
        }
        RuleAction::Forward(groups) => match pick_weighted(groups, shared.random()) {
            None => own_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the forward action has no target group with a weight above 0",
            ),
            Some(group) => {
                let mut answer = forward(shared, peer, req, &group.target_group_arn, arrived).await;
                if !answer.headers().contains_key(ERROR_HEADER) {
                    record_served(shared, &group.target_group_arn);
                }
                if let Ok(value) = HeaderValue::from_str(&group.target_group_arn) {
                    answer.headers_mut().insert(TARGET_GROUP_HEADER, value);
                }
                answer
            }
        },
        RuleAction::Other(kind) => own_answer(
            StatusCode::NOT_IMPLEMENTED,
            &format!("the local data plane does not perform {kind} actions"),
        ),
    };
    answer.headers_mut().insert(RULE_HEADER, rule_header);
    answer
}

async fn forward(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    target_group_arn: &str,
    arrived: Instant,
) -> Answer {
    let targets = match shared.targets(target_group_arn, arrived).await {
        Ok(targets) => targets,
        Err(e) if e.contains("TargetGroupNotFound") => {
            return own_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("target group gone: {e}"),
            );
        }
        Err(e) => {
            return own_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the target group's targets: {e}"),
            );
        }
    };
    if targets.is_empty() {
        return own_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no routable target in the target group",
        );
    }
    let target = targets[shared.round_robin.fetch_add(1, Ordering::Relaxed) % targets.len()];

    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return own_answer(
                StatusCode::BAD_REQUEST,
                &format!("unreadable request body: {e}"),
            );
        }
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("http://{target}{path_and_query}").parse() {
        Ok(uri) => uri,
        Err(e) => return own_answer(StatusCode::BAD_REQUEST, &format!("bad request target: {e}")),
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.insert("x-forwarded-port", HeaderValue::from(shared.port));
    if !headers.contains_key(hyper::header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(hyper::header::HOST, value);
    }
    let mut outgoing = Request::new(Full::new(body));
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;

    let exchange = async {
        let response = shared.http.request(outgoing).await.map_err(|e| {
            let kind = if e.is_connect() {
                "refused the connection"
            } else {
                "broke the exchange"
            };
            format!("target {target} {kind}: {e}")
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("target {target} broke the response body: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts, body))
    };
    match tokio::time::timeout(TARGET_TIMEOUT, exchange).await {
        Err(_) => own_answer(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("target {target} did not answer within {TARGET_TIMEOUT:?}"),
        ),
        Ok(Err(e)) => own_answer(StatusCode::BAD_GATEWAY, &e),
        Ok(Ok((mut parts, body))) => {
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            Response::from_parts(parts, Full::new(body))
        }
    }
}

/// The ALB's own error page, with the reason in [`ERROR_HEADER`].
fn own_answer(status: StatusCode, reason: &str) -> Answer {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
    );
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html"),
    );
    headers.insert("server", HeaderValue::from_static("awselb/2.0"));
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(1000)
        .collect();
    if let Ok(value) = HeaderValue::from_str(&reason) {
        headers.insert(ERROR_HEADER, value);
    }
    answer
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The parts of an HTTP request the ALB routes on.
fn route_request(req: &Request<Incoming>, source_ip: IpAddr) -> RouteRequest {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    RouteRequest {
        host,
        path: req.uri().path().to_owned(),
        method: req.method().as_str().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        query: req.uri().query().map(decode_query).unwrap_or_default(),
        source_ip: Some(source_ip),
    }
}

/// `a=1&b=x%20y&c` → `[("a","1"), ("b","x y"), ("c","")]` (`+` is a space).
fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 1 < bytes.len() => {
                match (hex(bytes[i + 1]), bytes.get(i + 2).copied().and_then(hex)) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        i += 2;
                    }
                    // Not an escape: keep it as written.
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{Clients, Endpoints};
    use crate::fixtures::{
        AlbFixture, Vpc, create_target_group, header_condition, set_forward_weights,
        weighted_forward,
    };
    use crate::moto::MotoServer;
    use aws_sdk_elasticloadbalancingv2::types::{
        Action, ActionTypeEnum, FixedResponseActionConfig, PathPatternConditionConfig,
        RuleCondition, TargetDescription,
    };
    use serde_json::{Value, json};

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(
            decode_query("a=1&b=x%20y+z&c&&d=%zz&e=%41"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y z".to_owned()),
                ("c".to_owned(), String::new()),
                ("d".to_owned(), "%zz".to_owned()),
                ("e".to_owned(), "A".to_owned()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn weights_pick_in_proportion_and_zero_never() {
        let groups = [
            WeightedTarget {
                target_group_arn: "a".into(),
                weight: 0,
            },
            WeightedTarget {
                target_group_arn: "b".into(),
                weight: 1,
            },
            WeightedTarget {
                target_group_arn: "c".into(),
                weight: 3,
            },
        ];
        let picks: Vec<&str> = (0..8)
            .map(|r| pick_weighted(&groups, r).unwrap().target_group_arn.as_str())
            .collect();
        assert_eq!(picks, ["b", "c", "c", "c", "b", "c", "c", "c"]);
        let none = [WeightedTarget {
            target_group_arn: "a".into(),
            weight: 0,
        }];
        assert!(pick_weighted(&none, 7).is_none());
    }

    /// An in-process target that answers with what it received.
    struct EchoTarget {
        port: u16,
        task: JoinHandle<()>,
    }

    impl Drop for EchoTarget {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo_target(name: &'static str) -> EchoTarget {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let mut answer = json!({
                            "target": name,
                            "method": req.method().as_str(),
                            "path": req.uri().path(),
                            "query": req.uri().query(),
                            "host": header("host"),
                            "x_forwarded_for": header("x-forwarded-for"),
                            "x_test": header("x-test"),
                        });
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        answer["body"] = json!(String::from_utf8_lossy(&body));
                        let mut response =
                            Response::new(Full::new(Bytes::from(answer.to_string())));
                        response
                            .headers_mut()
                            .insert("x-target", HeaderValue::from_static(name));
                        Ok::<_, Infallible>(response)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EchoTarget { port, task }
    }

    struct World {
        moto: MotoServer,
        elb: elbv2::Client,
        vpc: Vpc,
        alb: AlbFixture,
    }

    async fn world(name: &str) -> World {
        let moto = MotoServer::start()
            .await
            .expect("moto_server starts (see SKEWGUARD_MOTO_SERVER)");
        let clients = Clients::new(&Endpoints::new(moto.endpoint(), moto.endpoint())).await;
        let vpc = Vpc::default_in(&moto.endpoint()).await.unwrap();
        let alb = AlbFixture::with_default_rule_as_production(&clients.elbv2, &vpc, name)
            .await
            .unwrap();
        World {
            moto,
            elb: clients.elbv2,
            vpc,
            alb,
        }
    }

    async fn register(elb: &elbv2::Client, target_group_arn: &str, port: u16) {
        elb.register_targets()
            .target_group_arn(target_group_arn)
            .targets(
                TargetDescription::builder()
                    .id("127.0.0.1")
                    .port(i32::from(port))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    async fn create_rule(
        elb: &elbv2::Client,
        listener_arn: &str,
        priority: i32,
        condition: RuleCondition,
        action: Action,
    ) {
        elb.create_rule()
            .listener_arn(listener_arn)
            .priority(priority)
            .conditions(condition)
            .actions(action)
            .send()
            .await
            .unwrap();
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or(Value::Null)
        }
    }

    type Client = HttpClient<HttpConnector, Full<Bytes>>;

    fn client() -> Client {
        HttpClient::builder(TokioExecutor::new()).build_http()
    }

    async fn send(
        client: &Client,
        plane: &DataPlane,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", plane.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(
                request
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(
        client: &Client,
        plane: &DataPlane,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        send(client, plane, "GET", path, headers, "").await
    }

    #[tokio::test]
    async fn routes_by_rule_and_weight_and_proxies_the_request() {
        let w = world("route").await;
        let (blue, green) = (echo_target("blue").await, echo_target("green").await);
        register(&w.elb, &w.alb.blue_tg, blue.port).await;
        register(&w.elb, &w.alb.green_tg, green.port).await;
        let plane = DataPlane::start(w.elb.clone(), w.alb.listener_arn.clone())
            .await
            .unwrap();
        let http = client();

        // Blue weight 1, green weight 0: only blue.
        for _ in 0..20 {
            let a = get(&http, &plane, "/", &[]).await;
            assert_eq!(a.status, 200, "{}", w.moto.log_tail());
            assert_eq!(a.header("x-target"), Some("blue"));
            assert_eq!(a.header(RULE_HEADER), Some("default"));
            assert_eq!(a.header(TARGET_GROUP_HEADER), Some(w.alb.blue_tg.as_str()));
        }

        // Method, path, query, headers (Host kept, X-Forwarded-For added) and body reach the target.
        let a = send(
            &http,
            &plane,
            "POST",
            "/v2/cart?sku=A%2D1&qty=2",
            &[("host", "shop.example.com"), ("x-test", "yes")],
            "{\"qty\":2}",
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.json(),
            json!({
                "target": "blue", "method": "POST", "path": "/v2/cart", "query": "sku=A%2D1&qty=2",
                "host": "shop.example.com", "x_forwarded_for": "127.0.0.1", "x_test": "yes", "body": "{\"qty\":2}",
            })
        );

        // A pin: header rule at priority 10 to green; the query is decoded for query conditions.
        create_rule(
            &w.elb,
            &w.alb.listener_arn,
            10,
            header_condition("X-Deployment-ID", "abc"),
            weighted_forward(&[(&w.alb.green_tg, 1)]),
        )
        .await;
        plane.invalidate();
        let a = get(&http, &plane, "/v2/cart", &[("x-deployment-id", "abc")]).await;
        assert_eq!(
            (a.header("x-target"), a.header(RULE_HEADER)),
            (Some("green"), Some("10"))
        );
        let a = get(&http, &plane, "/v2/cart", &[("x-deployment-id", "abcd")]).await;
        assert_eq!(a.header("x-target"), Some("blue"));

        // A fixed response.
        let maintenance = RuleCondition::builder()
            .field("path-pattern")
            .path_pattern_config(
                PathPatternConditionConfig::builder()
                    .values("/maintenance")
                    .build(),
            )
            .build();
        let fixed = Action::builder()
            .r#type(ActionTypeEnum::FixedResponse)
            .fixed_response_config(
                FixedResponseActionConfig::builder()
                    .status_code("503")
                    .content_type("application/json")
                    .message_body("{\"down\":true}")
                    .build(),
            )
            .build();
        create_rule(&w.elb, &w.alb.listener_arn, 5, maintenance, fixed).await;
        plane.invalidate();
        let a = get(&http, &plane, "/maintenance", &[]).await;
        assert_eq!(
            (a.status, a.header("content-type"), a.header(RULE_HEADER)),
            (503, Some("application/json"), Some("5"))
        );
        assert_eq!(&a.body[..], b"{\"down\":true}");
        assert_eq!(a.header(TARGET_GROUP_HEADER), None);

        // Weights 1/1: both groups get traffic.
        set_forward_weights(
            &w.elb,
            &w.alb.production_rule_arn,
            &[(&w.alb.blue_tg, 1), (&w.alb.green_tg, 1)],
        )
        .await
        .unwrap();
        plane.invalidate();
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..60 {
            let a = get(&http, &plane, "/", &[]).await;
            *seen
                .entry(a.header("x-target").unwrap_or("none").to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["blue", "green"],
            "{seen:?}"
        );
        assert_eq!(plane.stats().server_errors, 1, "only the fixed 503");
    }

    #[tokio::test]
    async fn answers_503_and_502_like_an_alb() {
        let w = world("errors").await;
        let plane = DataPlane::start(w.elb.clone(), w.alb.listener_arn.clone())
            .await
            .unwrap();
        let http = client();

        // No target registered in blue.
        let a = get(&http, &plane, "/", &[]).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.header("server"), Some("awselb/2.0"));
        assert!(
            a.header(ERROR_HEADER)
                .unwrap()
                .contains("no routable target")
        );
        assert_eq!(a.header(TARGET_GROUP_HEADER), Some(w.alb.blue_tg.as_str()));

        // A registered target with nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        register(&w.elb, &w.alb.blue_tg, port).await;
        plane.invalidate();
        let a = get(&http, &plane, "/", &[]).await;
        assert_eq!(a.status, 502, "{:?}", a.header(ERROR_HEADER));
        assert!(a.header(ERROR_HEADER).unwrap().contains("refused"));

        // Deregistered again: gone from DescribeTargetHealth at once (moto has no draining).
        w.elb
            .deregister_targets()
            .target_group_arn(&w.alb.blue_tg)
            .targets(
                TargetDescription::builder()
                    .id("127.0.0.1")
                    .port(i32::from(port))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        plane.invalidate();
        assert_eq!(get(&http, &plane, "/", &[]).await.status, 503);

        // Every weight 0 (moto accepts it; the ALB would not).
        let other = create_target_group(&w.elb, &w.vpc, "errors-tg3")
            .await
            .unwrap();
        set_forward_weights(
            &w.elb,
            &w.alb.production_rule_arn,
            &[(&w.alb.blue_tg, 0), (&other, 0)],
        )
        .await
        .unwrap();
        plane.invalidate();
        let a = get(&http, &plane, "/", &[]).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.header(RULE_HEADER), Some("default"));

        let stats = plane.stats();
        assert_eq!(
            (
                stats.requests,
                stats.unavailable,
                stats.bad_gateway,
                stats.server_errors
            ),
            (4, 3, 1, 4)
        );
    }

    #[tokio::test]
    async fn sees_rule_changes_within_the_staleness_bound_without_hammering_moto() {
        let w = world("fresh").await;
        let (blue, green) = (echo_target("blue").await, echo_target("green").await);
        register(&w.elb, &w.alb.blue_tg, blue.port).await;
        register(&w.elb, &w.alb.green_tg, green.port).await;
        let plane = Arc::new(
            DataPlane::start(w.elb.clone(), w.alb.listener_arn.clone())
                .await
                .unwrap(),
        );
        let http = client();

        // 300 requests, 30 at a time.
        let started = Instant::now();
        for _ in 0..10 {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..30 {
                let (http, plane) = (http.clone(), Arc::clone(&plane));
                batch.spawn(async move { get(&http, &plane, "/", &[]).await.status });
            }
            while let Some(status) = batch.join_next().await {
                assert_eq!(status.unwrap(), 200);
            }
        }
        let stats = plane.stats();
        let windows =
            (started.elapsed().as_millis() / DEFAULT_MAX_STALENESS.as_millis()) as u64 + 1;
        assert_eq!(stats.requests, 300);
        assert!(
            stats.rule_fetches <= windows + 1,
            "{stats:?} over {windows} windows"
        );
        assert!(stats.rule_fetches < 100, "{stats:?}");

        // ECS shifts production to green; within the bound every request sees it.
        set_forward_weights(
            &w.elb,
            &w.alb.production_rule_arn,
            &[(&w.alb.blue_tg, 0), (&w.alb.green_tg, 1)],
        )
        .await
        .unwrap();
        tokio::time::sleep(DEFAULT_MAX_STALENESS + Duration::from_millis(5)).await;
        for _ in 0..10 {
            assert_eq!(
                get(&http, &plane, "/", &[]).await.header("x-target"),
                Some("green")
            );
        }
    }
}
