//! Running retirement against AWS for one service: observe (the ledger, the idle check's
//! CloudWatch measurements, the listener), decide ([`crate::retirement`]), apply (pins through
//! the one listener executor [`apply::apply`], then the copy's service and target group), and
//! commit (conditional ledger writes through [`crate::aws::ledger_store::LedgerStore::commit`]).
//! Used by the reconciler (schedule and ECS events) and by `skewguard revoke` / `cutoff`.
//!
//! Crash-safe by construction: the decision to retire is written to the entry (its `reason`,
//! which also stops the entry from wanting pins) before anything is removed, so whoever runs
//! next carries it out; every removal is idempotent (a resource already gone is done); and the
//! entry becomes final `retired` only once its pins, service and target group are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::DeploymentId;
use crate::apply::{self, ApplyError, ListenerChanges};
use crate::aws::cloudwatch::{CloudWatch, TrafficQuery};
use crate::aws::ecs::Ecs;
use crate::aws::elb::Elb;
use crate::aws::ledger_store::LedgerError;
use crate::aws::{AwsError, DisplayErrorContext};
use crate::hook::Clients;
use crate::ledger::{LedgerEntry, RetainedCopy, Status};
use crate::retirement::{
    self, Candidate, Decision, Order, Reason, RetirementSettings, Step, Teardown, Traffic,
};
use crate::settings::Settings;
use crate::stages::{Actor, Draft, short_arn};

/// How many times one run reads and decides again after another writer changed the ledger.
const ATTEMPTS: u32 = 5;
/// How many times one run removes a version's pins and looks again before giving up (a hook
/// that read the ledger before the decision was written may create one meanwhile).
const PIN_ROUNDS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Ledger(LedgerError),
    #[error(
        "the listener has no room for another rule (ALB rule quota): {0}; remove unused rules or raise the quota"
    )]
    RuleQuota(AwsError),
    /// A rule skewguard did not create forwards to a copy's target group: deleting the copy
    /// would break it, so the copy stays.
    #[error(
        "rule {rule} (not a skewguard pin of {deployment_id}) forwards to the retention target group {target_group}; skewguard leaves it and the copy alone: remove the rule or its forward to that target group"
    )]
    ForeignRule {
        deployment_id: DeploymentId,
        rule: String,
        target_group: String,
    },
    /// Pins of a retiring version kept reappearing.
    #[error("pins of {0} kept reappearing while it retires; its copy stays until the next run")]
    PinsReappear(DeploymentId),
    #[error("gave up after {0} attempts: the ledger kept changing underneath")]
    Contention(u32),
    /// `revoke` or `cutoff` named a version that is not retained.
    #[error("{0}")]
    NotRetained(String),
}

impl From<LedgerError> for RetireError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Aws(e) => RetireError::Aws(e),
            other => RetireError::Ledger(other),
        }
    }
}

impl From<ApplyError> for RetireError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::RuleQuota(e) => RetireError::RuleQuota(e),
            ApplyError::Aws(e) => RetireError::Aws(e),
        }
    }
}

impl RetireError {
    /// A short machine-readable kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RetireError::Aws(e) => e.kind.error_kind(),
            RetireError::Ledger(_) => "Ledger",
            RetireError::RuleQuota(_) => "RuleQuota",
            RetireError::ForeignRule { .. } => "ForeignRule",
            RetireError::PinsReappear(_) => "Contention",
            RetireError::Contention(_) => "Contention",
            RetireError::NotRetained(_) => "NotRetained",
        }
    }
}

/// The settings retirement applies, from a service's settings.
pub fn retirement_settings(settings: &Settings) -> RetirementSettings {
    RetirementSettings {
        max_versions: settings.max_versions,
        max_age: settings.max_age,
        min_age: settings.min_age,
        idle_window: settings.idle_window,
    }
}

/// One version's retirement, as a run reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retirement {
    #[serde(serialize_with = "id_str")]
    pub deployment_id: DeploymentId,
    /// `max-versions`, `max-age`, `idle`, `revoked`, `cutoff`, …
    pub reason: String,
    /// Its pins, service and target group are gone and the entry is final `retired`.
    pub done: bool,
    /// What was removed, or what stopped the teardown.
    pub detail: String,
}

fn id_str<S: serde::Serializer>(id: &DeploymentId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id.as_str())
}

/// What a run of retirement did to one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetirementReport {
    pub retirements: Vec<Retirement>,
    /// Idle checks this run recorded: the counter of each version it changed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub idle_checks: BTreeMap<String, u32>,
    /// Idle checks that measured nothing usable (no data, or CloudWatch failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What drives one run.
#[derive(Debug, Clone)]
pub struct RetireOptions {
    pub settings: RetirementSettings,
    /// `revoke` / `cutoff` orders (none from the reconciler).
    pub orders: Vec<Order>,
    /// Whether to measure traffic for the idle check (the reconciler does; the CLI's orders
    /// need not).
    pub idle_check: bool,
    /// For the history: stage (`reconciler`, `revoke`, `cutoff`), execution ID, and who acts.
    pub stage: String,
    pub execution_id: String,
    pub identity: String,
}

/// A retained version as retirement sees it, from its entry.
pub fn candidate(entry: &LedgerEntry) -> Option<Candidate> {
    let copy = entry.retention.as_ref()?;
    (entry.status == Status::Retained).then(|| Candidate {
        deployment_id: entry.deployment_id.clone(),
        created_at: entry.created_at,
        left_production_at: copy.left_production_at,
        serving_since: copy.healthy_at,
        idle_checks: copy.idle_checks,
        last_written: entry.updated_at,
        retiring: entry.reason.as_deref().and_then(Reason::parse),
    })
}

/// Runs retirement for one service: records each decision, tears down each retiring copy
/// (pins, service, target group) and makes its entry final. Each version's teardown stands
/// alone: one that fails is reported and left for the next run; the others go on.
///
/// Errors: the ledger could not be read or written, or `revoke`/`cutoff` named a version that
/// is not retained.
pub async fn retire_service(
    clients: &Clients,
    service_arn: &str,
    options: &RetireOptions,
) -> Result<RetirementReport, RetireError> {
    retire_service_from(clients, service_arn, options, None).await
}

/// [`retire_service`], starting from `read`: the service's entries as the caller read them
/// this invocation, if it wrote nothing since (the reconciler's run, which saves reading the
/// partition again). `None` reads them. Every write stays conditional on the versions read,
/// so a change made meanwhile surfaces as a conflict and is read afresh.
///
/// Errors: as [`retire_service`].
pub async fn retire_service_from(
    clients: &Clients,
    service_arn: &str,
    options: &RetireOptions,
    read: Option<Vec<LedgerEntry>>,
) -> Result<RetirementReport, RetireError> {
    let mut report = RetirementReport::default();
    let entries = match read {
        Some(entries) => entries,
        None => clients.ledger.load(service_arn).await?,
    };
    let tore_down =
        tear_down_stray_copies(clients, service_arn, &entries, options, &mut report).await?;
    // A copy torn down was written off its entry: read again.
    let mut read = (!tore_down).then_some(entries);
    let mut attempt = 0;
    let (entries, decision) = loop {
        attempt += 1;
        let now = OffsetDateTime::now_utc();
        let entries = match read.take() {
            Some(entries) => entries,
            None => clients.ledger.load(service_arn).await?,
        };
        check_orders(&entries, &options.orders)?;
        let candidates: Vec<Candidate> = entries.iter().filter_map(candidate).collect();
        if candidates.is_empty() {
            return Ok(report);
        }
        let traffic = if options.idle_check {
            measure(
                &clients.cloudwatch,
                &entries,
                &candidates,
                &options.settings,
                now,
                &mut report,
            )
            .await
        } else {
            BTreeMap::new()
        };
        let decision = retirement::decide(
            &candidates,
            &options.settings,
            now,
            &traffic,
            &options.orders,
        );
        let actor = Actor {
            stage: options.stage.clone(),
            execution_id: options.execution_id.clone(),
            identity: options.identity.clone(),
            now,
        };
        let mut draft = Draft::new(service_arn, entries.clone());
        record_decision(&mut draft, &decision);
        let changes: Vec<_> = draft
            .changes(&actor)
            .into_iter()
            .map(|mut c| {
                let id = &c.entry.deployment_id;
                c.history.change = match (decision.retire.get(id), decision.idle_checks.get(id)) {
                    (Some(reason), _) => format!(
                        "retiring ({reason}): {} [{}]",
                        why(*reason, &options.settings),
                        c.history.change
                    ),
                    (None, Some(n)) => format!(
                        "idle check: {n} of {} consecutive checks measured no request [{}]",
                        retirement::IDLE_CHECKS_TO_RETIRE,
                        c.history.change
                    ),
                    (None, None) => c.history.change.clone(),
                };
                c
            })
            .collect();
        match clients.ledger.commit(&changes).await {
            Ok(()) => {
                let written: BTreeSet<&DeploymentId> =
                    changes.iter().map(|c| &c.entry.deployment_id).collect();
                let after: Vec<LedgerEntry> = draft
                    .entries()
                    .map(|e| {
                        let mut e = e.clone();
                        if written.contains(&e.deployment_id) {
                            e.version += 1;
                            e.updated_at = now;
                        }
                        e
                    })
                    .collect();
                break (after, decision);
            }
            Err(e) if e.is_conflict() && attempt < ATTEMPTS => {
                warn!(service = %service_arn, "the ledger changed while deciding retirement; deciding again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) if e.is_conflict() => return Err(RetireError::Contention(attempt)),
            Err(e) => return Err(e.into()),
        }
    };
    report.idle_checks = decision
        .idle_checks
        .iter()
        .map(|(id, n)| (id.to_string(), *n))
        .collect();
    for (id, n) in &decision.idle_checks {
        info!(service = %service_arn, deployment_id = %id, idle_checks = n, "idle check recorded");
    }
    for (id, reason) in &decision.retire {
        let Some(entry) = entries.iter().find(|e| &e.deployment_id == id) else {
            continue;
        };
        let outcome = tear_down_version(clients, service_arn, entry, options).await;
        let (done, detail) = match outcome {
            Ok(detail) => {
                info!(service = %service_arn, deployment_id = %id, reason = %reason, "retired");
                crate::metrics::record(|c| {
                    *c.retirements.entry(reason.as_str().to_owned()).or_default() += 1;
                });
                (true, detail)
            }
            Err(e) => {
                warn!(service = %service_arn, deployment_id = %id, reason = %reason, error_kind = e.kind(), error = %DisplayErrorContext(&e), "retirement stopped; the next run carries it on");
                crate::metrics::record(|c| *c.errors.entry(e.kind().to_owned()).or_default() += 1);
                (false, e.to_string())
            }
        };
        report.retirements.push(Retirement {
            deployment_id: id.clone(),
            reason: reason.as_str().to_owned(),
            done,
            detail,
        });
    }
    Ok(report)
}

/// A retention copy nothing leads to any more: its version is `live` or `testing` again (a
/// rollback after the copy started restored it to production, or it was deployed anew) and
/// serves from its own target group, where its pins forward; the copy only costs money.
pub fn is_stray_copy(entry: &LedgerEntry) -> bool {
    entry.retention.is_some() && matches!(entry.status, Status::Live | Status::Testing)
}

/// Tears down the stray copies of the service ([`is_stray_copy`]) and forgets them; the entry
/// itself stays as it is. Each is reported as a retirement with reason `rolled-back` (its
/// version is back in production) that leaves the entry in play.
///
/// Errors: the ledger could not be read or written; a copy whose teardown fails is reported and
/// left for the next run.
/// Tears down the stray copies among `entries`; answers whether there were any.
async fn tear_down_stray_copies(
    clients: &Clients,
    service_arn: &str,
    entries: &[LedgerEntry],
    options: &RetireOptions,
    report: &mut RetirementReport,
) -> Result<bool, RetireError> {
    let mut any = false;
    for entry in entries.iter().filter(|e| is_stray_copy(e)) {
        any = true;
        let Some(copy) = &entry.retention else {
            continue;
        };
        let id = entry.deployment_id.clone();
        let (done, detail) = match tear_down_copy(&clients.ecs, &clients.elb, copy).await {
            Ok(()) => {
                forget_copy(clients, service_arn, &id, options).await?;
                info!(service = %service_arn, deployment_id = %id, status = %entry.status, "stray retention copy torn down: its version serves from its own target group again");
                (
                    true,
                    format!(
                        "{} again: service {} and target group {} deleted",
                        entry.status, copy.service_name, copy.target_group_name
                    ),
                )
            }
            Err(e) => {
                warn!(service = %service_arn, deployment_id = %id, error = %DisplayErrorContext(&e), "tearing down a stray retention copy failed; the next run carries it on");
                (false, e.to_string())
            }
        };
        report.retirements.push(Retirement {
            deployment_id: id,
            reason: Reason::RolledBack.as_str().to_owned(),
            done,
            detail,
        });
    }
    Ok(any)
}

/// Removes the copy's record from a version that serves from its own target group again.
async fn forget_copy(
    clients: &Clients,
    service_arn: &str,
    id: &DeploymentId,
    options: &RetireOptions,
) -> Result<(), RetireError> {
    for attempt in 1..=ATTEMPTS {
        let entries = clients.ledger.load(service_arn).await?;
        let mut draft = Draft::new(service_arn, entries);
        match draft.get_mut(id) {
            Some(entry) if is_stray_copy(entry) => entry.retention = None,
            _ => return Ok(()),
        }
        let actor = Actor {
            stage: options.stage.clone(),
            execution_id: options.execution_id.clone(),
            identity: options.identity.clone(),
            now: OffsetDateTime::now_utc(),
        };
        let changes: Vec<_> = draft
            .changes(&actor)
            .into_iter()
            .map(|mut c| {
                c.history.change = format!(
                    "retention copy torn down: the version serves from its own target group again [{}]",
                    c.history.change
                );
                c
            })
            .collect();
        match clients.ledger.commit(&changes).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_conflict() && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) if e.is_conflict() => return Err(RetireError::Contention(attempt)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A `revoke` or `cutoff` must name a version this service knows; `revoke` one that is
/// retained (or already retiring).
fn check_orders(entries: &[LedgerEntry], orders: &[Order]) -> Result<(), RetireError> {
    for order in orders {
        let (id, must_be_retained) = match order {
            Order::Revoke(id) => (id, true),
            Order::Cutoff { deployment_id, .. } => (deployment_id, false),
        };
        let Some(entry) = entries.iter().find(|e| &e.deployment_id == id) else {
            return Err(RetireError::NotRetained(format!(
                "the ledger has no deployment {id} for this service"
            )));
        };
        if must_be_retained && (entry.status != Status::Retained || entry.retention.is_none()) {
            return Err(RetireError::NotRetained(format!(
                "{id} is {}, not retained: revoke retires retained versions only{}",
                entry.status,
                if entry.status == Status::Draining {
                    " (to end a skew window, use skewguard release)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// Why, in words, for the history.
fn why(reason: Reason, settings: &RetirementSettings) -> String {
    match reason {
        Reason::MaxVersions => format!(
            "more than maxVersions={} retained; the oldest go first",
            settings.max_versions
        ),
        Reason::MaxAge => format!(
            "maxAge={} since it left production",
            humantime::format_duration(settings.max_age)
        ),
        Reason::Idle => format!(
            "no request over idleWindow={} on {} consecutive checks",
            humantime::format_duration(settings.idle_window),
            retirement::IDLE_CHECKS_TO_RETIRE
        ),
        Reason::Revoked => "revoked by skewguard revoke".to_owned(),
        Reason::Cutoff => "older than the cutoff given to skewguard cutoff".to_owned(),
        Reason::StartTimeout => "its copy did not become healthy in time".to_owned(),
        Reason::RolledBack => "the deployment was rolled back".to_owned(),
        Reason::Superseded => {
            "a newer deployment took its target group before its copy served it".to_owned()
        }
        Reason::StartFailed => "starting its copy failed; the version was held instead".to_owned(),
    }
}

/// Writes the decision on the entries: a retiring version's reason (from then on it wants no
/// pin), and each changed idle counter.
pub fn record_decision(draft: &mut Draft, decision: &Decision) {
    for entry in draft.entries_mut() {
        let id = entry.deployment_id.clone();
        if let Some(reason) = decision.retire.get(&id) {
            if entry.reason.as_deref() != Some(reason.as_str()) {
                entry.reason = Some(reason.as_str().to_owned());
            }
        } else if let (Some(n), Some(copy)) =
            (decision.idle_checks.get(&id), entry.retention.as_mut())
        {
            copy.idle_checks = *n;
        }
    }
}

/// Measures the idle window of each candidate that may be checked, in one CloudWatch call. A
/// failed call measures nothing (every check unknown), which is logged and noted, never zero.
async fn measure(
    cloudwatch: &CloudWatch,
    entries: &[LedgerEntry],
    candidates: &[Candidate],
    settings: &RetirementSettings,
    now: OffsetDateTime,
    report: &mut RetirementReport,
) -> BTreeMap<DeploymentId, Traffic> {
    let mut asked: Vec<(DeploymentId, TrafficQuery)> = Vec::new();
    let mut window = None;
    for c in candidates {
        let Some(w) = retirement::idle_window(c, settings, now) else {
            continue;
        };
        let Some(entry) = entries.iter().find(|e| e.deployment_id == c.deployment_id) else {
            continue;
        };
        let Some(tg) = entry
            .retention
            .as_ref()
            .and_then(|r| r.target_group_arn.clone())
        else {
            continue;
        };
        window = Some(w);
        asked.push((
            c.deployment_id.clone(),
            TrafficQuery {
                target_group_arn: tg,
                load_balancer_of: entry.listener_arn.clone(),
            },
        ));
    }
    let Some((start, end)) = window else {
        return BTreeMap::new();
    };
    let queries: Vec<TrafficQuery> = asked.iter().map(|(_, q)| q.clone()).collect();
    match cloudwatch.request_counts(&queries, start, end).await {
        Ok(counts) => asked
            .into_iter()
            .zip(counts)
            .map(|((id, _), count)| {
                let traffic = match count {
                    Some(n) => Traffic::Requests(n),
                    None => {
                        report.notes.push(format!(
                            "idle check of {id}: CloudWatch has no RequestCount data for its target group over the window; not counted as idle"
                        ));
                        Traffic::Unknown
                    }
                };
                (id, traffic)
            })
            .collect(),
        Err(e) => {
            warn!(error_kind = e.kind.error_kind(), error = %DisplayErrorContext(&e), "idle check failed; no version counts as idle this run");
            crate::metrics::record(|c| {
                *c.errors.entry(e.kind.error_kind().to_owned()).or_default() += 1;
            });
            report.notes.push(format!(
                "idle check failed ({}): no version counts as idle this run",
                e.code
            ));
            BTreeMap::new()
        }
    }
}

/// Tears down one retiring version, step by step ([`retirement::next_step`]), then makes its
/// entry final. Returns what was removed.
async fn tear_down_version(
    clients: &Clients,
    service_arn: &str,
    entry: &LedgerEntry,
    options: &RetireOptions,
) -> Result<String, RetireError> {
    let id = &entry.deployment_id;
    let Some(copy) = entry.retention.clone() else {
        return Ok("no copy recorded".to_owned());
    };
    let target_group = resolve_target_group(&clients.elb, &copy).await?;
    let mut teardown = Teardown::default();
    let mut removed_pins = 0;
    let mut rounds = 0;
    // The pins are looked for on the listener every time: whatever the ledger says, no
    // service is deleted while a rule forwards to its target group.
    teardown.pins = pins_of(clients, service_arn, entry, target_group.as_deref()).await?;
    loop {
        match retirement::next_step(&teardown) {
            Step::RemovePins(rules) => {
                rounds += 1;
                if rounds > PIN_ROUNDS {
                    return Err(RetireError::PinsReappear(id.clone()));
                }
                let applied = apply::apply(
                    &clients.elb,
                    ListenerChanges {
                        listener_arn: &entry.listener_arn,
                        service_arn,
                        delete: &rules,
                        create: &[],
                        freed: &[],
                    },
                )
                .await?;
                debug_assert!(applied.created.is_empty());
                removed_pins += rules.len();
                teardown.pins =
                    pins_of(clients, service_arn, entry, target_group.as_deref()).await?;
            }
            Step::DeleteService => {
                delete_service(&clients.ecs, &copy).await?;
                teardown.service_deleted = true;
            }
            Step::DeleteTargetGroup => {
                if let Some(arn) = &target_group {
                    clients.elb.delete_target_group(arn).await?;
                }
                teardown.target_group_deleted = true;
            }
            Step::Finish => break,
        }
    }
    finish(clients, service_arn, id, options).await?;
    Ok(format!(
        "{removed_pins} pin(s) removed; service {} and target group {} deleted",
        copy.service_name, copy.target_group_name
    ))
}

/// The copy's target group ARN: recorded, or found by its deterministic name (a create whose
/// answer was never recorded); `None` if it does not exist.
async fn resolve_target_group(elb: &Elb, copy: &RetainedCopy) -> Result<Option<String>, AwsError> {
    match &copy.target_group_arn {
        Some(arn) => Ok(Some(arn.clone())),
        None => elb.target_group_arn_by_name(&copy.target_group_name).await,
    }
}

async fn delete_service(ecs: &Ecs, copy: &RetainedCopy) -> Result<(), AwsError> {
    let service = copy.service_arn.as_deref().unwrap_or(&copy.service_name);
    ecs.scale_service_to_zero(&copy.cluster_arn, service)
        .await?;
    ecs.delete_service(&copy.cluster_arn, service).await
}

/// Tears down a retention copy whose target group no rule forwards to any more: scales its
/// service to 0 and deletes it, then deletes its target group (found by name if its ARN was
/// never recorded). Every step is idempotent: a resource already gone is done. For the start
/// path (a rollback, or a copy that did not become healthy in time) once the pins no longer
/// lead to the copy; retirement runs the same steps after removing the version's pins.
///
/// Errors: an AWS call failed (classified by code); `ResourceInUse` from DeleteTargetGroup
/// means a rule still forwards to the target group, and the caller must remove that first.
pub async fn tear_down_copy(ecs: &Ecs, elb: &Elb, copy: &RetainedCopy) -> Result<(), AwsError> {
    delete_service(ecs, copy).await?;
    if let Some(arn) = resolve_target_group(elb, copy).await? {
        elb.delete_target_group(&arn).await?;
    }
    Ok(())
}

/// The version's pins on the listener: rules tagged with its service and deployment ID, the
/// rules its entry lists that still exist, and any rule forwarding to the copy's target group
/// (which must be a pin of this version: anything else is refused, never deleted).
async fn pins_of(
    clients: &Clients,
    service_arn: &str,
    entry: &LedgerEntry,
    target_group: Option<&str>,
) -> Result<Vec<String>, RetireError> {
    let rules = clients
        .elb
        .describe_listener_rules(&entry.listener_arn)
        .await?;
    let candidates: Vec<String> = rules
        .iter()
        .filter(|r| !r.is_default() && r.arn != entry.production_rule_arn)
        .map(|r| r.arn.clone())
        .collect();
    let tags = if candidates.is_empty() {
        BTreeMap::new()
    } else {
        clients.elb.describe_pin_tags(&candidates).await?
    };
    let ours = |arn: &str| {
        tags.get(arn).is_some_and(|t| {
            t.service_arn == service_arn && t.deployment_id == entry.deployment_id.as_str()
        })
    };
    let mut pins = BTreeSet::new();
    for rule in &rules {
        let forwards_to_copy = target_group.is_some_and(|tg| rule.forward_targets().contains(&tg));
        if ours(&rule.arn) || entry.rule_arns.contains(&rule.arn) {
            pins.insert(rule.arn.clone());
        } else if forwards_to_copy {
            return Err(RetireError::ForeignRule {
                deployment_id: entry.deployment_id.clone(),
                rule: rule.arn.clone(),
                target_group: target_group.map(short_arn).unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(pins.into_iter().collect())
}

/// Makes the entry final `retired` (its reason kept), from a fresh read, conditionally.
async fn finish(
    clients: &Clients,
    service_arn: &str,
    id: &DeploymentId,
    options: &RetireOptions,
) -> Result<(), RetireError> {
    for attempt in 1..=ATTEMPTS {
        let now = OffsetDateTime::now_utc();
        let entries = clients.ledger.load(service_arn).await?;
        let mut draft = Draft::new(service_arn, entries);
        let Some(entry) = draft.get_mut(id) else {
            return Ok(());
        };
        if entry.status != Status::Retained || entry.reason.is_none() {
            // Someone else finished it, or the version was deployed again meanwhile.
            return Ok(());
        }
        entry.rule_arns.clear();
        entry.finish(Status::Retired, now);
        let actor = Actor {
            stage: options.stage.clone(),
            execution_id: options.execution_id.clone(),
            identity: options.identity.clone(),
            now,
        };
        let changes: Vec<_> = draft
            .changes(&actor)
            .into_iter()
            .map(|mut c| {
                c.history.change = format!(
                    "retired ({}): pins, retention service and target group removed [{}]",
                    c.entry.reason.as_deref().unwrap_or("-"),
                    c.history.change
                );
                c
            })
            .collect();
        match clients.ledger.commit(&changes).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_conflict() => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RetireError::Contention(ATTEMPTS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{RunningVersion, ServiceWiring};
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:1:service/shop/web";
    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn entry(id: &str, status: Status, copy: bool) -> LedgerEntry {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse(id).unwrap(),
            service_revision_arn: format!("rev-{id}"),
            target_group_arn: "tg-copy".into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "listener".into(),
            production_rule_arn: "production".into(),
        };
        let mut e = LedgerEntry::new(SVC, &running, &wiring, status, NOW);
        if copy {
            e.retention = Some(RetainedCopy {
                service_name: format!("web-sg-{id}"),
                service_arn: None,
                target_group_name: "sg-0123456789abcdef".into(),
                target_group_arn: Some("tg-copy".into()),
                tasks: 1,
                started_at: NOW,
                healthy_at: Some(NOW),
                left_production_at: NOW,
                retain_until: None,
                idle_checks: 1,
                cluster_arn: "shop".into(),
            });
        }
        e
    }

    #[test]
    fn only_retained_entries_with_a_copy_are_candidates_and_a_recorded_reason_means_retiring() {
        assert!(candidate(&entry("v1", Status::Draining, true)).is_none());
        assert!(candidate(&entry("v1", Status::Retained, false)).is_none());
        let mut e = entry("v1", Status::Retained, true);
        let c = candidate(&e).unwrap();
        assert_eq!((c.idle_checks, c.retiring), (1, None));
        e.reason = Some("revoked".into());
        assert_eq!(candidate(&e).unwrap().retiring, Some(Reason::Revoked));
    }

    #[test]
    fn a_recorded_decision_stops_the_version_wanting_a_pin_and_counts_idle_checks() {
        let retiring = entry("v1", Status::Retained, true);
        let idle = entry("v2", Status::Retained, true);
        assert!(retiring.wants_pin());
        let mut draft = Draft::new(SVC, vec![retiring, idle]);
        let decision = Decision {
            retire: BTreeMap::from([(DeploymentId::parse("v1").unwrap(), Reason::Revoked)]),
            idle_checks: BTreeMap::from([(DeploymentId::parse("v2").unwrap(), 0)]),
        };
        record_decision(&mut draft, &decision);
        let v1 = draft.get(&DeploymentId::parse("v1").unwrap()).unwrap();
        assert_eq!(v1.reason.as_deref(), Some("revoked"));
        assert_eq!(v1.status, Status::Retained, "final only once torn down");
        assert!(!v1.wants_pin(), "a retiring version's pins go first");
        let v2 = draft.get(&DeploymentId::parse("v2").unwrap()).unwrap();
        assert_eq!(v2.retention.as_ref().unwrap().idle_checks, 0);
        let actor = Actor {
            stage: "reconciler".into(),
            execution_id: "x".into(),
            identity: "req".into(),
            now: NOW,
        };
        assert_eq!(draft.changes(&actor).len(), 2, "both changes are written");
    }

    #[test]
    fn revoke_must_name_a_retained_version_and_cutoff_a_known_one() {
        let entries = [
            entry("v1", Status::Retained, true),
            entry("v2", Status::Draining, false),
        ];
        let id = |s: &str| DeploymentId::parse(s).unwrap();
        assert!(check_orders(&entries, &[Order::Revoke(id("v1"))]).is_ok());
        let err = check_orders(&entries, &[Order::Revoke(id("v2"))]).unwrap_err();
        assert!(err.to_string().contains("skewguard release"), "{err}");
        let err = check_orders(&entries, &[Order::Revoke(id("v9"))]).unwrap_err();
        assert!(matches!(err, RetireError::NotRetained(_)), "{err}");
        let cutoff = |s: &str| Order::Cutoff {
            deployment_id: id(s),
            recorded_at: NOW,
        };
        assert!(check_orders(&entries, &[cutoff("v2")]).is_ok());
        assert!(check_orders(&entries, &[cutoff("v9")]).is_err());
    }
}
