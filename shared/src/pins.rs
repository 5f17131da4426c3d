//! Pin rules: what they look like, where they go on the listener, and which to create or delete so
//! that the listener matches the ledger.
//!
//! A pin copies every condition of the service's production rule and adds one pin condition, and
//! sits in the gap just ahead of the production rule and after every other rule before it. So a
//! pin only re-routes requests that would have reached this service's production rule anyway,
//! and never takes traffic from another rule on the listener.

use std::collections::{BTreeMap, BTreeSet};

use crate::DeploymentId;
use crate::ledger::LedgerEntry;
use crate::listener::{
    Condition, ListenerRule, Priority, QueryMatch, RuleAction, WeightedTarget, canonical_conditions,
};
use crate::settings::{AfterWindow, MAX_PRIORITY, PriorityRange, Settings};

/// ALB quotas that bound a pin rule.
const MAX_VALUES_PER_CONDITION: usize = 3;
const MAX_EVALUATIONS_PER_RULE: usize = 5;
const MAX_WILDCARDS_PER_RULE: usize = 5;
const MAX_VALUE_LEN: usize = 128;

/// The skewguard tags every pin rule carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinTags {
    pub service_arn: String,
    pub deployment_id: String,
}

/// One rule to exist: requests matching `conditions` get `action` — a forward to the target
/// group running the deployment (a pin), or the retired answer (the catch-all after the pins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSpec {
    pub deployment_id: DeploymentId,
    pub conditions: Vec<Condition>,
    pub action: RuleAction,
}

impl PinSpec {
    pub fn target_group_arn(&self) -> Option<&str> {
        match &self.action {
            RuleAction::Forward(targets) => targets.first().map(|t| t.target_group_arn.as_str()),
            _ => None,
        }
    }

    pub fn is_catch_all(&self) -> bool {
        matches!(self.action, RuleAction::FixedResponse { .. })
    }

    /// Whether an existing rule already is this rule (its priority aside). Forwards compare by
    /// target group and by whether each gets traffic at all: a relative weight of 1 or 5 on a
    /// single target sends the same requests, weight 0 sends none.
    fn is_met_by(&self, rule: &ListenerRule) -> bool {
        let same_action = match (&self.action, &rule.action) {
            (RuleAction::Forward(want), RuleAction::Forward(have)) => {
                let shape = |targets: &[WeightedTarget]| {
                    let mut shape: Vec<(String, bool)> = targets
                        .iter()
                        .map(|t| (t.target_group_arn.clone(), t.weight > 0))
                        .collect();
                    shape.sort();
                    shape
                };
                !want.is_empty() && shape(want) == shape(have)
            }
            (want @ RuleAction::FixedResponse { .. }, have) => want == have,
            _ => false,
        };
        same_action
            && canonical_conditions(&rule.conditions) == canonical_conditions(&self.conditions)
    }
}

/// The status of the retired answer.
pub const RETIRED_STATUS: u16 = 409;

/// The body of the retired answer: what a client needs to offer a reload.
pub fn retired_body(current: &DeploymentId) -> String {
    serde_json::json!({"error": "deployment_retired", "currentDeploymentId": current.as_str()})
        .to_string()
}

/// The catch-all after the pins (`afterWindow: retired`): a request that carries the pin header
/// with an ID no pin matched gets 409 with the current production deployment ID.
pub fn retired_spec(
    current: &DeploymentId,
    production_rule: &ListenerRule,
    settings: &Settings,
) -> Result<PinSpec, PinError> {
    check_copyable(production_rule)?;
    let mut conditions = production_rule.conditions.clone();
    conditions.push(Condition::HttpHeader {
        name: settings.header_name.clone(),
        values: vec!["*".to_owned()],
    });
    check_quotas(current, &conditions)?;
    Ok(PinSpec {
        deployment_id: current.clone(),
        conditions,
        action: RuleAction::FixedResponse {
            status_code: RETIRED_STATUS,
            content_type: Some("application/json".to_owned()),
            body: Some(retired_body(current)),
        },
    })
}

fn check_copyable(production_rule: &ListenerRule) -> Result<(), PinError> {
    if let Some(what) = production_rule.uncopyable.first() {
        return Err(PinError::ProductionRuleUncopyable {
            rule: production_rule.arn.clone(),
            what: what.clone(),
        });
    }
    if let Some(Condition::Unsupported(what)) = production_rule
        .conditions
        .iter()
        .find(|c| matches!(c, Condition::Unsupported(_)))
    {
        return Err(PinError::ProductionRuleUncopyable {
            rule: production_rule.arn.clone(),
            what: what.clone(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error(
        "production listener rule {rule} is not on listener {listener}; was it deleted or moved?"
    )]
    ProductionRuleMissing { rule: String, listener: String },
    #[error(
        "production listener rule {rule} uses {what}, which a pin rule cannot reproduce (pinned requests would bypass it); \
         use a production rule with plain conditions and a single forward action"
    )]
    ProductionRuleUncopyable { rule: String, what: String },
    #[error("a pin rule for {deployment_id} would exceed an ALB quota: {reason}")]
    RuleTooComplex {
        deployment_id: String,
        reason: String,
    },
    #[error(
        "no free listener-rule priority for a pin of {deployment_id}: pins must sit between priority {above} \
         (the last other rule before the production rule) and {below} (the production rule){range}; \
         leave free priorities just below the production rule{widen}"
    )]
    NoFreePriority {
        deployment_id: String,
        above: u32,
        below: String,
        range: String,
        widen: &'static str,
    },
}

/// The pin rules a deployment needs under these settings, forwarding to its target group.
pub fn pin_specs(
    deployment_id: &DeploymentId,
    target_group_arn: &str,
    production_rule: &ListenerRule,
    settings: &Settings,
) -> Result<Vec<PinSpec>, PinError> {
    pin_specs_to(
        deployment_id,
        &[WeightedTarget {
            target_group_arn: target_group_arn.to_owned(),
            weight: 1,
        }],
        production_rule,
        settings,
    )
}

/// The pin rules a deployment needs under these settings, forwarding to `targets` (a
/// [`LedgerEntry::pin_targets`]: one target group, or one and a retention copy's at weight 0).
pub fn pin_specs_to(
    deployment_id: &DeploymentId,
    targets: &[WeightedTarget],
    production_rule: &ListenerRule,
    settings: &Settings,
) -> Result<Vec<PinSpec>, PinError> {
    check_copyable(production_rule)?;
    let id = deployment_id.as_str();
    let mut pin_conditions = vec![Condition::HttpHeader {
        name: settings.header_name.clone(),
        values: vec![id.to_owned()],
    }];
    if let Some(param) = &settings.query_param {
        pin_conditions.push(Condition::QueryString(vec![QueryMatch {
            key: Some(param.clone()),
            value: id.to_owned(),
        }]));
    }
    if let Some(cookie) = &settings.cookie_name {
        // Exact cookie matches only: the cookie alone, first, last, or in the middle. Four
        // patterns and at most three values per condition make two rules.
        let pair = format!("{cookie}={id}");
        pin_conditions.push(Condition::HttpHeader {
            name: "Cookie".to_owned(),
            values: vec![pair.clone(), format!("{pair};*"), format!("*; {pair}")],
        });
        pin_conditions.push(Condition::HttpHeader {
            name: "Cookie".to_owned(),
            values: vec![format!("*; {pair};*")],
        });
    }
    pin_conditions
        .into_iter()
        .map(|pin| {
            let mut conditions = production_rule.conditions.clone();
            conditions.push(pin);
            check_quotas(deployment_id, &conditions)?;
            Ok(PinSpec {
                deployment_id: deployment_id.clone(),
                conditions,
                action: RuleAction::Forward(targets.to_vec()),
            })
        })
        .collect()
}

fn check_quotas(deployment_id: &DeploymentId, conditions: &[Condition]) -> Result<(), PinError> {
    let too_complex = |reason: String| PinError::RuleTooComplex {
        deployment_id: deployment_id.to_string(),
        reason,
    };
    let evaluations: usize = conditions.iter().map(Condition::match_evaluations).sum();
    if evaluations > MAX_EVALUATIONS_PER_RULE {
        return Err(too_complex(format!(
            "{evaluations} match evaluations (the production rule's plus the pin's; ALB allows {MAX_EVALUATIONS_PER_RULE})"
        )));
    }
    let wildcards: usize = conditions.iter().map(Condition::wildcards).sum();
    if wildcards > MAX_WILDCARDS_PER_RULE {
        return Err(too_complex(format!(
            "{wildcards} wildcards (ALB allows {MAX_WILDCARDS_PER_RULE}); cookie pins use 2 each"
        )));
    }
    for c in conditions {
        if c.match_evaluations() > MAX_VALUES_PER_CONDITION {
            return Err(too_complex(format!(
                "a condition with more than {MAX_VALUES_PER_CONDITION} values"
            )));
        }
        let values: Vec<&str> = match c {
            Condition::HttpHeader { values, .. } => values.iter().map(String::as_str).collect(),
            Condition::QueryString(pairs) => pairs.iter().map(|p| p.value.as_str()).collect(),
            _ => Vec::new(),
        };
        if let Some(long) = values.iter().find(|v| v.len() > MAX_VALUE_LEN) {
            return Err(too_complex(format!(
                "a condition value of {} characters (ALB allows {MAX_VALUE_LEN}); use a shorter deployment ID or cookie name",
                long.len()
            )));
        }
    }
    Ok(())
}

/// The priorities a pin of this service may take: strictly between `above` and `below`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The highest priority of any other rule before the production rule (0 if none).
    pub above: u32,
    /// The production rule's priority; `MAX_PRIORITY + 1` for a default rule.
    pub below: u32,
    pub range: Option<PriorityRange>,
    /// The highest slot is kept for the retired catch-all, which must come after every pin.
    pub reserve_top: bool,
}

impl Gap {
    fn lowest(&self) -> u32 {
        (self.above + 1).max(self.range.map_or(1, |r| r.low))
    }

    /// The highest priority in the gap: the catch-all's slot when one is kept.
    pub fn top(&self) -> u32 {
        (self.below - 1)
            .min(MAX_PRIORITY)
            .min(self.range.map_or(MAX_PRIORITY, |r| r.high))
    }

    fn highest(&self) -> u32 {
        self.top().saturating_sub(u32::from(self.reserve_top))
    }

    pub fn contains(&self, priority: u32) -> bool {
        (self.lowest()..=self.highest()).contains(&priority)
    }

    /// The highest free priority, so pins sit right against their production rule.
    pub fn free_priority(&self, taken: &BTreeSet<u32>) -> Option<u32> {
        let (low, high) = (self.lowest(), self.highest());
        if low > high {
            return None;
        }
        (low..=high).rev().find(|p| !taken.contains(p))
    }

    /// Where a new rule for `spec` goes: the catch-all in the top slot, pins below it.
    pub fn priority_for(&self, spec: &PinSpec, taken: &BTreeSet<u32>) -> Option<u32> {
        if spec.is_catch_all() {
            Some(self.top()).filter(|p| !taken.contains(p) && *p > self.above)
        } else {
            self.free_priority(taken)
        }
    }

    pub fn exhausted(&self, deployment_id: &DeploymentId) -> PinError {
        PinError::NoFreePriority {
            deployment_id: deployment_id.to_string(),
            above: self.above,
            below: if self.below > MAX_PRIORITY {
                "the default rule".to_owned()
            } else {
                self.below.to_string()
            },
            range: self
                .range
                .map(|r| format!(" and inside priorityRange {}-{}", r.low, r.high))
                .unwrap_or_default(),
            widen: if self.range.is_some() {
                ", or widen priorityRange"
            } else {
                ""
            },
        }
    }
}

/// Rules of this service: recorded in its ledger entries or tagged for it.
pub fn own_rules<'a>(
    service_arn: &str,
    entries: &[LedgerEntry],
    rules: &'a [ListenerRule],
    tags: &BTreeMap<String, PinTags>,
) -> Vec<&'a ListenerRule> {
    let recorded: BTreeSet<&str> = entries
        .iter()
        .flat_map(|e| e.rule_arns.iter().map(String::as_str))
        .collect();
    rules
        .iter()
        .filter(|r| !r.is_default())
        .filter(|r| {
            recorded.contains(r.arn.as_str())
                || tags
                    .get(&r.arn)
                    .is_some_and(|t| t.service_arn == service_arn)
        })
        .collect()
}

/// Rules that might be this service's pins lost between "rule created" and "ledger written":
/// forwarding to just one of the service's target groups, or to a retention copy's target group
/// (alone, or at weight 0 beside one of the service's: recognised by the copy's name, which
/// the ledger records before the group exists), matching on a header or query, and not
/// recorded anywhere in its ledger. Only these need their tags read.
pub fn orphan_candidates(
    entries: &[LedgerEntry],
    rules: &[ListenerRule],
    production_rule: &ListenerRule,
) -> Vec<String> {
    let recorded: BTreeSet<&str> = entries
        .iter()
        .flat_map(|e| e.rule_arns.iter().map(String::as_str))
        .collect();
    let service_targets: BTreeSet<&str> = production_rule.forward_targets().into_iter().collect();
    let copies: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| e.retention.as_ref())
        .map(|c| c.target_group_name.as_str())
        .collect();
    let is_copy = |tg: &str| target_group_name_of(tg).is_some_and(|name| copies.contains(name));
    rules
        .iter()
        .filter(|r| {
            !r.is_default() && r.arn != production_rule.arn && !recorded.contains(r.arn.as_str())
        })
        .filter(|r| {
            let to_this_service = match r.forward_targets().as_slice() {
                [one] => service_targets.contains(one) || is_copy(one),
                [a, b] => {
                    (service_targets.contains(a) && is_copy(b))
                        || (is_copy(a) && service_targets.contains(b))
                }
                _ => false,
            };
            // A retired catch-all lost between "rule created" and "ledger written".
            let retired_answer = matches!(&r.action,
                RuleAction::FixedResponse { status_code, .. } if *status_code == RETIRED_STATUS);
            to_this_service || retired_answer
        })
        .filter(|r| {
            r.conditions
                .iter()
                .any(|c| matches!(c, Condition::HttpHeader { .. } | Condition::QueryString(_)))
        })
        .map(|r| r.arn.clone())
        .collect()
}

/// The name of a target group from its ARN (`…:targetgroup/NAME/ID`).
fn target_group_name_of(arn: &str) -> Option<&str> {
    arn.split_once(":targetgroup/")?.1.split('/').next()
}

/// Where this service's pins may go on the listener.
pub fn gap(
    production_rule: &ListenerRule,
    rules: &[ListenerRule],
    own: &[&ListenerRule],
    range: Option<PriorityRange>,
    reserve_top: bool,
) -> Gap {
    let below = production_rule
        .priority
        .number()
        .unwrap_or(MAX_PRIORITY + 1);
    let own_arns: BTreeSet<&str> = own.iter().map(|r| r.arn.as_str()).collect();
    let above = rules
        .iter()
        .filter(|r| !own_arns.contains(r.arn.as_str()) && r.arn != production_rule.arn)
        .filter_map(|r| r.priority.number())
        .filter(|p| *p < below)
        .max()
        .unwrap_or(0);
    Gap {
        above,
        below,
        range,
        reserve_top,
    }
}

/// What to change on the listener so that exactly the wanted pins exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPlan {
    /// Existing rules that already are correct pins, by deployment.
    pub keep: BTreeMap<DeploymentId, Vec<String>>,
    pub create: Vec<PinSpec>,
    pub delete: Vec<String>,
    pub gap: Gap,
}

impl PinPlan {
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

/// Compares the pins the entries want with this service's rules on the listener.
pub fn plan(
    service_arn: &str,
    entries: &[LedgerEntry],
    rules: &[ListenerRule],
    tags: &BTreeMap<String, PinTags>,
    production_rule: &ListenerRule,
    settings: &Settings,
) -> Result<PinPlan, PinError> {
    let own = own_rules(service_arn, entries, rules, tags);
    let retired = settings.after_window == AfterWindow::Retired;
    let gap = gap(
        production_rule,
        rules,
        &own,
        settings.priority_range,
        retired,
    );
    let mut unused: Vec<&ListenerRule> = own.clone();
    unused.sort_by_key(|r| r.priority);
    let mut keep: BTreeMap<DeploymentId, Vec<String>> = BTreeMap::new();
    let mut create = Vec::new();
    let mut specs = Vec::new();
    for entry in entries.iter().filter(|e| e.wants_pin()) {
        specs.extend(pin_specs_to(
            &entry.deployment_id,
            &entry.pin_targets(),
            production_rule,
            settings,
        )?);
    }
    if retired && let Some(current) = production_version(entries) {
        specs.push(retired_spec(current, production_rule, settings)?);
    }
    for spec in specs {
        let found = unused.iter().position(|r| {
            let slot_ok = r.priority.number().is_some_and(|p| {
                if spec.is_catch_all() {
                    p == gap.top()
                } else {
                    gap.contains(p)
                }
            });
            slot_ok && spec.is_met_by(r)
        });
        match found {
            Some(index) => {
                let rule = unused.remove(index);
                keep.entry(spec.deployment_id.clone())
                    .or_default()
                    .push(rule.arn.clone());
            }
            None => create.push(spec),
        }
    }
    Ok(PinPlan {
        keep,
        create,
        delete: unused.into_iter().map(|r| r.arn.clone()).collect(),
        gap,
    })
}

/// The target groups a new deployment's green may take: those of the production rule's forward
/// action at weight 0 (ECS requires exactly one group with non-zero weight before a deployment).
/// A group that carries production traffic is never among them, so nothing serving production
/// is unpinned; while weights are split (another deployment mid-shift), there is none.
///
/// Errors: [`PinError::ProductionRuleMissing`] when the listener has no such rule.
pub fn incoming_target_groups(
    rules: &[ListenerRule],
    production_rule_arn: &str,
    listener_arn: &str,
) -> Result<Vec<String>, PinError> {
    let rule = rules
        .iter()
        .find(|r| r.arn == production_rule_arn)
        .ok_or_else(|| PinError::ProductionRuleMissing {
            rule: production_rule_arn.to_owned(),
            listener: listener_arn.to_owned(),
        })?;
    let RuleAction::Forward(targets) = &rule.action else {
        return Ok(Vec::new());
    };
    Ok(targets
        .iter()
        .filter(|t| t.weight == 0)
        .map(|t| t.target_group_arn.clone())
        .collect())
}

/// A pin to create, at the priority chosen while planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPin {
    pub spec: PinSpec,
    /// ALB rule priority, 1–50000, inside the plan's gap.
    pub priority: u32,
}

/// Chooses the priority of every pin the plan creates, against the listener it was planned
/// on: each pin takes the gap's highest priority that is free now, so that it can be created
/// before the rules the plan deletes go (a pin being replaced is never missing in between);
/// only when none is free does it take one those deletions free (the catch-all its reserved
/// top slot).
///
/// Errors: [`PinError::NoFreePriority`] before anything is changed when the gap is full.
pub fn place(plan: &PinPlan, rules: &[ListenerRule]) -> Result<Vec<PlacedPin>, PinError> {
    let mut taken_now = taken_priorities(rules);
    let mut taken_after = taken_now.clone();
    for arn in &plan.delete {
        if let Some(p) = priority_of(rules, arn).and_then(|p| p.number()) {
            taken_after.remove(&p);
        }
    }
    plan.create
        .iter()
        .map(|spec| {
            let priority = plan
                .gap
                .priority_for(spec, &taken_now)
                .or_else(|| plan.gap.priority_for(spec, &taken_after))
                .ok_or_else(|| plan.gap.exhausted(&spec.deployment_id))?;
            taken_now.insert(priority);
            taken_after.insert(priority);
            Ok(PlacedPin {
                spec: spec.clone(),
                priority,
            })
        })
        .collect()
}

/// The priorities of the rules the plan deletes, as the listener it was planned on shows them.
pub fn freed_priorities(plan: &PinPlan, rules: &[ListenerRule]) -> Vec<u32> {
    plan.delete
        .iter()
        .filter_map(|arn| priority_of(rules, arn).and_then(|p| p.number()))
        .collect()
}

/// The version production runs now: the most recently live entry.
pub fn production_version(entries: &[LedgerEntry]) -> Option<&DeploymentId> {
    entries
        .iter()
        .filter(|e| e.status == crate::ledger::Status::Live)
        .max_by_key(|e| e.live_at)
        .map(|e| &e.deployment_id)
}

/// Priorities in use on the listener.
pub fn taken_priorities(rules: &[ListenerRule]) -> BTreeSet<u32> {
    rules.iter().filter_map(|r| r.priority.number()).collect()
}

/// A rule's priority, for display.
pub fn priority_of(rules: &[ListenerRule], arn: &str) -> Option<Priority> {
    rules.iter().find(|r| r.arn == arn).map(|r| r.priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{RunningVersion, ServiceWiring, Status};
    use crate::listener::{Request, WeightedTarget, route};
    use crate::settings::EnvDefaults;
    use serde_json::{Map, json};
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:1:service/c/web";

    fn settings(details: serde_json::Value) -> Settings {
        let map: Map<String, serde_json::Value> = details.as_object().unwrap().clone();
        Settings::resolve(&map, &EnvDefaults::default()).unwrap()
    }

    fn forward(targets: &[(&str, u32)]) -> RuleAction {
        RuleAction::Forward(
            targets
                .iter()
                .map(|(tg, w)| WeightedTarget {
                    target_group_arn: (*tg).to_owned(),
                    weight: *w,
                })
                .collect(),
        )
    }

    fn rule(
        arn: &str,
        priority: Priority,
        conditions: Vec<Condition>,
        action: RuleAction,
    ) -> ListenerRule {
        ListenerRule {
            arn: arn.into(),
            priority,
            conditions,
            action,
            uncopyable: vec![],
        }
    }

    fn entry(d: &str, tg: &str, status: Status) -> LedgerEntry {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse(d).unwrap(),
            service_revision_arn: format!("rev-{d}"),
            target_group_arn: tg.into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "prod".into(),
        };
        LedgerEntry::new(
            SVC,
            &running,
            &wiring,
            status,
            datetime!(2026-01-01 0:00 UTC),
        )
    }

    /// A listener shared with another service: a test rule, another service's rule, our production rule.
    fn listener() -> Vec<ListenerRule> {
        vec![
            rule(
                "other",
                Priority::Number(10),
                vec![Condition::PathPattern(vec!["/admin/*".into()])],
                forward(&[("tg-admin", 1)]),
            ),
            rule(
                "test",
                Priority::Number(90),
                vec![
                    Condition::PathPattern(vec!["/api/*".into()]),
                    Condition::HttpHeader {
                        name: "X-Test".into(),
                        values: vec!["1".into()],
                    },
                ],
                forward(&[("tg1", 0), ("tg2", 1)]),
            ),
            rule(
                "prod",
                Priority::Number(100),
                vec![Condition::PathPattern(vec!["/api/*".into()])],
                forward(&[("tg1", 1), ("tg2", 0)]),
            ),
            rule(
                "default",
                Priority::Default,
                vec![],
                forward(&[("tg-default", 1)]),
            ),
        ]
    }

    fn prod(rules: &[ListenerRule]) -> ListenerRule {
        rules.iter().find(|r| r.arn == "prod").unwrap().clone()
    }

    #[test]
    fn pins_copy_the_production_conditions_and_add_the_pin_condition() {
        let rules = listener();
        let specs = pin_specs(
            &DeploymentId::parse("abc").unwrap(),
            "tg1",
            &prod(&rules),
            &settings(json!({})),
        )
        .unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(
            specs[0].conditions,
            vec![
                Condition::PathPattern(vec!["/api/*".into()]),
                Condition::HttpHeader {
                    name: "X-Deployment-ID".into(),
                    values: vec!["abc".into()]
                }
            ]
        );
        let all = pin_specs(
            &DeploymentId::parse("abc").unwrap(),
            "tg1",
            &prod(&rules),
            &settings(json!({"queryParam": "dpl", "cookieName": "__dpl"})),
        )
        .unwrap();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn a_cookie_pin_matches_its_id_exactly_and_nothing_longer() {
        let rules = listener();
        let specs = pin_specs(
            &DeploymentId::parse("abc").unwrap(),
            "tg1",
            &prod(&rules),
            &settings(json!({"cookieName": "dpl"})),
        )
        .unwrap();
        let cookie_rules: Vec<ListenerRule> = specs[1..]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                rule(
                    &format!("c{i}"),
                    Priority::Number(i as u32 + 1),
                    s.conditions.clone(),
                    forward(&[("tg1", 1)]),
                )
            })
            .collect();
        let hit = |cookie: &str| {
            let req = Request::get("/api/cart").with_header("Cookie", cookie);
            cookie_rules.iter().any(|r| r.matches(&req))
        };
        assert!(hit("dpl=abc"));
        assert!(hit("dpl=abc; theme=dark"));
        assert!(hit("theme=dark; dpl=abc"));
        assert!(hit("a=1; dpl=ABC; b=2"));
        assert!(!hit("dpl=abcd"));
        assert!(!hit("xdpl=abc"));
        assert!(!hit("a=1; dpl=abcd; b=2"));
        assert!(!hit("a=1; mydpl=abc"));
    }

    #[test]
    fn uncopyable_production_rules_are_refused() {
        let mut p = prod(&listener());
        p.uncopyable
            .push("1 actions before the final one (e.g. authentication)".into());
        let err = pin_specs(
            &DeploymentId::parse("abc").unwrap(),
            "tg1",
            &p,
            &settings(json!({})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
    }

    #[test]
    fn quotas_are_checked_before_asking_aws() {
        let mut p = prod(&listener());
        p.conditions = vec![
            Condition::HostHeader(vec![
                "a.example.com".into(),
                "*.b.example.com".into(),
                "*.c.example.com".into(),
            ]),
            Condition::PathPattern(vec!["/api/*".into(), "/v2/*".into()]),
        ];
        let err = pin_specs(
            &DeploymentId::parse("abc").unwrap(),
            "tg1",
            &p,
            &settings(json!({})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("match evaluations"), "{err}");
        let long = DeploymentId::parse(&"a".repeat(125)).unwrap();
        let err = pin_specs(
            &long,
            "tg1",
            &prod(&listener()),
            &settings(json!({"cookieName": "dpl"})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("characters"), "{err}");
    }

    #[test]
    fn the_gap_lies_between_the_last_other_rule_and_the_production_rule() {
        let rules = listener();
        let g = gap(&prod(&rules), &rules, &[], None, false);
        assert_eq!((g.above, g.below), (90, 100));
        assert_eq!(g.free_priority(&taken_priorities(&rules)), Some(99));
        let limited = Gap {
            range: Some(PriorityRange { low: 1, high: 95 }),
            ..g
        };
        assert_eq!(limited.free_priority(&taken_priorities(&rules)), Some(95));
        let full = Gap { above: 99, ..g };
        assert_eq!(full.free_priority(&taken_priorities(&rules)), None);
        let msg = full
            .exhausted(&DeploymentId::parse("abc").unwrap())
            .to_string();
        assert!(
            msg.contains("between priority 99") && msg.contains("100"),
            "{msg}"
        );
    }

    #[test]
    fn a_default_production_rule_puts_pins_after_every_rule() {
        let rules = listener();
        let default = rules.iter().find(|r| r.is_default()).unwrap().clone();
        let g = gap(&default, &rules, &[], None, false);
        assert_eq!(g.above, 100);
        assert_eq!(
            g.free_priority(&taken_priorities(&rules)),
            Some(MAX_PRIORITY)
        );
    }

    #[test]
    fn plan_creates_missing_pins_keeps_good_ones_and_deletes_stale_ones() {
        let mut rules = listener();
        let s = settings(json!({}));
        let live = entry("aaa", "tg1", Status::Live);
        let retired = {
            let mut e = entry("old", "tg2", Status::Retired);
            e.rule_arns = vec!["pin-old".into()];
            e
        };
        let p = prod(&rules);
        // An existing, correct pin for aaa recorded in the ledger, and a stale one for old.
        let good = pin_specs(&live.deployment_id, "tg1", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "pin-aaa",
            Priority::Number(99),
            good.conditions.clone(),
            forward(&[("tg1", 1)]),
        ));
        let stale = pin_specs(&retired.deployment_id, "tg2", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "pin-old",
            Priority::Number(98),
            stale.conditions,
            forward(&[("tg2", 1)]),
        ));
        let mut live = live;
        live.rule_arns = vec!["pin-aaa".into()];

        let mut green = entry("bbb", "tg2", Status::Testing);
        green.shifted_at = Some(datetime!(2026-01-01 0:00 UTC));
        let entries = vec![live, retired, green];
        let plan = plan(SVC, &entries, &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(
            plan.keep[&DeploymentId::parse("aaa").unwrap()],
            vec!["pin-aaa".to_owned()]
        );
        assert_eq!(plan.delete, vec!["pin-old".to_owned()]);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].deployment_id.as_str(), "bbb");
        assert_eq!(plan.create[0].target_group_arn(), Some("tg2"));
    }

    #[test]
    fn a_starting_retention_copy_joins_the_pin_at_weight_0_then_takes_it_alone() {
        use crate::ledger::RetainedCopy;
        let mut rules = listener();
        let s = settings(json!({}));
        let p = prod(&rules);
        let mut blue = entry("aaa", "tg1", Status::Draining);
        let plain = pin_specs(&blue.deployment_id, "tg1", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "pin-blue",
            Priority::Number(99),
            plain.conditions.clone(),
            forward(&[("tg1", 1)]),
        ));
        blue.rule_arns = vec!["pin-blue".into()];
        let t = datetime!(2026-01-01 0:00 UTC);
        let mut copy = RetainedCopy {
            service_name: "web-sg-aaa".into(),
            service_arn: None,
            target_group_name: "sg-0123456789abcdef".into(),
            target_group_arn: None,
            tasks: 1,
            started_at: t,
            healthy_at: None,
            left_production_at: t,
            retain_until: None,
            idle_checks: 0,
            cluster_arn: "c".into(),
        };
        // Recorded before it exists: no ARN yet, the pin stays as it is.
        blue.retention = Some(copy.clone());
        let unchanged = plan(SVC, &[blue.clone()], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert!(unchanged.is_noop(), "{unchanged:?}");
        // Created: the pin forwards to blue and to the copy at weight 0.
        copy.target_group_arn = Some("tg-ret".into());
        blue.retention = Some(copy.clone());
        let joined = plan(SVC, &[blue.clone()], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(joined.delete, vec!["pin-blue".to_owned()]);
        assert_eq!(joined.create.len(), 1);
        assert_eq!(
            joined.create[0].action,
            forward(&[("tg1", 1), ("tg-ret", 0)])
        );
        // That rule on the listener is what the plan wants: kept, by the reconciler too.
        rules.retain(|r| r.arn != "pin-blue");
        rules.push(rule(
            "pin-both",
            Priority::Number(99),
            plain.conditions.clone(),
            forward(&[("tg1", 1), ("tg-ret", 0)]),
        ));
        blue.rule_arns = vec!["pin-both".into()];
        let kept = plan(SVC, &[blue.clone()], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert!(kept.is_noop(), "{kept:?}");
        // A weight the other way round is not the same forward.
        let mut flipped = rules.clone();
        flipped.last_mut().unwrap().action = forward(&[("tg1", 0), ("tg-ret", 1)]);
        let fixed = plan(SVC, &[blue.clone()], &flipped, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(fixed.delete, vec!["pin-both".to_owned()]);
        // Retained: the pin forwards to the copy alone.
        blue.status = Status::Retained;
        blue.target_group_arn = "tg-ret".into();
        let moved = plan(SVC, &[blue], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(moved.delete, vec!["pin-both".to_owned()]);
        assert_eq!(moved.create[0].action, forward(&[("tg-ret", 1)]));
    }

    #[test]
    fn a_pin_pointing_at_the_wrong_target_group_is_replaced() {
        let mut rules = listener();
        let s = settings(json!({}));
        let p = prod(&rules);
        let mut live = entry("aaa", "tg1", Status::Live);
        let spec = pin_specs(&live.deployment_id, "tg1", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "pin-wrong",
            Priority::Number(99),
            spec.conditions,
            forward(&[("tg2", 1)]),
        ));
        live.rule_arns = vec!["pin-wrong".into()];
        let plan = plan(SVC, &[live], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(plan.delete, vec!["pin-wrong".to_owned()]);
        assert_eq!(plan.create.len(), 1);
    }

    #[test]
    fn tagged_orphans_are_adopted_and_other_services_rules_are_left_alone() {
        let mut rules = listener();
        let s = settings(json!({}));
        let p = prod(&rules);
        let live = entry("aaa", "tg1", Status::Live);
        let spec = pin_specs(&live.deployment_id, "tg1", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "orphan",
            Priority::Number(99),
            spec.conditions.clone(),
            forward(&[("tg1", 1)]),
        ));
        rules.push(rule(
            "theirs",
            Priority::Number(9),
            spec.conditions,
            forward(&[("tg-admin", 1)]),
        ));
        let candidates = orphan_candidates(std::slice::from_ref(&live), &rules, &p);
        assert_eq!(candidates, vec!["orphan".to_owned()]);
        let tags = BTreeMap::from([(
            "orphan".to_owned(),
            PinTags {
                service_arn: SVC.into(),
                deployment_id: "aaa".into(),
            },
        )]);
        let plan = plan(SVC, &[live], &rules, &tags, &p, &s).unwrap();
        assert!(plan.is_noop(), "{plan:?}");
        assert_eq!(
            plan.keep.values().next().unwrap(),
            &vec!["orphan".to_owned()]
        );
    }

    #[test]
    fn a_replacement_pin_takes_a_free_priority_so_it_exists_before_the_old_one_goes() {
        // Moving a pin (its targets change) must not leave its ID without a pin for a moment.
        let mut rules = listener();
        let s = settings(json!({}));
        let p = prod(&rules);
        let mut blue = entry("aaa", "tg1", Status::Live);
        let spec = pin_specs(&blue.deployment_id, "tg2", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "old",
            Priority::Number(99),
            spec.conditions,
            forward(&[("tg2", 1)]),
        ));
        blue.rule_arns = vec!["old".into()];
        let plan = plan(SVC, &[blue], &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(plan.delete, vec!["old".to_owned()]);
        let placed = place(&plan, &rules).unwrap();
        assert_eq!(placed.len(), 1);
        assert_ne!(placed[0].priority, 99, "not the slot the old pin holds");
        assert!(!freed_priorities(&plan, &rules).contains(&placed[0].priority));
    }

    #[test]
    fn a_pin_lost_while_a_retention_copy_starts_is_an_orphan_candidate_by_the_copys_name() {
        // A crash after the pin [tg1 w1, copy w0] was created and before the copy's ARN was
        // written: the ledger knows the copy by name only. The pin must be found (and its
        // tags read), or it would block its priority as if it were another service's rule.
        let mut rules = listener();
        let s = settings(json!({}));
        let p = prod(&rules);
        let mut blue = entry("aaa", "tg1", Status::Draining);
        let copy = crate::retention::new_copy(
            SVC,
            "cluster",
            &blue.deployment_id,
            1,
            1,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let copy_tg = format!(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{}/0123456789abcdef",
            copy.target_group_name
        );
        blue.retention = Some(copy);
        let spec = pin_specs(&blue.deployment_id, "tg1", &p, &s)
            .unwrap()
            .remove(0);
        rules.push(rule(
            "lost-weighted",
            Priority::Number(99),
            spec.conditions.clone(),
            forward(&[("tg1", 1), (copy_tg.as_str(), 0)]),
        ));
        rules.push(rule(
            "lost-alone",
            Priority::Number(98),
            spec.conditions.clone(),
            forward(&[(copy_tg.as_str(), 1)]),
        ));
        rules.push(rule(
            "someone-elses",
            Priority::Number(9),
            spec.conditions,
            forward(&[("tg1", 1), ("tg-other", 1)]),
        ));
        let mut candidates = orphan_candidates(std::slice::from_ref(&blue), &rules, &p);
        candidates.sort();
        assert_eq!(
            candidates,
            vec!["lost-alone".to_owned(), "lost-weighted".to_owned()]
        );
    }

    #[test]
    fn after_the_window_a_retired_id_gets_409_naming_production_and_pins_still_win() {
        let mut rules = listener();
        let s = settings(json!({"afterWindow": "retired"}));
        let p = prod(&rules);
        let mut live = entry("bbb", "tg2", Status::Live);
        live.live_at = Some(datetime!(2026-01-01 0:00 UTC));
        let retired = entry("aaa", "tg1", Status::Retired);
        let entries = vec![live, retired];
        let plan = plan(SVC, &entries, &rules, &BTreeMap::new(), &p, &s).unwrap();
        assert_eq!(
            plan.create.len(),
            2,
            "the live pin and the catch-all: {plan:?}"
        );
        assert!(plan.gap.reserve_top);
        let mut taken = taken_priorities(&rules);
        for spec in &plan.create {
            let priority = if spec.is_catch_all() {
                plan.gap.top()
            } else {
                plan.gap.free_priority(&taken).unwrap()
            };
            taken.insert(priority);
            rules.push(rule(
                &format!("r{priority}"),
                Priority::Number(priority),
                spec.conditions.clone(),
                spec.action.clone(),
            ));
        }
        let retired_answer = route(
            &rules,
            &Request::get("/api/x").with_header("X-Deployment-ID", "aaa"),
        )
        .unwrap();
        match &retired_answer.action {
            RuleAction::FixedResponse {
                status_code, body, ..
            } => {
                assert_eq!(*status_code, 409);
                assert!(
                    body.as_deref()
                        .unwrap()
                        .contains("\"currentDeploymentId\":\"bbb\"")
                );
            }
            other => panic!("expected the retired answer, got {other:?}"),
        }
        let pinned = route(
            &rules,
            &Request::get("/api/x").with_header("X-Deployment-ID", "BBB"),
        )
        .unwrap();
        assert_eq!(pinned.live_targets(), vec!["tg2"]);
        let unpinned = route(&rules, &Request::get("/api/x")).unwrap();
        assert_eq!(unpinned.arn, "prod");
        let elsewhere = route(
            &rules,
            &Request::get("/admin/x").with_header("X-Deployment-ID", "aaa"),
        )
        .unwrap();
        assert_eq!(elsewhere.arn, "other");
        // Applied, the plan is a no-op the next time.
        let mut entries = entries;
        entries[0].rule_arns = rules
            .iter()
            .filter(|r| r.arn.starts_with('r'))
            .map(|r| r.arn.clone())
            .collect();
        let again = plan_for(&entries, &rules, &s);
        assert!(again.is_noop(), "{again:?}");
    }

    fn plan_for(entries: &[LedgerEntry], rules: &[ListenerRule], s: &Settings) -> PinPlan {
        let p = prod(rules);
        plan(SVC, entries, rules, &BTreeMap::new(), &p, s).unwrap()
    }

    #[test]
    fn a_pin_only_reroutes_requests_bound_for_its_own_production_rule() {
        let mut rules = listener();
        let s = settings(json!({"queryParam": "dpl"}));
        let p = prod(&rules);
        let g = gap(&p, &rules, &[], None, false);
        let mut taken = taken_priorities(&rules);
        for spec in pin_specs(&DeploymentId::parse("abc").unwrap(), "tg2", &p, &s).unwrap() {
            let priority = g.free_priority(&taken).unwrap();
            taken.insert(priority);
            rules.push(rule(
                &format!("pin{priority}"),
                Priority::Number(priority),
                spec.conditions,
                forward(&[("tg2", 1)]),
            ));
        }
        let before = listener();
        let requests = [
            Request::get("/admin/x").with_header("X-Deployment-ID", "abc"),
            Request::get("/api/x")
                .with_header("X-Test", "1")
                .with_header("X-Deployment-ID", "abc"),
            Request::get("/other").with_header("X-Deployment-ID", "abc"),
            Request::get("/other").with_query("dpl", "abc"),
            Request::get("/api/x"),
            Request::get("/api/x").with_header("X-Deployment-ID", "abcd"),
        ];
        for req in &requests {
            assert_eq!(
                route(&rules, req).unwrap().arn,
                route(&before, req).unwrap().arn,
                "{req:?}"
            );
        }
        for req in [
            Request::get("/api/x").with_header("X-Deployment-ID", "ABC"),
            Request::get("/api/x").with_query("dpl", "abc"),
        ] {
            assert_eq!(
                route(&rules, &req).unwrap().live_targets(),
                vec!["tg2"],
                "{req:?}"
            );
        }
    }
}
