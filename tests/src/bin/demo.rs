//! The skewguard demo: a full blue/green deployment A → B → C of the example checkout backend
//! on the local AWS world, with browser tabs pinned to each version calling it throughout.
//! Prints a timeline and exits non-zero if any tab saw a skewed answer, an error, or if an
//! invariant broke.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use skewguard_core::listener::{Condition, RuleAction};
use skewguard_core::stages::short_arn;
use skewguard_world::engine::{Intervention, Outcome};
use skewguard_world::invariants::{Observation, ServiceTruth};
use skewguard_world::live::{LiveWorld, Timeline, Traffic};

const A: &str = "a1b2c3d";
const B: &str = "b2c3d4e";
const C: &str = "c3d4e5f";

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(demo()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<bool, String> {
    // The hooks log JSON to the function processes' output; keep this process's own quiet.
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("RUST_LOG", "off") };
    let started = Instant::now();
    println!("skewguard demo: deploying {A} (cart schema v1) -> {B} (v2, breaking) -> {C} (v3)");
    println!(
        "starting the local AWS world (moto, ECS emulator, Lambda runtime, ALB data plane)..."
    );
    let live = LiveWorld::start(|_, traffic| Some(timeline(started, traffic))).await?;
    let settings = json!({"skewWindow": "4s", "pollInterval": "1s"});
    let service = live.service("checkout", A, "v1", settings).await;
    println!("service checkout runs {A}; skewWindow 4s, pollInterval 1s\n");
    live.open_tab(&format!("tab {A} v1"), &service, Some(A), Some("v1"));
    live.open_tab("visitor (no pin)", &service, None, None);

    for (id, schema) in [(B, "v2"), (C, "v3")] {
        println!("== deploying {id} (cart schema {schema})");
        let outcome = live
            .deploy(&service, id, schema, Intervention::None)
            .await?;
        if outcome != Outcome::Succeeded {
            return Err(format!("deploying {id}: {outcome:?}"));
        }
        println!("== {id} is production; a new tab loads its frontend\n");
        live.open_tab(
            &format!("tab {id} {schema}"),
            &service,
            Some(id),
            Some(schema),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    live.traffic.stop().await;

    println!("per tab (own = served by its version; fell back = after its skew window ended):");
    println!(
        "  {:<20} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}  served by",
        "tab", "requests", "own", "skewed", "fell back", "invalid", "errors"
    );
    for (tab, c) in live.traffic.counters() {
        let served: Vec<String> = c
            .served_by
            .iter()
            .map(|(id, n)| format!("{id}:{n}"))
            .collect();
        println!(
            "  {:<20} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}  {}",
            tab.name,
            c.requests,
            c.own,
            c.skewed,
            c.fell_back,
            c.invalid,
            c.server_errors + c.transport_errors,
            served.join(" ")
        );
    }
    let violations = live.world.checker.found();
    for v in &violations {
        println!("INVARIANT VIOLATED {v}");
    }
    let (requests, skewed, errors) = live.traffic.totals();
    println!(
        "\nrequests {requests}, skewed {skewed}, errors {errors}, invariant violations {} ({:.1}s)",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(skewed == 0 && errors == 0 && violations.is_empty() && requests > 0)
}

fn timeline(started: Instant, traffic: Arc<Traffic>) -> Timeline {
    Box::new(
        move |service: &str, step: &str, truths: &[ServiceTruth], seen: Option<&Observation>| {
            let name = service.rsplit('/').next().unwrap_or(service);
            println!("{:>6.1}s  {name}  {step}", started.elapsed().as_secs_f64());
            if let Some(seen) = seen {
                println!("         rules   {}", rules_line(seen));
                println!("         ledger  {}", ledger_line(seen, service));
            }
            let pinned: Vec<String> = truths
                .iter()
                .flat_map(|t| t.must_be_pinned.iter().map(|d| d.to_string()))
                .collect();
            let tabs: Vec<String> = traffic
                .counters()
                .iter()
                .map(|(tab, c)| {
                    format!(
                        "{}: {} own, {} fell back, {} skewed",
                        tab.name, c.own, c.fell_back, c.skewed
                    )
                })
                .collect();
            println!(
                "         pinned  {}",
                if pinned.is_empty() {
                    "-".to_owned()
                } else {
                    pinned.join(", ")
                }
            );
            println!("         tabs    {}", tabs.join(" | "));
        },
    )
}

fn rules_line(seen: &Observation) -> String {
    let mut rules = seen.rules.clone();
    rules.sort_by_key(|r| r.priority);
    rules
        .iter()
        .map(|r| {
            let what = if let Some(tags) = seen.tags.get(&r.arn) {
                format!("pin {}", tags.deployment_id)
            } else if r
                .conditions
                .iter()
                .any(|c| matches!(c, Condition::HttpHeader { .. }))
            {
                "test".to_owned()
            } else if r.is_default() {
                "default".to_owned()
            } else {
                "prod".to_owned()
            };
            let to = match &r.action {
                RuleAction::Forward(targets) => targets
                    .iter()
                    .map(|t| format!("{}:{}", short_arn(&t.target_group_arn), t.weight))
                    .collect::<Vec<_>>()
                    .join(" "),
                RuleAction::FixedResponse { status_code, .. } => format!("fixed {status_code}"),
                RuleAction::Other(kind) => kind.clone(),
            };
            format!("{} {what} -> {to}", r.priority)
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn ledger_line(seen: &Observation, service: &str) -> String {
    let Some(entries) = seen.ledgers.get(service) else {
        return "-".to_owned();
    };
    if entries.is_empty() {
        return "(empty)".to_owned();
    }
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {} on {}",
                e.deployment_id,
                e.status,
                short_arn(&e.target_group_arn)
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}
