//! Property-based tests: the decision logic under random sequences of stage events,
//! and the parsing of hook events, `hookDetails` and deployment IDs under hostile input.
//!
//! - [`stage_sequences_never_break_the_invariants`]: random sequences of stage applications
//!   (forward, rollback, repeats, out-of-order stages, unknown revisions, case variants of IDs,
//!   releases, clean-ups, clock jumps, narrow priority ranges) run through the pure [`Draft`]
//!   and the product's listener step ([`hook::bring_pins_in_line`]: plan, place, apply, record)
//!   against an in-memory listener; after every step the invariants that need no AWS are
//!   checked.
//! - [`hook_events_from_raw_bytes_always_get_a_defined_answer`]: a fuzz target over raw bytes
//!   and mutated events: parsing never panics and [`hook::handle`] always answers.
//! - [`deployment_ids_never_match_more_than_themselves`]: hostile deployment IDs either are
//!   rejected or make pins that match exactly their own ID (case-insensitively).
//!
//! Case counts follow `PROPTEST_CASES` (default 256 here; `reliability/run` raises it) and
//! `SKEWGUARD_FUZZ_EXECUTIONS`. With `SKEWGUARD_RELIABILITY_OUT` set to a directory, each test
//! writes its figures there as JSON for `docs/reliability.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::DeploymentId;
use crate::event::{HookAnswer, HookEvent, HookStatus};
use crate::hook::{self, Clients, HookConfig, HookFunction};
use crate::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring};
use crate::listener::{
    Condition, ListenerRule, Priority, Request, RuleAction, WeightedTarget, route,
};
use crate::pins::{self, PinTags};
use crate::settings::{AfterWindow, EnvDefaults, Settings};
use crate::stages::{self, Actor, Draft, Hold};

const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
const TGS: [&str; 2] = [
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg1/01",
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg2/02",
];
const OTHER_TG: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/admin/03";
const PROD: &str = "rule/prod";
/// Deployment IDs as ECS would carry them: repeats and a case variant of `aaa`.
const IDS: [&str; 4] = ["aaa", "bbb", "ccc", "AAA"];
const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

/// Appends one JSON line of figures to `$SKEWGUARD_RELIABILITY_OUT/<suite>.json`.
fn report(suite: &str, figures: Value) {
    let Ok(dir) = std::env::var("SKEWGUARD_RELIABILITY_OUT") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let line = json!({"suite": suite, "figures": figures}).to_string() + "\n";
    let path = std::path::Path::new(&dir).join(format!("{suite}.json"));
    let _ = std::fs::write(path, line);
}

// ---------------------------------------------------------------------------------------------
// The model: an in-memory listener and ledger, changed the way the hooks change them.

/// A version: ID, revision and target group (indices into the pools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V {
    id: usize,
    rev: usize,
    tg: usize,
}

impl V {
    fn running(self) -> RunningVersion {
        RunningVersion {
            deployment_id: self.deployment_id(),
            service_revision_arn: revision(self.rev),
            target_group_arn: TGS[self.tg].to_owned(),
            task_definition_arn: format!("task-definition/web:{}", self.rev),
        }
    }

    fn deployment_id(self) -> DeploymentId {
        DeploymentId::parse(IDS[self.id]).expect("pool IDs are valid")
    }
}

fn revision(rev: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/{rev}")
}

/// One lifecycle-hook event as ECS delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// POST_TEST_TRAFFIC_SHIFT.
    PostTestTraffic { green: V, blue: V },
    /// PRODUCTION_TRAFFIC_SHIFT forward (each LINEAR/CANARY step).
    ProductionShift { green: V, blue: V },
    /// TEST_TRAFFIC_SHIFT or PRODUCTION_TRAFFIC_SHIFT with green at weight 0; green's ID is
    /// unknown when its revision cannot be described.
    Rollback {
        green: V,
        green_known: bool,
        blue: V,
    },
    /// POST_PRODUCTION_TRAFFIC_SHIFT.
    PostShift { green: V },
}

/// What the test does next: drive ECS's deployment, or disturb it.
#[derive(Debug, Clone)]
enum Op {
    /// Start a deployment of this ID on a new revision (if none is in flight); `forced`
    /// redeploys the production ID (in any letter case).
    Deploy { id: usize, forced: bool },
    /// ECS moves on: the next stage's event.
    Next,
    /// The last event again (at-least-once delivery).
    Duplicate,
    /// An earlier event of this deployment delivered late (out of order).
    Late(prop::sample::Index),
    /// ECS rolls the deployment back (a failed alarm or `StopServiceDeployment`).
    Rollback { green_known: bool },
    /// `skewguard release`.
    Release,
    /// The clock moves on.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..IDS.len(), prop::bool::weighted(0.15)).prop_map(|(id, forced)| Op::Deploy { id, forced }),
        6 => Just(Op::Next),
        2 => Just(Op::Duplicate),
        2 => any::<prop::sample::Index>().prop_map(Op::Late),
        1 => any::<bool>().prop_map(|green_known| Op::Rollback { green_known }),
        1 => Just(Op::Release),
        2 => (0..200u64).prop_map(Op::Advance),
    ]
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some("95-99")),
            Just(Some("98-99")),
            Just(Some("1-50000"))
        ],
    )
        .prop_map(|(query, cookie, retired, range)| {
            let mut details = Map::new();
            if query {
                details.insert("queryParam".into(), json!("dpl"));
            }
            if cookie {
                details.insert("cookieName".into(), json!("__dpl"));
            }
            if retired {
                details.insert("afterWindow".into(), json!("retired"));
            }
            if let Some(range) = range {
                details.insert("priorityRange".into(), json!(range));
            }
            Settings::resolve(&details, &EnvDefaults::default()).expect("valid settings")
        })
}

fn forward(tg: &str) -> RuleAction {
    RuleAction::Forward(vec![WeightedTarget {
        target_group_arn: tg.to_owned(),
        weight: 1,
    }])
}

fn rule(arn: &str, priority: u32, conditions: Vec<Condition>, action: RuleAction) -> ListenerRule {
    ListenerRule {
        arn: arn.to_owned(),
        priority: Priority::Number(priority),
        conditions,
        action,
        uncopyable: vec![],
    }
}

/// The listener: another service's rule first, the ECS test rule, this service's production
/// rule, another service's production rule after it, and a default rule.
struct Listener {
    rules: Vec<ListenerRule>,
    tags: BTreeMap<String, PinTags>,
    next_arn: u64,
}

impl Listener {
    fn new() -> Self {
        let api = || Condition::PathPattern(vec!["/api/*".into()]);
        let prod_action = RuleAction::Forward(vec![
            WeightedTarget {
                target_group_arn: TGS[0].into(),
                weight: 1,
            },
            WeightedTarget {
                target_group_arn: TGS[1].into(),
                weight: 0,
            },
        ]);
        Self {
            rules: vec![
                rule(
                    "rule/admin",
                    10,
                    vec![Condition::PathPattern(vec!["/admin/*".into()])],
                    forward(OTHER_TG),
                ),
                rule(
                    "rule/test",
                    90,
                    vec![
                        api(),
                        Condition::HttpHeader {
                            name: "X-Test-Traffic".into(),
                            values: vec!["1".into()],
                        },
                    ],
                    prod_action.clone(),
                ),
                rule(PROD, 100, vec![api()], prod_action),
                rule(
                    "rule/shop",
                    200,
                    vec![Condition::PathPattern(vec!["/shop/*".into()])],
                    forward(OTHER_TG),
                ),
                ListenerRule {
                    arn: "rule/default".into(),
                    priority: Priority::Default,
                    conditions: vec![],
                    action: RuleAction::FixedResponse {
                        status_code: 404,
                        content_type: None,
                        body: None,
                    },
                    uncopyable: vec![],
                },
            ],
            tags: BTreeMap::new(),
            next_arn: 1,
        }
    }

    fn production_rule(&self) -> ListenerRule {
        self.rules
            .iter()
            .find(|r| r.arn == PROD)
            .cloned()
            .expect("the production rule is never touched")
    }

    /// CreateRule with its tags: refuses a taken priority, as the ALB does (`PriorityInUse`).
    fn create(&mut self, new: &crate::aws::elb::NewRule) -> Result<String, String> {
        if pins::taken_priorities(&self.rules).contains(&new.priority) {
            return Err(format!("PriorityInUse {}", new.priority));
        }
        let arn = format!("rule/pin-{}", self.next_arn);
        self.next_arn += 1;
        self.rules.push(rule(
            &arn,
            new.priority,
            new.conditions.clone(),
            new.action.clone(),
        ));
        self.tags.insert(arn.clone(), new.tags.clone());
        Ok(arn)
    }

    fn delete(&mut self, arn: &str) {
        self.rules.retain(|r| r.arn != arn);
        self.tags.remove(arn);
    }
}

fn wiring() -> ServiceWiring {
    ServiceWiring {
        listener_arn: "listener/app/web/1/2".into(),
        production_rule_arn: PROD.into(),
    }
}

/// The in-memory listener behind the product's executor ([`crate::apply::ListenerWrites`]).
struct InMemoryWrites<'a>(std::sync::Mutex<&'a mut Listener>);

impl crate::apply::ListenerWrites for InMemoryWrites<'_> {
    fn delete_rule(
        &self,
        rule_arn: &str,
    ) -> impl std::future::Future<Output = Result<(), crate::aws::AwsError>> + Send {
        self.0.lock().expect("listener lock").delete(rule_arn);
        std::future::ready(Ok(()))
    }

    fn create_rule(
        &self,
        rule: &crate::aws::elb::NewRule,
    ) -> impl std::future::Future<Output = Result<String, crate::aws::AwsError>> + Send {
        let created = self
            .0
            .lock()
            .expect("listener lock")
            .create(rule)
            .map_err(|_| crate::aws::AwsError::priority_taken());
        std::future::ready(created)
    }
}

/// Runs a future whose every step is ready at once (the in-memory listener never waits).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory listener never waits"),
    }
}

/// The product's listener step ([`hook::bring_pins_in_line`]: plan, place, apply, record)
/// against the in-memory listener, observed the way `hook::sync_pins` observes the real one.
fn sync_pins(
    listener: &mut Listener,
    draft: &mut Draft,
    settings: &Settings,
) -> Result<(), String> {
    let rules = listener.rules.clone();
    let production_rule = listener.production_rule();
    let entries: Vec<LedgerEntry> = draft.entries().cloned().collect();
    let tags: BTreeMap<String, PinTags> =
        pins::orphan_candidates(&entries, &rules, &production_rule)
            .into_iter()
            .filter_map(|arn| listener.tags.get(&arn).cloned().map(|t| (arn, t)))
            .collect();
    let observed = hook::ObservedListener {
        listener_arn: "listener/app/web/1/2",
        rules: &rules,
        tags: &tags,
        production_rule: &production_rule,
    };
    let writes = InMemoryWrites(std::sync::Mutex::new(listener));
    ready(hook::bring_pins_in_line(
        draft, &observed, settings, &writes,
    ))
    .map_err(|e| e.to_string())
}

/// The ledger table as [`crate::aws::ledger_store`] lays it out: entries in play with their
/// versions, final entries in the archive, and every deployment ID's history.
#[derive(Default)]
struct Ledger {
    entries: BTreeMap<DeploymentId, LedgerEntry>,
    archive: BTreeMap<DeploymentId, LedgerEntry>,
    histories: BTreeMap<DeploymentId, Vec<HistoryRecord>>,
    /// Versions an ID's earlier entries reached before they were archived and the ID started
    /// over in play (its history counts their lines too).
    archived_versions: BTreeMap<DeploymentId, u64>,
}

impl Ledger {
    /// What the hooks read: the entries in play only.
    fn load(&self) -> Vec<LedgerEntry> {
        self.entries.values().cloned().collect()
    }

    /// The conditional write: every change must be based on the version stored in play (0 when
    /// the ID has no entry in play); a final entry moves to the archive.
    fn commit(&mut self, changes: &[stages::Change]) -> Result<(), String> {
        for change in changes {
            let stored = self
                .entries
                .get(&change.entry.deployment_id)
                .map_or(0, |e| e.version);
            if stored != change.expected_version {
                return Err(format!(
                    "a write for {} expected version {} but {stored} is stored (a lost update)",
                    change.entry.deployment_id, change.expected_version
                ));
            }
        }
        for change in changes {
            let mut entry = change.entry.clone();
            let id = entry.deployment_id.clone();
            entry.version = change.expected_version + 1;
            if change.expected_version == 0
                && let Some(earlier) = self.archive.get(&id)
            {
                *self.archived_versions.entry(id.clone()).or_default() += earlier.version;
            }
            self.histories
                .entry(id.clone())
                .or_default()
                .push(change.history.clone());
            if entry.status.is_final() {
                self.entries.remove(&id);
                self.archive.insert(id, entry);
            } else {
                self.entries.insert(id, entry);
            }
        }
        Ok(())
    }
}

/// ECS's side: what runs where, and the deployment in flight.
struct Deployment {
    green: V,
    blue: V,
    /// Events delivered so far (for duplicates and late deliveries).
    delivered: Vec<Event>,
    /// Production-shift steps still to come (LINEAR/CANARY have several).
    steps_left: u8,
    stage: Stage,
    /// When blue's skew window ends (set by the first post-shift call, moved by a release):
    /// blue's promise ends then.
    window_end: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    PostTestTraffic,
    ProductionShift,
    PostShift,
}

struct Model {
    settings: Settings,
    window: Duration,
    poll: Duration,
    listener: Listener,
    ledger: Ledger,
    now: OffsetDateTime,
    /// Production: the version ECS serves it from.
    production: V,
    next_rev: usize,
    deployment: Option<Deployment>,
    /// Target group → the version its tasks run; absent when scaled down.
    running: BTreeMap<usize, DeploymentId>,
    /// The versions promised a pin right now (as the engine's `must_be_pinned`).
    promised: Vec<V>,
    /// A sync failed after changing the listener; until a sync succeeds the ledger may not
    /// list every rule.
    dirty: bool,
    steps: u64,
    failed_steps: u64,
    deployments: u64,
    rollbacks: u64,
}

impl Model {
    fn new(settings: Settings, window: Duration, poll: Duration) -> Self {
        let production = V {
            id: 0,
            rev: 0,
            tg: 0,
        };
        let mut running = BTreeMap::new();
        running.insert(0, production.deployment_id());
        Self {
            settings,
            window,
            poll,
            listener: Listener::new(),
            ledger: Ledger::default(),
            now: T0,
            production,
            next_rev: 1,
            deployment: None,
            running,
            promised: Vec::new(),
            dirty: false,
            steps: 0,
            failed_steps: 0,
            deployments: 0,
            rollbacks: 0,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Deploy { id, forced } => {
                if self.deployment.is_some() {
                    return Ok(());
                }
                let id = if *forced {
                    // The production ID, possibly in another letter case (`AAA` is `aaa`).
                    if self.production.id == 0 && *id % 2 == 1 {
                        3
                    } else {
                        self.production.id
                    }
                } else {
                    *id
                };
                let green = V {
                    id,
                    rev: self.next_rev,
                    tg: 1 - self.production.tg,
                };
                self.next_rev += 1;
                self.deployments += 1;
                // SCALE_UP: green's tasks run on the other target group.
                self.running.insert(green.tg, green.deployment_id());
                self.deployment = Some(Deployment {
                    green,
                    blue: self.production,
                    delivered: Vec::new(),
                    steps_left: 1 + (id as u8 % 2),
                    stage: Stage::PostTestTraffic,
                    window_end: None,
                });
                self.check("SCALE_UP", false)
            }
            Op::Next => self.next(),
            Op::Duplicate => {
                let Some(last) = self
                    .deployment
                    .as_ref()
                    .and_then(|d| d.delivered.last().cloned())
                else {
                    return Ok(());
                };
                // A repeat answers the same and changes nothing the promise depends on.
                self.deliver(&last).map(|_| ())
            }
            Op::Late(index) => {
                let Some(event) = self.deployment.as_ref().and_then(|d| {
                    (!d.delivered.is_empty())
                        .then(|| d.delivered[index.index(d.delivered.len())].clone())
                }) else {
                    return Ok(());
                };
                self.deliver(&event).map(|_| ())
            }
            Op::Rollback { green_known } => self.rollback(*green_known),
            Op::Release => {
                let mut draft = Draft::new(SVC, self.ledger.load());
                let now = self.now;
                if let Some(d) = self.deployment.as_mut()
                    && let Some(end) = d.window_end.as_mut()
                {
                    *end = (*end).min(now);
                }
                if stages::release(&mut draft, self.now) {
                    let changes = draft.changes(&self.actor("release"));
                    self.ledger.commit(&changes).map_err(TestCaseError::fail)?;
                }
                self.check("release", false)
            }
            Op::Advance(s) => {
                self.now += Duration::from_secs(*s);
                Ok(())
            }
        }
    }

    fn actor(&self, stage: &str) -> Actor {
        Actor {
            stage: stage.to_owned(),
            execution_id: format!("step-{}", self.steps),
            identity: format!("request-{}", self.steps),
            now: self.now,
        }
    }

    /// ECS's next move in the deployment in flight.
    fn next(&mut self) -> Result<(), TestCaseError> {
        let Some(d) = self.deployment.as_ref() else {
            return Ok(());
        };
        let (green, blue) = (d.green, d.blue);
        let event = match d.stage {
            Stage::PostTestTraffic => Event::PostTestTraffic { green, blue },
            Stage::ProductionShift => Event::ProductionShift { green, blue },
            Stage::PostShift => Event::PostShift { green },
        };
        let Some(hold) = self.deliver(&event)? else {
            // FAILED (or a function error): ECS rolls back.
            return self.rollback(true);
        };
        let now = self.now;
        let window = self.window;
        let d = self.deployment.as_mut().expect("in flight");
        d.delivered.push(event.clone());
        if d.stage == Stage::PostShift {
            d.window_end.get_or_insert(now + window);
        }
        match d.stage {
            Stage::PostTestTraffic => {
                d.stage = Stage::ProductionShift;
                self.promised = vec![blue];
            }
            Stage::ProductionShift => {
                d.steps_left -= 1;
                if d.steps_left == 0 {
                    d.stage = Stage::PostShift;
                }
                self.promised = vec![blue, green];
            }
            Stage::PostShift => match hold {
                // (The property tests run hold mode: no retention copy makes a step.)
                Hold::For(_) | Hold::Next => self.promised = vec![blue, green],
                Hold::Done => {
                    // Bake time, then CLEAN_UP scales blue down.
                    self.promised = vec![green];
                    self.production = green;
                    self.deployment = None;
                    if green.tg != blue.tg {
                        self.running.remove(&blue.tg);
                    }
                    return self.check("CLEAN_UP", false);
                }
            },
        }
        self.check(&format!("{event:?}"), false)
    }

    fn rollback(&mut self, green_known: bool) -> Result<(), TestCaseError> {
        let Some(d) = self.deployment.take() else {
            return Ok(());
        };
        self.rollbacks += 1;
        let event = Event::Rollback {
            green: d.green,
            green_known,
            blue: d.blue,
        };
        // Invoked at TEST_TRAFFIC_SHIFT and again at PRODUCTION_TRAFFIC_SHIFT.
        let first = self.deliver(&event)?;
        let second = self.deliver(&event)?;
        if first.is_some() || second.is_some() {
            self.promised = vec![d.blue];
        }
        self.check("rollback: hooks done", false)?;
        if d.green.tg != d.blue.tg {
            self.running.remove(&d.green.tg);
        }
        self.check("rollback: green stopped", false)
    }

    /// Runs one event through the stage logic the way `hook::attempt_stage` does: decide on a
    /// draft of the ledger, bring the pins in line, commit conditionally. `None` is a hook
    /// error (its onError answer), after which nothing was written to the ledger.
    fn deliver(&mut self, event: &Event) -> Result<Option<Hold>, TestCaseError> {
        self.steps += 1;
        let mut draft = Draft::new(SVC, self.ledger.load());
        let now = self.now;
        let wiring = wiring();
        let mut hold = Hold::Done;
        match event {
            Event::PostTestTraffic { green, blue } => {
                stages::post_test_traffic(
                    &mut draft,
                    &green.running(),
                    Some(&blue.running()),
                    &wiring,
                    now,
                );
            }
            Event::ProductionShift { green, blue } => {
                stages::production_shift(
                    &mut draft,
                    &green.running(),
                    Some(&blue.running()),
                    &wiring,
                    now,
                );
            }
            Event::Rollback {
                green,
                green_known,
                blue,
            } => {
                let id = green.deployment_id();
                stages::rollback(
                    &mut draft,
                    &revision(green.rev),
                    green_known.then_some(&id),
                    Some((&blue.running(), &wiring)),
                    now,
                );
            }
            Event::PostShift { green } => {
                hold = stages::post_shift(
                    &mut draft,
                    &green.running(),
                    &wiring,
                    self.window,
                    self.poll,
                    now,
                );
            }
        }
        let catch_all_moved =
            self.settings.after_window == AfterWindow::Retired && draft.production_changed();
        if draft.pins_need_attention() || catch_all_moved || self.dirty {
            if sync_pins(&mut self.listener, &mut draft, &self.settings).is_err() {
                self.failed_steps += 1;
                self.dirty = true;
                self.check(&format!("{event:?} (failed)"), true)?;
                return Ok(None);
            }
            self.dirty = false;
        }
        let changes = draft.changes(&self.actor(&format!("{event:?}")));
        self.ledger
            .commit(&changes)
            .map_err(|e| TestCaseError::fail(format!("{event:?}: {e}")))?;
        Ok(Some(hold))
    }

    /// The invariants that need no AWS.
    fn check(&self, after: &str, after_failure: bool) -> Result<(), TestCaseError> {
        let fail = |what: String| Err(TestCaseError::fail(format!("after {after}: {what}")));
        let rules = &self.listener.rules;
        // Distinct priorities.
        let numbered: Vec<u32> = rules.iter().filter_map(|r| r.priority.number()).collect();
        let distinct: BTreeSet<u32> = numbered.iter().copied().collect();
        if distinct.len() != numbered.len() {
            return fail(format!("two rules share a priority: {numbered:?}"));
        }
        // 1 and 3: a pin forwards only to the target group running its version.
        for r in rules {
            let Some(tags) = self.listener.tags.get(&r.arn) else {
                continue;
            };
            for tg in r.forward_targets() {
                let index = TGS.iter().position(|t| *t == tg);
                match index.and_then(|i| self.running.get(&i)) {
                    Some(id) if id.as_str() == tags.deployment_id => {}
                    other => {
                        return fail(format!(
                            "pin {} of {} forwards to {tg}, which runs {other:?}",
                            r.arn, tags.deployment_id
                        ));
                    }
                }
            }
        }
        // 6 and the made-up-ID rule: a pin only re-routes requests bound for this service's
        // production rule, and only those carrying exactly its own ID.
        let plain: Vec<ListenerRule> = rules
            .iter()
            .filter(|r| !self.listener.tags.contains_key(&r.arn))
            .cloned()
            .collect();
        let mut ids: Vec<&str> = IDS.to_vec();
        ids.extend(["zzz", "aaa-old", "AaA", "*", ""]);
        for path in ["/api/cart", "/admin/x", "/shop/x", "/other"] {
            for test in [false, true] {
                for id in &ids {
                    for mut request in [
                        Request::get(path).with_header("X-Deployment-ID", id),
                        Request::get(path).with_query("dpl", id),
                        Request::get(path).with_header("Cookie", &format!("x=1; __dpl={id}")),
                        Request::get(path),
                    ] {
                        if test {
                            request = request.with_header("X-Test-Traffic", "1");
                        }
                        let with = route(rules, &request);
                        let without = route(&plain, &request);
                        if with.map(|r| &r.arn) == without.map(|r| &r.arn) {
                            continue;
                        }
                        if without.map(|r| r.arn.as_str()) != Some(PROD) {
                            return fail(format!(
                                "{request:?} reaches pin {:?} instead of {:?}",
                                with.map(|r| &r.arn),
                                without.map(|r| &r.arn)
                            ));
                        }
                        let pin = with.and_then(|r| self.listener.tags.get(&r.arn).map(|t| (r, t)));
                        if let Some((r, tags)) = pin
                            && !matches!(r.action, RuleAction::FixedResponse { .. })
                            && !tags.deployment_id.eq_ignore_ascii_case(id)
                        {
                            return fail(format!(
                                "{request:?} carrying {id:?} reaches the pin of {}",
                                tags.deployment_id
                            ));
                        }
                    }
                }
            }
        }
        if after_failure || self.dirty {
            return Ok(());
        }
        // 2: every promised version is reached through its pin (blue until its window ends).
        let window_over = |v: &V| {
            self.deployment
                .as_ref()
                .is_some_and(|d| d.blue == *v && d.window_end.is_some_and(|end| end <= self.now))
        };
        for v in self.promised.iter().filter(|v| !window_over(v)) {
            let request = Request::get("/api/cart").with_header("X-Deployment-ID", IDS[v.id]);
            let reached: Vec<String> = route(rules, &request)
                .map(|r| r.live_targets().into_iter().map(str::to_owned).collect())
                .unwrap_or_default();
            let ok = !reached.is_empty()
                && reached.iter().all(|tg| {
                    TGS.iter()
                        .position(|t| t == tg)
                        .and_then(|i| self.running.get(&i))
                        == Some(&v.deployment_id())
                });
            if !ok {
                return fail(format!(
                    "{} is promised a pin but reaches {reached:?}",
                    IDS[v.id]
                ));
            }
        }
        // 4: the listener and the ledger agree; no pin for a finished entry.
        let listed: BTreeSet<&str> = self
            .ledger
            .entries
            .values()
            .flat_map(|e| e.rule_arns.iter().map(String::as_str))
            .collect();
        for (arn, tags) in &self.listener.tags {
            if !listed.contains(arn.as_str()) {
                return fail(format!(
                    "pin {arn} of {} is not in the ledger",
                    tags.deployment_id
                ));
            }
        }
        for e in self.ledger.entries.values() {
            if e.status.is_final() {
                return fail(format!("{} is final but still in play", e.deployment_id));
            }
        }
        for e in self
            .ledger
            .entries
            .values()
            .chain(self.ledger.archive.values())
        {
            for arn in &e.rule_arns {
                if !self.listener.tags.contains_key(arn) {
                    return fail(format!("{} lists {arn}, which is gone", e.deployment_id));
                }
            }
            if !e.wants_pin() && !e.rule_arns.is_empty() {
                return fail(format!("{} is {} but pinned", e.deployment_id, e.status));
            }
            if e.status.is_final() && e.expires_at.is_none() {
                return fail(format!("{} is final without a TTL", e.deployment_id));
            }
        }
        // 5: histories only grow: one line per committed change, none lost.
        for (id, history) in &self.ledger.histories {
            let latest = self
                .ledger
                .entries
                .get(id)
                .or_else(|| self.ledger.archive.get(id))
                .map_or(0, |e| e.version);
            let version = latest + self.ledger.archived_versions.get(id).copied().unwrap_or(0);
            if history.len() as u64 != version {
                return fail(format!(
                    "{id} has {} history lines for version {version}",
                    history.len()
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn stage_sequences_never_break_the_invariants() {
    let steps = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deployments = Arc::new(AtomicU64::new(0));
    let rollbacks = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicU64::new(0));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        settings_strategy(),
        0..120u64,
        1..60u64,
        prop::collection::vec(op(), 1..60),
    );
    let result = runner.run(&strategy, |(settings, window, poll, ops)| {
        ran.fetch_add(1, Ordering::Relaxed);
        let mut model = Model::new(
            settings,
            Duration::from_secs(window),
            Duration::from_secs(poll),
        );
        for op in &ops {
            model.step(op)?;
        }
        steps.fetch_add(model.steps, Ordering::Relaxed);
        failed.fetch_add(model.failed_steps, Ordering::Relaxed);
        deployments.fetch_add(model.deployments, Ordering::Relaxed);
        rollbacks.fetch_add(model.rollbacks, Ordering::Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    report(
        "proptest-stages",
        json!({
            "cases": ran.load(Ordering::Relaxed),
            "events": steps.load(Ordering::Relaxed),
            "deployments": deployments.load(Ordering::Relaxed),
            "rollbacks": rollbacks.load(Ordering::Relaxed),
            "eventsEndingInAnError": failed.load(Ordering::Relaxed),
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile deployment IDs

/// Strings a client or a task definition might carry: empty, long, wildcards, separators,
/// unicode, control characters, header injection, case variants.
fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".repeat(128)),
        Just("a".repeat(129)),
        Just("*".to_owned()),
        Just("a?c".to_owned()),
        Just("v1*".to_owned()),
        Just("V1".to_owned()),
        Just("v1\r\nX-Deployment-ID: v2".to_owned()),
        Just("v1; __dpl=v2".to_owned()),
        Just("ﬀ".to_owned()),
        Just("v\u{0130}".to_owned()),
        Just("v1\u{0}".to_owned()),
        "[a-zA-Z0-9._-]{1,130}",
        "\\PC{0,40}",
        any::<String>(),
    ]
}

#[test]
fn deployment_ids_never_match_more_than_themselves() {
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let mut runner = TestRunner::new(Config {
        cases: cases() * 4,
        failure_persistence: None,
        ..Config::default()
    });
    let details = json!({"queryParam": "dpl", "cookieName": "__dpl"});
    let settings = Settings::resolve(
        details.as_object().expect("an object"),
        &EnvDefaults::default(),
    )
    .expect("valid settings");
    let production = Listener::new().production_rule();
    let result = runner.run(
        &(hostile_id(), prop::collection::vec(hostile_id(), 1..8)),
        |(raw, others)| {
            let id = match DeploymentId::parse(&raw) {
                Ok(id) => id,
                Err(e) => {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    prop_assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
                    return Ok(());
                }
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            prop_assert!(!id.as_str().is_empty() && id.as_str().len() <= 128);
            prop_assert!(
                id.as_str()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            );
            prop_assert_eq!(id.as_str(), raw.to_ascii_lowercase());
            let specs = match pins::pin_specs(&id, TGS[1], &production, &settings) {
                Ok(specs) => specs,
                Err(e) => {
                    // Too long once inside a cookie pattern: refused before any rule exists.
                    let msg = e.to_string();
                    prop_assert!(msg.contains("ALB allows 128"), "{msg}");
                    rejected.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            };
            let rules: Vec<ListenerRule> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    rule(
                        &format!("pin{i}"),
                        50 + i as u32,
                        s.conditions.clone(),
                        s.action.clone(),
                    )
                })
                .collect();
            let mut probes = others.clone();
            probes.extend([
                raw.clone(),
                raw.to_ascii_uppercase(),
                format!("{raw}x"),
                format!("x{raw}"),
                format!("{raw}*"),
                raw.chars().skip(1).collect(),
            ]);
            for probe in probes {
                let same = probe.eq_ignore_ascii_case(id.as_str());
                let mut requests = vec![
                    Request::get("/api/x").with_header("X-Deployment-ID", &probe),
                    Request::get("/api/x").with_query("dpl", &probe),
                ];
                // A cookie value cannot carry the cookie separators themselves.
                if !probe.contains([';', ' ', ',']) {
                    requests.push(
                        Request::get("/api/x").with_header("Cookie", &format!("__dpl={probe}")),
                    );
                    requests.push(
                        Request::get("/api/x")
                            .with_header("Cookie", &format!("a=b; __dpl={probe}; c=d")),
                    );
                }
                for request in requests {
                    let hit = route(&rules, &request).is_some();
                    prop_assert_eq!(hit, same, "{:?} vs pin of {}: {:?}", probe, id, request);
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    report(
        "proptest-deployment-ids",
        json!({
            "cases": accepted.load(Ordering::Relaxed) + rejected.load(Ordering::Relaxed),
            "accepted": accepted.load(Ordering::Relaxed),
            "rejected": rejected.load(Ordering::Relaxed),
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzzing the event and hookDetails parsing, through the whole handler

fn valid_event() -> Value {
    json!({
      "executionId": "f4fcae0f-9bec-41c6-ba87-0eaa0cef8af5",
      "lifecycleStage": "PRODUCTION_TRAFFIC_SHIFT",
      "resourceArn": "arn:aws:ecs:us-west-2:123456789012:service-deployment/c/s/EZe5RNVLH6PPzHXINuP28",
      "executionDetails": {
        "serviceArn": "arn:aws:ecs:us-west-2:123456789012:service/c/s",
        "targetServiceRevisionArn": "arn:aws:ecs:us-west-2:123456789012:service-revision/c/s/9313423515462893900",
        "testTrafficWeights": {},
        "productionTrafficWeights": {
          "arn:aws:ecs:us-west-2:123456789012:service-revision/c/s/9313423515462893900": 100,
          "arn:aws:ecs:us-west-2:123456789012:service-revision/c/s/1920498462936580504": 0
        }
      },
      "hookDetails": {"skewWindow": "1h", "onError": "continue"}
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(101)),
        "\\PC{0,30}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("1h"),
            Just("0s"),
            Just("24h"),
            Just("rollback"),
            Just("continue"),
            Just("retired"),
            Just("1-50000"),
            Just("0-0"),
            Just("env:"),
            Just("label:x"),
            Just("image-tag"),
            Just("POST_TEST_TRAFFIC_SHIFT"),
            Just("arn:aws:ecs:x:1:service/a/b"),
            Just("arn:aws:ecs:x:1:service-revision/a/b/1"),
            Just("X-Deployment-ID"),
            Just("Cookie"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mutations of a valid event: one field replaced, removed, or given a hostile `hookDetails`.
fn mutated_event() -> impl Strategy<Value = Value> {
    let paths: Vec<Vec<&'static str>> = vec![
        vec!["executionId"],
        vec!["lifecycleStage"],
        vec!["resourceArn"],
        vec!["executionDetails"],
        vec!["executionDetails", "serviceArn"],
        vec!["executionDetails", "targetServiceRevisionArn"],
        vec!["executionDetails", "testTrafficWeights"],
        vec!["executionDetails", "productionTrafficWeights"],
        vec!["hookDetails"],
        vec!["hookDetails", "skewWindow"],
        vec!["hookDetails", "onError"],
        vec!["hookDetails", "pollInterval"],
        vec!["hookDetails", "priorityRange"],
        vec!["hookDetails", "headerName"],
        vec!["hookDetails", "hookTimeout"],
        vec!["hookDetails", "deploymentIdFrom"],
    ];
    (
        prop::collection::vec(
            (
                proptest::sample::select(paths),
                proptest::option::of(json_value()),
            ),
            1..4,
        ),
        prop::collection::btree_map("\\PC{0,16}", json_value(), 0..3),
    )
        .prop_map(|(edits, extra)| {
            let mut event = valid_event();
            for (path, value) in edits {
                let (last, parents) = path.split_last().expect("non-empty path");
                let mut target = &mut event;
                for p in parents {
                    target = &mut target[*p];
                }
                if let Value::Object(map) = target {
                    match value {
                        Some(v) => {
                            map.insert((*last).to_owned(), v);
                        }
                        None => {
                            map.remove(*last);
                        }
                    }
                }
            }
            if let Some(Value::Object(details)) = event.get_mut("hookDetails") {
                details.extend(extra);
            }
            event
        })
}

/// Hook clients whose every AWS call is answered at once with `AccessDeniedException` (a
/// client error, which neither the SDK nor the hook retries), so a well-formed event goes all the
/// way through the handler to an AWS error and its onError answer, in microseconds.
async fn denying_clients() -> Clients {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#AccessDeniedException","message":"fuzz"}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 65536];
            let mut seen = Vec::new();
            // Read the headers and the body (its length from content-length), then answer.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let creds = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "fuzz");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::from_static("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(2))
                .build(),
        )
        .load()
        .await;
    crate::cold_start::clients(&sdk, "ledger")
}

fn fuzz_executions() -> u64 {
    std::env::var("SKEWGUARD_FUZZ_EXECUTIONS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn hook_events_from_raw_bytes_always_get_a_defined_answer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let clients = runtime.block_on(denying_clients());
    let executions = fuzz_executions();
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    // [executions, not JSON, parsed as an event, handled with AWS calls, answers]
    let functions = [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ];
    let input = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
        4 => mutated_event().prop_map(|v| v.to_string().into_bytes()),
        1 => (mutated_event(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            // A flipped byte in otherwise valid JSON.
            let mut bytes = v.to_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes
        }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: u32::try_from(executions).unwrap_or(u32::MAX),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(input, 0..3usize), |(bytes, which)| {
        counts[0].fetch_add(1, Ordering::Relaxed);
        // The Lambda runtime hands the handler a JSON value; anything else never reaches it.
        let Ok(raw) = serde_json::from_slice::<Value>(&bytes) else {
            counts[1].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let parsed = HookEvent::parse(&raw);
        if let Ok(event) = &parsed {
            counts[2].fetch_add(1, Ordering::Relaxed);
            // Settings resolve or name the bad key; never a panic.
            if let Err(e) = Settings::resolve(&event.hook_details, &EnvDefaults::default()) {
                prop_assert!(e.to_string().contains('`'), "{e}");
            }
            if Settings::resolve(&event.hook_details, &EnvDefaults::default()).is_ok() {
                counts[3].fetch_add(1, Ordering::Relaxed);
            }
        } else if let Err(e) = &parsed {
            prop_assert!(e.to_string().starts_with("malformed hook event: "));
        }
        let config = HookConfig {
            function: functions[which],
            defaults: EnvDefaults::default(),
        };
        let answer: HookAnswer = runtime.block_on(hook::handle(&config, &clients, raw.clone()));
        counts[4].fetch_add(1, Ordering::Relaxed);
        let serialised = serde_json::to_value(&answer).expect("an answer serialises");
        prop_assert!(
            matches!(
                serialised["hookStatus"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "IN_PROGRESS")
            ),
            "{serialised}"
        );
        // Nothing can succeed here (AWS denies every call): the answer is the onError answer.
        let on_error_continue = raw
            .get("hookDetails")
            .and_then(Value::as_object)
            .map(|d| {
                crate::settings::Settings::on_error_only(d, &EnvDefaults::default())
                    == crate::settings::OnError::Continue
            })
            .unwrap_or(false);
        let expected = if on_error_continue {
            HookStatus::Succeeded
        } else {
            HookStatus::Failed
        };
        prop_assert_eq!(answer.hook_status, expected, "{}", raw);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    report(
        "fuzz-hook-events",
        json!({
            "executions": c[0],
            "notJson": c[1],
            "parsedAsEvents": c[2],
            "reachedAws": c[3],
            "answered": c[4],
        }),
    );
}
