//! `retention: service` in post-shift: the observe, decide and apply halves of starting the
//! retention copy of the version production just left, one step per pipeline attempt
//! ([`crate::retention::next_step`] chooses the step). [`crate::hook`] runs them inside the
//! post-shift pipeline: observe ([`observe`]), decide ([`decide`], which writes the ledger side
//! of the step on the draft), apply ([`create`] before the pins are brought in line,
//! [`tear_down`] after), commit (the stage's one conditional write).
//!
//! The copy's life in the ledger: the version's entry is `draining` with a `retention` record
//! (names first, then each ARN as it exists); its pins forward to its own target group and to
//! the copy's at weight 0 once that exists (ECS attaches a target group to a service only once
//! a rule uses it); when every task of the copy is healthy the pins forward to the copy alone
//! and the entry is `retained`. A copy that does not become healthy within
//! `retentionStartTimeout`, or that does not fit the load balancer's quotas or `maxVersions`,
//! is abandoned: the entry gets a `reason` (`start-timeout`, `no-room`), the pins leave the
//! copy, the copy is torn down, and the version is held for the skew window as in `hold` mode.

use std::time::Duration;

use aws_smithy_types::error::display::DisplayErrorContext;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::DeploymentId;
use crate::aws::AwsError;
use crate::aws::ecs::NewRetentionService;
use crate::hook::{Clients, HookError};
use crate::ledger::{LedgerEntry, RetainedCopy, Status};
use crate::retention::{self, CopyState, Room, Step};
use crate::retirement::Reason;
use crate::settings::Settings;
use crate::stages::Draft;

/// Why a version was not retained because it did not fit (recorded as its `reason`).
pub const NO_ROOM: &str = "no-room";

/// How often post-shift looks at a starting copy at most: a task's health checks pass within
/// a minute or two, and each look is three cheap calls.
pub const START_POLL: Duration = Duration::from_secs(15);

/// What one attempt observed of the version whose copy post-shift starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySeen {
    /// No copy recorded yet: whether one fits, and how many tasks the version ran.
    Start {
        deployment_id: DeploymentId,
        room: Room,
        blue_tasks: u32,
    },
    /// A copy is recorded and starting: what of it exists.
    Starting {
        deployment_id: DeploymentId,
        state: CopyState,
    },
    /// A copy was abandoned (its entry has a `reason`) and must be torn down.
    Abandoned { deployment_id: DeploymentId },
    /// Looking at the copy failed with an error retrying would not cure.
    Failed {
        deployment_id: DeploymentId,
        error: String,
    },
}

/// The version whose copy post-shift starts for `green`: the newest other version that is
/// `live` (the first call, before it drains) or drains because `green` superseded it, and was
/// not abandoned. Older versions draining along with it are held, as in `hold` mode.
pub fn candidate<'a>(draft: &'a Draft, green: &DeploymentId) -> Option<&'a LedgerEntry> {
    draft
        .entries()
        .filter(|e| &e.deployment_id != green && e.reason.is_none())
        .filter(|e| {
            e.status == Status::Live
                || (e.status == Status::Draining && e.superseded_by.as_ref() == Some(green))
        })
        .max_by_key(|e| (e.live_at, e.created_at))
}

/// A version superseded by `green` whose copy was abandoned but not torn down yet.
pub fn abandoned<'a>(draft: &'a Draft, green: &DeploymentId) -> Option<&'a LedgerEntry> {
    draft.entries().find(|e| {
        e.status == Status::Draining
            && e.superseded_by.as_ref() == Some(green)
            && e.reason.is_some()
            && e.retention.is_some()
    })
}

/// The observe step: what the next step for `green`'s predecessor's copy needs to know.
/// `None` when there is nothing to start or tear down.
///
/// Errors: an AWS call failed (classified by code).
pub async fn observe(
    draft: &Draft,
    green: &DeploymentId,
    clients: &Clients,
) -> Result<Option<CopySeen>, HookError> {
    if let Some(entry) = abandoned(draft, green) {
        return Ok(Some(CopySeen::Abandoned {
            deployment_id: entry.deployment_id.clone(),
        }));
    }
    let Some(entry) = candidate(draft, green) else {
        return Ok(None);
    };
    let deployment_id = entry.deployment_id.clone();
    let Some(copy) = &entry.retention else {
        let shape = clients
            .elb
            .target_group_shape(&entry.target_group_arn)
            .await?;
        let usage = match shape.load_balancer_arns.first() {
            Some(lb) => Some(clients.elb.load_balancer_usage(lb).await?),
            None => None,
        };
        let cluster = cluster_arn(draft.service_arn());
        let tasks = clients
            .ecs
            .service_tasks(&cluster, &[draft.service_arn().to_owned()])
            .await?;
        let blue_tasks = tasks
            .get(draft.service_arn())
            .map(|t| t.desired.max(t.running))
            .unwrap_or(1);
        let room = Room {
            rules_used: usage.map_or(0, |u| u.rules),
            rules_quota: retention::DEFAULT_RULES_QUOTA,
            pins_per_version: entry.rule_arns.len().max(1),
            target_groups_used: usage.map_or(0, |u| u.target_groups),
            target_groups_quota: retention::DEFAULT_TARGET_GROUPS_QUOTA,
            retained: draft
                .entries()
                .filter(|e| e.status == Status::Retained && e.reason.is_none())
                .count(),
        };
        return Ok(Some(CopySeen::Start {
            deployment_id,
            room,
            blue_tasks,
        }));
    };
    let mut state = CopyState {
        target_group_arn: clients
            .elb
            .target_group_arn_by_name(&copy.target_group_name)
            .await?,
        ..CopyState::default()
    };
    if copy.target_group_arn.is_some() && state.target_group_arn == copy.target_group_arn {
        state.service_arn = clients
            .ecs
            .active_service_arn(&copy.cluster_arn, &copy.service_name)
            .await?;
        let tg = state.target_group_arn.as_deref().unwrap_or_default();
        if state.service_arn.is_none() || state.service_arn != copy.service_arn {
            // ECS creates the service only once a rule uses its target group.
            let rules = clients
                .elb
                .describe_listener_rules(&entry.listener_arn)
                .await?;
            state.pinned = rules.iter().any(|r| r.forward_targets().contains(&tg));
        } else if copy.healthy_at.is_none() {
            state.healthy_targets = clients.elb.healthy_targets(tg).await?;
        }
    }
    Ok(Some(CopySeen::Starting {
        deployment_id,
        state,
    }))
}

/// An AWS action a step needs, executed by [`create`] or [`tear_down`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyAction {
    /// Create the copy's target group shaped like the version's own, then record its ARN.
    CreateTargetGroup(DeploymentId),
    /// Create the retention service, then record its ARN.
    CreateService(DeploymentId),
    /// Tear the abandoned copy down (its pins no longer lead to it), then forget it.
    TearDown(DeploymentId),
}

/// What the decide step chose for the copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyDecision {
    /// The AWS action to execute in the apply step, if any.
    pub action: Option<CopyAction>,
    /// Nothing to do but wait this long for the copy's targets.
    pub wait: Option<Duration>,
    /// The step changed something: the stage runs again right away for the next one.
    pub progressed: bool,
}

/// The decide step: the next step for the copy, written on the draft where it is a ledger
/// change (pure).
pub fn decide(
    draft: &mut Draft,
    seen: CopySeen,
    settings: &Settings,
    poll_interval: Duration,
    now: OffsetDateTime,
) -> CopyDecision {
    let service_arn = draft.service_arn().to_owned();
    let progressed = |action| CopyDecision {
        action,
        wait: None,
        progressed: true,
    };
    match seen {
        CopySeen::Abandoned { deployment_id } => {
            progressed(Some(CopyAction::TearDown(deployment_id)))
        }
        CopySeen::Failed {
            deployment_id,
            error,
        } => {
            abandon_failed(draft, &deployment_id, &error);
            progressed(None)
        }
        CopySeen::Start {
            deployment_id,
            room,
            blue_tasks,
        } => {
            let Some(entry) = draft.get_mut(&deployment_id) else {
                return CopyDecision::default();
            };
            if let Err(refusal) = retention::check_room(&room, settings.max_versions) {
                warn!(deployment_id = %deployment_id, reason = NO_ROOM, error = %refusal, "not retaining the previous version; holding it for the skew window instead");
                entry.reason = Some(NO_ROOM.to_owned());
                return progressed(None);
            }
            let copy = retention::new_copy(
                &service_arn,
                &cluster_arn(&service_arn),
                &deployment_id,
                settings.retained_tasks,
                blue_tasks,
                now,
            );
            info!(deployment_id = %deployment_id, retention_service = %copy.service_name, retention_target_group = %copy.target_group_name, tasks = copy.tasks, "starting a retention copy of the previous version");
            entry.retention = Some(copy);
            progressed(None)
        }
        CopySeen::Starting {
            deployment_id,
            state,
        } => {
            let Some(entry) = draft.get_mut(&deployment_id) else {
                return CopyDecision::default();
            };
            let step = retention::next_step(
                entry.retention.as_ref(),
                || unreachable_fresh(&service_arn, &deployment_id, now),
                &state,
                settings.retention_start_timeout,
                poll_interval,
                now,
            );
            let Some(copy) = entry.retention.as_mut() else {
                return CopyDecision::default();
            };
            match step {
                Step::Record(fresh) => {
                    *copy = fresh;
                    progressed(None)
                }
                Step::CreateTargetGroup => {
                    progressed(Some(CopyAction::CreateTargetGroup(deployment_id)))
                }
                Step::RecordTargetGroup(arn) => {
                    copy.target_group_arn = Some(arn);
                    progressed(None)
                }
                Step::CreateService => progressed(Some(CopyAction::CreateService(deployment_id))),
                Step::RecordService(arn) => {
                    copy.service_arn = Some(arn);
                    progressed(None)
                }
                Step::Wait(wait) => CopyDecision {
                    action: None,
                    wait: Some(wait),
                    progressed: false,
                },
                Step::MovePins => {
                    copy.healthy_at.get_or_insert(now);
                    copy.retain_until = Some(copy.left_production_at + settings.max_age);
                    let Some(copy_tg) = copy.target_group_arn.clone() else {
                        return CopyDecision::default();
                    };
                    info!(deployment_id = %deployment_id, retention_target_group = %copy_tg, "the retention copy is healthy: its pins move to it and the version is retained");
                    entry.target_group_arn = copy_tg;
                    entry.status = Status::Retained;
                    entry.drain_until = None;
                    progressed(None)
                }
                Step::TimedOut => {
                    warn!(deployment_id = %deployment_id, reason = Reason::StartTimeout.as_str(), timeout_s = settings.retention_start_timeout.as_secs(), "the retention copy did not become healthy in time; tearing it down and holding the version for the skew window instead");
                    entry.reason = Some(Reason::StartTimeout.as_str().to_owned());
                    progressed(None)
                }
            }
        }
    }
}

/// Gives up a copy whose start failed for good: the version is held instead, the error kept
/// on its entry (`lastError`), and whatever was created is torn down next.
pub fn abandon_failed(draft: &mut Draft, deployment_id: &DeploymentId, error: &str) {
    warn!(deployment_id = %deployment_id, reason = Reason::StartFailed.as_str(), error = %error, "starting the retention copy failed; holding the version for the skew window instead");
    if let Some(entry) = draft.get_mut(deployment_id) {
        entry.reason = Some(Reason::StartFailed.as_str().to_owned());
        entry.last_error = Some(format!("retention copy: {error}"));
    }
}

/// The version whose copy a step concerns.
pub fn concerns(action: &CopyAction) -> &DeploymentId {
    match action {
        CopyAction::CreateTargetGroup(id)
        | CopyAction::CreateService(id)
        | CopyAction::TearDown(id) => id,
    }
}

/// Whether an error of the copy's start is for good (a denied or invalid call), so that the
/// version is held instead of the deployment failing; throttling, transient errors and lost
/// races are retried as any step is.
pub fn is_for_good(error: &HookError) -> bool {
    error.failure() == crate::retry::Failure::Final
}

/// `next_step` asks for a fresh copy only when none is recorded, which [`CopySeen::Starting`]
/// excludes; should it ever ask, the same deterministic copy is the answer.
fn unreachable_fresh(
    service_arn: &str,
    deployment_id: &DeploymentId,
    now: OffsetDateTime,
) -> RetainedCopy {
    retention::new_copy(
        service_arn,
        &cluster_arn(service_arn),
        deployment_id,
        1,
        1,
        now,
    )
}

/// The apply step's creations, before the pins are brought in line: the target group (its
/// ARN then goes into the pins at weight 0) or the service. Each ARN is written on the draft.
///
/// Errors: an AWS call failed (classified by code); ECS refuses the service while no rule
/// uses its target group (`InvalidParameterException`).
pub async fn create(
    draft: &mut Draft,
    action: &CopyAction,
    clients: &Clients,
) -> Result<(), HookError> {
    let service_arn = draft.service_arn().to_owned();
    match action {
        CopyAction::CreateTargetGroup(id) => {
            let Some(entry) = draft.get(id) else {
                return Ok(());
            };
            let Some(copy) = &entry.retention else {
                return Ok(());
            };
            let shape = clients
                .elb
                .target_group_shape(&entry.target_group_arn)
                .await?;
            let arn = clients
                .elb
                .create_target_group(
                    &copy.target_group_name,
                    &shape,
                    &retention::tags(&service_arn, id),
                )
                .await?;
            info!(deployment_id = %id, retention_target_group = %arn, "retention target group created");
            if let Some(copy) = draft.get_mut(id).and_then(|e| e.retention.as_mut()) {
                copy.target_group_arn = Some(arn);
            }
        }
        CopyAction::CreateService(id) => {
            let Some(entry) = draft.get(id) else {
                return Ok(());
            };
            let Some(copy) = &entry.retention else {
                return Ok(());
            };
            let Some(target_group_arn) = copy.target_group_arn.as_deref() else {
                return Ok(());
            };
            let launch = clients
                .ecs
                .revision_launch(&entry.service_revision_arn)
                .await?;
            let token = client_token(&service_arn, id, copy.started_at);
            let arn = clients
                .ecs
                .create_retention_service(&NewRetentionService {
                    cluster: &copy.cluster_arn,
                    name: &copy.service_name,
                    launch: &launch,
                    target_group_arn,
                    desired_count: copy.tasks,
                    tags: &retention::tags(&service_arn, id),
                    client_token: &token,
                })
                .await?;
            info!(deployment_id = %id, retention_service = %arn, tasks = copy.tasks, "retention service created");
            if let Some(copy) = draft.get_mut(id).and_then(|e| e.retention.as_mut()) {
                copy.service_arn = Some(arn);
            }
        }
        CopyAction::TearDown(_) => {}
    }
    Ok(())
}

/// The apply step's teardown, after the pins were brought in line (no rule may forward to the
/// copy's target group any more): the service, then the target group; the record goes from
/// the draft once both are gone.
///
/// Errors: an AWS call failed (classified by code); `ResourceInUse` when a rule still forwards
/// to the copy's target group (the next attempt removes it first).
pub async fn tear_down(
    draft: &mut Draft,
    action: &CopyAction,
    clients: &Clients,
) -> Result<(), HookError> {
    let CopyAction::TearDown(id) = action else {
        return Ok(());
    };
    let Some(copy) = draft.get(id).and_then(|e| e.retention.clone()) else {
        return Ok(());
    };
    crate::retirer::tear_down_copy(&clients.ecs, &clients.elb, &copy)
        .await
        .inspect_err(|err: &AwsError| {
            warn!(deployment_id = %id, error = %DisplayErrorContext(err), "tearing down the abandoned retention copy failed; the next call carries it on");
        })?;
    info!(deployment_id = %id, retention_service = %copy.service_name, retention_target_group = %copy.target_group_name, "abandoned retention copy torn down");
    if let Some(entry) = draft.get_mut(id) {
        entry.retention = None;
    }
    Ok(())
}

/// The cluster of a service, as an ARN (`arn:…:cluster/<name>`), from the service's ARN.
pub fn cluster_arn(service_arn: &str) -> String {
    match (
        service_arn.split_once(":service/"),
        crate::aws::ecs::cluster_of_service(service_arn),
    ) {
        (Some((prefix, _)), Some(cluster)) => format!("{prefix}:cluster/{cluster}"),
        _ => service_arn.to_owned(),
    }
}

/// The CreateService client token of one start of a copy: the same for every retry of that
/// start, different for a later start of the same version (ECS may remember a token after
/// the service it made is gone). At most 36 ASCII characters.
pub fn client_token(
    service_arn: &str,
    deployment_id: &DeploymentId,
    started_at: OffsetDateTime,
) -> String {
    let start = started_at.unix_timestamp_nanos().to_string();
    let hash = retention::copy_hash(&format!("{service_arn}\n{start}"), deployment_id);
    format!("skewguard-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{RunningVersion, ServiceWiring};
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/prod/web";
    const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).unwrap()
    }

    fn entry(d: &str, tg: &str, status: Status) -> LedgerEntry {
        let running = RunningVersion {
            deployment_id: id(d),
            service_revision_arn: format!("rev-{d}"),
            target_group_arn: tg.to_owned(),
            task_definition_arn: format!("td-{d}"),
        };
        let wiring = ServiceWiring {
            listener_arn: "listener".into(),
            production_rule_arn: "prod-rule".into(),
        };
        let mut e = LedgerEntry::new(SVC, &running, &wiring, status, T0);
        e.rule_arns = vec![format!("pin-{d}")];
        e
    }

    fn settings(details: serde_json::Value) -> Settings {
        let details = details.as_object().cloned().unwrap_or_default();
        Settings::resolve(&details, &crate::settings::EnvDefaults::default()).unwrap()
    }

    fn room() -> Room {
        Room {
            rules_used: 10,
            rules_quota: 100,
            pins_per_version: 1,
            target_groups_used: 4,
            target_groups_quota: 100,
            retained: 0,
        }
    }

    fn draining_blue() -> Draft {
        let mut blue = entry("blue", "tg-blue", Status::Draining);
        blue.superseded_by = Some(id("green"));
        blue.drain_until = Some(T0 + Duration::from_secs(3600));
        let green = entry("green", "tg-green", Status::Live);
        Draft::new(SVC, vec![blue, green])
    }

    #[test]
    fn the_version_production_left_is_the_candidate_and_an_abandoned_one_is_not() {
        let mut draft = draining_blue();
        assert_eq!(
            candidate(&draft, &id("green")).map(|e| e.deployment_id.as_str()),
            Some("blue")
        );
        draft.get_mut(&id("blue")).unwrap().reason = Some(NO_ROOM.into());
        assert!(candidate(&draft, &id("green")).is_none());
        // Abandoned with nothing recorded: nothing to tear down either.
        assert!(abandoned(&draft, &id("green")).is_none());
    }

    #[test]
    fn no_room_holds_the_version_and_records_why_without_recording_a_copy() {
        let mut draft = draining_blue();
        let full = Room {
            target_groups_used: 100,
            ..room()
        };
        let decision = decide(
            &mut draft,
            CopySeen::Start {
                deployment_id: id("blue"),
                room: full,
                blue_tasks: 2,
            },
            &settings(serde_json::json!({"retention": "service"})),
            START_POLL,
            T0,
        );
        assert!(decision.progressed && decision.action.is_none());
        let blue = draft.get(&id("blue")).unwrap();
        assert_eq!(blue.reason.as_deref(), Some(NO_ROOM));
        assert!(blue.retention.is_none());
        assert_eq!(blue.status, Status::Draining);
    }

    #[test]
    fn a_start_records_the_copy_before_creating_anything_with_at_most_blues_tasks() {
        let mut draft = draining_blue();
        let decision = decide(
            &mut draft,
            CopySeen::Start {
                deployment_id: id("blue"),
                room: room(),
                blue_tasks: 2,
            },
            &settings(serde_json::json!({"retention": "service", "retainedTasks": "5"})),
            START_POLL,
            T0,
        );
        assert_eq!(decision.action, None);
        let copy = draft.get(&id("blue")).unwrap().retention.clone().unwrap();
        assert_eq!(copy.tasks, 2);
        assert_eq!(copy.target_group_arn, None);
        assert_eq!(
            copy.cluster_arn,
            "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
        );
    }

    #[test]
    fn a_healthy_copy_takes_the_pins_and_the_version_is_retained_until_max_age() {
        let mut draft = draining_blue();
        let mut copy = retention::new_copy(SVC, "cluster", &id("blue"), 1, 1, T0);
        copy.target_group_arn = Some("tg-copy".into());
        copy.service_arn = Some("svc-copy".into());
        draft.get_mut(&id("blue")).unwrap().retention = Some(copy);
        let before = draft.get(&id("blue")).unwrap().pin_targets();
        assert_eq!(before.len(), 2, "blue at weight 1 and the copy at weight 0");
        let decision = decide(
            &mut draft,
            CopySeen::Starting {
                deployment_id: id("blue"),
                state: CopyState {
                    target_group_arn: Some("tg-copy".into()),
                    service_arn: Some("svc-copy".into()),
                    healthy_targets: 1,
                    pinned: true,
                },
            },
            &settings(serde_json::json!({"retention": "service", "maxAge": "2d"})),
            START_POLL,
            T0 + Duration::from_secs(60),
        );
        assert!(decision.progressed);
        let blue = draft.get(&id("blue")).unwrap();
        assert_eq!(blue.status, Status::Retained);
        assert_eq!(blue.target_group_arn, "tg-copy");
        assert_eq!(blue.drain_until, None);
        assert_eq!(
            blue.retention.as_ref().unwrap().retain_until,
            Some(T0 + Duration::from_secs(2 * 24 * 3600))
        );
        assert_eq!(blue.pin_targets().len(), 1);
        assert!(draft.pins_need_attention());
    }

    #[test]
    fn a_timed_out_copy_leaves_the_pins_first_then_is_torn_down() {
        let mut draft = draining_blue();
        let mut copy = retention::new_copy(SVC, "cluster", &id("blue"), 1, 1, T0);
        copy.target_group_arn = Some("tg-copy".into());
        draft.get_mut(&id("blue")).unwrap().retention = Some(copy);
        let s =
            settings(serde_json::json!({"retention": "service", "retentionStartTimeout": "5m"}));
        let decision = decide(
            &mut draft,
            CopySeen::Starting {
                deployment_id: id("blue"),
                state: CopyState {
                    target_group_arn: Some("tg-copy".into()),
                    ..CopyState::default()
                },
            },
            &s,
            START_POLL,
            T0 + Duration::from_secs(301),
        );
        assert!(decision.progressed && decision.action.is_none());
        let blue = draft.get(&id("blue")).unwrap();
        assert_eq!(blue.reason.as_deref(), Some("start-timeout"));
        assert_eq!(
            blue.status,
            Status::Draining,
            "held for the skew window instead"
        );
        assert_eq!(
            blue.pin_targets().len(),
            1,
            "the pin no longer leads to the copy"
        );
        assert_eq!(
            abandoned(&draft, &id("green")).map(|e| e.deployment_id.as_str()),
            Some("blue")
        );
    }

    #[test]
    fn client_tokens_fit_ecs_and_differ_per_start() {
        let a = client_token(SVC, &id("blue"), T0);
        assert!(a.len() <= 36 && a.is_ascii());
        assert_eq!(a, client_token(SVC, &id("blue"), T0));
        assert_ne!(
            a,
            client_token(SVC, &id("blue"), T0 + Duration::from_secs(1))
        );
        assert_ne!(a, client_token(SVC, &id("green"), T0));
    }
}
