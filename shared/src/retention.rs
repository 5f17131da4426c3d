//! `retention: service`: the start of a retention copy of the version production just left.
//!
//! The copy is an ordinary ECS service running the previous version's task definition behind
//! a target group of its own. Its names are deterministic ([`service_name`],
//! [`target_group_name`]) so that a create retried after a crash or a lost answer finds the
//! resource the first attempt made, and everything it consists of carries skewguard's tags
//! ([`tags`]) so that IAM lets skewguard delete only what it created.

use std::time::Duration;

use time::OffsetDateTime;

use crate::DeploymentId;
use crate::ledger::RetainedCopy;

/// Tag on everything skewguard creates; IAM scopes creation and deletion to it.
pub const TAG_MANAGED: &str = "skewguard:managed";
/// Tag naming the user's service (its name, the last part of its ARN).
pub const TAG_SERVICE: &str = "skewguard:service";
/// Tag naming the retained version's deployment ID.
pub const TAG_DEPLOYMENT_ID: &str = "skewguard:deployment-id";

/// ECS service names: at most 255 letters, digits, hyphens and underscores.
pub const MAX_SERVICE_NAME_LEN: usize = 255;
/// ELB target group names: at most 32 alphanumerics and hyphens.
pub const MAX_TARGET_GROUP_NAME_LEN: usize = 32;

/// The tags of a retention copy's service and target group, as (key, value) pairs.
pub fn tags(service_arn: &str, deployment_id: &DeploymentId) -> [(&'static str, String); 3] {
    [
        (TAG_MANAGED, "true".to_owned()),
        (TAG_SERVICE, name_of(service_arn).to_owned()),
        (TAG_DEPLOYMENT_ID, deployment_id.as_str().to_owned()),
    ]
}

/// The last part of a service ARN (`arn:...:service/cluster/web` → `web`).
pub fn name_of(service_arn: &str) -> &str {
    service_arn.rsplit('/').next().unwrap_or(service_arn)
}

/// The retention service's name: `<service name>-sg-<deployment ID>`.
///
/// ECS names allow no `.` (which deployment IDs may contain) and at most 255 characters: a
/// `.` becomes `-`, and a name that had to be changed that way or shortened ends in `-` and 8
/// hex digits of [`copy_hash`], so two deployment IDs never share a retention service.
pub fn service_name(service_arn: &str, deployment_id: &DeploymentId) -> String {
    let id = deployment_id.as_str();
    let sanitized: String = id.chars().map(|c| if c == '.' { '-' } else { c }).collect();
    let service: String = name_of(service_arn)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    let plain = format!("{service}-sg-{sanitized}");
    if sanitized == id && plain.len() <= MAX_SERVICE_NAME_LEN {
        return plain;
    }
    let suffix = format!("-{:08x}", copy_hash(service_arn, deployment_id) >> 32);
    // Keep the deployment ID readable first: shorten the service name before the ID.
    let room = MAX_SERVICE_NAME_LEN - suffix.len() - "-sg-".len();
    let id_part: String = sanitized.chars().take(room.saturating_sub(1)).collect();
    let service_part: String = service
        .chars()
        .take(room.saturating_sub(id_part.len()).max(1))
        .collect();
    format!("{service_part}-sg-{id_part}{suffix}")
}

/// The retention target group's name: `sg-` and 16 hex digits of [`copy_hash`] (19 of the 32
/// characters ELB allows).
pub fn target_group_name(service_arn: &str, deployment_id: &DeploymentId) -> String {
    format!("sg-{:016x}", copy_hash(service_arn, deployment_id))
}

/// A stable 64-bit hash of (service ARN, deployment ID): FNV-1a, whose constants are fixed by
/// its specification, so the names it yields never change between releases (std's hashers
/// make no such promise).
pub fn copy_hash(service_arn: &str, deployment_id: &DeploymentId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    service_arn
        .bytes()
        .chain([0u8])
        .chain(deployment_id.as_str().bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// ALB's default quota of rules per load balancer (default rules not counted).
pub const DEFAULT_RULES_QUOTA: usize = 100;
/// ALB's default quota of target groups per load balancer.
pub const DEFAULT_TARGET_GROUPS_QUOTA: usize = 100;

/// Why a retention copy is not started, or is abandoned: post-shift holds instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Moving the pins needs new rules (a pin is replaced by creating the new one first).
    #[error(
        "no room for the retention copy's pins: the load balancer has {used} rules, {needed} more would pass its quota of {quota}; remove unused rules or ask AWS to raise \"Rules per Application Load Balancer\""
    )]
    Rules {
        /// Rules on the load balancer now.
        used: usize,
        /// Rules the move needs at once.
        needed: usize,
        /// The quota.
        quota: usize,
    },
    /// A retention copy needs a target group of its own on the load balancer.
    #[error(
        "no room for the retention copy's target group: the load balancer has {used} of {quota} target groups; retire retained versions (lower maxVersions) or ask AWS to raise \"Target groups per Application Load Balancer\""
    )]
    TargetGroups {
        /// Target groups on the load balancer now.
        used: usize,
        /// The quota.
        quota: usize,
    },
    /// More versions retained than `maxVersions` allows even before this one: retirement is
    /// behind, and another copy would only add to it.
    #[error(
        "{retained} versions are already retained, more than maxVersions {max_versions}: the reconciler retires the oldest first; until then this version is held"
    )]
    TooManyRetained {
        /// Retained versions of the service now.
        retained: usize,
        /// The `maxVersions` setting.
        max_versions: u32,
    },
}

/// What the load balancer and the ledger say about room for one more retained version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Rules on the load balancer's listeners (default rules not counted).
    pub rules_used: usize,
    /// The quota of rules per load balancer.
    pub rules_quota: usize,
    /// Pin rules per version under the service's settings (created anew when the pins move).
    pub pins_per_version: usize,
    /// Target groups associated with the load balancer.
    pub target_groups_used: usize,
    /// The quota of target groups per load balancer.
    pub target_groups_quota: usize,
    /// The service's versions already `retained`.
    pub retained: usize,
}

/// Whether one more retention copy fits: its pins are replaced create-first (`pins_per_version`
/// more rules at once), it needs one target group, and at most `maxVersions` + 1 versions are
/// retained at a time (the newest one in, then the oldest retires).
pub fn check_room(room: &Room, max_versions: u32) -> Result<(), Refusal> {
    if room.retained > max_versions as usize {
        return Err(Refusal::TooManyRetained {
            retained: room.retained,
            max_versions,
        });
    }
    if room.target_groups_used + 1 > room.target_groups_quota {
        return Err(Refusal::TargetGroups {
            used: room.target_groups_used,
            quota: room.target_groups_quota,
        });
    }
    if room.rules_used + room.pins_per_version > room.rules_quota {
        return Err(Refusal::Rules {
            used: room.rules_used,
            needed: room.pins_per_version,
            quota: room.rules_quota,
        });
    }
    Ok(())
}

/// What the copy's resources look like right now (DescribeTargetGroups by name,
/// DescribeServices, DescribeTargetHealth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyState {
    /// The ARN of a target group carrying the copy's name, if one exists.
    pub target_group_arn: Option<String>,
    /// The retention service, if ECS knows it and it is not being deleted (`ACTIVE`).
    pub service_arn: Option<String>,
    /// Targets of the copy's target group that are `healthy`.
    pub healthy_targets: usize,
    /// The pin rules forward to the copy's target group (at any weight): ECS attaches a
    /// target group to a service only once a rule uses it.
    pub pinned: bool,
}

/// The next thing post-shift does for a version's retention copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record the copy's names in the ledger (write-ahead), then create nothing yet.
    Record(RetainedCopy),
    /// Create the copy's target group (tagged), then record its ARN.
    CreateTargetGroup,
    /// Record the ARN of the copy's target group (found by name, or just created): the pins
    /// then forward to it at weight 0.
    RecordTargetGroup(String),
    /// Create the retention service (tagged, with a client token), then record its ARN.
    CreateService,
    /// Record the retention service's ARN (found, or just created).
    RecordService(String),
    /// Its targets are not all healthy yet: answer `IN_PROGRESS`, call again after this long.
    Wait(Duration),
    /// Its targets are healthy: the pins forward to its target group alone and the entry is
    /// `retained`.
    MovePins,
    /// It did not become healthy within `retentionStartTimeout`: tear it down and hold.
    TimedOut,
}

/// The copy to record for a version leaving production `now`: deterministic names, the tasks
/// `retainedTasks` asks for but never more than the version ran (at least one).
pub fn new_copy(
    service_arn: &str,
    cluster_arn: &str,
    deployment_id: &DeploymentId,
    retained_tasks: u32,
    blue_tasks: u32,
    now: OffsetDateTime,
) -> RetainedCopy {
    RetainedCopy {
        service_name: service_name(service_arn, deployment_id),
        service_arn: None,
        target_group_name: target_group_name(service_arn, deployment_id),
        target_group_arn: None,
        tasks: retained_tasks.min(blue_tasks).max(1),
        started_at: now,
        healthy_at: None,
        left_production_at: now,
        retain_until: None,
        idle_checks: 0,
        cluster_arn: cluster_arn.to_owned(),
    }
}

/// The next step for a copy recorded as `copy` (or none yet: `fresh` is the one to record),
/// given what exists. Each step is one call or one write, so a crash between two leaves the
/// ledger naming everything created: creating is always preceded by recording the name, and a
/// retried create finds the resource by that name.
pub fn next_step(
    copy: Option<&RetainedCopy>,
    fresh: impl FnOnce() -> RetainedCopy,
    state: &CopyState,
    start_timeout: Duration,
    poll_interval: Duration,
    now: OffsetDateTime,
) -> Step {
    let Some(copy) = copy else {
        return Step::Record(fresh());
    };
    if copy.healthy_at.is_none() && now - copy.started_at >= start_timeout {
        return Step::TimedOut;
    }
    let Some(tg) = &copy.target_group_arn else {
        return match &state.target_group_arn {
            Some(found) => Step::RecordTargetGroup(found.clone()),
            None => Step::CreateTargetGroup,
        };
    };
    match &state.target_group_arn {
        // Recorded, then deleted (by hand, say): made again under the same name.
        None => return Step::CreateTargetGroup,
        // Deleted and made again under the same name: the record follows what exists, so the
        // pins never lead to a group that is gone.
        Some(found) if found != tg => return Step::RecordTargetGroup(found.clone()),
        Some(_) => {}
    }
    let Some(service) = &copy.service_arn else {
        if !state.pinned {
            // The pins forward to it at weight 0 once the ARN is recorded; until the listener
            // shows that, ECS would refuse the service.
            return Step::Wait(poll_interval);
        }
        return match &state.service_arn {
            Some(found) => Step::RecordService(found.clone()),
            None => Step::CreateService,
        };
    };
    if state.service_arn.as_ref() != Some(service) {
        return match &state.service_arn {
            Some(found) => Step::RecordService(found.clone()),
            None if state.pinned => Step::CreateService,
            None => Step::Wait(poll_interval),
        };
    }
    if copy.healthy_at.is_some() || state.healthy_targets >= copy.tasks as usize {
        return Step::MovePins;
    }
    Step::Wait(poll_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/prod/web";

    fn id(raw: &str) -> DeploymentId {
        DeploymentId::parse(raw).unwrap()
    }

    #[test]
    fn names_are_deterministic_and_distinct_per_version_and_service() {
        assert_eq!(service_name(SVC, &id("a1b2")), "web-sg-a1b2");
        let tg = target_group_name(SVC, &id("a1b2"));
        assert_eq!(tg, target_group_name(SVC, &id("a1b2")));
        assert_eq!(tg.len(), 19);
        assert!(tg.starts_with("sg-"));
        assert!(tg[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(tg, target_group_name(SVC, &id("a1b3")));
        let other = "arn:aws:ecs:us-east-1:123456789012:service/staging/web";
        assert_ne!(tg, target_group_name(other, &id("a1b2")));
    }

    #[test]
    fn fnv_1a_matches_its_specification() {
        // The FNV-1a 64 of the empty input is its offset basis; of "a" a published value.
        let hash = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(copy_hash("a", &id("b")), hash(b"a\0b"));
    }

    #[test]
    fn service_names_fit_ecs_even_for_dotted_or_long_ids() {
        let dotted = service_name(SVC, &id("v1.2"));
        let underscored = service_name(SVC, &id("v1_2"));
        assert!(dotted.starts_with("web-sg-v1-2-"), "{dotted}");
        assert_ne!(dotted, service_name(SVC, &id("v1-2")));
        assert_eq!(underscored, "web-sg-v1_2");
        let long_service = format!(
            "arn:aws:ecs:us-east-1:123456789012:service/prod/{}",
            "s".repeat(255)
        );
        let long_id = id(&"d".repeat(128));
        let name = service_name(&long_service, &long_id);
        assert!(name.len() <= MAX_SERVICE_NAME_LEN, "{}", name.len());
        assert!(
            name.contains(&"d".repeat(128)),
            "the ID stays whole: {name}"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        );
        assert_ne!(name, service_name(&long_service, &id(&"d".repeat(127))));
    }

    const T0: OffsetDateTime = time::macros::datetime!(2026-03-01 12:00 UTC);
    const TIMEOUT: Duration = Duration::from_secs(600);
    const POLL: Duration = Duration::from_secs(15);

    fn fresh() -> RetainedCopy {
        new_copy(SVC, "arn:cluster/prod", &id("a1b2"), 2, 3, T0)
    }

    fn step(copy: Option<&RetainedCopy>, state: &CopyState, now: OffsetDateTime) -> Step {
        next_step(copy, fresh, state, TIMEOUT, POLL, now)
    }

    #[test]
    fn a_new_copy_is_named_deterministically_and_never_runs_more_tasks_than_blue() {
        let copy = fresh();
        assert_eq!(copy.service_name, "web-sg-a1b2");
        assert_eq!(copy.target_group_name, target_group_name(SVC, &id("a1b2")));
        assert_eq!(
            (copy.tasks, copy.started_at, copy.left_production_at),
            (2, T0, T0)
        );
        assert_eq!(
            (
                copy.service_arn.as_deref(),
                copy.target_group_arn.as_deref()
            ),
            (None, None)
        );
        assert_eq!(new_copy(SVC, "c", &id("a"), 4, 1, T0).tasks, 1);
        assert_eq!(new_copy(SVC, "c", &id("a"), 1, 0, T0).tasks, 1);
    }

    #[test]
    fn names_are_recorded_before_anything_is_created() {
        let state = CopyState::default();
        assert_eq!(step(None, &state, T0), Step::Record(fresh()));
    }

    #[test]
    fn the_target_group_is_created_once_and_found_by_name_after_a_crash() {
        let copy = fresh();
        assert_eq!(
            step(Some(&copy), &CopyState::default(), T0),
            Step::CreateTargetGroup
        );
        let found = CopyState {
            target_group_arn: Some("tg-ret".into()),
            ..CopyState::default()
        };
        assert_eq!(
            step(Some(&copy), &found, T0),
            Step::RecordTargetGroup("tg-ret".into())
        );
    }

    #[test]
    fn a_recorded_target_group_that_is_gone_or_replaced_is_followed() {
        let mut copy = fresh();
        copy.target_group_arn = Some("tg-old".into());
        assert_eq!(
            step(Some(&copy), &CopyState::default(), T0),
            Step::CreateTargetGroup
        );
        let replaced = CopyState {
            target_group_arn: Some("tg-new".into()),
            pinned: true,
            ..CopyState::default()
        };
        assert_eq!(
            step(Some(&copy), &replaced, T0),
            Step::RecordTargetGroup("tg-new".into())
        );
    }

    #[test]
    fn the_service_waits_for_the_weight_0_pin_then_is_created_or_found() {
        let mut copy = fresh();
        copy.target_group_arn = Some("tg-ret".into());
        let mut state = CopyState {
            target_group_arn: Some("tg-ret".into()),
            ..CopyState::default()
        };
        assert_eq!(step(Some(&copy), &state, T0), Step::Wait(POLL));
        state.pinned = true;
        assert_eq!(step(Some(&copy), &state, T0), Step::CreateService);
        state.service_arn = Some("svc-ret".into());
        assert_eq!(
            step(Some(&copy), &state, T0),
            Step::RecordService("svc-ret".into())
        );
    }

    #[test]
    fn a_recorded_service_that_is_gone_is_created_again_only_while_pinned() {
        let mut copy = fresh();
        copy.target_group_arn = Some("tg-ret".into());
        copy.service_arn = Some("svc-ret".into());
        let mut state = CopyState {
            target_group_arn: Some("tg-ret".into()),
            ..CopyState::default()
        };
        assert_eq!(step(Some(&copy), &state, T0), Step::Wait(POLL));
        state.pinned = true;
        assert_eq!(step(Some(&copy), &state, T0), Step::CreateService);
        state.service_arn = Some("svc-other".into());
        assert_eq!(
            step(Some(&copy), &state, T0),
            Step::RecordService("svc-other".into())
        );
    }

    #[test]
    fn the_pins_move_only_once_every_task_is_healthy() {
        let mut copy = fresh();
        copy.target_group_arn = Some("tg-ret".into());
        copy.service_arn = Some("svc-ret".into());
        let mut state = CopyState {
            target_group_arn: Some("tg-ret".into()),
            service_arn: Some("svc-ret".into()),
            healthy_targets: 1,
            pinned: true,
        };
        assert_eq!(step(Some(&copy), &state, T0), Step::Wait(POLL));
        state.healthy_targets = 2;
        assert_eq!(step(Some(&copy), &state, T0), Step::MovePins);
        // Once moved, a repeated call finds it done, whatever the targets do meanwhile.
        copy.healthy_at = Some(T0);
        state.healthy_targets = 0;
        let late = T0 + time::Duration::hours(1);
        assert_eq!(step(Some(&copy), &state, late), Step::MovePins);
    }

    #[test]
    fn a_copy_not_healthy_within_the_start_timeout_times_out_at_any_step() {
        let mut copy = fresh();
        let at = |secs| T0 + time::Duration::seconds(secs);
        assert_eq!(
            step(Some(&copy), &CopyState::default(), at(599)),
            Step::CreateTargetGroup
        );
        assert_eq!(
            step(Some(&copy), &CopyState::default(), at(600)),
            Step::TimedOut
        );
        copy.target_group_arn = Some("tg-ret".into());
        copy.service_arn = Some("svc-ret".into());
        let state = CopyState {
            target_group_arn: Some("tg-ret".into()),
            service_arn: Some("svc-ret".into()),
            healthy_targets: 1,
            pinned: true,
        };
        assert_eq!(step(Some(&copy), &state, at(3600)), Step::TimedOut);
    }

    fn room() -> Room {
        Room {
            rules_used: 10,
            rules_quota: DEFAULT_RULES_QUOTA,
            pins_per_version: 2,
            target_groups_used: 4,
            target_groups_quota: DEFAULT_TARGET_GROUPS_QUOTA,
            retained: 3,
        }
    }

    #[test]
    fn room_allows_max_versions_plus_one_in_play_and_refuses_beyond_any_quota() {
        assert_eq!(check_room(&room(), 3), Ok(()));
        let too_many = check_room(
            &Room {
                retained: 4,
                ..room()
            },
            3,
        )
        .unwrap_err();
        assert_eq!(
            too_many,
            Refusal::TooManyRetained {
                retained: 4,
                max_versions: 3
            }
        );
        let tgs = check_room(
            &Room {
                target_groups_used: 100,
                ..room()
            },
            3,
        )
        .unwrap_err();
        assert!(
            tgs.to_string().contains("100 of 100 target groups"),
            "{tgs}"
        );
        assert_eq!(
            check_room(
                &Room {
                    target_groups_used: 99,
                    ..room()
                },
                3
            ),
            Ok(())
        );
        let rules = check_room(
            &Room {
                rules_used: 99,
                ..room()
            },
            3,
        )
        .unwrap_err();
        assert!(rules.to_string().contains("99 rules, 2 more"), "{rules}");
        assert_eq!(
            check_room(
                &Room {
                    rules_used: 98,
                    ..room()
                },
                3
            ),
            Ok(())
        );
    }

    #[test]
    fn tags_name_the_service_and_the_version() {
        let tags = tags(SVC, &id("a1b2"));
        assert_eq!(
            tags,
            [
                (TAG_MANAGED, "true".to_owned()),
                (TAG_SERVICE, "web".to_owned()),
                (TAG_DEPLOYMENT_ID, "a1b2".to_owned()),
            ]
        );
    }
}
