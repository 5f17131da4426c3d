//! A counting HTTP proxy in front of moto: every request the functions send to ELBv2 or
//! DynamoDB passes through it and is logged as `(service, operation)` before it is forwarded
//! unchanged. DynamoDB names its operation in `X-Amz-Target` (`DynamoDB_20120810.Query`);
//! ELBv2 (the AWS query protocol) in the `Action=` field of the form body. Every DynamoDB call
//! is also priced in capacity units ([`crate::capacity`]).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::capacity::{Meter, Units};

/// One AWS call, as `(service, operation)`: `("DynamoDB", "Query")`, `("ELBv2", "CreateRule")`.
pub type Call = (String, String);

/// One logged call.
#[derive(Debug, Clone)]
pub struct Logged {
    pub call: Call,
    /// When the proxy received it, and how long moto took to answer it.
    pub at: Instant,
    pub took: Duration,
    /// DynamoDB capacity units, as DynamoDB would bill the call (`None`: not DynamoDB, or the
    /// items could not be read back).
    pub units: Option<Units>,
    /// Time the proxy spent reading items for [`Logged::units`] while the caller waited: not
    /// the function's time, so the bench takes it out of the invocation's duration.
    pub metering: Duration,
}

/// The calls seen so far, in order, each with how long moto took to answer it.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<Logged>>>);

impl CallLog {
    pub fn len(&self) -> usize {
        self.0.lock().expect("call log").len()
    }

    /// The calls logged since `mark` (an earlier [`CallLog::len`]).
    pub fn since(&self, mark: usize) -> Vec<Call> {
        self.timed_since(mark).into_iter().map(|(c, _)| c).collect()
    }

    /// The same, with moto's answer times.
    pub fn timed_since(&self, mark: usize) -> Vec<(Call, Duration)> {
        self.0.lock().expect("call log")[mark..]
            .iter()
            .map(|l| (l.call.clone(), l.took))
            .collect()
    }

    /// Everything logged since `mark`.
    pub fn logged_since(&self, mark: usize) -> Vec<Logged> {
        self.0.lock().expect("call log")[mark..].to_vec()
    }

    fn push(&self, logged: Logged) {
        self.0.lock().expect("call log").push(logged);
    }
}

pub struct CountingProxy {
    addr: SocketAddr,
    pub log: CallLog,
    server: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> std::io::Result<CountingProxy> {
        Self::start_with_log(upstream, CallLog::default()).await
    }

    /// [`CountingProxy::start`], logging into `log` (another proxy's: one log of the calls to
    /// several stand-ins).
    pub async fn start_with_log(upstream: &str, log: CallLog) -> std::io::Result<CountingProxy> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let server_log = log.clone();
        let meter = Arc::new(Meter::new(client.clone(), upstream.clone()));
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (log, client, upstream, meter) =
                            (server_log.clone(), client.clone(), upstream.clone(), meter.clone());
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                forward(request, log.clone(), client.clone(), upstream.clone(), meter.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(CountingProxy { addr, log, server })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The operation a request names, by the AWS protocols moto serves here: JSON (`X-Amz-Target`),
/// query (`Action=` in the form body) and Smithy RPC v2 CBOR, which names service and
/// operation in the path (`/service/GraniteServiceVersion20100801/operation/GetMetricData`:
/// CloudWatch).
pub fn operation_of(path: &str, target: Option<&str>, body: &[u8]) -> Call {
    if let Some((service, op)) = path
        .strip_prefix("/service/")
        .and_then(|rest| rest.split_once("/operation/"))
    {
        let service = match service {
            "GraniteServiceVersion20100801" => "CloudWatch",
            other => other,
        };
        return (service.to_owned(), op.to_owned());
    }
    if let Some(target) = target {
        let (prefix, op) = target.split_once('.').unwrap_or(("", target));
        let service = if prefix.starts_with("DynamoDB") {
            "DynamoDB"
        } else {
            prefix
        };
        return (service.to_owned(), op.to_owned());
    }
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("?");
    ("ELBv2".to_owned(), action.to_owned())
}

async fn forward(
    request: Request<Incoming>,
    log: CallLog,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Arc<str>,
    meter: Arc<Meter>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(format!("proxy: reading the request: {e}"))),
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let call = operation_of(parts.uri.path(), target, &body);
    let dynamodb = call.0 == "DynamoDB";
    let json_body: serde_json::Value = if dynamodb {
        serde_json::from_slice(&body).unwrap_or_default()
    } else {
        serde_json::Value::Null
    };
    let before = if dynamodb {
        meter.before(&parts, &call.1, &json_body).await
    } else {
        None
    };
    let metering_before = before.as_ref().map_or(Duration::ZERO, |b| b.took);
    let at = Instant::now();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        out = out.header(name, value);
    }
    let out = match out.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Ok(error(format!("proxy: building the request: {e}"))),
    };
    let answer = match client.request(out).await {
        Ok(a) => a,
        Err(e) => return Ok(error(format!("proxy: forwarding: {e}"))),
    };
    let (answer_parts, body) = answer.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(format!("proxy: reading the answer: {e}"))),
    };
    let took = at.elapsed();
    let (units, metering) = if dynamodb {
        let metering_started = Instant::now();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let units = meter
            .units(&parts, &call.1, &json_body, &answer, before)
            .await;
        (units, metering_before + metering_started.elapsed())
    } else {
        (None, Duration::ZERO)
    };
    log.push(Logged {
        call,
        at,
        took,
        units,
        metering,
    });
    let mut response = Response::builder().status(answer_parts.status);
    for (name, value) in &answer_parts.headers {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONNECTION {
            response = response.header(name, value);
        }
    }
    Ok(response
        .body(Full::new(body))
        .unwrap_or_else(|e| error(format!("proxy: building the answer: {e}"))))
}

fn error(message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
