//! The CloudWatch metrics the functions write: every embedded metric format (EMF) line that the
//! compiled hook and reconciler binaries print through a whole deployment, a rejected event and
//! a drift repair is valid against the format's JSON Schema (emf-schema.json) and the
//! specification's rules a schema cannot express, and says what happened.

use std::time::Duration;

use serde_json::{Value, json};
use skewguard_core::event::HookStatus;
use skewguard_core::hook::HookFunction;
use skewguard_core::metrics::{self, Counts, HookOutcome, Invocation};
use skewguard_world::engine::{Intervention, Outcome};
use skewguard_world::lambda::{LocalFunction, workspace_binary};
use skewguard_world::live::LiveWorld;
use skewguard_world::sweep::{SweepQueue, failed_ids, scheduled_event};

const A: &str = "a1b2c3d";
const B: &str = "b2c3d4e";

/// Why `line` is not a valid EMF document, if it is not: the published JSON Schema, then what
/// the specification requires beyond it (each dimension a string member, each metric a number
/// or an array of at most 100 numbers, at most 100 metrics per directive).
fn emf_problems(validator: &jsonschema::Validator, line: &Value) -> Vec<String> {
    let mut problems: Vec<String> = validator
        .iter_errors(line)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    let directives = line["_aws"]["CloudWatchMetrics"].as_array();
    for directive in directives.into_iter().flatten() {
        for set in directive["Dimensions"].as_array().into_iter().flatten() {
            for name in set
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !line[name].is_string() {
                    problems.push(format!("dimension {name} is not a string member"));
                }
            }
        }
        for metric in directive["Metrics"].as_array().into_iter().flatten() {
            let name = metric["Name"].as_str().unwrap_or_default();
            let ok = match &line[name] {
                Value::Number(_) => true,
                Value::Array(values) => values.len() <= 100 && values.iter().all(Value::is_number),
                _ => false,
            };
            if !ok {
                problems.push(format!("metric {name} is not a number member"));
            }
        }
    }
    problems
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("emf-schema.json")).unwrap();
    jsonschema::validator_for(&schema).expect("the EMF schema compiles")
}

/// The EMF lines among a function's output, once `expected` of them have arrived (the output
/// is read from the process's pipes asynchronously).
async fn emf_lines(function: &LocalFunction, expected: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = function
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect();
        if lines.len() >= expected || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The invocation lines (not the per-kind ones) of a function for one stage.
fn at_stage<'a>(lines: &'a [Value], stage: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["Stage"] == stage && l.get("Invocations").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invocation_writes_valid_metrics_that_say_what_it_did() {
    let live = LiveWorld::start(|_, _| None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    let timeout = Duration::from_secs(60);
    let rejected = live
        .invoker
        .function(HookFunction::PostTestTraffic)
        .invoke(json!({"executionDetails": "not a hook event"}), timeout)
        .await
        .unwrap();
    assert_eq!(rejected["hookStatus"], "FAILED");

    // Drift: v2's pin deleted by hand; the reconciler's scheduled run puts it back.
    let entries = live.world.ledger().load(&service).await.unwrap();
    let v2 = entries
        .iter()
        .find(|e| e.deployment_id.as_str() == B)
        .unwrap();
    live.world
        .elb()
        .delete_rule(&v2.rule_arns[0])
        .await
        .unwrap();
    let queue = SweepQueue::create(&live.world.clients.sqs, 3)
        .await
        .unwrap();
    let mut env = skewguard_world::aws::function_env(&live.world.endpoints);
    env.push((
        "SKEWGUARD_TABLE".into(),
        skewguard_world::world::TABLE.into(),
    ));
    env.push(queue.env());
    let reconciler = LocalFunction::start(
        "reconciler",
        workspace_binary("reconciler", "reconciler").expect("the reconciler is built"),
        env,
    )
    .await
    .unwrap();
    let answer = reconciler.invoke(scheduled_event(), timeout).await.unwrap();
    assert_eq!(answer, json!({"enqueued": 1, "notEnqueued": []}));
    let deliveries = queue.drain(&reconciler, 10, timeout).await.unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(failed_ids(&deliveries), Vec::<String>::new());

    let validator = validator();
    let service_name = service.split_once(":service/").unwrap().1;
    let mut all = Vec::new();
    for function in [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ] {
        let function = live.invoker.function(function);
        let invocations = function
            .logs()
            .iter()
            .filter(|l| l.starts_with("START "))
            .count();
        let lines = emf_lines(function, invocations).await;
        let lines_of_invocations = lines.iter().filter(|l| l.get("Invocations").is_some());
        assert_eq!(
            lines_of_invocations.count(),
            invocations,
            "{}: one invocation line per invocation:\n{}",
            function.name(),
            function.logs().join("\n")
        );
        all.push(lines);
    }
    let reconciler_lines = emf_lines(&reconciler, 2).await;
    for line in all.iter().flatten().chain(&reconciler_lines) {
        let problems = emf_problems(&validator, line);
        assert!(problems.is_empty(), "{problems:?} in {line}");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "skewguard"
        );
        assert!(line["requestId"].is_string(), "{line}");
    }

    // Who acted: every history line the hooks wrote names the Lambda request of its invocation.
    let requests: Vec<String> = [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ]
    .iter()
    .flat_map(|f| live.invoker.function(*f).logs())
    .filter_map(|l| {
        l.strip_prefix("START RequestId: ")
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    })
    .collect();
    let id = skewguard_core::DeploymentId::parse(B).unwrap();
    let history = live.world.ledger().history(&service, &id).await.unwrap();
    let by_hooks: Vec<_> = history.iter().filter(|h| h.stage != "reconciler").collect();
    assert!(!by_hooks.is_empty());
    for record in by_hooks {
        assert!(
            requests.contains(&record.actor),
            "{record:?} not in {requests:?}"
        );
        assert_ne!(
            record.actor, record.execution_id,
            "ECS's execution ID stays apart"
        );
    }

    let [post_test, shift, post_shift] = &all[..] else {
        unreachable!()
    };
    // post-test-traffic: blue pinned, answered SUCCEEDED; the rejected event FAILED, by kind.
    let recorded = at_stage(post_test, "POST_TEST_TRAFFIC_SHIFT");
    assert_eq!(recorded.len(), 1, "{post_test:?}");
    assert_eq!(recorded[0]["Succeeded"], 1.0);
    assert_eq!(recorded[0]["PinsCreated"], 1.0, "blue's pin");
    assert!(recorded[0]["AwsCalls"].as_f64().unwrap() >= 3.0);
    assert_eq!(recorded[0]["Service"], service_name);
    let refused = at_stage(post_test, metrics::UNKNOWN_STAGE);
    assert_eq!(refused.len(), 1, "{post_test:?}");
    assert_eq!(refused[0]["Failed"], 1.0);
    assert!(
        post_test
            .iter()
            .any(|l| l["ErrorKind"] == "MalformedEvent" && l["Errors"] == 1.0),
        "{post_test:?}"
    );
    // production-shift: test traffic forward needs no AWS call; the production shift pins green.
    for line in at_stage(shift, "TEST_TRAFFIC_SHIFT") {
        assert_eq!(line["AwsCalls"], 0.0, "{line}");
    }
    let pinned: f64 = at_stage(shift, "PRODUCTION_TRAFFIC_SHIFT")
        .iter()
        .map(|l| l["PinsCreated"].as_f64().unwrap())
        .sum();
    assert_eq!(pinned, 1.0, "green's pin: {shift:?}");
    // post-shift: held (IN_PROGRESS) with the hold growing, then the old pin goes after the window.
    let held = at_stage(post_shift, "POST_PRODUCTION_TRAFFIC_SHIFT");
    let last = held.last().unwrap();
    assert!(held.len() >= 2, "{post_shift:?}");
    assert!(
        held[..held.len() - 1]
            .iter()
            .all(|l| l["InProgress"] == 1.0)
    );
    assert_eq!(last["Succeeded"], 1.0, "{last}");
    assert_eq!(
        last["PinsRemoved"], 1.0,
        "blue's pin, after the window: {last}"
    );
    let holds: Vec<f64> = held
        .iter()
        .map(|l| l["HoldTime"].as_f64().unwrap())
        .collect();
    assert!(holds.is_sorted(), "{holds:?}");
    assert!(*holds.last().unwrap() >= 2.0, "the 2 s window: {holds:?}");

    // The reconciler: the scheduled run enqueued the one service; the queue's batch restored
    // its pin, by kind and by service.
    let enqueue = reconciler_lines
        .iter()
        .find(|l| l["Stage"] == "schedule")
        .unwrap_or_else(|| panic!("{reconciler_lines:?}"));
    assert_eq!(enqueue["ServicesEnqueued"], 1.0, "{enqueue}");
    assert_eq!(enqueue["EnqueueFailures"], 0.0, "{enqueue}");
    assert_eq!(enqueue["PinsCreated"], 0.0, "{enqueue}");
    let run = reconciler_lines
        .iter()
        .find(|l| l["Stage"] == "sweep-queue")
        .unwrap_or_else(|| panic!("{reconciler_lines:?}"));
    assert_eq!(run["ServicesReconciled"], 1.0, "{run}");
    assert_eq!(run["PinsCreated"], 1.0, "{run}");
    assert_eq!(run["Errors"], 0.0, "{run}");
    assert!(
        reconciler_lines
            .iter()
            .any(|l| l["RepairKind"] == "pin-restored" && l["Repairs"] == 1.0),
        "{reconciler_lines:?}"
    );
    assert!(
        reconciler_lines
            .iter()
            .any(|l| l["Service"] == service_name && l["Repairs"].as_f64() >= Some(1.0)),
        "{reconciler_lines:?}"
    );
}

/// Breaks a valid line in one way.
type Breaks = fn(&mut Value);

#[test]
fn the_validation_rejects_lines_that_break_the_specification() {
    let validator = validator();
    let outcome = HookOutcome {
        function: "post-shift",
        stage: Some("POST_PRODUCTION_TRAFFIC_SHIFT"),
        service_arn: Some("arn:aws:ecs:us-east-1:123456789012:service/shop/web"),
        status: HookStatus::InProgress,
        duration: Duration::from_millis(5),
    };
    let counts = Counts {
        held: Some(Duration::from_secs(60)),
        ..Counts::default()
    };
    let good = metrics::hook_lines(
        &outcome,
        &counts,
        &Invocation::default(),
        time::OffsetDateTime::now_utc(),
    )
    .remove(0);
    assert_eq!(emf_problems(&validator, &good), Vec::<String>::new());

    let broken: [(&str, Breaks); 8] = [
        ("no _aws", |l| {
            l.as_object_mut().unwrap().remove("_aws");
        }),
        ("a timestamp that is not epoch milliseconds", |l| {
            l["_aws"]["Timestamp"] = json!("2026-03-01T12:00:00Z")
        }),
        ("a directive without a namespace", |l| {
            l["_aws"]["CloudWatchMetrics"][0]
                .as_object_mut()
                .unwrap()
                .remove("Namespace");
        }),
        ("31 dimensions in one set", |l| {
            let names: Vec<String> = (0..31).map(|i| format!("D{i}")).collect();
            for name in &names {
                l[name] = json!("x");
            }
            l["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([names]);
        }),
        ("101 metrics in one directive", |l| {
            let metrics: Vec<Value> = (0..101)
                .map(|i| {
                    l[format!("M{i}")] = json!(1);
                    json!({"Name": format!("M{i}"), "Unit": "Count"})
                })
                .collect();
            l["_aws"]["CloudWatchMetrics"][0]["Metrics"] = json!(metrics);
        }),
        ("a unit CloudWatch does not know", |l| {
            l["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Minutes")
        }),
        ("a dimension without its member", |l| {
            l.as_object_mut().unwrap().remove("Stage");
        }),
        ("a metric that is not a number", |l| {
            l["HoldTime"] = json!("60s")
        }),
    ];
    for (what, breaks) in broken {
        let mut line = good.clone();
        breaks(&mut line);
        assert!(
            !emf_problems(&validator, &line).is_empty(),
            "{what} must be rejected: {line}"
        );
    }
}
