//! The commands: each reads what it needs, returns a plain view, and the view renders itself as
//! a table or as JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Serialize, Serializer};
use skewguard_core::DeploymentId;
use skewguard_core::aws::ecs::cluster_of_service;
use skewguard_core::ledger::{HistoryRecord, LedgerEntry, Status};
use skewguard_core::listener::{ListenerRule, Priority, Request, RuleAction, route};
use skewguard_core::pins::PinTags;
use skewguard_core::reconciler::{self, ReconcileOptions, ServiceReport};
use skewguard_core::settings::EnvDefaults;
use skewguard_core::stages::{self, Actor, Draft, short_arn};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::render::{Color, Style, Table, clip, relative, short_duration, stamp};
use crate::{CliError, Command, Context};

/// How many retired and rolled-back deployments `status` lists without `--all`.
pub const FINAL_SHOWN: usize = 3;

/// What a command found, ready to print.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Rendered {
    Status(Vec<ServiceStatus>),
    History(HistoryView),
    Explain(Box<Explanation>),
    Release(ReleaseView),
    Reconcile(Vec<ReconcileResult>),
}

impl Rendered {
    pub fn json(&self) -> String {
        let value = match self {
            Rendered::Status(services) => serde_json::json!({ "services": services }),
            Rendered::Reconcile(results) => serde_json::json!({ "services": results }),
            other => serde_json::to_value(other).unwrap_or_default(),
        };
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }

    pub fn table(&self, style: &Style) -> String {
        match self {
            Rendered::Status(services) => services
                .iter()
                .map(|s| s.table(style))
                .collect::<Vec<_>>()
                .join("\n"),
            Rendered::History(h) => h.table(style),
            Rendered::Explain(e) => e.table(style),
            Rendered::Release(r) => r.table(style),
            Rendered::Reconcile(results) => results
                .iter()
                .map(|r| r.table(style))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Whether the command partly failed (the process exits non-zero after printing).
    pub fn failed(&self) -> bool {
        matches!(self, Rendered::Reconcile(results) if results.iter().any(|r| r.error.is_some()))
    }
}

pub async fn dispatch(ctx: &Context, command: Command) -> Result<Rendered, CliError> {
    let now = OffsetDateTime::now_utc();
    match command {
        Command::Status { services, all } => {
            let services = resolve_all(ctx, &services, true).await?;
            let mut out = Vec::new();
            for service in services {
                out.push(status(ctx, &service, all, now).await?);
            }
            Ok(Rendered::Status(out))
        }
        Command::History {
            service,
            deployment_id,
        } => {
            let known = known_services(ctx).await?;
            let service = resolve(ctx, &service, &known, true)?;
            let id = DeploymentId::parse(&deployment_id)
                .map_err(|e| CliError::Usage(format!("DEPLOYMENT_ID: {e}")))?;
            history(ctx, &service, &id).await.map(Rendered::History)
        }
        Command::Explain {
            listener,
            headers,
            query,
            host,
            path,
            method,
            source_ip,
        } => {
            let mut request = Request::get(&path).with_host(&host);
            request.method = method.to_ascii_uppercase();
            request.source_ip = source_ip;
            for h in &headers {
                let (k, v) = pair(h, "--header")?;
                request = request.with_header(k, v);
            }
            for q in &query {
                let (k, v) = pair(q, "--query")?;
                request = request.with_query(k, v);
            }
            explain(ctx, &listener, request, now)
                .await
                .map(|e| Rendered::Explain(Box::new(e)))
        }
        Command::Release { service } => {
            let known = known_services(ctx).await?;
            let service = resolve(ctx, &service, &known, true)?;
            release(ctx, &service).await.map(Rendered::Release)
        }
        Command::Reconcile { services, dry_run } => {
            let services = resolve_all(ctx, &services, false).await?;
            let options = ReconcileOptions {
                defaults: EnvDefaults::from_env(),
                dry_run,
                execution_id: "cli".to_owned(),
            };
            let mut out = Vec::new();
            for (service, result) in
                reconciler::reconcile_services(&ctx.clients, &services, &options).await
            {
                out.push(match result {
                    Ok(report) => ReconcileResult {
                        service_arn: service,
                        report: Some(report),
                        error: None,
                    },
                    Err(e) => ReconcileResult {
                        service_arn: service,
                        report: None,
                        error: Some(ctx.hook_error(e).to_string()),
                    },
                });
            }
            Ok(Rendered::Reconcile(out))
        }
    }
}

fn pair<'a>(raw: &'a str, flag: &str) -> Result<(&'a str, &'a str), CliError> {
    raw.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{flag} takes NAME=VALUE, got {raw:?}")))
}

async fn known_services(ctx: &Context) -> Result<Vec<String>, CliError> {
    ctx.clients
        .ledger
        .services()
        .await
        .map_err(|e| ctx.ledger_error(e))
}

/// The services given, resolved against the ledger's; none given means every one of them.
async fn resolve_all(
    ctx: &Context,
    given: &[String],
    must_be_known: bool,
) -> Result<Vec<String>, CliError> {
    let known = known_services(ctx).await?;
    if given.is_empty() {
        return Ok(known);
    }
    given
        .iter()
        .map(|g| resolve(ctx, g, &known, must_be_known))
        .collect()
}

/// A service ARN, or `cluster/service` looked up among the ledger's services.
pub fn resolve(
    ctx: &Context,
    given: &str,
    known: &[String],
    must_be_known: bool,
) -> Result<String, CliError> {
    resolve_in(given, known, &ctx.table, &ctx.region, must_be_known)
}

pub fn resolve_in(
    given: &str,
    known: &[String],
    table: &str,
    region: &str,
    must_be_known: bool,
) -> Result<String, CliError> {
    let unknown = |why: String| CliError::UnknownService {
        given: given.to_owned(),
        why,
    };
    let listing = || {
        if known.is_empty() {
            format!("ledger table {table} has no services yet")
        } else {
            format!(
                "ledger table {table} knows {}",
                known
                    .iter()
                    .map(|k| k.split(":service/").nth(1).unwrap_or(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    if given.starts_with("arn:") {
        if cluster_of_service(given).is_none() {
            return Err(unknown(
                "not an ECS service ARN (arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME)"
                    .to_owned(),
            ));
        }
        if must_be_known && !known.iter().any(|k| k == given) {
            return Err(unknown(format!("no ledger entries for it; {}", listing())));
        }
        return Ok(given.to_owned());
    }
    let Some((cluster, name)) = given
        .split_once('/')
        .filter(|(c, n)| !c.is_empty() && !n.is_empty() && !n.contains('/'))
    else {
        return Err(CliError::Usage(format!(
            "SERVICE is a service ARN or cluster/service, got {given:?}"
        )));
    };
    let suffix = format!(":service/{cluster}/{name}");
    let mut matches: Vec<&String> = known.iter().filter(|k| k.ends_with(&suffix)).collect();
    if matches.len() > 1 {
        matches.retain(|k| k.starts_with(&format!("arn:aws:ecs:{region}:")));
    }
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(unknown(format!(
            "{}{}",
            listing(),
            if must_be_known {
                ""
            } else {
                "; pass the service ARN to reconcile a service the ledger does not know"
            }
        ))),
        many => Err(unknown(format!(
            "it matches several services ({}); pass the ARN",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn rfc3339<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.format(&Rfc3339).unwrap_or_default())
}

fn rfc3339_opt<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn name_of(service_arn: &str) -> &str {
    service_arn.rsplit('/').next().unwrap_or(service_arn)
}

// ---------------------------------------------------------------------------------------------
// status

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub service_arn: String,
    pub listener_arn: Option<String>,
    pub deployments: Vec<DeploymentRow>,
    /// Retired and rolled-back deployments not listed (see `--all`).
    pub hidden: usize,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRow {
    pub deployment_id: String,
    pub status: String,
    pub target_group_arn: String,
    pub service_revision_arn: String,
    pub pins: Vec<PinRef>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub live_at: Option<OffsetDateTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub drain_until: Option<OffsetDateTime>,
    /// Seconds left in the skew window (negative once it ended).
    pub seconds_left: Option<i64>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    pub last_change: Option<ChangeRef>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRef {
    pub rule_arn: String,
    /// The rule's priority; `None` when the rule is not on the listener.
    pub priority: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRef {
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
    pub stage: String,
    pub execution_id: String,
    pub change: String,
}

impl From<&HistoryRecord> for ChangeRef {
    fn from(h: &HistoryRecord) -> Self {
        ChangeRef {
            at: h.at,
            stage: h.stage.clone(),
            execution_id: h.execution_id.clone(),
            change: h.change.clone(),
        }
    }
}

fn status_rank(status: Status) -> u8 {
    match status {
        Status::Live => 0,
        Status::Draining => 1,
        Status::Testing => 2,
        Status::RolledBack | Status::Retired => 3,
    }
}

async fn status(
    ctx: &Context,
    service: &str,
    all: bool,
    now: OffsetDateTime,
) -> Result<ServiceStatus, CliError> {
    let mut entries = ctx
        .clients
        .ledger
        .load(service)
        .await
        .map_err(|e| ctx.ledger_error(e))?;
    entries.sort_by(|a, b| {
        status_rank(a.status)
            .cmp(&status_rank(b.status))
            .then(b.updated_at.cmp(&a.updated_at))
    });
    let finals = entries.iter().filter(|e| e.status.is_final()).count();
    let hidden = if all {
        0
    } else {
        finals.saturating_sub(FINAL_SHOWN)
    };
    entries.truncate(entries.len() - hidden);
    let mut notes = Vec::new();
    let listeners: BTreeSet<&str> = entries
        .iter()
        .map(|e| e.listener_arn.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    let mut priorities: BTreeMap<String, Priority> = BTreeMap::new();
    for listener in &listeners {
        match ctx.clients.elb.describe_listener_rules(listener).await {
            Ok(rules) => priorities.extend(rules.into_iter().map(|r| (r.arn, r.priority))),
            Err(e) => notes.push(format!("could not read listener {listener}: {e}")),
        }
    }
    let mut rows = Vec::new();
    for entry in &entries {
        let history = ctx
            .clients
            .ledger
            .history(service, &entry.deployment_id)
            .await
            .map_err(|e| ctx.ledger_error(e))?;
        rows.push(row_of(entry, &priorities, history.last(), now));
    }
    Ok(ServiceStatus {
        service_arn: service.to_owned(),
        listener_arn: listeners.first().map(|l| (*l).to_owned()),
        deployments: rows,
        hidden,
        notes,
        now,
    })
}

pub fn row_of(
    entry: &LedgerEntry,
    priorities: &BTreeMap<String, Priority>,
    last: Option<&HistoryRecord>,
    now: OffsetDateTime,
) -> DeploymentRow {
    DeploymentRow {
        deployment_id: entry.deployment_id.to_string(),
        status: entry.status.to_string(),
        target_group_arn: entry.target_group_arn.clone(),
        service_revision_arn: entry.service_revision_arn.clone(),
        pins: entry
            .rule_arns
            .iter()
            .map(|arn| PinRef {
                rule_arn: arn.clone(),
                priority: priorities.get(arn).map(|p| p.to_string()),
            })
            .collect(),
        live_at: entry.live_at,
        drain_until: entry.drain_until,
        seconds_left: entry.drain_until.map(|t| (t - now).whole_seconds()),
        updated_at: entry.updated_at,
        last_change: last.map(ChangeRef::from),
    }
}

impl ServiceStatus {
    pub fn table(&self, style: &Style) -> String {
        let mut out = format!(
            "{}  {}\n",
            style.paint(name_of(&self.service_arn), Color::Bold),
            self.service_arn
        );
        let mut t = Table::new(&[
            "DEPLOYMENT",
            "STATUS",
            "TARGET GROUP",
            "PINS",
            "LIVE SINCE",
            "DRAIN UNTIL",
            "LAST CHANGE",
        ]);
        for row in &self.deployments {
            let pins = if row.pins.is_empty() {
                ("-".to_owned(), Color::None)
            } else if row.pins.iter().any(|p| p.priority.is_none()) {
                (
                    row.pins
                        .iter()
                        .map(|p| p.priority.clone().unwrap_or_else(|| "missing".to_owned()))
                        .collect::<Vec<_>>()
                        .join(","),
                    Color::Red,
                )
            } else {
                (
                    row.pins
                        .iter()
                        .filter_map(|p| p.priority.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    Color::None,
                )
            };
            let drain = match row.drain_until {
                Some(t) if t > self.now => (
                    format!(
                        "{} ({} left)",
                        stamp(t),
                        short_duration((t - self.now).whole_seconds())
                    ),
                    Color::Yellow,
                ),
                Some(t) => (
                    format!("{} (ended {})", stamp(t), relative(t, self.now)),
                    Color::None,
                ),
                None => ("-".to_owned(), Color::None),
            };
            let last = row
                .last_change
                .as_ref()
                .map(|c| {
                    clip(
                        &format!("{} {}: {}", relative(c.at, self.now), c.stage, c.change),
                        72,
                    )
                })
                .unwrap_or_else(|| relative(row.updated_at, self.now));
            t.row(vec![
                (row.deployment_id.clone(), Color::None),
                (row.status.clone(), Color::of_status(&row.status)),
                (short_arn(&row.target_group_arn).to_owned(), Color::None),
                pins,
                (row.live_at.map_or("-".to_owned(), stamp), Color::None),
                drain,
                (last, Color::Dim),
            ]);
        }
        if self.deployments.is_empty() {
            out.push_str("  no deployments recorded\n");
        } else {
            out.push_str(&t.render(style));
        }
        if self.hidden > 0 {
            out.push_str(&format!(
                "({} older retired or rolled-back deployments not shown; --all lists them)\n",
                self.hidden
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// history

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub service_arn: String,
    pub deployment_id: String,
    pub history: Vec<ChangeRef>,
}

async fn history(ctx: &Context, service: &str, id: &DeploymentId) -> Result<HistoryView, CliError> {
    let records = ctx
        .clients
        .ledger
        .history(service, id)
        .await
        .map_err(|e| ctx.ledger_error(e))?;
    if records.is_empty() {
        let entries = ctx
            .clients
            .ledger
            .load(service)
            .await
            .map_err(|e| ctx.ledger_error(e))?;
        if !entries.iter().any(|e| &e.deployment_id == id) {
            return Err(CliError::Failed(format!(
                "the ledger has no deployment {id} for {service} (it has: {})",
                entries
                    .iter()
                    .map(|e| e.deployment_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(HistoryView {
        service_arn: service.to_owned(),
        deployment_id: id.to_string(),
        history: records.iter().map(ChangeRef::from).collect(),
    })
}

impl HistoryView {
    pub fn table(&self, style: &Style) -> String {
        let mut out = format!(
            "{} of {}  {}\n",
            style.paint(&self.deployment_id, Color::Bold),
            name_of(&self.service_arn),
            self.service_arn
        );
        let mut t = Table::new(&["AT", "STAGE", "EXECUTION", "CHANGE"]);
        for h in &self.history {
            t.row(vec![
                (stamp(h.at), Color::None),
                (h.stage.clone(), Color::Cyan),
                (h.execution_id.clone(), Color::Dim),
                (h.change.clone(), Color::None),
            ]);
        }
        out.push_str(&t.render(style));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// explain

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
            .load(&service)
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
                CliError::Failed(e.to_string())
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
            .map_err(|e| CliError::Failed(e.to_string()))?,
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
    pub fn table(&self, style: &Style) -> String {
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
                        style.paint(&rule.priority, Color::Bold),
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
                (Some(d), Some(s)) => format!(
                    "{} ({})",
                    style.paint(d, Color::Bold),
                    style.paint(s, Color::of_status(s))
                ),
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

// ---------------------------------------------------------------------------------------------
// release

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub service_arn: String,
    pub released: Vec<Released>,
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub deployment_id: String,
    #[serde(serialize_with = "rfc3339_opt")]
    pub drain_until_before: Option<OffsetDateTime>,
}

async fn release(ctx: &Context, service: &str) -> Result<ReleaseView, CliError> {
    for _attempt in 0..6 {
        let now = OffsetDateTime::now_utc();
        let entries = ctx
            .clients
            .ledger
            .load(service)
            .await
            .map_err(|e| ctx.ledger_error(e))?;
        let mut draft = Draft::new(service, entries.clone());
        let changed = stages::release(&mut draft, now);
        let released: Vec<Released> = entries
            .iter()
            .filter(|e| {
                e.status == Status::Draining && e.drain_until.is_none_or(|until| until > now)
            })
            .map(|e| Released {
                deployment_id: e.deployment_id.to_string(),
                drain_until_before: e.drain_until,
            })
            .collect();
        if !changed {
            return Ok(ReleaseView {
                service_arn: service.to_owned(),
                released,
                at: now,
            });
        }
        let actor = Actor {
            stage: "release".to_owned(),
            execution_id: "cli".to_owned(),
            now,
        };
        let changes: Vec<_> = draft
            .changes(&actor)
            .into_iter()
            .map(|mut c| {
                c.history.change = format!(
                    "skew window ended early by skewguard release [{}]",
                    c.history.change
                );
                c
            })
            .collect();
        match ctx.clients.ledger.commit(&changes).await {
            Ok(()) => {
                return Ok(ReleaseView {
                    service_arn: service.to_owned(),
                    released,
                    at: now,
                });
            }
            Err(e) if e.is_conflict() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(ctx.ledger_error(e)),
        }
    }
    Err(CliError::Failed(
        "the ledger kept changing; try again".to_owned(),
    ))
}

impl ReleaseView {
    pub fn table(&self, style: &Style) -> String {
        if self.released.is_empty() {
            return format!(
                "{}: nothing is draining; no skew window to end\n",
                name_of(&self.service_arn)
            );
        }
        let mut out = format!(
            "{}: skew window ended at {}; the holding post-shift hook retires these on its next call\n",
            style.paint(name_of(&self.service_arn), Color::Bold),
            stamp(self.at)
        );
        let mut t = Table::new(&["DEPLOYMENT", "DRAIN UNTIL WAS", "DRAIN UNTIL NOW"]);
        for r in &self.released {
            t.row(vec![
                (r.deployment_id.clone(), Color::None),
                (
                    r.drain_until_before.map_or("-".to_owned(), stamp),
                    Color::Dim,
                ),
                (stamp(self.at), Color::Yellow),
            ]);
        }
        out.push_str(&t.render(style));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// reconcile

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileResult {
    pub service_arn: String,
    pub report: Option<ServiceReport>,
    pub error: Option<String>,
}

impl ReconcileResult {
    pub fn table(&self, style: &Style) -> String {
        let name = style.paint(name_of(&self.service_arn), Color::Bold);
        let Some(report) = &self.report else {
            return format!(
                "{name}: {} {}\n",
                style.paint("failed:", Color::Red),
                self.error.as_deref().unwrap_or("?")
            );
        };
        let verb = if report.dry_run {
            "would repair"
        } else {
            "repaired"
        };
        let mut out = match report.repairs.len() {
            0 => format!("{name}: in line; nothing to repair\n"),
            n => format!(
                "{name}: {verb} {n} thing{}{}\n",
                if n == 1 { "" } else { "s" },
                if report.dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            ),
        };
        if !report.repairs.is_empty() {
            let mut t = Table::new(&["REPAIR", "DEPLOYMENT", "RULE", "WHY"]);
            for r in &report.repairs {
                t.row(vec![
                    (r.kind.to_string(), Color::Yellow),
                    (
                        r.deployment_id
                            .as_ref()
                            .map_or("-".to_owned(), |d| d.to_string()),
                        Color::None,
                    ),
                    (
                        r.rule_arn
                            .as_deref()
                            .map_or("-".to_owned(), |a| short_arn(a).to_owned()),
                        Color::Dim,
                    ),
                    (r.detail.clone(), Color::None),
                ]);
            }
            out.push_str(&t.render(style));
        }
        for note in &report.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests;
