//! Retirement of retained versions: pure decisions over plain data.
//!
//! A retained version (ledger status `retained`) runs in its own retention service behind its
//! own target group, pinned until it retires. [`decide`] says which retained versions of one
//! service retire now and why, from their entries' facts ([`Candidate`]), the service's
//! [`RetirementSettings`], the idle check's measurements and the orders given (`skewguard
//! revoke` / `cutoff`); [`next_step`] says what tearing a retiring copy down does next.
//!
//! Tearing down goes in one order, each step idempotent so that a run that stops anywhere is
//! finished by the next: the pins go first (nothing may forward to a target group that is about
//! to disappear), then the retention service is scaled to 0 and deleted, then its target group
//! is deleted (ELB refuses while a rule still uses it); only then is the entry final `retired`
//! with its reason. The decision to retire is recorded on the entry (its `reason`) before the
//! first step, so an order given once is carried out even if the run that took it stops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::DeploymentId;

/// Why a retained version retired: stored as the entry's `reason` ([`Reason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// More than `maxVersions` versions were retained; the oldest went first.
    MaxVersions,
    /// `maxAge` passed since it left production.
    MaxAge,
    /// No request reached it over `idleWindow`, on two consecutive checks after `minAge`.
    Idle,
    /// `skewguard revoke`: this version, now.
    Revoked,
    /// `skewguard cutoff`: every version older than a given one, now.
    Cutoff,
    /// Its copy did not become healthy within `retentionStartTimeout`.
    StartTimeout,
    /// The deployment that would have retained it was rolled back.
    RolledBack,
    /// A newer deployment took its target group before its copy was serving.
    Superseded,
    /// Starting its copy failed with an error retrying would not cure (a denied call, an
    /// invalid request): the version was held instead.
    StartFailed,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::MaxVersions,
        Reason::MaxAge,
        Reason::Idle,
        Reason::Revoked,
        Reason::Cutoff,
        Reason::StartTimeout,
        Reason::RolledBack,
        Reason::Superseded,
        Reason::StartFailed,
    ];

    /// The stored form: `max-versions`, `max-age`, `idle`, `revoked`, `cutoff`,
    /// `start-timeout`, `rolled-back`, `superseded`, `start-failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MaxVersions => "max-versions",
            Reason::MaxAge => "max-age",
            Reason::Idle => "idle",
            Reason::Revoked => "revoked",
            Reason::Cutoff => "cutoff",
            Reason::StartTimeout => "start-timeout",
            Reason::RolledBack => "rolled-back",
            Reason::Superseded => "superseded",
            Reason::StartFailed => "start-failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings retirement applies (hookDetails `maxVersions`, `maxAge`, `minAge`,
/// `idleWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetirementSettings {
    /// At most this many retained versions per service (≥ 1).
    pub max_versions: u32,
    /// A version retires this long after it left production.
    pub max_age: Duration,
    /// No idle check before this long after it left production.
    pub min_age: Duration,
    /// The window the idle check sums requests over.
    pub idle_window: Duration,
}

/// How many consecutive checks must measure zero requests before a version is idle.
pub const IDLE_CHECKS_TO_RETIRE: u32 = 2;

/// The least time between two idle checks that count as consecutive: the reconciler runs on
/// ECS events as well as on its schedule, and two checks seconds apart measure the same
/// minutes (CloudWatch may not have ingested the last ones yet). At most 5 minutes (the
/// default schedule), and never more than half the window.
pub fn idle_check_spacing(settings: &RetirementSettings) -> Duration {
    Duration::from_secs(300).min(settings.idle_window / 2)
}

/// A retained version, as retirement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub deployment_id: DeploymentId,
    /// When the version was first recorded (deployed): `cutoff` retires those before.
    pub created_at: OffsetDateTime,
    /// When it left production: `maxAge` and `minAge` count from here.
    pub left_production_at: OffsetDateTime,
    /// When its pins moved to the retention target group; no idle window may reach before it
    /// (requests before went to another target group). `None`: not serving from its copy yet.
    pub serving_since: Option<OffsetDateTime>,
    /// Consecutive zero-request idle checks so far.
    pub idle_checks: u32,
    /// When its entry was last written: the previous check's time when `idle_checks` > 0.
    pub last_written: OffsetDateTime,
    /// Already retiring (the decision recorded, teardown under way), and why.
    pub retiring: Option<Reason>,
}

/// An order given from outside (the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Retire this version now.
    Revoke(DeploymentId),
    /// Retire every retained version recorded before `recorded_at` (the creation of the given
    /// version's entry), the given version itself excepted.
    Cutoff {
        deployment_id: DeploymentId,
        recorded_at: OffsetDateTime,
    },
}

/// What the idle check measured for one version over `[now - idleWindow, now)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// CloudWatch measured this many requests.
    Requests(u64),
    /// No data, no call made, or the call failed: never taken for zero.
    Unknown,
}

/// The decision for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Versions that retire, with why; those already retiring keep their reason.
    pub retire: BTreeMap<DeploymentId, Reason>,
    /// The idle-check counter of each version that stays, where it changed.
    pub idle_checks: BTreeMap<DeploymentId, u32>,
}

/// Which window the idle check measures for `candidate` at `now`, if it may be checked at all:
/// `minAge` has passed since it left production, and the whole window lies after its pins moved
/// to its own target group.
pub fn idle_window(
    candidate: &Candidate,
    settings: &RetirementSettings,
    now: OffsetDateTime,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let start = now - settings.idle_window;
    let grace_over = now >= candidate.left_production_at + settings.min_age;
    let serving = candidate.serving_since.is_some_and(|t| t <= start);
    (grace_over && serving && candidate.retiring.is_none() && settings.idle_window > Duration::ZERO)
        .then_some((start, now))
}

/// Which retained versions retire now and why, and how the idle counters move.
///
/// In order: a version already retiring keeps its reason; an order (`revoke`, `cutoff`)
/// retires the versions it names; `maxAge` retires a version that left production that long
/// ago; a version whose idle check measured zero requests on [`IDLE_CHECKS_TO_RETIRE`]
/// consecutive checks (at least [`idle_check_spacing`] apart) retires as idle, a measured
/// request resets its counter, an unknown measurement changes nothing; finally, while more
/// than `maxVersions` versions stay, the ones that left production first retire. `traffic`
/// holds the measurements of the versions [`idle_window`] allowed a check for.
pub fn decide(
    candidates: &[Candidate],
    settings: &RetirementSettings,
    now: OffsetDateTime,
    traffic: &BTreeMap<DeploymentId, Traffic>,
    orders: &[Order],
) -> Decision {
    let mut decision = Decision::default();
    for c in candidates {
        let id = &c.deployment_id;
        if let Some(reason) = c.retiring {
            decision.retire.insert(id.clone(), reason);
            continue;
        }
        let ordered = orders.iter().find_map(|order| match order {
            Order::Revoke(target) if target == id => Some(Reason::Revoked),
            Order::Cutoff {
                deployment_id,
                recorded_at,
            } if deployment_id != id && c.created_at < *recorded_at => Some(Reason::Cutoff),
            _ => None,
        });
        if let Some(reason) = ordered {
            decision.retire.insert(id.clone(), reason);
            continue;
        }
        if now >= c.left_production_at + settings.max_age {
            decision.retire.insert(id.clone(), Reason::MaxAge);
            continue;
        }
        if idle_window(c, settings, now).is_none() {
            continue;
        }
        match traffic.get(id).copied().unwrap_or(Traffic::Unknown) {
            Traffic::Unknown => {}
            Traffic::Requests(n) if n > 0 => {
                if c.idle_checks != 0 {
                    decision.idle_checks.insert(id.clone(), 0);
                }
            }
            Traffic::Requests(_) => {
                let spaced =
                    c.idle_checks == 0 || now - c.last_written >= idle_check_spacing(settings);
                if !spaced {
                    continue;
                }
                let checks = c.idle_checks.saturating_add(1);
                if checks >= IDLE_CHECKS_TO_RETIRE {
                    decision.retire.insert(id.clone(), Reason::Idle);
                } else {
                    decision.idle_checks.insert(id.clone(), checks);
                }
            }
        }
    }
    let mut staying: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !decision.retire.contains_key(&c.deployment_id))
        .collect();
    staying.sort_by_key(|c| (c.left_production_at, c.created_at));
    let excess = staying
        .len()
        .saturating_sub(settings.max_versions.max(1) as usize);
    for c in staying.into_iter().take(excess) {
        decision.idle_checks.remove(&c.deployment_id);
        decision
            .retire
            .insert(c.deployment_id.clone(), Reason::MaxVersions);
    }
    decision
}

/// When and why a retained version will retire if nothing else happens first, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    /// The `maxAge` deadline.
    pub retire_at: OffsetDateTime,
    /// The rule that will retire it: `max-age`, or `idle` once one zero check was measured,
    /// or `max-versions` when it is the next to go as soon as another version is retained.
    pub reason: Reason,
    /// In words, for people.
    pub detail: String,
}

/// The forecast of each retained (not retiring) version among `candidates`.
pub fn forecast(
    candidates: &[Candidate],
    settings: &RetirementSettings,
    now: OffsetDateTime,
) -> BTreeMap<DeploymentId, Forecast> {
    let mut staying: Vec<&Candidate> = candidates.iter().filter(|c| c.retiring.is_none()).collect();
    staying.sort_by_key(|c| (c.left_production_at, c.created_at));
    let next_out: BTreeSet<&DeploymentId> =
        if staying.len() >= settings.max_versions.max(1) as usize {
            staying
                .first()
                .map(|c| &c.deployment_id)
                .into_iter()
                .collect()
        } else {
            BTreeSet::new()
        };
    staying
        .iter()
        .map(|c| {
            let retire_at = c.left_production_at + settings.max_age;
            let grace_ends = c.left_production_at + settings.min_age;
            let (reason, detail) = if c.idle_checks > 0 {
                (
                    Reason::Idle,
                    format!(
                        "idle: {} of {IDLE_CHECKS_TO_RETIRE} checks measured no request",
                        c.idle_checks
                    ),
                )
            } else if next_out.contains(&c.deployment_id) {
                (
                    Reason::MaxVersions,
                    format!(
                        "max-versions: the oldest of {} retained; the next retained version replaces it",
                        settings.max_versions
                    ),
                )
            } else if grace_ends > now {
                (
                    Reason::MaxAge,
                    format!(
                        "max-age, or idle once checked after {}",
                        humantime::format_duration(Duration::from_secs(
                            (grace_ends - now).whole_seconds().max(0) as u64
                        ))
                    ),
                )
            } else {
                (Reason::MaxAge, "max-age, or idle".to_owned())
            };
            (
                c.deployment_id.clone(),
                Forecast {
                    retire_at,
                    reason,
                    detail,
                },
            )
        })
        .collect()
}

/// How far tearing a retiring copy down got, from what this run did and what the entry says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Pin rules of the version that still exist (on the listener or in the entry).
    pub pins: Vec<String>,
    /// The retention service is scaled to 0 and deleted (or was never created).
    pub service_deleted: bool,
    /// The retention target group is deleted (or was never created).
    pub target_group_deleted: bool,
}

/// The next step of tearing a copy down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Delete these pin rules (through the listener executor), then record none left.
    RemovePins(Vec<String>),
    /// Scale the retention service to 0, then delete it.
    DeleteService,
    /// Delete the retention target group.
    DeleteTargetGroup,
    /// Everything is gone: the entry becomes final `retired` with its reason.
    Finish,
}

/// The next step, in the one order that never leaves a pin forwarding to a deleted target
/// group nor a service without its entry: pins, service, target group, entry.
pub fn next_step(teardown: &Teardown) -> Step {
    if !teardown.pins.is_empty() {
        Step::RemovePins(teardown.pins.clone())
    } else if !teardown.service_deleted {
        Step::DeleteService
    } else if !teardown.target_group_deleted {
        Step::DeleteTargetGroup
    } else {
        Step::Finish
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn settings() -> RetirementSettings {
        RetirementSettings {
            max_versions: 3,
            max_age: Duration::from_secs(7 * 24 * 3600),
            min_age: Duration::from_secs(30 * 60),
            idle_window: Duration::from_secs(30 * 60),
        }
    }

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).unwrap()
    }

    /// A version that left production `hours` ago, serving from its copy since then.
    fn retained(name: &str, hours: i64) -> Candidate {
        let left = NOW - time::Duration::hours(hours);
        Candidate {
            deployment_id: id(name),
            created_at: left - time::Duration::hours(1),
            left_production_at: left,
            serving_since: Some(left + time::Duration::minutes(2)),
            idle_checks: 0,
            last_written: left + time::Duration::minutes(2),
            retiring: None,
        }
    }

    fn none() -> BTreeMap<DeploymentId, Traffic> {
        BTreeMap::new()
    }

    fn zero(name: &str) -> BTreeMap<DeploymentId, Traffic> {
        BTreeMap::from([(id(name), Traffic::Requests(0))])
    }

    #[test]
    fn reasons_round_trip_in_their_stored_form() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::MaxVersions.as_str(), "max-versions");
        assert_eq!(Reason::StartTimeout.as_str(), "start-timeout");
    }

    #[test]
    fn the_oldest_go_first_when_more_than_max_versions_are_retained() {
        let candidates = [
            retained("v3", 1),
            retained("v1", 3),
            retained("v4", 0),
            retained("v2", 2),
            retained("v5", 0),
        ];
        let d = decide(&candidates, &settings(), NOW, &none(), &[]);
        assert_eq!(
            d.retire,
            BTreeMap::from([
                (id("v1"), Reason::MaxVersions),
                (id("v2"), Reason::MaxVersions)
            ])
        );
        let d = decide(&candidates[..3], &settings(), NOW, &none(), &[]);
        assert!(d.retire.is_empty(), "three retained is within maxVersions");
    }

    #[test]
    fn a_version_past_max_age_retires_and_counts_against_max_versions_no_more() {
        let mut s = settings();
        s.max_age = Duration::from_secs(2 * 3600);
        let candidates = [retained("old", 2), retained("v2", 1), retained("v3", 1)];
        let d = decide(&candidates, &s, NOW, &none(), &[]);
        assert_eq!(d.retire, BTreeMap::from([(id("old"), Reason::MaxAge)]));
    }

    #[test]
    fn idle_after_two_spaced_zero_checks_past_min_age() {
        let s = settings();
        let mut c = retained("v1", 2);
        let first = decide(std::slice::from_ref(&c), &s, NOW, &zero("v1"), &[]);
        assert!(first.retire.is_empty());
        assert_eq!(first.idle_checks, BTreeMap::from([(id("v1"), 1)]));

        // The same minutes checked again seconds later (an ECS event) count for nothing.
        c.idle_checks = 1;
        c.last_written = NOW;
        let later = NOW + time::Duration::seconds(20);
        let again = decide(std::slice::from_ref(&c), &s, later, &zero("v1"), &[]);
        assert_eq!(again, Decision::default());

        let next = NOW + time::Duration::minutes(5);
        let second = decide(std::slice::from_ref(&c), &s, next, &zero("v1"), &[]);
        assert_eq!(second.retire, BTreeMap::from([(id("v1"), Reason::Idle)]));
    }

    #[test]
    fn unknown_traffic_is_never_zero_and_a_request_resets_the_count() {
        let s = settings();
        let mut c = retained("v1", 2);
        c.idle_checks = 1;
        let next = NOW;
        for traffic in [none(), BTreeMap::from([(id("v1"), Traffic::Unknown)])] {
            let d = decide(std::slice::from_ref(&c), &s, next, &traffic, &[]);
            assert_eq!(d, Decision::default(), "nothing retires, nothing resets");
        }
        let busy = BTreeMap::from([(id("v1"), Traffic::Requests(1))]);
        let d = decide(std::slice::from_ref(&c), &s, next, &busy, &[]);
        assert!(d.retire.is_empty());
        assert_eq!(d.idle_checks, BTreeMap::from([(id("v1"), 0)]));
    }

    #[test]
    fn no_idle_check_before_min_age_nor_over_minutes_served_elsewhere() {
        let s = settings();
        let young = retained("v1", 0);
        assert_eq!(idle_window(&young, &s, NOW), None);
        let d = decide(std::slice::from_ref(&young), &s, NOW, &zero("v1"), &[]);
        assert_eq!(d, Decision::default());

        // Past minAge, but its pins moved to its copy ten minutes ago: a 30-minute window
        // would count requests that went to another target group.
        let mut late = retained("v1", 2);
        late.serving_since = Some(NOW - time::Duration::minutes(10));
        assert_eq!(idle_window(&late, &s, NOW), None);
        late.serving_since = None;
        assert_eq!(idle_window(&late, &s, NOW), None);

        let ok = retained("v1", 2);
        assert_eq!(
            idle_window(&ok, &s, NOW),
            Some((NOW - time::Duration::minutes(30), NOW))
        );
    }

    #[test]
    fn revoke_retires_that_version_and_cutoff_every_older_one() {
        let candidates = [retained("v1", 3), retained("v2", 2), retained("v3", 1)];
        let d = decide(
            &candidates,
            &settings(),
            NOW,
            &none(),
            &[Order::Revoke(id("v2"))],
        );
        assert_eq!(d.retire, BTreeMap::from([(id("v2"), Reason::Revoked)]));

        let cutoff = Order::Cutoff {
            deployment_id: id("v3"),
            recorded_at: candidates[2].created_at,
        };
        let d = decide(&candidates, &settings(), NOW, &none(), &[cutoff]);
        assert_eq!(
            d.retire,
            BTreeMap::from([(id("v1"), Reason::Cutoff), (id("v2"), Reason::Cutoff)])
        );
    }

    #[test]
    fn a_version_already_retiring_keeps_its_reason() {
        let mut c = retained("v1", 1);
        c.retiring = Some(Reason::Revoked);
        let d = decide(
            std::slice::from_ref(&c),
            &settings(),
            NOW + time::Duration::days(30),
            &zero("v1"),
            &[],
        );
        assert_eq!(d.retire, BTreeMap::from([(id("v1"), Reason::Revoked)]));
    }

    #[test]
    fn the_forecast_names_the_deadline_and_the_rule_that_will_apply() {
        let s = settings();
        let mut busy = retained("v2", 1);
        busy.idle_checks = 1;
        let candidates = [retained("v1", 3), busy, retained("v3", 0)];
        let f = forecast(&candidates, &s, NOW);
        assert_eq!(f[&id("v1")].reason, Reason::MaxVersions);
        assert_eq!(
            f[&id("v1")].retire_at,
            NOW - time::Duration::hours(3) + time::Duration::days(7)
        );
        assert_eq!(f[&id("v2")].reason, Reason::Idle);
        assert_eq!(f[&id("v3")].reason, Reason::MaxAge);
        assert!(
            f[&id("v3")].detail.contains("idle once checked after 30m"),
            "{}",
            f[&id("v3")].detail
        );
    }

    #[test]
    fn teardown_goes_pins_then_service_then_target_group_then_entry() {
        let mut t = Teardown {
            pins: vec!["rule/1".into()],
            ..Teardown::default()
        };
        assert_eq!(next_step(&t), Step::RemovePins(vec!["rule/1".into()]));
        // Whatever else is done, a pin left means the pins come first.
        t.service_deleted = true;
        t.target_group_deleted = true;
        assert_eq!(next_step(&t), Step::RemovePins(vec!["rule/1".into()]));
        t = Teardown::default();
        assert_eq!(next_step(&t), Step::DeleteService);
        t.service_deleted = true;
        assert_eq!(next_step(&t), Step::DeleteTargetGroup);
        t.target_group_deleted = true;
        assert_eq!(next_step(&t), Step::Finish);
    }
}
