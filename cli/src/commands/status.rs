//! `skewguard status`: one table per service of its deployments, their status, target group,
//! pins and skew windows.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use skewguard_core::aws::DisplayErrorContext;
use skewguard_core::ledger::{HistoryRecord, LedgerEntry};
use skewguard_core::listener::Priority;
use skewguard_core::stages::short_arn;
use time::OffsetDateTime;

use super::{ChangeRef, name_of, resolve_all, rfc3339, rfc3339_opt, status_rank};
use crate::pricing::PriceTable;
use crate::render::{
    EMPHASIS, FAILURE, PLAIN, QUIET, Table, WARNING, clip, of_status, paint, relative,
    short_duration, stamp,
};
use crate::{CliError, Context};

pub mod retained;
pub use retained::RetainedRow;

/// How many retired and rolled-back deployments `status` lists without `--all`.
pub const FINAL_SHOWN: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARNs or `cluster/service`; every service in the ledger if none.
    pub services: Vec<String>,
    /// Also list every retired and rolled-back deployment (else the 3 most recent).
    #[arg(long)]
    pub all: bool,
    /// A Fargate price table (JSON: `{"source": "...", "x86_64": {"vcpuHour": 0.04048,
    /// "gbHour": 0.004445}, "arm64": {...}}`) for the retained versions' cost per day, instead
    /// of the built-in US East list price.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<std::path::PathBuf>,
    /// USD per vCPU-hour, over the price table.
    #[arg(long, value_name = "USD")]
    pub vcpu_hour: Option<f64>,
    /// USD per GB-hour of memory, over the price table.
    #[arg(long, value_name = "USD")]
    pub gb_hour: Option<f64>,
}

pub async fn run(
    ctx: &Context,
    args: Args,
    now: OffsetDateTime,
) -> Result<Vec<ServiceStatus>, CliError> {
    let services = resolve_all(ctx, &args.services, true).await?;
    let prices = match &args.prices {
        Some(path) => PriceTable::from_file(path),
        None => Ok(PriceTable::default()),
    }
    .and_then(|t| t.overridden(args.vcpu_hour, args.gb_hour))
    .map_err(CliError::Usage)?;
    let mut out = Vec::new();
    for service in services {
        let mut one = status(ctx, &service, args.all, now).await?;
        retained::observe(ctx, &mut one, &prices, now).await;
        out.push(one);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub service_arn: String,
    pub listener_arn: Option<String>,
    pub deployments: Vec<DeploymentRow>,
    /// Retired and rolled-back deployments not listed (see `--all`).
    pub hidden: usize,
    pub notes: Vec<String>,
    /// Where the retained versions' costs come from, when any is listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices: Option<String>,
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
    /// The error a hook recorded and continued past (`onError: continue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it stopped being pinned, when not at the end of its skew window (`superseded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A retained version: its copy, tasks, age, time left, why it will retire, traffic, cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetainedRow>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRef {
    pub rule_arn: String,
    /// The rule's priority; `None` when the rule is not on the listener.
    pub priority: Option<String>,
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
        .load_with_archive(service)
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
            Err(e) => notes.push(format!(
                "could not read listener {listener}: {}",
                DisplayErrorContext(&e)
            )),
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
        prices: None,
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
        last_error: entry.last_error.clone(),
        reason: entry.reason.clone(),
        retention: None,
    }
}

impl ServiceStatus {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{}  {}\n",
            paint(name_of(&self.service_arn), EMPHASIS),
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
                ("-".to_owned(), PLAIN)
            } else if row.pins.iter().any(|p| p.priority.is_none()) {
                (
                    row.pins
                        .iter()
                        .map(|p| p.priority.clone().unwrap_or_else(|| "missing".to_owned()))
                        .collect::<Vec<_>>()
                        .join(","),
                    FAILURE,
                )
            } else {
                (
                    row.pins
                        .iter()
                        .filter_map(|p| p.priority.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    PLAIN,
                )
            };
            let drain = match row.drain_until {
                Some(t) if t > self.now => (
                    format!(
                        "{} ({} left)",
                        stamp(t),
                        short_duration((t - self.now).whole_seconds())
                    ),
                    WARNING,
                ),
                Some(t) => (
                    format!("{} (ended {})", stamp(t), relative(t, self.now)),
                    PLAIN,
                ),
                None => ("-".to_owned(), PLAIN),
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
            let status = match &row.reason {
                Some(reason) => format!("{} ({reason})", row.status),
                None => row.status.clone(),
            };
            t.row(vec![
                (row.deployment_id.clone(), PLAIN),
                (status, of_status(&row.status)),
                (short_arn(&row.target_group_arn).to_owned(), PLAIN),
                pins,
                (row.live_at.map_or("-".to_owned(), stamp), PLAIN),
                drain,
                (last, QUIET),
            ]);
        }
        if self.deployments.is_empty() {
            out.push_str("  no deployments recorded\n");
        } else {
            out.push_str(&t.render());
        }
        for row in &self.deployments {
            if let Some(error) = &row.last_error {
                out.push_str(&format!(
                    "{} {}: {}\n",
                    paint("error:", FAILURE),
                    row.deployment_id,
                    clip(error, 200)
                ));
            }
        }
        if self.hidden > 0 {
            out.push_str(&format!(
                "({} older retired or rolled-back deployments not shown; --all lists them)\n",
                self.hidden
            ));
        }
        out.push_str(&retained::table(self));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}
