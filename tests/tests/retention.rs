//! `retention: service` in the local world, through real deployments: post-shift clones the
//! version production left into a retention service (real `checkout` processes registered in a
//! target group of its own), moves its pins there once healthy, and answers SUCCEEDED within
//! seconds whatever the skew window; a copy that never becomes healthy is torn down and the
//! version held instead; a deployment superseding a start leaves nothing behind once retired.
//!
//! Needs `cargo build -p checkout` first (as every test of the example backend does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::stages::{Actor, Draft};
use skewguard_world::engine::{InProcess, Intervention, Outcome};
use skewguard_world::invariants::Observation;
use skewguard_world::live::CheckoutTasks;
use skewguard_world::world::{CLUSTER, World};

async fn world() -> World {
    World::start_with(
        |clients| {
            Arc::new(InProcess {
                clients,
                defaults: Default::default(),
            })
        },
        Arc::new(CheckoutTasks),
    )
    .await
}

fn service_mode(extra: Value) -> Value {
    let mut details = json!({
        "retention": "service",
        "skewWindow": "1h",
        "pollInterval": "1s",
        "hookTimeout": "2h",
        "retentionStartTimeout": "60s",
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        details[k] = v;
    }
    details
}

async fn entries(world: &World, service: &str) -> Vec<LedgerEntry> {
    world
        .ledger()
        .load_with_archive(service)
        .await
        .expect("ledger reads")
}

fn entry<'a>(entries: &'a [LedgerEntry], id: &str) -> &'a LedgerEntry {
    entries
        .iter()
        .find(|e| e.deployment_id.as_str() == id)
        .unwrap_or_else(|| panic!("no entry {id}: {entries:?}"))
}

async fn observe(world: &World, service: &str) -> Observation {
    Observation::take(
        world.elb(),
        world.ledger(),
        &world.alb.listener_arn,
        &[service],
    )
    .await
    .expect("observation")
}

/// The deployment ID the task at `addr` serves (its `/healthz` answer's header).
async fn served_by(addr: std::net::SocketAddr) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/healthz")
        .header("host", addr.ip().to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response
        .headers()
        .get("x-deployment-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// One reconciler run of `service`, as its schedule or an ECS event would start it.
async fn reconcile(world: &World, service: &str) -> skewguard_core::reconciler::ServiceReport {
    let options = skewguard_core::reconciler::ReconcileOptions {
        defaults: Default::default(),
        dry_run: false,
        execution_id: "test".into(),
        identity: "test".into(),
    };
    skewguard_core::reconciler::reconcile_service(&world.hook_clients, service, &options)
        .await
        .expect("the reconciler runs")
}

/// No target group carries the name of `id`'s retention copy.
async fn copy_target_group_gone(world: &World, service: &str, id: &str) -> bool {
    let name = skewguard_core::retention::target_group_name(
        service,
        &DeploymentId::parse(id).expect("an ID"),
    );
    world
        .elb()
        .target_group_arn_by_name(&name)
        .await
        .expect("DescribeTargetGroups")
        .is_none()
}

/// Deploys each version in turn; each deployment must succeed.
async fn deploy_all(world: &World, service: &str, ids: &[&str]) {
    for id in ids {
        let outcome = world
            .engine
            .deploy(service, id, &[], Intervention::None)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Succeeded, "deploying {id}");
    }
}

async fn active_service(world: &World, name: &str) -> bool {
    let described = world
        .clients
        .ecs
        .describe_services()
        .cluster(CLUSTER)
        .services(name)
        .send()
        .await
        .unwrap();
    described
        .services()
        .iter()
        .any(|s| s.status() == Some("ACTIVE"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployment_finishes_in_seconds_and_the_previous_version_is_served_by_its_copy() {
    let world = world().await;
    let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;

    let started = Instant::now();
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    // The skew window is an hour: only the copy's start stood between the shift and the end.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the deployment was held {:?}",
        started.elapsed()
    );

    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v2").status, Status::Live);
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retained, "{v1:?}");
    let copy = v1.retention.clone().expect("the copy is recorded");
    let copy_tg = copy.target_group_arn.clone().expect("its target group");
    assert_eq!(v1.target_group_arn, copy_tg);
    assert!(copy.service_arn.is_some() && copy.healthy_at.is_some());
    assert!(copy.retain_until.is_some());
    assert_eq!(copy.service_name, "web-sg-v1");

    // v1's pin forwards to the copy alone, whose task serves v1.
    let observed = observe(&world, &service).await;
    let pins = observed.pins_of(&service, "v1");
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0].forward_targets(), vec![copy_tg.as_str()]);
    let addresses = world
        .scheduler
        .task_addresses(copy.service_arn.as_deref().unwrap())
        .await;
    assert_eq!(addresses.len(), 1, "retainedTasks defaults to 1");
    assert_eq!(served_by(addresses[0]).await.unwrap(), "v1");
    assert!(active_service(&world, "web-sg-v1").await);

    // The next deployment retains v2 beside v1: two old versions served at once.
    let outcome = world
        .engine
        .deploy(&service, "v3", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v3").status, Status::Live);
    assert_eq!(entry(&ledger, "v2").status, Status::Retained);
    assert_eq!(entry(&ledger, "v1").status, Status::Retained);
    assert!(active_service(&world, "web-sg-v2").await);
    assert!(active_service(&world, "web-sg-v1").await);
    world.check("after two deployments").await;
    world.assert_no_violations();
}

/// The clock of a start, moved back: what the hook sees when `retentionStartTimeout` has
/// passed (the timeout is at least a minute; the test does not wait one out). Retried when a
/// hook wrote the entry meanwhile.
async fn age_the_start(world: &World, service: &str, id: &str, by: Duration) {
    let id = DeploymentId::parse(id).unwrap();
    for _ in 0..20 {
        let entries = world.ledger().load(service).await.unwrap();
        let mut draft = Draft::new(service, entries);
        let copy = draft
            .get_mut(&id)
            .and_then(|e| e.retention.as_mut())
            .expect("a copy is starting");
        copy.started_at -= by;
        let actor = Actor {
            stage: "test-clock".into(),
            execution_id: "test".into(),
            identity: "test".into(),
            now: time::OffsetDateTime::now_utc(),
        };
        if world.ledger().commit(&draft.changes(&actor)).await.is_ok() {
            return;
        }
    }
    panic!("the ledger kept changing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_never_becomes_healthy_is_torn_down_and_the_version_held_instead() {
    let world = world().await;
    let (service, _) = world
        .service(
            "web",
            "v1",
            service_mode(json!({"skewWindow": "10s", "retentionStartTimeout": "1m"})),
        )
        .await;
    world.ecs.set_never_healthy("*web-sg-*", true);

    // The copy's service exists, its task never healthy: post-shift waits for it, until its
    // start is older than the timeout.
    let age_once_started = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ledger = entries(&world, &service).await;
            let started = ledger
                .iter()
                .find(|e| e.deployment_id.as_str() == "v1")
                .and_then(|e| e.retention.as_ref())
                .is_some_and(|c| c.service_arn.is_some());
            if started {
                break;
            }
            assert!(Instant::now() < deadline, "no copy started: {ledger:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(active_service(&world, "web-sg-v1").await);
        age_the_start(&world, &service, "v1", Duration::from_secs(120)).await;
    };
    let (outcome, ()) = tokio::join!(
        world.engine.deploy(&service, "v2", &[], Intervention::None),
        age_once_started
    );
    assert_eq!(outcome.unwrap(), Outcome::Succeeded);
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retired, "held, then retired: {v1:?}");
    assert_eq!(v1.reason.as_deref(), Some("start-timeout"));
    assert!(v1.retention.is_none(), "the copy is gone and forgotten");
    assert!(!active_service(&world, "web-sg-v1").await);
    assert!(copy_target_group_gone(&world, &service, "v1").await);
    world.check("after the fallback").await;
    world.assert_no_violations();
}

/// A retained version deployed again serves from its own target group: the reconciler tears
/// its copy down and forgets it, and leaves the version live and pinned.
#[tokio::test(flavor = "multi_thread")]
async fn a_retained_version_deployed_again_loses_its_copy_to_the_reconciler() {
    let world = world().await;
    let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;
    deploy_all(&world, &service, &["v2", "v1"]).await;
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Live);
    assert!(v1.retention.is_some(), "the old copy is still recorded");
    assert!(active_service(&world, "web-sg-v1").await);
    assert_eq!(entry(&ledger, "v2").status, Status::Retained);

    let report = reconcile(&world, &service).await;
    let retirement = report.retirement.expect("the stray copy is reported");
    assert!(
        retirement
            .retirements
            .iter()
            .any(|r| r.deployment_id.as_str() == "v1" && r.done && r.reason == "rolled-back"),
        "{retirement:?}"
    );
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Live);
    assert!(v1.retention.is_none());
    assert!(!active_service(&world, "web-sg-v1").await);
    assert!(active_service(&world, "web-sg-v2").await, "v2's copy stays");
    let pins = observe(&world, &service).await;
    assert_eq!(pins.pins_of(&service, "v1").len(), 1, "v1 is still pinned");
    world.check("after the reconciler").await;
    world.assert_no_violations();
}

/// The checker's seventh guarantee: a retention service the ledger does not name (created
/// before its record, or its record dropped before it was deleted) is a violation.
#[test]
fn a_retention_service_without_a_ledger_entry_naming_it_is_a_violation() {
    use skewguard_core::ledger::{RunningVersion, ServiceWiring};
    use skewguard_core::listener::Request;
    use skewguard_world::invariants::{ServiceTruth, violations};
    use std::collections::BTreeMap;

    let svc = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
    let running = RunningVersion {
        deployment_id: DeploymentId::parse("v1").unwrap(),
        service_revision_arn: "rev".into(),
        target_group_arn: "tg".into(),
        task_definition_arn: "td".into(),
    };
    let wiring = ServiceWiring {
        listener_arn: "l".into(),
        production_rule_arn: "p".into(),
    };
    let mut v1 = LedgerEntry::new(
        svc,
        &running,
        &wiring,
        Status::Retained,
        time::OffsetDateTime::now_utc(),
    );
    let truth = ServiceTruth {
        service_arn: svc.into(),
        production_rule_arn: "p".into(),
        probe: Request::get("/api/cart"),
        running: BTreeMap::new(),
        must_be_pinned: Vec::new(),
        retention_services: vec!["web-sg-v1".into()],
    };
    let seen = |entry: &LedgerEntry| Observation {
        rules: Vec::new(),
        tags: BTreeMap::new(),
        ledgers: BTreeMap::from([(svc.to_owned(), vec![entry.clone()])]),
        histories: BTreeMap::new(),
    };
    let found = violations(&seen(&v1), None, std::slice::from_ref(&truth));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("invariant 7: retention service web-sg-v1"),
        "{found:?}"
    );
    v1.retention = Some(skewguard_core::retention::new_copy(
        svc,
        "shop",
        &v1.deployment_id,
        1,
        1,
        time::OffsetDateTime::now_utc(),
    ));
    assert_eq!(
        violations(&seen(&v1), None, std::slice::from_ref(&truth)),
        Vec::<String>::new()
    );
}

/// The reconciler with retained versions: with nothing drifted it changes nothing; a retained
/// version's pin deleted by hand is restored, forwarding to its copy's target group alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_keeps_retained_pins_and_restores_a_lost_one_to_the_copy() {
    use skewguard_core::reconcile::RepairKind;
    let world = world().await;
    let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;
    deploy_all(&world, &service, &["v2", "v3"]).await;
    let report = reconcile(&world, &service).await;
    assert!(report.repairs.is_empty(), "{:?}", report.repairs);
    let before = observe(&world, &service).await;
    let v1_pin = before.pins_of(&service, "v1");
    assert_eq!(v1_pin.len(), 1);
    let copy_tg = entry(&entries(&world, &service).await, "v1")
        .retention
        .as_ref()
        .and_then(|c| c.target_group_arn.clone())
        .unwrap();
    assert_eq!(v1_pin[0].forward_targets(), vec![copy_tg.as_str()]);

    // Someone deletes v1's pin.
    world.elb().delete_rule(&v1_pin[0].arn).await.unwrap();
    let report = reconcile(&world, &service).await;
    assert!(
        report
            .repairs
            .iter()
            .any(|r| r.kind == RepairKind::PinRestored
                && r.deployment_id.as_ref().map(DeploymentId::as_str) == Some("v1")),
        "{:?}",
        report.repairs
    );
    let after = observe(&world, &service).await;
    let restored = after.pins_of(&service, "v1");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].forward_targets(), vec![copy_tg.as_str()]);
    assert_eq!(
        entry(&entries(&world, &service).await, "v1").status,
        Status::Retained
    );
    world.check("after the repair").await;
    world.assert_no_violations();
}

/// A deployment superseding one whose copy is starting: the starting version loses its pins
/// before the new green scales up into its target group, its copy goes to retirement
/// (`superseded`), the reconciler tears it down, and the newer deployment retains its own
/// previous version as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_superseding_a_start_leaves_nothing_of_the_copy_once_retired() {
    use skewguard_world::engine::{ScaleDownAt, SupersedeWhen};
    let world = world().await;
    let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;
    world.ecs.set_never_healthy("*web-sg-v1*", true);
    let outcome = world
        .engine
        .deploy(
            &service,
            "v2",
            &[],
            Intervention::Supersede {
                when: SupersedeWhen::WhileHolding,
                by: "v3".to_owned(),
                environment: Vec::new(),
                scale_down: ScaleDownAt::ScaleUp,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "v3 deploys");
    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v3").status, Status::Live);
    assert_eq!(entry(&ledger, "v2").status, Status::Retained, "{ledger:?}");
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retained, "handed to retirement: {v1:?}");
    assert_eq!(v1.reason.as_deref(), Some("superseded"));
    assert!(
        observe(&world, &service)
            .await
            .pins_of(&service, "v1")
            .is_empty()
    );
    assert!(
        active_service(&world, "web-sg-v1").await,
        "not torn down yet"
    );

    let report = reconcile(&world, &service).await;
    let retirement = report.retirement.expect("v1 retires");
    assert!(
        retirement
            .retirements
            .iter()
            .any(|r| r.deployment_id.as_str() == "v1" && r.done && r.reason == "superseded"),
        "{retirement:?}"
    );
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retired);
    assert_eq!(v1.reason.as_deref(), Some("superseded"));
    assert!(!active_service(&world, "web-sg-v1").await);
    assert!(copy_target_group_gone(&world, &service, "v1").await);
    assert!(active_service(&world, "web-sg-v2").await);
    world.check("after the reconciler").await;
    world.assert_no_violations();
}

/// A copy whose start is refused for good (here `CreateService` denied, as a role without the
/// grant would be) does not fail the deployment: the version is held for the skew window
/// instead, the error is kept on its entry, and what was created (the target group) is torn
/// down.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_refused_for_good_holds_the_version_instead_of_failing_the_deployment() {
    let world = world().await;
    let (service, _) = world
        .service("web", "v1", service_mode(json!({"skewWindow": "4s"})))
        .await;
    world
        .ecs
        .fail_next("CreateService", 400, "AccessDeniedException");
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retired, "held, then retired: {v1:?}");
    assert_eq!(v1.reason.as_deref(), Some("start-failed"));
    assert!(
        v1.last_error
            .as_deref()
            .is_some_and(|e| e.contains("AccessDenied")),
        "{v1:?}"
    );
    assert!(v1.retention.is_none());
    assert!(!active_service(&world, "web-sg-v1").await);
    assert!(
        copy_target_group_gone(&world, &service, "v1").await,
        "the copy's target group is torn down"
    );
    world.check("after the fallback").await;
    world.assert_no_violations();
}

/// Retirement crashed after each of its AWS calls in turn (a revoke, from the same retained
/// state every time): right after the crash no guarantee is broken (no pin leads to a deleted
/// copy, no retention service runs without its entry), and the next run (the reconciler)
/// finishes it: no pin, service or target group of the version is left, its entry is final
/// `retired (revoked)`.
#[tokio::test(flavor = "multi_thread")]
async fn retirement_crashed_at_every_call_is_finished_by_the_next_run() {
    use skewguard_core::retirement::{Order, RetirementSettings};
    use skewguard_core::retirer::{self, RetireOptions};
    use skewguard_world::chaos::{Mode, proxied_clients};
    use skewguard_world::faults::FaultProxy;

    let settings = RetirementSettings {
        max_versions: 3,
        max_age: Duration::from_secs(7 * 24 * 3600),
        min_age: Duration::from_secs(1800),
        idle_window: Duration::from_secs(1800),
    };
    let revoke = RetireOptions {
        settings,
        orders: vec![Order::Revoke(DeploymentId::parse("v1").unwrap())],
        idle_check: false,
        stage: "revoke".into(),
        execution_id: "test".into(),
        identity: "test".into(),
    };
    for k in 1.. {
        let world = world().await;
        let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;
        let outcome = world
            .engine
            .deploy(&service, "v2", &[], Intervention::None)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Succeeded);
        let proxy = FaultProxy::start(&world.endpoints).await.unwrap();
        let clients = proxied_clients(&proxy, Mode::InProcess).await;
        let (crashed, crash) = tokio::sync::oneshot::channel::<()>();
        proxy.crash_after(
            k,
            Box::new(move || {
                let _ = crashed.send(());
            }),
        );
        let finished = tokio::select! {
            report = retirer::retire_service(&clients, &service, &revoke) => {
                report.unwrap();
                true
            }
            _ = crash => false,
        };
        if finished {
            assert!(
                k > 6,
                "retirement makes more than 5 calls: every one was a crash point"
            );
            break;
        }
        // Right after the crash the safety guarantees hold (1, 3 and 6: no pin leads a client
        // anywhere wrong; 7: no copy runs unrecorded); 4 (the ledger lists exactly the pins)
        // may wait for the next run, as after a hook's crash.
        let seen = observe(&world, &service).await;
        let unsafe_now: Vec<String> =
            skewguard_world::invariants::violations(&seen, None, &world.engine.truths())
                .into_iter()
                .filter(|v| !v.starts_with("invariant 4") && !v.starts_with("invariant 2"))
                .collect();
        assert_eq!(
            unsafe_now,
            Vec::<String>::new(),
            "right after a crash at call {k}"
        );

        // The next run, as the reconciler makes it (the decision is recorded, or the order
        // is given again).
        let next = RetireOptions {
            orders: Vec::new(),
            ..revoke.clone()
        };
        let report = retirer::retire_service(&world.hook_clients, &service, &next)
            .await
            .unwrap();
        let ledger = entries(&world, &service).await;
        if entry(&ledger, "v1").status == Status::Retained {
            // The crash came before the decision was written: the order is given again.
            assert!(report.retirements.is_empty(), "{report:?}");
            retirer::retire_service(&world.hook_clients, &service, &revoke)
                .await
                .unwrap();
        }
        let ledger = entries(&world, &service).await;
        let v1 = entry(&ledger, "v1");
        assert_eq!(v1.status, Status::Retired, "crash at call {k}: {v1:?}");
        assert_eq!(v1.reason.as_deref(), Some("revoked"), "crash at call {k}");
        assert!(
            observe(&world, &service)
                .await
                .pins_of(&service, "v1")
                .is_empty(),
            "crash at call {k}"
        );
        assert!(
            !active_service(&world, "web-sg-v1").await,
            "crash at call {k}"
        );
        assert!(
            copy_target_group_gone(&world, &service, "v1").await,
            "crash at call {k}"
        );
        world
            .check(&format!("after the run that followed a crash at call {k}"))
            .await;
        world.assert_no_violations();
    }
}

/// Throttling during a copy's start is absorbed: the step is retried from a fresh read and the
/// version is retained as without it.
#[tokio::test(flavor = "multi_thread")]
async fn throttling_during_a_start_is_retried_and_the_version_retained() {
    let world = world().await;
    let (service, _) = world.service("web", "v1", service_mode(json!({}))).await;
    for _ in 0..3 {
        world
            .ecs
            .fail_next("CreateService", 400, "ThrottlingException");
        world
            .ecs
            .fail_next("DescribeServices", 400, "ThrottlingException");
    }
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let calls = world.ecs.with_state(|s| s.calls.clone());
    assert!(
        calls.iter().filter(|c| *c == "CreateService").count() >= 4,
        "the throttled creates were retried: {calls:?}"
    );
    let ledger = entries(&world, &service).await;
    let v1 = entry(&ledger, "v1");
    assert_eq!(v1.status, Status::Retained, "{v1:?}");
    assert!(v1.reason.is_none());
    assert!(active_service(&world, "web-sg-v1").await);
    world.check("after the deployment").await;
    world.assert_no_violations();
}

/// `maxVersions` through real deployments: with one version allowed, the reconciler retires
/// the older of two retained versions and keeps the newer.
#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_versions_the_oldest_retained_version_retires_first() {
    let world = world().await;
    let (service, _) = world
        .service("web", "v1", service_mode(json!({"maxVersions": "1"})))
        .await;
    deploy_all(&world, &service, &["v2", "v3"]).await;
    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v1").status, Status::Retained);
    assert_eq!(entry(&ledger, "v2").status, Status::Retained);

    let report = reconcile(&world, &service).await;
    let retirement = report.retirement.expect("a retirement");
    assert!(
        retirement
            .retirements
            .iter()
            .any(|r| r.deployment_id.as_str() == "v1" && r.done && r.reason == "max-versions"),
        "{retirement:?}"
    );
    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v1").status, Status::Retired);
    assert_eq!(entry(&ledger, "v1").reason.as_deref(), Some("max-versions"));
    assert_eq!(entry(&ledger, "v2").status, Status::Retained);
    assert!(!active_service(&world, "web-sg-v1").await);
    assert!(active_service(&world, "web-sg-v2").await);
    world.check("after the reconciler").await;
    world.assert_no_violations();
}
