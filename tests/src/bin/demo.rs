//! The skewguard demo: blue/green deployments A → B → C → D of the example checkout backend on
//! the local AWS world, with `retention: service` (the default) and a browser tab pinned to each
//! version calling it throughout. Each deployment finishes within seconds: post-shift clones the
//! version production left into a retention service and moves its pins there, so while D is
//! production the tabs that loaded A, B and C are each still served by their own version. Then
//! B is revoked (as `skewguard revoke` does) and A, whose tab is closed, retires for being idle
//! (the reconciler's check of the ALB's `RequestCount`). Prints a timeline and exits non-zero if
//! any tab saw a skewed answer or an error, if a version was not served by its own copy, or if
//! an invariant broke.
//!
//! With `--keep` the world stays up afterwards for anyone to try the `skewguard` CLI and `curl`
//! on: it prints the `export` lines that point the CLI at it (the stand-ins' endpoints, test
//! credentials, region, ledger table, the listener's ARN) and the data plane's URL, then reads
//! `deploy ID SCHEMA`, `status` and `quit` on stdin (see [`skewguard_world::console`]). It
//! stops, every process it started with it, on `quit`, at the end of input, and on Ctrl-C
//! (exit status 130).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use skewguard_core::DeploymentId;
use skewguard_core::ledger::Status;
use skewguard_core::listener::{Condition, RuleAction};
use skewguard_core::reconciler::{self, ReconcileOptions};
use skewguard_core::retirement::Order;
use skewguard_core::retirer::{self, RetireOptions};
use skewguard_core::settings::{EnvDefaults, Settings};
use skewguard_core::stages::short_arn;
use skewguard_world::aws::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use skewguard_world::console::{self, Command, Console, Stop, USAGE};
use skewguard_world::engine::{Intervention, Outcome};
use skewguard_world::invariants::{Observation, ServiceTruth};
use skewguard_world::live::{LiveWorld, Timeline, Traffic};
use skewguard_world::world::{CLUSTER, TABLE};

const A: &str = "a1b2c3d";
const B: &str = "b2c3d4e";
const C: &str = "c3d4e5f";
const D: &str = "d4e5f6a";
const SERVICE: &str = "checkout";
/// The demo service's settings: `retention: service` is the default; idle after one quiet
/// minute (the ALB's `RequestCount` is per minute) with no grace, at most three retained
/// versions; the skew window applies only if a copy could not start.
fn settings() -> serde_json::Value {
    json!({
        "pollInterval": "1s",
        "skewWindow": "30s",
        "minAge": "0s",
        "idleWindow": "1m",
        "maxVersions": "3",
    })
}
/// How often the demo runs the reconciler (every 5 minutes and on ECS events in AWS).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// The exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let keep = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => false,
        [flag] if flag == "--keep" => true,
        _ => {
            eprintln!("usage: demo [--keep]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(demo(keep)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(keep: bool) -> Result<ExitCode, String> {
    // The hooks log JSON to the function processes' output; keep this process's own quiet.
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("RUST_LOG", "off") };
    // From here on Ctrl-C stops the world cleanly, whatever it is doing.
    let mut console = Console::stdin()?;
    let started = Instant::now();
    println!(
        "skewguard demo: deploying {A} (cart schema v1) -> {B} (v2, breaking) -> {C} (v3) -> {D} (v3)"
    );
    println!(
        "starting the local AWS world (moto, ECS emulator, Lambda runtime, ALB data plane)..."
    );
    let tabs_open = Arc::new(AtomicBool::new(true));
    let open = tabs_open.clone();
    let start = LiveWorld::start(|_, traffic| Some(timeline(started, traffic, open)));
    let Some(live) = console.unless_stopped(start).await.transpose()? else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    let scripted = async {
        let service = live.service(SERVICE, A, "v1", settings()).await;
        println!(
            "service {SERVICE} runs {A}; retention: service, maxVersions 3, idleWindow 1m, minAge 0s\n"
        );
        script(&live, &service, started)
            .await
            .map(|clean| (service, clean))
    };
    let Some(scripted) = console.unless_stopped(scripted).await else {
        return Ok(stopped(live));
    };
    let (service, clean) = scripted?;
    if !keep {
        return Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    tabs_open.store(false, Ordering::SeqCst);
    print_connection(&live);
    kept(&live, &service, &mut console).await;
    if console.stopped() == Some(Stop::Signal) {
        return Ok(stopped(live));
    }
    if let Some(stop) = console.stopped() {
        println!("stopping the local world ({stop})");
    }
    let violations = live.world.checker.found();
    for v in &violations {
        println!("INVARIANT VIOLATED {v}");
    }
    drop(live);
    Ok(if clean && violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the commands until the console stops. One deployment runs at a time, and the other
/// commands are answered while it does.
async fn kept(live: &LiveWorld, service: &str, console: &mut Console) {
    type Deployment<'a> = Pin<Box<dyn Future<Output = (String, Result<Outcome, String>)> + 'a>>;
    let mut running: Option<Deployment<'_>> = None;
    loop {
        let command = tokio::select! {
            command = console.next() => command,
            (id, outcome) = async { running.as_mut().expect("running").await },
                if running.is_some() =>
            {
                running = None;
                match outcome {
                    Ok(Outcome::Succeeded) => println!("== {id} is production"),
                    Ok(Outcome::RolledBack { reason }) => {
                        println!("== {id} rolled back: {reason}")
                    }
                    Err(e) => println!("deploying {id} failed: {e}"),
                }
                continue;
            }
        };
        let Some(command) = command else { return };
        match command {
            Ok(Command::Deploy { .. }) if running.is_some() => {
                println!("a deployment is running: deploy again once it is done");
            }
            Ok(Command::Deploy { id, schema }) => {
                println!(
                    "== deploying {id} (cart schema {schema}); the previous version is retained \
                     in a service of its own"
                );
                running = Some(Box::pin(async move {
                    let outcome = live.deploy(service, &id, &schema, Intervention::None).await;
                    (id, outcome)
                }));
            }
            Ok(Command::Status) => match console::observe(live, service).await {
                Ok(seen) => {
                    println!("rules   {}", rules_line(&seen));
                    println!("ledger  {}", ledger_line(&seen, service));
                }
                Err(e) => println!("status failed: {e}"),
            },
            Err(message) => println!("{message}"),
        }
    }
}

/// Ctrl-C: drops the world (which kills and reaps every process it started).
fn stopped(live: LiveWorld) -> ExitCode {
    println!("interrupted: stopping the local world");
    drop(live);
    ExitCode::from(INTERRUPTED)
}

/// The scripted deployments with tabs calling throughout, and their summary: whether no tab saw
/// a skewed answer or an error, every pinned tab was served by its own version until it closed,
/// the retirements happened, and no invariant broke.
async fn script(live: &LiveWorld, service: &str, started: Instant) -> Result<bool, String> {
    live.open_tab(&format!("tab {A} v1"), service, Some(A), Some("v1"));
    live.open_tab("visitor (no pin)", service, None, None);

    for (id, schema) in [(B, "v2"), (C, "v3"), (D, "v3")] {
        println!("== deploying {id} (cart schema {schema})");
        let deployed = Instant::now();
        let outcome = live.deploy(service, id, schema, Intervention::None).await?;
        if outcome != Outcome::Succeeded {
            return Err(format!("deploying {id}: {outcome:?}"));
        }
        println!(
            "== {id} is production after {:.1}s; a new tab loads its frontend\n",
            deployed.elapsed().as_secs_f64()
        );
        live.open_tab(
            &format!("tab {id} {schema}"),
            service,
            Some(id),
            Some(schema),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retained = retained(live, service).await?;
    println!("== {D} is production; retained, each in a service of its own:");
    for line in &retained {
        println!("   {line}");
    }
    let mut ok = retained.len() == 3;
    let served: Vec<String> = live
        .traffic
        .counters()
        .iter()
        .filter(|(tab, _)| tab.pin.is_some())
        .map(|(tab, c)| format!("{}: {} own", tab.name, c.own))
        .collect();
    println!("   tabs now: {}\n", served.join(" | "));

    // Revoke B (`skewguard revoke shop/checkout B`): its tab is closed first, as a kill switch
    // for a broken version would leave its tabs to reload.
    live.traffic.close(&format!("tab {B} v2"));
    println!("== closing the {B} tab; skewguard revoke {CLUSTER}/{SERVICE} {B}");
    let revoked = revoke(live, service, B).await?;
    println!("   {revoked}\n");
    ok &= revoked.starts_with("retired");

    // A's tab closes: after a quiet minute on two checks 30 s apart, the reconciler retires A.
    live.traffic.close(&format!("tab {A} v1"));
    println!(
        "== closing the {A} tab; the reconciler runs every {}s and retires {A} once its target group has seen no request for a minute on two checks",
        RECONCILE_EVERY.as_secs()
    );
    let idle = until_idle(live, service, A, started).await?;
    println!("   {idle}\n");
    ok &= idle.starts_with("retired");

    tokio::time::sleep(Duration::from_secs(1)).await;
    live.traffic.stop().await;

    println!(
        "per tab (own = served by its version; fell back = served by another once its version was gone):"
    );
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
        // Every tab was closed before its version retired: each answer came from its own.
        ok &= c.own == c.requests && c.requests > 0;
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
    Ok(ok && skewed == 0 && errors == 0 && violations.is_empty() && requests > 0)
}

/// One line per retained version: its copy's service, target group, tasks.
async fn retained(live: &LiveWorld, service: &str) -> Result<Vec<String>, String> {
    let entries = live
        .world
        .ledger()
        .load(service)
        .await
        .map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter(|e| e.status == Status::Retained)
        .filter_map(|e| {
            let copy = e.retention.as_ref()?;
            Some(format!(
                "{} -> service {} ({} task), target group {}",
                e.deployment_id,
                copy.service_name,
                copy.tasks,
                short_arn(&e.target_group_arn)
            ))
        })
        .collect())
}

/// Retires `id` now, as `skewguard revoke` does; answers what happened.
async fn revoke(live: &LiveWorld, service: &str, id: &str) -> Result<String, String> {
    let settings = resolved_settings()?;
    let options = RetireOptions {
        settings: retirer::retirement_settings(&settings),
        orders: vec![Order::Revoke(
            DeploymentId::parse(id).map_err(|e| e.to_string())?,
        )],
        idle_check: false,
        stage: "revoke".to_owned(),
        execution_id: "demo".to_owned(),
        identity: "demo".to_owned(),
    };
    let report = retirer::retire_service(&live.world.hook_clients, service, &options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match report.retirements.first() {
        Some(r) if r.done => format!("retired ({}): {}", r.reason, r.detail),
        Some(r) => format!("not retired yet ({}): {}", r.reason, r.detail),
        None => "nothing retired".to_owned(),
    })
}

/// Runs the reconciler every [`RECONCILE_EVERY`] until `id` retires (at most 4 minutes);
/// prints each idle check.
async fn until_idle(
    live: &LiveWorld,
    service: &str,
    id: &str,
    started: Instant,
) -> Result<String, String> {
    let options = ReconcileOptions {
        defaults: EnvDefaults::default(),
        dry_run: false,
        execution_id: "demo-schedule".to_owned(),
        identity: "demo".to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let report = reconciler::reconcile_service(&live.world.hook_clients, service, &options)
            .await
            .map_err(|e| e.to_string())?;
        let Some(retirement) = report.retirement else {
            continue;
        };
        for (version, checks) in &retirement.idle_checks {
            println!(
                "{:>6.1}s  reconciler: idle check of {version}: {checks} of 2 found no request",
                started.elapsed().as_secs_f64()
            );
        }
        for note in &retirement.notes {
            println!(
                "{:>6.1}s  reconciler: {note}",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(r) = retirement
            .retirements
            .iter()
            .find(|r| r.deployment_id.as_str() == id)
        {
            return Ok(if r.done {
                format!("retired ({}): {}", r.reason, r.detail)
            } else {
                format!("not retired ({}): {}", r.reason, r.detail)
            });
        }
    }
    Ok(format!("{id} did not retire within 4 minutes"))
}

/// The demo service's settings, resolved as its hooks resolve them.
fn resolved_settings() -> Result<Settings, String> {
    Settings::resolve(
        settings().as_object().ok_or("settings are an object")?,
        &EnvDefaults::default(),
    )
    .map_err(|e| e.to_string())
}

/// What points the `skewguard` CLI and `curl` at the kept world.
fn print_connection(live: &LiveWorld) {
    let endpoints = &live.world.endpoints;
    println!("\nThe local world keeps running. In another terminal, point the CLI at it:\n");
    println!("export AWS_ENDPOINT_URL_ECS={}", endpoints.ecs);
    println!(
        "export AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2={}",
        endpoints.elbv2
    );
    println!("export AWS_ENDPOINT_URL_DYNAMODB={}", endpoints.dynamodb);
    // `status` reads the retained versions' traffic (the ALB's RequestCount) there.
    println!(
        "export AWS_ENDPOINT_URL_CLOUDWATCH={}",
        endpoints.cloudwatch
    );
    // The CLI asks STS who is calling before it changes anything (`release`).
    println!("export AWS_ENDPOINT_URL_STS={}", live.world.moto.endpoint());
    println!(
        "export AWS_ACCESS_KEY_ID={ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY} \
         AWS_REGION={REGION}"
    );
    println!("export SKEWGUARD_TABLE={TABLE}");
    println!("export LISTENER={}", live.world.alb.listener_arn);
    println!("export DEMO_URL={}", live.plane.url());
    println!("\nthen, for example:\n");
    println!("  skewguard status {CLUSTER}/{SERVICE}");
    println!(
        "  skewguard explain --listener \"$LISTENER\" --path /v2/cart --header X-Deployment-ID={C}"
    );
    println!("  curl -i -H 'X-Deployment-ID: {C}' \"$DEMO_URL/v2/cart\"");
    println!("  skewguard revoke {CLUSTER}/{SERVICE} {C}");
    println!(
        "\nHere: {USAGE} (SCHEMA is v1, v2 or v3; e.g. `deploy e5f6a7b v3`); Ctrl-C stops too."
    );
}

/// Prints each step: the listener's rules, the ledger, what must be pinned, and while the tabs
/// are open what they saw. Once they are closed (in a kept world) a step that changed nothing
/// since the one before (a post-shift hook holding, called again) is left out.
fn timeline(started: Instant, traffic: Arc<Traffic>, tabs_open: Arc<AtomicBool>) -> Timeline {
    let previous = std::sync::Mutex::new(String::new());
    Box::new(
        move |service: &str, step: &str, truths: &[ServiceTruth], seen: Option<&Observation>| {
            let name = service.rsplit('/').next().unwrap_or(service);
            let mut block = String::new();
            if let Some(seen) = seen {
                block += &format!("         rules   {}\n", rules_line(seen));
                block += &format!("         ledger  {}\n", ledger_line(seen, service));
            }
            let pinned: Vec<String> = truths
                .iter()
                .flat_map(|t| t.must_be_pinned.iter().map(|d| d.to_string()))
                .collect();
            block += &format!(
                "         pinned  {}\n",
                if pinned.is_empty() {
                    "-".to_owned()
                } else {
                    pinned.join(", ")
                }
            );
            let heading = format!("{name}  {step}");
            let tabs_open = tabs_open.load(Ordering::SeqCst);
            let unchanged = {
                let mut previous = previous.lock().expect("previous step");
                let this = format!("{heading}\n{block}");
                std::mem::replace(&mut *previous, this.clone()) == this
            };
            if unchanged && !tabs_open {
                return;
            }
            print!(
                "{:>6.1}s  {heading}\n{block}",
                started.elapsed().as_secs_f64()
            );
            if tabs_open {
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
                println!("         tabs    {}", tabs.join(" | "));
            }
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
