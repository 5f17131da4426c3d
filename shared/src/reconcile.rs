//! What the reconciler decides: pure functions over plain data.
//!
//! The reconciler compares three views of a service: the ledger (a [`Draft`] of its entries),
//! the tagged skewguard rules on its listener, and what ECS says runs where (an [`EcsView`]).
//! [`decide`] edits the draft's entries so that they agree with ECS; [`review_pins`] then says
//! which rules to create, keep or delete so that the listener agrees with the entries, never
//! touching a pin that is inside its valid window and still leads to its running version, and
//! never a rule a hook in flight may be about to record. Every edit comes with a [`Repair`]
//! saying what was repaired and why; the history line of each changed entry is built from them
//! ([`history_lines`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::DeploymentId;
use crate::aws::ecs::DeploymentFacts;
use crate::event::LifecycleStage;
use crate::ledger::{LedgerEntry, RunningVersion, ServiceWiring, Status};
use crate::listener::{ListenerRule, RuleAction, canonical_conditions};
use crate::pins::{self, PinError, PinPlan, PinSpec, PinTags};
use crate::settings::{EnvDefaults, Settings, SettingsError};
use crate::stages::{Actor, Change, Draft, short_arn};

/// The `stage` of the reconciler's history lines.
pub const STAGE: &str = "reconciler";

/// How many of a service's most recent deployments the reconciler reads.
pub const DEPLOYMENTS_READ: usize = 10;

/// What ECS says about a service: which versions run on which target group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcsView {
    /// Each running revision with the version its task definition carries.
    pub running: Vec<RunningVersion>,
    /// Target groups serving a revision whose deployment ID cannot be read: no pin may lead
    /// there, and no entry may claim them.
    pub unidentified: Vec<String>,
    /// `running` is everything that runs: no deployment is in flight.
    pub settled: bool,
    /// ECS told anything at all (the service has deployments). Without it the reconciler only
    /// brings the listener in line with the ledger.
    pub known: bool,
    /// Production when settled: the target of the last successful deployment, or the revision
    /// a finished rollback returned to.
    pub production: Option<DeploymentId>,
    /// Revisions a rollback moved away from (green of a rolled-back deployment).
    pub rolled_back_revisions: Vec<String>,
    /// The newest deployment, for the reasons given.
    pub latest: Option<DeploymentSummary>,
    /// The listener wiring of the running revisions.
    pub wiring: Option<ServiceWiring>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentSummary {
    pub arn: String,
    pub status: String,
}

impl EcsView {
    /// Whether ECS runs `id` on `target_group_arn`.
    pub fn runs(&self, id: &DeploymentId, target_group_arn: &str) -> bool {
        self.running
            .iter()
            .any(|r| &r.deployment_id == id && r.target_group_arn == target_group_arn)
    }

    /// Another version (or an unreadable one) on this target group.
    fn occupant(&self, id: &DeploymentId, target_group_arn: &str) -> Option<String> {
        if self.runs(id, target_group_arn) {
            return None;
        }
        self.running
            .iter()
            .find(|r| r.target_group_arn == target_group_arn)
            .map(|r| r.deployment_id.to_string())
            .or_else(|| {
                self.unidentified
                    .iter()
                    .any(|tg| tg == target_group_arn)
                    .then(|| "a revision without a readable deployment ID".to_owned())
            })
    }

    fn latest_text(&self) -> String {
        match &self.latest {
            Some(d) => format!("deployment {} is {}", short_arn(&d.arn), d.status),
            None => "ECS lists no deployment".to_owned(),
        }
    }
}

/// Which revisions run, per the service's deployments (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningRevisions {
    pub revisions: Vec<String>,
    pub settled: bool,
    /// The revision serving production when settled.
    pub production: Option<String>,
    pub rolled_back: Vec<String>,
}

/// ECS deployment statuses after which exactly the target (or, after a rollback, the source)
/// revision runs.
const SETTLED_STATUSES: [&str; 2] = ["SUCCESSFUL", "ROLLBACK_SUCCESSFUL"];

/// What runs, from the service's deployments, newest first: while a deployment is in flight
/// (or ended in a way that leaves it unclear) its source and target revisions; otherwise the
/// target of the last successful deployment, or the revision a finished rollback returned to.
pub fn running_revisions(deployments: &[DeploymentFacts]) -> RunningRevisions {
    let rolled_back: Vec<String> = deployments
        .iter()
        .filter(|d| d.status.starts_with("ROLLBACK") || d.rollback_revision.is_some())
        .filter_map(|d| d.target_revision.clone())
        .collect();
    let Some(latest) = deployments.first() else {
        return RunningRevisions::default();
    };
    let mut result = RunningRevisions {
        rolled_back,
        ..RunningRevisions::default()
    };
    match latest.status.as_str() {
        "SUCCESSFUL" => {
            result.settled = true;
            result.production = latest.target_revision.clone();
            result.revisions.extend(latest.target_revision.clone());
            result
                .rolled_back
                .retain(|r| Some(r) != latest.target_revision.as_ref());
        }
        "ROLLBACK_SUCCESSFUL" => {
            result.settled = true;
            let back: Vec<String> = match &latest.rollback_revision {
                Some(r) => vec![r.clone()],
                None => latest.source_revisions.clone(),
            };
            result.production = back.first().cloned();
            result.revisions = back;
        }
        _ => {
            // In flight, or stopped halfway: both sides may run.
            result.revisions = latest.source_revisions.clone();
            result.revisions.extend(latest.target_revision.clone());
            result.rolled_back.clear();
        }
    }
    debug_assert!(!result.settled || SETTLED_STATUSES.contains(&latest.status.as_str()));
    result.revisions.sort();
    result.revisions.dedup();
    result
}

/// Where the service's settings came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SettingsSource {
    /// The `hookDetails` of the service's skewguard hooks, as its latest deployment records them.
    HookDetails { deployment_arn: String },
    /// Function-level (environment) defaults over built-ins: no deployment records any.
    Defaults,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSettingsError {
    #[error(
        "the skewguard hooks of deployment {deployment} carry different hookDetails; give all three hooks the same object"
    )]
    Conflicting { deployment: String },
    #[error("the hookDetails of deployment {deployment}: {error}")]
    Invalid {
        deployment: String,
        error: SettingsError,
    },
}

/// The stages skewguard's hooks are registered at.
const HOOK_STAGES: [LifecycleStage; 4] = [
    LifecycleStage::TestTrafficShift,
    LifecycleStage::PostTestTrafficShift,
    LifecycleStage::ProductionTrafficShift,
    LifecycleStage::PostProductionTrafficShift,
];

/// The settings the service's hooks run with: the `hookDetails` of its skewguard hooks in the
/// newest deployment that records lifecycle hooks, over `defaults`. A hook counts as
/// skewguard's when it is registered at one of skewguard's stages and its `hookDetails` are
/// valid skewguard settings (unknown keys are rejected, so another tool's hook does not pass).
pub fn service_settings(
    deployments: &[DeploymentFacts],
    defaults: &EnvDefaults,
) -> Result<(Settings, SettingsSource), ServiceSettingsError> {
    for deployment in deployments {
        let ours: Vec<&Map<String, Value>> = deployment
            .hooks
            .iter()
            .filter(|h| {
                h.stages.iter().any(|s| {
                    LifecycleStage::parse(s).is_some_and(|stage| HOOK_STAGES.contains(&stage))
                })
            })
            .filter_map(|h| h.details.as_ref())
            .filter(|details| Settings::resolve(details, defaults).is_ok())
            .collect();
        let Some(first) = ours.first() else {
            continue;
        };
        if ours.iter().any(|d| d != first) {
            return Err(ServiceSettingsError::Conflicting {
                deployment: deployment.arn.clone(),
            });
        }
        let settings =
            Settings::resolve(first, defaults).map_err(|error| ServiceSettingsError::Invalid {
                deployment: deployment.arn.clone(),
                error,
            })?;
        return Ok((
            settings,
            SettingsSource::HookDetails {
                deployment_arn: deployment.arn.clone(),
            },
        ));
    }
    let settings = Settings::resolve(&Map::new(), defaults).map_err(|error| {
        ServiceSettingsError::Invalid {
            deployment: "-".to_owned(),
            error,
        }
    })?;
    Ok((settings, SettingsSource::Defaults))
}

/// What kind of repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairKind {
    /// An entry moved to `rolled_back` or `retired`.
    Finished,
    /// An entry became `live` (production per ECS).
    MadeLive,
    /// An entry's target group or revision corrected.
    Moved,
    /// A missing pin created.
    PinRestored,
    /// A rule deleted: its version no longer runs, it points elsewhere, or no entry wants it.
    PinRemoved,
    /// A tagged rule missing from the ledger recorded on its entry.
    PinAdopted,
    /// A rule the ledger listed that no longer exists, dropped from the entry.
    PinForgotten,
}

impl RepairKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RepairKind::Finished => "finished",
            RepairKind::MadeLive => "made-live",
            RepairKind::Moved => "moved",
            RepairKind::PinRestored => "pin-restored",
            RepairKind::PinRemoved => "pin-removed",
            RepairKind::PinAdopted => "pin-adopted",
            RepairKind::PinForgotten => "pin-forgotten",
        }
    }
}

impl std::fmt::Display for RepairKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One repair: what, to which deployment or rule, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    pub kind: RepairKind,
    #[serde(serialize_with = "opt_id")]
    pub deployment_id: Option<DeploymentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_arn: Option<String>,
    pub detail: String,
}

fn opt_id<S: serde::Serializer>(id: &Option<DeploymentId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(id.as_str()),
        None => s.serialize_none(),
    }
}

impl Repair {
    fn entry(kind: RepairKind, id: &DeploymentId, detail: String) -> Self {
        Self {
            kind,
            deployment_id: Some(id.clone()),
            rule_arn: None,
            detail,
        }
    }
}

/// Brings the entries in line with what ECS says runs where. Only non-final entries change,
/// and only on evidence: a version is finished when its target group now runs something else,
/// or when ECS is settled and no longer runs it; a version ECS runs elsewhere is moved there;
/// a `testing` (or `draining`) version that settled ECS calls production becomes `live`.
/// `retained` versions run in their own retention service, which ECS's view of this service
/// does not show: they are left to retirement.
pub fn decide(draft: &mut Draft, view: &EcsView, now: OffsetDateTime) -> Vec<Repair> {
    let mut repairs = Vec::new();
    if !view.known {
        return repairs;
    }
    for entry in draft
        .entries_mut()
        .filter(|e| !e.status.is_final() && e.status != Status::Retained)
    {
        let id = entry.deployment_id.clone();
        let runs_here = view.runs(&id, &entry.target_group_arn);
        if !runs_here && let Some(elsewhere) = view.running.iter().find(|r| r.deployment_id == id) {
            let detail = format!(
                "ECS runs {id} on target group {} (revision {}), not on {} as the ledger said",
                short_arn(&elsewhere.target_group_arn),
                short_arn(&elsewhere.service_revision_arn),
                short_arn(&entry.target_group_arn)
            );
            let wiring = view.wiring.clone().unwrap_or_else(|| entry.wiring());
            entry.place(elsewhere, &wiring);
            repairs.push(Repair::entry(RepairKind::Moved, &id, detail));
        } else if !runs_here {
            let occupant = view.occupant(&id, &entry.target_group_arn);
            if occupant.is_none() && !view.settled {
                continue;
            }
            let rolled_back = entry.status == Status::Testing
                || view
                    .rolled_back_revisions
                    .contains(&entry.service_revision_arn);
            let to = if rolled_back {
                Status::RolledBack
            } else {
                Status::Retired
            };
            let why = match occupant {
                Some(other) => format!(
                    "its target group {} now runs {other}",
                    short_arn(&entry.target_group_arn)
                ),
                None => format!("ECS no longer runs it ({})", view.latest_text()),
            };
            let detail = match entry.status {
                Status::Testing => {
                    format!("stuck in testing after its deployment ended: {why}")
                }
                Status::Draining => format!("draining, but its version is gone: {why}"),
                other => format!("{other}, but {why}"),
            };
            let from = entry.status;
            if entry.retention.is_some() {
                // Its retention copy was starting: retirement tears it down, then ends it.
                entry.end(to, crate::retirement::Reason::Superseded.as_str(), now);
            } else {
                entry.finish(to, now);
            }
            repairs.push(Repair::entry(
                RepairKind::Finished,
                &id,
                format!("{from} -> {to}: {detail}"),
            ));
            continue;
        }
        if view.settled
            && view.production.as_ref() == Some(&id)
            && matches!(entry.status, Status::Testing | Status::Draining)
        {
            let from = entry.status;
            entry.make_live(now);
            repairs.push(Repair::entry(
                RepairKind::MadeLive,
                &id,
                format!(
                    "{from} -> live: ECS serves production from it ({})",
                    view.latest_text()
                ),
            ));
        }
    }
    repairs
}

/// What to do on the listener, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinReview {
    /// The plan to execute: [`pins::plan`] less the deletions refused below.
    pub plan: PinPlan,
    /// Rules the plan would delete but that stay because each is a valid pin of a version
    /// that runs where it leads (e.g. made under other settings); recorded on their entry.
    pub kept_valid: BTreeMap<DeploymentId, Vec<String>>,
    /// Rules left alone while a deployment is in flight: a hook may be about to record them.
    /// Recorded only if their entry already lists them.
    pub kept_in_flight: BTreeMap<DeploymentId, Vec<String>>,
    pub repairs: Vec<Repair>,
    /// What was left alone, and why.
    pub notes: Vec<String>,
}

/// Whose rule this is: its tag, else the entry that records it.
fn owner_of(
    arn: &str,
    entries: &[LedgerEntry],
    tags: &BTreeMap<String, PinTags>,
) -> Option<DeploymentId> {
    tags.get(arn)
        .and_then(|t| DeploymentId::parse(&t.deployment_id).ok())
        .or_else(|| {
            entries
                .iter()
                .find(|e| e.rule_arns.iter().any(|a| a == arn))
                .map(|e| e.deployment_id.clone())
        })
}

/// Compares the listener with the entries the draft now has: which pins to create, which to
/// delete, which tagged rules to adopt; refuses to delete any rule that is a valid pin of a
/// running version, and (while a deployment is in flight) any rule of a version ECS runs whose
/// entry is not final.
pub fn review_pins(
    draft: &Draft,
    view: &EcsView,
    rules: &[ListenerRule],
    tags: &BTreeMap<String, PinTags>,
    production_rule: &ListenerRule,
    settings: &Settings,
) -> Result<PinReview, PinError> {
    let entries: Vec<LedgerEntry> = draft.entries().cloned().collect();
    let plan = pins::plan(
        draft.service_arn(),
        &entries,
        rules,
        tags,
        production_rule,
        settings,
    )?;
    let mut review = PinReview {
        plan,
        kept_valid: BTreeMap::new(),
        kept_in_flight: BTreeMap::new(),
        repairs: Vec::new(),
        notes: Vec::new(),
    };
    let repointed = review_deletions(&mut review, view, rules, tags, &entries);
    describe_restorations(&mut review, rules, &entries, &repointed);
    adopt_tagged_pins(&mut review, &entries);
    forget_missing_pins(&mut review, rules, &entries);
    Ok(review)
}

/// A rule the plan would delete, with what the review needs to judge it.
struct Deletion<'a> {
    arn: String,
    /// The rule on the listener (absent if the plan names one that is gone).
    rule: Option<&'a ListenerRule>,
    /// Its deployment: the tag, else the entry that lists it.
    owner: Option<DeploymentId>,
    entry: Option<&'a LedgerEntry>,
    /// The one target group it forwards all its traffic to, if it does.
    target: Option<String>,
}

impl<'a> Deletion<'a> {
    fn of(
        arn: String,
        rules: &'a [ListenerRule],
        tags: &BTreeMap<String, PinTags>,
        entries: &'a [LedgerEntry],
    ) -> Self {
        let rule = rules.iter().find(|r| r.arn == arn);
        let owner = owner_of(&arn, entries, tags);
        let entry = owner
            .as_ref()
            .and_then(|id| entries.iter().find(|e| &e.deployment_id == id));
        let target = rule.and_then(|r| match r.live_targets().as_slice() {
            [one] if r.forward_targets().len() == 1 => Some((*one).to_owned()),
            _ => None,
        });
        Deletion {
            arn,
            rule,
            owner,
            entry,
            target,
        }
    }
}

/// Why a rule the plan would delete stays on the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// A valid pin of a version that runs where it leads.
    Valid,
    /// A deployment is in flight and the rule's version runs: a hook may be about to record it.
    InFlight,
}

/// Goes through the rules the plan would delete: keeps those [`reason_to_keep`] refuses to
/// delete ([`keep_rule`]) and says why each other one goes ([`why_removed`]). Returns the
/// deployments whose pin is removed because it forwarded elsewhere (their new pin replaces it).
fn review_deletions(
    review: &mut PinReview,
    view: &EcsView,
    rules: &[ListenerRule],
    tags: &BTreeMap<String, PinTags>,
    entries: &[LedgerEntry],
) -> BTreeSet<DeploymentId> {
    let mut repointed = BTreeSet::new();
    let mut delete = Vec::new();
    for arn in std::mem::take(&mut review.plan.delete) {
        let deletion = Deletion::of(arn, rules, tags, entries);
        if let Some(kept) = reason_to_keep(&deletion, &review.plan, rules, view) {
            keep_rule(review, &deletion, kept, view);
            continue;
        }
        let (detail, elsewhere) = why_removed(&deletion);
        if elsewhere && let Some(id) = &deletion.owner {
            repointed.insert(id.clone());
        }
        review.repairs.push(Repair {
            kind: RepairKind::PinRemoved,
            deployment_id: deletion.owner.clone(),
            rule_arn: Some(deletion.arn.clone()),
            detail,
        });
        delete.push(deletion.arn);
    }
    review.plan.delete = delete;
    repointed
}

/// Refuses to delete a valid pin: a rule of a version that wants a pin and runs on the target
/// group the rule leads to (made under other settings, say), unless it duplicates a pin the
/// plan keeps. While a deployment is in flight, also refuses to delete any rule of a version
/// ECS runs where the rule leads whose entry is not final: its hook may be about to record it.
fn reason_to_keep(
    deletion: &Deletion<'_>,
    plan: &PinPlan,
    rules: &[ListenerRule],
    view: &EcsView,
) -> Option<Kept> {
    let (Some(id), Some(tg), Some(rule)) = (&deletion.owner, &deletion.target, deletion.rule)
    else {
        return None;
    };
    let entry = deletion.entry;
    let runs_there = if view.known {
        view.runs(id, tg)
    } else {
        entry.is_some_and(|e| !e.status.is_final() && &e.target_group_arn == tg)
    };
    // A true duplicate of a pin the plan keeps may go: the version stays pinned.
    let conditions = canonical_conditions(&rule.conditions);
    let duplicate = plan
        .keep
        .get(id)
        .into_iter()
        .flatten()
        .filter_map(|k| rules.iter().find(|r| &r.arn == k))
        .any(|k| canonical_conditions(&k.conditions) == conditions);
    if !duplicate && entry.is_some_and(LedgerEntry::wants_pin) && runs_there {
        return Some(Kept::Valid);
    }
    let in_flight = !view.settled
        && view.known
        && view.runs(id, tg)
        && entry.is_none_or(|e| !e.status.is_final());
    in_flight.then_some(Kept::InFlight)
}

/// Leaves a rule on the listener with a note saying why; a valid pin the entry does not list
/// is adopted (recorded on the entry).
fn keep_rule(review: &mut PinReview, deletion: &Deletion<'_>, kept: Kept, view: &EcsView) {
    let (Some(id), Some(tg)) = (&deletion.owner, &deletion.target) else {
        return;
    };
    let arn = &deletion.arn;
    let kept_rules = match kept {
        Kept::Valid => &mut review.kept_valid,
        Kept::InFlight => &mut review.kept_in_flight,
    };
    kept_rules.entry(id.clone()).or_default().push(arn.clone());
    let listed = deletion.entry.is_some_and(|e| e.rule_arns.contains(arn));
    if kept == Kept::Valid && !listed {
        review.repairs.push(Repair {
            kind: RepairKind::PinAdopted,
            deployment_id: Some(id.clone()),
            rule_arn: Some(arn.clone()),
            detail: format!("a valid pin of {id} the ledger did not list: recorded"),
        });
    }
    review.notes.push(match kept {
        Kept::Valid => format!(
            "left rule {} alone: it is a valid pin of {id}, which runs on {} (it differs from the pin the settings want)",
            short_arn(arn),
            short_arn(tg)
        ),
        Kept::InFlight => format!(
            "left rule {} alone while {}: {id} runs on {} and a hook may be about to record it",
            short_arn(arn),
            view.latest_text(),
            short_arn(tg)
        ),
    });
}

/// Why a rule is removed, and whether because it forwards somewhere its version does not run.
fn why_removed(deletion: &Deletion<'_>) -> (String, bool) {
    let target = deletion.target.as_deref();
    let detail = match (&deletion.owner, deletion.entry) {
        (None, _) => "a rule of this service that no ledger entry names".to_owned(),
        (Some(id), None) => format!(
            "tagged for {id}, which the ledger does not know (an orphan, e.g. left by a crash)"
        ),
        (Some(id), Some(e)) if e.status.is_final() => format!("{id} is {}", e.status),
        (Some(id), Some(e)) if !e.wants_pin() => format!(
            "{id} is {} and not yet shifted: it must not be pinned",
            e.status
        ),
        (Some(id), Some(e)) if target != Some(e.target_group_arn.as_str()) => {
            let catch_all = deletion
                .rule
                .is_some_and(|r| matches!(r.action, RuleAction::FixedResponse { .. }));
            let detail = if catch_all {
                format!("a retired catch-all naming {id} that is out of date or not wanted")
            } else {
                format!(
                    "forwards to {}, but {id} runs on {}",
                    target.map_or("something else", short_arn),
                    short_arn(&e.target_group_arn)
                )
            };
            return (detail, true);
        }
        (Some(id), Some(_)) => format!(
            "a pin of {id} that differs from the one the settings want (a duplicate, moved out of place, or changed by hand)"
        ),
    };
    (detail, false)
}

/// Says why each pin the plan creates is needed: a retired catch-all, a pin replacing one that
/// forwarded elsewhere (`repointed`), one deleted from the listener, or one never created.
fn describe_restorations(
    review: &mut PinReview,
    rules: &[ListenerRule],
    entries: &[LedgerEntry],
    repointed: &BTreeSet<DeploymentId>,
) {
    let existing: BTreeSet<&str> = rules.iter().map(|r| r.arn.as_str()).collect();
    for spec in &review.plan.create {
        let id = &spec.deployment_id;
        let detail = if spec.is_catch_all() {
            format!(
                "the retired catch-all (afterWindow: retired) naming production {id} is missing or out of date"
            )
        } else {
            let why = match entries.iter().find(|e| &e.deployment_id == id) {
                Some(e) if repointed.contains(id) => format!(
                    "{id} is {} on {}: replacing the pin that pointed elsewhere",
                    e.status,
                    spec.target_group_arn().map_or("-", short_arn)
                ),
                Some(e) if e.rule_arns.iter().any(|a| !existing.contains(a.as_str())) => format!(
                    "{id} is {} but its pin is gone from the listener (deleted by hand?)",
                    e.status
                ),
                Some(e) => format!(
                    "{id} is {} and must be pinned, but has no pin (lost in a crash?)",
                    e.status
                ),
                None => format!("{id} must be pinned"),
            };
            format!("{why}; pin to {}", describe_spec(spec))
        };
        review.repairs.push(Repair {
            kind: RepairKind::PinRestored,
            deployment_id: Some(id.clone()),
            rule_arn: None,
            detail,
        });
    }
}

/// Adopts the tagged pins the plan keeps but their entry does not list (a crash between "rule
/// created" and "ledger written"): they are recorded on the entry.
fn adopt_tagged_pins(review: &mut PinReview, entries: &[LedgerEntry]) {
    for (id, arns) in &review.plan.keep {
        let recorded = entries
            .iter()
            .find(|e| &e.deployment_id == id)
            .map(|e| e.rule_arns.clone())
            .unwrap_or_default();
        for arn in arns.iter().filter(|a| !recorded.contains(a)) {
            review.repairs.push(Repair {
                kind: RepairKind::PinAdopted,
                deployment_id: Some(id.clone()),
                rule_arn: Some(arn.clone()),
                detail: format!(
                    "a tagged pin of {id} the ledger did not list (a crash between \"rule created\" and \"ledger written\"): recorded"
                ),
            });
        }
    }
}

/// Forgets the pins the ledger lists but the listener no longer has.
fn forget_missing_pins(review: &mut PinReview, rules: &[ListenerRule], entries: &[LedgerEntry]) {
    let existing: BTreeSet<&str> = rules.iter().map(|r| r.arn.as_str()).collect();
    for entry in entries {
        for arn in entry
            .rule_arns
            .iter()
            .filter(|a| !existing.contains(a.as_str()))
        {
            review.repairs.push(Repair {
                kind: RepairKind::PinForgotten,
                deployment_id: Some(entry.deployment_id.clone()),
                rule_arn: Some(arn.clone()),
                detail: "the ledger listed a pin that is no longer on the listener".to_owned(),
            });
        }
    }
}

/// Pins a hook is about to remove are never restored behind its back. While a deployment is in
/// flight a hook removes pins in two steps (the rule, then the ledger write); a reconciler run
/// that reads the ledger between them sees a pin "missing" and would put it back, which makes
/// the hook's write conflict (a reconciler running often enough can fail the hook: "gave up
/// after 6 attempts") and leaves a pin that, if the reconciler then dies, outlives its version's
/// scale-down. So, in flight, the review creates no pin for a `draining` version whose skew
/// window is over (the holding post-shift hook retires it on its next call), nor for a
/// `testing` version while the deployment rolls back (the rollback hooks unpin it).
pub fn leave_unpinning_to_the_hooks(
    review: &mut PinReview,
    draft: &Draft,
    view: &EcsView,
    now: OffsetDateTime,
) {
    if !view.known || view.settled {
        return;
    }
    let rolling_back = view
        .latest
        .as_ref()
        .is_some_and(|d| d.status.starts_with("ROLLBACK"));
    let leaving: BTreeSet<DeploymentId> = draft
        .entries()
        .filter(|e| {
            (e.status == Status::Draining && e.drain_until.is_some_and(|until| until <= now))
                || (rolling_back && e.status == Status::Testing)
        })
        .map(|e| e.deployment_id.clone())
        .collect();
    let held_back: BTreeSet<DeploymentId> = review
        .plan
        .create
        .iter()
        .filter(|s| !s.is_catch_all() && leaving.contains(&s.deployment_id))
        .map(|s| s.deployment_id.clone())
        .collect();
    if held_back.is_empty() {
        return;
    }
    review
        .plan
        .create
        .retain(|s| s.is_catch_all() || !held_back.contains(&s.deployment_id));
    review.repairs.retain(|r| {
        !(r.kind == RepairKind::PinRestored
            && r.rule_arn.is_none()
            && r.deployment_id
                .as_ref()
                .is_some_and(|d| held_back.contains(d)))
    });
    for id in held_back {
        review.notes.push(format!(
            "did not restore the pin of {id} while {}: its hook is unpinning it",
            view.latest_text()
        ));
    }
}

fn describe_spec(spec: &PinSpec) -> String {
    match spec.target_group_arn() {
        Some(tg) => format!("target group {}", short_arn(tg)),
        None => "the retired answer".to_owned(),
    }
}

/// The rule ARNs each entry records once the review is carried out: the rules the plan keeps,
/// the ones created (`created`), the valid pins kept, and the rules left to a deployment in
/// flight that the entry already listed.
pub fn record_pins(
    draft: &mut Draft,
    review: &PinReview,
    created: &BTreeMap<DeploymentId, Vec<String>>,
) {
    for entry in draft.entries_mut() {
        let id = entry.deployment_id.clone();
        let mut arns: Vec<String> = review.plan.keep.get(&id).cloned().unwrap_or_default();
        arns.extend(created.get(&id).cloned().unwrap_or_default());
        arns.extend(review.kept_valid.get(&id).cloned().unwrap_or_default());
        for arn in review.kept_in_flight.get(&id).into_iter().flatten() {
            if entry.rule_arns.contains(arn) {
                arns.push(arn.clone());
            }
        }
        arns.sort();
        arns.dedup();
        entry.rule_arns = arns;
    }
}

/// The draft's changes, each with a history line that says what the reconciler repaired and
/// why, followed by what changed.
pub fn history_lines(draft: &Draft, repairs: &[Repair], actor: &Actor) -> Vec<Change> {
    draft
        .changes(actor)
        .into_iter()
        .map(|mut change| {
            let reasons: Vec<String> = repairs
                .iter()
                .filter(|r| r.deployment_id.as_ref() == Some(&change.entry.deployment_id))
                .map(|r| match &r.rule_arn {
                    Some(arn) => format!("{} {}: {}", r.kind, short_arn(arn), r.detail),
                    None => format!("{}: {}", r.kind, r.detail),
                })
                .collect();
            let reasons = if reasons.is_empty() {
                "brought in line with ECS and the listener".to_owned()
            } else {
                reasons.join("; ")
            };
            change.history.change =
                format!("reconciler repaired: {reasons} [{}]", change.history.change);
            change
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ecs::HookRegistrationFacts;
    use crate::listener::{Condition, Priority, RuleAction, WeightedTarget};
    use serde_json::json;
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:1:service/c/web";
    const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
    const TG1: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web-tg1/01";
    const TG2: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web-tg2/02";

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).unwrap()
    }

    fn version(d: &str, tg: &str, rev: &str) -> RunningVersion {
        RunningVersion {
            deployment_id: id(d),
            service_revision_arn: format!("rev-{rev}"),
            target_group_arn: tg.to_owned(),
            task_definition_arn: format!("td:{rev}"),
        }
    }

    fn wiring() -> ServiceWiring {
        ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "prod".into(),
        }
    }

    fn entry(d: &str, tg: &str, rev: &str, status: Status) -> LedgerEntry {
        let mut e = LedgerEntry::new(SVC, &version(d, tg, rev), &wiring(), status, T0);
        e.version = 3;
        e
    }

    fn settled(production: &RunningVersion) -> EcsView {
        EcsView {
            running: vec![production.clone()],
            settled: true,
            known: true,
            production: Some(production.deployment_id.clone()),
            latest: Some(DeploymentSummary {
                arn: "dep/1".into(),
                status: "SUCCESSFUL".into(),
            }),
            wiring: Some(wiring()),
            ..EcsView::default()
        }
    }

    fn deployment(status: &str, sources: &[&str], target: &str) -> DeploymentFacts {
        DeploymentFacts {
            arn: format!("dep-{target}"),
            status: status.into(),
            created_at: None,
            source_revisions: sources.iter().map(|s| (*s).to_owned()).collect(),
            target_revision: Some(target.into()),
            rollback_revision: None,
            hooks: vec![],
        }
    }

    #[test]
    fn what_runs_follows_the_latest_deployment() {
        let in_flight = running_revisions(&[deployment("IN_PROGRESS", &["r1"], "r2")]);
        assert_eq!(in_flight.revisions, vec!["r1", "r2"]);
        assert!(!in_flight.settled);
        let done = running_revisions(&[
            deployment("SUCCESSFUL", &["r1"], "r2"),
            deployment("SUCCESSFUL", &["r0"], "r1"),
        ]);
        assert_eq!(done.revisions, vec!["r2"]);
        assert_eq!(done.production.as_deref(), Some("r2"));
        assert!(done.settled);
        let mut back = deployment("ROLLBACK_SUCCESSFUL", &["r1"], "r2");
        back.rollback_revision = Some("r1".into());
        let rolled = running_revisions(&[back]);
        assert_eq!(rolled.revisions, vec!["r1"]);
        assert_eq!(rolled.rolled_back, vec!["r2"]);
        assert!(rolled.settled);
        let stopped = running_revisions(&[deployment("STOPPED", &["r1"], "r2")]);
        assert!(!stopped.settled);
        assert_eq!(stopped.revisions, vec!["r1", "r2"]);
        assert_eq!(running_revisions(&[]), RunningRevisions::default());
    }

    #[test]
    fn a_testing_entry_left_by_a_failed_deployment_is_rolled_back() {
        let v1 = version("v1", TG1, "1");
        let mut green = entry("v2", TG2, "2", Status::Testing);
        green.shifted_at = Some(T0);
        let mut draft = Draft::new(SVC, vec![entry("v1", TG1, "1", Status::Live), green]);
        let mut view = settled(&v1);
        view.rolled_back_revisions = vec!["rev-2".into()];
        let repairs = decide(&mut draft, &view, T0);
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert_eq!(repairs[0].kind, RepairKind::Finished);
        assert!(
            repairs[0].detail.contains("stuck in testing"),
            "{repairs:?}"
        );
        assert_eq!(draft.get(&id("v2")).unwrap().status, Status::RolledBack);
        assert_eq!(draft.get(&id("v1")).unwrap().status, Status::Live);
        // Deciding again on the result changes nothing.
        let entries: Vec<LedgerEntry> = draft.entries().cloned().collect();
        let mut again = Draft::new(SVC, entries);
        assert!(decide(&mut again, &view, T0).is_empty());
    }

    #[test]
    fn nothing_is_finished_on_a_guess_while_a_deployment_is_in_flight() {
        let (v1, v2) = (version("v1", TG1, "1"), version("v2", TG2, "2"));
        let view = EcsView {
            running: vec![v1, v2],
            known: true,
            settled: false,
            ..EcsView::default()
        };
        let mut draft = Draft::new(
            SVC,
            vec![
                entry("v1", TG1, "1", Status::Live),
                entry("v2", TG2, "2", Status::Testing),
                entry("v0", "tg-gone", "0", Status::Draining),
            ],
        );
        assert!(decide(&mut draft, &view, T0).is_empty());
        // Unknown ECS: nothing at all.
        let mut draft = Draft::new(SVC, vec![entry("v1", TG2, "1", Status::Live)]);
        assert!(decide(&mut draft, &EcsView::default(), T0).is_empty());
    }

    #[test]
    fn a_draining_version_that_is_gone_retires_and_one_whose_group_is_taken_too() {
        let v3 = version("v3", TG1, "3");
        let mut draft = Draft::new(
            SVC,
            vec![
                entry("v1", TG1, "1", Status::Draining),
                entry("v2", TG2, "2", Status::Live),
                entry("v3", TG1, "3", Status::Testing),
            ],
        );
        let repairs = decide(&mut draft, &settled(&v3), T0);
        let kinds: Vec<_> = repairs
            .iter()
            .map(|r| (r.deployment_id.clone().unwrap().to_string(), r.kind))
            .collect();
        assert!(
            kinds.contains(&("v1".into(), RepairKind::Finished)),
            "{repairs:?}"
        );
        assert!(
            kinds.contains(&("v2".into(), RepairKind::Finished)),
            "{repairs:?}"
        );
        assert!(
            kinds.contains(&("v3".into(), RepairKind::MadeLive)),
            "{repairs:?}"
        );
        assert_eq!(draft.get(&id("v1")).unwrap().status, Status::Retired);
        assert!(
            repairs.iter().any(|r| r.detail.contains("now runs v3")),
            "{repairs:?}"
        );
    }

    #[test]
    fn a_retained_version_is_left_to_retirement_even_though_this_service_does_not_run_it() {
        let v2 = version("v2", TG2, "2");
        let mut draft = Draft::new(
            SVC,
            vec![
                entry("v1", "sg-retention", "1", Status::Retained),
                entry("v2", TG2, "2", Status::Live),
            ],
        );
        let repairs = decide(&mut draft, &settled(&v2), T0);
        assert!(repairs.is_empty(), "{repairs:?}");
        assert_eq!(draft.get(&id("v1")).unwrap().status, Status::Retained);
    }

    #[test]
    fn a_version_ecs_runs_on_the_other_group_is_moved() {
        let v1 = version("v1", TG2, "5");
        let mut draft = Draft::new(SVC, vec![entry("v1", TG1, "1", Status::Live)]);
        let repairs = decide(&mut draft, &settled(&v1), T0);
        assert_eq!(repairs[0].kind, RepairKind::Moved);
        let e = draft.get(&id("v1")).unwrap();
        assert_eq!((e.target_group_arn.as_str(), e.status), (TG2, Status::Live));
    }

    fn rule(arn: &str, priority: u32, conditions: Vec<Condition>, tg: &str) -> ListenerRule {
        ListenerRule {
            arn: arn.into(),
            priority: Priority::Number(priority),
            conditions,
            action: RuleAction::Forward(vec![WeightedTarget {
                target_group_arn: tg.into(),
                weight: 1,
            }]),
            uncopyable: vec![],
        }
    }

    fn listener() -> Vec<ListenerRule> {
        vec![
            ListenerRule {
                arn: "prod".into(),
                priority: Priority::Number(100),
                conditions: vec![Condition::PathPattern(vec!["/api/*".into()])],
                action: RuleAction::Forward(vec![
                    WeightedTarget {
                        target_group_arn: TG1.into(),
                        weight: 1,
                    },
                    WeightedTarget {
                        target_group_arn: TG2.into(),
                        weight: 0,
                    },
                ]),
                uncopyable: vec![],
            },
            ListenerRule {
                arn: "default".into(),
                priority: Priority::Default,
                conditions: vec![],
                action: RuleAction::Other("fixed-response".into()),
                uncopyable: vec![],
            },
        ]
    }

    fn pin_conditions(d: &str, header: &str) -> Vec<Condition> {
        vec![
            Condition::PathPattern(vec!["/api/*".into()]),
            Condition::HttpHeader {
                name: header.into(),
                values: vec![d.into()],
            },
        ]
    }

    fn tag(d: &str) -> PinTags {
        PinTags {
            service_arn: SVC.into(),
            deployment_id: d.into(),
        }
    }

    fn settings(details: Value) -> Settings {
        Settings::resolve(details.as_object().unwrap(), &EnvDefaults::default()).unwrap()
    }

    #[test]
    fn the_listener_review_restores_removes_and_adopts_with_reasons() {
        let v1 = version("v1", TG1, "1");
        let mut live = entry("v1", TG1, "1", Status::Live);
        live.rule_arns = vec!["gone".into()];
        let draft = Draft::new(SVC, vec![live]);
        let mut rules = listener();
        rules.push(rule(
            "orphan",
            99,
            pin_conditions("zzz", "X-Deployment-ID"),
            TG2,
        ));
        let tags = BTreeMap::from([("orphan".to_owned(), tag("zzz"))]);
        let prod = rules[0].clone();
        let review = review_pins(
            &draft,
            &settled(&v1),
            &rules,
            &tags,
            &prod,
            &settings(json!({})),
        )
        .unwrap();
        assert_eq!(review.plan.delete, vec!["orphan".to_owned()]);
        assert_eq!(review.plan.create.len(), 1);
        let kinds: Vec<RepairKind> = review.repairs.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                RepairKind::PinRemoved,
                RepairKind::PinRestored,
                RepairKind::PinForgotten
            ]
        );
        assert!(
            review.repairs[1].detail.contains("deleted by hand"),
            "{:?}",
            review.repairs
        );

        // A tagged pin the ledger does not list is adopted, not recreated.
        let draft = Draft::new(SVC, vec![entry("v1", TG1, "1", Status::Live)]);
        let mut rules = listener();
        rules.push(rule(
            "lost",
            99,
            pin_conditions("v1", "X-Deployment-ID"),
            TG1,
        ));
        let tags = BTreeMap::from([("lost".to_owned(), tag("v1"))]);
        let review = review_pins(
            &draft,
            &settled(&v1),
            &rules,
            &tags,
            &prod,
            &settings(json!({})),
        )
        .unwrap();
        assert!(review.plan.is_noop());
        assert_eq!(review.repairs[0].kind, RepairKind::PinAdopted);
        let mut draft = draft;
        record_pins(&mut draft, &review, &BTreeMap::new());
        assert_eq!(
            draft.get(&id("v1")).unwrap().rule_arns,
            vec!["lost".to_owned()]
        );
    }

    #[test]
    fn in_flight_a_pin_the_hook_is_removing_is_not_restored() {
        // v1's window is over (released): the holding hook has deleted its pin and is about to
        // write `retired`. A review in between must not put the pin back.
        let (v1, v2) = (version("v1", TG1, "1"), version("v2", TG2, "2"));
        let mut blue = entry("v1", TG1, "1", Status::Draining);
        blue.drain_until = Some(T0);
        blue.rule_arns = vec!["deleted-by-the-hook".into()];
        let mut green = entry("v2", TG2, "2", Status::Live);
        green.rule_arns = vec!["green-pin".into()];
        let draft = Draft::new(SVC, vec![blue, green]);
        let mut rules = listener();
        rules.push(rule(
            "green-pin",
            99,
            pin_conditions("v2", "X-Deployment-ID"),
            TG2,
        ));
        let prod = rules[0].clone();
        let mut view = EcsView {
            running: vec![v1.clone(), v2.clone()],
            known: true,
            settled: false,
            latest: Some(DeploymentSummary {
                arn: "dep/2".into(),
                status: "IN_PROGRESS".into(),
            }),
            wiring: Some(wiring()),
            ..EcsView::default()
        };
        let s = settings(json!({}));
        let review = |view: &EcsView, now| {
            let mut review =
                review_pins(&draft, view, &rules, &BTreeMap::new(), &prod, &s).unwrap();
            leave_unpinning_to_the_hooks(&mut review, &draft, view, now);
            review
        };
        let during = review(&view, T0);
        assert!(during.plan.create.is_empty(), "{:?}", during.plan.create);
        assert!(
            during
                .repairs
                .iter()
                .all(|r| r.kind != RepairKind::PinRestored),
            "{:?}",
            during.repairs
        );
        assert!(during.notes.iter().any(|n| n.contains("unpinning it")));
        // Inside its window the pin is restored as before (deleted by hand).
        let earlier = review(&view, T0 - std::time::Duration::from_secs(60));
        assert_eq!(earlier.plan.create.len(), 1);
        // Green while its deployment rolls back is left to the rollback hooks.
        let mut testing = entry("v2", TG2, "2", Status::Testing);
        testing.shifted_at = Some(T0);
        testing.rule_arns = vec!["deleted-by-the-hook".into()];
        let draft = Draft::new(SVC, vec![entry("v1", TG1, "1", Status::Live), testing]);
        view.latest.as_mut().unwrap().status = "ROLLBACK_IN_PROGRESS".into();
        let mut rolled =
            review_pins(&draft, &view, &listener(), &BTreeMap::new(), &prod, &s).unwrap();
        leave_unpinning_to_the_hooks(&mut rolled, &draft, &view, T0);
        assert!(
            rolled
                .plan
                .create
                .iter()
                .all(|c| c.deployment_id.as_str() != "v2"),
            "{:?}",
            rolled.plan.create
        );
        // Settled, nothing is held back.
        let settled_view = settled(&v1);
        let mut after = review_pins(
            &draft,
            &settled_view,
            &listener(),
            &BTreeMap::new(),
            &prod,
            &s,
        )
        .unwrap();
        let before = after.plan.create.len();
        leave_unpinning_to_the_hooks(&mut after, &draft, &settled_view, T0);
        assert_eq!(after.plan.create.len(), before);
    }

    #[test]
    fn a_valid_pin_of_a_running_version_is_never_removed() {
        // The pin was made with another header name than the settings the reconciler knows:
        // it still leads v1 to where v1 runs, so it stays.
        let v1 = version("v1", TG1, "1");
        let mut live = entry("v1", TG1, "1", Status::Live);
        live.rule_arns = vec!["custom".into()];
        let draft = Draft::new(SVC, vec![live]);
        let mut rules = listener();
        rules.push(rule("custom", 99, pin_conditions("v1", "X-Build"), TG1));
        let tags = BTreeMap::from([("custom".to_owned(), tag("v1"))]);
        let prod = rules[0].clone();
        let review = review_pins(
            &draft,
            &settled(&v1),
            &rules,
            &tags,
            &prod,
            &settings(json!({})),
        )
        .unwrap();
        assert!(review.plan.delete.is_empty(), "{review:?}");
        assert_eq!(review.kept_valid[&id("v1")], vec!["custom".to_owned()]);
    }

    #[test]
    fn rules_of_a_deployment_in_flight_are_left_to_its_hooks() {
        // production-shift created green's pin and has not written the ledger yet.
        let (v1, v2) = (version("v1", TG1, "1"), version("v2", TG2, "2"));
        let view = EcsView {
            running: vec![v1, v2],
            known: true,
            settled: false,
            ..EcsView::default()
        };
        let draft = Draft::new(
            SVC,
            vec![
                entry("v1", TG1, "1", Status::Live),
                entry("v2", TG2, "2", Status::Testing),
            ],
        );
        let mut rules = listener();
        rules.push(rule(
            "fresh",
            98,
            pin_conditions("v2", "X-Deployment-ID"),
            TG2,
        ));
        let tags = BTreeMap::from([("fresh".to_owned(), tag("v2"))]);
        let prod = rules[0].clone();
        let review =
            review_pins(&draft, &view, &rules, &tags, &prod, &settings(json!({}))).unwrap();
        assert!(review.plan.delete.is_empty(), "{review:?}");
        assert!(
            review.notes[0].contains("hook may be about to record it"),
            "{review:?}"
        );
        // The live version's missing pin is still restored.
        assert_eq!(review.plan.create.len(), 1);
        assert_eq!(review.plan.create[0].deployment_id, id("v1"));
    }

    #[test]
    fn history_lines_say_what_was_repaired_and_why() {
        let v1 = version("v1", TG1, "1");
        let mut draft = Draft::new(
            SVC,
            vec![
                entry("v1", TG1, "1", Status::Live),
                entry("v2", TG2, "2", Status::Testing),
            ],
        );
        let repairs = decide(&mut draft, &settled(&v1), T0);
        let actor = Actor {
            stage: STAGE.into(),
            execution_id: "cli".into(),
            identity: "arn:aws:iam::123456789012:user/ops".into(),
            now: T0,
        };
        let changes = history_lines(&draft, &repairs, &actor);
        assert_eq!(changes.len(), 1);
        let line = &changes[0].history.change;
        assert!(
            line.starts_with("reconciler repaired: finished: testing -> rolled_back"),
            "{line}"
        );
        assert!(line.ends_with("[status testing -> rolled_back]"), "{line}");
        assert_eq!(changes[0].history.stage, "reconciler");
        assert_eq!(changes[0].expected_version, 3);
    }

    #[test]
    fn settings_come_from_the_hooks_of_the_latest_deployment() {
        let hook = |stages: &[&str], details: Value| HookRegistrationFacts {
            target_arn: "arn:aws:lambda:us-east-1:1:function:f".into(),
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            details: details.as_object().cloned(),
        };
        let mut d = deployment("SUCCESSFUL", &["r1"], "r2");
        d.hooks = vec![
            hook(&["POST_SCALE_UP"], json!({"queryParam": "dpl"})),
            hook(&["PRODUCTION_TRAFFIC_SHIFT"], json!({"someOtherTool": 1})),
            hook(
                &["POST_PRODUCTION_TRAFFIC_SHIFT"],
                json!({"queryParam": "dpl", "skewWindow": "2h"}),
            ),
        ];
        let (s, source) = service_settings(&[d.clone()], &EnvDefaults::default()).unwrap();
        assert_eq!(s.query_param.as_deref(), Some("dpl"));
        assert!(matches!(source, SettingsSource::HookDetails { .. }));
        d.hooks.push(hook(
            &["POST_TEST_TRAFFIC_SHIFT"],
            json!({"queryParam": "q"}),
        ));
        assert!(matches!(
            service_settings(&[d], &EnvDefaults::default()),
            Err(ServiceSettingsError::Conflicting { .. })
        ));
        let (s, source) = service_settings(&[], &EnvDefaults::default()).unwrap();
        assert_eq!(
            (s.header_name.as_str(), source),
            ("X-Deployment-ID", SettingsSource::Defaults)
        );
    }
}
