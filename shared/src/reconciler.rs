//! Running the reconciler against AWS: read the ledger, ECS and the listener, decide
//! ([`crate::reconcile`]), bring the listener in line, write the ledger conditionally, and
//! report every repair. Used by the `reconciler` function (EventBridge deployment events, and a
//! schedule that fans the sweep out over the sweep queue, [`crate::aws::sweep_queue`]) and by
//! `skewguard reconcile`.
//!
//! Safe to run concurrently with a hook: every ledger write is conditional on the version read
//! (a conflict means reading and deciding again); the ledger is read again right before the
//! listener is changed; and while a deployment is in flight, rules of versions ECS runs are left
//! to the hooks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::DeploymentId;
use crate::apply::{self, ApplyError, ListenerChanges};
use crate::aws::ecs::{DeploymentFacts, DiscoveryError, Ecs, EcsError, running_version};
use crate::aws::ledger_store::LedgerError;
use crate::aws::sweep_queue::SweepQueue;
use crate::aws::{AwsError, DisplayErrorContext};
use crate::event::MalformedEvent;
use crate::hook::Clients;
use crate::ledger::{LedgerEntry, Status};
use crate::pins::{self, PinError, PinTags};
use crate::reconcile::{
    self, DEPLOYMENTS_READ, DeploymentSummary, EcsView, Repair, ServiceSettingsError,
    SettingsSource,
};
use crate::retirer::{self, RetireError, RetireOptions, RetirementReport};
use crate::retry::{self, Failure};
use crate::settings::{EnvDefaults, Settings};
use crate::stages::{Actor, Draft};

/// Why reconciling a service (or reading the reconciler's event) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The event names no service to reconcile and is not a scheduled event.
    #[error(transparent)]
    Malformed(#[from] MalformedEvent),
    /// The hooks of the service's latest deployment carry conflicting or invalid `hookDetails`.
    #[error(transparent)]
    Settings(#[from] ServiceSettingsError),
    /// ECS's answer does not say what runs where (a task definition missing, say).
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The production rule is gone, cannot be copied, or leaves no room for a pin.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// An AWS call failed (after the SDK's own retries).
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The ledger could not be read or written for a reason other than AWS's answer.
    #[error(transparent)]
    Ledger(LedgerError),
    /// The listener is at its rule quota.
    #[error(
        "the listener has no room for another rule (ALB rule quota): {0}; remove unused rules or raise the quota"
    )]
    RuleQuota(AwsError),
    /// Every attempt found the ledger or the listener changed underneath.
    #[error("gave up after {0} attempts: the ledger or the listener kept changing underneath")]
    Contention(u32),
    /// Retiring the service's retained versions could not record its decision.
    #[error("retirement: {0}")]
    Retirement(#[from] RetireError),
}

impl From<EcsError> for ReconcileError {
    fn from(e: EcsError) -> Self {
        match e {
            EcsError::Aws(e) => ReconcileError::Aws(e),
            EcsError::Discovery(e) => ReconcileError::Discovery(e),
        }
    }
}

impl From<LedgerError> for ReconcileError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Aws(e) => ReconcileError::Aws(e),
            other => ReconcileError::Ledger(other),
        }
    }
}

impl From<ApplyError> for ReconcileError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::RuleQuota(e) => ReconcileError::RuleQuota(e),
            ApplyError::Aws(e) => ReconcileError::Aws(e),
        }
    }
}

impl ReconcileError {
    /// A short machine-readable kind for logs and metrics (the hooks' names for the same
    /// failures).
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Malformed(_) => "MalformedEvent",
            ReconcileError::Settings(_) => "InvalidSetting",
            ReconcileError::Discovery(_) => "Discovery",
            ReconcileError::Pins(PinError::NoFreePriority { .. }) => "NoFreePriority",
            ReconcileError::Pins(_) => "PinRule",
            ReconcileError::Aws(e) => e.kind.error_kind(),
            ReconcileError::Ledger(_) => "Ledger",
            ReconcileError::RuleQuota(_) => "RuleQuota",
            ReconcileError::Contention(_) => "Contention",
            ReconcileError::Retirement(e) => e.kind(),
        }
    }

    /// How the retry treats this error: a lost race is decided again from a fresh read;
    /// throttling or a transient failure that outlasted the SDK's retries is tried again a
    /// little later; anything else ends the run.
    pub fn failure(&self) -> Failure {
        match self {
            ReconcileError::Aws(e) => Failure::of_aws(e.kind),
            _ => Failure::Final,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Function-level settings defaults (`SKEWGUARD_*`), under each service's `hookDetails`.
    pub defaults: EnvDefaults,
    /// Report what would be repaired without changing anything.
    pub dry_run: bool,
    /// For the history: the Lambda request ID, or `cli`.
    pub execution_id: String,
    /// Who acts, for the history's `actor`: the Lambda request ID, or the CLI caller's ARN.
    pub identity: String,
}

/// What one run did (or, in a dry run, would do) to one service.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub service_arn: String,
    pub dry_run: bool,
    pub latest_deployment: Option<DeploymentSummary>,
    /// No deployment in flight: ECS's answer is all that runs.
    pub settled: bool,
    pub settings: SettingsSource,
    pub repairs: Vec<Repair>,
    /// What was left alone, and why.
    pub notes: Vec<String>,
    /// Retained versions retired by this run, and the idle checks it recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retirement: Option<RetirementReport>,
}

impl ServiceReport {
    pub fn changed(&self) -> bool {
        !self.repairs.is_empty()
    }
}

/// What ECS says about a service, and the settings its hooks run with.
#[derive(Debug, Clone)]
pub struct Observed {
    pub view: EcsView,
    pub settings: Settings,
    pub source: SettingsSource,
    pub notes: Vec<String>,
}

/// The settings the service's hooks run with (its newest deployments' `hookDetails` over
/// `defaults`), without reading what runs: for retirement and the CLI.
pub async fn service_settings_of(
    ecs: &Ecs,
    service_arn: &str,
    defaults: &EnvDefaults,
) -> Result<(Settings, SettingsSource), ReconcileError> {
    let arns = ecs
        .list_service_deployments(service_arn, DEPLOYMENTS_READ)
        .await?;
    let deployments: Vec<DeploymentFacts> = if arns.is_empty() {
        Vec::new()
    } else {
        ecs.describe_service_deployments(&arns).await?
    };
    Ok(reconcile::service_settings(&deployments, defaults)?)
}

/// Reads the service's recent deployments, what they run and where, and its settings.
pub async fn observe_ecs(
    ecs: &Ecs,
    service_arn: &str,
    defaults: &EnvDefaults,
) -> Result<Observed, ReconcileError> {
    let arns = ecs
        .list_service_deployments(service_arn, DEPLOYMENTS_READ)
        .await?;
    let deployments: Vec<DeploymentFacts> = if arns.is_empty() {
        Vec::new()
    } else {
        ecs.describe_service_deployments(&arns).await?
    };
    let (settings, source) = reconcile::service_settings(&deployments, defaults)?;
    let running = reconcile::running_revisions(&deployments);
    let mut view = EcsView {
        settled: running.settled,
        known: !deployments.is_empty(),
        rolled_back_revisions: running.rolled_back.clone(),
        latest: deployments.first().map(|d| DeploymentSummary {
            arn: d.arn.clone(),
            status: d.status.clone(),
        }),
        ..EcsView::default()
    };
    let mut notes = Vec::new();
    if running.revisions.is_empty() {
        return Ok(Observed {
            view,
            settings,
            source,
            notes,
        });
    }
    let revisions = match ecs.describe_revisions(&running.revisions).await {
        Ok(revisions) => revisions,
        Err(EcsError::Discovery(e)) => {
            notes.push(format!(
                "ECS could not describe what runs ({e}); only the listener is checked against the ledger"
            ));
            view.known = false;
            view.settled = false;
            return Ok(Observed {
                view,
                settings,
                source,
                notes,
            });
        }
        Err(e) => return Err(e.into()),
    };
    for revision in revisions {
        let (target_group, wiring) = match revision.placement() {
            Ok(placement) => placement,
            Err(e) => {
                notes.push(format!("revision {}: {e}", revision.arn));
                view.settled = false;
                continue;
            }
        };
        let task_definition = ecs
            .describe_task_definition(&revision.task_definition_arn)
            .await?;
        match running_version(
            &revision,
            &task_definition,
            settings.container.as_deref(),
            &settings.deployment_id_from,
        ) {
            Ok((version, _)) => {
                if running.production.as_deref() == Some(revision.arn.as_str()) {
                    view.production = Some(version.deployment_id.clone());
                    view.wiring = Some(wiring);
                } else if view.wiring.is_none() {
                    view.wiring = Some(wiring);
                }
                view.running.push(version);
            }
            Err(e) => {
                notes.push(format!(
                    "revision {} on {}: {e}; nothing may be pinned to that target group",
                    revision.arn, target_group
                ));
                view.unidentified.push(target_group);
            }
        }
    }
    Ok(Observed {
        view,
        settings,
        source,
        notes,
    })
}

/// Reconciles one service, retrying from a fresh read when the ledger changed meanwhile.
pub async fn reconcile_service(
    clients: &Clients,
    service_arn: &str,
    options: &ReconcileOptions,
) -> Result<ServiceReport, ReconcileError> {
    let mut earlier = Vec::new();
    let outcome = retry::from_fresh_observations(
        retry::Retries::new(),
        || attempt_service(clients, service_arn, options),
        |attempt| match attempt {
            Attempt::Conflict(_) => Failure::Conflict,
            Attempt::Failed(e) => e.failure(),
        },
        |attempt, failure| {
            let what = match attempt {
                Attempt::Conflict(what) => what.clone(),
                Attempt::Failed(e) => e.to_string(),
            };
            warn!(service = %service_arn, failure = ?failure, what = %what, "reading and deciding again");
            earlier.push(format!(
                "attempt {}: {what}; decided again",
                earlier.len() + 1
            ));
        },
        |conflicts| Attempt::Failed(ReconcileError::Contention(conflicts)),
    )
    .await;
    match outcome {
        Ok(Attempted {
            mut report,
            settings,
            retained,
            unwritten,
        }) => {
            report.notes.extend(earlier);
            // Retirement is its own pipeline (its own read, decisions and conditional writes),
            // run only when this run's read found a retained version.
            if !options.dry_run && retained {
                let retire = RetireOptions {
                    settings: retirer::retirement_settings(&settings),
                    orders: Vec::new(),
                    idle_check: true,
                    stage: reconcile::STAGE.to_owned(),
                    execution_id: options.execution_id.clone(),
                    identity: options.identity.clone(),
                };
                // What this run read, if it wrote nothing since: retirement starts from it
                // instead of reading the partition again (its writes are conditional, so a
                // change made meanwhile is found there and read afresh).
                let retired =
                    retirer::retire_service_from(clients, service_arn, &retire, unwritten).await?;
                if retired != RetirementReport::default() {
                    report.retirement = Some(retired);
                }
            }
            for repair in &report.repairs {
                info!(
                    service = %service_arn,
                    kind = %repair.kind,
                    deployment_id = repair.deployment_id.as_ref().map(DeploymentId::as_str),
                    rule_arn = repair.rule_arn.as_deref(),
                    detail = %repair.detail,
                    dry_run = options.dry_run,
                    execution_id = %options.execution_id,
                    "{}",
                    if options.dry_run { "would repair" } else { "repaired" }
                );
            }
            for note in &report.notes {
                info!(service = %service_arn, note = %note, "left alone");
            }
            Ok(report)
        }
        // The loop turns every lost race it gives up on into `Contention`.
        Err(Attempt::Conflict(_)) => Err(ReconcileError::Contention(retry::MAX_ATTEMPTS)),
        Err(Attempt::Failed(e)) => Err(e),
    }
}

/// Reconciles each service; one failing does not stop the others.
pub async fn reconcile_services(
    clients: &Clients,
    services: &[String],
    options: &ReconcileOptions,
) -> Vec<(String, Result<ServiceReport, ReconcileError>)> {
    let mut results = Vec::new();
    for service in services {
        let result = reconcile_service(clients, service, options).await;
        if let Err(e) = &result {
            error!(service = %service, error_kind = e.kind(), error = %DisplayErrorContext(e), "reconciling failed");
        }
        results.push((service.clone(), result));
    }
    results
}

enum Attempt {
    Conflict(String),
    Failed(ReconcileError),
}

impl<E: Into<ReconcileError>> From<E> for Attempt {
    fn from(e: E) -> Self {
        let e = e.into();
        match e.failure() {
            Failure::Conflict => Attempt::Conflict(e.to_string()),
            _ => Attempt::Failed(e),
        }
    }
}

fn versions(entries: &[LedgerEntry]) -> BTreeMap<DeploymentId, u64> {
    entries
        .iter()
        .map(|e| (e.deployment_id.clone(), e.version))
        .collect()
}

/// What one attempt at a service found and did.
struct Attempted {
    report: ServiceReport,
    settings: Settings,
    /// The ledger has retained versions (or a stray copy): retirement has work.
    retained: bool,
    /// The entries the attempt read, when it wrote none.
    unwritten: Option<Vec<LedgerEntry>>,
}

async fn attempt_service(
    clients: &Clients,
    service_arn: &str,
    options: &ReconcileOptions,
) -> Result<Attempted, Attempt> {
    let now = OffsetDateTime::now_utc();
    let entries = clients.ledger.load(service_arn).await?;
    // A retained version, or a copy whose version serves from its own target group again (a
    // rollback brought it back, or it was deployed anew): retirement has work.
    let retained = entries
        .iter()
        .any(|e| e.status == Status::Retained || crate::retirer::is_stray_copy(e));
    let observed = observe_ecs(&clients.ecs, service_arn, &options.defaults).await?;
    let Observed {
        view,
        settings,
        source,
        mut notes,
    } = observed;
    let mut report = ServiceReport {
        service_arn: service_arn.to_owned(),
        dry_run: options.dry_run,
        latest_deployment: view.latest.clone(),
        settled: view.settled,
        settings: source,
        repairs: Vec::new(),
        notes: Vec::new(),
        retirement: None,
    };
    let mut draft = Draft::new(service_arn, entries.clone());
    let mut repairs = reconcile::decide(&mut draft, &view, now);
    let Some(wiring) = draft.wiring().or_else(|| view.wiring.clone()) else {
        notes.push(
            "the ledger has no entry with a listener and ECS names none: nothing to compare"
                .to_owned(),
        );
        report.notes = notes;
        return Ok(Attempted {
            report,
            settings,
            retained,
            unwritten: Some(entries),
        });
    };
    let rules = clients
        .elb
        .describe_listener_rules(&wiring.listener_arn)
        .await?;
    let production_rule = rules
        .iter()
        .find(|r| r.arn == wiring.production_rule_arn)
        .cloned()
        .ok_or_else(|| {
            ReconcileError::Pins(PinError::ProductionRuleMissing {
                rule: wiring.production_rule_arn.clone(),
                listener: wiring.listener_arn.clone(),
            })
        })?;
    // Every rule's tags, not only the hooks' cheap candidates: orphans can be anywhere.
    let candidates: Vec<String> = rules
        .iter()
        .filter(|r| !r.is_default() && r.arn != production_rule.arn)
        .map(|r| r.arn.clone())
        .collect();
    let tags: BTreeMap<String, PinTags> = if candidates.is_empty() {
        BTreeMap::new()
    } else {
        clients.elb.describe_pin_tags(&candidates).await?
    };
    let mut review =
        reconcile::review_pins(&draft, &view, &rules, &tags, &production_rule, &settings)?;
    reconcile::leave_unpinning_to_the_hooks(&mut review, &draft, &view, now);
    repairs.extend(review.repairs.iter().cloned());
    notes.extend(review.notes.iter().cloned());
    let actor = Actor {
        stage: reconcile::STAGE.to_owned(),
        execution_id: options.execution_id.clone(),
        identity: options.identity.clone(),
        now,
    };
    if options.dry_run {
        report.repairs = repairs;
        report.notes = notes;
        return Ok(Attempted {
            report,
            settings,
            retained,
            unwritten: Some(entries),
        });
    }

    let mut created: BTreeMap<DeploymentId, Vec<String>> = BTreeMap::new();
    if !review.plan.is_noop() {
        // Last look before touching the listener: a hook may have written meanwhile.
        let fresh = clients.ledger.load(service_arn).await?;
        if versions(&fresh) != versions(&entries) {
            return Err(Attempt::Conflict(
                "the ledger changed while deciding".to_owned(),
            ));
        }
        let create = pins::place(&review.plan, &rules)?;
        let freed = pins::freed_priorities(&review.plan, &rules);
        let applied = apply::apply(
            &clients.elb,
            ListenerChanges {
                listener_arn: &wiring.listener_arn,
                service_arn,
                delete: &review.plan.delete,
                create: &create,
                freed: &freed,
            },
        )
        .await?;
        if applied.priority_taken {
            // Pins created so far are tagged: the next attempt adopts them.
            return Err(Attempt::Conflict(
                "a pin's priority was taken meanwhile".to_owned(),
            ));
        }
        for (id, arns) in &applied.created {
            for arn in arns {
                let repair = repairs.iter_mut().find(|r| {
                    r.kind == reconcile::RepairKind::PinRestored
                        && r.rule_arn.is_none()
                        && r.deployment_id.as_ref() == Some(id)
                });
                if let Some(repair) = repair {
                    repair.rule_arn = Some(arn.clone());
                }
            }
        }
        created = applied.created;
    }
    reconcile::record_pins(&mut draft, &review, &created);
    let changes = reconcile::history_lines(&draft, &repairs, &actor);
    clients.ledger.commit(&changes).await?;
    report.repairs = repairs;
    report.notes = notes;
    Ok(Attempted {
        report,
        settings,
        retained,
        unwritten: changes.is_empty().then_some(entries),
    })
}

/// What an invocation of the reconciler function covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An `ECS Deployment State Change` event (or a manual `{"serviceArn": …}`): that service.
    Service(String),
    /// A scheduled event: one sweep-queue message per service in the ledger.
    AllServices,
    /// A batch of sweep-queue messages (an SQS event): each message's service.
    Queued(Vec<QueuedService>),
}

/// One sweep-queue message of an SQS event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedService {
    /// The SQS message ID: what a partial batch failure names.
    pub message_id: String,
    /// The message's service, or why the message names none.
    pub service: Result<String, MalformedEvent>,
}

/// Reads an EventBridge event: `ECS Deployment State Change` (its `resources[0]` is the service
/// ARN) or `Scheduled Event`; or an SQS event of sweep-queue messages (`Records`, each with
/// `eventSource` `aws:sqs`, a `messageId` and a body `{"serviceArn": …}`).
/// `{"serviceArn": …}` is accepted too, for a manual invocation.
pub fn trigger_of(raw: &Value) -> Result<Trigger, MalformedEvent> {
    let malformed = |why: &str| MalformedEvent(why.to_owned());
    if let Some(service) = raw.get("serviceArn").and_then(Value::as_str) {
        return service_trigger(service);
    }
    if let Some(records) = raw.get("Records").and_then(Value::as_array) {
        return queued(records).map(Trigger::Queued);
    }
    match raw.get("detail-type").and_then(Value::as_str) {
        Some("Scheduled Event") => Ok(Trigger::AllServices),
        Some("ECS Deployment State Change") => {
            if raw.get("source").and_then(Value::as_str) != Some("aws.ecs") {
                return Err(malformed(
                    "an ECS Deployment State Change event must come from aws.ecs",
                ));
            }
            let service = raw
                .get("resources")
                .and_then(Value::as_array)
                .and_then(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .find(|a| a.contains(":service/"))
                })
                .ok_or_else(|| malformed("the event's `resources` names no ECS service ARN"))?;
            service_trigger(service)
        }
        Some(other) => Err(MalformedEvent(format!(
            "unexpected detail-type {:?}; the reconciler handles `ECS Deployment State Change` and `Scheduled Event`",
            other.chars().take(60).collect::<String>()
        ))),
        None => Err(malformed(
            "not an EventBridge event (no detail-type), not an SQS event (no Records) and no serviceArn",
        )),
    }
}

/// The messages of an SQS event. The event itself is malformed (and the whole batch is retried)
/// only when it is not SQS's or a record has no `messageId` to report a failure by; a message
/// whose body names no service is that message's failure alone.
fn queued(records: &[Value]) -> Result<Vec<QueuedService>, MalformedEvent> {
    records
        .iter()
        .map(|record| {
            if record.get("eventSource").and_then(Value::as_str) != Some("aws:sqs") {
                return Err(MalformedEvent(
                    "a record of the event does not come from SQS (eventSource aws:sqs)".to_owned(),
                ));
            }
            let message_id = record
                .get("messageId")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| MalformedEvent("an SQS record has no messageId".to_owned()))?;
            let service = record
                .get("body")
                .and_then(Value::as_str)
                .and_then(|body| serde_json::from_str::<Value>(body).ok())
                .and_then(|body| {
                    body.get("serviceArn")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .ok_or_else(|| {
                    MalformedEvent("the message's body is not {\"serviceArn\": …}".to_owned())
                })
                .and_then(|service| match service_trigger(&service)? {
                    Trigger::Service(service) => Ok(service),
                    _ => Err(MalformedEvent("not a service".to_owned())),
                });
            Ok(QueuedService {
                message_id: message_id.to_owned(),
                service,
            })
        })
        .collect()
}

fn service_trigger(service: &str) -> Result<Trigger, MalformedEvent> {
    if crate::aws::ecs::cluster_of_service(service).is_some() && service.starts_with("arn:") {
        Ok(Trigger::Service(service.to_owned()))
    } else {
        Err(MalformedEvent(format!(
            "{:?} is not an ECS service ARN",
            service.chars().take(200).collect::<String>()
        )))
    }
}

/// What the reconciler function was given besides its clients: the settings defaults and the
/// sweep queue scheduled runs fill.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub defaults: EnvDefaults,
    pub sweep_queue: SweepQueue,
    /// When the invocation must have answered (Lambda's deadline): a queue batch starts no
    /// service after its first with less than [`SERVICE_BUDGET`] left, and reports the rest as
    /// failures, so that a timeout does not fail (and retry) the services already reconciled.
    pub deadline: Option<Instant>,
}

/// The longest one service's reconciliation is expected to take: the pipeline's retry budget
/// for throttling and transient failures plus the SDK's operation timeout of its last attempt.
pub const SERVICE_BUDGET: Duration = Duration::from_secs(
    retry::TRANSIENT_RETRY_BUDGET.as_secs() + crate::cold_start::OPERATION_TIMEOUT.as_secs(),
);

/// What one invocation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The function's answer: `summary` itself, except for an SQS batch, which is answered
    /// `{"batchItemFailures": [{"itemIdentifier": <messageId>}, …]}` (Lambda's partial batch
    /// response: only those messages become visible again and are retried).
    pub answer: Value,
    /// For logs and metrics: `{"services": [<ServiceReport>…], "errors": [{"serviceArn",
    /// "errorKind", "error"}…]}`; a scheduled run has instead `{"enqueued": <count>,
    /// "notEnqueued": [{"serviceArn", "errorKind", "error"}…]}`.
    pub summary: Value,
}

/// Handles one invocation of the reconciler function.
///
/// - A single-service event that fails is an error (Lambda retries the asynchronous
///   invocation).
/// - A scheduled run lists the ledger's services and puts one message per service on the sweep
///   queue; it fails only if the ledger cannot be listed or SQS refuses outright, and reports the
///   services it could not enqueue (the next run enqueues them again).
/// - An SQS batch reconciles each message's service and answers the messages that failed, so
///   that only those are retried (and, after the queue's `maxReceiveCount`, kept in its
///   dead-letter queue).
pub async fn handle(
    clients: &Clients,
    config: &ReconcilerConfig,
    raw: Value,
    execution_id: &str,
) -> Result<Handled, ReconcileError> {
    let trigger = trigger_of(&raw).inspect_err(|e| {
        error!(error_kind = "MalformedEvent", error = %e, "rejected reconciler event");
    })?;
    let options = ReconcileOptions {
        defaults: config.defaults.clone(),
        dry_run: false,
        execution_id: execution_id.to_owned(),
        identity: execution_id.to_owned(),
    };
    match trigger {
        Trigger::Service(service) => {
            let report = reconcile_service(clients, &service, &options)
                .await
                .inspect_err(|e| {
                    error!(service = %service, error_kind = e.kind(), error = %DisplayErrorContext(e), "reconciling failed");
                })?;
            info!(service = %service, repairs = report.repairs.len(), "reconciled");
            let summary = json!({"services": [report], "errors": []});
            Ok(Handled {
                answer: summary.clone(),
                summary,
            })
        }
        Trigger::AllServices => enqueue_all(clients, &config.sweep_queue).await,
        Trigger::Queued(messages) => {
            Ok(reconcile_queued(clients, &options, &messages, config.deadline).await)
        }
    }
}

/// The scheduled run: one sweep-queue message per service in the ledger.
async fn enqueue_all(clients: &Clients, queue: &SweepQueue) -> Result<Handled, ReconcileError> {
    let services = clients.ledger.services().await.inspect_err(|e| {
        error!(error = %DisplayErrorContext(e), "listing the ledger's services failed");
    })?;
    let run = queue.enqueue(&services).await.inspect_err(|e| {
        error!(error_kind = e.kind.error_kind(), error = %DisplayErrorContext(e), "enqueueing the sweep failed");
    })?;
    let mut not_enqueued = Vec::new();
    for failed in &run.failed {
        error!(
            service = %failed.service_arn,
            error_kind = failed.error_kind,
            code = %failed.code,
            "not enqueued: the next scheduled run enqueues it again"
        );
        not_enqueued.push(json!({
            "serviceArn": failed.service_arn,
            "errorKind": failed.error_kind,
            "error": format!("SQS refused the message ({})", failed.code),
        }));
    }
    info!(
        services = services.len(),
        enqueued = run.enqueued,
        not_enqueued = run.failed.len(),
        calls = run.calls,
        "sweep enqueued"
    );
    let summary = json!({"enqueued": run.enqueued, "notEnqueued": not_enqueued});
    Ok(Handled {
        answer: summary.clone(),
        summary,
    })
}

/// One batch of sweep-queue messages: each service in turn (one failing does not stop the
/// others); the failed messages are the answer's `batchItemFailures`.
async fn reconcile_queued(
    clients: &Clients,
    options: &ReconcileOptions,
    messages: &[QueuedService],
    deadline: Option<Instant>,
) -> Handled {
    let (mut reports, mut errors, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for (n, message) in messages.iter().enumerate() {
        // The first service is always tried: a function whose timeout is shorter than the
        // budget still makes progress.
        let out_of_time = n > 0
            && deadline
                .is_some_and(|d| d.saturating_duration_since(Instant::now()) < SERVICE_BUDGET);
        let result = match (&message.service, out_of_time) {
            (Err(e), _) => Err((None, "MalformedEvent", e.to_string())),
            (Ok(service), true) => Err((
                Some(service.as_str()),
                "OutOfTime",
                "too little of the invocation's time left to start it; retried later".to_owned(),
            )),
            (Ok(service), false) => match reconcile_service(clients, service, options).await {
                Ok(report) => Ok(report),
                Err(e) => {
                    error!(service = %service, error_kind = e.kind(), error = %DisplayErrorContext(&e), "reconciling failed");
                    Err((Some(service.as_str()), e.kind(), e.to_string()))
                }
            },
        };
        match result {
            Ok(report) => {
                info!(service = %report.service_arn, message_id = %message.message_id, repairs = report.repairs.len(), "reconciled");
                reports.push(serde_json::to_value(report).unwrap_or(Value::Null));
            }
            Err((service, kind, why)) => {
                if service.is_none() || kind == "OutOfTime" {
                    error!(message_id = %message.message_id, service = service, error_kind = kind, error = %why, "message not reconciled");
                }
                errors.push(json!({
                    "serviceArn": service,
                    "messageId": message.message_id,
                    "errorKind": kind,
                    "error": why,
                }));
                failures.push(json!({"itemIdentifier": message.message_id}));
            }
        }
    }
    info!(
        messages = messages.len(),
        failed = failures.len(),
        "sweep batch done"
    );
    Handled {
        answer: json!({ "batchItemFailures": failures }),
        summary: json!({"services": reports, "errors": errors}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_what_to_reconcile() {
        let svc = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
        let event = json!({
            "version": "0",
            "source": "aws.ecs",
            "detail-type": "ECS Deployment State Change",
            "resources": [svc],
            "detail": {"eventName": "SERVICE_DEPLOYMENT_FAILED", "deploymentId": "ecs-svc/123"}
        });
        assert_eq!(trigger_of(&event).unwrap(), Trigger::Service(svc.into()));
        let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "resources": ["arn:aws:events:us-east-1:1:rule/every-5-minutes"], "detail": {}});
        assert_eq!(trigger_of(&scheduled).unwrap(), Trigger::AllServices);
        assert_eq!(
            trigger_of(&json!({"serviceArn": svc})).unwrap(),
            Trigger::Service(svc.into())
        );
        let queued = json!({"Records": [
            {"messageId": "m-1", "eventSource": "aws:sqs", "body": format!("{{\"serviceArn\":\"{svc}\"}}")},
            {"messageId": "m-2", "eventSource": "aws:sqs", "body": "{\"serviceArn\":\"web\"}"},
            {"messageId": "m-3", "eventSource": "aws:sqs", "body": "not json"},
        ]});
        let Ok(Trigger::Queued(messages)) = trigger_of(&queued) else {
            panic!("{queued}")
        };
        assert_eq!(
            messages
                .iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>(),
            ["m-1", "m-2", "m-3"]
        );
        assert_eq!(messages[0].service, Ok(svc.to_owned()));
        assert!(messages[1].service.is_err(), "not a service ARN");
        assert!(messages[2].service.is_err(), "not a message of the sweep");
        for bad in [
            json!({"Records": [{"messageId": "m-1", "eventSource": "aws:sns", "body": "{}"}]}),
            json!({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}),
            json!({}),
            json!({"detail-type": "EC2 Instance State-change Notification"}),
            json!({"source": "aws.ecs", "detail-type": "ECS Deployment State Change", "resources": []}),
            json!({"serviceArn": "web"}),
        ] {
            assert!(trigger_of(&bad).is_err(), "{bad}");
        }
    }
}
