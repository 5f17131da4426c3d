//! The commands, one file each: each reads what it needs, returns a plain view, and the view
//! renders itself as a table or as JSON. What several commands share (naming a service, the
//! order of ledger statuses, how times serialize) lives here.

pub mod doctor;
pub mod explain;
pub mod history;
pub mod reconcile;
pub mod release;
pub mod retire;
pub mod status;
pub mod wait;

use serde::{Serialize, Serializer};
use skewguard_core::aws::ecs::cluster_of_service;
use skewguard_core::ledger::Status;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{CliError, Command, Context};

pub use doctor::DoctorReport;
pub use explain::Explanation;
pub use history::{ChangeRef, HistoryView};
pub use reconcile::ReconcileResult;
pub use release::ReleaseView;
pub use retire::RetireView;
pub use status::{DeploymentRow, FINAL_SHOWN, PinRef, ServiceStatus};
pub use wait::WaitResult;

/// What a command found, ready to print.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Rendered {
    Status(Vec<ServiceStatus>),
    History(HistoryView),
    Explain(Box<Explanation>),
    Release(ReleaseView),
    Retire(RetireView),
    Reconcile(Vec<ReconcileResult>),
    Wait(WaitResult),
    Doctor(DoctorReport),
}

impl Rendered {
    pub fn json(&self) -> String {
        let value = match self {
            Rendered::Status(services) => serde_json::json!({ "services": services }),
            Rendered::Reconcile(results) => serde_json::json!({ "services": results }),
            other => serde_json::to_value(other).unwrap_or_default(),
        };
        serde_json::to_string_pretty(&sorted_keys(value)).unwrap_or_default() + "\n"
    }

    pub fn table(&self) -> String {
        match self {
            Rendered::Status(services) => services
                .iter()
                .map(|s| s.table())
                .collect::<Vec<_>>()
                .join("\n"),
            Rendered::History(h) => h.table(),
            Rendered::Explain(e) => e.table(),
            Rendered::Release(r) => r.table(),
            Rendered::Retire(r) => r.table(),
            Rendered::Wait(w) => w.table(),
            Rendered::Doctor(d) => d.table(),
            Rendered::Reconcile(results) => results
                .iter()
                .map(|r| r.table())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Whether the command partly failed (the process exits non-zero after printing).
    pub fn failed(&self) -> bool {
        match self {
            Rendered::Reconcile(results) => results.iter().any(|r| r.error.is_some()),
            Rendered::Wait(w) => !w.outcome.succeeded(),
            Rendered::Doctor(d) => d.failed(),
            Rendered::Retire(r) => r.failed(),
            _ => false,
        }
    }
}

pub async fn dispatch(ctx: &Context, command: Command) -> Result<Rendered, CliError> {
    let now = OffsetDateTime::now_utc();
    match command {
        Command::Status(args) => status::run(ctx, args, now).await.map(Rendered::Status),
        Command::History(args) => history::run(ctx, args).await.map(Rendered::History),
        Command::Explain(args) => explain::run(ctx, args, now)
            .await
            .map(|e| Rendered::Explain(Box::new(e))),
        Command::Release(args) => release::run(ctx, args).await.map(Rendered::Release),
        Command::Reconcile(args) => reconcile::run(ctx, args).await.map(Rendered::Reconcile),
        Command::Revoke(args) => retire::run(ctx, retire::Kind::Revoke, args)
            .await
            .map(Rendered::Retire),
        Command::Cutoff(args) => retire::run(ctx, retire::Kind::Cutoff, args)
            .await
            .map(Rendered::Retire),
        Command::Wait(args) => wait::run(ctx, args).await.map(Rendered::Wait),
        Command::Doctor(args) => doctor::run(ctx, args).await.map(Rendered::Doctor),
    }
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

/// One service, which the ledger must know.
async fn resolve_known(ctx: &Context, given: &str) -> Result<String, CliError> {
    let known = known_services(ctx).await?;
    resolve(ctx, given, &known, true)
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
    let (cluster, name) = cluster_and_name(given)?;
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

/// `cluster/service`, the short way to name a service.
fn cluster_and_name(given: &str) -> Result<(&str, &str), CliError> {
    given
        .split_once('/')
        .filter(|(c, n)| !c.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "SERVICE is a service ARN or cluster/service, got {given:?}"
            ))
        })
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

/// The order `status` lists entries in, and which entry `explain` names when several share a
/// target group: what runs production first.
fn status_rank(status: Status) -> u8 {
    match status {
        Status::Live => 0,
        Status::Draining => 1,
        Status::Retained => 2,
        Status::Testing => 3,
        Status::RolledBack | Status::Retired => 4,
    }
}

#[cfg(test)]
mod tests;

/// Every object's keys in sorted order, whichever map type serde_json was built with: the JSON
/// users script against must not change with a feature another crate switches on.
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut members: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                members
                    .into_iter()
                    .map(|(key, value)| (key, sorted_keys(value)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}
