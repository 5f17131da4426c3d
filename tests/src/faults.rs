//! A fault layer between the functions and the AWS stand-ins: an HTTP proxy that the functions'
//! `AWS_ENDPOINT_URL_*` (or the in-process clients' endpoints) point at.
//!
//! It identifies each call's operation the way AWS does — the `X-Amz-Target` header for the
//! JSON protocols (DynamoDB, ECS), the `Action=` form field for the ELBv2 query protocol —
//! forwards it to the ECS emulator or to moto, counts calls per operation and in total, and
//! applies the faults a test programmed:
//!
//! - an AWS-shaped error: JSON `{"__type": .., "message": ..}` (with `x-amzn-ErrorType`) for
//!   DynamoDB and ECS, `<ErrorResponse><Error><Type>Sender</Type><Code>..` XML for ELBv2, which
//!   is what the SDK's error parsers read (so `Throttling`, `ThrottlingException`, 5xx,
//!   `AccessDenied`, `TooManyRules` are classified exactly as AWS's would be);
//! - a slow answer: the call is applied, its answer held back (past the SDK's attempt timeout);
//! - a dropped connection, before the call reaches AWS or after it was applied;
//! - a crash: when the k-th call after arming arrives it is applied, then the calling function
//!   is killed (a process by its pid, or an in-process handler by dropping its future) before
//!   it sees the answer.
//!
//! Faults match an operation (or every operation), optionally only the SDK's first attempts
//! (`amz-sdk-request: attempt=N`), a number of times or forever, or with a probability.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::aws::Endpoints;

/// Which AWS service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Ecs,
    DynamoDb,
    Elbv2,
    /// CloudWatch metrics (Smithy RPC v2 CBOR, told by the request path).
    CloudWatch,
    Sqs,
}

/// One call seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: Service,
    pub operation: String,
    /// The SDK's attempt number (`amz-sdk-request: attempt=N`), 1 when absent.
    pub attempt: u32,
    /// What the proxy did with it.
    pub fault: Option<String>,
}

/// What to do to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with an AWS error of this HTTP status and code, without forwarding.
    Error { status: u16, code: String },
    /// Forward (the call is applied), then hold the answer back this long.
    SlowAnswer(Duration),
    /// Close the connection without forwarding.
    DropBefore,
    /// Forward (the call is applied), then close the connection without an answer.
    DropAfter,
}

impl Fault {
    /// `Throttling` for ELBv2, `ThrottlingException` for the JSON protocols (HTTP 400).
    pub fn throttling() -> Fault {
        Fault::Error {
            status: 400,
            code: "Throttling".to_owned(),
        }
    }

    pub fn unavailable() -> Fault {
        Fault::Error {
            status: 503,
            code: "ServiceUnavailable".to_owned(),
        }
    }

    pub fn internal_error() -> Fault {
        Fault::Error {
            status: 500,
            code: "InternalFailure".to_owned(),
        }
    }

    pub fn access_denied() -> Fault {
        Fault::Error {
            status: 403,
            code: "AccessDenied".to_owned(),
        }
    }

    pub fn error(status: u16, code: &str) -> Fault {
        Fault::Error {
            status,
            code: code.to_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Fault::Error { status, code } => format!("{status} {code}"),
            Fault::SlowAnswer(d) => format!("slow answer {}ms", d.as_millis()),
            Fault::DropBefore => "dropped before".to_owned(),
            Fault::DropAfter => "dropped after".to_owned(),
        }
    }
}

/// A programmed fault: which calls it hits, and how often.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// `None`: every operation.
    pub operation: Option<String>,
    pub fault: Fault,
    /// Hit only SDK attempts numbered below this (e.g. 3: the first two attempts of each call,
    /// so standard retries with 3 attempts get through).
    pub attempts_below: Option<u32>,
    /// How many more calls it hits; `None`: every matching call.
    pub remaining: Option<u32>,
    /// Hit a matching call with this probability (per mille); 1000 = always.
    pub per_mille: u32,
    /// Stop hitting after this instant.
    pub until: Option<Instant>,
}

impl FaultRule {
    pub fn new(operation: Option<&str>, fault: Fault) -> Self {
        Self {
            operation: operation.map(str::to_owned),
            fault,
            attempts_below: None,
            remaining: None,
            per_mille: 1000,
            until: None,
        }
    }

    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }

    pub fn attempts_below(mut self, n: u32) -> Self {
        self.attempts_below = Some(n);
        self
    }

    pub fn per_mille(mut self, p: u32) -> Self {
        self.per_mille = p;
        self
    }

    pub fn for_duration(mut self, d: Duration) -> Self {
        self.until = Some(Instant::now() + d);
        self
    }
}

/// What a crash does to the caller.
pub type CrashAction = Box<dyn FnOnce() + Send>;

struct Crash {
    /// Calls still to pass before the crash; the call that brings this to 0 is applied and the
    /// caller killed before it sees the answer.
    calls_left: u32,
    action: Option<CrashAction>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    rules: Vec<FaultRule>,
    crash: Option<Crash>,
    seed: u64,
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
    crashes: Arc<AtomicU64>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Upstreams {
    ecs: String,
    moto: String,
    cloudwatch: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// moto applies a DynamoDB write in place without a lock, so two conditional writes racing
    /// each other can both pass their condition, and a read racing a write can see half an
    /// item; DynamoDB itself is atomic per item and per transaction. One DynamoDB call at a
    /// time through the proxy restores that, so a race test finds skewguard's races, not moto's.
    dynamodb: tokio::sync::Mutex<()>,
}

impl FaultProxy {
    /// A proxy in front of the stand-ins `upstream` names (ECS → the emulator, ELBv2 and
    /// DynamoDB → moto), on `127.0.0.1:0`.
    pub async fn start(upstream: &Endpoints) -> std::io::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            seed: 0x9E37_79B9_7F4A_7C15,
            ..State::default()
        }));
        let upstreams = Arc::new(Upstreams {
            ecs: upstream.ecs.clone(),
            moto: upstream.dynamodb.clone(),
            cloudwatch: upstream.cloudwatch.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            dynamodb: tokio::sync::Mutex::new(()),
        });
        let server = tokio::spawn(serve(listener, state.clone(), upstreams));
        Ok(FaultProxy {
            addr,
            state,
            server,
            crashes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every service through this proxy.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            ecs: self.endpoint(),
            elbv2: self.endpoint(),
            dynamodb: self.endpoint(),
            cloudwatch: self.endpoint(),
            sqs: self.endpoint(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a fault rule; rules are tried in the order added.
    pub fn add(&self, rule: FaultRule) {
        self.with(|s| s.rules.push(rule));
    }

    /// Removes every fault rule and any armed crash.
    pub fn clear_faults(&self) {
        self.with(|s| {
            s.rules.clear();
            s.crash = None;
        });
    }

    /// Seeds the probability of [`FaultRule::per_mille`] faults.
    pub fn seed(&self, seed: u64) {
        self.with(|s| s.seed = seed | 1);
    }

    /// Arms a crash: the `k`-th call from now (k ≥ 1) is applied, then `action` kills the
    /// caller, which never sees the answer.
    pub fn crash_after(&self, k: u32, action: CrashAction) {
        self.with(|s| {
            s.crash = Some(Crash {
                calls_left: k.max(1),
                action: Some(action),
            })
        });
    }

    /// Whether an armed crash is still waiting for its call.
    pub fn crash_pending(&self) -> bool {
        self.with(|s| s.crash.as_ref().is_some_and(|c| c.action.is_some()))
    }

    pub fn disarm(&self) {
        self.with(|s| s.crash = None);
    }

    /// How many crashes happened.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    pub fn total(&self) -> usize {
        self.with(|s| s.calls.len())
    }

    pub fn count(&self, operation: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|c| c.operation == operation).count())
    }

    /// Calls per operation.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.with(|s| {
            let mut counts = BTreeMap::new();
            for c in &s.calls {
                *counts.entry(c.operation.clone()).or_default() += 1;
            }
            counts
        })
    }

    /// Calls that got a fault.
    pub fn faulted(&self) -> usize {
        self.with(|s| s.calls.iter().filter(|c| c.fault.is_some()).count())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    upstreams: Arc<Upstreams>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (state, upstreams) = (state.clone(), upstreams.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (state, upstreams) = (state.clone(), upstreams.clone());
                        async move { handle(&state, &upstreams, request).await }
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

/// The error that makes hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

/// The service and operation of a call, as AWS identifies them.
pub fn identify(target: Option<&str>, body: &[u8]) -> (Service, String) {
    identify_request("/", target, body)
}

/// [`identify`] with the request's path, which names the operation in the RPC v2 CBOR protocol
/// (CloudWatch: `/service/GraniteServiceVersion20100801/operation/<Operation>`).
pub fn identify_request(path: &str, target: Option<&str>, body: &[u8]) -> (Service, String) {
    if let Some(operation) = path.strip_prefix(crate::cloudwatch::PATH_PREFIX) {
        return (Service::CloudWatch, operation.to_owned());
    }
    if let Some(target) = target {
        let (prefix, operation) = target.split_once('.').unwrap_or(("", target));
        let service = if prefix.starts_with("DynamoDB") {
            Service::DynamoDb
        } else if prefix == "AmazonSQS" {
            Service::Sqs
        } else {
            Service::Ecs
        };
        return (service, operation.to_owned());
    }
    let form = String::from_utf8_lossy(body);
    let operation = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("Unknown")
        .to_owned();
    (Service::Elbv2, operation)
}

fn attempt_of(request: &Request<Incoming>) -> u32 {
    request
        .headers()
        .get("amz-sdk-request")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .find_map(|part| part.trim().strip_prefix("attempt="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1)
}

/// The error body AWS's protocol for `service` uses, as the SDK parses it.
pub fn error_response(service: Service, status: u16, code: &str) -> Response<Full<Bytes>> {
    error_response_with(
        service,
        status,
        code,
        &format!("injected by the fault proxy: {code}"),
    )
}

/// [`error_response`] with a message of the caller's.
pub fn error_response_with(
    service: Service,
    status: u16,
    code: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    let (content_type, code, body) = match service {
        Service::CloudWatch => {
            return crate::cloudwatch::error_response(status, code, message);
        }
        Service::Elbv2 => (
            "text/xml",
            code.to_owned(),
            format!(
                "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
                 <Error><Type>{}</Type><Code>{code}</Code><Message>{}</Message></Error>\
                 <RequestId>fault-proxy</RequestId></ErrorResponse>",
                if status >= 500 { "Receiver" } else { "Sender" },
                xml_escape(message)
            ),
        ),
        Service::DynamoDb | Service::Ecs | Service::Sqs => {
            // The JSON protocols spell throttling `ThrottlingException`.
            let code = if code == "Throttling" {
                "ThrottlingException".to_owned()
            } else if code == "AccessDenied" {
                "AccessDeniedException".to_owned()
            } else {
                code.to_owned()
            };
            let namespace = match service {
                Service::DynamoDb => "com.amazonaws.dynamodb.v20120810",
                Service::Sqs => "com.amazonaws.sqs",
                _ => "com.amazonaws.ecs",
            };
            (
                if matches!(service, Service::DynamoDb | Service::Sqs) {
                    "application/x-amz-json-1.0"
                } else {
                    "application/x-amz-json-1.1"
                },
                code.clone(),
                serde_json::json!({"__type": format!("{namespace}#{code}"), "message": message})
                    .to_string(),
            )
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-errortype", code)
        .header("x-amzn-requestid", "fault-proxy")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn next_random(seed: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *seed;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *seed = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

enum Plan {
    Forward,
    Fault(Fault),
    Crash(CrashAction),
}

async fn handle(
    state: &Mutex<State>,
    upstreams: &Upstreams,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let attempt = attempt_of(&request);
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let (service, operation) = identify_request(parts.uri.path(), target.as_deref(), &body);

    let plan = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut chosen = None;
        let mut seed = s.seed;
        for rule in s.rules.iter_mut() {
            let matches = rule.operation.as_ref().is_none_or(|o| *o == operation)
                && rule.attempts_below.is_none_or(|n| attempt < n)
                && rule.remaining != Some(0)
                && rule.until.is_none_or(|u| now < u);
            if !matches {
                continue;
            }
            if rule.per_mille < 1000 && next_random(&mut seed) % 1000 >= u64::from(rule.per_mille) {
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            chosen = Some(rule.fault.clone());
            break;
        }
        s.seed = seed;
        let plan = match chosen {
            Some(fault) => Plan::Fault(fault),
            None => match s.crash.as_mut() {
                Some(crash) if crash.action.is_some() => {
                    crash.calls_left -= 1;
                    if crash.calls_left == 0 {
                        Plan::Crash(crash.action.take().expect("checked"))
                    } else {
                        Plan::Forward
                    }
                }
                _ => Plan::Forward,
            },
        };
        s.calls.push(Call {
            service,
            operation: operation.clone(),
            attempt,
            fault: match &plan {
                Plan::Fault(f) => Some(f.describe()),
                Plan::Crash(_) => Some("crash".to_owned()),
                Plan::Forward => None,
            },
        });
        plan
    };

    match plan {
        Plan::Fault(Fault::Error { status, code }) => Ok(error_response(service, status, &code)),
        Plan::Fault(Fault::DropBefore) => Err(Dropped),
        Plan::Fault(Fault::DropAfter) => {
            forward(upstreams, service, parts, body).await?;
            Err(Dropped)
        }
        Plan::Fault(Fault::SlowAnswer(delay)) => {
            let answer = forward(upstreams, service, parts, body).await?;
            tokio::time::sleep(delay).await;
            Ok(answer)
        }
        Plan::Forward => forward(upstreams, service, parts, body).await,
        Plan::Crash(action) => {
            // Applied, then the caller dies before it sees the answer.
            let _ = forward(upstreams, service, parts, body).await;
            action();
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(Dropped)
        }
    }
}

async fn forward(
    upstreams: &Upstreams,
    service: Service,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let _one_at_a_time = if service == Service::DynamoDb {
        Some(upstreams.dynamodb.lock().await)
    } else {
        None
    };
    let base = match service {
        Service::Ecs => &upstreams.ecs,
        Service::CloudWatch => &upstreams.cloudwatch,
        Service::DynamoDb | Service::Elbv2 | Service::Sqs => &upstreams.moto,
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: hyper::Uri = format!("{base}{path}").parse().map_err(|_| Dropped)?;
    let mut builder = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            builder = builder.header(name, value);
        }
    }
    let request = builder.body(Full::new(body)).map_err(|_| Dropped)?;
    let response = upstreams
        .client
        .request(request)
        .await
        .map_err(|_| Dropped)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let mut answer = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            answer = answer.header(name, value);
        }
    }
    answer.body(Full::new(body)).map_err(|_| Dropped)
}

/// Kills a process (SIGKILL): the "crash" of a function process.
pub fn kill_process(pid: u32) {
    // SAFETY: kill(2) with a pid we started; a pid that has exited just fails.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Counts crashes a [`CrashAction`] performed (shared with the proxy's own counter).
pub fn counting(proxy: &FaultProxy, action: CrashAction) -> CrashAction {
    let crashes = proxy.crashes.clone();
    Box::new(move || {
        crashes.fetch_add(1, Ordering::SeqCst);
        action();
    })
}
