//! Running one lifecycle-hook invocation: read the ledger (and ECS where the ledger does not
//! know), decide, bring the pins in line, write the ledger, answer ECS. Every failure becomes a
//! defined answer; nothing here panics or returns a function error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::DeploymentId;
use crate::apply::{self, ApplyError, ListenerChanges};
use crate::aws::cloudwatch::CloudWatch;
use crate::aws::ecs::{DiscoveryError, Ecs, EcsError, running_version};
use crate::aws::elb::Elb;
use crate::aws::ledger_store::{LedgerError, LedgerStore};
use crate::aws::{AwsError, AwsErrorKind, DisplayErrorContext};
use crate::event::{HookAnswer, HookEvent, LifecycleStage, MalformedEvent, hook_details_of};
use crate::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring, Status};
use crate::pins::{self, PinError};
use crate::retry::{self, Failure};
use crate::settings::{
    AfterWindow, EnvDefaults, OnError, ROLLBACK_RETRIES_KEY, Retention, Settings, SettingsError,
};
use crate::stages::{self, Actor, Draft, Hold};
use crate::starter;

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
            HookFunction::PostTestTraffic => &[
                LifecycleStage::ReconcileService,
                LifecycleStage::PreScaleUp,
                LifecycleStage::PostTestTrafficShift,
            ],
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
    /// The idle check of retained versions (the ALB's `RequestCount`).
    pub cloudwatch: CloudWatch,
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

impl From<ApplyError> for HookError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::RuleQuota(e) => HookError::RuleQuota(e),
            ApplyError::Aws(e) => HookError::Aws(e),
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
            HookError::Aws(e) => e.kind.error_kind(),
            HookError::Ledger(_) => "Ledger",
            HookError::RuleQuota(_) => "RuleQuota",
            HookError::Contention(_) => "Contention",
            HookError::Inconsistent(_) => "Inconsistent",
        }
    }

    /// How the pipeline's retry treats this error: a lost race is decided again from a fresh
    /// observation; throttling or a transient failure that outlasted the SDK's retries starts
    /// the stage over a little later (every stage is idempotent).
    pub fn failure(&self) -> Failure {
        match self {
            HookError::Aws(e) => Failure::of_aws(e.kind),
            _ => Failure::Final,
        }
    }
}

/// Handles one invocation and always produces an answer ECS understands.
pub async fn handle(config: &HookConfig, clients: &Clients, raw: Value) -> HookAnswer {
    let function = config.function.name();
    let event = match HookEvent::parse(&raw) {
        Ok(event) => event,
        Err(err) => {
            let raw_details = hook_details_of(raw.get("hookDetails")).unwrap_or_default();
            let on_error = Settings::on_error_only(&raw_details, &config.defaults);
            error!(function, error_kind = "MalformedEvent", error = %err, on_error = ?on_error, "rejected hook event");
            crate::metrics::record(|c| {
                *c.errors.entry("MalformedEvent".to_owned()).or_default() += 1
            });
            return answer_for_error(on_error);
        }
    };
    let settings = match Settings::resolve(&event.hook_details, &config.defaults) {
        Ok(settings) => settings,
        Err(err) => {
            let on_error = Settings::on_error_only(&event.hook_details, &config.defaults);
            let err = HookError::from(err);
            report_error(&event, function, &err, on_error, None, clients).await;
            return answer_for_error(on_error);
        }
    };
    let mut direction = None;
    match run(config.function, &event, &settings, clients, &mut direction).await {
        Ok(Hold::Done) => {
            info!(function, stage = %event.stage, execution_id = %event.execution_id, service = %event.service_arn, hook_status = "SUCCEEDED", "stage done");
            HookAnswer::succeeded()
        }
        Ok(hold @ (Hold::For(_) | Hold::Next)) => {
            // (`run` turns a step still to make into a short call-back.)
            let delay = match hold {
                Hold::For(delay) => delay,
                _ => Duration::from_secs(1),
            };
            info!(function, stage = %event.stage, execution_id = %event.execution_id, service = %event.service_arn, hook_status = "IN_PROGRESS", call_back_delay_s = delay.as_secs(), "holding the deployment");
            HookAnswer::in_progress(delay, event.hook_details.clone())
        }
        Err(err)
            if direction == Some(Shift::Rollback)
                || (direction.is_none()
                    && event.stage == LifecycleStage::TestTrafficShift
                    && event.green_weight().is_none()) =>
        {
            // (A TEST_TRAFFIC_SHIFT whose direction could not be found out is treated as a
            // rollback: going forward it has nothing to do anyway.)
            // FAILED during a rollback has no documented meaning (ECS may end in ROLLBACK_FAILED
            // with green's pin still up): whatever onError says, ECS is asked to call again
            // shortly, a bounded number of times; then the hook answers SUCCEEDED and leaves the
            // listener to the reconciler. Blue serves production during a rollback, so a pin of
            // blue that could not be restored only sends its clients where they go anyway.
            report_error(
                &event,
                function,
                &err,
                OnError::Continue,
                Some(&settings),
                clients,
            )
            .await;
            // Counted per stage: production-shift is one hook registered at two stages.
            let mut counts = event
                .hook_details
                .get(ROLLBACK_RETRIES_KEY)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let retries = counts
                .get(event.stage.as_str())
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if retries < MAX_ROLLBACK_RETRIES {
                let delay = settings.poll_interval.min(ROLLBACK_RETRY_DELAY);
                let mut details = event.hook_details.clone();
                counts.insert(event.stage.as_str().to_owned(), Value::from(retries + 1));
                details.insert(ROLLBACK_RETRIES_KEY.to_owned(), Value::Object(counts));
                warn!(function, stage = %event.stage, hook_status = "IN_PROGRESS", call_back_delay_s = delay.as_secs(), rollback_retries = retries + 1, "rollback not finished; asking ECS to call again");
                HookAnswer::in_progress(delay, details)
            } else {
                error!(function, stage = %event.stage, hook_status = "SUCCEEDED", rollback_retries = retries, "rollback still not finished; leaving the listener to the reconciler");
                HookAnswer::succeeded()
            }
        }
        Err(err) => {
            report_error(
                &event,
                function,
                &err,
                settings.on_error,
                Some(&settings),
                clients,
            )
            .await;
            answer_for_error(settings.on_error)
        }
    }
}

/// How many steps of a retention copy's start one post-shift call makes before it answers
/// (recording, target group, pins at weight 0, service: a start takes four).
pub const MAX_STEPS_PER_CALL: u32 = 8;

/// How soon ECS calls a traffic-shift hook again when a rollback could not be finished (or
/// `pollInterval`, when shorter).
pub const ROLLBACK_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How many times a traffic-shift hook asks ECS to call again during a rollback before it
/// answers SUCCEEDED and leaves the rest to the reconciler (each call also retries transient
/// errors for up to 20 s itself).
pub const MAX_ROLLBACK_RETRIES: u64 = 6;

/// Which way a traffic-shift event moves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// Towards green (green's weight above 0, or ECS says the deployment is going forward).
    Forward,
    /// Back to blue: ECS re-invokes the traffic-shift hooks with green at weight 0.
    Rollback,
}

/// Whether ECS is rolling this deployment back, from `DescribeServiceDeployments` (`status`
/// `ROLLBACK_*`, or a `rollback` record).
pub fn shift_of_deployment(status: &str, rollback_revision: Option<&str>) -> Shift {
    if status.starts_with("ROLLBACK") || rollback_revision.is_some() {
        Shift::Rollback
    } else {
        Shift::Forward
    }
}

/// Which way this traffic-shift event goes: from green's weight in the map of the traffic the
/// stage shifts, and when that map lacks green (an empty test map on a service without a test
/// rule, a first deployment, a rollback before any test traffic), from the deployment's status.
async fn shift_direction(event: &HookEvent, clients: &Clients) -> Result<Shift, HookError> {
    match event.green_weight() {
        Some(weight) if weight > 0.0 => Ok(Shift::Forward),
        Some(_) => Ok(Shift::Rollback),
        None => {
            let deployment = clients
                .ecs
                .describe_service_deployments(std::slice::from_ref(&event.deployment_arn))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    HookError::Inconsistent(format!(
                        "{} event gives green no weight and ECS does not know deployment {}",
                        event.stage, event.deployment_arn
                    ))
                })?;
            let shift =
                shift_of_deployment(&deployment.status, deployment.rollback_revision.as_deref());
            info!(stage = %event.stage, status = %deployment.status, shift = ?shift, "the event's weights do not name green; ECS's deployment status decides");
            Ok(shift)
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
    settings: Option<&Settings>,
    clients: &Clients,
) {
    error!(
        function,
        stage = %event.stage,
        execution_id = %event.execution_id,
        service = %event.service_arn,
        error_kind = err.kind(),
        error = %DisplayErrorContext(err),
        on_error = ?on_error,
        "hook failed"
    );
    crate::metrics::record(|c| *c.errors.entry(err.kind().to_owned()).or_default() += 1);
    if on_error != OnError::Continue {
        return;
    }
    let record = HistoryRecord {
        at: OffsetDateTime::now_utc(),
        stage: event.stage.to_string(),
        execution_id: event.execution_id.clone(),
        actor: crate::metrics::request_id().unwrap_or_default(),
        change: format!(
            "{function} failed and continued (onError: continue): {}: {err}",
            err.kind()
        ),
    };
    if let Err(e) = record_continued_error(event, &record, settings, clients).await {
        warn!(function, error_kind = e.kind(), error = %DisplayErrorContext(&e), "could not record the error in the ledger");
    }
}

/// Puts a swallowed error on green's entry, creating the entry when the error came before green
/// was recorded (a first deployment whose pin cannot be built, say), so that `continue` never
/// leaves no trace. When even green's deployment ID cannot be read, the entry is keyed
/// `unidentified-<revision>`.
async fn record_continued_error(
    event: &HookEvent,
    record: &HistoryRecord,
    settings: Option<&Settings>,
    clients: &Clients,
) -> Result<(), HookError> {
    let draft = Draft::new(
        &event.service_arn,
        clients.ledger.load(&event.service_arn).await?,
    );
    if let Some(green) = draft.by_revision(&event.target_revision_arn) {
        clients.ledger.record_error(green, record).await?;
        return Ok(());
    }
    let discovered = match settings {
        Some(settings) => discover(&event.target_revision_arn, settings, clients)
            .await
            .ok(),
        None => None,
    };
    let (running, wiring) = match discovered {
        Some(found) => found,
        None => unidentified_version(&event.target_revision_arn)?,
    };
    let existing = match draft.get(&running.deployment_id) {
        Some(existing) => Some(existing.clone()),
        None => {
            clients
                .ledger
                .archived(&event.service_arn, &running.deployment_id)
                .await?
        }
    };
    if let Some(existing) = existing {
        // The ID has an entry (from an earlier revision, or ended): note the error there.
        clients.ledger.record_error(&existing, record).await?;
        return Ok(());
    }
    let mut entry = LedgerEntry::new(
        &event.service_arn,
        &running,
        &wiring,
        Status::Testing,
        record.at,
    );
    entry.last_error = Some(record.change.clone());
    clients
        .ledger
        .commit(&[crate::stages::Change {
            expected_version: 0,
            entry,
            history: record.clone(),
        }])
        .await?;
    Ok(())
}

/// A placeholder for a revision whose deployment ID could not be read: no target group, no
/// listener, so nothing is ever pinned for it.
fn unidentified_version(revision_arn: &str) -> Result<(RunningVersion, ServiceWiring), HookError> {
    let tail: String = stages::short_arn(revision_arn)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(100)
        .collect();
    let deployment_id = DeploymentId::parse(&format!("unidentified-{tail}"))
        .map_err(|e| HookError::Inconsistent(e.to_string()))?;
    Ok((
        RunningVersion {
            deployment_id,
            service_revision_arn: revision_arn.to_owned(),
            target_group_arn: String::new(),
            task_definition_arn: String::new(),
        },
        ServiceWiring {
            listener_arn: String::new(),
            production_rule_arn: String::new(),
        },
    ))
}

/// One stage, retried from a fresh read when another writer changed the ledger or listener.
pub async fn run(
    function: HookFunction,
    event: &HookEvent,
    settings: &Settings,
    clients: &Clients,
    direction: &mut Option<Shift>,
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
    // Which way a traffic shift goes, once an attempt found out: kept for the next attempts
    // and for the answer (a rollback is never answered FAILED).
    let shift_seen = std::sync::Mutex::new(*direction);
    let traffic_shift = matches!(
        event.stage,
        LifecycleStage::TestTrafficShift | LifecycleStage::ProductionTrafficShift
    );
    let rolling_back =
        *direction == Some(Shift::Rollback) || (traffic_shift && event.green_weight() == Some(0.0));
    let retries = || {
        if rolling_back {
            retry::Retries::with_budget(retry::ROLLBACK_TRANSIENT_RETRY_BUDGET)
        } else {
            retry::Retries::new()
        }
    };
    let mut steps = 0;
    let outcome = loop {
        let outcome = retry::from_fresh_observations(
            retries(),
            || attempt_stage(event, settings, clients, &shift_seen),
            HookError::failure,
            |err, failure| {
                warn!(stage = %event.stage, failure = ?failure, error = %DisplayErrorContext(err), "starting the stage over from a fresh read");
            },
            HookError::Contention,
        )
        .await;
        // A retention copy's start moves one step per attempt (each one write of the ledger),
        // so a crash between two leaves the ledger naming everything created.
        steps += 1;
        match outcome {
            Ok(Hold::Next) if steps < MAX_STEPS_PER_CALL => {}
            Ok(Hold::Next) => break Ok(Hold::For(Duration::from_secs(1))),
            other => break other,
        }
    };
    *direction = *shift_seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    outcome
}

/// One attempt of a stage, in four steps: **observe** (the ledger, and from ECS what the
/// ledger does not know), **decide** (pure: the ledger entries the stage wants and whether the
/// listener must be reviewed), **apply** (observe the listener, plan the pins with their
/// priorities, execute: [`sync_pins`]), **commit** (one conditional ledger write). A lost race
/// anywhere fails the attempt, and [`run`] starts it over from a fresh observation.
async fn attempt_stage(
    event: &HookEvent,
    settings: &Settings,
    clients: &Clients,
    shift_seen: &std::sync::Mutex<Option<Shift>>,
) -> Result<Hold, HookError> {
    let now = OffsetDateTime::now_utc();
    let known = *shift_seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shift = match event.stage {
        LifecycleStage::TestTrafficShift | LifecycleStage::ProductionTrafficShift => {
            let shift = match known {
                Some(known) => known,
                None => shift_direction(event, clients).await?,
            };
            *shift_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(shift);
            Some(shift)
        }
        _ => None,
    };
    if event.stage == LifecycleStage::TestTrafficShift && shift == Some(Shift::Forward) {
        // Test traffic moving forward needs no pin (green is pinned from the production shift),
        // so it is answered without reading anything when the weights say which way it goes.
        return Ok(Hold::Done);
    }

    // 1. Observe.
    let mut draft = Draft::new(
        &event.service_arn,
        clients.ledger.load(&event.service_arn).await?,
    );
    let seen = observe(event, shift, &draft, settings, clients).await?;

    // 2. Decide.
    let mut decision = decide(event, settings, &mut draft, seen, now);
    if event.stage == LifecycleStage::PostProductionTrafficShift {
        // How long the deployment has been held so far: since green went live.
        let live_at = decision
            .green
            .as_ref()
            .and_then(|g| draft.get(g))
            .and_then(|g| g.live_at);
        crate::metrics::record(|c| c.held = live_at.map(|at| (now - at).unsigned_abs()));
    }

    // 3. Apply: a retention copy's target group or service first (the pins lead to its
    // target group once it exists), then the pins, then an abandoned copy's teardown (once no
    // pin leads to it).
    if let Some(action) = &decision.copy_action {
        match starter::create(&mut draft, action, clients).await {
            Ok(()) => {}
            // Given up for good: held instead; the pins below leave the copy.
            Err(err) if starter::is_for_good(&err) => starter::abandon_failed(
                &mut draft,
                starter::concerns(action),
                &DisplayErrorContext(&err).to_string(),
            ),
            Err(err) => return Err(err),
        }
    }
    let catch_all_moved =
        settings.after_window == AfterWindow::Retired && draft.production_changed();
    if let Some(wiring) = &decision.wiring
        && (draft.pins_need_attention() || catch_all_moved || decision.review_listener)
    {
        sync_pins(&mut draft, wiring, settings, &clients.elb).await?;
    }
    if let Some(action) = &decision.copy_action {
        match starter::tear_down(&mut draft, action, clients).await {
            Ok(()) => {}
            // Left to retirement: the held version is handed to it at the end of its window
            // with its copy still recorded, and the reconciler tears the copy down.
            Err(err) if starter::is_for_good(&err) => {
                warn!(stage = %event.stage, error = %DisplayErrorContext(&err), "the abandoned retention copy cannot be torn down here; retirement will");
                // Tried again at the next poll, not at once.
                decision.hold = stages::hold_for_draining(&draft, settings.poll_interval, now);
            }
            Err(err) => return Err(err),
        }
    }

    // 4. Commit.
    let actor = Actor {
        stage: event.stage.to_string(),
        execution_id: event.execution_id.clone(),
        identity: crate::metrics::request_id().unwrap_or_default(),
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
    Ok(decision.hold)
}

/// What one attempt observed beyond the ledger, by the case the stage is in.
#[derive(Debug)]
enum Seen {
    /// A forward call for a deployment whose entry already ended (rolled back, superseded).
    Ended(Box<LedgerEntry>),
    /// RECONCILE_SERVICE / PRE_SCALE_UP: where green will scale up, when the ledger records
    /// anything that could be there.
    PrepareScaleUp(Option<Incoming>),
    PostTestTraffic {
        green: (RunningVersion, ServiceWiring),
        blue: Option<RunningVersion>,
    },
    Rollback {
        green: Option<(RunningVersion, ServiceWiring)>,
        blue: Option<(RunningVersion, ServiceWiring)>,
    },
    ProductionShift {
        green: (RunningVersion, ServiceWiring),
        blue: Option<RunningVersion>,
    },
    PostShift {
        green: (RunningVersion, ServiceWiring),
        /// `retention: service`: the previous version's retention copy.
        copy: Option<starter::CopySeen>,
    },
}

/// The target groups a new green may scale up into, read off the production rule.
#[derive(Debug)]
struct Incoming {
    wiring: ServiceWiring,
    target_groups: Vec<String>,
    /// A rule on the listener forwards only to one of them (a pin, tracked or not).
    pinned_there: bool,
}

/// The observe step beyond the ledger: green and blue from the ledger where it knows them, from
/// ECS where it does not; the production rule before a scale-up.
async fn observe(
    event: &HookEvent,
    shift: Option<Shift>,
    draft: &Draft,
    settings: &Settings,
    clients: &Clients,
) -> Result<Seen, HookError> {
    if shift != Some(Shift::Rollback)
        && let Some(ended) = stages::ended_deployment(draft, &event.target_revision_arn)
    {
        return Ok(Seen::Ended(Box::new(ended.clone())));
    }
    Ok(match event.stage {
        LifecycleStage::ReconcileService | LifecycleStage::PreScaleUp => {
            let wiring = draft.wiring();
            let Some(wiring) = wiring.filter(|_| draft.entries().any(|e| !e.status.is_final()))
            else {
                info!(stage = %event.stage, "nothing in play for this service");
                return Ok(Seen::PrepareScaleUp(None));
            };
            // The ledger's wiring may be stale (the service moved to another listener, IaC
            // recreated the production rule): then nothing of ours can be in green's way there,
            // and a protective stage must not fail every deployment from now on.
            let rules = match clients
                .elb
                .describe_listener_rules(&wiring.listener_arn)
                .await
            {
                Ok(rules) => rules,
                Err(err) if err.kind == AwsErrorKind::NotFound => {
                    warn!(stage = %event.stage, listener = %wiring.listener_arn, error = %DisplayErrorContext(&err), "the recorded listener is gone; nothing to unpin there");
                    return Ok(Seen::PrepareScaleUp(None));
                }
                Err(err) => return Err(err.into()),
            };
            let target_groups = match pins::incoming_target_groups(
                &rules,
                &wiring.production_rule_arn,
                &wiring.listener_arn,
            ) {
                Ok(target_groups) => target_groups,
                Err(err @ PinError::ProductionRuleMissing { .. }) => {
                    warn!(stage = %event.stage, error = %err, "the recorded production rule is gone; nothing to unpin there");
                    return Ok(Seen::PrepareScaleUp(None));
                }
                Err(err) => return Err(err.into()),
            };
            // A late call of a deployment that ended must not finish what a newer one put on
            // these target groups: green's archive tells (looked up only when something would
            // be finished, as green's ID needs ECS to read).
            let would_finish = draft
                .entries()
                .any(|e| !e.status.is_final() && target_groups.contains(&e.target_group_arn));
            if would_finish && draft.by_revision(&event.target_revision_arn).is_none() {
                match discover(&event.target_revision_arn, settings, clients).await {
                    Ok((green, _)) => {
                        if let Some(ended) = ended_in_archive(event, draft, &green, clients).await?
                        {
                            return Ok(Seen::Ended(Box::new(ended)));
                        }
                    }
                    Err(err) => {
                        warn!(stage = %event.stage, error = %DisplayErrorContext(&err), "green unknown before its scale-up; not looking for an ended deployment of it");
                    }
                }
            }
            let pinned_there = rules.iter().any(|r| {
                matches!(r.forward_targets().as_slice(), [one] if target_groups.iter().any(|tg| tg == one))
            });
            Seen::PrepareScaleUp(Some(Incoming {
                wiring,
                target_groups,
                pinned_there,
            }))
        }
        LifecycleStage::PostTestTrafficShift => {
            let green = green_version(event, draft, settings, clients).await?;
            let deployment = clients.ecs.deployment(&event.deployment_arn).await?;
            // Green is first recorded here, so its ID has no entry in play on every forward
            // call: only a deployment ECS no longer runs forward can be one whose entry ended
            // and left for the archive (ECS marks it stopped or rolling back before it calls
            // the rollback hooks that archive it), so only then is the archive read.
            if !deployment.in_progress()
                && let Some(ended) = ended_in_archive(event, draft, &green.0, clients).await?
            {
                return Ok(Seen::Ended(Box::new(ended)));
            }
            let blue = blue_before_shift(
                event,
                draft,
                &green.0,
                &deployment.source_revisions,
                settings,
                clients,
            )
            .await?;
            Seen::PostTestTraffic { green, blue }
        }
        LifecycleStage::TestTrafficShift | LifecycleStage::ProductionTrafficShift => {
            let others = other_revisions(event);
            if shift == Some(Shift::Rollback) {
                let blue = blue_from_weights(event, &others, draft, settings, clients).await?;
                let green = match green_version(event, draft, settings, clients).await {
                    Ok(green) => Some(green),
                    // A rollback must still restore blue even if green cannot be described.
                    Err(err) => {
                        warn!(stage = %event.stage, error = %DisplayErrorContext(&err), "green unknown during rollback; unpinning by revision");
                        None
                    }
                };
                Seen::Rollback { green, blue }
            } else {
                let green = green_version(event, draft, settings, clients).await?;
                if let Some(ended) = ended_in_archive(event, draft, &green.0, clients).await? {
                    return Ok(Seen::Ended(Box::new(ended)));
                }
                let blue = blue_from_weights(event, &others, draft, settings, clients)
                    .await?
                    .map(|(b, _)| b);
                Seen::ProductionShift { green, blue }
            }
        }
        LifecycleStage::PostProductionTrafficShift => {
            let green = green_version(event, draft, settings, clients).await?;
            if let Some(ended) = ended_in_archive(event, draft, &green.0, clients).await? {
                return Ok(Seen::Ended(Box::new(ended)));
            }
            let copy = if settings.retention == Retention::Service {
                match starter::observe(draft, &green.0.deployment_id, clients).await {
                    Ok(copy) => copy,
                    // A copy that cannot be looked at (a denied call) is given up: the version
                    // is held instead, rather than the deployment failing.
                    Err(err) if starter::is_for_good(&err) => {
                        starter::candidate(draft, &green.0.deployment_id).map(|e| {
                            starter::CopySeen::Failed {
                                deployment_id: e.deployment_id.clone(),
                                error: DisplayErrorContext(&err).to_string(),
                            }
                        })
                    }
                    Err(err) => return Err(err),
                }
            } else {
                None
            };
            Seen::PostShift { green, copy }
        }
        other => {
            return Err(HookError::Inconsistent(format!(
                "stage {other} has no skewguard behaviour"
            )));
        }
    })
}

/// What one attempt decided, besides the ledger changes left in the draft.
#[derive(Debug)]
struct Decision {
    hold: Hold,
    /// The listener to bring in line, when the stage knows it.
    wiring: Option<ServiceWiring>,
    /// Review the listener even if the ledger says its pins are right: ECS scales a version
    /// down right after a rollback (green), after the hold (blue) and before a scale-up (what
    /// ran in green's target group), and a tagged pin a crashed or failed invocation created
    /// but never recorded must not outlive its version.
    review_listener: bool,
    /// Green's deployment ID, where the stage knows it.
    green: Option<DeploymentId>,
    /// `retention: service`: what the apply step does to the previous version's copy.
    copy_action: Option<starter::CopyAction>,
}

/// The decide step: which stage function applies, on plain data ([`stages`]).
fn decide(
    event: &HookEvent,
    settings: &Settings,
    draft: &mut Draft,
    seen: Seen,
    now: OffsetDateTime,
) -> Decision {
    let decision = |hold, wiring, review_listener, green| Decision {
        hold,
        wiring,
        review_listener,
        green,
        copy_action: None,
    };
    match seen {
        Seen::Ended(ended) => {
            // A forward call that arrives after ECS rolled this deployment back (or after a
            // newer deployment superseded it): it changes nothing, but the listener is reviewed
            // so that a pin an earlier attempt of this call created meanwhile is gone.
            info!(stage = %event.stage, deployment_id = %ended.deployment_id, status = %ended.status, "the deployment already ended; changing nothing");
            decision(Hold::Done, Some(ended.wiring()), true, None)
        }
        Seen::PrepareScaleUp(None) => decision(Hold::Done, None, false, None),
        Seen::PrepareScaleUp(Some(incoming)) => {
            let superseded = stages::prepare_scale_up(draft, &incoming.target_groups, now);
            if !superseded.is_empty() {
                warn!(stage = %event.stage, superseded = ?superseded.iter().map(DeploymentId::as_str).collect::<Vec<_>>(), incoming = ?incoming.target_groups, "a newer deployment takes their target group: unpinning them before it scales up");
            }
            // A pin (tracked or not) leading to the incoming group must go now, whatever the
            // ledger says: green's tasks register there next.
            let review = !superseded.is_empty() || incoming.pinned_there;
            decision(Hold::Done, Some(incoming.wiring), review, None)
        }
        Seen::PostTestTraffic {
            green: (green, wiring),
            blue,
        } => {
            info!(stage = %event.stage, green = %green.deployment_id, blue = ?blue.as_ref().map(|b| b.deployment_id.as_str()), "recording the deployment");
            stages::post_test_traffic(draft, &green, blue.as_ref(), &wiring, now);
            decision(Hold::Done, Some(wiring), false, Some(green.deployment_id))
        }
        Seen::Rollback { green, blue } => {
            let wiring = blue
                .as_ref()
                .map(|(_, w)| w.clone())
                .or_else(|| green.as_ref().map(|(_, w)| w.clone()))
                .or_else(|| draft.wiring());
            let green_id = green.as_ref().map(|(g, _)| &g.deployment_id);
            match &blue {
                Some((blue, _)) => {
                    warn!(stage = %event.stage, green = ?green_id.map(DeploymentId::as_str), blue = %blue.deployment_id, "rollback: unpinning green, keeping blue pinned")
                }
                None => {
                    warn!(stage = %event.stage, green = ?green_id.map(DeploymentId::as_str), "rollback with no previous version (a service's first deployment): unpinning green")
                }
            }
            stages::rollback(
                draft,
                &event.target_revision_arn,
                green_id,
                blue.as_ref().zip(wiring.as_ref()).map(|((b, _), w)| (b, w)),
                now,
            );
            decision(Hold::Done, wiring, true, green_id.cloned())
        }
        Seen::ProductionShift {
            green: (green, wiring),
            blue,
        } => {
            info!(stage = %event.stage, green = %green.deployment_id, green_weight = ?event.green_weight(), "production shift: pinning green");
            stages::production_shift(draft, &green, blue.as_ref(), &wiring, now);
            decision(Hold::Done, Some(wiring), false, Some(green.deployment_id))
        }
        Seen::PostShift {
            green: (green, wiring),
            copy,
        } => {
            let mut hold = stages::post_shift(
                draft,
                &green,
                &wiring,
                settings.skew_window,
                settings.poll_interval,
                now,
            );
            let mut copy_action = None;
            if let Some(seen) = copy {
                let poll = settings.poll_interval.min(starter::START_POLL);
                let step = starter::decide(draft, seen, settings, poll, now);
                hold = if step.progressed {
                    Hold::Next
                } else {
                    match (
                        stages::hold_for_draining(draft, settings.poll_interval, now),
                        step.wait,
                    ) {
                        (Hold::For(held), Some(wait)) => Hold::For(held.min(wait)),
                        (other, _) => other,
                    }
                };
                copy_action = step.action;
            }
            Decision {
                hold,
                wiring: Some(wiring),
                review_listener: hold == Hold::Done,
                green: Some(green.deployment_id),
                copy_action,
            }
        }
    }
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

/// The archived entry of green, when its deployment ID has no entry in play and its archive
/// was this very revision: the deployment ended, and this forward call came late. One `Query` of
/// the archive item's key, made only when the entries in play do not know green's ID.
async fn ended_in_archive(
    event: &HookEvent,
    draft: &Draft,
    green: &RunningVersion,
    clients: &Clients,
) -> Result<Option<LedgerEntry>, HookError> {
    if draft.get(&green.deployment_id).is_some() {
        return Ok(None);
    }
    let archived = clients
        .ledger
        .archived(&event.service_arn, &green.deployment_id)
        .await?;
    Ok(stages::ended_in_archive(archived.as_ref(), &event.target_revision_arn).cloned())
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

/// Blue before the production shift: the deployment's source revisions `sources` (per ECS, so
/// a stale ledger can never name the wrong version), taken from the ledger when it knows that
/// revision and described otherwise (a service's first deployment under skewguard).
async fn blue_before_shift(
    event: &HookEvent,
    draft: &Draft,
    green: &RunningVersion,
    sources: &[String],
    settings: &Settings,
    clients: &Clients,
) -> Result<Option<RunningVersion>, HookError> {
    if sources.is_empty() {
        info!(stage = %event.stage, "no source revision: the service's first deployment");
        return Ok(None);
    }
    if let Some(known) = draft
        .entries()
        .filter(|e| !e.status.is_final() && !e.target_group_arn.is_empty())
        .filter(|e| e.target_group_arn != green.target_group_arn)
        .find(|e| sources.contains(&e.service_revision_arn))
    {
        return Ok(Some(known.running()));
    }
    let revisions = clients.ecs.describe_revisions(sources).await?;
    let mut candidates = Vec::new();
    for revision in revisions {
        match revision.placement() {
            Ok((tg, _)) if tg != green.target_group_arn => candidates.push(revision),
            Ok(_) => {}
            Err(err) => {
                warn!(revision = %revision.arn, error = %DisplayErrorContext(&err), "source revision skipped")
            }
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

/// The revisions other than green that the event's weight maps name (blue, and during
/// overlapping deployments possibly more).
fn other_revisions(event: &HookEvent) -> Vec<&String> {
    let mut others: Vec<&String> = event
        .shifted_weights()
        .keys()
        .chain(event.production_weights.keys())
        .filter(|r| **r != event.target_revision_arn)
        .collect();
    others.sort();
    others.dedup();
    others
}

/// Blue during a traffic shift: the other revision in the event's weights (known to the ledger
/// or described), else the live entry in the ledger.
async fn blue_from_weights(
    event: &HookEvent,
    others: &[&String],
    draft: &Draft,
    settings: &Settings,
    clients: &Clients,
) -> Result<Option<(RunningVersion, ServiceWiring)>, HookError> {
    // With more than two revisions in the maps (a deployment superseded mid-flight), blue is
    // the one that carries the most traffic, never one already at 0.
    let weight = |revision: &str| {
        event
            .shifted_weights()
            .get(revision)
            .or_else(|| event.production_weights.get(revision))
            .copied()
            .unwrap_or(0.0)
    };
    let mut by_weight: Vec<&String> = others.to_vec();
    by_weight.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
    let Some(heaviest) = by_weight.first().copied() else {
        // No other revision named: the newest live entry that is not green itself.
        return Ok(draft
            .entries()
            .filter(|e| e.status == Status::Live)
            .filter(|e| e.service_revision_arn != event.target_revision_arn)
            .max_by_key(|e| e.live_at)
            .map(|e| (e.running(), e.wiring())));
    };
    if by_weight.len() > 1 && weight(heaviest) == weight(by_weight[1]) {
        warn!(stage = %event.stage, "several other revisions carry the same weight; taking the first in ARN order");
    }
    match draft
        .by_revision(heaviest)
        .filter(|e| !e.listener_arn.is_empty() && !e.status.is_final())
    {
        Some(entry) => Ok(Some((entry.running(), entry.wiring()))),
        None => discover(heaviest, settings, clients).await.map(Some),
    }
}

/// Makes the listener hold exactly the pins the draft's entries want, and records the rule ARNs
/// on the entries: observe the listener, plan with priorities ([`pins::plan`], [`pins::place`]),
/// apply ([`apply::apply`]). Rules are created with their tags in one call, so a crash between
/// here and the ledger write leaves a tagged rule that the next invocation adopts. A priority
/// taken meanwhile is a conflict: the whole stage starts over from a fresh read.
pub async fn sync_pins(
    draft: &mut Draft,
    wiring: &ServiceWiring,
    settings: &Settings,
    elb: &Elb,
) -> Result<(), HookError> {
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
    let listener = ObservedListener {
        listener_arn: &wiring.listener_arn,
        rules: &rules,
        tags: &tags,
        production_rule: &production_rule,
    };
    bring_pins_in_line(draft, &listener, settings, elb).await
}

/// The listener as one attempt observed it.
#[derive(Debug, Clone, Copy)]
pub struct ObservedListener<'a> {
    pub listener_arn: &'a str,
    pub rules: &'a [crate::listener::ListenerRule],
    /// `skewguard:*` tags of the rules that may be this service's untracked pins.
    pub tags: &'a BTreeMap<String, pins::PinTags>,
    pub production_rule: &'a crate::listener::ListenerRule,
}

/// Decide and apply the listener changes for the draft's entries, then record on each entry
/// the pins it has: [`pins::plan`] and [`pins::place`] choose, [`apply::apply`] executes. Used by
/// the hooks and, against an in-memory listener, by the property tests.
pub async fn bring_pins_in_line(
    draft: &mut Draft,
    listener: &ObservedListener<'_>,
    settings: &Settings,
    writes: &impl apply::ListenerWrites,
) -> Result<(), HookError> {
    let service_arn = draft.service_arn().to_owned();
    let entries: Vec<LedgerEntry> = draft.entries().cloned().collect();
    let plan = pins::plan(
        &service_arn,
        &entries,
        listener.rules,
        listener.tags,
        listener.production_rule,
        settings,
    )?;
    let create = pins::place(&plan, listener.rules)?;
    let freed = pins::freed_priorities(&plan, listener.rules);
    let applied = apply::apply(
        writes,
        ListenerChanges {
            listener_arn: listener.listener_arn,
            service_arn: &service_arn,
            delete: &plan.delete,
            create: &create,
            freed: &freed,
        },
    )
    .await?;
    // Record what exists now, even after a collision, so the next attempt counts these rules
    // as this service's own.
    record_pins(draft, &plan, &applied);
    if applied.priority_taken {
        return Err(HookError::Aws(AwsError::priority_taken()));
    }
    Ok(())
}

/// Puts on each entry the pins it now has: those the plan kept and those just created.
pub fn record_pins(draft: &mut Draft, plan: &pins::PinPlan, applied: &apply::Applied) {
    let mut pins_by_id: BTreeMap<DeploymentId, Vec<String>> = plan.keep.clone();
    for (id, arns) in &applied.created {
        pins_by_id
            .entry(id.clone())
            .or_default()
            .extend(arns.iter().cloned());
    }
    for entry in draft.entries_mut() {
        let mut arns = pins_by_id.remove(&entry.deployment_id).unwrap_or_default();
        arns.sort();
        entry.rule_arns = arns;
    }
}
