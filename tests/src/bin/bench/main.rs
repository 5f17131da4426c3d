//! skewguard's benchmark: drives the real release binaries of the hook functions and
//! the reconciler through the local Lambda Runtime API against the local stand-ins (moto for
//! ELBv2 and DynamoDB, the ECS emulator), and prints one table of every figure with its target,
//! its verdict and how it was measured.
//!
//! Run it with `bench/run` (builds the release binaries first). Options:
//!
//! ```text
//! --bin-dir DIR          the release binaries (default: $SKEWGUARD_BENCH_BIN_DIR, else
//!                        $CARGO_TARGET_DIR/release, else <workspace>/target/release)
//! --cold-starts N        cold starts per function (default 30)
//! --cold-deployments N   deployments with a fresh process for every invocation, by the Rust
//!                        hooks and by the Python peer (default 5)
//! --warm-deployments N   deployments with warm processes (default 5)
//! --sweep LIST           reconciler sweep sizes, e.g. 100,1000 (default), or `none`
//! --history LIST         history records per ledger entry, e.g. 5,50 (default); the first is
//!                        used while growing, the others are compared at one size
//! --history-at N         the sweep size at which they are compared (default: the smallest)
//! --hold DURATION        the hooks' skewWindow, how long post-shift holds (default 2s)
//! --modes LIST           deployment modes measured whole (default `hold,service`; a value is
//!                        passed to the hooks as the per-service `retention` setting)
//! --out FILE             also write the report here (default <target>/bench/report.md)
//! ```

mod capacity;
mod deployments;
mod hooks;
mod procfs;
mod proxy;
mod report;
mod sweep;

use skewguard_world::sweep::SweepQueue;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde_json::json;
use skewguard_core::hook::HookFunction;
use skewguard_world::aws::{Endpoints, function_env};
use skewguard_world::engine::{Intervention, Outcome, PlaceholderTasks};
use skewguard_world::moto::workspace_root;
use skewguard_world::world::{StandIns, TABLE};

use hooks::{Binaries, ColdStart, HOOKS, Metered, Peer, Record};
use proxy::CountingProxy;
use report::{Row, Verdict, mb, median, ms, op_list, percentile};
use skewguard_core::listener::Request;
use skewguard_world::ecs_emulator::service_arn as ecs_service_arn;
use skewguard_world::engine::{BoxFuture, HookRegistration, Observer, Strategy};
use skewguard_world::fixtures::{AlbFixture, create_ledger_table};
use skewguard_world::invariants::ServiceTruth;
use skewguard_world::world::{CLUSTER, InvariantChecker, World};

const SWEEP_TABLE: &str = "skewguard-sweep";
/// The Python peer's ledger table and service (a twin of the main one, on its own ALB).
const PEER_TABLE: &str = "skewguard-peer";
const PEER_SERVICE: &str = "checkout-peer";

/// The invariant checks, on every service but the Python peer's: the peer keeps its own ledger
/// table and implements only the forward path, so the world's checks do not apply to it.
struct ExceptPeer {
    checker: Arc<InvariantChecker>,
    peer_service: String,
}

impl Observer for ExceptPeer {
    fn after_step<'a>(
        &'a self,
        service: &'a str,
        step: &'a str,
        truths: Vec<ServiceTruth>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if service == self.peer_service {
                return;
            }
            let truths = truths
                .into_iter()
                .filter(|t| t.service_arn != self.peer_service)
                .collect();
            self.checker.after_step(service, step, truths).await;
        })
    }
}

/// A service of its own on a new listener (own ALB) or on `listener`, with skewguard's hooks.
#[allow(clippy::too_many_arguments)]
async fn twin_service(
    world: &World,
    clients: &skewguard_world::aws::Clients,
    vpc: &skewguard_world::fixtures::Vpc,
    name: &str,
    listener: Option<&str>,
    priority: i32,
    first_id: &str,
    settings: &serde_json::Value,
) -> Result<String, String> {
    let path = format!("/{name}/*");
    let alb = AlbFixture::with_path_rule_as_production(
        &clients.elbv2,
        vpc,
        name,
        listener,
        priority,
        &path,
    )
    .await
    .map_err(|e| format!("{name}: {e}"))?;
    let (arn, _) = world
        .service_on(
            name,
            alb,
            Request::get(&format!("/{name}/cart")),
            first_id,
            HookRegistration::skewguard(settings.clone()),
            Strategy::BlueGreen,
        )
        .await;
    Ok(arn)
}

/// A deployment ID distinct per (series, n).
fn series_id(series: u32, n: usize) -> String {
    format!("{:07x}", 0x5e_0000_u32 + series * 0x1000 + n as u32)
}

/// The Python peer's cold deployments: the same sequence as the Rust hooks' cold ones, on a
/// twin service (own ALB, own ledger table), a fresh peer process for every invocation.
async fn peer_deployments(
    o: &Options,
    world: &World,
    metered: &Metered,
    clients: &skewguard_world::aws::Clients,
    vpc: &skewguard_world::fixtures::Vpc,
    settings: &serde_json::Value,
) -> Result<(), String> {
    let service = twin_service(
        world,
        clients,
        vpc,
        PEER_SERVICE,
        None,
        100,
        &series_id(1, 0),
        settings,
    )
    .await?;
    metered
        .peer_services
        .lock()
        .expect("peer services")
        .push(service.clone());
    metered.cold.store(true, Ordering::SeqCst);
    for n in 1..=o.cold_deployments {
        metered.set_phase(n, n == 1);
        let outcome = world
            .engine
            .deploy(&service, &series_id(1, n), &[], Intervention::None)
            .await?;
        if outcome != Outcome::Succeeded {
            return Err(metered.failure(format!(
                "the peer's deployment {n} did not succeed: {outcome:?}"
            )));
        }
    }
    metered.reset().await;
    metered.cold.store(false, Ordering::SeqCst);
    Ok(())
}

/// One mode's deployments measured whole: BLUE_GREEN, CANARY, rolled back, each followed by
/// its reconciler run. The hold mode runs on the main service; another mode on a service of
/// its own with that `retention` setting.
#[allow(clippy::too_many_arguments)]
async fn mode_scenario(
    o: &Options,
    mode: &str,
    world: &World,
    metered: &Metered,
    reconciler: &skewguard_world::lambda::LocalFunction,
    log: &proxy::CallLog,
    clients: &skewguard_world::aws::Clients,
    vpc: &skewguard_world::fixtures::Vpc,
    main_service: &str,
    skew_window: std::time::Duration,
) -> Result<Vec<deployments::Measured>, String> {
    let series = 2 + o.modes.iter().position(|m| m == mode).unwrap_or(0) as u32;
    let service = if mode == "hold" {
        main_service.to_owned()
    } else {
        let details = deployments::hook_details(mode, &o.hold);
        let name = format!("mode-{mode}");
        twin_service(
            world,
            clients,
            vpc,
            &name,
            Some(&world.alb.listener_arn),
            700 + 10 * series as i32,
            &series_id(series, 0),
            &details,
        )
        .await?
    };
    let mut out = Vec::new();
    if mode != "hold" {
        // The service's first deployment under skewguard, measured apart: not a steady one.
        out.push(
            deployments::deploy_measured(
                world,
                metered,
                reconciler,
                log,
                &service,
                &series_id(series, 1),
                "first BLUE_GREEN",
                mode,
                skew_window,
            )
            .await?,
        );
    }
    for (k, kind) in ["BLUE_GREEN", "CANARY", "rolled back"]
        .into_iter()
        .enumerate()
    {
        out.push(
            deployments::deploy_measured(
                world,
                metered,
                reconciler,
                log,
                &service,
                &series_id(series, 2 + k),
                kind,
                mode,
                skew_window,
            )
            .await?,
        );
    }
    Ok(out)
}

/// Units per deployment at history 5 and 50: two twin services with the same deployments
/// behind them, histories padded through the ledger store, then one measured deployment each.
#[allow(clippy::too_many_arguments)]
async fn history_scenario(
    o: &Options,
    world: &World,
    metered: &Metered,
    reconciler: &skewguard_world::lambda::LocalFunction,
    log: &proxy::CallLog,
    clients: &skewguard_world::aws::Clients,
    vpc: &skewguard_world::fixtures::Vpc,
    skew_window: std::time::Duration,
) -> Result<Vec<deployments::Measured>, String> {
    let settings = deployments::hook_details("hold", &o.hold);
    let mut out = Vec::new();
    for (k, history) in [5usize, 50].into_iter().enumerate() {
        let series = 10 + k as u32;
        let name = format!("history{history}");
        let service = twin_service(
            world,
            clients,
            vpc,
            &name,
            Some(&world.alb.listener_arn),
            800 + 10 * k as i32,
            &series_id(series, 0),
            &settings,
        )
        .await?;
        for n in 1..=2 {
            world
                .engine
                .deploy(&service, &series_id(series, n), &[], Intervention::None)
                .await?;
        }
        deployments::pad_history(world.ledger(), &service, history).await?;
        let m = deployments::deploy_measured(
            world,
            metered,
            reconciler,
            log,
            &service,
            &series_id(series, 3),
            "history",
            "hold",
            skew_window,
        )
        .await?;
        out.push(m);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Options {
    bin_dir: PathBuf,
    cold_starts: usize,
    cold_deployments: usize,
    warm_deployments: usize,
    sweep: Vec<usize>,
    histories: Vec<usize>,
    /// The sweep size at which the longer histories are compared (default: the smallest).
    history_at: Option<usize>,
    out: PathBuf,
    /// The hooks' `skewWindow`: how long post-shift holds (polled every 250 ms).
    hold: String,
    /// Deployment modes measured whole: `hold`, and other values of the per-service
    /// `retention` setting (each on a service of its own).
    modes: Vec<String>,
    /// Only the reconciler sweep: no cold starts, deployments or zips.
    sweep_only: bool,
    /// Sweep sizes of the fleet whose services keep [`sweep::RETAINED`] retained versions.
    retained: Vec<usize>,
}

fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKEWGUARD_BENCH_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    target_dir().join("release")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

fn list(value: &str) -> Result<Vec<usize>, String> {
    if value == "none" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|n| n.trim().parse().map_err(|e| format!("{value:?}: {e}")))
        .collect()
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        bin_dir: default_bin_dir(),
        cold_starts: 30,
        cold_deployments: 5,
        warm_deployments: 5,
        sweep: vec![100, 1000, 10000],
        histories: vec![5, 50],
        history_at: None,
        out: target_dir().join("bench/report.md"),
        hold: "2s".to_owned(),
        modes: vec!["hold".to_owned(), "service".to_owned()],
        sweep_only: false,
        retained: vec![100, 1000],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bin-dir" => o.bin_dir = PathBuf::from(value()?),
            "--cold-starts" => o.cold_starts = value()?.parse().map_err(|e| format!("{e}"))?,
            "--cold-deployments" => {
                o.cold_deployments = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--warm-deployments" => {
                o.warm_deployments = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--sweep" => o.sweep = list(&value()?)?,
            "--history" => o.histories = list(&value()?)?,
            "--history-at" => o.history_at = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--out" => o.out = PathBuf::from(value()?),
            "--hold" => o.hold = value()?,
            "--modes" => o.modes = value()?.split(',').map(str::to_owned).collect(),
            "--sweep-only" => o.sweep_only = true,
            "--retained" => o.retained = list(&value()?)?,
            "-h" | "--help" => {
                return Err(
                    "usage: bench [--bin-dir DIR] [--cold-starts N] [--cold-deployments N] \
                     [--warm-deployments N] [--sweep 100,300,1000|none] [--retained 100,1000|none] [--history 5,50] \
                     [--history-at N] [--hold 2s] [--modes hold[,service]] [--sweep-only] [--out FILE]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    if o.cold_deployments == 0 {
        return Err("--cold-deployments must be at least 1 (the first deployment)".to_owned());
    }
    if o.histories.is_empty() {
        o.histories = vec![5];
    }
    if let Some(at) = o.history_at
        && !o.sweep.contains(&at)
    {
        return Err(format!(
            "--history-at {at} must be one of the --sweep sizes"
        ));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The hooks log to their own processes' output; keep this process's logging quiet.
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("RUST_LOG", "off") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&options)) {
        Ok(text) => {
            println!("{text}");
            if let Some(dir) = options.out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(&options.out, &text) {
                Ok(()) => eprintln!("report written to {}", options.out.display()),
                Err(e) => eprintln!("could not write {}: {e}", options.out.display()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress(started: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

async fn run(o: &Options) -> Result<String, String> {
    let started = Instant::now();
    let mut names: Vec<&str> = HOOKS.iter().map(|f| f.name()).collect();
    if !o.sweep.is_empty() || !o.retained.is_empty() {
        names.push("reconciler");
    }
    hooks::check_binaries(&o.bin_dir, &names)?;
    let load_before = procfs::load_average();
    progress(
        started,
        "starting the stand-ins (moto, ECS emulator) and the counting proxy",
    );
    let stand_ins = StandIns::start("/api/*").await;
    let proxy = CountingProxy::start(&stand_ins.moto.endpoint())
        .await
        .map_err(|e| format!("counting proxy: {e}"))?;
    // Only to time the ECS emulator's answers (the emulator itself counts the calls).
    let ecs_proxy = CountingProxy::start(&stand_ins.ecs.endpoint())
        .await
        .map_err(|e| format!("ECS timing proxy: {e}"))?;
    // CloudWatch is the world's own stand-in (moto does not speak its RPC v2 CBOR protocol):
    // a proxy of its own, counting into the same log.
    let cloudwatch_proxy =
        CountingProxy::start_with_log(&stand_ins.endpoints.cloudwatch, proxy.log.clone())
            .await
            .map_err(|e| format!("CloudWatch counting proxy: {e}"))?;
    // The functions reach moto only through the proxy; the bench's own checks go straight.
    let endpoints = Endpoints {
        ecs: ecs_proxy.endpoint(),
        elbv2: proxy.endpoint(),
        dynamodb: proxy.endpoint(),
        cloudwatch: cloudwatch_proxy.endpoint(),
        sqs: proxy.endpoint(),
    };
    let mut env = function_env(&endpoints);
    env.push(("SKEWGUARD_TABLE".to_owned(), TABLE.to_owned()));
    env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), "JSON".to_owned()));
    let binaries = Binaries {
        dir: o.bin_dir.clone(),
        env,
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut details = String::new();

    let ecs = stand_ins.ecs.clone();
    let moto = stand_ins.moto.endpoint();
    let (clients, vpc) = (stand_ins.clients.clone(), stand_ins.vpc.clone());
    // `--sweep-only` keeps the stand-ins for the sweep alone.
    let mut sweep_only_stand_ins = None;
    let template = deployments::template(&workspace_root())?;
    let (world, violations) = if o.sweep_only {
        sweep_only_stand_ins = Some(stand_ins);
        (None, Vec::new())
    } else {
        // 1. Cold starts.
        let mut colds: BTreeMap<&str, Vec<ColdStart>> = BTreeMap::new();
        for f in HOOKS {
            progress(
                started,
                &format!("{} cold starts of {}", o.cold_starts, f.name()),
            );
            colds.insert(
                f.name(),
                hooks::cold_starts(&binaries, f.name(), o.cold_starts, &[]).await?,
            );
        }
        // This machine keeps its CA roots as a directory of one file per certificate, which the
        // SDK's TLS setup reads file by file at every cold start; a single bundle file is cheaper.
        let bundle = [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ]
        .into_iter()
        .find(|p| Path::new(p).is_file());
        let bundle_colds = match bundle {
            Some(bundle) => {
                let f = HookFunction::PostTestTraffic;
                progress(
                    started,
                    &format!(
                        "{} cold starts of {} with SSL_CERT_FILE={bundle}",
                        o.cold_starts,
                        f.name()
                    ),
                );
                let env = [("SSL_CERT_FILE".to_owned(), bundle.to_owned())];
                Some((
                    bundle,
                    hooks::cold_starts(&binaries, f.name(), o.cold_starts, &env).await?,
                ))
            }
            None => None,
        };

        // 2. Deployments through the engine, every invocation metered.
        let peer = Peer::from_env(workspace_root().join("bench/python-peer"), PEER_TABLE);
        if let Some(p) = &peer {
            create_ledger_table(&clients.dynamodb, &p.table)
                .await
                .map_err(|e| e.to_string())?;
        }
        let metered = Arc::new(Metered::new(
            binaries.clone(),
            proxy.log.clone(),
            ecs_proxy.log.clone(),
            ecs.clone(),
            peer.clone(),
        ));
        let checker = stand_ins.checker.clone();
        let observer = Arc::new(ExceptPeer {
            checker: checker.clone(),
            peer_service: ecs_service_arn(CLUSTER, PEER_SERVICE),
        });
        let mut world =
            stand_ins.with_engine(metered.clone(), Arc::new(PlaceholderTasks), observer);
        world.engine.time_scale = 0.25;
        let settings = json!({"retention": "hold", "skewWindow": o.hold, "pollInterval": "1s"});
        let ids: Vec<String> = (0..=o.cold_deployments + o.warm_deployments + 1)
            .map(|n| format!("{:07x}", 0xa1b2c3d_u32.wrapping_add(n as u32 * 0x1111)))
            .collect();
        let (service, _) = world.service("checkout", &ids[0], settings.clone()).await;
        let total = o.cold_deployments + o.warm_deployments;
        for n in 1..=total {
            if n == o.cold_deployments + 1 && peer.is_some() {
                progress(
                    started,
                    &format!(
                        "the Python peer: {} deployments, a fresh process for every invocation",
                        o.cold_deployments
                    ),
                );
                peer_deployments(o, &world, &metered, &clients, &vpc, &settings).await?;
            }
            let cold = n <= o.cold_deployments;
            if n == o.cold_deployments + 1 {
                metered.reset().await;
            }
            metered.cold.store(cold, Ordering::SeqCst);
            metered.set_phase(n, n == 1);
            progress(
                started,
                &format!(
                    "deployment {n}/{total}: {} -> {} ({})",
                    ids[n - 1],
                    ids[n],
                    if cold {
                        "a fresh process for every invocation"
                    } else {
                        "warm processes"
                    }
                ),
            );
            let outcome = world
                .engine
                .deploy(&service, &ids[n], &[], Intervention::None)
                .await?;
            if outcome != Outcome::Succeeded {
                return Err(metered.failure(format!("deployment {n} did not succeed: {outcome:?}")));
            }
        }
        metered.set_phase(total + 1, false);
        // The reconciler refuses to start without its sweep queue, even when only ECS events reach it.
        let sweep_queue = SweepQueue::create(&clients.sqs, 3)
            .await
            .map_err(|e| e.to_string())?;
        let reconciler = binaries
            .function_with("reconciler", &[sweep_queue.env()])
            .await?;
        let skew_window = skewguard_core::settings::Settings::resolve(
            settings.as_object().ok_or("settings")?,
            &skewguard_core::settings::EnvDefaults::default(),
        )
        .map_err(|e| e.to_string())?
        .skew_window;
        let mut measured = Vec::new();
        for mode in &o.modes {
            progress(
                started,
                &format!(
                    "{mode} mode: a BLUE_GREEN, a CANARY and a rolled-back deployment, each with its reconciler run"
                ),
            );
            measured.extend(
                mode_scenario(
                    o,
                    mode,
                    &world,
                    &metered,
                    &reconciler,
                    &proxy.log,
                    &clients,
                    &vpc,
                    &service,
                    skew_window,
                )
                .await?,
            );
        }
        progress(
            started,
            "history 5 vs 50: one deployment on each of two twin services",
        );
        measured.extend(
            history_scenario(
                o,
                &world,
                &metered,
                &reconciler,
                &proxy.log,
                &clients,
                &vpc,
                skew_window,
            )
            .await?,
        );
        let violations = world.checker.found();
        let records = metered.records.lock().expect("records").clone();
        metered.reset().await;

        let (peer_records, records): (Vec<Record>, Vec<Record>) =
            records.into_iter().partition(|r| r.peer);
        // The cold-start comparison: the Rust hooks' cold deployments vs the peer's.
        let cold_pairs: Vec<Record> = records
            .iter()
            .filter(|r| r.deployment <= o.cold_deployments)
            .chain(peer_records.iter())
            .cloned()
            .collect();
        deployments::cold_start_rows(&cold_pairs, peer.is_some(), &mut rows, &mut details);
        // Only the main service's records feed the per-stage figures.
        let records: Vec<Record> = records
            .into_iter()
            .filter(|r| r.service == service)
            .collect();
        hook_rows(o, &colds, bundle_colds, &records, &mut rows, &mut details);
        deployments::rows(&measured, &template, &mut rows, &mut details);

        // 3. Zipped bootstraps.
        progress(started, "zipping the bootstraps");
        zip_rows(o, &mut rows)?;
        (Some(world), violations)
    };

    // 4. Reconciler sweep.
    let mut sweeps = Vec::new();
    if !o.sweep.is_empty() || !o.retained.is_empty() {
        let mut fleet = sweep::Fleet::new(
            clients.clone(),
            ecs.clone(),
            vpc.clone(),
            sweep::FleetKind::HOLD,
        );
        sweep::create_table(&clients.dynamodb, SWEEP_TABLE).await?;
        // The sweep queue the scheduled run fills and the batches are drawn from.
        let queue = SweepQueue::create(&clients.sqs, 3)
            .await
            .map_err(|e| e.to_string())?;
        let table_env = [
            ("SKEWGUARD_TABLE".to_owned(), SWEEP_TABLE.to_owned()),
            queue.env(),
        ];
        // The event source mapping's execution environments: the template's SweepConcurrency.
        let environments = |env: Vec<(String, String)>| {
            let binaries = &binaries;
            async move {
                let mut functions = Vec::new();
                for _ in 0..template.sweep_concurrency.max(1) {
                    functions.push(Arc::new(binaries.function_with("reconciler", &env).await?));
                }
                Ok::<_, String>(functions)
            }
        };
        let reconciler = environments(table_env.to_vec()).await?;
        let base = o.histories[0];
        let history_at = o.history_at.or(o.sweep.first().copied());
        for &size in &o.sweep {
            let seeding = Instant::now();
            progress(
                started,
                &format!(
                    "seeding {size} services × {} deployments (history {base})",
                    sweep::DEPLOYMENTS
                ),
            );
            fleet.grow_to(size, SWEEP_TABLE, base).await?;
            progress(
                started,
                &format!(
                    "seeded in {:.1}s; sweeping {size} services",
                    seeding.elapsed().as_secs_f64()
                ),
            );
            sweeps.push(sweep::sweep(&reconciler, &queue, &proxy.log, &ecs, &fleet, base).await?);
            if Some(size) != history_at {
                continue;
            }
            // The same services, with longer histories, in a table of their own.
            for &history in &o.histories[1..] {
                let table = format!("{SWEEP_TABLE}-h{history}");
                sweep::create_table(&clients.dynamodb, &table).await?;
                progress(
                    started,
                    &format!("writing {size} services' ledger with history {history}"),
                );
                fleet.copy_ledger(&table, history).await?;
                let f =
                    environments(vec![("SKEWGUARD_TABLE".to_owned(), table), queue.env()]).await?;
                progress(
                    started,
                    &format!("sweeping {size} services (history {history})"),
                );
                sweeps.push(sweep::sweep(&f, &queue, &proxy.log, &ecs, &fleet, history).await?);
            }
        }
        // Services that keep retained versions, in a ledger table of their own (a sweep
        // enqueues every service of its table).
        if !o.retained.is_empty() {
            let mut fleet = sweep::Fleet::new(
                clients.clone(),
                ecs.clone(),
                vpc.clone(),
                sweep::FleetKind::RETAINING,
            );
            let table = format!("{SWEEP_TABLE}-retaining");
            sweep::create_table(&clients.dynamodb, &table).await?;
            let f = environments(vec![
                ("SKEWGUARD_TABLE".to_owned(), table.clone()),
                queue.env(),
            ])
            .await?;
            for &size in &o.retained {
                let seeding = Instant::now();
                progress(
                    started,
                    &format!(
                        "seeding {size} services × {} deployments, {} retained versions each (history {base})",
                        sweep::DEPLOYMENTS,
                        sweep::RETAINED
                    ),
                );
                fleet.grow_to(size, &table, base).await?;
                progress(
                    started,
                    &format!(
                        "seeded in {:.1}s; sweeping {size} services with retained versions",
                        seeding.elapsed().as_secs_f64()
                    ),
                );
                sweeps.push(sweep::sweep(&f, &queue, &proxy.log, &ecs, &fleet, base).await?);
            }
        }
        sweep_rows(&sweeps, &template, &mut rows, &mut details);
        sweep_unit_rows(&sweeps, &mut rows);
    }
    drop(world);
    drop(sweep_only_stand_ins);
    let _ = moto;

    let elapsed = started.elapsed();
    let mut text = String::new();
    text.push_str("## skewguard benchmark\n\n");
    text.push_str(&format!(
        "Machine: {}. Load average (1 min) {} at the start, {} at the end. Binaries: `{}`. \
         Run took {:.0} s ({}).\n\n",
        procfs::machine(),
        load_before,
        procfs::load_average(),
        shown(&o.bin_dir),
        elapsed.as_secs_f64(),
        humantime_now()
    ));
    if !violations.is_empty() {
        text.push_str(&format!(
            "**{} invariant violations during the deployments** (numbers below are suspect):\n\n",
            violations.len()
        ));
        for v in &violations {
            text.push_str(&format!("- {v}\n"));
        }
        text.push('\n');
    }
    text.push_str(&report::table(&rows));
    text.push('\n');
    text.push_str(&details);
    Ok(text)
}

fn humantime_now() -> String {
    let now = time::OffsetDateTime::from(SystemTime::now());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Stage order for the per-stage lines.
const STAGES: [&str; 8] = [
    "TEST_TRAFFIC_SHIFT",
    "POST_TEST_TRAFFIC_SHIFT",
    "PRODUCTION_TRAFFIC_SHIFT",
    "hold: start (POST_PRODUCTION_TRAFFIC_SHIFT)",
    "hold: poll while holding",
    "hold: end (unpin, retire)",
    "rollback at TEST_TRAFFIC_SHIFT",
    "rollback at PRODUCTION_TRAFFIC_SHIFT",
];

fn stage_rank(stage: &str) -> usize {
    STAGES
        .iter()
        .position(|s| *s == stage)
        .unwrap_or(STAGES.len())
}

/// (steady-state limit, first-deployment limit, text) for a stage's AWS calls.
fn call_target(function: HookFunction, stage: &str) -> (usize, usize, &'static str) {
    match (function, stage) {
        (HookFunction::PostTestTraffic, _) => (7, 9, "≤ 7 (first deployment ≤ 9)"),
        (HookFunction::ProductionShift, _) => (5, 5, "≤ 5"),
        (HookFunction::PostShift, "hold: poll while holding") => (1, 1, "1"),
        (HookFunction::PostShift, _) => (5, 5, "≤ 5"),
    }
}

fn cpu_ms(records: &[&Record]) -> Vec<f64> {
    records.iter().map(|r| ms(r.cpu)).collect()
}

/// Calls of an invocation, as `ECS:DescribeServiceRevisions`-less operation names.
fn ops(r: &Record) -> Vec<String> {
    r.calls.iter().map(|(_, op)| op.clone()).collect()
}

fn calls_range(records: &[&Record]) -> Option<(usize, usize)> {
    let counts: Vec<usize> = records.iter().map(|r| r.calls.len()).collect();
    Some((*counts.iter().min()?, *counts.iter().max()?))
}

fn range_text((lo, hi): (usize, usize)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

fn hook_rows(
    o: &Options,
    colds: &BTreeMap<&str, Vec<ColdStart>>,
    bundle_colds: Option<(&str, Vec<ColdStart>)>,
    records: &[Record],
    rows: &mut Vec<Row>,
    details: &mut String,
) {
    // Cold start.
    for f in HOOKS {
        let samples = &colds[f.name()];
        let times: Vec<f64> = samples.iter().map(|c| ms(c.to_first_poll)).collect();
        let cpu: Vec<f64> = samples.iter().map(|c| ms(c.cpu)).collect();
        let threads = samples.iter().map(|c| c.threads).max().unwrap_or(0);
        let m = median(&times);
        rows.push(Row::new(
            "cold start: process start → first Runtime API poll",
            f.name(),
            format!(
                "median {m:.1} ms, p90 {:.1} ms (init CPU {:.1} ms, {threads} threads)",
                percentile(&times, 90.0),
                median(&cpu)
            ),
            "≤ 25 ms median",
            Verdict::of(m <= 25.0),
            format!(
                "{} spawns of the release binary by the local Lambda (config loaded, SDK clients \
                 built); spawn → first `GET /next` at the Runtime API; median, p90; 1 discarded \
                 warm-up spawn",
                o.cold_starts
            ),
        ));
    }
    if let Some((bundle, samples)) = bundle_colds {
        let times: Vec<f64> = samples.iter().map(|c| ms(c.to_first_poll)).collect();
        let cpu: Vec<f64> = samples.iter().map(|c| ms(c.cpu)).collect();
        let m = median(&times);
        rows.push(Row::new(
            "cold start: process start → first Runtime API poll",
            format!(
                "{} with `SSL_CERT_FILE={bundle}`",
                HookFunction::PostTestTraffic.name()
            ),
            format!(
                "median {m:.1} ms, p90 {:.1} ms (init CPU {:.1} ms)",
                percentile(&times, 90.0),
                median(&cpu)
            ),
            "≤ 25 ms median",
            Verdict::of(m <= 25.0),
            "the same, with the CA roots read from one bundle file instead of this machine's \
             directory of one file per certificate (as on an image that ships a bundle)",
        ));
    }
    let by_stage =
        |pred: &dyn Fn(&Record) -> bool| -> BTreeMap<(usize, String, &'static str), Vec<&Record>> {
            let mut map: BTreeMap<(usize, String, &'static str), Vec<&Record>> = BTreeMap::new();
            for r in records.iter().filter(|r| pred(r)) {
                map.entry((stage_rank(&r.stage), r.stage.clone(), r.function.name()))
                    .or_default()
                    .push(r);
            }
            map
        };
    // First invocation after a cold start: CPU.
    // The stage with the highest median CPU, and every invocation's CPU, of `f`'s invocations
    // after a cold start (or warm ones).
    let worst_and_all = |f: HookFunction, after_cold_start: bool| {
        let grouped = by_stage(&|r| r.after_cold_start == after_cold_start);
        let worst = grouped
            .iter()
            .filter(|((_, _, name), _)| *name == f.name())
            .map(|((_, stage, _), rs)| (stage.clone(), median(&cpu_ms(rs))))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let all: Vec<f64> = records
            .iter()
            .filter(|r| r.function == f && r.after_cold_start == after_cold_start)
            .map(|r| ms(r.cpu))
            .collect();
        Some((worst, all))
    };
    for f in HOOKS {
        let Some((worst, all)) = worst_and_all(f, true) else {
            continue;
        };
        rows.push(Row::new(
            "first invocation after cold start, CPU (excludes AWS waits)",
            f.name(),
            format!(
                "worst stage {:.2} ms ({}); all stages median {:.2} ms, N={}",
                worst.1,
                worst.0,
                median(&all),
                all.len()
            ),
            "≤ 10 ms",
            Verdict::of(worst.1 <= 10.0),
            format!(
                "process CPU time (Σ `/proc/<pid>/task/*/schedstat`, user+system, ns) from its \
                 first `GET /next` to its next one; every invocation of {} deployments on a \
                 fresh process; median per stage",
                o.cold_deployments
            ),
        ));
    }
    // Warm invocations: CPU.
    for f in HOOKS {
        let Some((worst, all)) = worst_and_all(f, false) else {
            continue;
        };
        rows.push(Row::new(
            "warm invocation CPU (excludes AWS waits)",
            f.name(),
            format!(
                "worst stage {:.2} ms ({}); all median {:.2} ms, p90 {:.2} ms, N={}",
                worst.1,
                worst.0,
                median(&all),
                percentile(&all, 90.0),
                all.len()
            ),
            "- (information)",
            Verdict::Info,
            format!(
                "same CPU reading, warm process; {} deployments and the deployments measured whole; median per stage",
                o.warm_deployments
            ),
        ));
    }
    // AWS calls per stage.
    let all = by_stage(&|_| true);
    for ((_, stage, name), rs) in &all {
        let function = rs[0].function;
        let (steady_max, first_max, target) = call_target(function, stage);
        let steady: Vec<&Record> = rs.iter().copied().filter(|r| !r.first_deployment).collect();
        let first: Vec<&Record> = rs.iter().copied().filter(|r| r.first_deployment).collect();
        let mut measured = Vec::new();
        let mut ok = true;
        if let Some(range) = calls_range(&steady) {
            ok &= range.1 <= steady_max;
            let sample = steady
                .iter()
                .max_by_key(|r| r.calls.len())
                .expect("non-empty");
            measured.push(format!(
                "steady {} ({})",
                range_text(range),
                op_list(&ops(sample))
            ));
        }
        if let Some(range) = calls_range(&first) {
            ok &= range.1 <= first_max;
            let sample = first
                .iter()
                .max_by_key(|r| r.calls.len())
                .expect("non-empty");
            measured.push(format!(
                "first deployment {} ({})",
                range_text(range),
                op_list(&ops(sample))
            ));
        }
        rows.push(Row::new(
            "AWS API calls per invocation",
            format!("{name}: {stage}"),
            measured.join("; "),
            target,
            Verdict::of(ok),
            "counted at the stand-ins (ECS emulator's call log; a counting proxy in front of moto \
             reading `X-Amz-Target` / `Action=`) between the start and end of each invocation; \
             invocations are sequential; steady = every deployment after the service's first",
        ));
    }
    // Peak RSS.
    for f in HOOKS {
        let peak = records
            .iter()
            .filter(|r| r.function == f)
            .map(|r| r.peak_rss)
            .chain(colds[f.name()].iter().map(|c| c.peak_rss))
            .max()
            .unwrap_or(0);
        rows.push(Row::new(
            "peak RSS per function",
            f.name(),
            format!("{:.1} MB", mb(peak)),
            "≤ 32 MB",
            Verdict::of(mb(peak) <= 32.0),
            "`VmHWM` of `/proc/<pid>/status` after every invocation; max over all its processes \
             (warm ones served 5+ deployments)",
        ));
    }

    // Per-stage detail.
    details.push_str("### Per stage\n\n");
    details.push_str(
        "| function | stage | N | AWS calls (steady / first) | CPU first after cold start, median | CPU warm, median (p90) | wall incl. local AWS, median |\n|---|---|---|---|---|---|---|\n",
    );
    for ((_, stage, name), rs) in &all {
        let steady = calls_range(
            &rs.iter()
                .copied()
                .filter(|r| !r.first_deployment)
                .collect::<Vec<_>>(),
        );
        let first = calls_range(
            &rs.iter()
                .copied()
                .filter(|r| r.first_deployment)
                .collect::<Vec<_>>(),
        );
        let cold: Vec<f64> = rs
            .iter()
            .filter(|r| r.after_cold_start)
            .map(|r| ms(r.cpu))
            .collect();
        let warm: Vec<f64> = rs
            .iter()
            .filter(|r| !r.after_cold_start)
            .map(|r| ms(r.cpu))
            .collect();
        let wall: Vec<f64> = rs.iter().map(|r| ms(r.wall)).collect();
        let fmt = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2} ms", median(v))
            }
        };
        details.push_str(&format!(
            "| {name} | {stage} | {} | {} / {} | {} | {} | {:.1} ms |\n",
            rs.len(),
            steady.map_or("-".to_owned(), range_text),
            first.map_or("-".to_owned(), range_text),
            fmt(&cold),
            if warm.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2} ms ({:.2})", median(&warm), percentile(&warm, 90.0))
            },
            median(&wall)
        ));
    }
    let answers: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.answer.clone()).or_default() += 1;
        m
    });
    let threads = records.iter().map(|r| r.threads).max().unwrap_or(0);
    let deployments = records.iter().map(|r| r.deployment).max().unwrap_or(0);
    let (user, system) = records
        .iter()
        .filter(|r| !r.after_cold_start)
        .fold((0, 0), |(u, s), r| (u + r.ticks.0, s + r.ticks.1));
    if user + system > 0 {
        details.push_str(&format!(
            "\nWarm invocations' CPU split (clock ticks summed over all of them): {:.0}% user, {:.0}% system.",
            100.0 * user as f64 / (user + system) as f64,
            100.0 * system as f64 / (user + system) as f64
        ));
    }
    details.push_str(&format!(
        "\n{} hook invocations over {deployments} deployments; answers {:?}; at most {threads} threads per hook process.\n\n",
        records.len(),
        answers
    ));
}

fn zip_rows(o: &Options, rows: &mut Vec<Row>) -> Result<(), String> {
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let lambda_dirs: Vec<PathBuf> = std::env::var_os("SKEWGUARD_BENCH_LAMBDA_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            target_dir().join("lambda"),
            target_dir().join("lambda/lambda"),
        ])
        .collect();
    for f in HOOKS {
        let release = o.bin_dir.join(f.name());
        let (zipped, raw) = zip_size(&release, &out_dir.join(format!("{}.zip", f.name())))?;
        rows.push(Row::new(
            "zipped `bootstrap`",
            format!("{} (release profile)", f.name()),
            format!("{:.2} MB ({:.2} MB unzipped)", mb(zipped), mb(raw)),
            "≤ 6 MB",
            Verdict::of(mb(zipped) <= 6.0),
            "the `cargo build --release` binary zipped as `bootstrap` (deflate, level 9, Python zipfile)",
        ));
        let lambda = lambda_dirs
            .iter()
            .map(|d| d.join(f.name()).join("bootstrap"))
            .find(|p| p.is_file());
        match lambda {
            Some(path) => {
                let (zipped, raw) = zip_size(
                    &path,
                    &out_dir.join(format!("{}-cargo-lambda.zip", f.name())),
                )?;
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or("?".to_owned(), |d| {
                        format!("{:.0} min", d.as_secs_f64() / 60.0)
                    });
                rows.push(Row::new(
                    "zipped `bootstrap`",
                    format!("{} (cargo-lambda build)", f.name()),
                    format!("{:.2} MB ({:.2} MB unzipped)", mb(zipped), mb(raw)),
                    "≤ 6 MB",
                    Verdict::of(mb(zipped) <= 6.0),
                    format!(
                        "`{}` (built {age} ago by `cargo lambda build --release`), zipped the same way",
                        shown(&path)
                    ),
                ));
            }
            None => rows.push(Row::new(
                "zipped `bootstrap`",
                format!("{} (cargo-lambda build)", f.name()),
                "not built",
                "≤ 6 MB",
                Verdict::Info,
                "run `bench/run --cargo-lambda` to build and measure it",
            )),
        }
    }
    Ok(())
}

/// A path relative to the workspace when it is inside it.
fn shown(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Zips `binary` as `bootstrap` into `out`; returns (zip size, binary size).
fn zip_size(binary: &Path, out: &Path) -> Result<(u64, u64), String> {
    const SCRIPT: &str = "import sys, zipfile\n\
        src, out = sys.argv[1], sys.argv[2]\n\
        info = zipfile.ZipInfo('bootstrap', date_time=(2026, 1, 1, 0, 0, 0))\n\
        info.external_attr = 0o100755 << 16\n\
        info.compress_type = zipfile.ZIP_DEFLATED\n\
        with zipfile.ZipFile(out, 'w') as z, open(src, 'rb') as f:\n    z.writestr(info, f.read(), compresslevel=9)\n";
    let python = ["python3", "python"]
        .into_iter()
        .map(PathBuf::from)
        .chain([workspace_root().join(".venv/bin/python")])
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or("zipping needs Python 3 (python3)")?;
    let status = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(binary)
        .arg(out)
        .status()
        .map_err(|e| format!("zipping {}: {e}", binary.display()))?;
    if !status.success() {
        return Err(format!("zipping {} failed: {status}", binary.display()));
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    };
    Ok((size(out)?, size(binary)?))
}

fn sweep_rows(
    sweeps: &[sweep::Sweep],
    template: &deployments::Template,
    rows: &mut Vec<Row>,
    details: &mut String,
) {
    let base_history = sweeps.first().map_or(0, |s| s.history);
    let growth: Vec<&sweep::Sweep> = sweeps
        .iter()
        .filter(|s| s.history == base_history)
        .collect();
    let per = |s: &sweep::Sweep, v: f64| v / s.services.max(1) as f64;
    // Growth is judged within one kind of fleet.
    let smallest_of = |s: &sweep::Sweep| growth.iter().copied().find(|b| b.retained == s.retained);
    for s in &growth {
        let per_calls = per(s, s.total_calls as f64);
        let per_cpu = per(s, ms(s.cpu));
        let per_wall = per(s, ms(s.wall));
        let linear = smallest_of(s).is_none_or(|b| {
            let bc = per(b, b.total_calls as f64);
            let bcpu = per(b, ms(b.cpu));
            (per_calls - bc).abs() <= 0.05 * bc + 0.05 && per_cpu <= 1.3 * bcpu + 0.05
        });
        rows.push(Row::new(
            "reconciler sweep",
            format!(
                "{} services × {} deployments{}, history {} ({} listeners)",
                s.services,
                sweep::DEPLOYMENTS,
                retained_note(s),
                s.history,
                s.listeners
            ),
            format!(
                "{per_calls:.2} calls/service ({} total); CPU {per_cpu:.2} ms/service; wall {per_wall:.1} ms/service ({:.1} s with {} environments, {:.0}% of their time waiting for moto); reconciled {} (of {} services, {} swept twice), repairs {}, errors {}; peak RSS {:.1} MB",
                s.total_calls,
                s.wall.as_secs_f64(),
                s.concurrency,
                100.0 * s.moto_time.as_secs_f64()
                    / (s.wall.as_secs_f64() * s.concurrency as f64).max(1e-9),
                s.reconciled,
                s.services,
                s.duplicates,
                s.repairs,
                s.errors,
                mb(s.peak_rss)
            ),
            "cost linear in services",
            // Every service swept (a message delivered twice sweeps its service twice, harmlessly).
            if s.repairs > 0 || s.errors > 0 || s.reconciled != s.services + s.duplicates {
                Verdict::Misses
            } else {
                Verdict::of(linear)
            },
            if s.retained == 0 {
                "one scheduled sweep of the warm release `reconciler` binary over a converged fleet seeded into the stand-ins (10 services per listener): the `Scheduled Event` enqueues one message per service, then the template's `SweepConcurrency` execution environments (warm processes) each receive batches of 10 from the queue at once, as the event source mapping does (wall = enqueue + until the queue is empty); calls counted at the stand-ins (SendMessageBatch included, the event source mapping's own polling not), CPU as for the hooks; linear = calls/service within 5% and CPU/service within 30% of the smallest size"
            } else {
                "〃, over a fleet (`retention: service`, a ledger table of its own) whose services each keep 3 retained versions besides the live one, as post-shift leaves them: per version a tagged retention target group, a retention service in the ECS emulator and a pin forwarding to the copy, and a `RequestCount` datapoint of 5 minutes ago in the world's CloudWatch stand-in, so every sweep's idle check reads it (GetMetricData, counted; a failed idle check fails the bench) and finds the version in use; linear as above, against the smallest fleet of this kind"
            },
        ));
    }
    let period = template.sweep_period.as_secs_f64();
    for s in &growth {
        let mut batches = s.batch_wall.clone();
        batches.sort();
        let batch_ms = |q: f64| {
            batches
                .get(((batches.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |d| ms(*d))
        };
        let moto_calls: usize = s
            .calls
            .iter()
            .filter(|(op, _)| s.moto_by_op.contains_key(*op))
            .map(|(_, n)| n)
            .sum();
        rows.push(Row::new(
            "reconciler sweep: wall time vs the schedule",
            format!(
                "{} services{}, {} environments at once",
                s.services,
                retained_note(s),
                s.concurrency
            ),
            format!(
                "{:.1} s ({:.0}% of the {:.0} s period): enqueue {:.1} s, then {} batches of 10, median {:.0} ms, p90 {:.0} ms each ({:.0} ms of batch time per AWS call; moto took {:.0} ms per ELBv2 and DynamoDB call to answer, the environments' calls queueing there); {} services swept twice ({} of them one message received twice)",
                s.wall.as_secs_f64(),
                100.0 * s.wall.as_secs_f64() / period,
                period,
                s.enqueue.as_secs_f64(),
                s.batches,
                batch_ms(0.5),
                batch_ms(0.9),
                ms(s.batch_wall.iter().sum::<std::time::Duration>()) / s.total_calls.max(1) as f64,
                ms(s.moto_time) / moto_calls.max(1) as f64,
                s.duplicates,
                s.redelivered
            ),
            &format!("within the {:.0}-minute schedule", period / 60.0),
            Verdict::of(
                s.wall <= template.sweep_period
                    && s.reconciled == s.services + s.duplicates
                    && s.errors == 0,
            ),
            format!(
                "the sweeps above: from the `Scheduled Event`'s hand-over until the queue is empty (no message visible or in flight), the `SweepConcurrency` default of infra/template.yaml ({}) environments polling at once, each batch's failed messages received again after {} s (the template's 30 min shortened); period = the `ReconcileSchedule` default; batch time per AWS call = the batches' invocation time / the sweep's calls (ECS emulator's included); moto's = the mean time from a call's arrival at the counting proxy to moto's answer, over its ELBv2 and DynamoDB calls",
                template.sweep_concurrency,
                sweep::VISIBILITY.as_secs()
            ),
        ));
    }
    for s in sweeps.iter().filter(|s| s.history != base_history) {
        if let Some(base) = growth
            .iter()
            .find(|b| b.services == s.services && b.retained == s.retained)
        {
            let bc = per(base, base.total_calls as f64);
            let c = per(s, s.total_calls as f64);
            let bcpu = per(base, ms(base.cpu));
            let cpu = per(s, ms(s.cpu));
            // DynamoDB units have rows of their own (sweep_unit_rows).
            let independent = (c - bc).abs() <= 0.05 * bc && cpu <= 1.3 * bcpu + 0.05;
            rows.push(Row::new(
                "reconciler sweep",
                format!(
                    "{} services, history {} vs {}",
                    s.services, s.history, base.history
                ),
                format!(
                    "{c:.2} vs {bc:.2} calls/service; CPU {cpu:.2} vs {bcpu:.2} ms/service; wall {:.1} vs {:.1} ms/service ({} vs {} bytes of ledger per service)",
                    per(s, ms(s.wall)),
                    per(base, ms(base.wall)),
                    s.ledger_bytes,
                    base.ledger_bytes
                ),
                "independent of history length",
                Verdict::of(independent),
                "the same fleet and sweep, ledger items rewritten with longer histories; independent = calls/service within 5% and CPU/service within 30%",
            ));
        }
    }
    details.push_str("### Reconciler sweeps: calls by operation\n\n| services | retained versions each | history | calls by operation (moto's answer time per call) | read / write units |\n|---|---|---|---|---|\n");
    for s in sweeps {
        let ops: Vec<String> = s
            .calls
            .iter()
            .map(|(op, n)| match s.moto_by_op.get(op) {
                Some(t) => format!("{op} {n} ({:.1} ms)", ms(*t) / *n as f64),
                None => format!("{op} {n}"),
            })
            .collect();
        details.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} / {:.0} |\n",
            s.services,
            s.retained,
            s.history,
            ops.join(", "),
            s.units.read,
            s.units.write
        ));
    }
    details.push('\n');
}

/// ", 3 retained versions each" for a fleet that keeps retained versions, else nothing.
fn retained_note(s: &sweep::Sweep) -> String {
    if s.retained == 0 {
        String::new()
    } else {
        format!(", {} retained versions each", s.retained)
    }
}

/// DynamoDB units per sweep: per service as the fleet grows (linear), and with longer
/// histories at one size (equal within 10 %).
fn sweep_unit_rows(sweeps: &[sweep::Sweep], rows: &mut Vec<Row>) {
    const FIGURE: &str = "DynamoDB capacity units per reconciler sweep";
    let base_history = sweeps.first().map_or(0, |s| s.history);
    let growth: Vec<&sweep::Sweep> = sweeps
        .iter()
        .filter(|s| s.history == base_history)
        .collect();
    let per = |s: &sweep::Sweep, v: f64| v / s.services.max(1) as f64;
    let complete = |s: &sweep::Sweep| {
        if s.units_complete {
            ""
        } else {
            " (some calls not priced)"
        }
    };
    let smallest_of = |s: &sweep::Sweep| growth.iter().copied().find(|b| b.retained == s.retained);
    for s in &growth {
        let (r, w) = (per(s, s.units.read), per(s, s.units.write));
        let linear = smallest_of(s).is_none_or(|b| {
            let (br, bw) = (per(b, b.units.read), per(b, b.units.write));
            (r - br).abs() <= 0.1 * br && (w - bw).abs() <= 0.1 * bw.max(1.0)
        });
        rows.push(Row::new(
            FIGURE,
            format!(
                "{} services{}, history {}",
                s.services,
                retained_note(s),
                s.history
            ),
            format!(
                "{:.1} read, {:.0} write units per sweep; {r:.2} read units per service{}",
                s.units.read,
                s.units.write,
                complete(s)
            ),
            "linear in services",
            Verdict::of(linear && s.units_complete),
            format!(
                "the sweeps above; {}; linear = units per service within 10% of the smallest fleet's",
                deployments::UNITS_METHOD
            ),
        ));
    }
    for s in sweeps.iter().filter(|s| s.history != base_history) {
        if let Some(base) = growth
            .iter()
            .find(|b| b.services == s.services && b.retained == s.retained)
        {
            let equal = (s.units.read - base.units.read).abs()
                <= 0.1 * s.units.read.max(base.units.read)
                && (s.units.write - base.units.write).abs()
                    <= 0.1 * s.units.write.max(base.units.write);
            rows.push(Row::new(
                FIGURE,
                format!(
                    "{} services, history {} vs {}",
                    s.services, s.history, base.history
                ),
                format!(
                    "{:.1} vs {:.1} read, {:.0} vs {:.0} write units per sweep{}",
                    s.units.read,
                    base.units.read,
                    s.units.write,
                    base.units.write,
                    complete(s)
                ),
                "equal within 10 %",
                Verdict::of(equal && s.units_complete && base.units_complete),
                "〃",
            ));
        }
    }
}
