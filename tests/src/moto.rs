//! A private moto server per test: ELBv2, DynamoDB and the bit of EC2 the fixtures need.
//!
//! Each [`MotoServer`] is its own `moto_server` process on a free loopback port, so tests can run
//! in parallel (cargo-nextest runs one process per test) without sharing state. The process is
//! killed and reaped when the handle is dropped.
//!
//! Where the process could outlive its test, and what stops it:
//! - normal return and panics (unwinding): [`Drop`] kills and reaps it;
//! - the test process itself is killed (nextest timeout, SIGKILL, `panic = "abort"`): the child
//!   is started with `PR_SET_PDEATHSIG = SIGKILL` on Linux, and it deliberately stays in the test's
//!   process group, so nextest's per-test group signals and a terminal's Ctrl-C reach it too (a
//!   process group of its own would hide it from both).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Environment variable naming the `moto_server` executable to run instead of the venv's.
pub const MOTO_SERVER_ENV: &str = "SKEWGUARD_MOTO_SERVER";
/// The moto release `./dev setup` installs and these stand-ins are written against.
pub const MOTO_VERSION: &str = "5.2.5";
/// How long [`MotoServer::start`] waits for the server to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

const LOG_LINES: usize = 200;
const START_ATTEMPTS: usize = 3;

/// Everything that can go wrong while building the local AWS world.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error(
        "moto_server not found at {}: run `./dev setup` (it creates .venv and installs \
         moto[server]=={MOTO_VERSION}), or point {MOTO_SERVER_ENV} at a moto_server executable",
        path.display()
    )]
    MotoMissing { path: PathBuf },
    #[error(
        "moto_server ({}) did not start: {reason}\n--- moto_server output (last lines) ---\n{tail}",
        path.display()
    )]
    MotoStart {
        path: PathBuf,
        reason: String,
        tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{operation} failed: {message}")]
    Aws { operation: String, message: String },
    /// The functions' roles could not be read from the template.
    #[error(transparent)]
    Roles(#[from] crate::iam::IamError),
    #[error("{0}")]
    Other(String),
}

/// For the parts of the world whose errors are still plain text (the deployment engine).
impl From<WorldError> for String {
    fn from(e: WorldError) -> String {
        e.to_string()
    }
}

impl WorldError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorldError {
        let context = context.into();
        move |source| WorldError::Io { context, source }
    }

    /// Maps an SDK error to [`WorldError::Aws`], keeping the whole error chain in the message.
    pub fn aws<E>(operation: impl Into<String>) -> impl FnOnce(E) -> WorldError
    where
        E: std::error::Error,
    {
        let operation = operation.into();
        move |err| WorldError::Aws {
            operation,
            message: aws_sdk_ecs::error::DisplayErrorContext(&err).to_string(),
        }
    }
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}

/// The `moto_server` to run: `$SKEWGUARD_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`.
pub fn moto_server_path() -> PathBuf {
    match std::env::var_os(MOTO_SERVER_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join(".venv/bin/moto_server"),
    }
}

/// `PYTHONPATH` for moto: the world's `sitecustomize` first (tests/moto-site: it keeps moto's
/// DynamoDB Query from reading the whole table), then whatever the caller had.
fn python_path() -> std::ffi::OsString {
    let mut paths = vec![workspace_root().join("tests/moto-site")];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// A loopback TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A running `moto_server`, killed and reaped on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    path: PathBuf,
    log: Log,
}

impl MotoServer {
    /// Starts the venv's (or `$SKEWGUARD_MOTO_SERVER`'s) moto_server on a free port and waits
    /// until it answers HTTP.
    ///
    /// On Linux the process is also killed when the *thread* that started it exits: start it from
    /// the test's own thread or a runtime worker, not from `spawn_blocking` or a short-lived thread.
    pub async fn start() -> Result<MotoServer, WorldError> {
        Self::start_with(&moto_server_path()).await
    }

    /// Like [`MotoServer::start`], with an explicit `moto_server` executable.
    pub async fn start_with(path: &Path) -> Result<MotoServer, WorldError> {
        if !path.is_file() {
            return Err(WorldError::MotoMissing {
                path: path.to_owned(),
            });
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port().map_err(WorldError::io("picking a free loopback port"))?;
            match Self::start_on(path, port).await {
                Ok(server) => return Ok(server),
                // Another process took the port between `free_port` and moto's bind: try another.
                Err(err @ WorldError::MotoStart { .. })
                    if err.to_string().contains("Address already in use") =>
                {
                    last_err = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_err.expect("at least one attempt was made"))
    }

    async fn start_on(path: &Path, port: u16) -> Result<MotoServer, WorldError> {
        let mut command = Command::new(path);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Unbuffered, so the startup banner and tracebacks reach the log at once.
            .env("PYTHONUNBUFFERED", "1")
            // tests/moto-site/sitecustomize.py: DynamoDB Query reads one partition, as on AWS.
            .env("PYTHONPATH", python_path());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(WorldError::io(format!("spawning {}", path.display())))?;
        let log = Log::default();
        if let Some(out) = child.stdout.take() {
            log.drain(out);
        }
        if let Some(err) = child.stderr.take() {
            log.drain(err);
        }
        let mut server = MotoServer {
            child,
            port,
            path: path.to_owned(),
            log,
        };
        match server.wait_ready().await {
            Ok(()) => Ok(server),
            Err(reason) => {
                server.stop();
                Err(WorldError::MotoStart {
                    path: server.path.clone(),
                    reason,
                    tail: server.log.tail(),
                })
            }
        }
    }

    /// Ready once the port answers HTTP *and* it is this child that bound it: werkzeug's
    /// ` * Running on http://127.0.0.1:PORT` line in its own output (or, should a future werkzeug
    /// drop that line, the child still alive well after the port first answered). Otherwise a
    /// process that took the port between [`free_port`] and moto's bind could pass for moto.
    async fn wait_ready(&mut self) -> Result<(), String> {
        const BANNERLESS_GRACE: Duration = Duration::from_secs(3);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        let banner = format!("Running on http://127.0.0.1:{}", self.port);
        let mut answered_since = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // Let the drain threads catch the last words.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(format!("it exited ({status}) before answering on {addr}"));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for it failed: {e}")),
            }
            let answered = matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    http_request(addr, "GET", "/moto-api/", &[], Vec::new()),
                )
                .await,
                Ok(Ok((status, _))) if status < 500
            );
            if answered {
                let since = *answered_since.get_or_insert_with(Instant::now);
                if self.log.contains(&banner) || since.elapsed() >= BANNERLESS_GRACE {
                    return Ok(());
                }
            } else {
                answered_since = None;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no HTTP answer from it on {addr} within {}s",
                    START_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's process id (gone once the handle is dropped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines moto printed (request log, tracebacks), for failure messages.
    pub fn log_tail(&self) -> String {
        self.log.tail()
    }

    /// Forgets every resource in every service (`POST /moto-api/reset`).
    pub async fn reset(&self) -> Result<(), WorldError> {
        let (status, body) =
            http_request(self.addr(), "POST", "/moto-api/reset", &[], Vec::new()).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(WorldError::Other(format!(
                "moto reset answered HTTP {status}: {body}"
            )))
        }
    }

    fn stop(&mut self) {
        // SIGKILL, then reap so no zombie stays; errors mean it is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill the child when the thread that spawned it dies (Linux), so a killed test leaves no moto.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// The last [`LOG_LINES`] lines of the child's stdout and stderr, drained by background threads
/// (moto logs every request, so an undrained pipe would eventually block it).
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn drain(&self, pipe: impl Read + Send + 'static) {
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                line.clear();
                let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(text);
            }
        });
    }

    fn contains(&self, needle: &str) -> bool {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().any(|line| line.contains(needle))
    }

    fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            "(no output)".to_owned()
        } else {
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body as text.
pub(crate) async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, String), WorldError> {
    let what = format!("{method} http://{addr}{path}");
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(WorldError::io(format!("connecting for {what}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| WorldError::Other(format!("{what}: {e}")))?;
        let conn = tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| WorldError::Other(format!("{what}: {e}")))?;
        let result = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        conn.abort();
        result.map_err(|e| WorldError::Other(format!("{what}: {e}")))
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| WorldError::Other(format!("{what}: no answer within 30s")))?
}
