//! The hook side of the benchmark: the real release binaries behind the local Lambda Runtime
//! API, metered per invocation (CPU time of the process, wall time, AWS calls at the stand-ins,
//! peak RSS), and the cold-start measurement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skewguard_core::hook::HookFunction;
use skewguard_world::ecs_emulator::EcsEmulator;
use skewguard_world::engine::{BoxFuture, Invocation, Invoker};
use skewguard_world::lambda::LocalFunction;

use crate::capacity::Units;
use crate::procfs;
use crate::proxy::{Call, CallLog, Logged};

/// The invocation timeout the engine's hooks get (as configured on the functions).
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub const HOOKS: [HookFunction; 3] = [
    HookFunction::PostTestTraffic,
    HookFunction::ProductionShift,
    HookFunction::PostShift,
];

/// Where the binaries are and what environment they get.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub async fn function(&self, name: &str) -> Result<LocalFunction, String> {
        self.function_with(name, &[]).await
    }

    /// A fresh [`LocalFunction`] (no process yet) with extra environment variables on top.
    pub async fn function_with(
        &self,
        name: &str,
        extra: &[(String, String)],
    ) -> Result<LocalFunction, String> {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        LocalFunction::start(name, self.path(name), env)
            .await
            .map_err(|e| e.to_string())
    }
}

/// One measured invocation.
#[derive(Debug, Clone)]
pub struct Record {
    pub function: HookFunction,
    /// What the invocation was, e.g. `POST_TEST_TRAFFIC_SHIFT` or `post-shift: holding poll`.
    pub stage: String,
    /// The deployment it belonged to (1-based) and whether that was the service's first
    /// deployment under skewguard.
    pub deployment: usize,
    pub first_deployment: bool,
    /// The first invocation its process served.
    pub after_cold_start: bool,
    pub cpu: Duration,
    pub wall: Duration,
    /// Every AWS call it made, as counted at the stand-ins (`ECS`, `DynamoDB`, `ELBv2`).
    pub calls: Vec<Call>,
    pub answer: String,
    pub peak_rss: u64,
    pub threads: usize,
    /// User and system clock ticks during the invocation.
    pub ticks: (u64, u64),
    /// Served by the Python peer (bench/python-peer) instead of the Rust binary.
    pub peer: bool,
    /// For the first invocation of a process: its spawn → first `GET /next`.
    pub init: Option<Duration>,
    /// Time spent waiting for the stand-ins' answers (the union of the calls' intervals at the
    /// proxies), part of `wall`.
    pub aws_wait: Duration,
    /// DynamoDB capacity units of its calls, as DynamoDB bills them; `units_complete` is false
    /// when some call's units could not be worked out.
    pub units: Units,
    pub units_complete: bool,
    /// When it started and ended (`wall` apart, the proxy's metering taken out).
    pub started: Instant,
    pub service: String,
}

/// The union length of the calls' `[at, at + took]` intervals.
pub fn busy(calls: &[Logged]) -> Duration {
    let mut spans: Vec<(Instant, Instant)> = calls.iter().map(|c| (c.at, c.at + c.took)).collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in spans {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                current = Some((start, end));
            }
            None => current = Some((start, end)),
        }
    }
    if let Some((s, e)) = current {
        total += e - s;
    }
    total
}

/// Sum of the units of `calls` and whether every DynamoDB call had them.
pub fn units_of(calls: &[Logged]) -> (Units, bool) {
    let mut units = Units::default();
    let mut complete = true;
    for c in calls.iter().filter(|c| c.call.0 == "DynamoDB") {
        match c.units {
            Some(u) => units += u,
            None => complete = false,
        }
    }
    (units, complete)
}

/// The proxy's metering time during `calls` (the caller waited for it; not the function's time).
pub fn metering_of(calls: &[Logged]) -> Duration {
    calls.iter().map(|c| c.metering).sum()
}

/// The Python peer: its bootstrap (bench/run writes it) and where its handler module is.
#[derive(Debug, Clone)]
pub struct Peer {
    pub bootstrap: PathBuf,
    pub task_root: PathBuf,
    pub table: String,
}

impl Peer {
    /// `SKEWGUARD_BENCH_PEER`, set by bench/run.
    pub fn from_env(task_root: PathBuf, table: &str) -> Option<Peer> {
        let bootstrap = PathBuf::from(std::env::var_os("SKEWGUARD_BENCH_PEER")?);
        bootstrap.is_file().then(|| Peer {
            bootstrap,
            task_root,
            table: table.to_owned(),
        })
    }

    pub fn handler(function: HookFunction) -> &'static str {
        match function {
            HookFunction::PostTestTraffic => "handler.post_test_traffic",
            HookFunction::ProductionShift => "handler.production_shift",
            HookFunction::PostShift => "handler.post_shift",
        }
    }

    pub async fn function(
        &self,
        binaries: &Binaries,
        function: HookFunction,
    ) -> Result<LocalFunction, String> {
        let mut env = binaries.env.clone();
        env.extend([
            ("_HANDLER".to_owned(), Peer::handler(function).to_owned()),
            (
                "LAMBDA_TASK_ROOT".to_owned(),
                self.task_root.display().to_string(),
            ),
            ("SKEWGUARD_TABLE".to_owned(), self.table.clone()),
        ]);
        LocalFunction::start(
            &format!("peer-{}", function.name()),
            self.bootstrap.clone(),
            env,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// Invokes the hook binaries for the deployment engine and meters every invocation.
///
/// With `cold` set, every invocation runs on a fresh process (so each one is a first invocation
/// after a cold start); otherwise each function keeps one warm process.
pub struct Metered {
    binaries: Binaries,
    functions: tokio::sync::Mutex<BTreeMap<String, Arc<LocalFunction>>>,
    pub cold: AtomicBool,
    log: CallLog,
    /// The proxy in front of the ECS emulator (timing only; the emulator counts the calls).
    ecs_log: CallLog,
    /// The Python peer and the services it serves (every other service gets the Rust hooks).
    pub peer: Option<Peer>,
    pub peer_services: Mutex<Vec<String>>,
    ecs: Arc<EcsEmulator>,
    phase: Mutex<(usize, bool)>,
    executions: Mutex<BTreeMap<String, usize>>,
    pub records: Mutex<Vec<Record>>,
    /// The output of the last invocation that did not succeed (for the bench's error message).
    pub last_failure: Mutex<Option<String>>,
}

impl Metered {
    /// The counting proxy's log in front of the ECS emulator.
    pub fn ecs_log(&self) -> &CallLog {
        &self.ecs_log
    }

    pub fn new(
        binaries: Binaries,
        log: CallLog,
        ecs_log: CallLog,
        ecs: Arc<EcsEmulator>,
        peer: Option<Peer>,
    ) -> Metered {
        Metered {
            binaries,
            functions: tokio::sync::Mutex::new(BTreeMap::new()),
            cold: AtomicBool::new(false),
            log,
            ecs_log,
            peer,
            peer_services: Mutex::new(Vec::new()),
            ecs,
            phase: Mutex::new((0, false)),
            executions: Mutex::new(BTreeMap::new()),
            records: Mutex::new(Vec::new()),
            last_failure: Mutex::new(None),
        }
    }

    /// `message`, with the output of the last invocation that did not succeed.
    pub fn failure(&self, message: String) -> String {
        match self.last_failure.lock().expect("last failure").as_ref() {
            Some(logs) => format!("{message}\n{logs}"),
            None => message,
        }
    }

    /// The deployment the next invocations belong to.
    pub fn set_phase(&self, deployment: usize, first_deployment: bool) {
        *self.phase.lock().expect("phase") = (deployment, first_deployment);
    }

    /// Drops every process: the next invocation of each function cold-starts.
    pub async fn reset(&self) {
        self.functions.lock().await.clear();
    }

    async fn function(
        &self,
        function: HookFunction,
        peer: bool,
    ) -> Result<Arc<LocalFunction>, String> {
        let mut functions = self.functions.lock().await;
        let name = if peer {
            format!("peer-{}", function.name())
        } else {
            function.name().to_owned()
        };
        if self.cold.load(Ordering::SeqCst) || !functions.contains_key(&name) {
            // Dropping the previous one kills its process.
            functions.remove(&name);
            let fresh = match (&self.peer, peer) {
                (Some(p), true) => p.function(&self.binaries, function).await?,
                _ => self.binaries.function(function.name()).await?,
            };
            functions.insert(name.clone(), Arc::new(fresh));
        }
        Ok(functions[&name].clone())
    }

    async fn metered(&self, function: HookFunction, event: Value) -> Invocation {
        let service = event
            .pointer("/executionDetails/serviceArn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let peer = self
            .peer_services
            .lock()
            .expect("peer services")
            .contains(&service);
        let f = match self.function(function, peer).await {
            Ok(f) => f,
            Err(e) => return Invocation::Failed(e),
        };
        let init = match f.prewarm(TIMEOUT).await {
            Ok(init) => init,
            Err(e) => {
                return Invocation::Failed(format!(
                    "cold start failed: {e}\n{}",
                    f.logs().join("\n")
                ));
            }
        };
        let fresh = init.is_some();
        let Some(pid) = f.pid() else {
            return Invocation::Failed("no process after the cold start".to_owned());
        };
        let cpu_before = procfs::cpu(pid).unwrap_or_default();
        let ticks_before = procfs::user_system_ticks(pid).unwrap_or_default();
        let (calls_mark, ecs_mark) = (self.log.len(), self.ecs.calls().len());
        let ecs_timing_mark = self.ecs_log.len();
        let started = Instant::now();
        let result = f.invoke(event.clone(), TIMEOUT).await;
        let wall = started.elapsed();
        let mut logged = self.log.logged_since(calls_mark);
        let (units, units_complete) = units_of(&logged);
        let metering = metering_of(&logged);
        logged.extend(self.ecs_log.logged_since(ecs_timing_mark));
        let aws_wait = busy(&logged);
        let idle = f.until_idle(TIMEOUT).await;
        let cpu_after = procfs::cpu(pid).unwrap_or_default();
        let ticks_after = procfs::user_system_ticks(pid).unwrap_or_default();
        let peak_rss = procfs::peak_rss(pid).unwrap_or(0);
        let threads = procfs::threads(pid);
        let mut calls: Vec<Call> = self
            .ecs
            .calls()
            .into_iter()
            .skip(ecs_mark)
            .map(|op| ("ECS".to_owned(), op))
            .collect();
        calls.extend(self.log.since(calls_mark));
        let answer = match &result {
            Ok(a) => a
                .get("hookStatus")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            Err(e) => format!("error: {e}"),
        };
        if answer != "SUCCEEDED" && answer != "IN_PROGRESS" {
            let logs = f.logs();
            let tail = logs[logs.len().saturating_sub(20)..].join("\n");
            *self.last_failure.lock().expect("last failure") =
                Some(format!("{} answered {answer}:\n{tail}", f.name()));
        }
        let stage = self.label(function, &event, &answer);
        let (deployment, first_deployment) = *self.phase.lock().expect("phase");
        self.records.lock().expect("records").push(Record {
            function,
            stage,
            deployment,
            first_deployment,
            after_cold_start: fresh,
            peer,
            init,
            aws_wait,
            units,
            units_complete,
            started,
            service,
            cpu: if idle.is_ok() {
                cpu_after.saturating_sub(cpu_before)
            } else {
                Duration::ZERO
            },
            wall: wall.saturating_sub(metering),
            calls,
            answer,
            peak_rss,
            threads,
            ticks: (
                ticks_after.0.saturating_sub(ticks_before.0),
                ticks_after.1.saturating_sub(ticks_before.1),
            ),
        });
        match result {
            Ok(answer) => Invocation::Answered(answer),
            Err(e) => Invocation::Failed(e.to_string()),
        }
    }

    /// `TEST_TRAFFIC_SHIFT`, `rollback at PRODUCTION_TRAFFIC_SHIFT`, `hold: start` …
    fn label(&self, function: HookFunction, event: &Value, answer: &str) -> String {
        let stage = event
            .get("lifecycleStage")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let details = event.get("executionDetails");
        let green = details
            .and_then(|d| d.get("targetServiceRevisionArn"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let weight_of = |key: &str| {
            details
                .and_then(|d| d.get(key))
                .and_then(|w| w.get(green))
                .and_then(Value::as_f64)
        };
        match stage.as_str() {
            "TEST_TRAFFIC_SHIFT" if weight_of("testTrafficWeights") == Some(0.0) => {
                format!("rollback at {stage}")
            }
            "PRODUCTION_TRAFFIC_SHIFT" if weight_of("productionTrafficWeights") == Some(0.0) => {
                format!("rollback at {stage}")
            }
            "POST_PRODUCTION_TRAFFIC_SHIFT" if function == HookFunction::PostShift => {
                let execution = event
                    .get("executionId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let mut executions = self.executions.lock().expect("executions");
                let seen = executions.entry(execution).or_default();
                *seen += 1;
                match (*seen, answer) {
                    (1, "IN_PROGRESS") => "hold: start (POST_PRODUCTION_TRAFFIC_SHIFT)".to_owned(),
                    (1, _) => "hold: start and end".to_owned(),
                    (_, "IN_PROGRESS") => "hold: poll while holding".to_owned(),
                    _ => "hold: end (unpin, retire)".to_owned(),
                }
            }
            _ => stage,
        }
    }
}

impl Invoker for Metered {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(self.metered(function, event))
    }
}

/// One cold start: spawn → first `GET /next`, the CPU the process used for it, its RSS then.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    pub to_first_poll: Duration,
    pub cpu: Duration,
    pub peak_rss: u64,
    pub threads: usize,
}

/// `runs` cold starts of `name` (after one discarded run that warms the page cache).
pub async fn cold_starts(
    binaries: &Binaries,
    name: &str,
    runs: usize,
    extra_env: &[(String, String)],
) -> Result<Vec<ColdStart>, String> {
    let mut samples = Vec::new();
    for run in 0..=runs {
        let f = binaries.function_with(name, extra_env).await?;
        let to_first_poll = f
            .prewarm(TIMEOUT)
            .await
            .map_err(|e| format!("{name}: cold start failed: {e}\n{}", f.logs().join("\n")))?
            .ok_or("a fresh function had a warm instance")?;
        let pid = f.pid().ok_or("no process after the cold start")?;
        let sample = ColdStart {
            to_first_poll,
            cpu: procfs::cpu(pid).unwrap_or_default(),
            peak_rss: procfs::peak_rss(pid).unwrap_or(0),
            threads: procfs::threads(pid),
        };
        drop(f);
        if run > 0 {
            samples.push(sample);
        }
        // Let the killed process go before the next spawn.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}

/// The release binary of each function must exist.
pub fn check_binaries(dir: &Path, names: &[&str]) -> Result<(), String> {
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !dir.join(n).is_file())
        .map(|n| dir.join(n).display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing release binaries: {} — build them with `cargo build --release -p post-test-traffic -p production-shift -p post-shift -p reconciler` (or run bench/run)",
            missing.join(", ")
        ))
    }
}
