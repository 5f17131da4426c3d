//! A local AWS Lambda: runs a real compiled function binary (a `lambda_runtime` program) the way
//! the Lambda service does, through the Runtime API.
//!
//! Each execution environment ("instance") is one process of the binary plus its own Runtime API
//! endpoint on `127.0.0.1:<port>`, handed to the process as `AWS_LAMBDA_RUNTIME_API`:
//!
//! - `GET  /2018-06-01/runtime/invocation/next` long-polls for the next event and answers it with
//!   the headers `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`,
//!   `-Trace-Id`;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `.../{id}/error` complete it;
//! - `POST /2018-06-01/runtime/init/error` reports a failed initialisation.
//!
//! Like the service:
//! - the first invocation cold-starts an instance (lazily: [`LocalFunction::start`] only checks
//!   the binary); it stays warm for the following ones;
//! - one invocation at a time per instance; concurrent [`LocalFunction::invoke`] calls queue;
//! - a process that dies during an invocation fails it ([`InvokeError::Crashed`], or
//!   [`InvokeError::InitError`] if it died before ever asking for an event); a timeout kills the
//!   process ([`InvokeError::Timeout`]); either way the next invocation cold-starts a new one;
//! - the process gets a clean environment: the Lambda variables, `PATH`, `LANG`, `TZ`, default
//!   `AWS_REGION`/`AWS_DEFAULT_REGION` of `us-east-1`, then the caller's variables (which win).
//!
//! The process's stdout and stderr lines are kept (the last [`LOG_LINES`]) with the service's
//! `START`/`END`/`REPORT` lines between invocations; set `SKEWGUARD_WORLD_ECHO_LOGS=1` to also
//! echo them to the test's stderr as they arrive. Processes are killed and reaped on drop, and on
//! Linux they are also killed if the thread that started them dies.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How many lines of function output [`LocalFunction::logs`] keeps.
pub const LOG_LINES: usize = 2000;
/// Echo function output to the test's stderr as it arrives when this variable is `1`.
pub const ECHO_LOGS_ENV: &str = "SKEWGUARD_WORLD_ECHO_LOGS";

const ACCOUNT_ID: &str = "123456789012";
/// How often an invocation checks whether its process is still alive.
const LIVENESS_POLL: Duration = Duration::from_millis(5);
const API_PREFIX: &str = "/2018-06-01/runtime/";

/// Why an invocation returned no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The handler returned an error (`POST .../invocation/{id}/error`).
    #[error("function error {error_type}: {message}")]
    FunctionError { error_type: String, message: String },
    /// The process exited during the invocation, after it had started serving events.
    #[error("the function process exited during the invocation ({status})")]
    Crashed { status: String },
    /// No answer within the invocation's timeout; the process was killed.
    #[error("the invocation timed out")]
    Timeout,
    /// Initialisation failed: the process reported `init/error`, or exited before it ever asked
    /// for an event (`Runtime.ExitError`, as the service reports it).
    #[error("function initialisation failed {error_type}: {message}")]
    InitError { error_type: String, message: String },
    /// The process could not be started at all, or answered something that is not JSON.
    #[error("{0}")]
    Service(String),
}

/// A function binary run locally behind the Lambda Runtime API.
pub struct LocalFunction {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    arn: String,
    /// The warm instance, if any; its lock also serialises invocations.
    instance: tokio::sync::Mutex<Option<Instance>>,
    cold_starts: AtomicU32,
    /// The pid of the newest process, readable while an invocation holds the instance.
    last_pid: AtomicU32,
    logs: LogRing,
}

impl std::fmt::Debug for LocalFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFunction")
            .field("name", &self.name)
            .field("binary", &self.binary)
            .field("cold_starts", &self.cold_starts())
            .finish_non_exhaustive()
    }
}

impl LocalFunction {
    /// Prepares the function; the first [`invoke`](Self::invoke) cold-starts it.
    ///
    /// Fails if `binary` is not a file. `env` comes on top of the Lambda variables.
    pub async fn start(
        name: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
    ) -> std::io::Result<Self> {
        if !binary.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "function binary for {name} not found at {} (build it with `cargo build`)",
                    binary.display()
                ),
            ));
        }
        let region = env
            .iter()
            .find(|(k, _)| k == "AWS_REGION")
            .map_or("us-east-1", |(_, v)| v.as_str());
        let arn = format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}");
        Ok(Self {
            name: name.to_owned(),
            binary,
            env,
            arn,
            instance: tokio::sync::Mutex::new(None),
            cold_starts: AtomicU32::new(0),
            last_pid: AtomicU32::new(0),
            logs: LogRing::new(
                LOG_LINES,
                std::env::var(ECHO_LOGS_ENV).as_deref() == Ok("1"),
            ),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Invokes the function synchronously (`RequestResponse`) and returns its JSON result.
    ///
    /// `timeout` is the function's configured timeout; it covers a cold start too.
    pub async fn invoke(
        &self,
        event: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, InvokeError> {
        // Waiting for an earlier invocation does not count against this one's timeout.
        let mut slot = self.instance.lock().await;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let deadline_ms = SystemTime::now()
            .checked_add(timeout)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis());
        if slot.as_mut().is_some_and(|i| i.exit_status().is_some()) {
            // Died while idle: the service would simply start a new environment.
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.cold_start().await?);
        }
        let instance = slot.as_mut().expect("an instance was just ensured");

        let request_id = new_request_id();
        self.logs
            .push(format!("START RequestId: {request_id} Version: $LATEST"));
        instance.api.queue(Invocation {
            request_id: request_id.clone(),
            body: Bytes::from(event.to_string()),
            deadline_ms,
            function_arn: self.arn.clone(),
            trace_id: new_trace_id(),
        });

        let outcome = instance.await_outcome(&request_id, deadline).await;
        let elapsed = started.elapsed();
        self.logs.push(format!("END RequestId: {request_id}"));
        self.logs.push(format!(
            "REPORT RequestId: {request_id}\tDuration: {:.2} ms{}",
            elapsed.as_secs_f64() * 1000.0,
            match &outcome {
                Err(InvokeError::Timeout) => "\tStatus: timeout",
                Err(InvokeError::Crashed { .. } | InvokeError::InitError { .. }) => {
                    "\tStatus: error"
                }
                _ => "",
            }
        ));
        if matches!(
            outcome,
            Err(InvokeError::Timeout | InvokeError::Crashed { .. } | InvokeError::InitError { .. })
        ) {
            // Kill and forget the environment; the next invocation starts afresh.
            *slot = None;
        }
        let body = outcome?;
        if body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| {
            InvokeError::Service(format!(
                "the function answered a payload that is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })
    }

    /// How many processes have been started so far.
    pub fn cold_starts(&self) -> u32 {
        self.cold_starts.load(Ordering::SeqCst)
    }

    /// The last [`LOG_LINES`] lines the function's processes printed, with the service's
    /// `START`/`END`/`REPORT` lines; oldest first.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// The process id of the warm instance, if one is running and no invocation holds it.
    /// The pid of the newest process, even while it is serving an invocation (for tests that
    /// kill it mid-invocation). It may have exited since.
    pub fn last_pid(&self) -> Option<u32> {
        Some(self.last_pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    pub fn pid(&self) -> Option<u32> {
        let slot = self.instance.try_lock().ok()?;
        let instance = slot.as_ref()?;
        let mut child = instance.child.lock().unwrap_or_else(|p| p.into_inner());
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Starts an instance now if none is warm, and waits until it asks for its first event
    /// (its initialisation is over). For a new instance, returns the time from just before its
    /// process was spawned to its first `GET .../invocation/next`; `None` if one was warm.
    pub async fn prewarm(&self, timeout: Duration) -> Result<Option<Duration>, InvokeError> {
        let mut slot = self.instance.lock().await;
        if slot.as_mut().is_some_and(|i| i.exit_status().is_some()) {
            *slot = None;
        }
        let fresh = slot.is_none();
        if fresh {
            *slot = Some(self.cold_start().await?);
        }
        let instance = slot.as_ref().expect("an instance was just ensured");
        let spawned_at = instance.spawned_at;
        let first = instance.wait_until_polled(1, timeout).await;
        if first.is_err() {
            *slot = None;
        }
        let first = first?;
        Ok(fresh.then(|| first.saturating_duration_since(spawned_at)))
    }

    /// Waits until the warm instance is idle: it has asked for the next event after answering
    /// every one it was given (so its CPU counters cover its whole work on them).
    pub async fn until_idle(&self, timeout: Duration) -> Result<(), InvokeError> {
        let slot = self.instance.lock().await;
        let Some(instance) = slot.as_ref() else {
            return Ok(());
        };
        let delivered = instance.api.delivered.load(Ordering::SeqCst);
        instance
            .wait_until_polled(delivered + 1, timeout)
            .await
            .map(|_| ())
    }

    async fn cold_start(&self) -> Result<Instance, InvokeError> {
        let number = self.cold_starts.fetch_add(1, Ordering::SeqCst) + 1;
        let api = Arc::new(RuntimeApi::default());
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| InvokeError::Service(format!("binding the Runtime API: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| InvokeError::Service(format!("binding the Runtime API: {e}")))?;
        let server = tokio::spawn(serve_runtime_api(listener, Arc::clone(&api)));

        let stream = format!(
            "{}/[$LATEST]{:016x}{:016x}",
            date_path(),
            random_u64(),
            random_u64()
        );
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", stream)
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("_HANDLER", "bootstrap")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let spawned_at = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            server.abort();
            InvokeError::Service(format!(
                "starting {} for {}: {e}",
                self.binary.display(),
                self.name
            ))
        })?;
        if let Some(out) = child.stdout.take() {
            self.logs.drain(out);
        }
        if let Some(err) = child.stderr.take() {
            self.logs.drain(err);
        }
        self.logs.push(format!(
            "INIT_START Runtime Version: provided.al2023 Instance: {number} Pid: {}",
            child.id()
        ));
        self.last_pid.store(child.id(), Ordering::SeqCst);
        Ok(Instance {
            child: Mutex::new(child),
            api,
            server,
            spawned_at,
        })
    }
}

/// One execution environment: a process and its Runtime API endpoint.
struct Instance {
    child: Mutex<Child>,
    api: Arc<RuntimeApi>,
    server: JoinHandle<()>,
    /// Just before the process was spawned.
    spawned_at: Instant,
}

impl Instance {
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// Waits until the process has sent its `polls`-th `GET .../invocation/next`; returns when
    /// it sent its first one.
    async fn wait_until_polled(
        &self,
        polls: u64,
        timeout: Duration,
    ) -> Result<Instant, InvokeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.api.polls.load(Ordering::SeqCst) >= polls
                && let Some(first) = self.api.first_poll.get()
            {
                return Ok(*first);
            }
            if let Some(status) = self.exit_status() {
                return Err(InvokeError::InitError {
                    error_type: "Runtime.ExitError".to_owned(),
                    message: format!("Runtime exited with error: {status}"),
                });
            }
            if Instant::now() >= deadline {
                return Err(InvokeError::Timeout);
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    async fn await_outcome(
        &self,
        request_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes, InvokeError> {
        let mut reports = self.api.reports.lock().await;
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        let mut liveness = tokio::time::interval(LIVENESS_POLL);
        loop {
            tokio::select! {
                biased;
                report = reports.recv() => {
                    match report.expect("the Runtime API holds the sender") {
                        Report::Response { request_id: id, body } if id == request_id => {
                            return Ok(body);
                        }
                        Report::Error { request_id: id, error_type, message } if id == request_id => {
                            return Err(InvokeError::FunctionError { error_type, message });
                        }
                        Report::InitError { error_type, message } => {
                            return Err(InvokeError::InitError { error_type, message });
                        }
                        // A late answer to an earlier invocation: the service drops those too.
                        Report::Response { .. } | Report::Error { .. } => {}
                    }
                }
                _ = &mut timeout => return Err(InvokeError::Timeout),
                _ = liveness.tick() => {
                    let Some(status) = self.exit_status() else { continue };
                    // It may have answered just before it exited.
                    while let Ok(report) = reports.try_recv() {
                        match report {
                            Report::Response { request_id: id, body } if id == request_id => {
                                return Ok(body);
                            }
                            Report::Error { request_id: id, error_type, message } if id == request_id => {
                                return Err(InvokeError::FunctionError { error_type, message });
                            }
                            Report::InitError { error_type, message } => {
                                return Err(InvokeError::InitError { error_type, message });
                            }
                            _ => {}
                        }
                    }
                    let message = format!(
                        "RequestId: {request_id} Error: Runtime exited with error: {status}"
                    );
                    return Err(if self.api.polled.load(Ordering::SeqCst) {
                        InvokeError::Crashed { status: status.to_string() }
                    } else {
                        InvokeError::InitError {
                            error_type: "Runtime.ExitError".to_owned(),
                            message,
                        }
                    });
                }
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        kill_and_reap(&mut child);
    }
}

/// SIGKILL, then reap so that no zombie remains; errors mean the process is already gone.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kill the child when the thread that spawned it dies (Linux), so that a killed test leaves
/// no function or backend process behind.
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            const PR_SET_PDEATHSIG: i32 = 1;
            const SIGKILL: std::ffi::c_ulong = 9;
            unsafe extern "C" {
                fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
            }
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_command: &mut Command) {}

struct Invocation {
    request_id: String,
    body: Bytes,
    deadline_ms: u128,
    function_arn: String,
    trace_id: String,
}

enum Report {
    Response {
        request_id: String,
        body: Bytes,
    },
    Error {
        request_id: String,
        error_type: String,
        message: String,
    },
    InitError {
        error_type: String,
        message: String,
    },
}

/// The state behind one instance's Runtime API endpoint.
struct RuntimeApi {
    /// The event waiting for the process's next `GET .../invocation/next`.
    queued: Mutex<Option<Invocation>>,
    queued_ready: Notify,
    /// Request ids handed to the process and not yet answered.
    in_flight: Mutex<HashSet<String>>,
    report_tx: mpsc::UnboundedSender<Report>,
    reports: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
    /// Whether the process has asked for an event yet (its initialisation is over).
    polled: AtomicBool,
    /// When it first asked for an event.
    first_poll: OnceLock<Instant>,
    /// How many times it has asked for an event, and how many events it was given.
    polls: AtomicU64,
    delivered: AtomicU64,
}

impl Default for RuntimeApi {
    fn default() -> Self {
        let (report_tx, reports) = mpsc::unbounded_channel();
        Self {
            queued: Mutex::new(None),
            queued_ready: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            report_tx,
            reports: tokio::sync::Mutex::new(reports),
            polled: AtomicBool::new(false),
            first_poll: OnceLock::new(),
            polls: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }
}

impl RuntimeApi {
    fn queue(&self, invocation: Invocation) {
        *self.queued.lock().unwrap_or_else(|p| p.into_inner()) = Some(invocation);
        self.queued_ready.notify_one();
    }

    async fn next(&self) -> Invocation {
        loop {
            if let Some(invocation) = self.queued.lock().unwrap_or_else(|p| p.into_inner()).take() {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(invocation.request_id.clone());
                self.delivered.fetch_add(1, Ordering::SeqCst);
                return invocation;
            }
            // `notify_one` keeps a permit when nobody waits, so no wake-up is lost here.
            self.queued_ready.notified().await;
        }
    }

    fn complete(&self, request_id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request_id)
    }
}

async fn serve_runtime_api(listener: TcpListener, api: Arc<RuntimeApi>) {
    // Owned here so that aborting this task aborts every connection too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let api = Arc::clone(&api);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&api), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type ApiResponse = Response<Full<Bytes>>;

async fn handle(api: Arc<RuntimeApi>, req: Request<Incoming>) -> Result<ApiResponse, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let Some(route) = path.strip_prefix(API_PREFIX) else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown path",
        ));
    };
    if method == Method::GET && route == "invocation/next" {
        api.first_poll.get_or_init(Instant::now);
        api.polls.fetch_add(1, Ordering::SeqCst);
        api.polled.store(true, Ordering::SeqCst);
        let invocation = api.next().await;
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("lambda-runtime-aws-request-id", &invocation.request_id)
            .header(
                "lambda-runtime-deadline-ms",
                invocation.deadline_ms.to_string(),
            )
            .header(
                "lambda-runtime-invoked-function-arn",
                &invocation.function_arn,
            )
            .header("lambda-runtime-trace-id", &invocation.trace_id)
            .body(Full::new(invocation.body))
            .expect("valid response parts");
        return Ok(response);
    }
    if method != Method::POST {
        return Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
        ));
    }
    let header_error_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "unreadable body",
            ));
        }
    };
    if route == "init/error" {
        let (error_type, message) = diagnostic(&body, header_error_type, "Runtime.InitError");
        let _ = api.report_tx.send(Report::InitError {
            error_type,
            message,
        });
        return Ok(accepted());
    }
    let Some((request_id, kind)) = route
        .strip_prefix("invocation/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown path",
        ));
    };
    if kind != "response" && kind != "error" {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown path",
        ));
    }
    if !api.complete(request_id) {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "Invalid request ID",
        ));
    }
    let report = if kind == "response" {
        Report::Response {
            request_id: request_id.to_owned(),
            body,
        }
    } else {
        let (error_type, message) = diagnostic(&body, header_error_type, "Unhandled");
        Report::Error {
            request_id: request_id.to_owned(),
            error_type,
            message,
        }
    };
    let _ = api.report_tx.send(report);
    Ok(accepted())
}

/// `{"errorType": .., "errorMessage": ..}`, as the runtime posts it.
fn diagnostic(body: &[u8], header: Option<String>, fallback: &str) -> (String, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let error_type = field("errorType")
        .or(header)
        .unwrap_or_else(|| fallback.to_owned());
    let message =
        field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, message)
}

fn accepted() -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

fn json_response(status: StatusCode, error_type: &str, message: &str) -> ApiResponse {
    let body = serde_json::json!({"errorType": error_type, "errorMessage": message});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// A v4-UUID-shaped request id, like the service's.
fn new_request_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// An X-Ray trace header: `Root=1-<epoch hex>-<96-bit hex>;Parent=<64-bit hex>;Sampled=0`.
fn new_trace_id() -> String {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "Root=1-{epoch:08x}-{:08x}{:016x};Parent={:016x};Sampled=0",
        random_u64() as u32,
        random_u64(),
        random_u64()
    )
}

/// `YYYY/MM/DD` (UTC) for log stream names.
fn date_path() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}/{day:02}")
}

/// The last lines of one or more child processes' stdout and stderr, drained by threads (an
/// undrained pipe would eventually block the child).
#[derive(Debug, Clone)]
pub(crate) struct LogRing {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
    echo: bool,
}

impl LogRing {
    pub(crate) fn new(capacity: usize, echo: bool) -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::new())),
            capacity,
            echo,
        }
    }

    pub(crate) fn push(&self, line: String) {
        if self.echo {
            eprintln!("{line}");
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub(crate) fn drain(&self, pipe: impl Read + Send + 'static) {
        let ring = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                ring.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                line.clear();
            }
        });
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect()
    }
}

/// The directory `cargo build` puts this workspace's binaries in (`target/debug` for the dev
/// profile): `$CARGO_TARGET_DIR/<profile>` when set, else found from the running test binary
/// (`target/debug/deps/<test>` or `target/debug/<bin>`).
pub fn target_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let profile = dir.file_name()?;
        let candidate = Path::new(&target).join(profile);
        if candidate.is_dir() {
            return Some(candidate);
        }
    }
    Some(dir.to_owned())
}

/// A binary of this workspace built into [`target_bin_dir`], or an error that says how to
/// build it.
pub fn workspace_binary(name: &str, package: &str) -> std::io::Result<PathBuf> {
    let dir = target_bin_dir().ok_or_else(|| {
        std::io::Error::other("cannot tell where cargo puts binaries (no current_exe)")
    })?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} does not exist: build it with `cargo build -p {package}`",
                path.display()
            ),
        ))
    }
}

// Shared between tasks and threads by the tests and the world.
const _: () = {
    const fn check<T: Send + Sync>() {}
    check::<LocalFunction>();
};

/// Checks, in a function's [`LocalFunction::logs`], that every JSON line (everything the
/// function logs) carries the `requestId` of the invocation it was written in, and the same
/// `xrayTraceId` as the invocation's other lines; and that every invocation logged at least one
/// line. Returns the number of JSON lines checked.
///
/// A line's invocation is known from order alone: one instance serves one invocation at a time
/// and a line can only be written after its invocation's `START`, but a line may trail its
/// invocation's `END` (the pipes are drained asynchronously). So a line must name an invocation
/// already started and never one older than the previous line's. The functions log nothing
/// outside an invocation (at cold start), so every JSON line must name one.
pub fn check_request_ids(logs: &[String]) -> Result<usize, String> {
    let mut started: Vec<&str> = Vec::new();
    // Per started invocation: its X-Ray trace ID, once a line showed it, and its line count.
    let mut traces: Vec<Option<String>> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut latest = 0;
    let mut checked = 0;
    for line in logs {
        if let Some(rest) = line.strip_prefix("START RequestId: ") {
            started.push(rest.split_whitespace().next().unwrap_or_default());
            traces.push(None);
            counts.push(0);
            continue;
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else {
            continue;
        };
        checked += 1;
        let Some(id) = fields.get("requestId").and_then(|v| v.as_str()) else {
            return Err(format!("a line without requestId: {line}"));
        };
        let Some(index) = started.iter().position(|s| *s == id) else {
            return Err(format!(
                "a line names {id}, which is no invocation started before it: {line}"
            ));
        };
        if index < latest {
            return Err(format!(
                "a line names {id} after a line of the later invocation {}: {line}",
                started[latest]
            ));
        }
        latest = index;
        counts[index] += 1;
        let Some(trace) = fields.get("xrayTraceId").and_then(|v| v.as_str()) else {
            return Err(format!("a line without xrayTraceId: {line}"));
        };
        match &traces[index] {
            None => traces[index] = Some(trace.to_owned()),
            Some(seen) if seen == trace => {}
            Some(seen) => {
                return Err(format!(
                    "{id}'s lines name two X-Ray traces, {seen} and {trace}: {line}"
                ));
            }
        }
    }
    if let Some(index) = counts.iter().position(|n| *n == 0) {
        return Err(format!(
            "invocation {} logged no line (or it has not arrived yet)",
            started[index]
        ));
    }
    Ok(checked)
}
