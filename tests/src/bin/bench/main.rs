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
//! --cold-deployments N   deployments with a fresh process for every invocation (default 3)
//! --warm-deployments N   deployments with warm processes (default 5)
//! --sweep LIST           reconciler sweep sizes, e.g. 100,300,1000 (default), or `none`
//! --history LIST         history records per ledger entry, e.g. 5,50 (default); the first is
//!                        used while growing, the others are compared at one size
//! --history-at N         the sweep size at which they are compared (default: the smallest)
//! --hold DURATION        the hooks' skewWindow, how long post-shift holds (default 2s)
//! --out FILE             also write the report here (default <target>/bench/report.md)
//! ```

mod hooks;
mod procfs;
mod proxy;
mod report;
mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde_json::json;
use skewguard_core::event::LifecycleStage;
use skewguard_core::hook::HookFunction;
use skewguard_world::aws::{Endpoints, function_env};
use skewguard_world::engine::{Intervention, Outcome, PlaceholderTasks};
use skewguard_world::moto::workspace_root;
use skewguard_world::world::{StandIns, TABLE};

use hooks::{Binaries, ColdStart, HOOKS, Metered, Record};
use proxy::CountingProxy;
use report::{Row, Verdict, mb, median, ms, op_list, percentile};

const SWEEP_TABLE: &str = "skewguard-sweep";

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
        cold_deployments: 3,
        warm_deployments: 5,
        sweep: vec![100, 300, 1000],
        histories: vec![5, 50],
        history_at: None,
        out: target_dir().join("bench/report.md"),
        hold: "2s".to_owned(),
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
            "-h" | "--help" => {
                return Err(
                    "usage: bench [--bin-dir DIR] [--cold-starts N] [--cold-deployments N] \
                     [--warm-deployments N] [--sweep 100,300,1000|none] [--history 5,50] \
                     [--history-at N] [--hold 2s] [--out FILE]"
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
    if !o.sweep.is_empty() {
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
    // The functions reach moto only through the proxy; the bench's own checks go straight.
    let endpoints = Endpoints {
        ecs: stand_ins.ecs.endpoint(),
        elbv2: proxy.endpoint(),
        dynamodb: proxy.endpoint(),
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
    let ecs = stand_ins.ecs.clone();
    let moto = stand_ins.moto.endpoint();
    let (clients, vpc) = (stand_ins.clients.clone(), stand_ins.vpc.clone());
    let metered = Arc::new(Metered::new(
        binaries.clone(),
        proxy.log.clone(),
        ecs.clone(),
    ));
    let checker = stand_ins.checker.clone();
    let mut world = stand_ins.with_engine(metered.clone(), Arc::new(PlaceholderTasks), checker);
    world.engine.time_scale = 0.25;
    let settings = json!({"skewWindow": o.hold, "pollInterval": "1s"});
    let ids: Vec<String> = (0..=o.cold_deployments + o.warm_deployments + 1)
        .map(|n| format!("{:07x}", 0xa1b2c3d_u32.wrapping_add(n as u32 * 0x1111)))
        .collect();
    let (service, _) = world.service("checkout", &ids[0], settings).await;
    let total = o.cold_deployments + o.warm_deployments;
    for n in 1..=total {
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
            return Err(format!("deployment {n} did not succeed: {outcome:?}"));
        }
    }
    let n = total + 1;
    metered.set_phase(n, false);
    progress(
        started,
        &format!(
            "deployment {n}: {} rolled back at POST_PRODUCTION_TRAFFIC_SHIFT",
            ids[n]
        ),
    );
    let outcome = world
        .engine
        .deploy(
            &service,
            &ids[n],
            &[],
            Intervention::StopAt(LifecycleStage::PostProductionTrafficShift),
        )
        .await?;
    if !matches!(outcome, Outcome::RolledBack { .. }) {
        return Err(format!("the rollback deployment ended {outcome:?}"));
    }
    let violations = world.checker.found();
    let records = metered.records.lock().expect("records").clone();
    metered.reset().await;

    hook_rows(o, &colds, bundle_colds, &records, &mut rows, &mut details);

    // 3. Zipped bootstraps.
    progress(started, "zipping the bootstraps");
    zip_rows(o, &mut rows)?;

    // 4. Reconciler sweep.
    let mut sweeps = Vec::new();
    if !o.sweep.is_empty() {
        let mut fleet = sweep::Fleet::new(clients.clone(), ecs.clone(), vpc);
        sweep::create_table(&clients.dynamodb, SWEEP_TABLE).await?;
        let table_env = [("SKEWGUARD_TABLE".to_owned(), SWEEP_TABLE.to_owned())];
        let reconciler = binaries.function_with("reconciler", &table_env).await?;
        let base = o.histories[0];
        let history_at = o.history_at.unwrap_or(o.sweep[0]);
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
            sweeps.push(sweep::sweep(&reconciler, &proxy.log, &ecs, &fleet, base).await?);
            if size != history_at {
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
                let f = binaries
                    .function_with("reconciler", &[("SKEWGUARD_TABLE".to_owned(), table)])
                    .await?;
                progress(
                    started,
                    &format!("sweeping {size} services (history {history})"),
                );
                sweeps.push(sweep::sweep(&f, &proxy.log, &ecs, &fleet, history).await?);
            }
        }
        sweep_rows(&sweeps, &mut rows, &mut details);
    }
    drop(world);
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
            "≤ 1 ms",
            Verdict::of(worst.1 <= 1.0),
            format!(
                "same CPU reading, warm process; {} deployments + 1 rollback; median per stage",
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

fn sweep_rows(sweeps: &[sweep::Sweep], rows: &mut Vec<Row>, details: &mut String) {
    let base_history = sweeps.first().map_or(0, |s| s.history);
    let growth: Vec<&sweep::Sweep> = sweeps
        .iter()
        .filter(|s| s.history == base_history)
        .collect();
    let per = |s: &sweep::Sweep, v: f64| v / s.services.max(1) as f64;
    let smallest = growth.first().copied();
    for s in &growth {
        let per_calls = per(s, s.total_calls as f64);
        let per_cpu = per(s, ms(s.cpu));
        let per_wall = per(s, ms(s.wall));
        let linear = smallest.is_none_or(|b| {
            let bc = per(b, b.total_calls as f64);
            let bcpu = per(b, ms(b.cpu));
            (per_calls - bc).abs() <= 0.05 * bc + 0.05 && per_cpu <= 1.3 * bcpu + 0.05
        });
        rows.push(Row::new(
            "reconciler sweep",
            format!(
                "{} services × {} deployments, history {} ({} listeners)",
                s.services,
                sweep::DEPLOYMENTS,
                s.history,
                s.listeners
            ),
            format!(
                "{per_calls:.2} calls/service ({} total); CPU {per_cpu:.2} ms/service; wall {per_wall:.1} ms/service ({:.1} s, {:.0}% of it waiting for moto); repairs {}, errors {}; peak RSS {:.1} MB",
                s.total_calls,
                s.wall.as_secs_f64(),
                100.0 * s.moto_time.as_secs_f64() / s.wall.as_secs_f64().max(1e-9),
                s.repairs,
                s.errors,
                mb(s.peak_rss)
            ),
            "cost linear in services",
            if s.repairs > 0 || s.errors > 0 || s.reconciled != s.services {
                Verdict::Misses
            } else {
                Verdict::of(linear)
            },
            "one scheduled sweep (`Scheduled Event`) of the warm release `reconciler` binary over a converged fleet seeded into the stand-ins (10 services per listener); calls counted at the stand-ins, CPU as for the hooks; linear = calls/service within 5% and CPU/service within 30% of the smallest size",
        ));
    }
    for s in sweeps.iter().filter(|s| s.history != base_history) {
        if let Some(base) = growth.iter().find(|b| b.services == s.services) {
            let bc = per(base, base.total_calls as f64);
            let c = per(s, s.total_calls as f64);
            let bcpu = per(base, ms(base.cpu));
            let cpu = per(s, ms(s.cpu));
            // Cost is calls, CPU and DynamoDB read units (what a sweep is billed for).
            let independent = (c - bc).abs() <= 0.05 * bc
                && cpu <= 1.3 * bcpu + 0.05
                && s.read_units <= 1.3 * base.read_units;
            rows.push(Row::new(
                "reconciler sweep",
                format!(
                    "{} services, history {} vs {}",
                    s.services, s.history, base.history
                ),
                format!(
                    "{c:.2} vs {bc:.2} calls/service; CPU {cpu:.2} vs {bcpu:.2} ms/service; wall {:.1} vs {:.1} ms/service; est. DynamoDB read units {:.0} vs {:.0} per sweep ({} vs {} bytes of ledger per service)",
                    per(s, ms(s.wall)),
                    per(base, ms(base.wall)),
                    s.read_units,
                    base.read_units,
                    s.ledger_bytes,
                    base.ledger_bytes
                ),
                "independent of history length",
                Verdict::of(independent),
                "the same fleet and sweep, ledger items rewritten with longer histories; independent = calls/service within 5%, CPU/service within 30% and DynamoDB read units within 30%; read units estimated from item sizes (1 per 4 KB per service Query, strongly consistent; ½ per 4 KB of Scan)",
            ));
        }
    }
    details.push_str("### Reconciler sweeps: calls by operation\n\n| services | history | calls by operation (moto's answer time per call) | est. read units |\n|---|---|---|---|\n");
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
            "| {} | {} | {} | {:.0} |\n",
            s.services,
            s.history,
            ops.join(", "),
            s.read_units
        ));
    }
    details.push('\n');
}
