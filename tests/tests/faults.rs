//! Reliability under the failures real AWS produces: crashes at every step, throttling
//! storms and 5xx, persistent errors, slow answers and dropped connections, races, limits, and
//! hostile deployment IDs, all in the local world with the six guarantees checked throughout.
//!
//! The default run is the fast subset CI runs; `reliability/run` sets
//! `SKEWGUARD_RELIABILITY_FULL=1` for the whole sweeps and writes the figures to
//! `docs/reliability.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::event::LifecycleStage;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::Status;
use skewguard_core::listener::{Condition, Request};
use skewguard_core::reconciler::{self, ReconcileOptions};
use skewguard_core::settings::EnvDefaults;
use skewguard_world::chaos::{
    FaultWorld, Mode, RunResult, Scenario, full, report, run_scenario, sweep,
};
use skewguard_world::engine::{HookRegistration, Intervention, Outcome, Strategy};
use skewguard_world::faults::{Fault, FaultRule};
use skewguard_world::fixtures::AlbFixture;
use skewguard_world::invariants::Observation;
use skewguard_world::lambda::workspace_binary;
use skewguard_world::moto::MotoServer;
use skewguard_world::world::TABLE;

fn window() -> Value {
    json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"})
}

fn scenarios() -> Vec<Scenario> {
    let base = Scenario {
        name: "first deployment",
        details: window(),
        initial: "v1",
        strategy: Strategy::BlueGreen,
        setup: vec![],
        deploy: "v2",
        intervention: Intervention::None,
        reconcile_after: false,
    };
    vec![
        base.clone(),
        Scenario {
            name: "second deployment",
            setup: vec!["v2"],
            deploy: "v3",
            ..base.clone()
        },
        Scenario {
            name: "rollback at the production shift, then the reconciler",
            intervention: Intervention::StopAt(LifecycleStage::PostProductionTrafficShift),
            reconcile_after: true,
            ..base.clone()
        },
        Scenario {
            name: "query and cookie pins with the retired answer",
            details: json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s", "queryParam": "dpl",
                            "cookieName": "__dpl", "afterWindow": "retired"}),
            ..base.clone()
        },
        Scenario {
            name: "forced redeploy",
            deploy: "v1",
            ..base.clone()
        },
        Scenario {
            name: "canary",
            strategy: Strategy::Canary(10.0),
            ..base.clone()
        },
        Scenario {
            name: "retention service: the previous version cloned and retained",
            details: json!({"retention": "service", "skewWindow": "1h", "pollInterval": "1s"}),
            ..base.clone()
        },
        Scenario {
            name: "retention service: a second deployment retains two versions",
            details: json!({"retention": "service", "skewWindow": "1h", "pollInterval": "1s"}),
            setup: vec!["v2"],
            deploy: "v3",
            ..base
        },
    ]
}

/// Crash every hook after each of its AWS calls, for every invocation of every scenario (in
/// process: the handler is dropped at the k-th call); ECS invokes it again. CI sweeps the first
/// scenario whole and one point of each other; `reliability/run` sweeps them all.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_every_step_converges_in_process() {
    let plan = scenarios()
        .into_iter()
        .enumerate()
        .map(|(n, scenario)| (scenario, if full() || n == 0 { None } else { Some(1) }))
        .collect();
    crash_sweeps("crash-in-process", Mode::InProcess, plan).await;
}

/// The same sweep with the real hook binaries, SIGKILLed by pid at the k-th call.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_every_step_converges_with_real_processes() {
    let plan = if full() {
        scenarios().into_iter().map(|s| (s, None)).collect()
    } else {
        vec![(scenarios().swap_remove(0), Some(5))]
    };
    crash_sweeps("crash-processes", Mode::Processes { max_attempts: 3 }, plan).await;
}

/// Sweeps the crash points of each scenario (at most `limit` of them), reports the figures
/// under `suite` and fails on any point that did not converge.
async fn crash_sweeps(suite: &str, mode: Mode, plan: Vec<(Scenario, Option<usize>)>) {
    let started = Instant::now();
    let mut moto = MotoServer::start().await.expect("moto");
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (scenario, limit) in &plan {
        let (figures, back) = sweep(moto, scenario, mode, *limit).await;
        moto = back;
        rows.push(json!({
            "scenario": scenario.name,
            "crashPoints": figures.crash_points,
            "converged": figures.converged,
            "violations": figures.violations,
        }));
        failures.extend(figures.failures);
    }
    report(
        suite,
        json!({"rows": rows, "seconds": started.elapsed().as_secs()}),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// An undisturbed run of `scenario` in `mode` on a fresh moto: what a disturbed run must end
/// like. Returns moto for the next world.
async fn reference_run(scenario: &Scenario, mode: Mode) -> (RunResult, MotoServer) {
    let moto = MotoServer::start().await.expect("moto");
    let world = FaultWorld::start_on(moto, mode).await;
    let run = run_scenario(&world, scenario, None).await;
    (run, world.into_moto())
}

fn violations_of(found: &[String], kinds: &[&str]) -> Vec<String> {
    found
        .iter()
        .filter(|v| kinds.iter().any(|k| v.contains(k)))
        .cloned()
        .collect()
}

/// Throttling storms and transient 5xx on every operation are absorbed by the SDK's standard
/// retries (3 attempts, backoff), as configured in production: the deployment succeeds, every
/// guarantee holds, and it ends as an undisturbed one does. Also with the real binaries.
#[tokio::test(flavor = "multi_thread")]
async fn throttling_storms_and_transient_errors_are_absorbed_by_retries() {
    let started = Instant::now();
    let scenario = &scenarios()[0];
    let mode = Mode::InProcessRetrying {
        attempt_timeout: Duration::from_secs(2),
    };
    let (reference, mut moto) = reference_run(scenario, mode).await;
    let storms: Vec<(&str, Vec<FaultRule>, Mode)> = vec![
        (
            "throttling: 30% of first and second attempts",
            vec![
                FaultRule::new(None, Fault::throttling())
                    .attempts_below(3)
                    .per_mille(300),
            ],
            mode,
        ),
        (
            "5xx: 30% of first and second attempts (500 and 503)",
            vec![
                FaultRule::new(None, Fault::internal_error())
                    .attempts_below(3)
                    .per_mille(150),
                FaultRule::new(None, Fault::unavailable())
                    .attempts_below(3)
                    .per_mille(180),
            ],
            mode,
        ),
        (
            "throttling on every first attempt of the writes",
            [
                "CreateRule",
                "DeleteRule",
                "UpdateItem",
                "TransactWriteItems",
            ]
            .iter()
            .map(|op| FaultRule::new(Some(op), Fault::throttling()).attempts_below(2))
            .collect(),
            mode,
        ),
        (
            "real binaries (AWS_MAX_ATTEMPTS=3): 30% throttling of first and second attempts",
            vec![
                FaultRule::new(None, Fault::throttling())
                    .attempts_below(3)
                    .per_mille(300),
            ],
            Mode::Processes { max_attempts: 3 },
        ),
    ];
    let storms: Vec<_> = if full() {
        storms
    } else {
        storms.into_iter().step_by(1).collect()
    };
    let mut rows = Vec::new();
    for (n, (name, rules, mode)) in storms.into_iter().enumerate() {
        let world = FaultWorld::start_on(moto, mode).await;
        world.proxy.seed(7 + n as u64);
        for rule in rules {
            world.proxy.add(rule);
        }
        let t = Instant::now();
        let run = run_scenario(&world, scenario, None).await;
        let faults = world.proxy.faulted();
        moto = world.into_moto();
        assert_eq!(run.outcome, Outcome::Succeeded, "{name}: {:?}", run.records);
        assert!(run.violations.is_empty(), "{name}: {:#?}", run.violations);
        let diff = run.end.diff(&reference.end);
        assert!(diff.is_empty(), "{name}: {}", diff.join("\n"));
        assert!(faults > 0, "{name}: no fault was injected");
        rows.push(
            json!({"storm": name, "faultsInjected": faults, "seconds": t.elapsed().as_secs_f64()}),
        );
    }
    report(
        "storms",
        json!({"rows": rows, "seconds": started.elapsed().as_secs()}),
    );
}

/// Slow answers past the SDK's attempt timeout (the call was applied; the retry finds it done)
/// and dropped connections (before and after the call was applied) on the calls that change
/// things: the retried CreateRule meets its own rule (`PriorityInUse`) and adopts it, a retried
/// conditional write conflicts with itself and is decided again, a retried DeleteRule finds the
/// rule gone. Each run ends as an undisturbed one does.
#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_and_dropped_connections_are_retried_safely() {
    let scenario = &scenarios()[3];
    let mode = Mode::InProcessRetrying {
        attempt_timeout: Duration::from_millis(800),
    };
    let (reference, mut moto) = reference_run(scenario, mode).await;
    let slow = Fault::SlowAnswer(Duration::from_millis(1500));
    let cases: Vec<(&str, Fault)> = vec![
        ("CreateRule", slow.clone()),
        ("CreateRule", Fault::DropAfter),
        ("TransactWriteItems", slow.clone()),
        ("TransactWriteItems", Fault::DropAfter),
        ("UpdateItem", slow.clone()),
        ("UpdateItem", Fault::DropAfter),
        ("DeleteRule", slow.clone()),
        ("DeleteRule", Fault::DropAfter),
        ("Query", Fault::DropBefore),
        ("DescribeRules", slow.clone()),
        ("DescribeServiceRevisions", Fault::DropBefore),
        ("DescribeServiceDeployments", slow),
    ];
    let cases: Vec<_> = if full() {
        cases
    } else {
        cases.into_iter().take(6).collect()
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (op, fault) in cases {
        let world = FaultWorld::start_on(moto, mode).await;
        world
            .proxy
            .add(FaultRule::new(Some(op), fault.clone()).times(2));
        let run = run_scenario(&world, scenario, None).await;
        let faults = world.proxy.faulted();
        moto = world.into_moto();
        let diff = run.end.diff(&reference.end);
        let ok = run.outcome == Outcome::Succeeded && run.violations.is_empty() && diff.is_empty();
        if !ok {
            failures.push(format!(
                "{op} {fault:?}: {:?}; {:#?}; {}",
                run.outcome,
                run.violations,
                diff.join("\n")
            ));
        }
        rows.push(json!({"operation": op, "fault": format!("{fault:?}"), "faultsInjected": faults, "ok": ok}));
    }
    report("slow-and-dropped", json!({"rows": rows}));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

const SAFETY: [&str; 5] = [
    "invariant 1",
    "invariant 5",
    "invariant 6",
    "made-up IDs",
    "could not observe",
];

/// A persistent error on any one operation (access denied, throttling that outlasts the
/// retries, 5xx) gives the onError answer — FAILED and a rollback, or SUCCEEDED with the error
/// on green's ledger entry — and nothing half-done survives: once the fault clears, one
/// reconciler run (the deployment's end event triggers it) leaves every guarantee holding, and
/// the next deployment is clean.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_errors_give_the_on_error_answer_and_nothing_half_done() {
    let started = Instant::now();
    let operations = [
        "Query",
        "DescribeServiceRevisions",
        "DescribeTaskDefinition",
        "DescribeServiceDeployments",
        "DescribeRules",
        "CreateRule",
        "DeleteRule",
        "UpdateItem",
        "TransactWriteItems",
    ];
    let faults = [
        Fault::access_denied(),
        Fault::throttling(),
        Fault::unavailable(),
    ];
    let mut cases = Vec::new();
    for (i, op) in operations.iter().enumerate() {
        for (j, fault) in faults.iter().enumerate() {
            for on_error in ["rollback", "continue"] {
                // CI: each operation once, access denied, alternating onError. A persistent
                // throttling or 5xx costs the hook's 20 s retry budget at every invocation, so
                // the full run tries those on a read and a write of each service.
                let slow_fault_op = matches!(
                    (j, *op),
                    (1, "Query" | "CreateRule")
                        | (2, "DescribeServiceRevisions" | "TransactWriteItems")
                );
                let chosen = if full() {
                    j == 0 || slow_fault_op
                } else {
                    j == 0 && ((i % 2 == 0) == (on_error == "rollback"))
                };
                if chosen {
                    cases.push((*op, fault.clone(), on_error));
                }
            }
        }
    }
    let mut moto = MotoServer::start().await.expect("moto");
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (op, fault, on_error) in cases {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        let service = world
            .service(
                "v1",
                json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s", "onError": on_error}),
                Strategy::BlueGreen,
            )
            .await;
        world.proxy.add(FaultRule::new(Some(op), fault.clone()));
        let outcome = world
            .world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .expect("the deployment runs");
        let hit = world.proxy.faulted() > 0;
        let during = world.violations();
        let entries = world
            .world
            .ledger()
            .load_with_archive(&service)
            .await
            .unwrap_or_default();
        world.proxy.clear_faults();
        world.world.checker.violations.lock().unwrap().clear();
        let repaired = world.reconcile(&service).await;
        world
            .world
            .check("after the fault cleared and the reconciler ran")
            .await;
        let next = world
            .world
            .engine
            .deploy(&service, "v3", &[], Intervention::None)
            .await
            .expect("the next deployment runs");
        let after = world.violations();
        moto = world.into_moto();

        let label = format!("{op} {fault:?} onError {on_error}");
        let mut problems = Vec::new();
        let safety = violations_of(&during, &SAFETY);
        if !safety.is_empty() {
            problems.push(format!("safety broken during the fault: {safety:#?}"));
        }
        let expected = match (hit, on_error) {
            (false, _) | (true, "continue") => Outcome::Succeeded,
            _ => outcome.clone(),
        };
        if hit && on_error == "rollback" && !matches!(outcome, Outcome::RolledBack { .. }) {
            problems.push(format!("a persistent error did not roll back: {outcome:?}"));
        }
        if outcome != expected {
            problems.push(format!("outcome {outcome:?}"));
        }
        // With `continue` the error is recorded on green's entry when that entry exists at the
        // time (else it is only logged); a recorded reason names the failing call.
        let recorded = entries
            .iter()
            .find(|e| e.deployment_id.as_str() == "v2")
            .and_then(|e| e.last_error.clone());
        if let Some(reason) = &recorded
            && !reason.contains(op)
        {
            problems.push(format!("green's lastError does not name {op}: {reason:?}"));
        }
        if let Err(e) = repaired {
            problems.push(format!("the reconciler failed once the fault cleared: {e}"));
        }
        if next != Outcome::Succeeded {
            problems.push(format!("the next deployment: {next:?}"));
        }
        // With `continue` a version the hooks never recorded stays unpinned until the next
        // deployment pins it as blue (its requests reach production, which is that version);
        // everything else must hold from the reconciler run on.
        let after: Vec<String> = if on_error == "continue" {
            after
                .into_iter()
                .filter(|v| !v.contains("invariant 2: v2 "))
                .collect()
        } else {
            after
        };
        if !after.is_empty() {
            problems.push(format!("after the fault cleared: {after:#?}"));
        }
        let broken_during: Vec<&str> = ["invariant 2", "invariant 3", "invariant 4"]
            .into_iter()
            .filter(|k| during.iter().any(|v| v.contains(k)))
            .collect();
        rows.push(json!({
            "operation": op, "fault": format!("{fault:?}"), "onError": on_error, "hit": hit,
            "outcome": format!("{outcome:?}"), "brokenWhileFaulty": broken_during,
            "reasonRecorded": recorded.is_some(),
            "ok": problems.is_empty(),
        }));
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join("; ")));
        }
    }
    report(
        "persistent-errors",
        json!({"rows": rows, "seconds": started.elapsed().as_secs()}),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn quick() -> Value {
    json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"})
}

/// Ten services sharing one listener deploy at once, twice: every pin lands at a distinct
/// priority inside its own service's gap, none is lost, no ledger update is lost (each service
/// ends exactly as a lone deployment does). Answers are slowed at random to vary the
/// interleaving between runs.
#[tokio::test(flavor = "multi_thread")]
async fn ten_services_on_one_listener_deploy_at_once() {
    let started = Instant::now();
    let runs = if full() { 3 } else { 1 };
    // CI: one round of ten deployments at once; the full run also redeploys all ten at once.
    let rounds: &[&str] = if full() { &["v2", "v3"] } else { &["v2"] };
    let last = *rounds.last().unwrap();
    let mut moto = MotoServer::start().await.expect("moto");
    let reference = {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        let service = world.service("v1", quick(), Strategy::BlueGreen).await;
        for id in rounds {
            world
                .world
                .engine
                .deploy(&service, id, &[], Intervention::None)
                .await
                .unwrap();
        }
        let end = world.end_state(&service).await;
        moto = world.into_moto();
        end
    };
    let mut pins_checked = 0;
    for run in 0..runs {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        world.proxy.seed(run as u64 + 1);
        world
            .proxy
            .add(FaultRule::new(None, Fault::SlowAnswer(Duration::from_millis(25))).per_mille(300));
        let mut services = vec![(world.service("v1", quick(), Strategy::BlueGreen).await, 100)];
        for i in 1..10 {
            let name = format!("svc{i}");
            let priority = 100 * (i + 1);
            let alb = AlbFixture::with_path_rule_as_production(
                &world.world.clients.elbv2,
                &world.world.vpc,
                &name,
                Some(&world.world.alb.listener_arn),
                priority,
                &format!("/svc{i}/*"),
            )
            .await
            .expect("ALB rule")
            .with_test_rule(&world.world.clients.elbv2, priority - 50)
            .await
            .expect("test rule");
            let (service, _) = world
                .world
                .service_on(
                    &name,
                    alb,
                    Request::get(&format!("/svc{i}/cart")),
                    "v1",
                    HookRegistration::skewguard(quick()),
                    Strategy::BlueGreen,
                )
                .await;
            services.push((service, priority));
        }
        let world = Arc::new(world);
        for id in rounds {
            let mut all = tokio::task::JoinSet::new();
            for (service, _) in &services {
                let (world, service) = (world.clone(), service.clone());
                all.spawn(async move {
                    world
                        .world
                        .engine
                        .deploy(&service, id, &[], Intervention::None)
                        .await
                });
            }
            while let Some(done) = all.join_next().await {
                assert_eq!(done.unwrap().unwrap(), Outcome::Succeeded, "deploying {id}");
            }
        }
        world.world.check("after both rounds").await;
        assert!(world.violations().is_empty(), "{:#?}", world.violations());
        let names: Vec<&str> = services.iter().map(|(s, _)| s.as_str()).collect();
        let seen = Observation::take(
            world.world.elb(),
            world.world.ledger(),
            &world.world.alb.listener_arn,
            &names,
        )
        .await
        .unwrap();
        let priorities: Vec<u32> = seen
            .rules
            .iter()
            .filter_map(|r| r.priority.number())
            .collect();
        let distinct: std::collections::BTreeSet<u32> = priorities.iter().copied().collect();
        assert_eq!(distinct.len(), priorities.len(), "{priorities:?}");
        for (service, production) in &services {
            let end = world.end_state(service).await;
            let shape = |e: &skewguard_world::chaos::EndState| -> Vec<(String, String, usize)> {
                e.ledger
                    .iter()
                    .map(|(id, (status, _, pins))| (id.clone(), status.clone(), *pins))
                    .collect()
            };
            assert_eq!(shape(&end), shape(&reference), "{service}");
            // The history names the service's own target groups (digits masked: `svc#-tg#`).
            let history: std::collections::BTreeMap<String, Vec<String>> = end
                .history
                .iter()
                .map(|(id, lines)| {
                    (
                        id.clone(),
                        lines
                            .iter()
                            .map(|l| l.replace("svc#-tg", "web-tg"))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(
                history, reference.history,
                "{service}: a lost ledger update"
            );
            let pins = seen.pins_of(service, last);
            assert_eq!(pins.len(), 1, "{service}: {pins:?}");
            let p = pins[0].priority.number().unwrap() as i32;
            assert!(
                (production - 49..*production).contains(&p),
                "{service}: pin at {p}, outside its gap before {production}"
            );
            pins_checked += 1;
        }
        let world = Arc::try_unwrap(world).ok().expect("no other owner");
        moto = world.into_moto();
    }
    report(
        "race-ten-services",
        json!({"runs": runs, "services": 10, "deploymentsPerRun": 10 * rounds.len(), "pinsChecked": pins_checked,
               "seconds": started.elapsed().as_secs()}),
    );
}

/// The reconciler running in a tight loop during the post-shift hold, and `skewguard release`
/// (the real CLI) ending the hold, while the hook's DeleteRule is slowed to widen the window:
/// the hook never answers anything but IN_PROGRESS or SUCCEEDED, no run of the reconciler
/// fails, no history is lost, and every guarantee holds at every step.
#[tokio::test(flavor = "multi_thread")]
async fn reconciler_and_release_during_the_hold_never_fail_the_hook() {
    let started = Instant::now();
    let runs = if full() { 6 } else { 2 };
    let cli = workspace_binary("skewguard", "skewguard-cli").expect("the CLI is built");
    let mut moto = MotoServer::start().await.expect("moto");
    let mut reconciler_runs = 0;
    for run in 0..runs {
        let mut world = FaultWorld::start_on(moto, Mode::InProcess).await;
        world.world.engine.time_scale = 0.05;
        world.invoker.release_on_hold.store(false, Ordering::SeqCst);
        world.proxy.add(FaultRule::new(
            Some("DeleteRule"),
            Fault::SlowAnswer(Duration::from_millis(300)),
        ));
        let service = world.service("v1", quick(), Strategy::BlueGreen).await;
        let world = Arc::new(world);
        let stop = Arc::new(AtomicBool::new(false));
        let loop_task = {
            let (world, service, stop) = (world.clone(), service.clone(), stop.clone());
            tokio::spawn(async move {
                let options = ReconcileOptions {
                    defaults: EnvDefaults::default(),
                    dry_run: false,
                    execution_id: "reconciler".into(),
                    identity: "reconciler".into(),
                };
                let (mut runs, mut errors) = (0, Vec::new());
                // Through the proxy, which makes moto's DynamoDB atomic as DynamoDB is.
                let clients =
                    skewguard_world::chaos::proxied_clients(&world.proxy, Mode::InProcess).await;
                while !stop.load(Ordering::SeqCst) {
                    match reconciler::reconcile_service(&clients, &service, &options).await {
                        Ok(_) => runs += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (runs, errors)
            })
        };
        let release = {
            let (world, cli) = (world.clone(), cli.clone());
            let service = service.clone();
            tokio::spawn(async move {
                let v1 = DeploymentId::parse("v1").unwrap();
                loop {
                    let entries = world
                        .world
                        .ledger()
                        .load(&service)
                        .await
                        .unwrap_or_default();
                    if entries
                        .iter()
                        .any(|e| e.deployment_id == v1 && e.status == Status::Draining)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(150 * (run as u64 % 3))).await;
                let mut env = skewguard_world::aws::function_env(&world.proxy.endpoints());
                env.push(("SKEWGUARD_TABLE".into(), TABLE.into()));
                // moto answers who is calling (the release's history names the caller).
                env.push((
                    "AWS_ENDPOINT_URL_STS".into(),
                    world.world.endpoints.dynamodb.clone(),
                ));
                let out = tokio::process::Command::new(&cli)
                    .env_clear()
                    .envs(env)
                    .env("HOME", "/nonexistent")
                    .args(["release", "shop/web"])
                    .output()
                    .await
                    .expect("the CLI runs");
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(120),
            world
                .world
                .engine
                .deploy(&service, "v2", &[], Intervention::None),
        )
        .await
        .expect("the release ends the one-hour hold")
        .unwrap();
        let (code, stderr) = release.await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let (runs_done, errors) = loop_task.await.unwrap();
        reconciler_runs += runs_done;
        assert_eq!(code, Some(0), "skewguard release: {stderr}");
        assert_eq!(outcome, Outcome::Succeeded);
        assert!(errors.is_empty(), "the reconciler failed: {errors:#?}");
        let records = world.invoker.records.lock().unwrap().clone();
        assert!(
            records
                .iter()
                .all(|r| r.answer == "IN_PROGRESS" || r.answer == "SUCCEEDED"),
            "{records:#?}"
        );
        world.world.check("after the deployment").await;
        assert!(world.violations().is_empty(), "{:#?}", world.violations());
        let history = world
            .world
            .ledger()
            .history(&service, &DeploymentId::parse("v1").unwrap())
            .await
            .unwrap();
        let lines: Vec<&str> = history.iter().map(|h| h.change.as_str()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("ended early by skewguard release")),
            "{lines:#?}"
        );
        assert!(
            lines.last().unwrap().contains("draining -> retired"),
            "{lines:#?}"
        );
        let world = Arc::try_unwrap(world).ok().expect("no other owner");
        moto = world.into_moto();
    }
    report(
        "race-hold",
        json!({"runs": runs, "reconcilerRuns": reconciler_runs, "seconds": started.elapsed().as_secs()}),
    );
}

/// The same hook invoked twice concurrently with the same event (at-least-once delivery), at
/// every stage of a deployment, a rolled-back one and one with query and cookie pins: both
/// calls answer the same and the end state is that of single delivery (no duplicate pin, no
/// lost or doubled history).
#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_delivered_twice_at_once_changes_nothing_more() {
    let started = Instant::now();
    let runs = if full() { 5 } else { 1 };
    let details = json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s", "queryParam": "dpl", "cookieName": "__dpl"});
    async fn play(world: &FaultWorld, details: &Value) -> skewguard_world::chaos::EndState {
        let service = world
            .service("v1", details.clone(), Strategy::BlueGreen)
            .await;
        let engine = &world.world.engine;
        assert_eq!(
            engine
                .deploy(&service, "v2", &[], Intervention::None)
                .await
                .unwrap(),
            Outcome::Succeeded
        );
        let stop = Intervention::StopAt(LifecycleStage::PostProductionTrafficShift);
        assert!(matches!(
            engine.deploy(&service, "v3", &[], stop).await.unwrap(),
            Outcome::RolledBack { .. }
        ));
        assert_eq!(
            engine
                .deploy(&service, "v4", &[], Intervention::None)
                .await
                .unwrap(),
            Outcome::Succeeded
        );
        world.end_state(&service).await
    }
    let mut moto = MotoServer::start().await.expect("moto");
    let reference = {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        let end = play(&world, &details).await;
        moto = world.into_moto();
        end
    };
    let mut disagreements = Vec::new();
    for _ in 0..runs {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        world.invoker.doubled.store(true, Ordering::SeqCst);
        let end = play(&world, &details).await;
        world.world.check("after the deployments").await;
        assert!(world.violations().is_empty(), "{:#?}", world.violations());
        let diff = end.diff(&reference);
        assert!(diff.is_empty(), "{}", diff.join("\n"));
        disagreements.extend(world.invoker.disagreements.lock().unwrap().clone());
        moto = world.into_moto();
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    report(
        "race-duplicate-delivery",
        json!({"runs": runs, "deploymentsPerRun": 3, "seconds": started.elapsed().as_secs()}),
    );
}

fn logs_of(world: &FaultWorld) -> Vec<String> {
    [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ]
    .into_iter()
    .filter_map(|f| world.invoker.function(f))
    .flat_map(|f| f.logs())
    .collect()
}

/// A listener at its rule quota (CreateRule answers `TooManyRules`), a `priorityRange` with no
/// free slot, and a skew window the hook timeout cannot hold: with the real binaries, a clear
/// logged error naming what to change, the onError answer honoured, nothing half-done.
#[tokio::test(flavor = "multi_thread")]
async fn limits_give_a_clear_error_and_honour_on_error() {
    let started = Instant::now();
    let cases: Vec<(&str, Value, Option<FaultRule>, &str, &str)> = vec![
        (
            "listener at its rule quota",
            json!({}),
            Some(FaultRule::new(
                Some("CreateRule"),
                Fault::error(400, "TooManyRules"),
            )),
            "RuleQuota",
            "remove unused rules or raise the quota",
        ),
        (
            "priorityRange with no free slot",
            json!({"priorityRange": "5-9"}),
            None,
            "NoFreePriority",
            "or widen priorityRange",
        ),
        (
            "skew window longer than the hook timeout",
            json!({"hookTimeout": "30m"}),
            None,
            "InvalidSetting",
            "raise the post-shift hook's timeoutConfiguration.timeoutInMinutes",
        ),
    ];
    let mut moto = MotoServer::start().await.expect("moto");
    let mut rows = Vec::new();
    for (name, extra, fault, kind, advice) in cases {
        for on_error in ["rollback", "continue"] {
            let world = FaultWorld::start_on(moto, Mode::Processes { max_attempts: 3 }).await;
            let mut details = json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s", "onError": on_error});
            for (k, v) in extra.as_object().unwrap() {
                details[k] = v.clone();
            }
            let service = world.service("v1", details, Strategy::BlueGreen).await;
            if let Some(fault) = &fault {
                world.proxy.add(fault.clone());
            }
            let outcome = world
                .world
                .engine
                .deploy(&service, "v2", &[], Intervention::None)
                .await
                .unwrap();
            let logs = logs_of(&world);
            let reported = logs
                .iter()
                .any(|l| l.contains(&format!("\"error_kind\":\"{kind}\"")) && l.contains(advice));
            assert!(
                reported,
                "{name}: no log line with {kind} and {advice:?}:\n{}",
                logs.join("\n")
            );
            match on_error {
                "rollback" => assert!(
                    matches!(outcome, Outcome::RolledBack { .. }),
                    "{name}: {outcome:?}"
                ),
                _ => assert_eq!(outcome, Outcome::Succeeded, "{name}"),
            }
            // Nothing half-done: no rule exists that the ledger does not list, and the safety
            // guarantees held throughout (the pins themselves could not be made).
            world.world.check("after the deployment").await;
            let broken = violations_of(
                &world.violations(),
                &[
                    "invariant 1",
                    "invariant 3",
                    "invariant 4",
                    "invariant 5",
                    "invariant 6",
                    "made-up IDs",
                ],
            );
            assert!(broken.is_empty(), "{name} onError {on_error}: {broken:#?}");
            let seen = Observation::take(
                world.world.elb(),
                world.world.ledger(),
                &world.world.alb.listener_arn,
                &[&service],
            )
            .await
            .unwrap();
            assert!(seen.pins().is_empty(), "{name}: {:?}", seen.pins());
            rows.push(json!({"limit": name, "onError": on_error, "outcome": format!("{outcome:?}"), "errorKind": kind}));
            moto = world.into_moto();
        }
    }
    report(
        "limits",
        json!({"rows": rows, "seconds": started.elapsed().as_secs()}),
    );
}

/// Hostile deployment IDs in the task definition — empty, 129 characters, wildcards, unicode,
/// control characters, header injection, a case variant of the live ID — never make a rule that
/// matches more than its own ID; and at every step a client carrying a made-up, retired or
/// variant ID reaches production, its own pin, or nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_deployment_ids_never_widen_a_pin() {
    let world = FaultWorld::start(Mode::InProcess).await;
    let service = world.service("v1", quick(), Strategy::BlueGreen).await;
    let long = "a".repeat(129);
    let hostile: Vec<(&str, bool)> = vec![
        ("", false),
        (&long, false),
        ("v2*", false),
        ("v?", false),
        ("*", false),
        ("vé", false),
        ("v2\r\nX-Deployment-ID: v3", false),
        ("v2 v3", false),
        ("v2;__dpl=v3", false),
        ("V1", true),
        ("v2", true),
        ("V2", true),
    ];
    for (id, valid) in &hostile {
        let outcome = world
            .world
            .engine
            .deploy(&service, id, &[], Intervention::None)
            .await
            .unwrap();
        if *valid {
            assert_eq!(outcome, Outcome::Succeeded, "{id:?}");
        } else {
            assert!(
                matches!(outcome, Outcome::RolledBack { .. }),
                "{id:?}: {outcome:?}"
            );
        }
        let seen = Observation::take(
            world.world.elb(),
            world.world.ledger(),
            &world.world.alb.listener_arn,
            &[&service],
        )
        .await
        .unwrap();
        for (rule, tags) in seen.pins() {
            for c in &rule.conditions {
                if let Condition::HttpHeader { name, values } = c
                    && name.eq_ignore_ascii_case("X-Deployment-ID")
                {
                    assert_eq!(values, &vec![tags.deployment_id.clone()], "{rule:?}");
                    let parsed = DeploymentId::parse(&values[0]).expect("a valid ID");
                    assert_eq!(parsed.as_str(), values[0]);
                }
            }
        }
    }
    world.world.check("after the hostile deployments").await;
    assert!(world.violations().is_empty(), "{:#?}", world.violations());
    report(
        "hostile-ids-e2e",
        json!({"deployments": hostile.len(), "rejected": hostile.iter().filter(|(_, v)| !v).count()}),
    );
}

/// Regression: a throttling storm longer than the SDK's own retries (3 attempts, ~1-3 s) used to
/// make the hook answer FAILED, rolling a good deployment back. The stage now starts over with
/// backoff within a 20 s budget, so a storm of several seconds on every call is absorbed.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttling_storm_longer_than_the_sdk_retries_does_not_roll_back() {
    let scenario = &scenarios()[0];
    let mode = Mode::InProcessRetrying {
        attempt_timeout: Duration::from_secs(2),
    };
    let world = FaultWorld::start(mode).await;
    world
        .proxy
        .add(FaultRule::new(None, Fault::throttling()).for_duration(Duration::from_secs(6)));
    let t = Instant::now();
    let run = run_scenario(&world, scenario, None).await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{:#?}", run.records);
    assert!(run.violations.is_empty(), "{:#?}", run.violations);
    let first = &run.records[0];
    assert_eq!(first.answer, "SUCCEEDED", "{first:?}");
    assert!(
        world.proxy.faulted() >= 3,
        "the storm hit the first hook's retries"
    );
    report(
        "storm-long",
        json!({"stormSeconds": 6, "faultsInjected": world.proxy.faulted(), "seconds": t.elapsed().as_secs_f64()}),
    );
}

/// Regression: a hook that crashed (or failed) after creating a pin but before recording it,
/// and that ECS then rolled back, left that pin on the listener: the rollback hooks saw nothing
/// to change in the ledger and skipped the listener, so green's (or blue's) untracked pin
/// outlived its version's scale-down (guarantee 3) until the reconciler ran. The listener is now
/// checked before every scale-down. Every crash point before the hold, answered as a failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_ecs_takes_for_a_failure_leaves_no_pin_behind_the_rollback() {
    let started = Instant::now();
    let scenario = &scenarios()[0];
    let (reference, mut moto) = reference_run(scenario, Mode::InProcess).await;
    let mut points: Vec<(usize, u32)> = reference
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.function != HookFunction::PostShift)
        .flat_map(|(i, r)| (1..=r.calls as u32).map(move |k| (i, k)))
        .collect();
    if !full() {
        // The calls right around the pin writes of both hooks.
        points.retain(|(i, k)| {
            reference.records[*i].calls >= 3 && *k + 3 >= reference.records[*i].calls as u32
        });
    }
    let mut failures = Vec::new();
    let tried = points.len();
    for (i, k) in points {
        let world = FaultWorld::start_on(moto, Mode::InProcess).await;
        world
            .invoker
            .retry_after_crash
            .store(false, Ordering::SeqCst);
        let run = run_scenario(&world, scenario, Some((i, k))).await;
        moto = world.into_moto();
        let label = format!(
            "{} at {} crashed after call {k}",
            reference.records[i].function.name(),
            reference.records[i].stage
        );
        if !matches!(run.outcome, Outcome::RolledBack { .. }) {
            failures.push(format!("{label}: {:?}", run.outcome));
        }
        if !run.violations.is_empty() {
            failures.push(format!("{label}: {:#?}", run.violations));
        }
        let pinned: Vec<&str> = run.end.pins.iter().map(|(id, _, _)| id.as_str()).collect();
        if pinned != ["v1"] || run.end.ledger.get("v1").map(|e| e.0.as_str()) != Some("live") {
            failures.push(format!("{label}: ends with {:?}", run.end));
        }
    }
    report(
        "crash-then-rollback",
        json!({"crashPoints": tried, "failures": failures.len(), "seconds": started.elapsed().as_secs()}),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
