//! `skewguard explain`: which rule, target group and deployment a request would reach, and for
//! how long that holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::listener::{ListenerRule, Request, RuleAction, route};
use skewguard_core::pins::PinTags;
use skewguard_core::stages::short_arn;
use time::OffsetDateTime;

use super::{known_services, name_of, rfc3339_opt, status_rank};
use crate::render::{EMPHASIS, of_status, paint, short_duration, stamp};
use crate::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The listener ARN.
    #[arg(long)]
    pub listener: String,
    /// A request header, `NAME=VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// A query parameter, `KEY=VALUE` (repeatable).
    #[arg(long = "query", value_name = "KEY=VALUE")]
    pub query: Vec<String>,
    /// The Host header.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// The request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The client's source IP.
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
}

pub async fn run(ctx: &Context, args: Args, now: OffsetDateTime) -> Result<Explanation, CliError> {
    let mut request = Request::get(&args.path).with_host(&args.host);
    request.method = args.method.to_ascii_uppercase();
    request.source_ip = args.source_ip;
    for h in &args.headers {
        let (k, v) = pair(h, "--header")?;
        request = request.with_header(k, v);
    }
    for q in &args.query {
        let (k, v) = pair(q, "--query")?;
        request = request.with_query(k, v);
    }
    explain(ctx, &args.listener, request, now).await
}

fn pair<'a>(raw: &'a str, flag: &str) -> Result<(&'a str, &'a str), CliError> {
    raw.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{flag} takes NAME=VALUE, got {raw:?}")))
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub listener_arn: String,
    pub request: RequestView,
    pub rule: Option<RuleView>,
    /// `forward`, `fixed-response`, or the action's type.
    pub action: String,
    pub targets: Vec<TargetView>,
    /// For how long this answer holds.
    pub holds: String,
    #[serde(serialize_with = "rfc3339_opt")]
    pub holds_until: Option<OffsetDateTime>,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub arn: String,
    pub priority: String,
    /// `pin`, `retired-answer`, `production`, `default` or `other`.
    pub kind: String,
    pub service_arn: Option<String>,
    pub deployment_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    pub target_group_arn: String,
    pub weight: u32,
    pub deployment_id: Option<String>,
    pub status: Option<String>,
    pub service_arn: Option<String>,
}

/// Entries of every service whose pins live on `listener`.
async fn entries_on(ctx: &Context, listener: &str) -> Result<Vec<LedgerEntry>, CliError> {
    let mut found = Vec::new();
    for service in known_services(ctx).await? {
        let entries = ctx
            .clients
            .ledger
            .load_with_archive(&service)
            .await
            .map_err(|e| ctx.ledger_error(e))?;
        found.extend(entries.into_iter().filter(|e| e.listener_arn == listener));
    }
    Ok(found)
}

async fn explain(
    ctx: &Context,
    listener: &str,
    request: Request,
    now: OffsetDateTime,
) -> Result<Explanation, CliError> {
    let rules = ctx
        .clients
        .elb
        .describe_listener_rules(listener)
        .await
        .map_err(|e| {
            if e.code == "ListenerNotFound" {
                CliError::Failed(format!("listener {listener} not found in {}", ctx.region))
            } else {
                CliError::failed(&e)
            }
        })?;
    let entries = entries_on(ctx, listener).await?;
    let matched = route(&rules, &request);
    let tags = match matched.filter(|r| !r.is_default()) {
        Some(rule) => ctx
            .clients
            .elb
            .describe_pin_tags(std::slice::from_ref(&rule.arn))
            .await
            .map_err(|e| CliError::failed(&e))?,
        None => BTreeMap::new(),
    };
    Ok(explanation(
        listener, &request, matched, &tags, &entries, now,
    ))
}

/// The pure part of `explain`: what the matched rule means, given the ledger.
pub fn explanation(
    listener: &str,
    request: &Request,
    matched: Option<&ListenerRule>,
    tags: &BTreeMap<String, PinTags>,
    entries: &[LedgerEntry],
    now: OffsetDateTime,
) -> Explanation {
    let request_view = RequestView {
        method: request.method.clone(),
        host: request.host.clone(),
        path: request.path.clone(),
        headers: request.headers.clone(),
        query: request.query.clone(),
    };
    let mut notes = Vec::new();
    let Some(rule) = matched else {
        return Explanation {
            listener_arn: listener.to_owned(),
            request: request_view,
            rule: None,
            action: "none".to_owned(),
            targets: Vec::new(),
            holds: "no rule matches (the listener has no default rule?)".to_owned(),
            holds_until: None,
            notes,
            now,
        };
    };
    let tag = tags.get(&rule.arn);
    let pinned_entry = tag.and_then(|t| {
        entries
            .iter()
            .find(|e| e.service_arn == t.service_arn && e.deployment_id.as_str() == t.deployment_id)
    });
    let production_of = entries
        .iter()
        .find(|e| e.production_rule_arn == rule.arn)
        .map(|e| e.service_arn.clone());
    let is_fixed = matches!(rule.action, RuleAction::FixedResponse { .. });
    let kind = match (tag, &production_of) {
        (Some(_), _) if is_fixed => "retired-answer",
        (Some(_), _) => "pin",
        (None, Some(_)) => "production",
        (None, None) if rule.is_default() => "default",
        (None, None) => "other",
    };
    let (action, targets) = match &rule.action {
        RuleAction::Forward(targets) => (
            "forward".to_owned(),
            targets
                .iter()
                .map(|t| {
                    let runs = if kind == "pin" {
                        pinned_entry.filter(|e| e.target_group_arn == t.target_group_arn)
                    } else {
                        running_on(entries, &t.target_group_arn)
                    };
                    TargetView {
                        target_group_arn: t.target_group_arn.clone(),
                        weight: t.weight,
                        deployment_id: runs.map(|e| e.deployment_id.to_string()),
                        status: runs.map(|e| e.status.to_string()),
                        service_arn: runs.map(|e| e.service_arn.clone()),
                    }
                })
                .collect(),
        ),
        RuleAction::FixedResponse { status_code, .. } => {
            (format!("fixed-response {status_code}"), Vec::new())
        }
        RuleAction::Other(what) => (what.clone(), Vec::new()),
    };
    let live: Vec<&TargetView> = targets.iter().filter(|t| t.weight > 0).collect();
    let (holds, holds_until) = match kind {
        "pin" => match pinned_entry {
            Some(e) if e.status == Status::Draining => match e.drain_until {
                Some(until) if until > now => (
                    format!(
                        "until {} ({} left): then the skew window of {} ends and its pin is removed",
                        stamp(until),
                        short_duration((until - now).whole_seconds()),
                        e.deployment_id
                    ),
                    Some(until),
                ),
                _ => (
                    format!(
                        "only until the holding hook's next call: the skew window of {} has ended",
                        e.deployment_id
                    ),
                    e.drain_until,
                ),
            },
            Some(e) if e.status == Status::Live => (
                format!(
                    "while {} is live: after the next deployment, for that deployment's skew window",
                    e.deployment_id
                ),
                None,
            ),
            Some(e) if e.status == Status::Testing => (
                format!(
                    "while the deployment of {} is in progress: it then becomes live or is rolled back",
                    e.deployment_id
                ),
                None,
            ),
            Some(e) if e.status == Status::Retained => match (&e.reason, &e.retention) {
                (Some(reason), _) => (
                    format!(
                        "not for long: {} is retiring ({reason}); its pin goes first, then its retention copy",
                        e.deployment_id
                    ),
                    None,
                ),
                (None, copy) => {
                    let until = copy.as_ref().and_then(|c| c.retain_until);
                    (
                        format!(
                            "while {} is retained (served by its retention service {}): until {}, or earlier when it is idle, revoked, cut off or beyond maxVersions",
                            e.deployment_id,
                            copy.as_ref().map_or("?", |c| c.service_name.as_str()),
                            until.map_or("it retires".to_owned(), |t| format!(
                                "{} ({} left) at the latest",
                                stamp(t),
                                short_duration((t - now).whole_seconds().max(0))
                            ))
                        ),
                        until,
                    )
                }
            },
            Some(e) => (
                format!(
                    "not for long: {} is {}, so this pin should not exist (skewguard reconcile removes it)",
                    e.deployment_id, e.status
                ),
                None,
            ),
            None => (
                format!(
                    "not for long: the ledger has no entry for {} (skewguard reconcile removes the pin)",
                    tag.map_or("?", |t| t.deployment_id.as_str())
                ),
                None,
            ),
        },
        "retired-answer" => (
            "while no pin matches the requested deployment ID; the answer names the current production deployment"
                .to_owned(),
            None,
        ),
        "production" if live.len() > 1 => (
            format!(
                "while the production shift is in progress: traffic is split {}",
                live.iter()
                    .map(|t| format!("{} weight {}", short_arn(&t.target_group_arn), t.weight))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
            None,
        ),
        "production" => (
            "until the next deployment shifts production traffic".to_owned(),
            None,
        ),
        _ => (
            "as long as the listener's rules stay as they are".to_owned(),
            None,
        ),
    };
    // A pin value that matched no pin: say so, it is the usual surprise.
    if kind != "pin" {
        let values: BTreeSet<String> = request
            .headers
            .iter()
            .chain(request.query.iter())
            .map(|(_, v)| v.to_ascii_lowercase())
            .collect();
        for e in entries {
            if values.contains(e.deployment_id.as_str()) {
                notes.push(format!(
                    "the request names deployment {} of {}, which has no pin here ({}): it reaches {} instead",
                    e.deployment_id,
                    name_of(&e.service_arn),
                    e.status,
                    if kind == "production" { "production" } else { "this rule" }
                ));
            }
        }
    }
    Explanation {
        listener_arn: listener.to_owned(),
        request: request_view,
        rule: Some(RuleView {
            arn: rule.arn.clone(),
            priority: rule.priority.to_string(),
            kind: kind.to_owned(),
            service_arn: tag.map(|t| t.service_arn.clone()).or(production_of),
            deployment_id: tag.map(|t| t.deployment_id.clone()),
        }),
        action,
        targets,
        holds,
        holds_until,
        notes,
        now,
    }
}

/// The deployment a target group serves, per the ledger: live first, then draining, then
/// testing.
fn running_on<'a>(entries: &'a [LedgerEntry], target_group: &str) -> Option<&'a LedgerEntry> {
    entries
        .iter()
        .filter(|e| e.target_group_arn == target_group && !e.status.is_final())
        .min_by_key(|e| (status_rank(e.status), std::cmp::Reverse(e.updated_at)))
}

impl Explanation {
    pub fn table(&self) -> String {
        let mut lines: Vec<(String, String)> = Vec::new();
        let r = &self.request;
        let mut request = format!("{} {}{}", r.method, r.host, r.path);
        if !r.query.is_empty() {
            request.push('?');
            request.push_str(
                &r.query
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        }
        for (k, v) in &r.headers {
            request.push_str(&format!("  {k}: {v}"));
        }
        lines.push(("request".into(), request));
        match &self.rule {
            Some(rule) => {
                let what = match rule.kind.as_str() {
                    "pin" => format!(
                        "pin of {} for {}",
                        rule.deployment_id.as_deref().unwrap_or("?"),
                        rule.service_arn.as_deref().map_or("?", name_of)
                    ),
                    "retired-answer" => format!(
                        "retired answer for {}",
                        rule.service_arn.as_deref().map_or("?", name_of)
                    ),
                    "production" => format!(
                        "production rule of {}",
                        rule.service_arn.as_deref().map_or("?", name_of)
                    ),
                    "default" => "the listener's default rule".to_owned(),
                    _ => "a rule skewguard does not manage".to_owned(),
                };
                lines.push((
                    "rule".into(),
                    format!(
                        "priority {}: {}  {}",
                        paint(&rule.priority, EMPHASIS),
                        what,
                        rule.arn
                    ),
                ));
            }
            None => lines.push(("rule".into(), "none".into())),
        }
        lines.push(("action".into(), self.action.clone()));
        for t in &self.targets {
            let runs = match (&t.deployment_id, &t.status) {
                (Some(d), Some(s)) => {
                    format!("{} ({})", paint(d, EMPHASIS), paint(s, of_status(s)))
                }
                _ => "no deployment the ledger knows".to_owned(),
            };
            lines.push((
                "target group".into(),
                format!(
                    "{} weight {}: {}{}",
                    short_arn(&t.target_group_arn),
                    t.weight,
                    runs,
                    if t.weight == 0 {
                        " (weight 0: never chosen)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        lines.push(("holds".into(), self.holds.clone()));
        for note in &self.notes {
            lines.push(("note".into(), note.clone()));
        }
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        lines
            .into_iter()
            .map(|(k, v)| format!("{k:width$}  {v}\n"))
            .collect()
    }
}
