//! The safety invariants skewguard promises, checked against what the stand-ins actually hold:
//! the listener's rules and tags in moto and the ledger in DynamoDB.

use std::collections::{BTreeMap, BTreeSet};

use skewguard_core::DeploymentId;
use skewguard_core::aws::elb::Elb;
use skewguard_core::aws::ledger_store::LedgerStore;
use skewguard_core::ledger::{HistoryRecord, LedgerEntry};
use skewguard_core::listener::{ListenerRule, Request, route};
use skewguard_core::pins::PinTags;

/// One service on the listener, and what the world knows runs where.
#[derive(Debug, Clone)]
pub struct ServiceTruth {
    pub service_arn: String,
    pub production_rule_arn: String,
    /// A request that reaches this service's production rule (before any pin header).
    pub probe: Request,
    /// Target group → the deployment ID its tasks run. A target group with no tasks is absent.
    pub running: BTreeMap<String, DeploymentId>,
    /// Deployment IDs that must be reachable through a pin right now (invariant 2).
    pub must_be_pinned: Vec<DeploymentId>,
    /// The names of the active retention services skewguard started for this service
    /// (invariant 7).
    pub retention_services: Vec<String>,
}

/// Everything observed at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    pub rules: Vec<ListenerRule>,
    pub tags: BTreeMap<String, PinTags>,
    pub ledgers: BTreeMap<String, Vec<LedgerEntry>>,
    pub histories: BTreeMap<(String, String), Vec<HistoryRecord>>,
}

impl Observation {
    pub async fn take(
        elb: &Elb,
        ledger: &LedgerStore,
        listener_arn: &str,
        services: &[&str],
    ) -> Result<Observation, String> {
        let rules = elb
            .describe_listener_rules(listener_arn)
            .await
            .map_err(|e| e.to_string())?;
        let arns: Vec<String> = rules
            .iter()
            .filter(|r| !r.is_default())
            .map(|r| r.arn.clone())
            .collect();
        let tags = elb
            .describe_pin_tags(&arns)
            .await
            .map_err(|e| e.to_string())?;
        let mut ledgers = BTreeMap::new();
        let mut histories = BTreeMap::new();
        for service in services {
            let entries = ledger
                .load_with_archive(service)
                .await
                .map_err(|e| e.to_string())?;
            for entry in &entries {
                let history = ledger
                    .history(service, &entry.deployment_id)
                    .await
                    .map_err(|e| e.to_string())?;
                histories.insert(
                    ((*service).to_owned(), entry.deployment_id.to_string()),
                    history,
                );
            }
            ledgers.insert((*service).to_owned(), entries);
        }
        Ok(Observation {
            rules,
            tags,
            ledgers,
            histories,
        })
    }

    pub fn entry(&self, service: &str, id: &str) -> Option<&LedgerEntry> {
        self.ledgers
            .get(service)?
            .iter()
            .find(|e| e.deployment_id.as_str() == id)
    }

    /// The rules skewguard made (tagged), by ARN.
    pub fn pins(&self) -> Vec<(&ListenerRule, &PinTags)> {
        self.rules
            .iter()
            .filter_map(|r| self.tags.get(&r.arn).map(|t| (r, t)))
            .collect()
    }

    /// Pins of one service for one deployment.
    pub fn pins_of(&self, service: &str, id: &str) -> Vec<&ListenerRule> {
        self.pins()
            .into_iter()
            .filter(|(_, t)| t.service_arn == service && t.deployment_id == id)
            .map(|(r, _)| r)
            .collect()
    }
}

/// Checks every invariant; returns the violations, each a sentence. `previous` enables the
/// history check (invariant 5).
pub fn violations(
    now: &Observation,
    previous: Option<&Observation>,
    truth: &[ServiceTruth],
) -> Vec<String> {
    let mut found = Vec::new();
    let by_service: BTreeMap<&str, &ServiceTruth> =
        truth.iter().map(|t| (t.service_arn.as_str(), t)).collect();

    // 1. A pin for D forwards only to the target group currently running D (a retention
    //    copy's target group runs D too: its tasks are D's).
    // 3. No pin for D survives D's scale-down (a scaled-down group runs nothing).
    for (rule, tags) in now.pins() {
        let Some(service) = by_service.get(tags.service_arn.as_str()) else {
            found.push(format!(
                "rule {} is tagged for unknown service {}",
                rule.arn, tags.service_arn
            ));
            continue;
        };
        let live = rule.live_targets();
        for tg in rule.forward_targets() {
            if !live.contains(&tg) {
                // Weight 0 sends nothing (a retention copy's target group while it starts):
                // it may run nothing yet, but never another version.
                if let Some(id) = service.running.get(tg)
                    && id.as_str() != tags.deployment_id
                {
                    found.push(format!(
                        "invariant 1: pin {} for {} forwards (at weight 0) to {} which runs {}",
                        rule.arn, tags.deployment_id, tg, id
                    ));
                }
                continue;
            }
            match service.running.get(tg) {
                Some(id) if id.as_str() == tags.deployment_id => {}
                Some(id) => found.push(format!(
                    "invariant 1: pin {} for {} forwards to {} which runs {}",
                    rule.arn, tags.deployment_id, tg, id
                )),
                None => found.push(format!(
                    "invariant 3: pin {} for {} forwards to {} which runs nothing",
                    rule.arn, tags.deployment_id, tg
                )),
            }
        }
    }

    // 2. The versions that must be pinned are reachable with their ID, and only them.
    for service in truth {
        for id in &service.must_be_pinned {
            let request = service
                .probe
                .clone()
                .with_header("X-Deployment-ID", id.as_str());
            let reached = route(&now.rules, &request)
                .map(|r| r.live_targets())
                .unwrap_or_default();
            let ok = !reached.is_empty()
                && reached
                    .iter()
                    .all(|tg| service.running.get(*tg) == Some(id))
                && now
                    .pins_of(&service.service_arn, id.as_str())
                    .iter()
                    .any(|r| r.matches(&request));
            if !ok {
                found.push(format!(
                    "invariant 2: {} of {} is not reached through its pin (request reaches {:?})",
                    id, service.service_arn, reached
                ));
            }
        }
    }

    // 4. Every tagged rule is in its ledger entry, and every ledger rule exists and is tagged.
    let existing: BTreeSet<&str> = now.rules.iter().map(|r| r.arn.as_str()).collect();
    for (rule, tags) in now.pins() {
        let listed = now
            .entry(&tags.service_arn, &tags.deployment_id)
            .is_some_and(|e| e.rule_arns.contains(&rule.arn));
        if !listed {
            found.push(format!(
                "invariant 4: tagged rule {} ({}) is not listed in the ledger",
                rule.arn, tags.deployment_id
            ));
        }
    }
    for (service, entries) in &now.ledgers {
        for entry in entries {
            for arn in &entry.rule_arns {
                if !existing.contains(arn.as_str()) {
                    found.push(format!(
                        "invariant 4: ledger lists rule {arn} for {} of {service}, but it is not on the listener",
                        entry.deployment_id
                    ));
                } else if !now.tags.contains_key(arn) {
                    found.push(format!(
                        "invariant 4: rule {arn} is in the ledger but untagged"
                    ));
                }
            }
        }
    }

    // 5. The ledger history only grows.
    if let Some(previous) = previous {
        for (key, before) in &previous.histories {
            match now.histories.get(key) {
                None => found.push(format!("invariant 5: ledger entry {key:?} disappeared")),
                Some(after)
                    if after.len() < before.len() || after[..before.len()] != before[..] =>
                {
                    found.push(format!("invariant 5: history of {key:?} was rewritten"))
                }
                Some(_) => {}
            }
        }
    }

    // 7. No retention service runs without a ledger entry of its service naming it (it is
    //    recorded before it is created, and forgotten only once deleted).
    for service in truth {
        let entries = now.ledgers.get(&service.service_arn);
        for name in &service.retention_services {
            let recorded = entries.into_iter().flatten().any(|e| {
                e.retention
                    .as_ref()
                    .is_some_and(|copy| &copy.service_name == name)
            });
            if !recorded {
                found.push(format!(
                    "invariant 7: retention service {name} of {} runs without a ledger entry naming it",
                    service.service_arn
                ));
            }
        }
    }

    // 6. A pin only changes the destination of requests bound for its own production rule.
    let without_pins: Vec<ListenerRule> = now
        .rules
        .iter()
        .filter(|r| !now.tags.contains_key(&r.arn))
        .cloned()
        .collect();
    let ids: BTreeSet<String> = now
        .pins()
        .iter()
        .map(|(_, t)| t.deployment_id.clone())
        .chain(
            truth
                .iter()
                .flat_map(|t| t.running.values().map(|d| d.to_string())),
        )
        .collect();
    for probe in truth
        .iter()
        .map(|t| &t.probe)
        .chain(std::iter::once(&Request::get("/elsewhere")))
    {
        for id in &ids {
            for request in [
                probe.clone().with_header("X-Deployment-ID", id),
                probe.clone().with_query("dpl", id),
                probe.clone(),
            ] {
                let with = route(&now.rules, &request);
                let plain = route(&without_pins, &request);
                if with.map(|r| &r.arn) == plain.map(|r| &r.arn) {
                    continue;
                }
                let pin_service = with
                    .and_then(|r| now.tags.get(&r.arn))
                    .map(|t| t.service_arn.as_str());
                let own_rule = pin_service
                    .and_then(|s| by_service.get(s))
                    .map(|t| t.production_rule_arn.as_str());
                if plain.map(|r| r.arn.as_str()) != own_rule {
                    found.push(format!(
                        "invariant 6: {request:?} would reach {:?} but a pin of {:?} takes it",
                        plain.map(|r| &r.arn),
                        pin_service
                    ));
                }
            }
        }
    }
    found
}
