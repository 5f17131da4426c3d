//! The reconciler in the local world: each kind of drift is injected into a realistic state
//! (reached through real deployments), one run converges (every invariant holds after it), and a
//! second run changes nothing. Also: a dry run changes nothing, settings come from the service's
//! hooks, and a reconciler running throughout a deployment never interferes with the hooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::aws::elb::NewRule;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::listener::{Condition, RuleAction, WeightedTarget};
use skewguard_core::pins::PinTags;
use skewguard_core::reconcile::RepairKind;
use skewguard_core::reconciler::{self, ReconcileOptions, ReconcilerConfig, ServiceReport};
use skewguard_core::settings::EnvDefaults;
use skewguard_core::stages::{Actor, Draft};
use skewguard_world::engine::{
    BoxFuture, InProcess, Intervention, Invocation, Invoker, Outcome, PlaceholderTasks,
};
use skewguard_world::fixtures::weighted_forward;
use skewguard_world::iam::AuthorisingProxy;
use skewguard_world::invariants::Observation;
use skewguard_world::lambda::{LocalFunction, workspace_binary};
use skewguard_world::sweep::{SweepQueue, scheduled_event};
use skewguard_world::world::World;

fn quick() -> Value {
    json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"})
}

fn options(dry_run: bool) -> ReconcileOptions {
    ReconcileOptions {
        defaults: EnvDefaults::default(),
        dry_run,
        execution_id: "test-run".to_owned(),
        identity: "test-run".to_owned(),
    }
}

async fn reconcile(world: &World, service: &str, dry_run: bool) -> ServiceReport {
    reconciler::reconcile_service(&world.hook_clients, service, &options(dry_run))
        .await
        .unwrap_or_else(|e| panic!("reconcile failed: {e}"))
}

/// One run converges (the invariants hold after it) and a second run changes nothing.
async fn converges(world: &World, service: &str, label: &str) -> ServiceReport {
    let first = reconcile(world, service, false).await;
    assert!(
        first.changed(),
        "{label}: the drift was not seen: {first:?}"
    );
    world.check(&format!("{label}: after one reconcile")).await;
    world.assert_no_violations();
    let second = reconcile(world, service, false).await;
    assert!(
        second.repairs.is_empty(),
        "{label}: a second run changed something: {:?}",
        second.repairs
    );
    first
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

fn kinds(report: &ServiceReport) -> Vec<RepairKind> {
    report.repairs.iter().map(|r| r.kind).collect()
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

/// Rewrites one entry as a crash or a person would have left it.
async fn tamper(world: &World, service: &str, id: &str, edit: impl FnOnce(&mut LedgerEntry)) {
    let id = DeploymentId::parse(id).unwrap();
    let mut entries = world.ledger().load(service).await.unwrap();
    if !entries.iter().any(|e| e.deployment_id == id) {
        // An ended entry is in its archive: the edit puts it back in play, as a new entry.
        let mut archived = world
            .ledger()
            .archived(service, &id)
            .await
            .unwrap()
            .expect("the entry exists");
        archived.version = 0;
        entries.push(archived);
    }
    let mut draft = Draft::new(service, entries);
    edit(draft.get_mut(&id).unwrap());
    let actor = Actor {
        stage: "test-drift".into(),
        execution_id: "test".into(),
        identity: "test".into(),
        now: time::OffsetDateTime::now_utc(),
    };
    world.ledger().commit(&draft.changes(&actor)).await.unwrap();
}

async fn history_of(world: &World, service: &str, id: &str) -> Vec<String> {
    world
        .ledger()
        .history(service, &DeploymentId::parse(id).unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.stage == "reconciler")
        .map(|h| {
            assert_eq!(h.execution_id, "test-run");
            h.change
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_drift_converges_in_one_run() {
    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    world.assert_no_violations();
    let steady = reconcile(&world, &service, false).await;
    assert!(
        steady.repairs.is_empty() && steady.settled,
        "a healthy service needs nothing: {steady:?}"
    );

    // 1. The live version's pin deleted by hand.
    let pin = entry(&entries(&world, &service).await, "v2").rule_arns[0].clone();
    world.elb().delete_rule(&pin).await.unwrap();
    let dry = reconcile(&world, &service, true).await;
    assert_eq!(
        kinds(&dry),
        vec![RepairKind::PinRestored, RepairKind::PinForgotten]
    );
    assert!(
        observe(&world, &service)
            .await
            .pins_of(&service, "v2")
            .is_empty(),
        "a dry run changes nothing"
    );
    let report = converges(&world, &service, "pin deleted by hand").await;
    assert!(
        report.repairs[0].detail.contains("deleted by hand"),
        "{report:?}"
    );
    let restored = entry(&entries(&world, &service).await, "v2")
        .rule_arns
        .clone();
    assert_eq!(restored.len(), 1);
    assert_ne!(restored[0], pin);
    let lines = history_of(&world, &service, "v2").await;
    assert!(
        lines.len() == 1 && lines[0].contains("pin-restored") && lines[0].contains("[pins 1 -> 1]"),
        "{lines:?}"
    );

    // 2. The pin changed by hand to forward to the other target group (which runs nothing).
    let pin = restored[0].clone();
    world
        .clients
        .elbv2
        .modify_rule()
        .rule_arn(&pin)
        .actions(weighted_forward(&[(&world.alb.blue_tg, 1)]))
        .send()
        .await
        .unwrap();
    let report = converges(&world, &service, "pin to the wrong target group").await;
    assert_eq!(
        kinds(&report),
        vec![RepairKind::PinRemoved, RepairKind::PinRestored],
        "{report:?}"
    );
    assert!(
        report.repairs[0].detail.contains("but v2 runs on web-tg2"),
        "{report:?}"
    );

    // 3. An orphan: a rule tagged for this service and a deployment the ledger does not know.
    let seen = observe(&world, &service).await;
    let live_pin = seen.pins_of(&service, "v2")[0].clone();
    let mut conditions = live_pin.conditions.clone();
    for c in &mut conditions {
        if let Condition::HttpHeader { values, .. } = c {
            *values = vec!["ghost".into()];
        }
    }
    let orphan = world
        .elb()
        .create_rule(&NewRule {
            listener_arn: world.alb.listener_arn.clone(),
            priority: 50,
            conditions,
            action: RuleAction::Forward(vec![WeightedTarget {
                target_group_arn: world.alb.green_tg.clone(),
                weight: 1,
            }]),
            tags: PinTags {
                service_arn: service.clone(),
                deployment_id: "ghost".into(),
            },
        })
        .await
        .unwrap();
    let report = converges(&world, &service, "orphan tagged rule").await;
    assert_eq!(kinds(&report), vec![RepairKind::PinRemoved]);
    assert_eq!(report.repairs[0].rule_arn.as_deref(), Some(orphan.as_str()));
    assert!(
        report.repairs[0].detail.contains("does not know"),
        "{report:?}"
    );

    // 4. A crash between "rule created" and "ledger written": the tagged pin exists, the ledger
    //    does not list it. It is adopted, not recreated.
    let pin = entry(&entries(&world, &service).await, "v2").rule_arns[0].clone();
    tamper(&world, &service, "v2", |e| e.rule_arns.clear()).await;
    let report = converges(&world, &service, "crash before the ledger write").await;
    assert_eq!(kinds(&report), vec![RepairKind::PinAdopted]);
    assert_eq!(
        entry(&entries(&world, &service).await, "v2").rule_arns,
        vec![pin]
    );
}

/// ECS rolls a deployment back without invoking the hooks again (here: they are skipped), so
/// green stays `testing`, pinned to a target group whose tasks are then stopped.
struct NoRollbackHooks(InProcess);

impl Invoker for NoRollbackHooks {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let green = event["executionDetails"]["targetServiceRevisionArn"].clone();
            let weights = [
                &event["executionDetails"]["testTrafficWeights"],
                &event["executionDetails"]["productionTrafficWeights"],
            ];
            let rollback = function == HookFunction::ProductionShift
                && weights
                    .iter()
                    .any(|w| green.as_str().is_some_and(|g| w[g].as_f64() == Some(0.0)));
            if rollback {
                return Invocation::Answered(json!({"hookStatus": "SUCCEEDED"}));
            }
            self.0.invoke(function, event).await
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_stuck_in_testing_after_a_failed_deployment_is_rolled_back() {
    let world = World::start_with(
        |clients| {
            Arc::new(NoRollbackHooks(InProcess {
                clients,
                defaults: EnvDefaults::default(),
            }))
        },
        Arc::new(PlaceholderTasks),
    )
    .await;
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    world.assert_no_violations();
    let outcome = world
        .engine
        .deploy(
            &service,
            "v3",
            &[],
            Intervention::StopAt(skewguard_core::event::LifecycleStage::PostProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    // The drift is real: green's pin outlived green's tasks.
    let seen = world.checker.found();
    assert!(
        seen.iter()
            .any(|v| v.contains("invariant 3") && v.contains("v3")),
        "the checker saw the stale pin: {seen:?}"
    );
    let stuck = entries(&world, &service).await;
    assert_eq!(entry(&stuck, "v3").status, Status::Testing);
    world.checker.violations.lock().unwrap().clear();

    // The real function binary, invoked the way EventBridge does when the deployment failed,
    // with its role of infra/template.yaml.
    let role = AuthorisingProxy::world("reconciler", &world.endpoints, &world.endpoints)
        .await
        .unwrap();
    let queue = SweepQueue::create(&world.clients.sqs, 3).await.unwrap();
    let mut env = skewguard_world::aws::function_env(&role.endpoints());
    env.push((
        "SKEWGUARD_TABLE".into(),
        skewguard_world::world::TABLE.into(),
    ));
    env.push(queue.env());
    let function = LocalFunction::start(
        "reconciler",
        workspace_binary("reconciler", "reconciler").expect("the reconciler is built"),
        env,
    )
    .await
    .unwrap();
    let answer = function
        .invoke(
            json!({
                "version": "0",
                "source": "aws.ecs",
                "detail-type": "ECS Deployment State Change",
                "resources": [service],
                "detail": {"eventType": "ERROR", "eventName": "SERVICE_DEPLOYMENT_FAILED", "deploymentId": "ecs-svc/1"}
            }),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("the reconciler failed: {e:?}\n{}", function.logs().join("\n")));
    let repairs: Vec<&str> = answer["services"][0]["repairs"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(repairs, ["finished", "pin-removed"], "{answer}");
    assert_eq!(
        role.denials(),
        [],
        "the reconciler's role allows all it does"
    );
    assert!(role.allowed() > 0, "its calls went through its role");
    // The function's output is read from its pipe asynchronously: give it a moment to arrive.
    let logged = |logs: Vec<String>| {
        logs.iter()
            .any(|l| l.contains("\"message\":\"repaired\"") && l.contains("stuck in testing"))
    };
    for _ in 0..100 {
        if logged(function.logs()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        logged(function.logs()),
        "each repair is logged: {:?}",
        function.logs()
    );
    world
        .check("stuck in testing: after the reconciler function")
        .await;
    world.assert_no_violations();
    // The next scheduled sweep finds nothing left to do: the scheduled run enqueues the
    // service, and its message's batch reconciles it with no repair and no failure.
    let config = ReconcilerConfig {
        defaults: EnvDefaults::default(),
        sweep_queue: skewguard_core::aws::sweep_queue::SweepQueue::new(
            world.clients.sqs.clone(),
            &queue.url,
        ),
        deadline: None,
    };
    let scheduled = reconciler::handle(
        &world.hook_clients,
        &config,
        scheduled_event(),
        "scheduled-1",
    )
    .await
    .unwrap();
    assert_eq!(
        scheduled.answer,
        json!({"enqueued": 1, "notEnqueued": []}),
        "{scheduled:?}"
    );
    let messages = queue.receive(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let batch = reconciler::handle(
        &world.hook_clients,
        &config,
        SweepQueue::event(&messages),
        "sweep-1",
    )
    .await
    .unwrap();
    assert_eq!(batch.answer, json!({"batchItemFailures": []}), "{batch:?}");
    assert_eq!(batch.summary["services"][0]["serviceArn"], json!(service));
    assert_eq!(
        batch.summary["services"][0]["repairs"],
        json!([]),
        "{batch:?}"
    );
    let after = entries(&world, &service).await;
    assert_eq!(entry(&after, "v3").status, Status::RolledBack);
    assert!(entry(&after, "v3").rule_arns.is_empty());
    assert_eq!(entry(&after, "v2").status, Status::Live);
    let history = world
        .ledger()
        .history(&service, &DeploymentId::parse("v3").unwrap())
        .await
        .unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.stage, "reconciler");
    assert!(!last.execution_id.is_empty() && last.execution_id != "test-run");
    assert!(
        last.change.contains("stuck in testing") && last.change.contains("ROLLBACK_SUCCESSFUL"),
        "{last:?}"
    );

    // The service deploys normally afterwards, with the reconciler's repairs in place.
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
async fn settings_come_from_the_hooks_the_service_registered() {
    let world = World::start().await;
    let details =
        json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s", "queryParam": "dpl"});
    let (service, _) = world.service("web", "v1", details.clone()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    // ECS records the lifecycle hooks in each deployment's configuration.
    world.ecs.with_state(|s| {
        for d in &mut s.service_deployments {
            d.deployment_configuration = Some(json!({
                "strategy": "BLUE_GREEN",
                "lifecycleHooks": [{
                    "hookTargetArn": "arn:aws:lambda:us-east-1:123456789012:function:skewguard-post-shift",
                    "roleArn": "arn:aws:iam::123456789012:role/skewguard-ecs-hooks",
                    "lifecycleStages": ["POST_PRODUCTION_TRAFFIC_SHIFT"],
                    "hookDetails": details,
                }],
            }));
        }
    });
    let pins = entry(&entries(&world, &service).await, "v2")
        .rule_arns
        .clone();
    assert_eq!(pins.len(), 2, "a header pin and a query pin");
    let seen = observe(&world, &service).await;
    let query_pin = seen
        .pins_of(&service, "v2")
        .into_iter()
        .find(|r| {
            r.conditions
                .iter()
                .any(|c| matches!(c, Condition::QueryString(_)))
        })
        .unwrap()
        .arn
        .clone();
    world.elb().delete_rule(&query_pin).await.unwrap();
    let report = converges(&world, &service, "query pin deleted").await;
    assert!(
        kinds(&report).contains(&RepairKind::PinRestored),
        "{report:?}"
    );
    let seen = observe(&world, &service).await;
    assert!(
        seen.pins_of(&service, "v2").iter().any(|r| r
            .conditions
            .iter()
            .any(|c| matches!(c, Condition::QueryString(_)))),
        "the query pin is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconciler_running_throughout_deployments_never_interferes() {
    let world = Arc::new(World::start().await);
    let (service, _) = world.service("web", "v1", quick()).await;
    world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (world, service, stop) = (world.clone(), service.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut runs, mut repairs) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match reconciler::reconcile_service(&world.hook_clients, &service, &options(false))
                    .await
                {
                    Ok(report) => {
                        runs += 1;
                        repairs.extend(report.repairs);
                    }
                    // moto applies an update in place, so a read racing a write may see an item
                    // without its attributes (DynamoDB itself is atomic): not the reconciler's doing.
                    Err(e) if e.to_string().contains("is missing") => {}
                    Err(e) => panic!("reconcile failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (runs, repairs)
        })
    };
    for (id, intervention) in [
        ("v3", Intervention::None),
        (
            "v4",
            Intervention::StopAt(skewguard_core::event::LifecycleStage::PostProductionTrafficShift),
        ),
        ("v5", Intervention::None),
    ] {
        world
            .engine
            .deploy(&service, id, &[], intervention)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (runs, repairs) = runner.await.unwrap();
    assert!(runs > 10, "the reconciler ran throughout ({runs} runs)");
    // Nothing drifted: the reconciler never edits an entry behind a hook's back. (A pin may
    // be restored and removed again within one run if it read the ledger just before a hook
    // wrote it; the conditional write then makes it decide again.)
    assert!(
        repairs.iter().all(|r| matches!(
            r.kind,
            RepairKind::PinRestored | RepairKind::PinRemoved | RepairKind::PinForgotten
        )),
        "nothing drifted, so no entry was repaired: {repairs:?}"
    );
    world.check("after the deployments").await;
    world.assert_no_violations();
    let ledger = entries(&world, &service).await;
    assert_eq!(entry(&ledger, "v5").status, Status::Live);
    assert_eq!(entry(&ledger, "v4").status, Status::RolledBack);
}

/// Retirement over a retention copy made by hand (its tagged service in the ECS emulator, its
/// target group in moto, a pin forwarding to it and a `retained` entry): `revoke` removes the
/// pin, then the service, then the target group, and the entry ends `retired` with its reason
/// and the caller as actor; a second run finds nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_copy_leaves_no_pin_service_or_target_group_behind() {
    use aws_sdk_ecs::types::{LaunchType, Tag};
    use skewguard_core::ledger::RetainedCopy;
    use skewguard_core::retirement::{Order, RetirementSettings};
    use skewguard_core::retirer::{self, RetireOptions};

    let world = World::start().await;
    let (service, _) = world.service("web", "v1", quick()).await;
    let outcome = world
        .engine
        .deploy(&service, "v2", &[], Intervention::None)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);

    // The copy of v1: a tagged plain service and a target group, pinned.
    let tg_name = "sg-00000000000000v1";
    let tg = world
        .clients
        .elbv2
        .create_target_group()
        .name(tg_name)
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(80)
        .vpc_id(&world.vpc.vpc_id)
        .target_type(aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Ip)
        .tags(
            aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                .key("skewguard:managed")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    let v1 = entry(&entries(&world, &service).await, "v1").clone();
    let td = v1.task_definition_arn.clone();
    world
        .clients
        .ecs
        .create_service()
        .cluster(skewguard_world::world::CLUSTER)
        .service_name("web-sg-v1")
        .task_definition(&td)
        .desired_count(0)
        .launch_type(LaunchType::Fargate)
        .tags(
            Tag::builder()
                .key("skewguard:managed")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let pin = world
        .elb()
        .create_rule(&NewRule {
            listener_arn: world.alb.listener_arn.clone(),
            priority: 60,
            conditions: vec![Condition::HttpHeader {
                name: "X-Deployment-ID".into(),
                values: vec!["v1".into()],
            }],
            action: RuleAction::Forward(vec![WeightedTarget {
                target_group_arn: tg.clone(),
                weight: 1,
            }]),
            tags: PinTags {
                service_arn: service.clone(),
                deployment_id: "v1".into(),
            },
        })
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    tamper(&world, &service, "v1", |e| {
        e.restart_testing();
        e.status = Status::Retained;
        e.target_group_arn = tg.clone();
        e.rule_arns = vec![pin.clone()];
        e.retention = Some(RetainedCopy {
            service_name: "web-sg-v1".into(),
            service_arn: None,
            target_group_name: tg_name.into(),
            target_group_arn: None,
            tasks: 1,
            started_at: now,
            healthy_at: Some(now),
            left_production_at: now,
            retain_until: None,
            idle_checks: 0,
            cluster_arn: skewguard_world::world::CLUSTER.into(),
        });
    })
    .await;

    let options = RetireOptions {
        settings: RetirementSettings {
            max_versions: 3,
            max_age: Duration::from_secs(7 * 24 * 3600),
            min_age: Duration::from_secs(1800),
            idle_window: Duration::from_secs(1800),
        },
        orders: vec![Order::Revoke(DeploymentId::parse("v1").unwrap())],
        idle_check: false,
        stage: "revoke".into(),
        execution_id: "cli".into(),
        identity: "arn:aws:iam::123456789012:user/ops".into(),
    };
    let report = retirer::retire_service(&world.hook_clients, &service, &options)
        .await
        .unwrap();
    assert_eq!(report.retirements.len(), 1, "{report:?}");
    assert!(report.retirements[0].done, "{report:?}");
    assert_eq!(report.retirements[0].reason, "revoked");

    let after = entries(&world, &service).await;
    let v1 = entry(&after, "v1");
    assert_eq!(v1.status, Status::Retired);
    assert_eq!(v1.reason.as_deref(), Some("revoked"));
    assert!(v1.rule_arns.is_empty());
    let history = world
        .ledger()
        .history(&service, &DeploymentId::parse("v1").unwrap())
        .await
        .unwrap();
    let last = history.last().unwrap();
    assert!(last.change.starts_with("retired (revoked)"), "{last:?}");
    assert_eq!(last.actor, "arn:aws:iam::123456789012:user/ops");
    // Nothing of the copy is left: no pin of v1, no active service, no target group.
    assert!(
        observe(&world, &service)
            .await
            .pins_of(&service, "v1")
            .is_empty()
    );
    let services = world
        .clients
        .ecs
        .describe_services()
        .cluster(skewguard_world::world::CLUSTER)
        .services("web-sg-v1")
        .send()
        .await
        .unwrap();
    assert!(
        services
            .services()
            .iter()
            .all(|s| s.status() != Some("ACTIVE")),
        "{services:?}"
    );
    assert_eq!(
        world.elb().target_group_arn_by_name(tg_name).await.unwrap(),
        None
    );
    world.check("after revoke").await;
    world.assert_no_violations();

    // The production version was never a candidate; a second run has nothing to do.
    let again = retirer::retire_service(&world.hook_clients, &service, &options).await;
    assert!(again.is_err(), "v1 is no longer retained: revoke refuses");
    assert_eq!(
        entry(&entries(&world, &service).await, "v2").status,
        Status::Live
    );
}
