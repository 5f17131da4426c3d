//! `skewguard release`: ends the current skew window now; the holding post-shift hook retires
//! the previous version on its next call.

use serde::Serialize;
use skewguard_core::ledger::Status;
use skewguard_core::stages::{self, Actor, Draft};
use time::OffsetDateTime;

use super::{name_of, resolve_known, rfc3339, rfc3339_opt};
use crate::render::{EMPHASIS, PLAIN, QUIET, Table, WARNING, paint, stamp};
use crate::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARN or `cluster/service`.
    pub service: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<ReleaseView, CliError> {
    let service = resolve_known(ctx, &args.service).await?;
    release(ctx, &service).await
}

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
    let mut caller = None;
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
        let identity = match &caller {
            Some(arn) => arn,
            None => caller.insert(ctx.caller_arn().await),
        };
        let actor = Actor {
            stage: "release".to_owned(),
            execution_id: "cli".to_owned(),
            identity: identity.clone(),
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
    pub fn table(&self) -> String {
        if self.released.is_empty() {
            return format!(
                "{}: nothing is draining; no skew window to end\n",
                name_of(&self.service_arn)
            );
        }
        let mut out = format!(
            "{}: skew window ended at {}; the holding post-shift hook retires these on its next call\n",
            paint(name_of(&self.service_arn), EMPHASIS),
            stamp(self.at)
        );
        let mut t = Table::new(&["DEPLOYMENT", "DRAIN UNTIL WAS", "DRAIN UNTIL NOW"]);
        for r in &self.released {
            t.row(vec![
                (r.deployment_id.clone(), PLAIN),
                (r.drain_until_before.map_or("-".to_owned(), stamp), QUIET),
                (stamp(self.at), WARNING),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}
