//! `browser-world`: the live world (moto, ECS emulator, real hook processes, real `checkout`
//! backends, the ALB data plane) under the control of another program, for the browser test
//! (`examples/web/e2e/browser-test.mjs`).
//!
//! Starts one service `checkout` running `--deployment-id` (cart schema `--schema`) with
//! skewguard's hooks, then speaks JSON lines:
//!
//! - stdout, once ready: `{"event":"ready","url":"http://127.0.0.1:PORT","service":ARN,
//!   "deploymentId":ID,"hookDetails":{..}}` (`url` is the data plane, the ALB listener);
//! - stdin `deploy ID SCHEMA`: runs a blue/green deployment to ID (cart schema SCHEMA); stdout
//!   gets `{"event":"step",..}` after every step of it (the step's name, the listener's rules,
//!   the ledger, what must be pinned) and `{"event":"deployed","deploymentId":ID,
//!   "outcome":"succeeded"|"rolled_back","reason":..}` when it ends;
//! - stdin `status`: `{"event":"status",..}` with the listener's rules and the ledger as they
//!   are now;
//! - stdin `quit` (or end of input, SIGINT, SIGTERM): stops everything and prints
//!   `{"event":"bye","violations":[..]}` (invariant violations seen after any step); exits 1 if
//!   there were any.
//!
//! An unknown or failed command prints `{"event":"error","message":..}`. A readable timeline
//! goes to stderr.
//!
//! Options: `--deployment-id a1b2c3d`, `--schema v1`, `--skew-window 8s`, `--poll-interval 1s`,
//! `--after-window retired|fallthrough|default` (`default` leaves the key out of hookDetails).

use std::process::ExitCode;
use std::time::Instant;

use serde_json::{Map, Value, json};
use skewguard_core::listener::{Condition, RuleAction};
use skewguard_core::stages::short_arn;
use skewguard_world::console::{self, Command, Console};
use skewguard_world::engine::{Intervention, Outcome};
use skewguard_world::invariants::{Observation, ServiceTruth};
use skewguard_world::live::{LiveWorld, Timeline};

struct Options {
    deployment_id: String,
    schema: String,
    hook_details: Value,
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("browser-world: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            emit(json!({"event": "error", "message": e, "fatal": true}));
            eprintln!("browser-world failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: Vec<String>) -> Result<Options, String> {
    let mut deployment_id = "a1b2c3d".to_owned();
    let mut schema = "v1".to_owned();
    let mut details = Map::new();
    details.insert("retention".into(), json!("hold"));
    details.insert("skewWindow".into(), json!("8s"));
    details.insert("pollInterval".into(), json!("1s"));
    details.insert("afterWindow".into(), json!("retired"));
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--deployment-id" => deployment_id = value()?,
            "--schema" => schema = value()?,
            "--skew-window" => {
                details.insert("skewWindow".into(), json!(value()?));
            }
            "--poll-interval" => {
                details.insert("pollInterval".into(), json!(value()?));
            }
            "--after-window" => match value()?.as_str() {
                "default" => {
                    details.remove("afterWindow");
                }
                v @ ("retired" | "fallthrough") => {
                    details.insert("afterWindow".into(), json!(v));
                }
                other => {
                    return Err(format!(
                        "--after-window must be retired, fallthrough or default, not {other:?}"
                    ));
                }
            },
            other => {
                return Err(format!(
                    "unknown option {other:?} (see the file's doc comment)"
                ));
            }
        }
    }
    Ok(Options {
        deployment_id,
        schema,
        hook_details: Value::Object(details),
    })
}

/// One JSON line on stdout (line-buffered: flushed at the newline).
fn emit(value: Value) {
    println!("{value}");
}

async fn run(options: Options) -> Result<bool, String> {
    // The hooks log JSON to the function processes' output; keep this process's own quiet.
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("RUST_LOG", "off") };
    let started = Instant::now();
    eprintln!("browser-world: starting the live world...");
    let live = LiveWorld::start(|_, _| Some(timeline(started))).await?;
    let service = live
        .service(
            "checkout",
            &options.deployment_id,
            &options.schema,
            options.hook_details.clone(),
        )
        .await;
    eprintln!(
        "browser-world: {} serves {} (cart schema {}) on {}; hookDetails {}",
        short_arn(&service),
        options.deployment_id,
        options.schema,
        live.plane.url(),
        options.hook_details
    );
    emit(json!({
        "event": "ready",
        "url": live.plane.url(),
        "service": service,
        "deploymentId": options.deployment_id,
        "schema": options.schema,
        "hookDetails": options.hook_details,
    }));

    let mut console = Console::stdin()?;
    while let Some(command) = console.next().await {
        match command {
            Ok(Command::Deploy { id, schema }) => {
                eprintln!("browser-world: deploying {id} (cart schema {schema})");
                let at = started.elapsed().as_secs_f64();
                let deploy = live.deploy(&service, &id, &schema, Intervention::None);
                let Some(outcome) = console.unless_stopped(deploy).await else {
                    break;
                };
                match outcome {
                    Ok(Outcome::Succeeded) => emit(json!({
                        "event": "deployed", "deploymentId": id, "outcome": "succeeded",
                        "t": started.elapsed().as_secs_f64(), "startedAt": at,
                    })),
                    Ok(Outcome::RolledBack { reason }) => emit(json!({
                        "event": "deployed", "deploymentId": id, "outcome": "rolled_back",
                        "reason": reason, "t": started.elapsed().as_secs_f64(), "startedAt": at,
                    })),
                    Err(e) => {
                        emit(json!({"event": "error", "message": format!("deploy {id}: {e}")}))
                    }
                }
            }
            Ok(Command::Status) => match console::observe(&live, &service).await {
                Ok(seen) => emit(json!({
                    "event": "status",
                    "t": started.elapsed().as_secs_f64(),
                    "service": service,
                    "rules": rules_json(&seen),
                    "ledger": ledger_json(&seen, &service),
                })),
                Err(e) => emit(json!({"event": "error", "message": format!("status: {e}")})),
            },
            Err(message) => emit(json!({"event": "error", "message": message})),
        }
    }

    let violations = live.world.checker.found();
    emit(json!({"event": "bye", "violations": violations}));
    Ok(violations.is_empty())
}

fn timeline(started: Instant) -> Timeline {
    Box::new(
        move |service: &str, step: &str, truths: &[ServiceTruth], seen: Option<&Observation>| {
            let t = started.elapsed().as_secs_f64();
            let pinned: Vec<String> = truths
                .iter()
                .filter(|truth| truth.service_arn == service)
                .flat_map(|truth| truth.must_be_pinned.iter().map(|d| d.to_string()))
                .collect();
            let rules = seen.map(rules_json).unwrap_or_default();
            let ledger = seen.map(|s| ledger_json(s, service)).unwrap_or_default();
            let summary: Vec<String> = rules
                .iter()
                .map(|r| {
                    format!("{} {} -> {}", r["priority"], r["kind"], r["action"]).replace('"', "")
                })
                .collect();
            eprintln!("{t:>6.1}s  {step}\n         rules  {}", summary.join(" | "));
            emit(json!({
                "event": "step",
                "t": t,
                "service": service,
                "step": step,
                "pinned": pinned,
                "rules": rules,
                "ledger": ledger,
            }));
        },
    )
}

fn ledger_json(seen: &Observation, service: &str) -> Vec<Value> {
    seen.ledgers
        .get(service)
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    json!({
                        "deploymentId": e.deployment_id.to_string(),
                        "status": e.status.to_string(),
                        "targetGroup": short_arn(&e.target_group_arn),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn rules_json(seen: &Observation) -> Vec<Value> {
    let mut rules = seen.rules.clone();
    rules.sort_by_key(|r| r.priority);
    rules
        .iter()
        .map(|r| {
            let kind = match (&r.action, seen.tags.get(&r.arn)) {
                (RuleAction::FixedResponse { .. }, Some(_)) => "retired catch-all".to_owned(),
                (_, Some(tags)) => format!("pin {}", tags.deployment_id),
                _ if r.is_default() => "default".to_owned(),
                _ if r
                    .conditions
                    .iter()
                    .any(|c| matches!(c, Condition::HttpHeader { .. })) =>
                {
                    "test".to_owned()
                }
                _ => "production".to_owned(),
            };
            let action = match &r.action {
                RuleAction::Forward(targets) => targets
                    .iter()
                    .map(|t| format!("{}:{}", short_arn(&t.target_group_arn), t.weight))
                    .collect::<Vec<_>>()
                    .join(" "),
                RuleAction::FixedResponse { status_code, .. } => format!("fixed {status_code}"),
                RuleAction::Other(kind) => kind.clone(),
            };
            json!({"priority": r.priority.to_string(), "kind": kind, "action": action})
        })
        .collect()
}
