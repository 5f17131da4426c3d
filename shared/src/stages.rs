//! What each lifecycle stage does to the ledger: pure functions over plain data.
//!
//! A stage edits a [`Draft`] of the service's ledger entries; which pins must exist follows from
//! the entries (see [`LedgerEntry::wants_pin`]), and the history line of each change is derived
//! from the difference, so it always says exactly what changed.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DeploymentId;
use crate::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring, Status};

/// The service's ledger entries, before and after a stage.
#[derive(Debug, Clone)]
pub struct Draft {
    service_arn: String,
    before: BTreeMap<DeploymentId, LedgerEntry>,
    after: BTreeMap<DeploymentId, LedgerEntry>,
}

/// One entry to write: the state it had when read (its version) and the state to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub expected_version: u64,
    pub entry: LedgerEntry,
    pub history: HistoryRecord,
}

/// Who is making the change, for the history.
#[derive(Debug, Clone)]
pub struct Actor {
    pub stage: String,
    pub execution_id: String,
    /// Who acted, recorded as the history's `actor`: the Lambda request ID of a hook or
    /// reconciler invocation, the caller's IAM ARN for a CLI command.
    pub identity: String,
    pub now: OffsetDateTime,
}

impl Draft {
    pub fn new(service_arn: &str, entries: Vec<LedgerEntry>) -> Self {
        let before: BTreeMap<_, _> = entries
            .into_iter()
            .map(|e| (e.deployment_id.clone(), e))
            .collect();
        Self {
            service_arn: service_arn.to_owned(),
            after: before.clone(),
            before,
        }
    }

    pub fn service_arn(&self) -> &str {
        &self.service_arn
    }

    pub fn entries(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.after.values()
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut LedgerEntry> {
        self.after.values_mut()
    }

    pub fn get(&self, id: &DeploymentId) -> Option<&LedgerEntry> {
        self.after.get(id)
    }

    pub fn get_mut(&mut self, id: &DeploymentId) -> Option<&mut LedgerEntry> {
        self.after.get_mut(id)
    }

    /// The entry recorded for a revision: one that knows where it runs before an
    /// `unidentified-…` placeholder (an error continued past), a non-final one before a final.
    pub fn by_revision(&self, revision_arn: &str) -> Option<&LedgerEntry> {
        self.after
            .values()
            .filter(|e| e.service_revision_arn == revision_arn)
            .min_by_key(|e| (e.target_group_arn.is_empty(), e.status.is_final()))
    }

    /// The listener wiring recorded for this service, if any entry has it.
    pub fn wiring(&self) -> Option<ServiceWiring> {
        self.after
            .values()
            .filter(|e| !e.listener_arn.is_empty())
            .max_by_key(|e| (!e.status.is_final(), e.updated_at))
            .map(LedgerEntry::wiring)
    }

    /// The entry for `running`, created with `status` if the ledger has none yet.
    fn entry_for(
        &mut self,
        running: &RunningVersion,
        wiring: &ServiceWiring,
        status: Status,
        now: OffsetDateTime,
    ) -> &mut LedgerEntry {
        self.after
            .entry(running.deployment_id.clone())
            .or_insert_with(|| LedgerEntry::new(&self.service_arn, running, wiring, status, now))
    }

    /// Entries whose state differs from what was read, with a history line saying what changed.
    pub fn changes(&self, actor: &Actor) -> Vec<Change> {
        self.after
            .values()
            .filter_map(|after| {
                let before = self.before.get(&after.deployment_id);
                let change = describe_change(before, after);
                if change.is_empty() {
                    return None;
                }
                let mut entry = after.clone();
                entry.updated_at = actor.now;
                Some(Change {
                    expected_version: before.map_or(0, |b| b.version),
                    entry,
                    history: HistoryRecord {
                        at: actor.now,
                        stage: actor.stage.clone(),
                        execution_id: actor.execution_id.clone(),
                        actor: actor.identity.clone(),
                        change,
                    },
                })
            })
            .collect()
    }

    /// Whether the version production runs changed (the retired answer names it).
    pub fn production_changed(&self) -> bool {
        let live = |m: &BTreeMap<DeploymentId, LedgerEntry>| -> Vec<DeploymentId> {
            m.values()
                .filter(|e| e.status == Status::Live)
                .map(|e| e.deployment_id.clone())
                .collect()
        };
        live(&self.before) != live(&self.after)
    }

    /// Whether the pins recorded in the ledger may no longer match what the entries want.
    pub fn pins_need_attention(&self) -> bool {
        self.after.values().any(|after| {
            let before = self.before.get(&after.deployment_id);
            let moved = before.is_none_or(|b| {
                b.pin_targets() != after.pin_targets()
                    || b.production_rule_arn != after.production_rule_arn
                    || b.wants_pin() != after.wants_pin()
            });
            let recorded = !after.rule_arns.is_empty();
            (after.wants_pin() && (moved || !recorded)) || (!after.wants_pin() && recorded)
        })
    }
}

fn stamp(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn describe_change(before: Option<&LedgerEntry>, after: &LedgerEntry) -> String {
    let Some(before) = before else {
        return format!(
            "recorded as {} on target group {} (revision {})",
            after.status,
            short_arn(&after.target_group_arn),
            short_arn(&after.service_revision_arn)
        );
    };
    if before.same_state_as(after) {
        return String::new();
    }
    let mut parts = Vec::new();
    if before.status != after.status {
        parts.push(format!("status {} -> {}", before.status, after.status));
    }
    if before.target_group_arn != after.target_group_arn {
        parts.push(format!(
            "target group {} -> {}",
            short_arn(&before.target_group_arn),
            short_arn(&after.target_group_arn)
        ));
    }
    if before.service_revision_arn != after.service_revision_arn {
        parts.push(format!(
            "revision -> {}",
            short_arn(&after.service_revision_arn)
        ));
    }
    if before.shifted_at.is_none() && after.shifted_at.is_some() {
        parts.push("production shift began".to_owned());
    }
    if before.drain_until != after.drain_until {
        parts.push(format!("drainUntil {}", stamp(after.drain_until)));
    }
    if before.rule_arns != after.rule_arns {
        parts.push(format!(
            "pins {} -> {}",
            before.rule_arns.len(),
            after.rule_arns.len()
        ));
    }
    if before.reason != after.reason
        && let Some(reason) = &after.reason
    {
        parts.push(format!("reason: {reason}"));
    }
    if before.last_error != after.last_error {
        parts.push(match &after.last_error {
            Some(e) => format!("error: {e}"),
            None => "error cleared".to_owned(),
        });
    }
    if parts.is_empty() {
        parts.push("details updated".to_owned());
    }
    parts.join("; ")
}

/// The last path segment of an ARN, for short history lines.
pub fn short_arn(arn: &str) -> &str {
    let tail = arn.rsplit(':').next().unwrap_or(arn);
    match tail.split('/').collect::<Vec<_>>().as_slice() {
        [kind, name, ..] if *kind == "targetgroup" => name,
        [.., last] => last,
        _ => tail,
    }
}

/// Versions whose target group is now running something else, or that are not running at all,
/// lose their pins: a pin must only ever lead to the version it names. A `retained` version
/// runs in its own retention service, never in a revision of this one, and retires only
/// through [`crate::retention`]'s teardown.
fn displace(
    draft: &mut Draft,
    running: &[&RunningVersion],
    all_running_known: bool,
    newer_than: Option<OffsetDateTime>,
    now: OffsetDateTime,
) {
    for entry in draft
        .entries_mut()
        .filter(|e| !e.status.is_final() && e.status != Status::Retained)
    {
        if newer_than.is_some_and(|green_recorded| entry.created_at > green_recorded) {
            continue;
        }
        let runs = |r: &&RunningVersion| r.deployment_id == entry.deployment_id;
        let tg_taken = running
            .iter()
            .any(|r| r.target_group_arn == entry.target_group_arn && !runs(r));
        let not_running = all_running_known && !running.iter().any(runs);
        if tg_taken || not_running {
            let status = if entry.status == Status::Testing {
                Status::RolledBack
            } else {
                Status::Retired
            };
            entry.finish(status, now);
        }
    }
}

/// When green's own entry (for this very revision) was recorded: entries recorded after it
/// belong to a newer deployment, which a late call of this one must never end (ECS may still
/// deliver a call of a deployment it stopped for a newer one).
fn recorded_at(draft: &Draft, green: &RunningVersion) -> Option<OffsetDateTime> {
    draft
        .get(&green.deployment_id)
        .filter(|e| e.service_revision_arn == green.service_revision_arn)
        .map(|e| e.created_at)
}

/// POST_TEST_TRAFFIC_SHIFT: record green as `testing`, make sure production (blue) is `live` and
/// pinned. `blue` is `None` only for a service with nothing running before this deployment.
pub fn post_test_traffic(
    draft: &mut Draft,
    green: &RunningVersion,
    blue: Option<&RunningVersion>,
    wiring: &ServiceWiring,
    now: OffsetDateTime,
) {
    let running: Vec<&RunningVersion> = [Some(green), blue].into_iter().flatten().collect();
    let newer_than = recorded_at(draft, green);
    displace(draft, &running, true, newer_than, now);
    if let Some(blue) = blue {
        let entry = draft.entry_for(blue, wiring, Status::Live, now);
        entry.place(blue, wiring);
        entry.make_live(now);
        entry.shifted_at = None;
    }
    if blue.is_some_and(|b| b.deployment_id == green.deployment_id) {
        // A forced redeploy: one version on both target groups; its pin moves at the shift.
        return;
    }
    let entry = draft.entry_for(green, wiring, Status::Testing, now);
    let repeat =
        entry.service_revision_arn == green.service_revision_arn && !entry.status.is_final();
    if !repeat {
        entry.place(green, wiring);
        entry.restart_testing();
    }
}

/// PRODUCTION_TRAFFIC_SHIFT (and each LINEAR/CANARY step) going forward: green is pinned from now
/// on; blue, when known, stays `live` and pinned.
pub fn production_shift(
    draft: &mut Draft,
    green: &RunningVersion,
    blue: Option<&RunningVersion>,
    wiring: &ServiceWiring,
    now: OffsetDateTime,
) {
    let running: Vec<&RunningVersion> = [Some(green), blue].into_iter().flatten().collect();
    let newer_than = recorded_at(draft, green);
    displace(draft, &running, blue.is_some(), newer_than, now);
    if let Some(blue) = blue.filter(|b| b.deployment_id != green.deployment_id) {
        let entry = draft.entry_for(blue, wiring, Status::Live, now);
        // A draining blue is being held; an ended one (retired as superseded, say) only ever
        // shows up here in a late call of a deployment ECS stopped, and stays ended.
        if entry.status != Status::Draining && !entry.status.is_final() {
            entry.place(blue, wiring);
            entry.make_live(now);
        }
    }
    let entry = draft.entry_for(green, wiring, Status::Testing, now);
    entry.place(green, wiring);
    match entry.status {
        Status::Live | Status::Draining => entry.make_live(now),
        Status::Testing => {
            entry.shifted_at.get_or_insert(now);
        }
        // A retained version deployed again runs on green's target group from now on; its
        // retention copy stays recorded until it is torn down.
        Status::Retained | Status::Retired | Status::RolledBack => {
            entry.restart_testing();
            entry.shifted_at = Some(now);
        }
    }
}

/// A rollback (ECS re-invokes the traffic-shift hooks with green at weight 0): green loses its
/// pin and is `rolled_back`; blue is `live` and pinned.
pub fn rollback(
    draft: &mut Draft,
    green_revision_arn: &str,
    green_id: Option<&DeploymentId>,
    blue: Option<(&RunningVersion, &ServiceWiring)>,
    now: OffsetDateTime,
) {
    let wiring = blue.map(|(_, w)| w);
    let blue = blue.map(|(b, _)| b);
    if let Some(blue) = blue {
        displace(draft, &[blue], false, None, now);
    }
    let same_version = blue.is_some_and(|b| Some(&b.deployment_id) == green_id);
    if !same_version {
        for entry in draft.entries_mut() {
            let is_green = Some(&entry.deployment_id) == green_id
                || (entry.service_revision_arn == green_revision_arn && green_id.is_none());
            if is_green && !entry.status.is_final() {
                entry.finish(Status::RolledBack, now);
            }
        }
    }
    if let (Some(blue), Some(wiring)) = (blue, wiring) {
        let entry = draft.entry_for(blue, wiring, Status::Live, now);
        entry.place(blue, wiring);
        entry.make_live(now);
        entry.shifted_at = None;
    }
}

/// The ledger entry of a deployment of this revision that already ended (rolled back, retired,
/// or superseded and draining): a forward hook call for that revision arrives late (ECS may
/// start a rollback while a forward invocation still runs or retries) and must change nothing.
pub fn ended_deployment<'a>(draft: &'a Draft, revision_arn: &str) -> Option<&'a LedgerEntry> {
    draft
        .by_revision(revision_arn)
        .filter(|e| e.status.is_final() || e.status == Status::Draining)
}

/// The archived entry of green's deployment ID, when it was archived for this very revision: a
/// forward call of a deployment that ended (rolled back or retired) after its entry left the
/// entries in play. `archived` is looked up only when green's ID has no entry in play.
pub fn ended_in_archive<'a>(
    archived: Option<&'a LedgerEntry>,
    revision_arn: &str,
) -> Option<&'a LedgerEntry> {
    archived.filter(|e| e.service_revision_arn == revision_arn && e.status.is_final())
}

/// Why a version lost its pins when a newer deployment took its target group.
pub const SUPERSEDED: &str = "superseded";

/// RECONCILE_SERVICE and PRE_SCALE_UP: ECS is about to scale green up into `incoming` (the
/// target group that does not serve production), scaling down whatever runs there first. A
/// deployment started while another is in flight is how a recorded version can still be there
/// (the previous version held by a superseded deployment's post-shift hook, or a superseded
/// green): every non-final entry on those target groups is finished, so that its pins go
/// before green's tasks can register behind them. `incoming` holds only groups at weight 0 on
/// the production rule, so even an entry still recorded `live` there no longer serves
/// production (a post-shift call that has not landed yet, an error continued past) and goes
/// too. Returns the deployment IDs finished.
pub fn prepare_scale_up(
    draft: &mut Draft,
    incoming: &[String],
    now: OffsetDateTime,
) -> Vec<DeploymentId> {
    let mut finished = Vec::new();
    for entry in draft.entries_mut() {
        if entry.status.is_final() || !incoming.contains(&entry.target_group_arn) {
            continue;
        }
        let status = if entry.status == Status::Testing {
            Status::RolledBack
        } else {
            Status::Retired
        };
        // A version whose retention copy was starting loses its pins now too; retirement
        // then tears the copy down and makes the entry final.
        entry.end(status, SUPERSEDED, now);
        finished.push(entry.deployment_id.clone());
    }
    finished
}

/// What POST_PRODUCTION_TRAFFIC_SHIFT answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Keep the deployment here; call again after this long.
    For(Duration),
    /// The previous version's pins are gone; ECS may scale it down.
    Done,
    /// A step of a retention copy's start was made: run the stage again now for the next one
    /// (never answered to ECS as such).
    Next,
}

/// POST_PRODUCTION_TRAFFIC_SHIFT: green becomes `live`; the previous version drains for the skew
/// window and is retired once `drainUntil` has passed (which `release` may have moved earlier).
pub fn post_shift(
    draft: &mut Draft,
    green: &RunningVersion,
    wiring: &ServiceWiring,
    skew_window: Duration,
    poll_interval: Duration,
    now: OffsetDateTime,
) -> Hold {
    let newer_than = recorded_at(draft, green);
    displace(draft, &[green], false, newer_than, now);
    let green_entry = draft.entry_for(green, wiring, Status::Live, now);
    green_entry.place(green, wiring);
    let first_call = green_entry.status != Status::Live;
    green_entry.make_live(now);
    let green_id = green.deployment_id.clone();

    let drain_until = now + skew_window;
    for entry in draft.entries_mut() {
        if entry.deployment_id == green_id {
            continue;
        }
        // The version production just left: it drains; any other live entry was never
        // superseded properly and drains along with it.
        let older = newer_than.is_none_or(|green_recorded| entry.created_at <= green_recorded);
        if entry.status == Status::Live || (first_call && entry.status == Status::Testing && older)
        {
            if entry.status == Status::Testing {
                entry.finish(Status::RolledBack, now);
                continue;
            }
            entry.status = Status::Draining;
            entry.drain_until = Some(drain_until);
            entry.superseded_by = Some(green_id.clone());
        }
        if entry.status == Status::Draining && entry.drain_until.is_none_or(|until| until <= now) {
            match &entry.retention {
                None => entry.finish(Status::Retired, now),
                // Its copy is starting: `retentionStartTimeout` bounds that, not the window.
                Some(_) if entry.reason.is_none() => {}
                // Its copy never served (abandoned, not torn down yet): retirement ends it.
                Some(_) => {
                    entry.end(
                        Status::Retired,
                        crate::retirement::Reason::StartTimeout.as_str(),
                        now,
                    );
                }
            }
        }
    }
    hold_for_draining(draft, poll_interval, now)
}

/// How long post-shift holds for the draining entries: until the earliest `drainUntil`,
/// polling at most every `poll_interval`; done when none drains.
pub fn hold_for_draining(draft: &Draft, poll_interval: Duration, now: OffsetDateTime) -> Hold {
    let earliest = draft
        .entries()
        .filter(|e| e.status == Status::Draining)
        .filter_map(|e| e.drain_until)
        .min();
    match earliest {
        None => Hold::Done,
        Some(until) => {
            let left = (until - now).unsigned_abs();
            Hold::For(left.min(poll_interval).max(Duration::from_secs(1)))
        }
    }
}

/// Ends the skew window now (`skewguard release`): every draining entry's `drainUntil` moves to
/// `now`, and the holding hook retires it on its next call; a version whose retention copy is
/// starting is left to its start. Returns whether anything changed.
pub fn release(draft: &mut Draft, now: OffsetDateTime) -> bool {
    let mut changed = false;
    // A version whose retention copy is starting is not held by a window: the deployment goes
    // on once the copy serves (or its start times out), and releasing it would only throw the
    // copy away.
    let starting = |e: &LedgerEntry| e.retention.is_some() && e.reason.is_none();
    for entry in draft
        .entries_mut()
        .filter(|e| e.status == Status::Draining && !starting(e))
    {
        if entry.drain_until.is_none_or(|until| until > now) {
            entry.drain_until = Some(now);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/c/web";
    const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).unwrap()
    }

    fn version(d: &str, tg: &str, rev: &str) -> RunningVersion {
        RunningVersion {
            deployment_id: id(d),
            service_revision_arn: format!(
                "arn:aws:ecs:us-east-1:123456789012:service-revision/c/web/{rev}"
            ),
            target_group_arn: format!(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{tg}/0f"
            ),
            task_definition_arn: format!(
                "arn:aws:ecs:us-east-1:123456789012:task-definition/web:{rev}"
            ),
        }
    }

    fn wiring() -> ServiceWiring {
        ServiceWiring {
            listener_arn: "arn:listener".into(),
            production_rule_arn: "arn:rule".into(),
        }
    }

    fn actor(now: OffsetDateTime) -> Actor {
        Actor {
            stage: "TEST".into(),
            execution_id: "x".into(),
            identity: "req-x".into(),
            now,
        }
    }

    /// Applies the draft's changes as the hook would: pins follow the entries, then the store writes.
    fn commit(draft: &Draft, now: OffsetDateTime) -> Vec<LedgerEntry> {
        let mut draft = draft.clone();
        for e in draft.entries_mut() {
            if e.wants_pin() && e.rule_arns.is_empty() {
                e.rule_arns = vec![format!("pin-{}", e.deployment_id)];
            } else if !e.wants_pin() {
                e.rule_arns.clear();
            }
        }
        let changed: BTreeMap<_, _> = draft
            .changes(&actor(now))
            .into_iter()
            .map(|c| {
                let mut e = c.entry;
                e.version = c.expected_version + 1;
                (e.deployment_id.clone(), e)
            })
            .collect();
        draft
            .entries()
            .map(|e| {
                changed
                    .get(&e.deployment_id)
                    .cloned()
                    .unwrap_or_else(|| e.clone())
            })
            .collect()
    }

    fn status_of(entries: &[LedgerEntry], d: &str) -> Status {
        entries
            .iter()
            .find(|e| e.deployment_id == id(d))
            .unwrap()
            .status
    }

    #[test]
    fn before_a_scale_up_everything_recorded_in_the_weight_0_group_is_unpinned_even_if_live() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        // B's post-shift call has not landed: A is still recorded live, though production now
        // forwards to B's group and a newer deployment is about to take A's.
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Live);
        let mut draft = Draft::new(SVC, entries);
        let finished = prepare_scale_up(&mut draft, std::slice::from_ref(&a.target_group_arn), T0);
        assert_eq!(finished, vec![id("aaa")]);
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Retired);
        assert_eq!(
            status_of(&entries, "bbb"),
            Status::Testing,
            "B is not in A's group"
        );
        let a_entry = entries
            .iter()
            .find(|e| e.deployment_id == id("aaa"))
            .unwrap();
        assert_eq!(a_entry.reason.as_deref(), Some(SUPERSEDED));
        assert!(!a_entry.wants_pin());
    }

    #[test]
    fn a_late_call_of_an_older_deployment_never_ends_what_a_newer_one_recorded() {
        let (a, b, c) = (
            version("aaa", "tg1", "1"),
            version("bbb", "tg2", "2"),
            version("ccc", "tg1", "3"),
        );
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        // C superseded B and is recorded later, on A's old group.
        let later = T0 + Duration::from_secs(60);
        let mut draft = Draft::new(SVC, entries);
        prepare_scale_up(&mut draft, std::slice::from_ref(&a.target_group_arn), later);
        post_test_traffic(&mut draft, &c, Some(&b), &wiring(), later);
        let entries = commit(&draft, later);
        assert_eq!(status_of(&entries, "ccc"), Status::Testing);
        // Then B's production-shift and post-shift calls arrive late.
        let mut draft = Draft::new(SVC, entries);
        production_shift(&mut draft, &b, Some(&a), &wiring(), later);
        let hold = post_shift(
            &mut draft,
            &b,
            &wiring(),
            Duration::from_secs(3600),
            Duration::from_secs(60),
            later,
        );
        let entries = commit(&draft, later);
        assert_eq!(
            status_of(&entries, "ccc"),
            Status::Testing,
            "C is untouched"
        );
        assert_eq!(
            hold,
            Hold::Done,
            "nothing of B's to hold: A already retired"
        );
    }

    #[test]
    fn first_deployment_records_green_testing_and_discovered_blue_live() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Live);
        assert_eq!(status_of(&entries, "bbb"), Status::Testing);
        let pinned: Vec<_> = entries
            .iter()
            .filter(|e| e.wants_pin())
            .map(|e| e.deployment_id.as_str())
            .collect();
        assert_eq!(pinned, vec!["aaa"]);
        assert!(draft.pins_need_attention(), "blue needs its first pin");
    }

    #[test]
    fn a_whole_deployment_then_the_hold_then_retirement() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);

        let mut draft = Draft::new(SVC, entries);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut pinned: Vec<_> = entries
            .iter()
            .filter(|e| e.wants_pin())
            .map(|e| e.deployment_id.to_string())
            .collect();
        pinned.sort();
        assert_eq!(pinned, vec!["aaa", "bbb"]);

        let window = Duration::from_secs(3600);
        let poll = Duration::from_secs(60);
        let mut draft = Draft::new(SVC, entries);
        assert_eq!(
            post_shift(&mut draft, &b, &wiring(), window, poll, T0),
            Hold::For(poll)
        );
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Draining);
        assert_eq!(status_of(&entries, "bbb"), Status::Live);

        // A poll within the window changes nothing.
        let later = T0 + Duration::from_secs(1800);
        let mut draft = Draft::new(SVC, entries.clone());
        assert_eq!(
            post_shift(&mut draft, &b, &wiring(), window, poll, later),
            Hold::For(poll)
        );
        assert!(draft.changes(&actor(later)).is_empty());
        assert!(!draft.pins_need_attention());

        // Near the end the delay shrinks to what is left.
        let near = T0 + Duration::from_secs(3590);
        let mut draft = Draft::new(SVC, entries.clone());
        assert_eq!(
            post_shift(&mut draft, &b, &wiring(), window, poll, near),
            Hold::For(Duration::from_secs(10))
        );

        let after = T0 + window;
        let mut draft = Draft::new(SVC, entries);
        assert_eq!(
            post_shift(&mut draft, &b, &wiring(), window, poll, after),
            Hold::Done
        );
        let entries = commit(&draft, after);
        assert_eq!(status_of(&entries, "aaa"), Status::Retired);
        assert!(draft.pins_need_attention(), "retiring must remove the pin");
        let retired = entries
            .iter()
            .find(|e| e.deployment_id == id("aaa"))
            .unwrap();
        assert!(retired.rule_arns.is_empty() && retired.retired_at == Some(after));
    }

    #[test]
    fn repeating_a_stage_changes_nothing() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut again = Draft::new(SVC, entries.clone());
        post_test_traffic(
            &mut again,
            &b,
            Some(&a),
            &wiring(),
            T0 + Duration::from_secs(5),
        );
        assert!(again.changes(&actor(T0)).is_empty());

        let mut draft = Draft::new(SVC, entries);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut again = Draft::new(SVC, entries);
        production_shift(
            &mut again,
            &b,
            Some(&a),
            &wiring(),
            T0 + Duration::from_secs(5),
        );
        assert!(again.changes(&actor(T0)).is_empty());
    }

    #[test]
    fn rollback_unpins_green_and_keeps_blue_live() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries);
        rollback(
            &mut draft,
            &b.service_revision_arn,
            Some(&b.deployment_id),
            Some((&a, &wiring())),
            T0,
        );
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "bbb"), Status::RolledBack);
        assert_eq!(status_of(&entries, "aaa"), Status::Live);
        let green = entries
            .iter()
            .find(|e| e.deployment_id == id("bbb"))
            .unwrap();
        assert!(!green.wants_pin());
        assert!(green.expires_at.is_some());
    }

    #[test]
    fn forced_redeploy_moves_the_one_pin_and_never_drains() {
        let (a1, a2) = (version("aaa", "tg1", "1"), version("aaa", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &a2, Some(&a1), &wiring(), T0);
        let entries = commit(&draft, T0);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].target_group_arn, a1.target_group_arn);
        let mut draft = Draft::new(SVC, entries);
        production_shift(&mut draft, &a2, Some(&a1), &wiring(), T0);
        let entries = commit(&draft, T0);
        assert_eq!(entries[0].status, Status::Live);
        assert_eq!(entries[0].target_group_arn, a2.target_group_arn);
        let mut draft = Draft::new(SVC, entries);
        let hold = post_shift(
            &mut draft,
            &a2,
            &wiring(),
            Duration::from_secs(3600),
            Duration::from_secs(60),
            T0,
        );
        assert_eq!(hold, Hold::Done);
        let entries = commit(&draft, T0);
        assert_eq!(entries[0].status, Status::Live);
    }

    #[test]
    fn a_version_whose_target_group_now_runs_something_else_is_retired() {
        // A was live on tg1 and never retired (no post-shift hook); B is live on tg2; C arrives on tg1.
        let (a, b, c) = (
            version("aaa", "tg1", "1"),
            version("bbb", "tg2", "2"),
            version("ccc", "tg1", "3"),
        );
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &a, None, &wiring(), T0);
        production_shift(&mut draft, &a, None, &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries);
        post_test_traffic(&mut draft, &c, Some(&b), &wiring(), T0);
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Retired);
        assert_eq!(status_of(&entries, "bbb"), Status::Live);
        assert_eq!(status_of(&entries, "ccc"), Status::Testing);
    }

    #[test]
    fn a_retained_version_is_never_displaced_for_not_running_in_this_service() {
        // A is retained in its own retention service; B is live; C's deployment begins.
        let (b, c) = (version("bbb", "tg2", "2"), version("ccc", "tg1", "3"));
        let mut retained = LedgerEntry::new(
            SVC,
            &version("aaa", "sg-retention", "1"),
            &wiring(),
            Status::Retained,
            T0,
        );
        retained.version = 2;
        let mut draft = Draft::new(SVC, vec![retained]);
        post_test_traffic(&mut draft, &b, None, &wiring(), T0);
        production_shift(&mut draft, &b, None, &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries);
        post_test_traffic(&mut draft, &c, Some(&b), &wiring(), T0);
        production_shift(&mut draft, &c, Some(&b), &wiring(), T0);
        let entries = commit(&draft, T0);
        assert_eq!(status_of(&entries, "aaa"), Status::Retained);
        assert_eq!(status_of(&entries, "ccc"), Status::Testing);
    }

    #[test]
    fn history_lines_say_what_changed() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        post_shift(
            &mut draft,
            &b,
            &wiring(),
            Duration::from_secs(60),
            Duration::from_secs(60),
            T0,
        );
        let changes = draft.changes(&actor(T0));
        let line = |d: &str| {
            changes
                .iter()
                .find(|c| c.entry.deployment_id == id(d))
                .unwrap()
                .history
                .change
                .clone()
        };
        assert!(
            line("aaa").contains("status live -> draining"),
            "{}",
            line("aaa")
        );
        assert!(
            line("bbb").contains("status testing -> live"),
            "{}",
            line("bbb")
        );
    }

    #[test]
    fn neither_release_nor_the_window_ends_a_retention_copy_that_is_starting() {
        // In `service` mode the copy's own timeout bounds its start; ending the window (by
        // release or by time) would throw away a copy about to serve.
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let window = Duration::from_secs(60);
        let poll = Duration::from_secs(1);
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        post_shift(&mut draft, &b, &wiring(), window, poll, T0);
        draft.get_mut(&id("aaa")).unwrap().retention = Some(crate::retention::new_copy(
            SVC,
            "cluster",
            &id("aaa"),
            1,
            1,
            T0,
        ));
        let entries = commit(&draft, T0);
        let mut draft = Draft::new(SVC, entries.clone());
        assert!(!release(&mut draft, T0 + Duration::from_secs(5)));
        let late = T0 + Duration::from_secs(120);
        let mut draft = Draft::new(SVC, entries);
        assert_ne!(
            post_shift(&mut draft, &b, &wiring(), window, poll, late),
            Hold::Done
        );
        assert_eq!(status_of(&commit(&draft, late), "aaa"), Status::Draining);
    }

    #[test]
    fn release_moves_drain_until_to_now_and_the_next_poll_retires() {
        let (a, b) = (version("aaa", "tg1", "1"), version("bbb", "tg2", "2"));
        let window = Duration::from_secs(3600);
        let poll = Duration::from_secs(60);
        let mut draft = Draft::new(SVC, vec![]);
        post_test_traffic(&mut draft, &b, Some(&a), &wiring(), T0);
        production_shift(&mut draft, &b, Some(&a), &wiring(), T0);
        post_shift(&mut draft, &b, &wiring(), window, poll, T0);
        let entries = commit(&draft, T0);
        let later = T0 + Duration::from_secs(5);
        let mut draft = Draft::new(SVC, entries);
        assert!(release(&mut draft, later));
        assert!(
            draft.changes(&actor(later))[0]
                .history
                .change
                .contains("drainUntil")
        );
        let entries = commit(&draft, later);
        let mut again = Draft::new(SVC, entries.clone());
        assert!(
            !release(&mut again, later),
            "a second release changes nothing"
        );
        let mut draft = Draft::new(SVC, entries);
        assert_eq!(
            post_shift(&mut draft, &b, &wiring(), window, poll, later),
            Hold::Done
        );
        assert_eq!(status_of(&commit(&draft, later), "aaa"), Status::Retired);
    }

    #[test]
    fn short_arns() {
        assert_eq!(
            short_arn(
                "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web-blue/50dc6c495c0c9188"
            ),
            "web-blue"
        );
        assert_eq!(
            short_arn("arn:aws:ecs:us-east-1:1:service-revision/c/web/123"),
            "123"
        );
    }
}
