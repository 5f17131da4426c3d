//! Whole deployments as a bill: the billed Lambda time and DynamoDB units of a BLUE_GREEN, a
//! CANARY and a rolled-back deployment (every hook invocation and the reconciler run the
//! deployment's end triggers), how long skewguard holds a deployment open, and the same units
//! with short and long ledger histories. Each mode (`hold`, and modes added later as a
//! per-service `retention` setting) runs the same deployments on a service with that setting.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::aws::ledger_store::LedgerStore;
use skewguard_core::event::LifecycleStage;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::HistoryRecord;
use skewguard_core::stages::Change;
use skewguard_world::engine::{Intervention, Outcome, Strategy};
use skewguard_world::lambda::LocalFunction;
use skewguard_world::world::World;

use crate::capacity::Units;
use crate::hooks::{Metered, Record, metering_of, units_of};
use crate::proxy::{Call, CallLog};
use crate::report::{Row, Verdict, median, ms};

/// Lambda list prices, us-East (N. Virginia), first pricing tier, as published on
/// <https://aws.amazon.com/lambda/pricing/> (unchanged since arm64 launched in 2021; read
/// 2026-11-29): per GB-second of duration, and per request.
const POLL: &str = "hold: poll while holding";

pub const PRICE_SOURCE: &str = "AWS Lambda pricing page (aws.amazon.com/lambda/pricing), us-east-1, first tier, as of 2026-11-29: x86_64 $0.0000166667 and arm64 $0.0000133334 per GB-s, $0.20 per million requests";
pub fn gb_second_price(architecture: &str) -> f64 {
    if architecture == "arm64" {
        0.000_013_333_4
    } else {
        0.000_016_666_7
    }
}
pub const REQUEST_PRICE: f64 = 0.20 / 1_000_000.0;

/// What the SAM template gives the functions: memory (MB) and the default architecture.
#[derive(Debug, Clone)]
pub struct Template {
    pub memory_mb: u64,
    pub architecture: String,
    /// The `SweepConcurrency` parameter's default: the sweep queue's event source mapping's
    /// `MaximumConcurrency`.
    pub sweep_concurrency: usize,
    /// The `ReconcileSchedule` parameter's default (`rate(N minutes)`) as a period.
    pub sweep_period: Duration,
}

/// Reads `MemorySize` (the `Globals` one; the functions do not override it) and the
/// `Architecture`, `SweepConcurrency` and `ReconcileSchedule` parameters' defaults from infra/template.yaml.
pub fn template(root: &Path) -> Result<Template, String> {
    let path = root.join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sizes: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MemorySize:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let memory_mb = match sizes.as_slice() {
        [one] => *one,
        other => {
            return Err(format!(
                "infra/template.yaml: expected one MemorySize, found {other:?}"
            ));
        }
    };
    let default_of = |parameter: &str| {
        text.lines()
            .skip_while(|l| l.trim() != format!("{parameter}:"))
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Default:")
                    .map(|v| v.trim().to_owned())
            })
            .ok_or(format!(
                "infra/template.yaml: no {parameter} parameter default"
            ))
    };
    let architecture = default_of("Architecture")?;
    let sweep_concurrency = default_of("SweepConcurrency")?
        .parse()
        .map_err(|e| format!("infra/template.yaml: SweepConcurrency: {e}"))?;
    let schedule = default_of("ReconcileSchedule")?;
    let minutes: u64 = schedule
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(" minutes)"))
        .and_then(|n| n.parse().ok())
        .ok_or(format!(
            "infra/template.yaml: ReconcileSchedule {schedule:?} is not rate(N minutes)"
        ))?;
    Ok(Template {
        memory_mb,
        architecture,
        sweep_concurrency,
        sweep_period: Duration::from_secs(60 * minutes),
    })
}

/// Lambda bills each invocation's duration rounded up to the millisecond.
pub fn billed_ms(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000) as u64
}

/// One reconciler run: what it cost.
#[derive(Debug, Clone)]
pub struct ReconcilerRun {
    pub wall: Duration,
    /// Its AWS calls by operation (`DynamoDB:Query`, …).
    pub ops: BTreeMap<String, usize>,
    /// Retained versions its retirement took down.
    pub retirements: usize,
    pub units: Units,
    pub units_complete: bool,
    pub calls: usize,
    pub repairs: usize,
}

/// The run the end of a deployment triggers (EventBridge, `ECS Deployment State Change`).
pub async fn reconcile_after(
    reconciler: &LocalFunction,
    log: &CallLog,
    ecs_log: &CallLog,
    service_arn: &str,
    failed: bool,
) -> Result<ReconcilerRun, String> {
    let timeout = Duration::from_secs(300);
    reconciler
        .prewarm(timeout)
        .await
        .map_err(|e| format!("reconciler cold start: {e}"))?;
    let mark = log.len();
    let ecs_mark = ecs_log.len();
    let (event_type, name) = if failed {
        ("ERROR", "SERVICE_DEPLOYMENT_FAILED")
    } else {
        ("INFO", "SERVICE_DEPLOYMENT_COMPLETED")
    };
    let event = json!({
        "version": "0",
        "id": "7d0c1e5a-0000-4000-8000-000000000002",
        "source": "aws.ecs",
        "detail-type": "ECS Deployment State Change",
        "resources": [service_arn],
        "detail": {"eventType": event_type, "eventName": name, "deploymentId": "ecs-svc/bench"},
    });
    let started = Instant::now();
    let answer = reconciler
        .invoke(event, timeout)
        .await
        .map_err(|e| format!("reconciler run: {e}"))?;
    let wall = started.elapsed();
    let logged = log.logged_since(mark);
    let ecs_logged = ecs_log.logged_since(ecs_mark);
    let (units, units_complete) = units_of(&logged);
    let repairs = answer
        .get("services")
        .and_then(Value::as_array)
        .map_or(0, |s| {
            s.iter()
                .map(|r| {
                    r.get("repairs")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                })
                .sum()
        });
    let retirements = answer
        .get("services")
        .and_then(Value::as_array)
        .map_or(0, |s| {
            s.iter()
                .filter_map(|r| {
                    r.pointer("/retirement/retirements")
                        .and_then(Value::as_array)
                })
                .map(|r| r.iter().filter(|x| x["done"] == json!(true)).count())
                .sum()
        });
    Ok(ReconcilerRun {
        wall: wall.saturating_sub(metering_of(&logged)),
        ops: by_operation(logged.iter().chain(&ecs_logged).map(|c| &c.call)),
        retirements,
        units,
        units_complete,
        calls: logged.len() + ecs_logged.len(),
        repairs,
    })
}

/// One measured deployment.
#[derive(Debug, Clone)]
pub struct Measured {
    pub mode: String,
    pub kind: &'static str,
    pub records: Vec<Record>,
    pub reconciler: ReconcilerRun,
    pub skew_window: Duration,
    /// Entries the service's ledger held when the deployment started, and their history
    /// records (the most any entry had).
    pub entries: usize,
    pub history: usize,
}

impl Measured {
    pub fn invocations(&self) -> usize {
        self.records.len() + 1
    }

    pub fn billed_ms(&self) -> u64 {
        self.records.iter().map(|r| billed_ms(r.wall)).sum::<u64>()
            + billed_ms(self.reconciler.wall)
    }

    pub fn units(&self) -> (Units, bool) {
        let mut units = self.reconciler.units;
        let mut complete = self.reconciler.units_complete;
        for r in &self.records {
            units += r.units;
            complete &= r.units_complete;
        }
        (units, complete)
    }

    /// The post-shift hold: its first call's start to its last call's end.
    pub fn hold(&self) -> Option<(Duration, usize)> {
        let post: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.function == HookFunction::PostShift)
            .collect();
        let first = post.first()?;
        let last = post.last()?;
        Some((
            (last.started + last.wall).saturating_duration_since(first.started),
            post.len(),
        ))
    }

    /// Units of the deployment without its holding polls, and the median units of one poll
    /// (how many polls a hold makes depends on the window and `pollInterval`, not on the ledger).
    pub fn units_split(&self) -> (Units, Option<Units>) {
        let mut fixed = self.reconciler.units;
        let mut polls: Vec<Units> = Vec::new();
        for r in &self.records {
            if r.stage == POLL {
                polls.push(r.units);
            } else {
                fixed += r.units;
            }
        }
        let poll = (!polls.is_empty()).then(|| Units {
            read: median(&polls.iter().map(|u| u.read).collect::<Vec<_>>()),
            write: median(&polls.iter().map(|u| u.write).collect::<Vec<_>>()),
        });
        (fixed, poll)
    }

    /// Median billed time of a holding poll, when there was one.
    pub fn poll_ms(&self) -> Option<f64> {
        let polls: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.stage == "hold: poll while holding")
            .map(|r| billed_ms(r.wall) as f64)
            .collect();
        (!polls.is_empty()).then(|| median(&polls))
    }
}

/// A deployment mode: `hold`, or another value of the per-service `retention` setting, which
/// is passed to the hooks as such. `service` keeps one retained version (`maxVersions: 1`), so
/// from the second deployment on each one retires a version as it retains one: the steady
/// state of a service at its cap, and what the retirement rows measure.
pub fn hook_details(mode: &str, hold: &str) -> Value {
    let mut details = json!({"retention": "hold", "skewWindow": hold, "pollInterval": "1s"});
    if mode != "hold" {
        details["retention"] = json!(mode);
    }
    if mode == "service" {
        details["maxVersions"] = json!("1");
    }
    details
}

/// Calls counted by operation, as `ECS:CreateService`.
pub fn by_operation<'a>(calls: impl Iterator<Item = &'a Call>) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for (service, op) in calls {
        // The ECS proxy logs the JSON protocol's target prefix.
        let service = match service.as_str() {
            "AmazonEC2ContainerServiceV20141113" => "ECS",
            other => other,
        };
        *ops.entry(format!("{service}:{op}")).or_insert(0) += 1;
    }
    ops
}

/// `ECS:CreateService ×2, …`, and the total.
pub fn ops_text(ops: &BTreeMap<String, usize>) -> String {
    let total: usize = ops.values().sum();
    let list: Vec<String> = ops
        .iter()
        .map(|(op, n)| {
            if *n == 1 {
                op.clone()
            } else {
                format!("{op} ×{n}")
            }
        })
        .collect();
    format!("{total} calls: {}", list.join(", "))
}

/// Entries of a service and the most history records any of them has (through the store's own
/// reads, so whatever the ledger's layout).
pub async fn ledger_shape(
    ledger: &LedgerStore,
    service_arn: &str,
) -> Result<(usize, usize), String> {
    let entries = ledger
        .load_with_archive(service_arn)
        .await
        .map_err(|e| e.to_string())?;
    let mut most = 0;
    for e in &entries {
        let h = ledger
            .history(service_arn, &e.deployment_id)
            .await
            .map_err(|e| e.to_string())?;
        most = most.max(h.len());
    }
    Ok((entries.len(), most))
}

/// Appends records to every entry of the service until each has `records` (through the
/// store's own conditional commit, so whatever the ledger's layout).
pub async fn pad_history(
    ledger: &LedgerStore,
    service_arn: &str,
    records: usize,
) -> Result<(), String> {
    let entries = ledger.load(service_arn).await.map_err(|e| e.to_string())?;
    for mut entry in entries {
        let id: DeploymentId = entry.deployment_id.clone();
        let have = ledger
            .history(service_arn, &id)
            .await
            .map_err(|e| e.to_string())?
            .len();
        for n in have..records {
            let history = HistoryRecord {
                at: entry.updated_at,
                stage: "POST_PRODUCTION_TRAFFIC_SHIFT".to_owned(),
                execution_id: format!("{n:08x}-5c1e-4b7a-9d3f-000000000000"),
                actor: String::new(),
                change: "live -> draining: superseded by a newer deployment; pinned until the skew window ends".to_owned(),
            };
            ledger
                .commit(&[Change {
                    expected_version: entry.version,
                    entry: entry.clone(),
                    history,
                }])
                .await
                .map_err(|e| format!("padding the history of {id}: {e}"))?;
            entry.version += 1;
        }
    }
    Ok(())
}

/// Runs one deployment of `kind` on warm processes and the reconciler run it triggers.
#[allow(clippy::too_many_arguments)]
pub async fn deploy_measured(
    world: &World,
    metered: &Metered,
    reconciler: &LocalFunction,
    log: &CallLog,
    service: &str,
    id: &str,
    kind: &'static str,
    mode: &str,
    skew_window: Duration,
) -> Result<Measured, String> {
    let (entries, history) = ledger_shape(world.ledger(), service).await?;
    let strategy = match kind {
        "CANARY" => Strategy::Canary(10.0),
        _ => Strategy::BlueGreen,
    };
    world.engine.set_strategy(service, strategy).await?;
    let intervention = if kind == "rolled back" {
        Intervention::StopAt(LifecycleStage::PostProductionTrafficShift)
    } else {
        Intervention::None
    };
    let mark = metered.records.lock().expect("records").len();
    let outcome = world.engine.deploy(service, id, &[], intervention).await?;
    world
        .engine
        .set_strategy(service, Strategy::BlueGreen)
        .await?;
    let expected = kind == "rolled back";
    if matches!(outcome, Outcome::RolledBack { .. }) != expected {
        return Err(metered.failure(format!("the {kind} deployment ended {outcome:?}")));
    }
    let records = metered.records.lock().expect("records")[mark..].to_vec();
    let reconciler = reconcile_after(reconciler, log, metered.ecs_log(), service, expected).await?;
    Ok(Measured {
        mode: mode.to_owned(),
        kind,
        records,
        reconciler,
        skew_window,
        entries,
        history,
    })
}

/// The rows: billed time and cost, how long the deployment is held open, units per deployment.
pub fn rows(runs: &[Measured], t: &Template, rows: &mut Vec<Row>, details: &mut String) {
    let gb = t.memory_mb as f64 / 1024.0;
    let price = gb_second_price(&t.architecture);
    for m in runs.iter().filter(|m| m.kind != "history") {
        let billed = m.billed_ms();
        let cost = billed as f64 / 1000.0 * gb * price + m.invocations() as f64 * REQUEST_PRICE;
        let waited: Duration = m.records.iter().map(|r| r.aws_wait).sum();
        let hook_wall: Duration = m.records.iter().map(|r| r.wall).sum();
        let (hold, _) = m.hold().unwrap_or_default();
        let polls = m
            .records
            .iter()
            .filter(|r| r.stage == "hold: poll while holding")
            .count();
        let hook_ms: u64 = m.records.iter().map(|r| billed_ms(r.wall)).sum();
        // At the template's defaults (skewWindow 1h, pollInterval 60 s) the hold polls once a
        // minute: the same deployment with 60 holding polls instead of the ones measured here.
        let extrapolated = m.poll_ms().map(|poll| {
            let measured_polls = m
                .records
                .iter()
                .filter(|r| r.stage == "hold: poll while holding")
                .count() as f64;
            billed as f64 + (60.0 - measured_polls) * poll
        });
        rows.push(Row::new(
            "billed Lambda time per deployment",
            format!("{} deployment, {} mode", m.kind, m.mode),
            format!(
                "{billed} ms over {} invocations (hooks {hook_ms} ms, {:.0}% of it waiting for the stand-ins; reconciler {} ms) × {} MB = {:.3} GB-s, ${:.7} ({} holding polls in a {:.1} s hold){}",
                m.invocations(),
                100.0 * ms(waited) / ms(hook_wall).max(1e-9),
                billed_ms(m.reconciler.wall),
                t.memory_mb,
                billed as f64 / 1000.0 * gb,
                cost,
                polls,
                hold.as_secs_f64(),
                extrapolated.map_or(String::new(), |e| format!(
                    "; with the template's default 1 h window polled every 60 s: ≈ {:.0} ms, ${:.7}",
                    e,
                    e / 1000.0 * gb * price + (m.invocations() as f64 + 60.0) * REQUEST_PRICE
                ))
            ),
            "-",
            Verdict::Info,
            format!(
                "every hook invocation of the deployment (warm processes) and the reconciler run its end triggers (`ECS Deployment State Change`), each duration from the event's hand-over to the answer at the local Runtime API, the counting proxy's own metering taken out, rounded up to 1 ms as Lambda bills; × `MemorySize` {} MB of infra/template.yaml, {} (the template's default `Architecture`); {PRICE_SOURCE}; the hooks' `skewWindow` here is {:.0} s, `pollInterval` 1 s",
                t.memory_mb,
                t.architecture,
                m.skew_window.as_secs_f64()
            ),
        ));
    }
    for m in runs.iter().filter(|m| m.kind != "history") {
        let Some((hold, calls)) = m.hold() else {
            continue;
        };
        let others: Duration = m
            .records
            .iter()
            .filter(|r| r.function != HookFunction::PostShift)
            .map(|r| r.wall)
            .sum();
        if m.mode == "service" {
            rows.push(Row::new(
                "deployment held open beyond what ECS needs",
                format!("{} deployment, service mode: until the retained copy is healthy", m.kind),
                format!(
                    "post-shift {:.2} s from its first call to its last answer ({calls} calls; skew window {:.0} s not waited); other hook invocations {:.0} ms in all",
                    hold.as_secs_f64(),
                    m.skew_window.as_secs_f64(),
                    ms(others)
                ),
                "-",
                Verdict::Info,
                "as the hold rows, in the same run: post-shift's first POST_PRODUCTION_TRAFFIC_SHIFT call's start to the end of its last, here the time it takes to clone blue into a retention service and see it healthy; the bench world's plain services run their tasks through the local scheduler (tests/src/scheduler.rs), whose placeholder tasks register healthy at once, so the copy is healthy within about a second here; on AWS a Fargate task takes a minute or two to start and pass its health checks",
            ));
            continue;
        }
        let over = hold.as_secs_f64() - m.skew_window.as_secs_f64();
        rows.push(Row::new(
            "deployment held open beyond what ECS needs",
            format!("{} deployment, {} mode", m.kind, m.mode),
            format!(
                "post-shift hold {:.2} s for a {:.0} s skew window ({over:+.2} s; {calls} calls); other hook invocations {:.0} ms in all",
                hold.as_secs_f64(),
                m.skew_window.as_secs_f64(),
                ms(others)
            ),
            "-",
            Verdict::Info,
            "from the simulated deployment: the post-shift hook's first POST_PRODUCTION_TRAFFIC_SHIFT call's start to the end of its last (the answer that lets ECS go on to bake and scale blue down); ECS without skewguard goes on at once; the engine's call-back waits are scaled (×0.25) while the hooks keep real time, so the window is measured, not assumed",
        ));
    }
    retention_call_rows(runs, rows);
    for m in runs.iter().filter(|m| m.kind != "history") {
        let (units, complete) = m.units();
        let (fixed, poll) = m.units_split();
        rows.push(Row::new(
            "DynamoDB capacity units per deployment",
            format!("{} deployment, {} mode", m.kind, m.mode),
            format!(
                "{:.1} read, {:.0} write units (reconciler {:.1} / {:.0}){}; without the holding polls {:.1} / {:.0}{}; ledger: {} entries, ≤ {} history records each",
                units.read,
                units.write,
                m.reconciler.units.read,
                m.reconciler.units.write,
                if complete { "" } else { " (some calls not priced)" },
                fixed.read,
                fixed.write,
                poll.map_or(String::new(), |p| format!(", {:.1} read units per poll", p.read)),
                m.entries,
                m.history
            ),
            "-",
            Verdict::Info,
            UNITS_METHOD,
        ));
    }
    let h: Vec<&Measured> = runs.iter().filter(|m| m.kind == "history").collect();
    if let [short, long] = h.as_slice() {
        let (a, ap) = short.units_split();
        let (b, bp) = long.units_split();
        let (ap, bp) = (ap.unwrap_or_default(), bp.unwrap_or_default());
        let within = |x: f64, y: f64| (y - x).abs() <= 0.1 * x.max(y);
        let complete = short.units().1 && long.units().1;
        rows.push(Row::new(
            "DynamoDB capacity units per deployment",
            format!(
                "history {} vs {} (BLUE_GREEN; {} vs {} entries)",
                long.history, short.history, long.entries, short.entries
            ),
            format!(
                "without the holding polls {:.1} vs {:.1} read, {:.0} vs {:.0} write units; per holding poll {:.1} vs {:.1} read units",
                b.read, a.read, b.write, a.write, bp.read, ap.read
            ),
            "equal within 10 %",
            Verdict::of(
                complete
                    && within(a.read, b.read)
                    && within(a.write, b.write)
                    && within(ap.read, bp.read),
            ),
            "two twin services with the same two deployments behind them, every entry's history padded to 5 and to 50 records (the most any entry has is shown) through the ledger store's own commit, then one BLUE_GREEN deployment and its reconciler run each; units as above; the holding polls apart, since how many a hold makes depends on timing",
        ));
    }
    details.push_str("### Deployments measured whole\n\n| deployment | invocations | billed ms (hooks + reconciler) | read / write units | reconciler calls, repairs |\n|---|---|---|---|---|\n");
    for m in runs {
        let (u, _) = m.units();
        details.push_str(&format!(
            "| {} {} (history ≤ {}) | {} | {} ({} + {}) | {:.1} / {:.0} | {}, {} |\n",
            m.kind,
            m.mode,
            m.history,
            m.invocations(),
            m.billed_ms(),
            m.billed_ms() - billed_ms(m.reconciler.wall),
            billed_ms(m.reconciler.wall),
            u.read,
            u.write,
            m.reconciler.calls,
            m.reconciler.repairs
        ));
    }
    details.push('\n');
}

/// AWS calls to start a retained version (post-shift's, service mode, first and steady
/// deployment) and to retire one (the reconciler run that retired it, and what it made beyond
/// the hold mode's run of the same deployment).
fn retention_call_rows(runs: &[Measured], rows: &mut Vec<Row>) {
    const START: &str = "AWS calls to start a retained version";
    const RETIRE: &str = "AWS calls to retire a retained version";
    for m in runs
        .iter()
        .filter(|m| m.mode == "service" && m.kind.ends_with("BLUE_GREEN"))
    {
        let ops = by_operation(
            m.records
                .iter()
                .filter(|r| r.function == HookFunction::PostShift)
                .flat_map(|r| r.calls.iter()),
        );
        rows.push(Row::new(
            START,
            format!("{} deployment, service mode", m.kind),
            ops_text(&ops),
            "-",
            Verdict::Info,
            "every call the post-shift hook made in the deployment (all its invocations), counted by operation at the counting proxies in front of moto and of the ECS emulator; the first BLUE_GREEN is the service's first deployment under skewguard with `retention: service`, the other a steady one",
        ));
    }
    for m in runs
        .iter()
        .filter(|m| m.mode == "service" && m.reconciler.retirements > 0)
    {
        let extra = runs
            .iter()
            .find(|h| h.mode == "hold" && h.kind == m.kind)
            .map(|h| {
                let mut extra = BTreeMap::new();
                for (op, n) in &m.reconciler.ops {
                    let before = h.reconciler.ops.get(op).copied().unwrap_or(0);
                    if *n > before {
                        extra.insert(op.clone(), n - before);
                    }
                }
                extra
            });
        rows.push(Row::new(
            RETIRE,
            format!(
                "reconciler run after a {} deployment, service mode ({} retired)",
                m.kind, m.reconciler.retirements
            ),
            format!(
                "whole run {}{}",
                ops_text(&m.reconciler.ops),
                extra.map_or(String::new(), |e| format!(
                    "; beyond the hold mode's run after the same deployment: {}",
                    ops_text(&e)
                ))
            ),
            "-",
            Verdict::Info,
            "the reconciler run the deployment's end triggers (`ECS Deployment State Change`) on the service-mode service, which keeps `maxVersions: 1`: the deployment retained a version, so the run retires the older one (max-versions: pins moved off, retention service and target group deleted, entry final); every call of the run counted by operation at the counting proxies in front of moto and of the ECS emulator, and the difference from the hold-mode run after the same kind of deployment (what retirement adds)",
        ));
    }
}

pub const UNITS_METHOD: &str = "priced at the counting proxy as DynamoDB bills them (moto's `ConsumedCapacity` is a constant, so not used): the items each call read or wrote, read back from moto without projection or filter, 4 KB per read unit (½ eventually consistent), 1 KB per write unit, the larger of before and after, ×2 in a transaction";

/// Per-stage grouping of the cold-start comparison: (function, stage, first deployment).
pub type StageKey = (&'static str, String, bool);

/// Cold start, spawn → first answer, Rust vs the Python peer, per function and stage.
pub fn cold_start_rows(
    records: &[Record],
    peer_ran: bool,
    rows: &mut Vec<Row>,
    details: &mut String,
) {
    const FIGURE: &str = "cold start: process start → first answer, vs a Python/boto3 peer";
    let method = "every invocation of the cold deployments on a fresh process: the Rust hooks on one service, the Python peer (bench/python-peer, boto3 under awslambdaric) on a twin service in the same world; spawn → first `GET /next` plus the first invocation (event hand-over → answer); ex-AWS = minus the time the stand-ins took to answer (the union of its calls' intervals at the proxies in front of moto and of the ECS emulator); medians over the steady deployments' invocations of the stage; ratio = peer / Rust";
    if !peer_ran {
        rows.push(Row::new(
            FIGURE,
            "all hooks",
            "peer not run (bench/run installs it and sets SKEWGUARD_BENCH_PEER)",
            "Rust ≤ 10 ms median; ≥ 30× faster",
            Verdict::Info,
            method,
        ));
        return;
    }
    let mut groups: BTreeMap<(StageKey, bool), Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.init.is_some()) {
        groups
            .entry((
                (r.function.name(), r.stage.clone(), r.first_deployment),
                r.peer,
            ))
            .or_default()
            .push(r);
    }
    let total = |r: &&Record| ms(r.init.unwrap_or_default() + r.wall);
    let ex_aws = |r: &&Record| ms((r.init.unwrap_or_default() + r.wall).saturating_sub(r.aws_wait));
    details.push_str("### Cold start vs the Python peer, per stage\n\n| function | stage | deployment | N (Rust/peer) | Rust: init, total, ex-AWS | peer: init, total, ex-AWS | ratio ex-AWS (total) | calls Rust / peer |\n|---|---|---|---|---|---|---|---|\n");
    // (stage, Rust ex-AWS, peer ex-AWS, Rust total, peer total) per function.
    type Medians = (String, f64, f64, f64, f64);
    let mut by_function: BTreeMap<&str, Vec<Medians>> = BTreeMap::new();
    for ((key, peer), rust) in groups.iter().filter(|((_, peer), _)| !peer) {
        let _ = peer;
        let Some(python) = groups.get(&(key.clone(), true)) else {
            continue;
        };
        let med = |rs: &[&Record], f: &dyn Fn(&&Record) -> f64| {
            median(&rs.iter().map(f).collect::<Vec<f64>>())
        };
        let init = |r: &&Record| ms(r.init.unwrap_or_default());
        let (ri, rt, rx) = (med(rust, &init), med(rust, &total), med(rust, &ex_aws));
        let (pi, pt, px) = (
            med(python, &init),
            med(python, &total),
            med(python, &ex_aws),
        );
        let calls = |rs: &[&Record]| rs.iter().map(|r| r.calls.len()).max().unwrap_or(0);
        details.push_str(&format!(
            "| {} | {} | {} | {}/{} | {ri:.1}, {rt:.1}, {rx:.1} ms | {pi:.0}, {pt:.0}, {px:.0} ms | {:.0}× ({:.1}×) | {} / {} |\n",
            key.0,
            key.1,
            if key.2 { "first" } else { "steady" },
            rust.len(),
            python.len(),
            px / rx.max(1e-9),
            pt / rt.max(1e-9),
            calls(rust),
            calls(python)
        ));
        if !key.2 {
            by_function
                .entry(key.0)
                .or_default()
                .push((key.1.clone(), rx, px, rt, pt));
        }
    }
    details.push('\n');
    for (function, stages) in by_function {
        // The stage where Rust's cold start is slowest decides (the worst case).
        let Some((stage, rx, px, rt, pt)) = stages.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            continue;
        };
        let ratio = px / rx.max(1e-9);
        rows.push(Row::new(
            FIGURE,
            format!("{function} (slowest stage: {stage})"),
            format!(
                "Rust {rx:.1} ms vs peer {px:.0} ms ex-AWS: {ratio:.0}× faster (with the stand-ins' answer time: {rt:.1} vs {pt:.0} ms, {:.1}×)",
                pt / rt.max(1e-9)
            ),
            "Rust ≤ 10 ms median; ≥ 30× faster",
            Verdict::of(rx <= 10.0 && ratio >= 30.0),
            method,
        ));
    }
}
