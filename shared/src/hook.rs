//! Running one lifecycle-hook invocation: read the ledger (and ECS where the ledger does not
//! know), decide, bring the pins in line, write the ledger, answer ECS. Every failure becomes a
//! defined answer; nothing here panics or returns a function error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::DeploymentId;
use crate::aws::ecs::{DiscoveryError, Ecs, EcsError, running_version};
use crate::aws::elb::{Elb, NewRule};
use crate::aws::ledger_store::{LedgerError, LedgerStore};
use crate::aws::{AwsError, AwsErrorKind};
use crate::event::{HookAnswer, HookEvent, LifecycleStage, MalformedEvent};
use crate::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring, Status};
use crate::pins::{self, PinError, PinTags};
use crate::settings::{AfterWindow, EnvDefaults, OnError, Settings, SettingsError};
use crate::stages::{self, Actor, Draft, Hold};

/// Read the ledger and decide again this many times when another writer got there first.
const MAX_ATTEMPTS: u32 = 6;

/// How long a stage keeps starting over after AWS throttled it or failed transiently (5xx,
/// timeouts, dropped connections) beyond the SDK's own retries: a throttling storm of a few
/// seconds must not roll a good deployment back. Well inside the functions' 120 s timeout even
/// when the last attempt's calls run into the SDK's 40 s operation timeout.
const TRANSIENT_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// The three lifecycle-hook functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFunction {
    PostTestTraffic,
    ProductionShift,
    PostShift,
}

impl HookFunction {
    pub fn name(self) -> &'static str {
        match self {
            HookFunction::PostTestTraffic => "post-test-traffic",
            HookFunction::ProductionShift => "production-shift",
            HookFunction::PostShift => "post-shift",
        }
    }

    /// The stages this function must be registered at.
    pub fn stages(self) -> &'static [LifecycleStage] {
        match self {
            HookFunction::PostTestTraffic => &[LifecycleStage::PostTestTrafficShift],
            HookFunction::ProductionShift => &[
                LifecycleStage::TestTrafficShift,
                LifecycleStage::ProductionTrafficShift,
            ],
            HookFunction::PostShift => &[LifecycleStage::PostProductionTrafficShift],
        }
    }
}

/// The AWS operations a hook uses, built once per cold start.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ecs: Ecs,
    pub elb: Elb,
    pub ledger: LedgerStore,
}

/// Everything read once at cold start.
#[derive(Clone, Debug)]
pub struct HookConfig {
    pub function: HookFunction,
    pub defaults: EnvDefaults,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Malformed(#[from] MalformedEvent),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{function} does not handle stage {stage}; register it at {expected}")]
    UnhandledStage {
        function: &'static str,
        stage: LifecycleStage,
        expected: String,
    },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Ledger(LedgerError),
    #[error(
        "the listener has no room for another rule (ALB rule quota): {0}; remove unused rules or raise the quota"
    )]
    RuleQuota(AwsError),
    #[error("gave up after {0} attempts: the ledger or the listener kept changing underneath")]
    Contention(u32),
    #[error("{0}")]
    Inconsistent(String),
}

impl From<EcsError> for HookError {
    fn from(e: EcsError) -> Self {
        match e {
            EcsError::Aws(e) => HookError::Aws(e),
            EcsError::Discovery(e) => HookError::Discovery(e),
        }
    }
}

impl From<LedgerError> for HookError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Aws(e) => HookError::Aws(e),
            other => HookError::Ledger(other),
        }
    }
}

impl HookError {
    /// A short machine-readable kind for logs and the ledger.
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::Malformed(_) => "MalformedEvent",
            HookError::Settings(_) => "InvalidSetting",
            HookError::UnhandledStage { .. } => "UnhandledStage",
            HookError::Discovery(_) => "Discovery",
            HookError::Pins(PinError::NoFreePriority { .. }) => "NoFreePriority",
            HookError::Pins(_) => "PinRule",
            HookError::Aws(e) => match e.kind {
                AwsErrorKind::Throttling => "AwsThrottling",
                AwsErrorKind::AccessDenied => "AwsAccessDenied",
                AwsErrorKind::NotFound => "AwsNotFound",
                AwsErrorKind::Conflict => "AwsConflict",
                AwsErrorKind::Quota => "AwsQuota",
                AwsErrorKind::Transient => "AwsUnavailable",
                AwsErrorKind::Invalid => "AwsRejected",
            },
            HookError::Ledger(_) => "Ledger",
            HookError::RuleQuota(_) => "RuleQuota",
            HookError::Contention(_) => "Contention",
            HookError::Inconsistent(_) => "Inconsistent",
        }
    }

    fn is_retryable_conflict(&self) -> bool {
        matches!(self, HookError::Aws(e) if e.kind == AwsErrorKind::Conflict)
    }

    /// Throttling or a transient failure that outlasted the SDK's retries: worth starting the
    /// stage over a little later (every stage is idempotent).
    fn is_transient(&self) -> bool {
        matches!(self, HookError::Aws(e) if matches!(e.kind, AwsErrorKind::Throttling | AwsErrorKind::Transient))
    }
}

/// Handles one invocation and always produces an answer ECS understands.
pub async fn handle(config: &HookConfig, clients: &Clients, raw: Value) -> HookAnswer {
    let function = config.function.name();
    let event = match HookEvent::parse(&raw) {
        Ok(event) => event,
        Err(err) => {
            let raw_details = raw
                .get("hookDetails")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let on_error = Settings::on_error_only(&raw_details, &config.defaults);
            error!(function, error_kind = "MalformedEvent", error = %err, on_error = ?on_error, "rejected hook event");
            return answer_for_error(on_error);
        }
    };
    let settings = match Settings::resolve(&event.hook_details, &config.defaults) {
        Ok(settings) => settings,
        Err(err) => {
            let on_error = Settings::on_error_only(&event.hook_details, &config.defaults);
            let err = HookError::from(err);
            report_error(&event, function, &err, on_error, clients).await;
            return answer_for_error(on_error);
        }
    };
    match run(config.function, &event, &settings, clients).await {
        Ok(Hold::Done) => {
            info!(function, stage = %event.stage, execution_id = %event.execution_id, service = %event.service_arn, hook_status = "SUCCEEDED", "stage done");
            HookAnswer::succeeded()
        }
        Ok(Hold::For(delay)) => {
            info!(function, stage = %event.stage, execution_id = %event.execution_id, service = %event.service_arn, hook_status = "IN_PROGRESS", call_back_delay_s = delay.as_secs(), "holding the deployment");
            HookAnswer::in_progress(delay, event.hook_details.clone())
        }
        Err(err) => {
            report_error(&event, function, &err, settings.on_error, clients).await;
            answer_for_error(settings.on_error)
        }
    }
}

fn answer_for_error(on_error: OnError) -> HookAnswer {
    match on_error {
        OnError::Rollback => HookAnswer::failed(),
        OnError::Continue => HookAnswer::succeeded(),
    }
}

/// Logs the error; with `onError: continue` also records it on green's ledger entry, since
/// nobody will see a FAILED answer.
async fn report_error(
    event: &HookEvent,
    function: &'static str,
    err: &HookError,
    on_error: OnError,
    clients: &Clients,
) {
    error!(
        function,
        stage = %event.stage,
        execution_id = %event.execution_id,
        service = %event.service_arn,
        error_kind = err.kind(),
        error = %err,
        on_error = ?on_error,
        "hook failed"
    );
    if on_error != OnError::Continue {
        return;
    }
    let Ok(entries) = clients.ledger.load(&event.service_arn).await else {
        warn!(function, "could not record the error in the ledger");
        return;
    };
    let draft = Draft::new(&event.service_arn, entries);
    let Some(green) = draft.by_revision(&event.target_revision_arn) else {
        return;
    };
    let record = HistoryRecord {
        at: OffsetDateTime::now_utc(),
        stage: event.stage.to_string(),
        execution_id: event.execution_id.clone(),
        change: format!(
            "{function} failed and continued (onError: continue): {}: {err}",
            err.kind()
        ),
    };
    if let Err(e) = clients
        .ledger
        .record_error(&event.service_arn, &green.deployment_id, &record)
        .await
    {
        warn!(function, error = %e, "could not record the error in the ledger");
    }
}

/// One stage, retried from a fresh read when another writer changed the ledger or listener.
pub async fn run(
    function: HookFunction,
    event: &HookEvent,
    settings: &Settings,
    clients: &Clients,
) -> Result<Hold, HookError> {
    if !function.stages().contains(&event.stage) {
        return Err(HookError::UnhandledStage {
            function: function.name(),
            stage: event.stage,
            expected: function
                .stages()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
        });
    }
    let started = std::time::Instant::now();
    let mut attempt = 1;
    let mut transient_retries = 0;
    loop {
        match attempt_stage(event, settings, clients).await {
            Err(err) if err.is_retryable_conflict() && attempt < MAX_ATTEMPTS => {
                warn!(stage = %event.stage, attempt, error = %err, "conflicting change; reading again");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(err) if err.is_retryable_conflict() => return Err(HookError::Contention(attempt)),
            Err(err) if err.is_transient() => {
                transient_retries += 1;
                let wait = backoff(transient_retries + 2).min(Duration::from_secs(5));
                if started.elapsed() + wait > TRANSIENT_RETRY_BUDGET {
                    return Err(err);
                }
                warn!(stage = %event.stage, retry = transient_retries, error = %err, "AWS throttled or failed transiently; starting the stage over");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The weight a traffic-shift event gives the target revision (green); 0 means a rollback.
fn green_weight(event: &HookEvent) -> Result<u8, HookError> {
    event
        .shifted_weights()
        .get(&event.target_revision_arn)
        .copied()
        .ok_or_else(|| {
            HookError::Malformed(MalformedEvent(format!(
                "{} event carries no traffic weight for the target revision",
                event.stage
            )))
        })
}

/// Jittered exponential backoff: 50 ms, 100 ms, 200 ms … plus up to 50 ms.
fn backoff(attempt: u32) -> Duration {
    let jitter = OffsetDateTime::now_utc().nanosecond() as u64 % 50;
    Duration::from_millis(50 * (1 << (attempt - 1).min(5)) + jitter)
}

async fn attempt_stage(
    event: &HookEvent,
    settings: &Settings,
    clients: &Clients,
) -> Result<Hold, HookError> {
    let now = OffsetDateTime::now_utc();
    if event.stage == LifecycleStage::TestTrafficShift && green_weight(event)? > 0 {
        // Test traffic moving forward needs no pin (green is pinned from the production shift),
        // so it is answered without reading anything.
        return Ok(Hold::Done);
    }
    let mut draft = Draft::new(
        &event.service_arn,
        clients.ledger.load(&event.service_arn).await?,
    );
    // ECS scales a version down right after a rollback (green) and after the hold (blue): the
    // listener is checked then even if the ledger says nothing changed, so that a tagged pin a
    // crashed or failed invocation created but never recorded cannot outlive its version.
    let mut before_scale_down = false;
    let (hold, wiring) = match event.stage {
        LifecycleStage::PostTestTrafficShift => {
            let (green, wiring) = green_version(event, &draft, settings, clients).await?;
            let blue = blue_before_shift(event, &draft, &green, settings, clients).await?;
            info!(stage = %event.stage, green = %green.deployment_id, blue = ?blue.as_ref().map(|b| b.deployment_id.as_str()), "recording the deployment");
            stages::post_test_traffic(&mut draft, &green, blue.as_ref(), &wiring, now);
            (Hold::Done, wiring)
        }
        LifecycleStage::TestTrafficShift | LifecycleStage::ProductionTrafficShift => {
            let green_weight = green_weight(event)?;
            let weights = event.shifted_weights();
            let others: Vec<&String> = weights
                .keys()
                .filter(|r| **r != event.target_revision_arn)
                .collect();
            if green_weight == 0 {
                let blue = blue_from_weights(&others, &draft, settings, clients).await?;
                let green = match green_version(event, &draft, settings, clients).await {
                    Ok((green, _)) => Some(green),
                    // A rollback must still restore blue even if green cannot be described.
                    Err(err) => {
                        warn!(stage = %event.stage, error = %err, "green unknown during rollback; unpinning by revision");
                        None
                    }
                };
                let Some((blue, wiring)) = blue else {
                    return Err(HookError::Inconsistent(
                        "rollback with no previous revision to return to: the event's weights name no other revision and the ledger has no live version".to_owned(),
                    ));
                };
                warn!(stage = %event.stage, green = ?green.as_ref().map(|g| g.deployment_id.as_str()), blue = %blue.deployment_id, "rollback: unpinning green, keeping blue pinned");
                stages::rollback(
                    &mut draft,
                    &event.target_revision_arn,
                    green.as_ref().map(|g| &g.deployment_id),
                    Some(&blue),
                    &wiring,
                    now,
                );
                before_scale_down = true;
                (Hold::Done, wiring)
            } else if event.stage == LifecycleStage::TestTrafficShift {
                // Answered above, before the ledger was read.
                return Ok(Hold::Done);
            } else {
                let (green, wiring) = green_version(event, &draft, settings, clients).await?;
                let blue = blue_from_weights(&others, &draft, settings, clients)
                    .await?
                    .map(|(b, _)| b);
                info!(stage = %event.stage, green = %green.deployment_id, green_weight, "production shift: pinning green");
                stages::production_shift(&mut draft, &green, blue.as_ref(), &wiring, now);
                (Hold::Done, wiring)
            }
        }
        LifecycleStage::PostProductionTrafficShift => {
            let (green, wiring) = green_version(event, &draft, settings, clients).await?;
            let hold = stages::post_shift(
                &mut draft,
                &green,
                &wiring,
                settings.skew_window,
                settings.poll_interval,
                now,
            );
            before_scale_down = hold == Hold::Done;
            (hold, wiring)
        }
        other => {
            return Err(HookError::Inconsistent(format!(
                "stage {other} has no skewguard behaviour"
            )));
        }
    };
    let catch_all_moved =
        settings.after_window == AfterWindow::Retired && draft.production_changed();
    if draft.pins_need_attention() || catch_all_moved || before_scale_down {
        sync_pins(&mut draft, &wiring, settings, &clients.elb).await?;
    }
    let actor = Actor {
        stage: event.stage.to_string(),
        execution_id: event.execution_id.clone(),
        now,
    };
    let changes = draft.changes(&actor);
    clients.ledger.commit(&changes).await?;
    for change in &changes {
        info!(
            stage = %event.stage,
            deployment_id = %change.entry.deployment_id,
            status = %change.entry.status,
            pins = change.entry.rule_arns.len(),
            change = %change.history.change,
            "ledger updated"
        );
    }
    Ok(hold)
}

impl LedgerEntry {
    /// Where this entry says its version runs.
    pub fn running(&self) -> RunningVersion {
        RunningVersion {
            deployment_id: self.deployment_id.clone(),
            service_revision_arn: self.service_revision_arn.clone(),
            target_group_arn: self.target_group_arn.clone(),
            task_definition_arn: self.task_definition_arn.clone(),
        }
    }
}

/// Describes a revision and its task definition: which version it runs, where.
pub async fn discover(
    revision_arn: &str,
    settings: &Settings,
    clients: &Clients,
) -> Result<(RunningVersion, ServiceWiring), HookError> {
    let revision = clients
        .ecs
        .describe_revisions(&[revision_arn.to_owned()])
        .await?
        .remove(0);
    let task_definition = clients
        .ecs
        .describe_task_definition(&revision.task_definition_arn)
        .await?;
    Ok(running_version(
        &revision,
        &task_definition,
        settings.container.as_deref(),
        &settings.deployment_id_from,
    )?)
}

/// Green: from the ledger when this revision was seen before, else from ECS.
async fn green_version(
    event: &HookEvent,
    draft: &Draft,
    settings: &Settings,
    clients: &Clients,
) -> Result<(RunningVersion, ServiceWiring), HookError> {
    match draft.by_revision(&event.target_revision_arn) {
        Some(entry) if !entry.listener_arn.is_empty() => Ok((entry.running(), entry.wiring())),
        _ => discover(&event.target_revision_arn, settings, clients).await,
    }
}

/// Blue before the production shift: the deployment's source revision (per ECS, so a stale
/// ledger can never name the wrong version), taken from the ledger when it knows that revision
/// and described otherwise (a service's first deployment under skewguard).
async fn blue_before_shift(
    event: &HookEvent,
    draft: &Draft,
    green: &RunningVersion,
    settings: &Settings,
    clients: &Clients,
) -> Result<Option<RunningVersion>, HookError> {
    let sources = clients.ecs.source_revisions(&event.deployment_arn).await?;
    if sources.is_empty() {
        info!(stage = %event.stage, "no source revision: the service's first deployment");
        return Ok(None);
    }
    if let Some(known) = draft
        .entries()
        .filter(|e| !e.status.is_final() && e.target_group_arn != green.target_group_arn)
        .find(|e| sources.contains(&e.service_revision_arn))
    {
        return Ok(Some(known.running()));
    }
    let revisions = clients.ecs.describe_revisions(&sources).await?;
    let mut candidates = Vec::new();
    for revision in revisions {
        match revision.placement() {
            Ok((tg, _)) if tg != green.target_group_arn => candidates.push(revision),
            Ok(_) => {}
            Err(err) => warn!(revision = %revision.arn, error = %err, "source revision skipped"),
        }
    }
    let Some(revision) = candidates.into_iter().next() else {
        return Err(HookError::Inconsistent(format!(
            "none of the deployment's source revisions ({}) serves from a target group other than green's {}",
            sources.join(", "),
            green.target_group_arn
        )));
    };
    let task_definition = clients
        .ecs
        .describe_task_definition(&revision.task_definition_arn)
        .await?;
    let (blue, _) = running_version(
        &revision,
        &task_definition,
        settings.container.as_deref(),
        &settings.deployment_id_from,
    )?;
    Ok(Some(blue))
}

/// Blue during a traffic shift: the other revision in the event's weights (known to the ledger
/// or described), else the live entry in the ledger.
async fn blue_from_weights(
    others: &[&String],
    draft: &Draft,
    settings: &Settings,
    clients: &Clients,
) -> Result<Option<(RunningVersion, ServiceWiring)>, HookError> {
    for revision in others {
        if let Some(entry) = draft
            .by_revision(revision)
            .filter(|e| !e.listener_arn.is_empty())
        {
            return Ok(Some((entry.running(), entry.wiring())));
        }
    }
    if let Some(revision) = others.first() {
        return discover(revision, settings, clients).await.map(Some);
    }
    Ok(draft
        .entries()
        .filter(|e| e.status == Status::Live)
        .max_by_key(|e| e.live_at)
        .map(|e| (e.running(), e.wiring())))
}

/// Makes the listener hold exactly the pins the draft's entries want, and records the rule ARNs
/// on the entries. Rules are created with their tags in one call, so a crash between here and
/// the ledger write leaves a tagged rule that the next invocation adopts.
pub async fn sync_pins(
    draft: &mut Draft,
    wiring: &ServiceWiring,
    settings: &Settings,
    elb: &Elb,
) -> Result<(), HookError> {
    let service_arn = draft.service_arn().to_owned();
    for attempt in 1..=MAX_ATTEMPTS {
        let rules = elb.describe_listener_rules(&wiring.listener_arn).await?;
        let production_rule = rules
            .iter()
            .find(|r| r.arn == wiring.production_rule_arn)
            .cloned()
            .ok_or_else(|| PinError::ProductionRuleMissing {
                rule: wiring.production_rule_arn.clone(),
                listener: wiring.listener_arn.clone(),
            })?;
        let entries: Vec<LedgerEntry> = draft.entries().cloned().collect();
        let candidates = pins::orphan_candidates(&entries, &rules, &production_rule);
        let tags = if candidates.is_empty() {
            BTreeMap::new()
        } else {
            elb.describe_pin_tags(&candidates).await?
        };
        let plan = pins::plan(
            &service_arn,
            &entries,
            &rules,
            &tags,
            &production_rule,
            settings,
        )?;
        let mut taken = pins::taken_priorities(&rules);
        for arn in &plan.delete {
            elb.delete_rule(arn).await?;
            if let Some(p) = pins::priority_of(&rules, arn).and_then(|p| p.number()) {
                taken.remove(&p);
            }
            info!(rule_arn = %arn, "pin removed");
        }
        let mut pins_by_id: BTreeMap<DeploymentId, Vec<String>> = plan.keep.clone();
        let mut collided = false;
        for spec in &plan.create {
            let priority = plan
                .gap
                .priority_for(spec, &taken)
                .ok_or_else(|| plan.gap.exhausted(&spec.deployment_id))?;
            let rule = NewRule {
                listener_arn: wiring.listener_arn.clone(),
                priority,
                conditions: spec.conditions.clone(),
                action: spec.action.clone(),
                tags: PinTags {
                    service_arn: service_arn.clone(),
                    deployment_id: spec.deployment_id.to_string(),
                },
            };
            match elb.create_rule(&rule).await {
                Ok(arn) => {
                    info!(deployment_id = %spec.deployment_id, priority, rule_arn = %arn, "pin created");
                    taken.insert(priority);
                    pins_by_id
                        .entry(spec.deployment_id.clone())
                        .or_default()
                        .push(arn);
                }
                Err(err) if err.is("PriorityInUse") => {
                    warn!(
                        priority,
                        attempt, "priority taken meanwhile; reading the listener again"
                    );
                    collided = true;
                    break;
                }
                Err(err) if err.kind == AwsErrorKind::Quota => {
                    return Err(HookError::RuleQuota(err));
                }
                Err(err) => return Err(err.into()),
            }
        }
        // Record what exists now, even after a collision, so the next pass counts these rules
        // as this service's own.
        for entry in draft.entries_mut() {
            let mut arns = pins_by_id.remove(&entry.deployment_id).unwrap_or_default();
            arns.sort();
            entry.rule_arns = arns;
        }
        if !collided {
            return Ok(());
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
    Err(HookError::Contention(MAX_ATTEMPTS))
}
