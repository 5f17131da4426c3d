//! The hooks' handlers through whole deployments, against moto (ELBv2, DynamoDB) and the ECS
//! emulator, with every safety invariant checked after every step.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::event::LifecycleStage;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::listener::Request;
use skewguard_core::settings::EnvDefaults;
use skewguard_core::stages::{self, Actor, Draft};
use skewguard_world::engine::{
    BoxFuture, HookRegistration, InProcess, Intervention, Invocation, Invoker, Outcome,
    PlaceholderTasks, Strategy,
};
use skewguard_world::fixtures::AlbFixture;
use skewguard_world::invariants::Observation;
use skewguard_world::world::World;

fn quick() -> Value {
    json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"})
}

async fn entries(world: &World, service: &str) -> Vec<LedgerEntry> {
    world
        .ledger()
        .load_with_archive(service)
        .await
        .expect("ledger reads")
}

fn status(entries: &[LedgerEntry], id: &str) -> Option<Status> {
    entries
        .iter()
        .find(|e| e.deployment_id.as_str() == id)
        .map(|e| e.status)
}

async fn pins(world: &World, service: &str, id: &str) -> usize {
    let names = [service];
    let seen = Observation::take(world.elb(), world.ledger(), &world.alb.listener_arn, &names)
        .await
        .expect("observation");
    seen.pins_of(service, id).len()
}

#[tokio::test(flavor = "multi_thread")]
async fn first_deployment_on_a_service_that_ran_before_skewguard() {
    let world = World::start().await;
    let (service, _) = world.service("web", "aaa111", quick()).await;
    assert!(
        entries(&world, &service).await.is_empty(),
        "nothing recorded before the first hook"
    );

    let outcome = world
        .engine
        .deploy(&service, "bbb222", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    world.assert_no_violations();

    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "aaa111"), Some(Status::Retired));
    assert_eq!(status(&ledger, "bbb222"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "bbb222").await, 1);
    assert_eq!(pins(&world, &service, "aaa111").await, 0);
    let history = world
        .ledger()
        .history(&service, &DeploymentId::parse("aaa111").unwrap())
        .await
        .unwrap();
    let lines: Vec<&str> = history.iter().map(|h| h.change.as_str()).collect();
    assert!(lines[0].starts_with("recorded as live"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("live -> draining")),
        "{lines:?}"
    );
    assert!(
        lines.last().unwrap().contains("draining -> retired"),
        "{lines:?}"
    );
    // Blue is the deployment's source revision, described once on this first deployment.
    assert_eq!(world.ecs.call_count("DescribeServiceDeployments"), 1);
    assert_eq!(
        world.ecs.call_count("DescribeServiceRevisions"),
        2,
        "green, then blue"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_deployments_in_a_row_alternate_target_groups() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    for id in ["v2", "v3", "v4"] {
        let outcome = world
            .engine
            .deploy(&service, id, &[], Intervention::None)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Succeeded, "deploying {id}");
    }
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    let tg = |id: &str| {
        ledger
            .iter()
            .find(|e| e.deployment_id.as_str() == id)
            .unwrap()
            .target_group_arn
            .clone()
    };
    assert_eq!(tg("v2"), world.alb.green_tg);
    assert_eq!(tg("v3"), world.alb.blue_tg);
    assert_eq!(tg("v4"), world.alb.green_tg);
    for retired in ["v1", "v2", "v3"] {
        assert_eq!(status(&ledger, retired), Some(Status::Retired), "{retired}");
        let entry = ledger
            .iter()
            .find(|e| e.deployment_id.as_str() == retired)
            .unwrap();
        assert!(entry.rule_arns.is_empty() && entry.expires_at.is_some());
    }
    assert_eq!(status(&ledger, "v4"), Some(Status::Live));
    // Blue is checked against ECS on every deployment, but described only on the first: after
    // that the ledger knows the source revision.
    assert_eq!(world.ecs.call_count("DescribeServiceDeployments"), 3);
    assert_eq!(
        world.ecs.call_count("DescribeServiceRevisions"),
        3 + 1,
        "green each time, blue once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_live_entry_is_never_taken_for_blue() {
    // The ledger says v1 is live on the first target group, but the service was since deployed
    // twice without skewguard's hooks: that target group now runs v3.
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    assert_eq!(
        world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    let ledger_before = entries(&world, &service).await;
    world
        .engine
        .drop_hook(&service, HookFunction::PostTestTraffic)
        .await
        .unwrap();
    world
        .engine
        .drop_hook(&service, HookFunction::ProductionShift)
        .await
        .unwrap();
    world
        .engine
        .drop_hook(&service, HookFunction::PostShift)
        .await
        .unwrap();
    for id in ["v3", "v4"] {
        world
            .engine
            .deploy(&service, id, &[], Intervention::None)
            .await
            .unwrap();
    }
    assert_eq!(
        entries(&world, &service).await,
        ledger_before,
        "no hook ran"
    );
    for registration in skewguard_world::engine::HookRegistration::skewguard(quick()) {
        world.engine.add_hook(&service, registration).await.unwrap();
    }
    // Without the hooks nothing retired v2, whose pin now leads to whatever runs on its target
    // group: that is reported (and is what the reconciler repairs between deployments).
    let before = world.checker.found();
    assert!(
        before
            .iter()
            .any(|v| v.contains("invariant 1") && v.contains("for v2")),
        "{before:#?}"
    );
    world.checker.violations.lock().unwrap().clear();
    assert_eq!(
        world
            .engine
            .deploy(&service, "v5", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    // The first hook of the next deployment (after SCALE_UP) puts it right.
    let after: Vec<String> = world
        .checker
        .found()
        .into_iter()
        .filter(|v| !v.contains(": SCALE_UP:"))
        .collect();
    assert!(after.is_empty(), "{after:#?}");
    let ledger = entries(&world, &service).await;
    assert_eq!(
        status(&ledger, "v4"),
        Some(Status::Retired),
        "v4 was blue: {ledger:?}"
    );
    assert_eq!(
        status(&ledger, "v2"),
        Some(Status::Retired),
        "v2 no longer ran anywhere"
    );
    assert_eq!(status(&ledger, "v5"), Some(Status::Live));
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_at_the_production_shift_unpins_green() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    let outcome = world
        .engine
        .deploy(
            &service,
            "v3",
            &[],
            Intervention::StopAt(LifecycleStage::PostProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v3"), Some(Status::RolledBack));
    assert_eq!(status(&ledger, "v2"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "v3").await, 0);
    assert_eq!(pins(&world, &service, "v2").await, 1);
    // Green had been pinned before the rollback removed it.
    let history = world
        .ledger()
        .history(&service, &DeploymentId::parse("v3").unwrap())
        .await
        .unwrap();
    assert!(
        history.iter().any(|h| h.change.contains("pins 0 -> 1")),
        "{history:?}"
    );
    assert!(
        history.last().unwrap().change.contains("-> rolled_back"),
        "{history:?}"
    );

    // The service deploys normally afterwards.
    assert_eq!(
        world
            .engine
            .deploy(&service, "v4", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_after_the_test_shift_finishes_the_testing_entry() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    let outcome = world
        .engine
        .deploy(
            &service,
            "v2",
            &[],
            Intervention::StopAt(LifecycleStage::PreProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }));
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v2"), Some(Status::RolledBack));
    assert_eq!(status(&ledger, "v1"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "v1").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_the_hold_rolls_back_and_blue_stays_pinned() {
    let world = World::start().await;
    let (service, stop) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    let watcher = {
        let ledger = world.ledger().clone();
        let service = service.clone();
        tokio::spawn(async move {
            loop {
                let entries = ledger.load(&service).await.unwrap_or_default();
                if status(&entries, "v1") == Some(Status::Draining) {
                    stop.request();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        world.engine.deploy(&service, "v2", &[], Intervention::None),
    )
    .await
    .expect("the stop ends the hold")
    .unwrap();
    watcher.abort();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v1"), Some(Status::Live));
    assert_eq!(status(&ledger, "v2"), Some(Status::RolledBack));
    assert_eq!(pins(&world, &service, "v1").await, 1);
    assert_eq!(pins(&world, &service, "v2").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_ends_the_hold_on_the_next_poll() {
    let world = World::start().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    let releaser = {
        let ledger = world.ledger().clone();
        let service = service.clone();
        tokio::spawn(async move {
            loop {
                let entries = ledger.load(&service).await.unwrap_or_default();
                if status(&entries, "v1") == Some(Status::Draining) {
                    let now = time::OffsetDateTime::now_utc();
                    let mut draft = Draft::new(&service, entries);
                    assert!(stages::release(&mut draft, now));
                    let actor = Actor {
                        stage: "release".into(),
                        execution_id: "test".into(),
                        identity: "test".into(),
                        now,
                    };
                    ledger.commit(&draft.changes(&actor)).await.unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        world.engine.deploy(&service, "v2", &[], Intervention::None),
    )
    .await
    .expect("a one-hour hold ends once released")
    .unwrap();
    releaser.abort();
    assert_eq!(outcome, Outcome::Succeeded);
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v1"), Some(Status::Retired));
}

/// Invokes every hook twice with the same event (at-least-once delivery) and records whether
/// the second call changed anything.
struct Twice {
    inner: InProcess,
    ledger: skewguard_core::aws::ledger_store::LedgerStore,
    service: String,
    changed_on_repeat: std::sync::Mutex<Vec<String>>,
}

impl Invoker for Twice {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let first = self.inner.invoke(function, event.clone()).await;
            let before = self.ledger.load_with_archive(&self.service).await.unwrap();
            let second = self.inner.invoke(function, event.clone()).await;
            let after = self.ledger.load_with_archive(&self.service).await.unwrap();
            if before != after {
                self.changed_on_repeat.lock().unwrap().push(format!(
                    "{} at {}",
                    function.name(),
                    event["lifecycleStage"]
                ));
            }
            let same_kind = |i: &Invocation| match i {
                Invocation::Answered(a) => a["hookStatus"].clone(),
                Invocation::Failed(_) => Value::Null,
            };
            assert_eq!(
                same_kind(&first),
                same_kind(&second),
                "a repeated call answers the same"
            );
            second
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_invocations_change_nothing_further() {
    let service =
        skewguard_world::ecs_emulator::service_arn(skewguard_world::world::CLUSTER, "web");
    let twice: Arc<std::sync::OnceLock<Arc<Twice>>> = Arc::new(std::sync::OnceLock::new());
    let handle = twice.clone();
    let world = World::start_with(
        move |clients| {
            let invoker = Arc::new(Twice {
                ledger: clients.ledger.clone(),
                inner: InProcess {
                    clients,
                    defaults: EnvDefaults::default(),
                },
                service: service.clone(),
                changed_on_repeat: std::sync::Mutex::new(Vec::new()),
            });
            handle.set(invoker.clone()).ok();
            invoker
        },
        Arc::new(PlaceholderTasks),
    )
    .await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1s", "pollInterval": "1s"}),
        )
        .await;
    assert_eq!(
        world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_eq!(
        world
            .engine
            .deploy(
                &service,
                "v3",
                &[],
                Intervention::StopAt(LifecycleStage::PostProductionTrafficShift)
            )
            .await
            .unwrap(),
        Outcome::RolledBack {
            reason: "deployment stopped with ROLLBACK at POST_PRODUCTION_TRAFFIC_SHIFT".into()
        }
    );
    world.assert_no_violations();
    let changed = twice
        .get()
        .unwrap()
        .changed_on_repeat
        .lock()
        .unwrap()
        .clone();
    assert!(
        changed.is_empty(),
        "repeats changed the ledger: {changed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_sharing_one_listener_deploy_the_same_ids_at_once() {
    let world = World::start().await;
    let (web, _) = world.service("web", "sha1", quick()).await;
    let admin_alb = AlbFixture::with_path_rule_as_production(
        &world.clients.elbv2,
        &world.vpc,
        "admin",
        Some(&world.alb.listener_arn),
        200,
        "/admin/*",
    )
    .await
    .unwrap();
    let (admin, _) = world
        .service_on(
            "admin",
            admin_alb,
            Request::get("/admin/users"),
            "sha1",
            HookRegistration::skewguard(quick()),
            Strategy::BlueGreen,
        )
        .await;
    let (a, b) = tokio::join!(
        world.engine.deploy(&web, "sha2", &[], Intervention::None),
        world.engine.deploy(&admin, "sha2", &[], Intervention::None),
    );
    assert_eq!(a.unwrap(), Outcome::Succeeded);
    assert_eq!(b.unwrap(), Outcome::Succeeded);
    world.assert_no_violations();
    for service in [&web, &admin] {
        let ledger = entries(&world, service).await;
        assert_eq!(status(&ledger, "sha2"), Some(Status::Live));
        assert_eq!(status(&ledger, "sha1"), Some(Status::Retired));
    }
    let seen = Observation::take(
        world.elb(),
        world.ledger(),
        &world.alb.listener_arn,
        &[&web, &admin],
    )
    .await
    .unwrap();
    let priority = |service: &str| seen.pins_of(service, "sha2")[0].priority.number().unwrap();
    assert!(
        (11..100).contains(&priority(&web)),
        "web pin between its test rule and production rule"
    );
    assert!(
        (101..200).contains(&priority(&admin)),
        "admin pin just ahead of its production rule"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_redeploy_moves_the_one_pin_and_does_not_hold() {
    let world = World::start().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        world.engine.deploy(&service, "v1", &[], Intervention::None),
    )
    .await
    .expect("no hold: one version")
    .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status, Status::Live);
    assert_eq!(ledger[0].target_group_arn, world.alb.green_tg);
    assert_eq!(pins(&world, &service, "v1").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn linear_and_canary_shifts_pin_green_from_the_first_step() {
    let world = World::start().await;
    let (linear, _) = world
        .service_on(
            "web",
            world.alb.clone(),
            Request::get("/api/cart"),
            "v1",
            HookRegistration::skewguard(quick()),
            Strategy::Linear(25.0),
        )
        .await;
    assert_eq!(
        world
            .engine
            .deploy(&linear, "v2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    let steps = world.checker.steps.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("PRODUCTION_TRAFFIC_SHIFT 25%")),
        "{steps:?}"
    );
    world.assert_no_violations();

    let canary_alb = AlbFixture::with_path_rule_as_production(
        &world.clients.elbv2,
        &world.vpc,
        "shop",
        Some(&world.alb.listener_arn),
        300,
        "/shop/*",
    )
    .await
    .unwrap();
    let (canary, _) = world
        .service_on(
            "shop",
            canary_alb,
            Request::get("/shop/x"),
            "c1",
            HookRegistration::skewguard(quick()),
            // ECS sends LINEAR/CANARY weights as Doubles in steps of 0.1.
            Strategy::Canary(2.5),
        )
        .await;
    assert_eq!(
        world
            .engine
            .deploy(&canary, "c2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    world.assert_no_violations();
    assert_eq!(
        status(&entries(&world, &canary).await, "c2"),
        Some(Status::Live)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_deployment_id_fails_the_hook_and_rolls_back_cleanly() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    // The engine writes the ID into the task definition as given: a wildcard-bearing ID.
    let outcome = world
        .engine
        .deploy(&service, "v3*", &[], Intervention::None)
        .await
        .unwrap();
    match outcome {
        Outcome::RolledBack { reason } => assert!(
            reason.contains("post-test-traffic answered FAILED"),
            "{reason}"
        ),
        other => panic!("expected a rollback, got {other:?}"),
    }
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(
        ledger.len(),
        2,
        "nothing recorded for the invalid ID: {ledger:?}"
    );
    assert_eq!(status(&ledger, "v2"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "v2").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_settings_follow_on_error() {
    let world = World::start().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "soon"}),
        )
        .await;
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::RolledBack { .. }),
        "rollback is the default: {outcome:?}"
    );
    world.assert_no_violations();
    assert!(entries(&world, &service).await.is_empty());

    let (other, _) = world
        .service_on(
            "admin",
            AlbFixture::with_path_rule_as_production(
                &world.clients.elbv2,
                &world.vpc,
                "admin",
                Some(&world.alb.listener_arn),
                200,
                "/admin/*",
            )
            .await
            .unwrap(),
            Request::get("/admin/x"),
            "a1",
            HookRegistration::skewguard(
                json!({"retention": "hold", "skewWindow": "soon", "onError": "continue"}),
            ),
            Strategy::BlueGreen,
        )
        .await;
    let outcome = world
        .engine
        .deploy(&other, "a2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Succeeded,
        "onError: continue never blocks the deployment"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_window_a_retired_pin_gets_the_retired_answer() {
    let world = World::start().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1s", "pollInterval": "1s", "afterWindow": "retired"}),
        )
        .await;
    assert_eq!(
        world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_eq!(
        world
            .engine
            .deploy(&service, "v3", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    world.assert_no_violations();
    let seen = Observation::take(
        world.elb(),
        world.ledger(),
        &world.alb.listener_arn,
        &[&service],
    )
    .await
    .unwrap();
    let answer = |id: &str| {
        skewguard_core::listener::route(
            &seen.rules,
            &Request::get("/api/cart").with_header("X-Deployment-ID", id),
        )
        .unwrap()
        .clone()
    };
    for retired in ["v1", "v2", "made-up"] {
        match answer(retired).action {
            skewguard_core::listener::RuleAction::FixedResponse {
                status_code, body, ..
            } => {
                assert_eq!(status_code, 409);
                assert_eq!(
                    serde_json::from_str::<Value>(&body.unwrap()).unwrap(),
                    json!({"error": "deployment_retired", "currentDeploymentId": "v3"})
                );
            }
            other => panic!("{retired} should get the retired answer, got {other:?}"),
        }
    }
    assert_eq!(
        answer("v3").live_targets(),
        vec![world.alb.blue_tg.as_str()],
        "v3 still reaches v3"
    );
    let unpinned =
        skewguard_core::listener::route(&seen.rules, &Request::get("/api/cart")).unwrap();
    assert_eq!(
        unpinned.arn, world.alb.production_rule_arn,
        "requests without an ID reach production"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_events_and_wrong_stages_get_a_defined_answer() {
    let world = World::start().await;
    let invoker = InProcess {
        clients: world.hook_clients.clone(),
        defaults: EnvDefaults::default(),
    };
    let answer = |i: Invocation| match i {
        Invocation::Answered(a) => a,
        Invocation::Failed(f) => panic!("the handler must answer, not fail: {f}"),
    };
    for event in [
        json!(null),
        json!("POST_TEST_TRAFFIC_SHIFT"),
        json!({"lifecycleStage": "POST_TEST_TRAFFIC_SHIFT"}),
        json!({"executionId": "x", "lifecycleStage": "NOPE", "resourceArn": "arn:aws:ecs:us-east-1:1:service-deployment/c/s/1", "executionDetails": {}}),
    ] {
        let a = answer(
            invoker
                .invoke(HookFunction::PostTestTraffic, event.clone())
                .await,
        );
        assert_eq!(a, json!({"hookStatus": "FAILED"}), "{event}");
    }
    let continue_on_error = json!({"hookDetails": {"onError": "continue"}, "lifecycleStage": 7});
    let a = answer(
        invoker
            .invoke(HookFunction::PostShift, continue_on_error)
            .await,
    );
    assert_eq!(a, json!({"hookStatus": "SUCCEEDED"}));

    let wrong_stage = json!({
        "executionId": "x",
        "lifecycleStage": "PRE_SCALE_UP",
        "resourceArn": "arn:aws:ecs:us-east-1:123456789012:service-deployment/shop/web/1",
        "executionDetails": {
            "serviceArn": "arn:aws:ecs:us-east-1:123456789012:service/shop/web",
            "targetServiceRevisionArn": "arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/1",
            "testTrafficWeights": {}, "productionTrafficWeights": {}
        }
    });
    let a = answer(invoker.invoke(HookFunction::PostShift, wrong_stage).await);
    assert_eq!(a, json!({"hookStatus": "FAILED"}));
    assert!(
        world.ecs.calls().is_empty(),
        "a rejected event makes no AWS call"
    );
}

/// The latest deployment of a service, as ECS tells it.
async fn latest_deployment(
    world: &World,
    service: &str,
) -> skewguard_core::aws::ecs::DeploymentFacts {
    let ecs = &world.hook_clients.ecs;
    let arns = ecs.list_service_deployments(service, 1).await.unwrap();
    ecs.describe_service_deployments(&arns)
        .await
        .unwrap()
        .remove(0)
}

/// A traffic-shift or post-shift event for a deployment ECS ran, with the weights given.
fn event_for(
    deployment: &skewguard_core::aws::ecs::DeploymentFacts,
    service: &str,
    stage: LifecycleStage,
    test: Value,
    production: Value,
    hook_details: Value,
) -> Value {
    json!({
        "executionId": format!("late-{}", stage.as_str().to_ascii_lowercase()),
        "lifecycleStage": stage.as_str(),
        "resourceArn": deployment.arn,
        "executionDetails": {
            "serviceArn": service,
            "targetServiceRevisionArn": deployment.target_revision.clone().unwrap(),
            "testTrafficWeights": test,
            "productionTrafficWeights": production,
        },
        "hookDetails": hook_details,
    })
}

fn answered(invocation: Invocation) -> Value {
    match invocation {
        Invocation::Answered(a) => a,
        Invocation::Failed(f) => panic!("the handler must answer, not fail: {f}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_forward_call_after_a_rollback_changes_nothing_and_removes_its_pin() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    let outcome = world
        .engine
        .deploy(
            &service,
            "v2",
            &[],
            Intervention::StopAt(LifecycleStage::PostProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let rolled_back = latest_deployment(&world, &service).await;
    let green = rolled_back.target_revision.clone().unwrap();
    let blue = rolled_back.source_revisions[0].clone();

    // A forward invocation that was still running when the rollback began created a pin for v2
    // (tagged, as every pin is) and then lost its ledger write.
    let ledger = entries(&world, &service).await;
    let v2 = ledger
        .iter()
        .find(|e| e.deployment_id.as_str() == "v2")
        .unwrap();
    // Rolled back, v2 left the entries in play for its archive: only the archive tells the late
    // calls below that their deployment ended.
    assert!(
        !world
            .ledger()
            .load(&service)
            .await
            .unwrap()
            .iter()
            .any(|e| e.deployment_id.as_str() == "v2")
    );
    assert!(
        world
            .ledger()
            .archived(&service, &v2.deployment_id)
            .await
            .unwrap()
            .is_some()
    );
    let rules = world
        .elb()
        .describe_listener_rules(&v2.listener_arn)
        .await
        .unwrap();
    let production_rule = rules
        .iter()
        .find(|r| r.arn == v2.production_rule_arn)
        .unwrap()
        .clone();
    let settings = skewguard_core::settings::Settings::resolve(
        quick().as_object().unwrap(),
        &EnvDefaults::default(),
    )
    .unwrap();
    let spec = skewguard_core::pins::pin_specs(
        &v2.deployment_id,
        &v2.target_group_arn,
        &production_rule,
        &settings,
    )
    .unwrap()
    .remove(0);
    let taken = skewguard_core::pins::taken_priorities(&rules);
    let priority = (1..production_rule.priority.number().unwrap())
        .rev()
        .find(|p| !taken.contains(p))
        .unwrap();
    let stray = world
        .elb()
        .create_rule(&skewguard_core::aws::elb::NewRule {
            listener_arn: v2.listener_arn.clone(),
            priority,
            conditions: spec.conditions.clone(),
            action: spec.action.clone(),
            tags: skewguard_core::pins::PinTags {
                service_arn: service.clone(),
                deployment_id: "v2".to_owned(),
            },
        })
        .await
        .unwrap();
    assert_eq!(
        pins(&world, &service, "v2").await,
        1,
        "the stray pin exists"
    );

    let invoker = InProcess {
        clients: world.hook_clients.clone(),
        defaults: EnvDefaults::default(),
    };
    let forward = json!({ &green: 100, &blue: 0 });
    for (function, stage, test, production) in [
        (
            HookFunction::ProductionShift,
            LifecycleStage::ProductionTrafficShift,
            json!({}),
            forward.clone(),
        ),
        (
            HookFunction::PostShift,
            LifecycleStage::PostProductionTrafficShift,
            json!({}),
            json!({}),
        ),
        (
            HookFunction::PostTestTraffic,
            LifecycleStage::PostTestTrafficShift,
            json!({}),
            json!({}),
        ),
    ] {
        let event = event_for(&rolled_back, &service, stage, test, production, quick());
        let answer = answered(invoker.invoke(function, event).await);
        assert_eq!(answer["hookStatus"], "SUCCEEDED", "{stage}: {answer}");
        let ledger = entries(&world, &service).await;
        assert_eq!(status(&ledger, "v2"), Some(Status::RolledBack), "{stage}");
        assert_eq!(status(&ledger, "v1"), Some(Status::Live), "{stage}");
        assert_eq!(pins(&world, &service, "v2").await, 0, "{stage}");
        assert_eq!(pins(&world, &service, "v1").await, 1, "{stage}");
    }
    let rules = world
        .elb()
        .describe_listener_rules(&v2.listener_arn)
        .await
        .unwrap();
    assert!(
        !rules.iter().any(|r| r.arn == stray),
        "the stray pin is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_shift_events_without_green_in_the_weights_are_decided_from_ecs() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    let done = latest_deployment(&world, &service).await;
    let invoker = InProcess {
        clients: world.hook_clients.clone(),
        defaults: EnvDefaults::default(),
    };
    // A service without a test rule: the test map is empty while going forward.
    let event = event_for(
        &done,
        &service,
        LifecycleStage::TestTrafficShift,
        json!({}),
        json!({}),
        quick(),
    );
    let answer = answered(invoker.invoke(HookFunction::ProductionShift, event).await);
    assert_eq!(answer["hookStatus"], "SUCCEEDED", "{answer}");
    assert_eq!(
        status(&entries(&world, &service).await, "v2"),
        Some(Status::Live)
    );

    // A rollback before any test traffic: an empty test map, ECS's status says ROLLBACK_*.
    let outcome = world
        .engine
        .deploy(
            &service,
            "v3",
            &[],
            Intervention::StopAt(LifecycleStage::PreProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let rolled_back = latest_deployment(&world, &service).await;
    assert!(
        rolled_back.status.starts_with("ROLLBACK"),
        "{rolled_back:?}"
    );
    let event = event_for(
        &rolled_back,
        &service,
        LifecycleStage::TestTrafficShift,
        json!({}),
        json!({}),
        quick(),
    );
    let answer = answered(invoker.invoke(HookFunction::ProductionShift, event).await);
    assert_eq!(answer["hookStatus"], "SUCCEEDED", "{answer}");
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v3"), Some(Status::RolledBack));
    assert_eq!(status(&ledger, "v2"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "v2").await, 1);
    world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_during_a_rollback_asks_ecs_to_call_again_instead_of_failing() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    let done = latest_deployment(&world, &service).await;
    let green = done.target_revision.clone().unwrap();
    let invoker = InProcess {
        clients: world.hook_clients.clone(),
        defaults: EnvDefaults::default(),
    };
    // Blue is a revision ECS cannot describe: the rollback cannot be finished now.
    let unknown_blue = format!("{}9", green);
    let event = event_for(
        &done,
        &service,
        LifecycleStage::ProductionTrafficShift,
        json!({}),
        json!({ &green: 0, &unknown_blue: 100 }),
        quick(),
    );
    let mut event = event;
    for retry in 1..=skewguard_core::hook::MAX_ROLLBACK_RETRIES {
        let answer = answered(
            invoker
                .invoke(HookFunction::ProductionShift, event.clone())
                .await,
        );
        assert_eq!(answer["hookStatus"], "IN_PROGRESS", "{answer}");
        assert_eq!(
            answer["callBackDelay"], 1,
            "pollInterval, being shorter than 10 s"
        );
        assert_eq!(
            answer["hookDetails"]["skewWindow"], "2s",
            "the settings are echoed"
        );
        assert_eq!(
            answer["hookDetails"]["skewguardRollbackRetries"]["PRODUCTION_TRAFFIC_SHIFT"],
            retry
        );
        // ECS passes the returned hookDetails back on the next call.
        event["hookDetails"] = answer["hookDetails"].clone();
    }
    let answer = answered(invoker.invoke(HookFunction::ProductionShift, event).await);
    assert_eq!(
        answer,
        json!({"hookStatus": "SUCCEEDED"}),
        "bounded: then the reconciler takes over, never FAILED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_error_continue_records_an_error_that_came_before_green_had_an_entry() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    // A deployment whose task definition carries an invalid deployment ID: its revision exists.
    let outcome = world
        .engine
        .deploy(&service, "v2*", &[], Intervention::None)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let failed = latest_deployment(&world, &service).await;
    assert_eq!(
        entries(&world, &service).await.len(),
        1,
        "only v1 is recorded"
    );
    let invoker = InProcess {
        clients: world.hook_clients.clone(),
        defaults: EnvDefaults::default(),
    };
    let event = event_for(
        &failed,
        &service,
        LifecycleStage::PostTestTrafficShift,
        json!({}),
        json!({}),
        json!({"onError": "continue"}),
    );
    let answer = answered(invoker.invoke(HookFunction::PostTestTraffic, event).await);
    assert_eq!(answer["hookStatus"], "SUCCEEDED", "{answer}");
    let ledger = entries(&world, &service).await;
    let recorded = ledger
        .iter()
        .find(|e| e.service_revision_arn == failed.target_revision.clone().unwrap())
        .unwrap_or_else(|| panic!("the swallowed error is in the ledger: {ledger:?}"));
    assert!(recorded.deployment_id.as_str().starts_with("unidentified-"));
    let error = recorded.last_error.as_deref().unwrap();
    assert!(
        error.contains("onError: continue") && error.contains("Discovery"),
        "{error}"
    );
    assert!(
        !recorded.wants_pin(),
        "nothing is pinned for an unreadable ID"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_superseding_another_unpins_what_runs_in_the_target_group_it_takes() {
    use skewguard_world::engine::{ScaleDownAt, SupersedeWhen};
    // (when the third deployment starts, when ECS scales down the revision in its target
    // group, the version that loses its pins for it, that version's status afterwards)
    let cases = [
        (
            SupersedeWhen::WhileHolding,
            ScaleDownAt::ReconcileService,
            "v1",
            Status::Retired,
        ),
        (
            SupersedeWhen::WhileHolding,
            ScaleDownAt::ScaleUp,
            "v1",
            Status::Retired,
        ),
        (
            SupersedeWhen::DuringBake,
            ScaleDownAt::ReconcileService,
            "v1",
            Status::Retired,
        ),
        (
            SupersedeWhen::Before(LifecycleStage::PreProductionTrafficShift),
            ScaleDownAt::ScaleUp,
            "v2",
            Status::RolledBack,
        ),
    ];
    for (when, scale_down, displaced, displaced_status) in cases {
        let label = format!("{when:?}, scaled down at {scale_down:?}");
        let world = World::start().await;
        let (service, _) = world.service("web", "v1", quick()).await;
        let outcome = world
            .engine
            .deploy(
                &service,
                "v2",
                &[],
                Intervention::Supersede {
                    when,
                    by: "v3".to_owned(),
                    environment: Vec::new(),
                    scale_down,
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Succeeded, "{label}: v3 deploys");
        // The invariants held after every step, SCALE_UP into the taken target group included:
        // no pin ever led a client to another version than its own.
        world.assert_no_violations();
        let steps = world.checker.steps.lock().unwrap().clone();
        assert!(
            steps.iter().any(|s| s.contains("superseded")),
            "{label}: {steps:?}"
        );
        let ledger = entries(&world, &service).await;
        assert_eq!(status(&ledger, "v3"), Some(Status::Live), "{label}");
        assert_eq!(
            status(&ledger, displaced),
            Some(displaced_status),
            "{label}: {ledger:?}"
        );
        for gone in ["v1", "v2"] {
            assert_eq!(pins(&world, &service, gone).await, 0, "{label}: {gone}");
        }
        assert_eq!(pins(&world, &service, "v3").await, 1, "{label}");
        // The superseded deployment was stopped, not rolled back.
        let ecs = &world.hook_clients.ecs;
        let arns = ecs.list_service_deployments(&service, 5).await.unwrap();
        let deployments = ecs.describe_service_deployments(&arns).await.unwrap();
        assert_eq!(
            deployments
                .iter()
                .map(|d| d.status.as_str())
                .collect::<Vec<_>>(),
            ["SUCCESSFUL", "STOPPED"],
            "{label}"
        );
        assert_eq!(
            deployments[0].source_revisions.len(),
            2,
            "{label}: both older revisions still had tasks"
        );
    }
}

/// A service whose first deployment runs skewguard's hooks, as ECS does at CreateService.
fn first_deployment_setup(
    world: &World,
    hooks: Vec<HookRegistration>,
) -> skewguard_world::engine::ServiceSetup {
    skewguard_world::engine::ServiceSetup {
        cluster: skewguard_world::world::CLUSTER.to_owned(),
        name: "web".to_owned(),
        alb: world.alb.clone(),
        container: "web".to_owned(),
        hooks,
        strategy: Strategy::BlueGreen,
        bake: Duration::from_millis(200),
        probe: Request::get("/api/cart"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_on_a_services_first_deployment_pin_it_and_a_rollback_of_it_never_fails() {
    let world = World::start().await;
    let service =
        skewguard_world::ecs_emulator::service_arn(skewguard_world::world::CLUSTER, "web");
    let (_, outcome) = world
        .engine
        .create_service_deployed(
            first_deployment_setup(&world, HookRegistration::skewguard(quick())),
            "v1",
            &[],
            Intervention::None,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(status(&ledger, "v1"), Some(Status::Live));
    assert_eq!(pins(&world, &service, "v1").await, 1);
    let first = latest_deployment(&world, &service).await;
    assert!(first.source_revisions.is_empty(), "{first:?}");

    // Another service's first deployment is rolled back: single-key maps, green at 0.
    let admin_alb = AlbFixture::with_path_rule_as_production(
        &world.clients.elbv2,
        &world.vpc,
        "admin",
        Some(&world.alb.listener_arn),
        200,
        "/admin/*",
    )
    .await
    .unwrap();
    let mut setup = first_deployment_setup(&world, HookRegistration::skewguard(quick()));
    setup.name = "admin".to_owned();
    setup.alb = admin_alb;
    setup.probe = Request::get("/admin/x");
    let admin =
        skewguard_world::ecs_emulator::service_arn(skewguard_world::world::CLUSTER, "admin");
    let (_, outcome) = world
        .engine
        .create_service_deployed(
            setup,
            "a1",
            &[],
            Intervention::StopAt(LifecycleStage::PostProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    world.assert_no_violations();
    assert_eq!(
        status(&entries(&world, &admin).await, "a1"),
        Some(Status::RolledBack)
    );
    assert_eq!(pins(&world, &admin, "a1").await, 0);
    assert_eq!(
        latest_deployment(&world, &admin).await.status,
        "ROLLBACK_SUCCESSFUL",
        "no hook answered FAILED during the rollback"
    );
}

/// Delays every forward PRODUCTION_TRAFFIC_SHIFT call of skewguard's hook, so that a rollback
/// started meanwhile runs first.
struct SlowForwardShift(InProcess);

impl Invoker for SlowForwardShift {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let green = event["executionDetails"]["targetServiceRevisionArn"].clone();
            let forward = event["lifecycleStage"] == "PRODUCTION_TRAFFIC_SHIFT"
                && green.as_str().is_some_and(|g| {
                    event["executionDetails"]["productionTrafficWeights"][g]
                        .as_f64()
                        .is_some_and(|w| w > 0.0)
                });
            if forward {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            self.0.invoke(function, event).await
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_hook_failing_beside_skewguards_rolls_back_while_the_forward_call_still_runs() {
    let world = World::start_with(
        |clients| {
            Arc::new(SlowForwardShift(InProcess {
                clients,
                defaults: EnvDefaults::default(),
            }))
        },
        Arc::new(PlaceholderTasks),
    )
    .await;
    let mut hooks = HookRegistration::skewguard(quick());
    hooks.push(HookRegistration::user(
        &[LifecycleStage::ProductionTrafficShift],
        |event| {
            Box::pin(async move {
                let green = event["executionDetails"]["targetServiceRevisionArn"].clone();
                let weight = green.as_str().and_then(|g| {
                    event["executionDetails"]["productionTrafficWeights"][g].as_f64()
                });
                // The user's smoke test fails the shift; it lets the rollback through.
                if weight.is_some_and(|w| w > 0.0) {
                    json!({"hookStatus": "FAILED"})
                } else {
                    json!({"hookStatus": "SUCCEEDED"})
                }
            })
        },
    ));
    let (service, _) = world
        .service_on(
            "web",
            world.alb.clone(),
            Request::get("/api/cart"),
            "v1",
            hooks,
            Strategy::BlueGreen,
        )
        .await;
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    // The forward call started before the rollback is still running: let it finish.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    world.check("after the late forward call").await;
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(
        status(&ledger, "v2"),
        Some(Status::RolledBack),
        "{ledger:?}"
    );
    assert_eq!(status(&ledger, "v1"), Some(Status::Live));
    assert_eq!(
        pins(&world, &service, "v2").await,
        0,
        "the late call left no pin"
    );
    assert_eq!(pins(&world, &service, "v1").await, 1);
    let history = world
        .ledger()
        .history(&service, &DeploymentId::parse("v2").unwrap())
        .await
        .unwrap();
    assert!(
        history.last().unwrap().change.contains("-> rolled_back"),
        "nothing after the rollback: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_timeouts_follow_their_action_and_a_failed_rollback_is_rollback_failed() {
    use skewguard_world::engine::TimeoutAction;
    let world = World::start().await;
    // A user hook that never finishes at POST_SCALE_UP, with action CONTINUE: the deployment
    // goes on when it times out.
    let never_done = |_: Value| -> BoxFuture<'static, Value> {
        Box::pin(async { json!({"hookStatus": "IN_PROGRESS", "callBackDelay": 1}) })
    };
    let mut hooks = HookRegistration::skewguard(quick());
    let mut waiting = HookRegistration::user(&[LifecycleStage::PostScaleUp], never_done);
    waiting.timeout = Duration::from_secs(2);
    waiting.timeout_action = TimeoutAction::Continue;
    hooks.push(waiting);
    let (service, _) = world
        .service_on(
            "web",
            world.alb.clone(),
            Request::get("/api/cart"),
            "v1",
            hooks,
            Strategy::BlueGreen,
        )
        .await;
    assert_eq!(
        world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded,
        "CONTINUE: the deployment goes on"
    );

    // The same with ROLLBACK, plus a user hook that answers FAILED during the rollback.
    let mut hooks = HookRegistration::skewguard(quick());
    let mut waiting = HookRegistration::user(&[LifecycleStage::PostScaleUp], never_done);
    waiting.timeout = Duration::from_secs(2);
    hooks.push(waiting);
    hooks.push(HookRegistration::user(
        &[LifecycleStage::TestTrafficShift],
        |_| Box::pin(async { json!({"hookStatus": "FAILED"}) }),
    ));
    let admin_alb = AlbFixture::with_path_rule_as_production(
        &world.clients.elbv2,
        &world.vpc,
        "admin",
        Some(&world.alb.listener_arn),
        200,
        "/admin/*",
    )
    .await
    .unwrap();
    let (admin, _) = world
        .service_on(
            "admin",
            admin_alb,
            Request::get("/admin/x"),
            "a1",
            hooks,
            Strategy::BlueGreen,
        )
        .await;
    let outcome = world
        .engine
        .deploy(&admin, "a2", &[], Intervention::None)
        .await
        .unwrap();
    match outcome {
        Outcome::RolledBack { reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(
        latest_deployment(&world, &admin).await.status,
        "ROLLBACK_FAILED",
        "a hook answered FAILED during the rollback"
    );
    world.assert_no_violations();
}

/// Records, per hook invocation, the AWS operations it called at a proxy in front of the
/// stand-ins (the engine invokes hooks one at a time).
struct CountingCalls {
    inner: InProcess,
    proxy: Arc<skewguard_world::faults::FaultProxy>,
    seen: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl Invoker for CountingCalls {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let stage = event["lifecycleStage"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let before = self.proxy.total();
            let answer = self.inner.invoke(function, event).await;
            let calls = self.proxy.calls()[before..]
                .iter()
                .map(|c| c.operation.clone())
                .collect();
            self.seen.lock().unwrap().push((stage, calls));
            answer
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_test_traffic_reads_the_archive_only_for_a_deployment_ecs_no_longer_runs() {
    use skewguard_world::chaos::{Mode, proxied_clients};
    let stand_ins = skewguard_world::world::StandIns::start("/api/*").await;
    let proxy = Arc::new(
        skewguard_world::faults::FaultProxy::start(&stand_ins.endpoints)
            .await
            .unwrap(),
    );
    let invoker = Arc::new(CountingCalls {
        inner: InProcess {
            clients: proxied_clients(&proxy, Mode::InProcess).await,
            defaults: EnvDefaults::default(),
        },
        proxy: proxy.clone(),
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let observer = stand_ins.checker.clone();
    let world = stand_ins.with_engine(invoker.clone(), Arc::new(PlaceholderTasks), observer);
    let (service, _) = world.service("web", "v1", quick()).await;
    // v2 is the service's first deployment under skewguard (blue is described and pinned
    // too), v3 a steady one.
    for version in ["v2", "v3"] {
        let outcome = world
            .engine
            .deploy(&service, version, &[], Intervention::None)
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Succeeded), "{outcome:?}");
    }
    let post_test_traffic: Vec<Vec<String>> = invoker
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(stage, _)| stage == "POST_TEST_TRAFFIC_SHIFT")
        .map(|(_, calls)| calls.clone())
        .collect();
    assert_eq!(post_test_traffic.len(), 2, "{post_test_traffic:?}");
    for (calls, most) in post_test_traffic.iter().zip([9, 5]) {
        // One Query: the entries in play. The archive is not read for a deployment in progress.
        assert_eq!(
            calls.iter().filter(|op| *op == "Query").count(),
            1,
            "{calls:?}"
        );
        assert!(calls.len() <= most, "{} calls: {calls:?}", calls.len());
    }
}
