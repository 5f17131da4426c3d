//! The reliability harness: worlds whose functions reach AWS through the
//! [`FaultProxy`], an [`Invoker`] that crashes a hook after its k-th AWS call and then lets ECS
//! invoke it again, the safety invariants checked right after every crash, and a comparable
//! end state for "converged to what an undisturbed run gives".
//!
//! Two ways to crash, with the same effect on AWS (the k-th call is applied and the function
//! never sees its answer):
//! - in-process ([`Mode::InProcess`]): the hook's handler future is dropped when the proxy sees
//!   the k-th call: fast, so every crash point of every scenario can be swept;
//! - real processes ([`Mode::Processes`]): the compiled hook binary behind the local Lambda
//!   Runtime API is SIGKILLed by pid at the k-th call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use serde_json::{Value, json};
use skewguard_core::aws::elb::Elb;
use skewguard_core::aws::ledger_store::LedgerStore;
use skewguard_core::hook::{self, Clients as HookClients, HookConfig, HookFunction};
use skewguard_core::listener::RuleAction;
use skewguard_core::reconciler::{self, ReconcileError, ReconcileOptions};
use skewguard_core::settings::EnvDefaults;
use skewguard_core::stages::{self, Actor, Draft};

use crate::aws::{function_env, sdk_config};
use crate::engine::{
    BoxFuture, HookRegistration, Intervention, Invocation, Invoker, Observer, Outcome,
    PlaceholderTasks, Strategy,
};
use crate::faults::{FaultProxy, counting, kill_process};
use crate::iam::{AuthorisingProxy, Denial};
use crate::invariants::{Observation, ServiceTruth, violations};
use crate::lambda::{LocalFunction, workspace_binary};
use crate::moto::MotoServer;
use crate::world::{CLUSTER, InvariantChecker, StandIns, TABLE, World};

/// Appends one JSON line of figures to `$SKEWGUARD_RELIABILITY_OUT/<suite>.json`, for
/// `reliability/run` to put in `docs/reliability.md`.
pub fn report(suite: &str, figures: Value) {
    let Ok(dir) = std::env::var("SKEWGUARD_RELIABILITY_OUT") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let line = json!({"suite": suite, "figures": figures}).to_string() + "\n";
    let path = std::path::Path::new(&dir).join(format!("{suite}.json"));
    let _ = std::fs::write(path, line);
}

/// Whether the long versions of the suites run (`reliability/run` sets it).
pub fn full() -> bool {
    std::env::var("SKEWGUARD_RELIABILITY_FULL").as_deref() == Ok("1")
}

/// How the hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The handler in this process; clients as the tests build them (no SDK retries).
    InProcess,
    /// The handler in this process with production's SDK behaviour: standard retries,
    /// 3 attempts, and the given attempt timeout (production: 10 s).
    InProcessRetrying { attempt_timeout: Duration },
    /// The compiled hook binaries, with `AWS_MAX_ATTEMPTS` attempts.
    Processes { max_attempts: u32 },
}

/// The stand-ins on an existing moto (reset first): the ECS emulator, the ledger table, an ALB
/// whose production rule matches `/api/*` at 100 and whose test rule sits at 10.
pub async fn stand_ins_on(moto: MotoServer) -> StandIns {
    skewguard_core::telemetry::init();
    moto.reset().await.expect("moto resets");
    StandIns::on(moto, "/api/*").await
}

/// Hook clients that reach AWS through the proxy, with the SDK behaviour of `mode`.
pub async fn proxied_clients(proxy: &FaultProxy, mode: Mode) -> HookClients {
    let config = sdk_config(&proxy.endpoints()).await;
    let config = match mode {
        Mode::InProcessRetrying { attempt_timeout } => config
            .into_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    // Production's 40 s covers 3 attempts of 10 s and the backoff (1 s, 2 s,
                    // unscaled) between them.
                    .operation_timeout(attempt_timeout * 3 + Duration::from_secs(6))
                    .build(),
            )
            .build(),
        _ => config,
    };
    skewguard_core::cold_start::clients(&config, TABLE)
}

/// Passes every step to the invariant checker and keeps the latest truths, so a check right
/// after a crash knows what runs where.
pub struct RecordingObserver {
    pub checker: Arc<InvariantChecker>,
    pub truths: Mutex<Vec<ServiceTruth>>,
}

impl Observer for RecordingObserver {
    fn after_step<'a>(
        &'a self,
        service: &'a str,
        step: &'a str,
        truths: Vec<ServiceTruth>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            *self.truths.lock().expect("truths") = truths.clone();
            self.checker.after_step(service, step, truths.clone()).await;
            if let Some(seen) = self.checker.last_observation().await {
                let name = service.rsplit('/').next().unwrap_or(service);
                let found = made_up_ids_reach_production(&seen, &truths);
                self.checker.violations.lock().expect("violations").extend(
                    found
                        .into_iter()
                        .map(|v| format!("after {name}: {step}: {v}")),
                );
            }
        })
    }
}

/// A request carrying a made-up ID, a retired one, or a case or wildcard variant of a live one
/// reaches its service's production rule, a pin of exactly that ID, or the retired answer:
/// never a version that is not pinned for it.
pub fn made_up_ids_reach_production(seen: &Observation, truths: &[ServiceTruth]) -> Vec<String> {
    let mut found = Vec::new();
    let mut ids: BTreeSet<String> = [
        "made-up", "0000000", "deadbeef", "*", "v?", "v1*", "V1", "V2", "",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for entries in seen.ledgers.values() {
        for e in entries {
            ids.insert(e.deployment_id.to_string());
            ids.insert(e.deployment_id.as_str().to_ascii_uppercase());
            ids.insert(format!("{}x", e.deployment_id));
        }
    }
    for truth in truths {
        for id in &ids {
            let request = truth.probe.clone().with_header("X-Deployment-ID", id);
            let Some(rule) = skewguard_core::listener::route(&seen.rules, &request) else {
                continue;
            };
            if rule.arn == truth.production_rule_arn
                || matches!(rule.action, RuleAction::FixedResponse { .. })
            {
                continue;
            }
            match seen.tags.get(&rule.arn) {
                Some(t) if t.deployment_id.eq_ignore_ascii_case(id) => {}
                other => found.push(format!(
                    "made-up IDs: a request for {} carrying {id:?} reaches rule {} ({:?}), not production",
                    truth.service_arn,
                    rule.arn,
                    other.map(|t| &t.deployment_id)
                )),
            }
        }
    }
    found
}

/// One invocation as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub function: HookFunction,
    pub stage: String,
    /// AWS calls the invocation made (the crashed one and its retry together).
    pub calls: usize,
    pub crashed: bool,
    pub answer: String,
}

/// Invokes the hooks (in this process or as processes) through the fault proxy; crashes the
/// chosen invocation after its k-th call, checks the safety invariants, then invokes it again
/// with the same event, as ECS (or Lambda's retry) would.
pub struct ChaosInvoker {
    mode: Mode,
    proxy: Arc<FaultProxy>,
    clients: Option<HookClients>,
    defaults: EnvDefaults,
    functions: BTreeMap<&'static str, Arc<LocalFunction>>,
    /// Each function process's role, between it and the fault proxy.
    authorising: Vec<AuthorisingProxy>,
    /// `(invocation index, k)`: crash that invocation after its k-th AWS call.
    pub target: Mutex<Option<(usize, u32)>>,
    counter: AtomicUsize,
    pub records: Mutex<Vec<Record>>,
    /// End the skew window (as `skewguard release` does) as soon as post-shift holds, so the
    /// hold takes exactly two calls whatever the timing.
    pub release_on_hold: AtomicBool,
    direct_elb: Elb,
    direct_ledger: LedgerStore,
    /// What runs now, for the retention copies a hook started since the last engine step.
    ecs: Arc<crate::ecs_emulator::EcsEmulator>,
    listener_arn: String,
    pub observer: Arc<RecordingObserver>,
    /// Safety-invariant violations seen right after a crash.
    pub crash_violations: Mutex<Vec<String>>,
    pub crash_not_reached: Mutex<bool>,
    /// Deliver every event twice at once (at-least-once delivery); answer with the first.
    pub doubled: AtomicBool,
    /// After a crash, invoke the hook again (true, the default) or report the invocation as
    /// failed, which ECS answers with a rollback (false).
    pub retry_after_crash: AtomicBool,
    /// Where the two answers to one doubled event differed.
    pub disagreements: Mutex<Vec<String>>,
}

impl ChaosInvoker {
    pub async fn new(
        mode: Mode,
        proxy: Arc<FaultProxy>,
        stand_ins: &StandIns,
        observer: Arc<RecordingObserver>,
    ) -> ChaosInvoker {
        let mut functions = BTreeMap::new();
        let mut authorising_proxies = Vec::new();
        let clients = match mode {
            Mode::Processes { max_attempts } => {
                for function in [
                    HookFunction::PostTestTraffic,
                    HookFunction::ProductionShift,
                    HookFunction::PostShift,
                ] {
                    let name = function.name();
                    // The function's role in front of the fault proxy.
                    let authorising =
                        AuthorisingProxy::world(name, &proxy.endpoints(), &stand_ins.endpoints)
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                    let mut env = function_env(&authorising.endpoints());
                    env.push(("AWS_MAX_ATTEMPTS".to_owned(), max_attempts.to_string()));
                    env.push(("SKEWGUARD_TABLE".to_owned(), TABLE.to_owned()));
                    env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), "JSON".to_owned()));
                    let binary = workspace_binary(name, name).expect("hook binaries are built");
                    let local = LocalFunction::start(name, binary, env)
                        .await
                        .expect("function starts");
                    functions.insert(name, Arc::new(local));
                    authorising_proxies.push(authorising);
                }
                None
            }
            _ => Some(proxied_clients(&proxy, mode).await),
        };
        ChaosInvoker {
            mode,
            proxy,
            clients,
            defaults: EnvDefaults::default(),
            functions,
            authorising: authorising_proxies,
            target: Mutex::new(None),
            counter: AtomicUsize::new(0),
            records: Mutex::new(Vec::new()),
            release_on_hold: AtomicBool::new(true),
            direct_elb: stand_ins.hook_clients.elb.clone(),
            direct_ledger: stand_ins.hook_clients.ledger.clone(),
            ecs: stand_ins.ecs.clone(),
            listener_arn: stand_ins.alb.listener_arn.clone(),
            observer,
            crash_violations: Mutex::new(Vec::new()),
            crash_not_reached: Mutex::new(false),
            doubled: AtomicBool::new(false),
            retry_after_crash: AtomicBool::new(true),
            disagreements: Mutex::new(Vec::new()),
        }
    }

    pub fn function(&self, function: HookFunction) -> Option<&Arc<LocalFunction>> {
        self.functions.get(function.name())
    }

    /// The calls the function processes' roles refused.
    pub fn denials(&self) -> Vec<Denial> {
        self.authorising.iter().flat_map(|p| p.denials()).collect()
    }

    /// Forget the invocations so far (after a scenario's setup).
    pub fn restart_count(&self) {
        self.counter.store(0, Ordering::SeqCst);
        self.records.lock().expect("records").clear();
    }

    async fn invoke_plain(&self, function: HookFunction, event: Value) -> Invocation {
        match (&self.clients, self.mode) {
            (Some(clients), _) => {
                let config = HookConfig {
                    function,
                    defaults: self.defaults.clone(),
                };
                let answer = hook::handle(&config, clients, event).await;
                Invocation::Answered(serde_json::to_value(answer).unwrap_or(Value::Null))
            }
            _ => match self.functions[function.name()]
                .invoke(event, Duration::from_secs(60))
                .await
            {
                Ok(answer) => Invocation::Answered(answer),
                Err(e) => Invocation::Failed(e.to_string()),
            },
        }
    }

    /// `None`: the function was killed after its k-th call.
    async fn invoke_crashing(
        &self,
        function: HookFunction,
        event: Value,
        k: u32,
    ) -> Option<Invocation> {
        if self.clients.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            self.proxy.crash_after(
                k,
                counting(
                    &self.proxy,
                    Box::new(move || {
                        let _ = tx.send(());
                    }),
                ),
            );
            tokio::select! {
                biased;
                _ = rx => None,
                answer = self.invoke_plain(function, event) => Some(answer),
            }
        } else {
            let local = self.functions[function.name()].clone();
            self.proxy.crash_after(
                k,
                counting(
                    &self.proxy,
                    Box::new(move || {
                        if let Some(pid) = local.last_pid() {
                            kill_process(pid);
                        }
                    }),
                ),
            );
            let crashes = self.proxy.crashes();
            let answer = self.invoke_plain(function, event).await;
            (self.proxy.crashes() == crashes).then_some(answer)
        }
    }

    /// Invariants 1, 3 and 6 (and 5 against the last step) must hold at every instant, even
    /// right after a crash; 2 and 4 may wait for the retry or the reconciler.
    async fn check_safety(&self, label: &str) {
        let mut truths = self.observer.truths.lock().expect("truths").clone();
        // A crashed post-shift may have just started (or torn down) a retention copy.
        crate::engine::with_retention_copies(&self.ecs, &mut truths);
        let services: Vec<&str> = truths.iter().map(|t| t.service_arn.as_str()).collect();
        let found = match Observation::take(
            &self.direct_elb,
            &self.direct_ledger,
            &self.listener_arn,
            &services,
        )
        .await
        {
            Ok(now) => {
                let previous = self.observer.checker.last_observation().await;
                violations(&now, previous.as_ref(), &truths)
                    .into_iter()
                    .filter(|v| {
                        ["invariant 1", "invariant 3", "invariant 5", "invariant 6"]
                            .iter()
                            .any(|p| v.starts_with(p))
                    })
                    .collect()
            }
            Err(e) => vec![format!("could not observe: {e}")],
        };
        self.crash_violations.lock().expect("violations").extend(
            found
                .into_iter()
                .map(|v| format!("right after {label}: {v}")),
        );
    }

    async fn release(&self, service: &str) {
        for _ in 0..6 {
            let now = time::OffsetDateTime::now_utc();
            let Ok(entries) = self.direct_ledger.load(service).await else {
                continue;
            };
            let mut draft = Draft::new(service, entries);
            if !stages::release(&mut draft, now) {
                return;
            }
            let actor = Actor {
                stage: "release".into(),
                execution_id: "cli".into(),
                identity: "chaos".into(),
                now,
            };
            if self
                .direct_ledger
                .commit(&draft.changes(&actor))
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

impl Invoker for ChaosInvoker {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let index = self.counter.fetch_add(1, Ordering::SeqCst);
            let stage = event["lifecycleStage"].as_str().unwrap_or("?").to_owned();
            let before = self.proxy.total();
            let target = *self.target.lock().expect("target");
            let mut crashed = false;
            let answer = match target {
                Some((i, k)) if i == index => {
                    match self.invoke_crashing(function, event.clone(), k).await {
                        None => {
                            crashed = true;
                            self.proxy.disarm();
                            self.check_safety(&format!(
                                "{} at {stage} crashed after call {k}",
                                function.name()
                            ))
                            .await;
                            if self.retry_after_crash.load(Ordering::SeqCst) {
                                // ECS (or Lambda's retry) invokes it again with the same event.
                                self.invoke_plain(function, event.clone()).await
                            } else {
                                Invocation::Failed(format!("crashed after call {k}"))
                            }
                        }
                        Some(answer) => {
                            self.proxy.disarm();
                            *self.crash_not_reached.lock().expect("flag") = true;
                            answer
                        }
                    }
                }
                _ if self.doubled.load(Ordering::SeqCst) => {
                    let (a, b) = tokio::join!(
                        self.invoke_plain(function, event.clone()),
                        self.invoke_plain(function, event.clone())
                    );
                    let status = |i: &Invocation| match i {
                        Invocation::Answered(v) => v["hookStatus"].clone(),
                        Invocation::Failed(e) => json!(e),
                    };
                    if status(&a) != status(&b) {
                        self.disagreements
                            .lock()
                            .expect("disagreements")
                            .push(format!(
                                "{} at {stage}: {} vs {}",
                                function.name(),
                                status(&a),
                                status(&b)
                            ));
                    }
                    a
                }
                _ => self.invoke_plain(function, event.clone()).await,
            };
            let answer_text = match &answer {
                Invocation::Answered(a) => a["hookStatus"].as_str().unwrap_or("?").to_owned(),
                Invocation::Failed(e) => format!("failed: {e}"),
            };
            self.records.lock().expect("records").push(Record {
                function,
                stage,
                calls: self.proxy.total() - before,
                crashed,
                answer: answer_text.clone(),
            });
            if self.release_on_hold.load(Ordering::SeqCst)
                && function == HookFunction::PostShift
                && answer_text == "IN_PROGRESS"
                && let Some(service) = event["executionDetails"]["serviceArn"].as_str()
            {
                self.release(service).await;
            }
            answer
        })
    }
}

/// A world whose hooks go through a fault proxy.
pub struct FaultWorld {
    pub world: World,
    pub proxy: Arc<FaultProxy>,
    pub invoker: Arc<ChaosInvoker>,
    pub observer: Arc<RecordingObserver>,
}

impl FaultWorld {
    /// On a fresh moto.
    pub async fn start(mode: Mode) -> FaultWorld {
        let moto = MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        Self::start_on(moto, mode).await
    }

    /// On an existing moto (reset first): much faster when many runs need a world each.
    pub async fn start_on(moto: MotoServer, mode: Mode) -> FaultWorld {
        let stand_ins = stand_ins_on(moto).await;
        let proxy = Arc::new(
            FaultProxy::start(&stand_ins.endpoints)
                .await
                .expect("fault proxy starts"),
        );
        let observer = Arc::new(RecordingObserver {
            checker: stand_ins.checker.clone(),
            truths: Mutex::new(Vec::new()),
        });
        let invoker =
            Arc::new(ChaosInvoker::new(mode, proxy.clone(), &stand_ins, observer.clone()).await);
        let mut world = stand_ins.with_engine(
            invoker.clone(),
            Arc::new(PlaceholderTasks),
            observer.clone(),
        );
        world.engine.time_scale = 0.0;
        FaultWorld {
            world,
            proxy,
            invoker,
            observer,
        }
    }

    /// Gives the moto back for the next world.
    pub fn into_moto(self) -> MotoServer {
        let FaultWorld { world, .. } = self;
        let World { moto, .. } = world;
        moto
    }

    /// A service behind the world's ALB with skewguard's hooks.
    pub async fn service(&self, initial: &str, details: Value, strategy: Strategy) -> String {
        self.world
            .service_on(
                "web",
                self.world.alb.clone(),
                skewguard_core::listener::Request::get("/api/cart"),
                initial,
                HookRegistration::skewguard(details),
                strategy,
            )
            .await
            .0
    }

    /// Everything the checks found: at engine steps and right after crashes.
    pub fn violations(&self) -> Vec<String> {
        let mut found = self.world.checker.found();
        found.extend(
            self.invoker
                .crash_violations
                .lock()
                .expect("violations")
                .iter()
                .cloned(),
        );
        found
    }

    /// One reconciler run for the service, as the `SERVICE_DEPLOYMENT_*` event triggers it.
    pub async fn reconcile(&self, service: &str) -> Result<usize, ReconcileError> {
        let options = ReconcileOptions {
            defaults: EnvDefaults::default(),
            dry_run: false,
            execution_id: "reconciler".to_owned(),
            identity: "reconciler".to_owned(),
        };
        reconciler::reconcile_service(&self.world.hook_clients, service, &options)
            .await
            .map(|r| r.repairs.len())
    }

    pub async fn end_state(&self, service: &str) -> EndState {
        EndState::take(&self.world, service).await
    }
}

/// The state a deployment leaves, without ARNs, priorities or times: what must be the same
/// after a disturbed run converges as after an undisturbed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndState {
    /// Deployment ID → (status, target group: `tg1`/`tg2`, pins recorded).
    pub ledger: BTreeMap<String, (String, String, usize)>,
    /// (deployment ID, where it leads: `tg1`/`tg2`/`retired-answer`, what it matches), sorted;
    /// a duplicate pin shows twice.
    pub pins: Vec<(String, String, String)>,
    /// Deployment ID → its history lines (stage and change, digits masked).
    pub history: BTreeMap<String, Vec<String>>,
}

impl EndState {
    pub async fn take(world: &World, service: &str) -> EndState {
        let seen = Observation::take(
            world.elb(),
            world.ledger(),
            &world.alb.listener_arn,
            &[service],
        )
        .await
        .expect("observation");
        let role = |tg: &str| {
            if tg == world.alb.blue_tg {
                "tg1".to_owned()
            } else if tg == world.alb.green_tg {
                "tg2".to_owned()
            } else {
                "other".to_owned()
            }
        };
        let ledger = seen
            .ledgers
            .get(service)
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e.deployment_id.to_string(),
                    (
                        e.status.to_string(),
                        role(&e.target_group_arn),
                        e.rule_arns.len(),
                    ),
                )
            })
            .collect();
        let pins = seen
            .pins()
            .into_iter()
            .filter(|(_, t)| t.service_arn == service)
            .map(|(r, t)| {
                let to = match &r.action {
                    RuleAction::Forward(_) => r
                        .forward_targets()
                        .iter()
                        .map(|tg| role(tg))
                        .collect::<Vec<_>>()
                        .join("+"),
                    _ => "retired-answer".to_owned(),
                };
                let matches =
                    skewguard_core::listener::canonical_conditions(&r.conditions).join(" & ");
                (t.deployment_id.clone(), to, matches)
            })
            .collect::<Vec<_>>();
        let mut pins = pins;
        pins.sort();
        // Digits (revisions, times, counts) differ between runs: each run of them is one `#`.
        let mask = |s: &str| -> String {
            let mut out = String::new();
            for c in s.chars() {
                if !c.is_ascii_digit() {
                    out.push(c);
                } else if !out.ends_with('#') {
                    out.push('#');
                }
            }
            out
        };
        let history = seen
            .histories
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, id), lines)| {
                (
                    id.clone(),
                    lines
                        .iter()
                        .map(|h| format!("{}: {}", h.stage, mask(&h.change)))
                        .collect(),
                )
            })
            .collect();
        EndState {
            ledger,
            pins,
            history,
        }
    }

    /// What differs, in words (empty when equal).
    pub fn diff(&self, reference: &EndState) -> Vec<String> {
        let mut out = Vec::new();
        if self.ledger != reference.ledger {
            out.push(format!(
                "ledger {:?} != reference {:?}",
                self.ledger, reference.ledger
            ));
        }
        if self.pins != reference.pins {
            out.push(format!(
                "pins {:?} != reference {:?}",
                self.pins, reference.pins
            ));
        }
        if self.history != reference.history {
            out.push(format!(
                "history {:#?} != reference {:#?}",
                self.history, reference.history
            ));
        }
        out
    }
}

/// A deployment scenario to disturb.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub details: Value,
    pub initial: &'static str,
    pub strategy: Strategy,
    /// Deployments before the measured one (undisturbed).
    pub setup: Vec<&'static str>,
    /// The measured deployment.
    pub deploy: &'static str,
    pub intervention: Intervention,
    /// Run the reconciler once after the deployment (its end event triggers it).
    pub reconcile_after: bool,
}

/// What one run of a scenario gave.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: Outcome,
    pub end: EndState,
    pub records: Vec<Record>,
    pub violations: Vec<String>,
    pub crashed: bool,
    pub crash_reached: bool,
}

/// Runs a scenario in `world`, crashing invocation `crash.0` after its `crash.1`-th call.
pub async fn run_scenario(
    world: &FaultWorld,
    scenario: &Scenario,
    crash: Option<(usize, u32)>,
) -> RunResult {
    let service = world
        .service(
            scenario.initial,
            scenario.details.clone(),
            scenario.strategy,
        )
        .await;
    for id in &scenario.setup {
        let outcome = world
            .world
            .engine
            .deploy(&service, id, &[], Intervention::None)
            .await
            .expect("setup deployment runs");
        assert_eq!(outcome, Outcome::Succeeded, "setup deployment of {id}");
    }
    world.invoker.restart_count();
    *world.invoker.target.lock().expect("target") = crash;
    let outcome = world
        .world
        .engine
        .deploy(
            &service,
            scenario.deploy,
            &[],
            scenario.intervention.clone(),
        )
        .await
        .expect("the deployment runs");
    *world.invoker.target.lock().expect("target") = None;
    if scenario.reconcile_after
        && let Err(e) = world.reconcile(&service).await
    {
        world
            .world
            .checker
            .violations
            .lock()
            .expect("violations")
            .push(format!("the reconciler failed: {e}"));
    }
    world.world.check("end of the scenario").await;
    let records = world.invoker.records.lock().expect("records").clone();
    RunResult {
        outcome,
        end: world.end_state(&service).await,
        crashed: records.iter().any(|r| r.crashed),
        crash_reached: !*world.invoker.crash_not_reached.lock().expect("flag"),
        records,
        violations: world.violations(),
    }
}

/// Figures of a crash sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepFigures {
    pub crash_points: usize,
    pub converged: usize,
    pub violations: usize,
    pub failures: Vec<String>,
}

/// Sweeps every crash point of every invocation of `scenario`: a reference run, then one run
/// per (invocation, k) for k = 1..=calls of that invocation. `moto` is reused across runs.
pub async fn sweep(
    mut moto: MotoServer,
    scenario: &Scenario,
    mode: Mode,
    limit: Option<usize>,
) -> (SweepFigures, MotoServer) {
    let world = FaultWorld::start_on(moto, mode).await;
    let reference = run_scenario(&world, scenario, None).await;
    moto = world.into_moto();
    assert!(
        reference.violations.is_empty(),
        "{}: the undisturbed run has violations: {:#?}",
        scenario.name,
        reference.violations
    );
    let mut points: Vec<(usize, u32)> = reference
        .records
        .iter()
        .enumerate()
        .flat_map(|(i, r)| (1..=r.calls as u32).map(move |k| (i, k)))
        .collect();
    if let Some(limit) = limit
        && points.len() > limit
    {
        // Spread the subset over every invocation.
        let step = points.len() as f64 / limit as f64;
        points = (0..limit)
            .map(|n| points[(n as f64 * step) as usize])
            .collect();
    }
    let mut figures = SweepFigures::default();
    for (i, k) in points {
        let world = FaultWorld::start_on(moto, mode).await;
        let run = run_scenario(&world, scenario, Some((i, k))).await;
        moto = world.into_moto();
        figures.crash_points += 1;
        let label = format!(
            "{}: {} at {} crashed after call {k}",
            scenario.name,
            reference.records[i].function.name(),
            reference.records[i].stage
        );
        if !run.crashed || !run.crash_reached {
            figures
                .failures
                .push(format!("{label}: the crash point was not reached"));
            continue;
        }
        figures.violations += run.violations.len();
        let diff = run.end.diff(&reference.end);
        if run.violations.is_empty() && diff.is_empty() && run.outcome == reference.outcome {
            figures.converged += 1;
        } else {
            figures.failures.push(format!(
                "{label}: outcome {:?} (reference {:?}); violations {:#?}; {}",
                run.outcome,
                reference.outcome,
                run.violations,
                diff.join("; ")
            ));
        }
    }
    (figures, moto)
}

/// The cluster the harness's services live in.
pub fn service_arn() -> String {
    crate::ecs_emulator::service_arn(CLUSTER, "web")
}
