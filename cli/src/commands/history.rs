//! `skewguard history`: the ledger history of one deployment of a service.

use serde::Serialize;
use skewguard_core::DeploymentId;
use skewguard_core::ledger::HistoryRecord;
use time::OffsetDateTime;

use super::{name_of, resolve_known, rfc3339};
use crate::render::{EMPHASIS, PLAIN, QUIET, STAGE, Table, paint, stamp};
use crate::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARN or `cluster/service`.
    pub service: String,
    pub deployment_id: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<HistoryView, CliError> {
    let service = resolve_known(ctx, &args.service).await?;
    let id = DeploymentId::parse(&args.deployment_id)
        .map_err(|e| CliError::Usage(format!("DEPLOYMENT_ID: {e}")))?;
    history(ctx, &service, &id).await
}

/// One change of a ledger entry, as `history` lists it and `status` shows the last one.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRef {
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
    pub stage: String,
    pub execution_id: String,
    /// Who acted: a Lambda request ID, or the IAM ARN of a CLI caller (absent on older records).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub actor: String,
    pub change: String,
}

impl From<&HistoryRecord> for ChangeRef {
    fn from(h: &HistoryRecord) -> Self {
        ChangeRef {
            at: h.at,
            stage: h.stage.clone(),
            execution_id: h.execution_id.clone(),
            actor: h.actor.clone(),
            change: h.change.clone(),
        }
    }
}

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
            .load_with_archive(service)
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
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} of {}  {}\n",
            paint(&self.deployment_id, EMPHASIS),
            name_of(&self.service_arn),
            self.service_arn
        );
        let mut t = Table::new(&["AT", "STAGE", "EXECUTION", "CHANGE"]);
        for h in &self.history {
            t.row(vec![
                (stamp(h.at), PLAIN),
                (h.stage.clone(), STAGE),
                (h.execution_id.clone(), QUIET),
                (h.change.clone(), PLAIN),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}
