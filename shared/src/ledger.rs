//! The ledger: one entry per (service, deployment ID), saying where that version runs, whether it
//! is pinned, and everything that happened to it.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::DeploymentId;

/// How long retired and rolled-back entries stay before DynamoDB's TTL removes them.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where a ledger entry's version is in its life; stored as `status` ([`Status::as_str`]).
///
/// `Testing` → `Live` → `Draining` → `Retired` on a deployment that completes, `Testing` →
/// `RolledBack` on one that is rolled back. With `retention: service`, `Draining` →
/// `Retained` once the pins forward to the version's retention copy ([`RetainedCopy`]), and
/// `Retained` → `Retired` when the copy retires. Retired and rolled-back entries are history
/// ([`Status::is_final`]) unless ECS runs their version again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Green during testing; pinned once the production shift begins.
    Testing,
    /// Serves production.
    Live,
    /// The previous production version, pinned until `drain_until` (or, in `service` mode,
    /// while its retention copy starts).
    Draining,
    /// A previous version served by its own retention service and target group
    /// ([`LedgerEntry::retention`]), pinned until it retires.
    Retained,
    /// Pins removed after its skew window (or because its version no longer runs).
    Retired,
    /// A deployment of it was rolled back.
    RolledBack,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 6] = [
        Status::Testing,
        Status::Live,
        Status::Draining,
        Status::Retained,
        Status::Retired,
        Status::RolledBack,
    ];

    /// The stored and displayed form: `testing`, `live`, `draining`, `retained`, `retired`,
    /// `rolled_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Testing => "testing",
            Status::Live => "live",
            Status::Draining => "draining",
            Status::Retained => "retained",
            Status::Retired => "retired",
            Status::RolledBack => "rolled_back",
        }
    }

    /// The status stored as `raw` ([`Status::as_str`]), if it is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Retired and rolled-back entries are history: their version is not running.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Retired | Status::RolledBack)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of the ledger table: a deployment ID of one service, where it runs, its pins and
/// its status. The item's attribute names are listed in [`crate::aws::ledger_store::attr`]; its
/// history is kept apart ([`HistoryRecord`]). Times are UTC, stored as RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The ECS service (partition key).
    pub service_arn: String,
    /// The version's deployment ID (sort key).
    pub deployment_id: DeploymentId,
    /// Where the version is in its life.
    pub status: Status,
    /// The target group this version's tasks serve from: where its pins forward.
    pub target_group_arn: String,
    /// The ECS service revision that runs this version.
    pub service_revision_arn: String,
    /// The revision's task definition, where the deployment ID was read.
    pub task_definition_arn: String,
    /// The listener that holds the service's production rule and this version's pins.
    pub listener_arn: String,
    /// The ECS-managed production rule whose conditions every pin copies.
    pub production_rule_arn: String,
    /// The pin rules that currently exist for this deployment.
    pub rule_arns: Vec<String>,
    /// When the entry was first written.
    pub created_at: OffsetDateTime,
    /// When the entry was last written.
    pub updated_at: OffsetDateTime,
    /// When the production shift to this version began (its pin exists from then on).
    pub shifted_at: Option<OffsetDateTime>,
    /// When it became the production version.
    pub live_at: Option<OffsetDateTime>,
    /// While `Draining`: the end of its skew window, when its pins go.
    pub drain_until: Option<OffsetDateTime>,
    /// The deployment that replaced this one in production.
    pub superseded_by: Option<DeploymentId>,
    /// When it was retired (its pins removed).
    pub retired_at: Option<OffsetDateTime>,
    /// Epoch seconds for DynamoDB TTL; set only once the entry is final.
    pub expires_at: Option<i64>,
    /// The last error recorded with `onError: continue` (nobody saw a FAILED answer).
    pub last_error: Option<String>,
    /// Why a version stopped being pinned when it was not the usual end of its skew window
    /// (e.g. `superseded`: a newer deployment took its target group).
    pub reason: Option<String>,
    /// `retention: service`: the version's retention copy, recorded before any of it is
    /// created (so a crash leaves nothing untracked) and kept until it is torn down.
    pub retention: Option<RetainedCopy>,
    /// Optimistic-concurrency counter; 0 means "not stored yet".
    pub version: u64,
}

/// A retention copy of a previous version: an ECS service running its task definition behind
/// a target group of its own, both created and tagged by skewguard. Names are deterministic
/// ([`crate::retention`]) so a retried create finds the same resource; ARNs are known once
/// created. Times are UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedCopy {
    /// The retention service's name (`<service>-sg-<deployment ID>`), in `cluster_arn`.
    pub service_name: String,
    /// The retention service's ARN, once CreateService (or DescribeServices) answered it.
    pub service_arn: Option<String>,
    /// The retention target group's name (`sg-<16 hex>`).
    pub target_group_name: String,
    /// The retention target group's ARN, once CreateTargetGroup answered it.
    pub target_group_arn: Option<String>,
    /// How many tasks the retention service runs.
    pub tasks: u32,
    /// When skewguard decided to start the copy (`retentionStartTimeout` counts from here).
    pub started_at: OffsetDateTime,
    /// When its targets were first seen healthy and the pins moved to it.
    pub healthy_at: Option<OffsetDateTime>,
    /// When the version left production (the production shift's end): `maxAge` counts from here.
    pub left_production_at: OffsetDateTime,
    /// When it retires at the latest (`left_production_at` + `maxAge`).
    pub retain_until: Option<OffsetDateTime>,
    /// Consecutive idle checks that found no requests (two retire it).
    pub idle_checks: u32,
    /// The cluster that runs the retention service (the user's service's cluster).
    pub cluster_arn: String,
}

/// One line of an entry's append-only history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// When the change was made (UTC).
    pub at: OffsetDateTime,
    /// The lifecycle stage, or the tool that made the change.
    pub stage: String,
    /// The hook's ECS execution ID, or the invocation or run that made the change.
    pub execution_id: String,
    /// Who acted: the Lambda request ID of the hook or reconciler invocation, or the IAM ARN
    /// of the caller of a CLI command (`release`, `reconcile`). Empty in records written
    /// before it was recorded.
    pub actor: String,
    /// What changed, for people (`status live -> draining; ...`).
    pub change: String,
}

/// Where a revision runs and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVersion {
    /// The deployment ID read from the task definition.
    pub deployment_id: DeploymentId,
    /// The ECS service revision.
    pub service_revision_arn: String,
    /// The target group the revision serves from.
    pub target_group_arn: String,
    /// The revision's task definition.
    pub task_definition_arn: String,
}

/// The listener wiring of a service, learned from its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWiring {
    /// The listener of the service's production rule.
    pub listener_arn: String,
    /// The ECS-managed production rule.
    pub production_rule_arn: String,
}

impl LedgerEntry {
    /// A new, not yet stored entry (`version` 0) for a running version, created `now`.
    pub fn new(
        service_arn: &str,
        running: &RunningVersion,
        wiring: &ServiceWiring,
        status: Status,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            service_arn: service_arn.to_owned(),
            deployment_id: running.deployment_id.clone(),
            status,
            target_group_arn: running.target_group_arn.clone(),
            service_revision_arn: running.service_revision_arn.clone(),
            task_definition_arn: running.task_definition_arn.clone(),
            listener_arn: wiring.listener_arn.clone(),
            production_rule_arn: wiring.production_rule_arn.clone(),
            rule_arns: Vec::new(),
            created_at: now,
            updated_at: now,
            shifted_at: None,
            live_at: None,
            drain_until: None,
            superseded_by: None,
            retired_at: None,
            expires_at: None,
            last_error: None,
            reason: None,
            retention: None,
            version: 0,
        }
    }

    /// Whether this version must be reachable through a pin right now.
    pub fn wants_pin(&self) -> bool {
        match self.status {
            Status::Live | Status::Draining => true,
            // Once its retirement is decided (its `reason` recorded), a retained version loses
            // its pins first, before its retention copy goes.
            Status::Retained => self.reason.is_none(),
            Status::Testing => self.shifted_at.is_some(),
            Status::Retired | Status::RolledBack => false,
        }
    }

    /// Where this version's pins forward, each with its weight: its target group alone; while
    /// a `draining` version's retention copy starts, its target group at weight 1 and the copy's
    /// at weight 0 (ECS attaches a target group to a service only once a listener rule uses
    /// it, and weight 0 sends it nothing until its targets are healthy).
    pub fn pin_targets(&self) -> Vec<crate::listener::WeightedTarget> {
        let target = |arn: &str, weight| crate::listener::WeightedTarget {
            target_group_arn: arn.to_owned(),
            weight,
        };
        let mut targets = vec![target(&self.target_group_arn, 1)];
        // A `reason` on a draining entry says its copy was abandoned (it holds instead): the
        // pins leave the copy first, then the copy is torn down.
        if self.status == Status::Draining
            && self.reason.is_none()
            && let Some(copy) = self
                .retention
                .as_ref()
                .and_then(|c| c.target_group_arn.as_deref())
                .filter(|arn| *arn != self.target_group_arn)
        {
            targets.push(target(copy, 0));
        }
        targets
    }

    /// The listener wiring recorded for this version.
    pub fn wiring(&self) -> ServiceWiring {
        ServiceWiring {
            listener_arn: self.listener_arn.clone(),
            production_rule_arn: self.production_rule_arn.clone(),
        }
    }

    /// Records where this version now runs.
    pub fn place(&mut self, running: &RunningVersion, wiring: &ServiceWiring) {
        running
            .target_group_arn
            .clone_into(&mut self.target_group_arn);
        running
            .service_revision_arn
            .clone_into(&mut self.service_revision_arn);
        running
            .task_definition_arn
            .clone_into(&mut self.task_definition_arn);
        wiring.listener_arn.clone_into(&mut self.listener_arn);
        wiring
            .production_rule_arn
            .clone_into(&mut self.production_rule_arn);
    }

    /// Moves the entry to a final status, which starts its TTL clock.
    pub fn finish(&mut self, status: Status, now: OffsetDateTime) {
        debug_assert!(status.is_final());
        self.status = status;
        self.shifted_at = None;
        self.drain_until = None;
        if status == Status::Retired {
            self.retired_at = Some(now);
        }
        self.expires_at = Some((now + RETENTION).unix_timestamp());
    }

    /// Ends a version that is no longer served: final `status` when nothing of skewguard's runs
    /// for it, or, when it has a retention copy, `retained` with `reason` so that retirement
    /// removes its pins, tears the copy down and only then makes the entry final (a final
    /// entry leaves the entries in play, and a copy nobody reads about would run forever).
    /// Returns whether the entry became final now.
    pub fn end(&mut self, status: Status, reason: &str, now: OffsetDateTime) -> bool {
        if self.retention.is_none() {
            self.finish(status, now);
            self.reason = Some(reason.to_owned());
            return true;
        }
        self.status = Status::Retained;
        self.shifted_at = None;
        self.drain_until = None;
        // A reason already recorded (an abandoned start) is the first cause; keep it.
        self.reason.get_or_insert_with(|| reason.to_owned());
        false
    }

    /// Starts the entry over as a version under test (deployed anew, or again after it ended).
    pub fn restart_testing(&mut self) {
        self.status = Status::Testing;
        self.reason = None;
        self.shifted_at = None;
        self.live_at = None;
        self.drain_until = None;
        self.superseded_by = None;
        self.retired_at = None;
        self.expires_at = None;
    }

    /// Makes the entry the live production version.
    pub fn make_live(&mut self, now: OffsetDateTime) {
        if self.status != Status::Live {
            self.status = Status::Live;
            self.live_at = Some(now);
        }
        self.live_at.get_or_insert(now);
        self.drain_until = None;
        self.superseded_by = None;
        self.retired_at = None;
        self.expires_at = None;
        self.reason = None;
    }

    /// Same content, ignoring bookkeeping that changes on every write.
    pub fn same_state_as(&self, other: &LedgerEntry) -> bool {
        let strip = |e: &LedgerEntry| LedgerEntry {
            updated_at: OffsetDateTime::UNIX_EPOCH,
            version: 0,
            ..e.clone()
        };
        strip(self) == strip(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn entry(status: Status) -> LedgerEntry {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse("a1").unwrap(),
            service_revision_arn: "rev".into(),
            target_group_arn: "tg".into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "r".into(),
        };
        LedgerEntry::new(
            "svc",
            &running,
            &wiring,
            status,
            datetime!(2026-01-01 0:00 UTC),
        )
    }

    #[test]
    fn only_running_production_draining_and_shifted_versions_are_pinned() {
        assert!(entry(Status::Live).wants_pin());
        assert!(entry(Status::Draining).wants_pin());
        assert!(entry(Status::Retained).wants_pin());
        let mut retiring = entry(Status::Retained);
        retiring.reason = Some("revoked".into());
        assert!(!retiring.wants_pin(), "a retiring version's pins go first");
        assert!(
            !Status::Retained.is_final(),
            "a retained version is in play"
        );
        assert!(!entry(Status::Testing).wants_pin());
        let mut shifted = entry(Status::Testing);
        shifted.shifted_at = Some(datetime!(2026-01-01 0:01 UTC));
        assert!(shifted.wants_pin());
        assert!(!entry(Status::Retired).wants_pin());
        assert!(!entry(Status::RolledBack).wants_pin());
    }

    #[test]
    fn finishing_sets_ttl_thirty_days_out() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let mut e = entry(Status::Draining);
        e.finish(Status::Retired, now);
        assert_eq!(e.retired_at, Some(now));
        assert_eq!(e.expires_at, Some(now.unix_timestamp() + 30 * 24 * 3600));
    }

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
