//! `skewguard revoke SERVICE ID` and `skewguard cutoff SERVICE ID`: retire retained versions
//! now, through the same retirement the reconciler runs (pins, then the retention service, then
//! its target group, then the entry), recording the caller as the history's actor.

use serde::Serialize;
use skewguard_core::DeploymentId;
use skewguard_core::ledger::Status;
use skewguard_core::reconciler;
use skewguard_core::retirement::Order;
use skewguard_core::retirer::{self, RetireError, RetireOptions, Retirement};
use skewguard_core::settings::EnvDefaults;
use time::OffsetDateTime;

use super::{name_of, resolve_known, rfc3339};
use crate::render::{EMPHASIS, FAILURE, PLAIN, SUCCESS, Table, paint, stamp};
use crate::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARN or `cluster/service`.
    pub service: String,
    /// The deployment ID.
    pub deployment_id: String,
}

/// Which command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// This retained version, now.
    Revoke,
    /// Every retained version older than the given one, now.
    Cutoff,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Revoke => "revoke",
            Kind::Cutoff => "cutoff",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetireView {
    pub service_arn: String,
    pub command: Kind,
    pub deployment_id: String,
    /// Who the history records as acting.
    pub actor: String,
    pub retirements: Vec<Retirement>,
    pub notes: Vec<String>,
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
}

impl RetireView {
    /// A retirement that stopped before the end (the next reconciler run carries it on).
    pub fn failed(&self) -> bool {
        self.retirements.iter().any(|r| !r.done)
    }

    pub fn table(&self) -> String {
        let name = paint(name_of(&self.service_arn), EMPHASIS);
        let mut out = match (self.command, self.retirements.len()) {
            (Kind::Cutoff, 0) => format!(
                "{name}: no retained version is older than {}; nothing to retire\n",
                self.deployment_id
            ),
            (_, n) => format!(
                "{name}: {} {} retained version{} at {}\n",
                self.command.as_str(),
                n,
                if n == 1 { "" } else { "s" },
                stamp(self.at)
            ),
        };
        if !self.retirements.is_empty() {
            let mut t = Table::new(&["DEPLOYMENT", "REASON", "RESULT", "DETAIL"]);
            for r in &self.retirements {
                t.row(vec![
                    (r.deployment_id.to_string(), PLAIN),
                    (r.reason.clone(), PLAIN),
                    if r.done {
                        ("retired".to_owned(), SUCCESS)
                    } else {
                        ("stopped".to_owned(), FAILURE)
                    },
                    (r.detail.clone(), PLAIN),
                ]);
            }
            out.push_str(&t.render());
        }
        if self.failed() {
            out.push_str(
                "the retirement is recorded: the reconciler's next run carries on where it stopped\n",
            );
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

pub async fn run(ctx: &Context, kind: Kind, args: Args) -> Result<RetireView, CliError> {
    let service = resolve_known(ctx, &args.service).await?;
    let id = DeploymentId::parse(&args.deployment_id)
        .map_err(|e| CliError::Usage(format!("deployment ID {:?}: {e}", args.deployment_id)))?;
    let entries = ctx
        .clients
        .ledger
        .load(&service)
        .await
        .map_err(|e| ctx.ledger_error(e))?;
    let Some(named) = entries.iter().find(|e| e.deployment_id == id) else {
        return Err(CliError::Failed(format!(
            "{} has no deployment {id} in the ledger (skewguard status {} lists them)",
            name_of(&service),
            name_of(&service)
        )));
    };
    let order = match kind {
        Kind::Revoke => Order::Revoke(id.clone()),
        Kind::Cutoff => Order::Cutoff {
            deployment_id: id.clone(),
            recorded_at: named.created_at,
        },
    };
    if kind == Kind::Revoke && named.status != Status::Retained {
        return Err(CliError::Failed(format!(
            "{id} is {}, not retained: revoke retires retained versions only{}",
            named.status,
            if named.status == Status::Draining {
                " (to end a skew window now, use skewguard release)"
            } else {
                ""
            }
        )));
    }
    let (settings, _) =
        reconciler::service_settings_of(&ctx.clients.ecs, &service, &EnvDefaults::from_env())
            .await
            .map_err(|e| ctx.reconcile_error(e))?;
    let actor = ctx.caller_arn().await;
    let options = RetireOptions {
        settings: retirer::retirement_settings(&settings),
        orders: vec![order],
        idle_check: false,
        stage: kind.as_str().to_owned(),
        execution_id: "cli".to_owned(),
        identity: actor.clone(),
    };
    let report = retirer::retire_service(&ctx.clients, &service, &options)
        .await
        .map_err(|e| match e {
            RetireError::NotRetained(why) => CliError::Failed(why),
            RetireError::Ledger(l) => ctx.ledger_error(l),
            other => CliError::failed(&other),
        })?;
    let wanted = |r: &Retirement| match kind {
        Kind::Revoke => r.deployment_id == id,
        Kind::Cutoff => r.reason == "cutoff",
    };
    let (ordered, others): (Vec<Retirement>, Vec<Retirement>) =
        report.retirements.into_iter().partition(wanted);
    // Versions another rule retires in the same run (say max-age) are listed after the
    // ones asked for, with their own reason.
    Ok(RetireView {
        service_arn: service,
        command: kind,
        deployment_id: id.to_string(),
        actor,
        retirements: ordered.into_iter().chain(others).collect(),
        notes: report.notes,
        at: OffsetDateTime::now_utc(),
    })
}
