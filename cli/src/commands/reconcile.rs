//! `skewguard reconcile`: the reconciler, run locally: compares ledger, listener and ECS, and
//! repairs drift (or only reports it).

use serde::Serialize;
use skewguard_core::reconciler::{self, ReconcileOptions, ServiceReport};
use skewguard_core::settings::EnvDefaults;
use skewguard_core::stages::short_arn;

use super::{name_of, resolve_all};
use crate::render::{EMPHASIS, FAILURE, PLAIN, QUIET, Table, WARNING, paint};
use crate::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARNs or `cluster/service`; every service in the ledger if none.
    pub services: Vec<String>,
    /// Report what would be repaired without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<Vec<ReconcileResult>, CliError> {
    let services = resolve_all(ctx, &args.services, false).await?;
    // A dry run writes nothing, so it has no one to record.
    let identity = if args.dry_run {
        String::new()
    } else {
        ctx.caller_arn().await
    };
    let options = ReconcileOptions {
        defaults: EnvDefaults::from_env(),
        dry_run: args.dry_run,
        execution_id: "cli".to_owned(),
        identity,
    };
    let mut out = Vec::new();
    for (service, result) in reconciler::reconcile_services(&ctx.clients, &services, &options).await
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
                error: Some(ctx.reconcile_error(e).to_string()),
            },
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileResult {
    pub service_arn: String,
    pub report: Option<ServiceReport>,
    pub error: Option<String>,
}

impl ReconcileResult {
    pub fn table(&self) -> String {
        let name = paint(name_of(&self.service_arn), EMPHASIS);
        let Some(report) = &self.report else {
            return format!(
                "{name}: {} {}\n",
                paint("failed:", FAILURE),
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
                    (r.kind.to_string(), WARNING),
                    (
                        r.deployment_id
                            .as_ref()
                            .map_or("-".to_owned(), |d| d.to_string()),
                        PLAIN,
                    ),
                    (
                        r.rule_arn
                            .as_deref()
                            .map_or("-".to_owned(), |a| short_arn(a).to_owned()),
                        QUIET,
                    ),
                    (r.detail.clone(), PLAIN),
                ]);
            }
            out.push_str(&t.render());
        }
        for note in &report.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}
