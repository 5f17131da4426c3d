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

use crate::procfs;
use crate::proxy::{Call, CallLog};

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
}

/// Invokes the hook binaries for the deployment engine and meters every invocation.
///
/// With `cold` set, every invocation runs on a fresh process (so each one is a first invocation
/// after a cold start); otherwise each function keeps one warm process.
pub struct Metered {
    binaries: Binaries,
    functions: tokio::sync::Mutex<BTreeMap<&'static str, Arc<LocalFunction>>>,
    pub cold: AtomicBool,
    log: CallLog,
    ecs: Arc<EcsEmulator>,
    phase: Mutex<(usize, bool)>,
    executions: Mutex<BTreeMap<String, usize>>,
    pub records: Mutex<Vec<Record>>,
}

impl Metered {
    pub fn new(binaries: Binaries, log: CallLog, ecs: Arc<EcsEmulator>) -> Metered {
        Metered {
            binaries,
            functions: tokio::sync::Mutex::new(BTreeMap::new()),
            cold: AtomicBool::new(false),
            log,
            ecs,
            phase: Mutex::new((0, false)),
            executions: Mutex::new(BTreeMap::new()),
            records: Mutex::new(Vec::new()),
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

    async fn function(&self, function: HookFunction) -> Result<Arc<LocalFunction>, String> {
        let mut functions = self.functions.lock().await;
        let name = function.name();
        if self.cold.load(Ordering::SeqCst) || !functions.contains_key(name) {
            // Dropping the previous one kills its process.
            functions.remove(name);
            let fresh = Arc::new(self.binaries.function(name).await?);
            functions.insert(name, fresh);
        }
        Ok(functions[name].clone())
    }

    async fn metered(&self, function: HookFunction, event: Value) -> Invocation {
        let f = match self.function(function).await {
            Ok(f) => f,
            Err(e) => return Invocation::Failed(e),
        };
        let fresh = match f.prewarm(TIMEOUT).await {
            Ok(cold) => cold.is_some(),
            Err(e) => return Invocation::Failed(format!("cold start failed: {e}")),
        };
        let Some(pid) = f.pid() else {
            return Invocation::Failed("no process after the cold start".to_owned());
        };
        let cpu_before = procfs::cpu(pid).unwrap_or_default();
        let ticks_before = procfs::user_system_ticks(pid).unwrap_or_default();
        let (calls_mark, ecs_mark) = (self.log.len(), self.ecs.calls().len());
        let started = Instant::now();
        let result = f.invoke(event.clone(), TIMEOUT).await;
        let wall = started.elapsed();
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
        let stage = self.label(function, &event, &answer);
        let (deployment, first_deployment) = *self.phase.lock().expect("phase");
        self.records.lock().expect("records").push(Record {
            function,
            stage,
            deployment,
            first_deployment,
            after_cold_start: fresh,
            cpu: if idle.is_ok() {
                cpu_after.saturating_sub(cpu_before)
            } else {
                Duration::ZERO
            },
            wall,
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
