//! `skewguard doctor`: reads a service, its listener and load balancer, the ledger table and
//! (with `--simulate-iam`) the functions' roles, and reports every problem that would stop
//! skewguard from protecting its deployments, each with the fix.
//!
//! The checks are plain functions over what was read ([`ServiceFacts`], the listener's rules),
//! so that each can be shown failing on its own; `run` only reads and puts them together.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use skewguard_core::DeploymentId;
use skewguard_core::aws::DisplayErrorContext;
use skewguard_core::aws::ecs::{
    ConfiguredLoadBalancer, cluster_of_service, configured_load_balancer, deployment_id_of,
    document_to_json,
};
use skewguard_core::hook::HookFunction;
use skewguard_core::listener::{ListenerRule, RuleAction, listener_arn_of_rule};
use skewguard_core::pins::{self, PinTags, RETIRED_STATUS};
use skewguard_core::settings::{
    AfterWindow, DeploymentIdSource, EnvDefaults, HOOK_TIMEOUT_MARGIN_POLLS, MAX_PRIORITY, Settings,
};

use super::{cluster_and_name, name_of};
use crate::render::{EMPHASIS, FAILURE, PLAIN, SUCCESS, Table, WARNING, paint};
use crate::{CliError, Context};

/// What each function may call, and on what: `infra/aws-operations.yaml`, which the infra
/// checks hold against the code and the templates.
const AWS_OPERATIONS: &str = include_str!("../../../infra/aws-operations.yaml");

/// ECS's default (and longest) lifecycle hook timeout, when `timeoutConfiguration` is unset.
const DEFAULT_HOOK_TIMEOUT_MINUTES: i32 = 1440;

/// How many versions of a service can be pinned at once: the one a hold keeps, production, and
/// a superseding deployment's green.
pub const LIVE_VERSIONS: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARN or `cluster/service`.
    pub service: String,
    /// Also ask IAM whether each function's role may make every call it needs
    /// (`iam:SimulatePrincipalPolicy`; the roles are read with `lambda:GetFunction`).
    #[arg(long)]
    pub simulate_iam: bool,
    /// The post-test-traffic function's name (the SAM stack's: STACK-post-test-traffic).
    #[arg(long, default_value = "skewguard-post-test-traffic")]
    pub post_test_traffic_function: String,
    /// The production-shift function's name.
    #[arg(long, default_value = "skewguard-production-shift")]
    pub production_shift_function: String,
    /// The post-shift function's name.
    #[arg(long, default_value = "skewguard-post-shift")]
    pub post_shift_function: String,
    /// The reconciler function's name (only for `--simulate-iam`).
    #[arg(long, default_value = "skewguard-reconciler")]
    pub reconciler_function: String,
    /// The account's quota of rules per Application Load Balancer.
    #[arg(long, default_value_t = 100)]
    pub rules_quota: usize,
    /// The account's quota of target groups per Application Load Balancer.
    #[arg(long, default_value_t = 100)]
    pub target_groups_quota: usize,
}

impl Args {
    /// The hook functions and the names they are deployed under.
    fn hook_functions(&self) -> [(HookFunction, &str); 3] {
        [
            (
                HookFunction::PostTestTraffic,
                self.post_test_traffic_function.as_str(),
            ),
            (
                HookFunction::ProductionShift,
                self.production_shift_function.as_str(),
            ),
            (HookFunction::PostShift, self.post_shift_function.as_str()),
        ]
    }

    /// Every function and its name, as `infra/aws-operations.yaml` names them.
    fn all_functions(&self) -> [(&'static str, &str); 4] {
        [
            (
                "post-test-traffic",
                self.post_test_traffic_function.as_str(),
            ),
            ("production-shift", self.production_shift_function.as_str()),
            ("post-shift", self.post_shift_function.as_str()),
            ("reconciler", self.reconciler_function.as_str()),
        ]
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warning,
    Error,
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub check: String,
    pub result: Verdict,
    pub message: String,
    /// What to change; always set unless the result is ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, message: impl Into<String>) -> Self {
        Self {
            check: check.to_owned(),
            result: Verdict::Ok,
            message: message.into(),
            fix: None,
        }
    }

    fn error(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.to_owned(),
            result: Verdict::Error,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    fn warning(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.to_owned(),
            result: Verdict::Warning,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that could not run because an earlier one failed.
    fn not_checked(check: &str, because: &str) -> Self {
        Self::warning(
            check,
            format!("not checked: {because}"),
            "fix the errors above, then run skewguard doctor again",
        )
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoctorReport {
    pub service_arn: String,
    pub checks: Vec<Finding>,
    pub errors: usize,
    pub warnings: usize,
}

impl DoctorReport {
    pub fn of(service_arn: &str, checks: Vec<Finding>) -> Self {
        let count = |v| checks.iter().filter(|c| c.result == v).count();
        Self {
            service_arn: service_arn.to_owned(),
            errors: count(Verdict::Error),
            warnings: count(Verdict::Warning),
            checks,
        }
    }

    pub fn failed(&self) -> bool {
        self.errors > 0
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{}  {}\n",
            paint(name_of(&self.service_arn), EMPHASIS),
            self.service_arn
        );
        let mut t = Table::new(&["CHECK", "RESULT", "FINDING"]);
        for c in &self.checks {
            let (word, style) = match c.result {
                Verdict::Ok => ("ok", SUCCESS),
                Verdict::Warning => ("warning", WARNING),
                Verdict::Error => ("error", FAILURE),
            };
            t.row(vec![
                (c.check.clone(), PLAIN),
                (word.to_owned(), style),
                (c.message.clone(), PLAIN),
            ]);
        }
        out.push_str(&t.render());
        for c in self.checks.iter().filter(|c| c.result != Verdict::Ok) {
            if let Some(fix) = &c.fix {
                out.push_str(&format!("{} {}: {fix}\n", paint("fix", EMPHASIS), c.check));
            }
        }
        out.push_str(&match (self.errors, self.warnings) {
            (0, 0) => "no problems found\n".to_owned(),
            (0, w) => format!("{w} warning(s), no errors\n"),
            (e, w) => format!("{e} error(s), {w} warning(s): fix the errors before deploying\n"),
        });
        out
    }
}

// ---------------------------------------------------------------------------------------------
// What is read

/// The service as `DescribeServices` tells it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceFacts {
    pub arn: String,
    /// `deploymentController.type`; ECS when absent.
    pub controller: Option<String>,
    /// `deploymentConfiguration.strategy`; ROLLING when absent.
    pub strategy: Option<String>,
    pub hooks: Vec<HookFacts>,
    pub task_definition: Option<String>,
    pub load_balancers: Vec<ConfiguredLoadBalancer>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookFacts {
    pub target_arn: String,
    pub stages: Vec<String>,
    /// `hookDetails` as JSON (`None` when unset).
    pub details: Option<Value>,
    pub timeout_minutes: Option<i32>,
    pub timeout_action: Option<String>,
}

impl ServiceFacts {
    fn from_sdk(s: &aws_sdk_ecs::types::Service) -> Self {
        let configuration = s.deployment_configuration();
        Self {
            arn: s.service_arn().unwrap_or_default().to_owned(),
            controller: s
                .deployment_controller()
                .map(|c| c.r#type().as_str().to_owned()),
            strategy: configuration
                .and_then(|c| c.strategy())
                .map(|s| s.as_str().to_owned()),
            hooks: configuration
                .map(|c| c.lifecycle_hooks())
                .unwrap_or_default()
                .iter()
                .map(|h| HookFacts {
                    target_arn: h.hook_target_arn().unwrap_or_default().to_owned(),
                    stages: h
                        .lifecycle_stages()
                        .iter()
                        .map(|s| s.as_str().to_owned())
                        .collect(),
                    details: h.hook_details().map(document_to_json),
                    timeout_minutes: h
                        .timeout_configuration()
                        .and_then(|t| t.timeout_in_minutes()),
                    timeout_action: h
                        .timeout_configuration()
                        .and_then(|t| t.action())
                        .map(|a| a.as_str().to_owned()),
                })
                .collect(),
            task_definition: s.task_definition().map(str::to_owned),
            load_balancers: s
                .load_balancers()
                .iter()
                .map(configured_load_balancer)
                .collect(),
        }
    }
}

/// The Lambda function name a hook target names: `…:function:NAME` or `…:function:NAME:ALIAS`.
pub fn function_name_of(target_arn: &str) -> &str {
    match target_arn.split_once(":function:") {
        Some((_, rest)) => rest.split(':').next().unwrap_or(rest),
        None => target_arn,
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

/// Check 1: ECS native blue/green: a BLUE_GREEN, LINEAR or CANARY strategy on the ECS controller.
pub fn check_strategy(service: &ServiceFacts) -> Finding {
    const CHECK: &str = "strategy";
    let controller = service.controller.as_deref().unwrap_or("ECS");
    if controller != "ECS" {
        return Finding::error(
            CHECK,
            format!(
                "the service uses the {controller} deployment controller; skewguard's lifecycle hooks run only under the ECS controller"
            ),
            "recreate the service with deploymentController type ECS (the controller cannot be changed in place) and deploymentConfiguration.strategy BLUE_GREEN",
        );
    }
    match service.strategy.as_deref() {
        Some(strategy @ ("BLUE_GREEN" | "LINEAR" | "CANARY")) => Finding::ok(
            CHECK,
            format!("{strategy} on the ECS deployment controller"),
        ),
        other => Finding::error(
            CHECK,
            format!(
                "deploymentConfiguration.strategy is {}: ECS runs lifecycle hooks and keeps two target groups only for BLUE_GREEN, LINEAR and CANARY",
                other.unwrap_or("ROLLING (unset)")
            ),
            "set deploymentConfiguration.strategy to BLUE_GREEN (or LINEAR or CANARY) with a production listener rule and an alternate target group on the load balancer",
        ),
    }
}

/// The hooks of one function: those whose target is that function.
fn hooks_of<'a>(service: &'a ServiceFacts, function_name: &str) -> Vec<&'a HookFacts> {
    service
        .hooks
        .iter()
        .filter(|h| function_name_of(&h.target_arn) == function_name)
        .collect()
}

/// Check 2: Each function registered at exactly the stages it handles.
pub fn check_hooks(service: &ServiceFacts, functions: &[(HookFunction, &str)]) -> Vec<Finding> {
    const CHECK: &str = "hooks";
    functions
        .iter()
        .map(|(function, name)| {
            let needed: Vec<&str> = function.stages().iter().map(|s| s.as_str()).collect();
            let hooks = hooks_of(service, name);
            let registered: BTreeSet<&str> = hooks
                .iter()
                .flat_map(|h| h.stages.iter().map(String::as_str))
                .collect();
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|s| !registered.contains(s))
                .collect();
            let extra: Vec<&str> = registered
                .iter()
                .copied()
                .filter(|s| !needed.contains(s))
                .collect();
            let label = format!("{} ({name})", function.name());
            let register = format!(
                "register a lifecycle hook with hookTargetArn arn:aws:lambda:REGION:ACCOUNT:function:{name} at lifecycleStages {} (see \"Register the hooks\" in the README)",
                needed.join(", ")
            );
            if hooks.is_empty() {
                return Finding::error(
                    CHECK,
                    format!("{label} is not registered on the service"),
                    format!("{register}; if the function has another name, pass --{}-function", function.name()),
                );
            }
            if !missing.is_empty() {
                return Finding::error(
                    CHECK,
                    format!("{label} is not registered at {}", missing.join(", ")),
                    format!("add {} to its lifecycleStages: {register}", missing.join(", ")),
                );
            }
            if !extra.is_empty() {
                return Finding::error(
                    CHECK,
                    format!(
                        "{label} is registered at {}, which it does not handle: it fails there and ECS rolls the deployment back",
                        extra.join(", ")
                    ),
                    format!("remove {} from its lifecycleStages", extra.join(", ")),
                );
            }
            Finding::ok(CHECK, format!("{label} at {}", needed.join(", ")))
        })
        .collect()
}

/// Check 2: The same `hookDetails` on every skewguard hook; the settings they make, if valid.
pub fn check_settings(
    service: &ServiceFacts,
    functions: &[(HookFunction, &str)],
) -> (Vec<Finding>, Option<Settings>) {
    let mut found = Vec::new();
    let mut details: Vec<(String, Map<String, Value>)> = Vec::new();
    for (function, name) in functions {
        for hook in hooks_of(service, name) {
            let map = match &hook.details {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(map)) => map.clone(),
                Some(other) => {
                    found.push(Finding::error(
                        "settings",
                        format!("{}'s hookDetails is not a JSON object: {other}", function.name()),
                        "give hookDetails as a JSON object of settings, e.g. {\"skewWindow\": \"1h\"}",
                    ));
                    return (found, None);
                }
            };
            details.push((function.name().to_owned(), map));
        }
    }
    let Some((first_name, first)) = details.first().cloned() else {
        found.push(Finding::not_checked(
            "settings",
            "no skewguard hook is registered",
        ));
        return (found, None);
    };
    let differing: Vec<&str> = details
        .iter()
        .filter(|(_, d)| *d != first)
        .map(|(n, _)| n.as_str())
        .collect();
    if differing.is_empty() {
        found.push(Finding::ok(
            "hook-details",
            format!(
                "the same on every skewguard hook: {}",
                Value::Object(first.clone())
            ),
        ));
    } else {
        found.push(Finding::error(
            "hook-details",
            format!(
                "{} has other hookDetails than {first_name} ({}): each hook would pin, hold and retire by different settings",
                differing.join(", "),
                Value::Object(first.clone())
            ),
            "give every skewguard hook the same hookDetails",
        ));
    }
    // The post-shift hook's settings decide the hold; the others' are compared above.
    let post_shift = functions
        .iter()
        .find(|(f, _)| *f == HookFunction::PostShift)
        .map(|(f, _)| f.name());
    let chosen = details
        .iter()
        .find(|(n, _)| Some(n.as_str()) == post_shift)
        .map_or(&first, |(_, d)| d);
    match Settings::resolve(chosen, &EnvDefaults::default()) {
        Ok(settings) => {
            found.push(Finding::ok("settings", describe_settings(&settings)));
            (found, Some(settings))
        }
        Err(e) => {
            found.push(Finding::error(
                "settings",
                e.to_string(),
                "correct hookDetails on every skewguard hook (see Settings in the README)",
            ));
            (found, None)
        }
    }
}

fn describe_settings(s: &Settings) -> String {
    let mut parts = vec![
        format!("skewWindow {}", humantime::format_duration(s.skew_window)),
        format!(
            "pollInterval {}",
            humantime::format_duration(s.poll_interval)
        ),
        format!("header {}", s.header_name),
    ];
    if let Some(q) = &s.query_param {
        parts.push(format!("query {q}"));
    }
    if let Some(c) = &s.cookie_name {
        parts.push(format!("cookie {c}"));
    }
    if s.after_window == AfterWindow::Retired {
        parts.push("afterWindow retired".to_owned());
    }
    parts.join(", ")
}

/// Check 3: Each hook's timeout and timeout action.
pub fn check_timeouts(
    service: &ServiceFacts,
    functions: &[(HookFunction, &str)],
    settings: &Settings,
) -> Vec<Finding> {
    const CHECK: &str = "timeout";
    let mut found = Vec::new();
    for (function, name) in functions {
        for hook in hooks_of(service, name) {
            let minutes = hook.timeout_minutes.unwrap_or(DEFAULT_HOOK_TIMEOUT_MINUTES);
            let action = hook.timeout_action.as_deref().unwrap_or("ROLLBACK");
            let who = function.name();
            let timeout = Duration::from_secs(u64::try_from(minutes.max(0)).unwrap_or(0) * 60);
            if *function == HookFunction::PostShift {
                let needed =
                    settings.skew_window + settings.poll_interval * HOOK_TIMEOUT_MARGIN_POLLS;
                let needed_minutes = needed.as_secs().div_ceil(60);
                if timeout < needed {
                    found.push(Finding::error(
                        CHECK,
                        format!(
                            "{who}: timeoutInMinutes {minutes} cannot hold the skew window: the hold needs skewWindow {} plus {HOOK_TIMEOUT_MARGIN_POLLS} poll intervals ({}), and ECS takes the timeout action ({action}) first",
                            humantime::format_duration(settings.skew_window),
                            humantime::format_duration(needed),
                        ),
                        format!(
                            "raise {who}'s timeoutConfiguration.timeoutInMinutes to at least {needed_minutes} (at most 1440), or shorten skewWindow to at most {}",
                            humantime::format_duration(timeout.saturating_sub(settings.poll_interval * HOOK_TIMEOUT_MARGIN_POLLS))
                        ),
                    ));
                    continue;
                }
                if action == "CONTINUE" {
                    found.push(Finding::error(
                        CHECK,
                        format!("{who}: timeout action CONTINUE lets ECS go on and scale the old version down while its pin is still in place"),
                        format!("set {who}'s timeoutConfiguration.action to ROLLBACK"),
                    ));
                    continue;
                }
                if let Some(told) = settings.hook_timeout
                    && told != timeout
                {
                    found.push(Finding::warning(
                        CHECK,
                        format!(
                            "{who}: hookTimeout says {} but timeoutInMinutes is {minutes}",
                            humantime::format_duration(told)
                        ),
                        format!("set hookTimeout to {minutes}m, so that settings are checked against the timeout ECS applies"),
                    ));
                    continue;
                }
                found.push(Finding::ok(
                    CHECK,
                    format!(
                        "{who}: {minutes} min ({action}) holds the skew window ({needed_minutes} min needed)"
                    ),
                ));
            } else if action == "CONTINUE" {
                found.push(Finding::warning(
                    CHECK,
                    format!("{who}: timeout action CONTINUE lets the deployment go on without the pins this hook places or removes"),
                    format!("set {who}'s timeoutConfiguration.action to ROLLBACK"),
                ));
            } else {
                found.push(Finding::ok(
                    CHECK,
                    format!("{who}: {minutes} min ({action})"),
                ));
            }
        }
    }
    found
}

/// The production listener rule of the service's load balancer.
pub fn production_rule_of(service: &ServiceFacts) -> Result<String, Finding> {
    const CHECK: &str = "listener";
    let rules: BTreeSet<&str> = service
        .load_balancers
        .iter()
        .filter_map(|lb| lb.production_rule_arn.as_deref())
        .collect();
    let rules: Vec<&str> = rules.into_iter().collect();
    match rules.as_slice() {
        [] => Err(Finding::error(
            CHECK,
            "the service has no load balancer with advancedConfiguration.productionListenerRule",
            "give the service's load balancer an advancedConfiguration with productionListenerRule, alternateTargetGroupArn and roleArn (ECS blue/green behind an Application Load Balancer)",
        )),
        [one] if one.contains(":listener/net/") || one.contains(":listener-rule/net/") => {
            Err(Finding::error(
                CHECK,
                format!(
                    "the production listener {one} is a Network Load Balancer's: it has no rules to pin on"
                ),
                "put the service behind an Application Load Balancer",
            ))
        }
        [one] => Ok((*one).to_owned()),
        [first, second, ..] => Err(Finding::error(
            CHECK,
            format!(
                "the service is behind more than one load balancer (production rules {first} and {second}); skewguard pins on one"
            ),
            "put the service behind one Application Load Balancer, or run one service per load balancer",
        )),
    }
}

/// The rules of the listener that are skewguard's: tagged by it, or recorded in the ledger.
#[derive(Debug, Clone, Default)]
pub struct ListenerFacts {
    pub listener_arn: String,
    pub production_rule_arn: String,
    pub rules: Vec<ListenerRule>,
    /// skewguard's tags, by rule ARN (any service's).
    pub tags: BTreeMap<String, PinTags>,
    /// Rule ARNs this service's ledger entries record.
    pub recorded: BTreeSet<String>,
}

impl ListenerFacts {
    fn own(&self, service_arn: &str) -> Vec<&ListenerRule> {
        self.rules
            .iter()
            .filter(|r| !r.is_default() && r.arn != self.production_rule_arn)
            .filter(|r| {
                self.recorded.contains(&r.arn)
                    || self
                        .tags
                        .get(&r.arn)
                        .is_some_and(|t| t.service_arn == service_arn)
            })
            .collect()
    }

    fn production_rule(&self) -> Option<&ListenerRule> {
        self.rules
            .iter()
            .find(|r| r.arn == self.production_rule_arn)
    }
}

/// How many rules this service's pins may take at once under these settings.
pub fn pins_needed(
    production_rule: &ListenerRule,
    settings: &Settings,
    sample: &DeploymentId,
) -> Result<(usize, usize), pins::PinError> {
    let per_version = pins::pin_specs(sample, "target-group", production_rule, settings)?.len();
    let catch_all = match settings.after_window {
        AfterWindow::Retired => {
            pins::retired_spec(sample, production_rule, settings)?;
            1
        }
        AfterWindow::Fallthrough => 0,
    };
    Ok((per_version, catch_all))
}

/// Check 4: Free priorities ahead of the production rule for every pin the settings need.
pub fn check_pin_room(
    service_arn: &str,
    listener: &ListenerFacts,
    settings: &Settings,
    sample: &DeploymentId,
) -> Finding {
    const CHECK: &str = "pin-room";
    let Some(production) = listener.production_rule() else {
        return Finding::error(
            CHECK,
            format!(
                "the production rule {} is not on listener {}",
                listener.production_rule_arn, listener.listener_arn
            ),
            "point the service's productionListenerRule at a rule of its listener",
        );
    };
    let (per_version, catch_all) = match pins_needed(production, settings, sample) {
        Ok(n) => n,
        Err(e) => {
            return Finding::error(
                CHECK,
                e.to_string(),
                "simplify the production rule's conditions, or pin by fewer means (drop cookieName or queryParam)",
            );
        }
    };
    let own = listener.own(service_arn);
    let retired = settings.after_window == AfterWindow::Retired;
    let gap = pins::gap(
        production,
        &listener.rules,
        &own,
        settings.priority_range,
        retired,
    );
    let room = (1..=MAX_PRIORITY).filter(|p| gap.contains(*p)).count();
    let needed = LIVE_VERSIONS * per_version;
    let below = production
        .priority
        .number()
        .map_or("the default rule".to_owned(), |p| {
            format!("{p} (the production rule)")
        });
    let range = settings
        .priority_range
        .map(|r| format!(" inside priorityRange {}-{}", r.low, r.high))
        .unwrap_or_default();
    let catch_all_fits = !retired || gap.top() > gap.above;
    let total = needed + catch_all;
    let free = room + usize::from(retired && catch_all_fits);
    if room >= needed && catch_all_fits {
        return Finding::ok(
            CHECK,
            format!(
                "{total} pin rules fit ({LIVE_VERSIONS} live versions × {per_version}{}): {free} free priorities between {} and {below}{range}",
                if catch_all > 0 {
                    " + the retired catch-all"
                } else {
                    ""
                },
                gap.above
            ),
        );
    }
    Finding::error(
        CHECK,
        format!(
            "pins need {total} free priorities ({LIVE_VERSIONS} live versions × {per_version} pin rules{}) between {} (the last other rule before the production rule) and {below}{range}; there are {free}",
            if catch_all > 0 {
                " + the retired catch-all"
            } else {
                ""
            },
            gap.above
        ),
        format!(
            "leave at least {total} free priorities just below the production rule: give it a higher priority number, or the rules before it lower ones{}",
            if settings.priority_range.is_some() {
                ", or widen priorityRange"
            } else {
                ""
            }
        ),
    )
}

/// Check 5: Every action on the listener a forward, but skewguard's retired catch-all.
pub fn check_listener_actions(listener: &ListenerFacts) -> Finding {
    const CHECK: &str = "listener-actions";
    let mut mixed = Vec::new();
    for rule in &listener.rules {
        let at = if rule.is_default() {
            "the default rule".to_owned()
        } else {
            format!("priority {}", rule.priority)
        };
        let skewguards_catch_all = matches!(&rule.action,
            RuleAction::FixedResponse { status_code, .. } if *status_code == RETIRED_STATUS)
            && listener.tags.contains_key(&rule.arn);
        match &rule.action {
            _ if skewguards_catch_all => {}
            RuleAction::Forward(_) => {
                if let Some(before) = rule
                    .uncopyable
                    .iter()
                    .find(|u| u.contains("actions before the final one"))
                {
                    mixed.push(format!("{at}: {before}"));
                }
            }
            RuleAction::FixedResponse { status_code, .. } => {
                mixed.push(format!("{at}: fixed-response {status_code}"));
            }
            RuleAction::Other(kind) => mixed.push(format!("{at}: {kind}")),
        }
    }
    if mixed.is_empty() {
        return Finding::ok(CHECK, format!("all {} rules forward", listener.rules.len()));
    }
    Finding::error(
        CHECK,
        format!(
            "listener {} mixes forward with other actions ({}); ECS blue/green does not support such listeners",
            listener.listener_arn,
            mixed.join("; ")
        ),
        "make every action on the production listener a forward (e.g. a default action forwarding to a target group that answers 404)",
    )
}

/// Check 6: The deployment ID where `deploymentIdFrom` says, in the service's task definition.
pub fn check_deployment_id(
    task_definition: &skewguard_core::aws::ecs::TaskDefinitionFacts,
    container: Option<&str>,
    settings: &Settings,
) -> Result<(Finding, DeploymentId), Finding> {
    const CHECK: &str = "deployment-id";
    let source = match &settings.deployment_id_from {
        DeploymentIdSource::Env(name) => format!("environment variable {name}"),
        DeploymentIdSource::Label(name) => format!("docker label {name}"),
        DeploymentIdSource::ImageTag => "image tag".to_owned(),
    };
    match deployment_id_of(task_definition, container, &settings.deployment_id_from) {
        Ok(id) => Ok((
            Finding::ok(
                CHECK,
                format!(
                    "{id} from the {source} of {} in {}",
                    container.map_or("its only container".to_owned(), |c| format!(
                        "container {c}"
                    )),
                    task_definition.arn
                ),
            ),
            id,
        )),
        Err(e) => Err(Finding::error(
            CHECK,
            e.to_string(),
            format!(
                "put the deployment ID in the {source} of the load-balanced container, or point deploymentIdFrom (and container) at where it is"
            ),
        )),
    }
}

/// Check 7: Room under the load balancer's rule quota for every pin, and under its target-group
/// quota.
pub fn check_quotas(
    rules_used: usize,
    own_rules: usize,
    pins: usize,
    rules_quota: usize,
    target_groups: usize,
    target_groups_quota: usize,
) -> Vec<Finding> {
    let mut found = Vec::new();
    let after = rules_used - own_rules.min(rules_used) + pins;
    if after > rules_quota {
        found.push(Finding::error(
            "alb-rules",
            format!(
                "the load balancer's listeners have {rules_used} rules; with this service's {pins} pins that is {after}, over the quota of {rules_quota} rules per load balancer"
            ),
            "remove unused rules from the load balancer's listeners, or ask AWS to raise the quota \"Rules per Application Load Balancer\" (then pass --rules-quota)",
        ));
    } else {
        found.push(Finding::ok(
            "alb-rules",
            format!(
                "{rules_used} rules on the load balancer, {after} with every pin of this service, of {rules_quota}"
            ),
        ));
    }
    if target_groups > target_groups_quota {
        found.push(Finding::error(
            "alb-target-groups",
            format!("{target_groups} target groups on the load balancer, over the quota of {target_groups_quota}"),
            "detach unused target groups, or ask AWS to raise \"Target groups per Application Load Balancer\" (then pass --target-groups-quota)",
        ));
    } else if target_groups == target_groups_quota {
        found.push(Finding::warning(
            "alb-target-groups",
            format!("{target_groups} target groups on the load balancer: at the quota of {target_groups_quota}, no service can be added or given a new target group"),
            "detach unused target groups, or ask AWS to raise \"Target groups per Application Load Balancer\" (then pass --target-groups-quota)",
        ));
    } else {
        found.push(Finding::ok(
            "alb-target-groups",
            format!("{target_groups} target groups on the load balancer, of {target_groups_quota}"),
        ));
    }
    found
}

// ---------------------------------------------------------------------------------------------
// IAM

#[derive(Debug, Deserialize)]
pub struct Operations {
    pub actions: BTreeMap<String, ActionSpec>,
    pub functions: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct ActionSpec {
    /// Resource type → the ARN (or ARNs) the action is made on.
    #[serde(default)]
    pub resources: BTreeMap<String, Arns>,
    #[serde(default)]
    pub context: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One ARN, or several when one action is made on several resources of a type.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Arns {
    One(String),
    Many(Vec<String>),
}

impl Arns {
    pub fn all(&self) -> &[String] {
        match self {
            Arns::One(arn) => std::slice::from_ref(arn),
            Arns::Many(arns) => arns,
        }
    }
}

/// `arn:PARTITION:sqs:REGION:ACCOUNT:NAME` of a queue URL `https://HOST/ACCOUNT/NAME`.
fn queue_arn(url: &str, partition: &str, region: &str) -> Option<String> {
    let mut parts = url.trim_end_matches('/').rsplit('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let account = parts
        .next()
        .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_digit()))?;
    Some(format!("arn:{partition}:sqs:{region}:{account}:{name}"))
}

/// The IAM action of an `infra/aws-operations.yaml` entry: its key's first word (an action made
/// with two request contexts has a second entry whose key adds the creating call in parentheses,
/// `elasticloadbalancing:AddTags (CreateTargetGroup)`).
pub fn iam_action(key: &str) -> &str {
    key.split_once(' ').map_or(key, |(action, _)| action)
}

/// `infra/aws-operations.yaml`, as built in.
pub fn operations() -> Result<Operations, String> {
    serde_yaml_ng::from_str(AWS_OPERATIONS)
        .map_err(|e| format!("the built-in infra/aws-operations.yaml does not parse: {e}"))
}

/// The values of the `${…}` variables of `infra/aws-operations.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    pub values: BTreeMap<&'static str, String>,
}

impl Variables {
    pub fn new(service_arn: &str, listener_arn: &str, table: &str) -> Self {
        let parts: Vec<&str> = service_arn.split(':').collect();
        let (partition, region, account) = (
            parts.get(1).copied().unwrap_or("aws"),
            parts.get(3).copied().unwrap_or_default(),
            parts.get(4).copied().unwrap_or_default(),
        );
        let mut values = BTreeMap::new();
        values.insert("Partition", partition.to_owned());
        values.insert("Region", region.to_owned());
        values.insert("Account", account.to_owned());
        values.insert(
            "Cluster",
            cluster_of_service(service_arn)
                .unwrap_or_default()
                .to_owned(),
        );
        values.insert("Listener", listener_arn.to_owned());
        // A pin: a rule of the listener.
        values.insert(
            "ListenerRule",
            format!(
                "{}/0123456789abcdef",
                listener_arn.replacen(":listener/", ":listener-rule/", 1)
            ),
        );
        values.insert(
            "Table",
            format!("arn:{partition}:dynamodb:{region}:{account}:table/{table}"),
        );
        Self { values }
    }

    /// `text` with every variable filled in; `None` when one has no value.
    fn fill(&self, text: &str) -> Option<String> {
        let mut out = text.to_owned();
        while let Some(start) = out.find("${") {
            let end = start + out[start..].find('}')?;
            let value = self.values.get(&out[start + 2..end])?;
            out.replace_range(start..=end, value);
        }
        Some(out)
    }
}

/// What one function's role was asked and what IAM answered.
pub async fn simulate_function(
    iam: &aws_sdk_iam::Client,
    lambda: &aws_sdk_lambda::Client,
    operations: &Operations,
    function: &str,
    function_name: &str,
    variables: &Variables,
) -> Finding {
    const CHECK: &str = "iam";
    let who = format!("{function} ({function_name})");
    let configuration = match lambda
        .get_function()
        .function_name(function_name)
        .send()
        .await
    {
        Ok(answer) => answer.configuration().cloned(),
        Err(e) => {
            let why = match e.code() {
                Some("ResourceNotFoundException") => format!("no Lambda function {function_name}"),
                _ => format!(
                    "lambda:GetFunction {function_name} failed: {}",
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                ),
            };
            return Finding::error(
                CHECK,
                format!("{who}: {why}"),
                format!(
                    "pass --{function}-function with the deployed name (the SAM stack names it STACK-{function}), and allow yourself lambda:GetFunction"
                ),
            );
        }
    };
    let Some(role) = configuration
        .as_ref()
        .and_then(|c| c.role())
        .map(str::to_owned)
    else {
        return Finding::error(
            CHECK,
            format!("{who}: Lambda names no execution role"),
            "give the function its execution role",
        );
    };
    let mut variables = variables.clone();
    let log_group = configuration
        .as_ref()
        .and_then(|c| c.logging_config())
        .and_then(|l| l.log_group())
        .map_or(format!("/aws/lambda/{function_name}"), str::to_owned);
    variables.values.insert(
        "LogGroup",
        format!(
            "arn:{}:logs:{}:{}:log-group:{log_group}",
            variables.values["Partition"], variables.values["Region"], variables.values["Account"]
        ),
    );
    if let Some(queue) = configuration
        .as_ref()
        .and_then(|c| c.dead_letter_config())
        .and_then(|d| d.target_arn())
    {
        variables.values.insert("DeadLetterQueue", queue.to_owned());
    }
    if let Some(queue) = configuration
        .as_ref()
        .and_then(|c| c.environment())
        .and_then(|e| e.variables())
        .and_then(|v| v.get(skewguard_core::cold_start::SWEEP_QUEUE_ENV))
        .and_then(|url| {
            queue_arn(
                url,
                &variables.values["Partition"],
                &variables.values["Region"],
            )
        })
    {
        variables.values.insert("SweepQueue", queue);
    }
    let Some(actions) = operations.functions.get(function) else {
        return Finding::error(
            CHECK,
            format!("{who}: infra/aws-operations.yaml lists no actions for it"),
            "list the function's actions in infra/aws-operations.yaml",
        );
    };
    let mut denied = Vec::new();
    let mut unchecked = Vec::new();
    for action in actions {
        let Some(spec) = operations.actions.get(action) else {
            unchecked.push(format!("{action} (not described)"));
            continue;
        };
        let resources: Option<Vec<String>> = spec
            .resources
            .values()
            .flat_map(Arns::all)
            .map(|r| variables.fill(r))
            .collect();
        let Some(resources) = resources else {
            unchecked.push(format!("{action} (the function has no resource for it)"));
            continue;
        };
        let mut request = iam
            .simulate_principal_policy()
            .policy_source_arn(&role)
            .action_names(iam_action(action));
        for resource in &resources {
            request = request.resource_arns(resource);
        }
        for (key, value) in &spec.context {
            request = request.context_entries(context_entry(key, value, &variables));
        }
        match request.send().await {
            Ok(answer) => {
                for result in answer.evaluation_results() {
                    let allowed = result.eval_decision().as_str() == "allowed"
                        && result
                            .resource_specific_results()
                            .iter()
                            .all(|r| r.eval_resource_decision().as_str() == "allowed");
                    if !allowed {
                        let on = if resources.is_empty() {
                            "*".to_owned()
                        } else {
                            resources.join(", ")
                        };
                        denied.push(format!(
                            "{action} on {on} ({})",
                            result.eval_decision().as_str()
                        ));
                    }
                }
            }
            Err(e) => {
                return Finding::error(
                    CHECK,
                    format!(
                        "{who}: iam:SimulatePrincipalPolicy on {role} failed: {}",
                        aws_sdk_iam::error::DisplayErrorContext(&e)
                    ),
                    "allow yourself iam:SimulatePrincipalPolicy on the functions' roles, or run without --simulate-iam",
                );
            }
        }
    }
    let skipped = if unchecked.is_empty() {
        String::new()
    } else {
        format!(" (not checked: {})", unchecked.join(", "))
    };
    if denied.is_empty() {
        Finding::ok(
            CHECK,
            format!(
                "{who}: role {role} may make all {} calls{skipped}",
                actions.len() - unchecked.len()
            ),
        )
    } else {
        Finding::error(
            CHECK,
            format!("{who}: role {role} may not: {}{skipped}", denied.join("; ")),
            "grant the role what infra/template.yaml grants (README: IAM), with the listener, cluster and table of this service",
        )
    }
}

fn context_entry(
    key: &str,
    value: &serde_yaml_ng::Value,
    variables: &Variables,
) -> aws_sdk_iam::types::ContextEntry {
    use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum};
    let scalar = |v: &serde_yaml_ng::Value| match v {
        serde_yaml_ng::Value::String(s) => variables.fill(s).unwrap_or_else(|| s.clone()),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    let (values, kind) = match value {
        serde_yaml_ng::Value::Sequence(items) => (
            items.iter().map(scalar).collect(),
            ContextKeyTypeEnum::StringList,
        ),
        one => (vec![scalar(one)], ContextKeyTypeEnum::String),
    };
    ContextEntry::builder()
        .context_key_name(key)
        .set_context_key_values(Some(values))
        .context_key_type(kind)
        .build()
}

// ---------------------------------------------------------------------------------------------
// Reading and running

pub async fn run(ctx: &Context, args: Args) -> Result<DoctorReport, CliError> {
    let service = describe_service(ctx, &args.service).await?;
    let functions = args.hook_functions();
    let mut found = vec![check_strategy(&service)];
    found.extend(check_hooks(&service, &functions));
    let (settings_found, settings) = check_settings(&service, &functions);
    found.extend(settings_found);
    match &settings {
        Some(settings) => found.extend(check_timeouts(&service, &functions, settings)),
        None => found.push(Finding::not_checked("timeout", "the settings are invalid")),
    }

    // The deployment ID first: pins are sized with it.
    let mut sample = DeploymentId::parse("3f2c1ab").expect("a valid sample ID");
    match (&settings, &service.task_definition) {
        (Some(settings), Some(td)) => {
            let container = settings.container.clone().or_else(|| {
                service
                    .load_balancers
                    .iter()
                    .find(|lb| lb.production_rule_arn.is_some())
                    .or(service.load_balancers.first())
                    .and_then(|lb| lb.container_name.clone())
            });
            match ctx.clients.ecs.describe_task_definition(td).await {
                Ok(facts) => match check_deployment_id(&facts, container.as_deref(), settings) {
                    Ok((finding, id)) => {
                        sample = id;
                        found.push(finding);
                    }
                    Err(finding) => found.push(finding),
                },
                Err(e) => found.push(Finding::error(
                    "deployment-id",
                    format!("could not read task definition {td}: {}", DisplayErrorContext(&e)),
                    "allow yourself ecs:DescribeTaskDefinition, and check the service's task definition exists",
                )),
            }
        }
        (None, _) => found.push(Finding::not_checked(
            "deployment-id",
            "the settings are invalid",
        )),
        (_, None) => found.push(Finding::error(
            "deployment-id",
            "the service names no task definition",
            "give the service a task definition",
        )),
    }

    match production_rule_of(&service) {
        Ok(rule) => {
            let listener = read_listener(ctx, &service.arn, &rule).await;
            match listener {
                Ok(listener) => {
                    found.push(Finding::ok(
                        "listener",
                        format!(
                            "production rule {rule} on listener {}",
                            listener.listener_arn
                        ),
                    ));
                    found.push(check_listener_actions(&listener));
                    let pins = match &settings {
                        Some(settings) => {
                            found.push(check_pin_room(&service.arn, &listener, settings, &sample));
                            listener
                                .production_rule()
                                .and_then(|p| pins_needed(p, settings, &sample).ok())
                                .map(|(per, catch_all)| LIVE_VERSIONS * per + catch_all)
                        }
                        None => {
                            found
                                .push(Finding::not_checked("pin-room", "the settings are invalid"));
                            None
                        }
                    };
                    found.extend(quotas(ctx, &args, &service.arn, &listener, pins).await);
                }
                Err(finding) => found.push(finding),
            }
            if args.simulate_iam {
                found.extend(simulate_iam(ctx, &args, &service.arn, &rule).await);
            }
        }
        Err(finding) => {
            found.push(finding);
            if args.simulate_iam {
                found.push(Finding::not_checked(
                    "iam",
                    "the service's listener is unknown, and the roles are checked on it",
                ));
            }
        }
    }
    found.extend(check_ledger(ctx).await);
    Ok(DoctorReport::of(&service.arn, found))
}

async fn describe_service(ctx: &Context, given: &str) -> Result<ServiceFacts, CliError> {
    let (cluster, service) = if given.starts_with("arn:") {
        let cluster = cluster_of_service(given).ok_or_else(|| CliError::UnknownService {
            given: given.to_owned(),
            why: "not an ECS service ARN (arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME)"
                .to_owned(),
        })?;
        (cluster.to_owned(), given.to_owned())
    } else {
        let (cluster, name) = cluster_and_name(given)?;
        (cluster.to_owned(), name.to_owned())
    };
    let unknown = || CliError::UnknownService {
        given: given.to_owned(),
        why: format!("ECS has no such service in {}", ctx.region),
    };
    let answer = ctx
        .ecs
        .describe_services()
        .cluster(&cluster)
        .services(&service)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some("ServiceNotFoundException" | "ClusterNotFoundException") => unknown(),
            _ => CliError::Failed(format!(
                "ECS DescribeServices failed: {}",
                aws_sdk_ecs::error::DisplayErrorContext(&e)
            )),
        })?;
    answer
        .services()
        .iter()
        .find(|s| s.status() != Some("INACTIVE"))
        .map(ServiceFacts::from_sdk)
        .ok_or_else(unknown)
}

async fn read_listener(
    ctx: &Context,
    service_arn: &str,
    production_rule: &str,
) -> Result<ListenerFacts, Finding> {
    let Some(listener_arn) = listener_arn_of_rule(production_rule) else {
        return Err(Finding::error(
            "listener",
            format!("the production listener rule {production_rule} is not a listener-rule ARN"),
            "set productionListenerRule to the ARN of a rule of the production listener",
        ));
    };
    let rules = ctx
        .clients
        .elb
        .describe_listener_rules(&listener_arn)
        .await
        .map_err(|e| {
            Finding::error(
                "listener",
                format!(
                    "could not read listener {listener_arn}: {}",
                    DisplayErrorContext(&e)
                ),
                "allow yourself elasticloadbalancing:DescribeRules, and check the listener exists",
            )
        })?;
    let candidates: Vec<String> = rules
        .iter()
        .filter(|r| !r.is_default())
        .map(|r| r.arn.clone())
        .collect();
    let tags = ctx
        .clients
        .elb
        .describe_pin_tags(&candidates)
        .await
        .map_err(|e| {
            Finding::error(
                "listener",
                format!(
                    "could not read the tags of listener {listener_arn}'s rules: {}",
                    DisplayErrorContext(&e)
                ),
                "allow yourself elasticloadbalancing:DescribeTags",
            )
        })?;
    // The ledger's own check reports a missing table; pins are then found by their tags.
    let recorded = ctx
        .clients
        .ledger
        .load_with_archive(service_arn)
        .await
        .map(|entries| entries.into_iter().flat_map(|e| e.rule_arns).collect())
        .unwrap_or_default();
    Ok(ListenerFacts {
        listener_arn,
        production_rule_arn: production_rule.to_owned(),
        rules,
        tags,
        recorded,
    })
}

async fn quotas(
    ctx: &Context,
    args: &Args,
    service_arn: &str,
    listener: &ListenerFacts,
    pins: Option<usize>,
) -> Vec<Finding> {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&ctx.config);
    let failed = |what: &str, e: &dyn std::error::Error| {
        vec![Finding::error(
            "alb-rules",
            format!("could not read {what}: {}", DisplayErrorContext(e)),
            "allow yourself elasticloadbalancing:DescribeListeners, DescribeRules and DescribeTargetGroups",
        )]
    };
    let load_balancer = match elb
        .describe_listeners()
        .listener_arns(&listener.listener_arn)
        .send()
        .await
    {
        Ok(answer) => answer
            .listeners()
            .first()
            .and_then(|l| l.load_balancer_arn())
            .unwrap_or_default()
            .to_owned(),
        Err(e) => return failed("the listener", &e),
    };
    let mut listeners = Vec::new();
    let mut marker = None;
    loop {
        match elb
            .describe_listeners()
            .load_balancer_arn(&load_balancer)
            .set_marker(marker)
            .send()
            .await
        {
            Ok(page) => {
                listeners.extend(
                    page.listeners()
                        .iter()
                        .filter_map(|l| l.listener_arn().map(str::to_owned)),
                );
                marker = page
                    .next_marker()
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned);
                if marker.is_none() {
                    break;
                }
            }
            Err(e) => return failed("the load balancer's listeners", &e),
        }
    }
    let mut rules_used = 0;
    for arn in &listeners {
        match ctx.clients.elb.describe_listener_rules(arn).await {
            Ok(rules) => rules_used += rules.iter().filter(|r| !r.is_default()).count(),
            Err(e) => return failed(&format!("listener {arn}"), &e),
        }
    }
    let target_groups = match elb
        .describe_target_groups()
        .load_balancer_arn(&load_balancer)
        .send()
        .await
    {
        Ok(answer) => answer.target_groups().len(),
        Err(e) if e.code() == Some("TargetGroupNotFound") => 0,
        Err(e) => return failed("the load balancer's target groups", &e),
    };
    let own = listener.own(service_arn).len();
    let mut found = check_quotas(
        rules_used,
        own,
        pins.unwrap_or(own),
        args.rules_quota,
        target_groups,
        args.target_groups_quota,
    );
    if pins.is_none() {
        found[0] = Finding::not_checked("alb-rules", "the pins the settings need are unknown");
    }
    found
}

async fn check_ledger(ctx: &Context) -> Vec<Finding> {
    let ddb = aws_sdk_dynamodb::Client::new(&ctx.config);
    let table = &ctx.table;
    let described = ddb.describe_table().table_name(table).send().await;
    let description = match described {
        Ok(answer) => answer.table().cloned(),
        Err(e) if e.code() == Some("ResourceNotFoundException") => {
            return vec![Finding::error(
                "ledger-table",
                format!("the ledger table {table} does not exist in {}", ctx.region),
                "deploy the skewguard stack, or pass --table (or set SKEWGUARD_TABLE) naming its ledger table",
            )];
        }
        Err(e) => {
            return vec![Finding::error(
                "ledger-table",
                format!(
                    "could not read the ledger table {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                ),
                "allow yourself dynamodb:DescribeTable and dynamodb:DescribeTimeToLive on it",
            )];
        }
    };
    let keys: Vec<(String, String)> = description
        .as_ref()
        .map(|t| t.key_schema())
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("serviceArn".to_owned(), "HASH".to_owned()),
        ("deploymentId".to_owned(), "RANGE".to_owned()),
    ];
    let mut found = vec![if keys == expected {
        Finding::ok(
            "ledger-table",
            format!("{table} keyed by serviceArn and deploymentId"),
        )
    } else {
        Finding::error(
            "ledger-table",
            format!(
                "{table} is not a skewguard ledger: its key is {keys:?}, not serviceArn (HASH) and deploymentId (RANGE)"
            ),
            "pass --table (or set SKEWGUARD_TABLE) naming the skewguard stack's ledger table",
        )
    }];
    let ttl = ddb.describe_time_to_live().table_name(table).send().await;
    found.push(match ttl {
        Ok(answer) => {
            let d = answer.time_to_live_description();
            let status = d
                .and_then(|d| d.time_to_live_status())
                .map_or("DISABLED", |s| s.as_str());
            let attribute = d.and_then(|d| d.attribute_name()).unwrap_or_default();
            if matches!(status, "ENABLED" | "ENABLING") && attribute == "expiresAt" {
                Finding::ok("ledger-ttl", format!("TTL {status} on expiresAt"))
            } else {
                Finding::warning(
                    "ledger-ttl",
                    format!(
                        "TTL is {status}{}: retired entries are never removed and the ledger grows with every deployment",
                        if attribute.is_empty() { String::new() } else { format!(" on {attribute}") }
                    ),
                    format!("enable TTL on attribute expiresAt: aws dynamodb update-time-to-live --table-name {table} --time-to-live-specification Enabled=true,AttributeName=expiresAt"),
                )
            }
        }
        Err(e) => Finding::warning(
            "ledger-ttl",
            format!(
                "could not read the table's TTL: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            ),
            "allow yourself dynamodb:DescribeTimeToLive on the ledger table",
        ),
    });
    found
}

async fn simulate_iam(
    ctx: &Context,
    args: &Args,
    service_arn: &str,
    production_rule: &str,
) -> Vec<Finding> {
    let operations = match operations() {
        Ok(o) => o,
        Err(why) => {
            return vec![Finding::error(
                "iam",
                why,
                "rebuild skewguard from a checkout whose infra/aws-operations.yaml parses",
            )];
        }
    };
    let listener = listener_arn_of_rule(production_rule).unwrap_or_default();
    let variables = Variables::new(service_arn, &listener, &ctx.table);
    let iam = aws_sdk_iam::Client::new(&ctx.config);
    let lambda = aws_sdk_lambda::Client::new(&ctx.config);
    let mut found = Vec::new();
    for (function, name) in args.all_functions() {
        found.push(simulate_function(&iam, &lambda, &operations, function, name, &variables).await);
    }
    found
}

#[cfg(test)]
mod tests;
