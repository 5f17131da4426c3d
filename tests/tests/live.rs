//! End-to-end scenarios in the live world: the compiled hook binaries behind a local Lambda
//! Runtime API, real checkout backends, the ALB data plane, and browser tabs calling through it.
//! Every scenario checks the safety invariants after every step and that no tab ever got an
//! answer from another version while its own was promised a pin.

use std::time::Duration;

use serde_json::json;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::Status;
use skewguard_world::engine::{Intervention, Outcome, ScaleDownAt, Strategy, SupersedeWhen};
use skewguard_world::lambda::{LocalFunction, check_request_ids, workspace_binary};
use skewguard_world::live::{LiveWorld, TabCounters, schema_env};

const A: &str = "a1b2c3d";
const B: &str = "b2c3d4e";
const C: &str = "c3d4e5f";

async fn live() -> LiveWorld {
    LiveWorld::start(|_, _| None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn counters_of(live: &LiveWorld, name: &str) -> TabCounters {
    live.traffic
        .counters()
        .into_iter()
        .find(|(tab, _)| tab.name == name)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no tab {name}"))
}

/// No skew, no errors, no invariant violation, and traffic actually flowed.
async fn assert_clean(live: &LiveWorld) {
    live.traffic.stop().await;
    let (requests, skewed, errors) = live.traffic.totals();
    let report: Vec<String> = live
        .traffic
        .counters()
        .iter()
        .map(|(tab, c)| format!("{}: {c:?}", tab.name))
        .collect();
    assert!(requests > 20, "traffic flowed: {report:#?}");
    assert_eq!(skewed, 0, "skewed answers: {report:#?}");
    assert_eq!(errors, 0, "errors: {report:#?}");
    live.world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_deployments_keep_every_tab_on_its_version_until_its_window_ends() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "3s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("B", &service, Some(B), Some("v2"));
    assert_eq!(
        live.deploy(&service, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("C", &service, Some(C), Some("v3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_clean(&live).await;

    let a = counters_of(&live, "A");
    assert!(a.own > 0 && a.served_by.get(A) == Some(&a.own), "{a:?}");
    assert!(
        a.fell_back > 0,
        "after A's window the A tab reaches production: {a:?}"
    );
    assert_eq!(
        a.invalid, a.fell_back,
        "v1 cannot read later schemas, so every fallback is visible"
    );
    let b = counters_of(&live, "B");
    assert!(
        b.own > 0 && b.fell_back > 0 && b.invalid == 0,
        "v2 reads v3: {b:?}"
    );
    let c = counters_of(&live, "C");
    assert_eq!(c.own, c.requests, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollbacks_at_every_point_leave_old_tabs_on_their_version() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);

    // A hook answering FAILED at post-test-traffic: an ID skewguard must refuse.
    let outcome = live
        .deploy(&service, "bad*id", "v2", Intervention::None)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("post-test-traffic answered FAILED")),
        "{outcome:?}"
    );

    // An alarm-style stop during the hold.
    let stop = live.world.engine.stop_handle(&service).unwrap();
    let stopper = tokio::spawn({
        let ledger = live.world.ledger().clone();
        let service = service.clone();
        async move {
            loop {
                // moto applies an update's attributes one by one, so a read racing a write can
                // see a half-written item (DynamoDB itself never shows one): just read again.
                let entries = ledger.load(&service).await.unwrap_or_default();
                if entries.iter().any(|e| e.status == Status::Draining) {
                    stop.request();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let outcome = live
        .deploy(&service, B, "v2", Intervention::None)
        .await
        .unwrap();
    stopper.abort();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("held")),
        "{outcome:?}"
    );

    // A stop during bake time, after the hold: A was retired at the end of its window, yet
    // ECS rolls production back to it.
    let outcome = live
        .deploy(&service, C, "v3", Intervention::StopDuringBake)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("bake")),
        "{outcome:?}"
    );
    let entries = live.world.ledger().load(&service).await.unwrap();
    let status = |id: &str| {
        entries
            .iter()
            .find(|e| e.deployment_id.as_str() == id)
            .map(|e| e.status)
    };
    assert_eq!(
        status(A),
        Some(Status::Live),
        "A serves production again and is pinned: {entries:?}"
    );
    assert_eq!(status(C), Some(Status::RolledBack));
    assert_eq!(status(B), Some(Status::RolledBack));

    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert!(a.own > 0, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_process_that_crashes_mid_invocation_rolls_back_cleanly() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    // post-test-traffic's revision lookup hangs; the process is killed while it waits.
    live.world
        .ecs
        .delay_next("DescribeServiceRevisions", Duration::from_secs(3));
    let function = live.invoker.function(HookFunction::PostTestTraffic);
    let killer = tokio::spawn({
        let ecs = live.world.ecs.clone();
        async move {
            while ecs.call_count("DescribeServiceRevisions") == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let deploy = live.deploy(&service, B, "v2", Intervention::None);
    tokio::pin!(deploy);
    let outcome = tokio::select! {
        outcome = &mut deploy => outcome,
        _ = killer => {
            let pid = function.last_pid().expect("the hook process runs");
            // SAFETY: signalling a child process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            deploy.await
        }
    }
    .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("exited")),
        "{outcome:?}"
    );
    assert_eq!(
        function.cold_starts(),
        1,
        "no invocation after the crash yet"
    );

    // ECS invokes the hooks again on the next deployment; a fresh process picks up cleanly.
    assert_eq!(
        live.deploy(&service, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_eq!(function.cold_starts(), 2);
    assert_clean(&live).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_redeploy_of_the_same_id_never_strands_its_tabs() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        live.deploy(&service, A, "v1", Intervention::None),
    )
    .await
    .expect("one version: no hold")
    .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert_eq!(a.own, a.requests, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn linear_and_canary_shifts_keep_tabs_pinned_at_every_step() {
    let live = live().await;
    let linear = live
        .service_with(
            "linear",
            A,
            "v1",
            json!({"skewWindow": "2s", "pollInterval": "1s"}),
            Strategy::Linear(34.0),
        )
        .await;
    live.open_tab("A", &linear, Some(A), Some("v1"));
    assert_eq!(
        live.deploy(&linear, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("B", &linear, Some(B), Some("v2"));
    let steps = live.world.checker.steps.lock().unwrap().clone();
    for weight in ["34%", "68%", "100%"] {
        assert!(
            steps
                .iter()
                .any(|s| s.contains(&format!("PRODUCTION_TRAFFIC_SHIFT {weight}"))),
            "{steps:?}"
        );
    }
    // The same listener, the next deployment as a canary.
    live.world
        .engine
        .set_strategy(&linear, Strategy::Canary(10.0))
        .await
        .unwrap();
    assert_eq!(
        live.deploy(&linear, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_clean(&live).await;
    let b = counters_of(&live, "B");
    assert!(b.own > 0, "{b:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_hook_is_caught_by_the_live_checks() {
    // The check must be able to fail: the same deployment without the post-shift hook retires
    // nothing before clean-up, so the old pin outlives its version.
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.world
        .engine
        .drop_hook(&service, HookFunction::PostShift)
        .await
        .unwrap();
    live.open_tab("A", &service, Some(A), Some("v1"));
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.traffic.stop().await;
    let found = live.world.checker.found();
    assert!(
        found.iter().any(|v| v.contains("invariant 3")),
        "a pin surviving its version's scale-down must be reported: {found:#?}"
    );
}

/// Every line a function logs during an invocation can be found by that invocation's request
/// ID: the three hooks through a whole deployment (the post-shift hook holding, then retiring)
/// and a rejected event each, the reconciler on a scheduled run and a rejected event.
#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_of_an_invocation_carries_its_request_id() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    let timeout = Duration::from_secs(60);
    let hooks = [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ];
    for hook in hooks {
        let answer = live
            .invoker
            .function(hook)
            .invoke(json!({"executionDetails": "not a hook event"}), timeout)
            .await
            .unwrap();
        assert_eq!(answer["hookStatus"], "FAILED", "{answer}");
    }

    let mut env = skewguard_world::aws::function_env(&live.world.endpoints);
    env.push((
        "SKEWGUARD_TABLE".into(),
        skewguard_world::world::TABLE.into(),
    ));
    let reconciler = LocalFunction::start(
        "reconciler",
        workspace_binary("reconciler", "reconciler").expect("the reconciler is built"),
        env,
    )
    .await
    .unwrap();
    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "resources": [], "detail": {}});
    let answer = reconciler.invoke(scheduled, timeout).await.unwrap();
    assert_eq!(answer["errors"], json!([]), "{answer}");
    let rejected = reconciler
        .invoke(json!({"source": "nowhere"}), timeout)
        .await;
    assert!(rejected.is_err(), "{rejected:?}");

    let functions = hooks
        .iter()
        .map(|hook| live.invoker.function(*hook))
        .chain([&reconciler]);
    for function in functions {
        // The function's output is read from its pipes asynchronously: give the last lines a
        // moment to arrive.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let checked = loop {
            match check_request_ids(&function.logs()) {
                Ok(checked) => break checked,
                Err(e) if std::time::Instant::now() >= deadline => {
                    panic!("{}: {e}\n{}", function.name(), function.logs().join("\n"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let invocations = function
            .logs()
            .iter()
            .filter(|l| l.starts_with("START "))
            .count();
        assert!(
            invocations >= 2 && checked >= invocations,
            "{}: {checked} lines over {invocations} invocations",
            function.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_started_during_a_hold_never_sends_an_old_tab_to_the_new_version() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"skewWindow": "3s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);
    // B's post-shift hook holds A pinned; C starts meanwhile and takes A's target group.
    let outcome = live
        .deploy(
            &service,
            B,
            "v2",
            Intervention::Supersede {
                when: SupersedeWhen::WhileHolding,
                by: C.to_owned(),
                environment: schema_env("v3"),
                scale_down: ScaleDownAt::ReconcileService,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "C deploys");
    live.open_tab("C", &service, Some(C), Some("v3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert!(a.own > 0, "A's tab was served by A while A ran: {a:?}");
    assert!(
        a.fell_back > 0,
        "once A's pin was gone, A's tab reached production: {a:?}"
    );
    let ledger = live.world.ledger().load(&service).await.unwrap();
    let a_entry = ledger
        .iter()
        .find(|e| e.deployment_id.as_str() == A)
        .unwrap();
    assert_eq!(a_entry.status, Status::Retired);
    assert_eq!(a_entry.reason.as_deref(), Some("superseded"));
}
