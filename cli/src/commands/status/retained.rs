//! The retained versions of `skewguard status`: each one's copy and tasks, how long ago it left
//! production, how long it has left and the rule that will retire it, its requests per minute
//! over the last 30 minutes (the ALB's `RequestCount` from CloudWatch), and what it costs per
//! day (its tasks × its task definition's CPU and memory at a Fargate price table).

use std::collections::BTreeMap;

use serde::Serialize;
use skewguard_core::aws::DisplayErrorContext;
use skewguard_core::aws::cloudwatch::TrafficQuery;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::reconciler;
use skewguard_core::retirement::{self, Forecast};
use skewguard_core::retirer;
use skewguard_core::settings::EnvDefaults;
use time::OffsetDateTime;

use super::{ServiceStatus, rfc3339, rfc3339_opt};
use crate::Context;
use crate::pricing::{PriceTable, TaskSize};
use crate::render::{FAILURE, PLAIN, QUIET, Table, WARNING, short_duration, stamp};

/// How far back `status` measures a retained version's traffic.
pub const TRAFFIC_WINDOW_MINUTES: i64 = 30;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetainedRow {
    /// The retention service (in `cluster`) and its target group.
    pub service_name: String,
    pub cluster: String,
    pub target_group_arn: Option<String>,
    /// Tasks the copy was started with, and those ECS says run now (`None`: not read).
    pub tasks: u32,
    pub running_tasks: Option<u32>,
    #[serde(serialize_with = "rfc3339")]
    pub left_production_at: OffsetDateTime,
    /// Seconds since it left production.
    pub age_seconds: i64,
    /// When it retires at the latest (`maxAge`), and the seconds left until then.
    #[serde(serialize_with = "rfc3339_opt")]
    pub retire_at: Option<OffsetDateTime>,
    pub seconds_left: Option<i64>,
    /// The rule that will retire it (`max-age`, `idle`, `max-versions`), or, while it retires,
    /// the reason it is retiring for.
    pub retires_for: String,
    pub retire_detail: String,
    /// Its retirement is decided and under way.
    pub retiring: bool,
    /// Consecutive idle checks that measured no request.
    pub idle_checks: u32,
    /// Requests per minute over the last 30 minutes; `None` when CloudWatch had no data.
    pub requests_per_minute: Option<f64>,
    /// USD per day at the price table (`None` when the task size could not be read).
    pub cost_per_day_usd: Option<f64>,
}

/// The row of one retained entry, from what was read about it.
pub fn row_of(
    entry: &LedgerEntry,
    forecast: Option<&Forecast>,
    running_tasks: Option<u32>,
    requests_per_minute: Option<f64>,
    cost_per_day_usd: Option<f64>,
    now: OffsetDateTime,
) -> Option<RetainedRow> {
    let copy = entry.retention.as_ref()?;
    if entry.status != Status::Retained {
        return None;
    }
    let retiring = entry.reason.clone();
    let retire_at = forecast.map(|f| f.retire_at).or(copy.retain_until);
    let (retires_for, retire_detail) = match (&retiring, forecast) {
        (Some(reason), _) => (
            reason.clone(),
            "retiring now: pins, then the copy's service and target group".to_owned(),
        ),
        (None, Some(f)) => (f.reason.as_str().to_owned(), f.detail.clone()),
        (None, None) => ("max-age".to_owned(), "settings unknown".to_owned()),
    };
    Some(RetainedRow {
        service_name: copy.service_name.clone(),
        cluster: copy.cluster_arn.clone(),
        target_group_arn: copy.target_group_arn.clone(),
        tasks: copy.tasks,
        running_tasks,
        left_production_at: copy.left_production_at,
        age_seconds: (now - copy.left_production_at).whole_seconds(),
        retire_at,
        seconds_left: retire_at.map(|t| (t - now).whole_seconds()),
        retires_for,
        retire_detail,
        retiring: retiring.is_some(),
        idle_checks: copy.idle_checks,
        requests_per_minute,
        cost_per_day_usd,
    })
}

/// Reads what the retained versions' rows need and fills them in; what cannot be read becomes
/// a note and an empty cell, never a failed `status`.
pub async fn observe(
    ctx: &Context,
    status: &mut ServiceStatus,
    prices: &PriceTable,
    now: OffsetDateTime,
) {
    let entries = match ctx.clients.ledger.load(&status.service_arn).await {
        Ok(entries) => entries,
        Err(e) => {
            status.notes.push(format!(
                "could not read retained versions: {}",
                DisplayErrorContext(&e)
            ));
            return;
        }
    };
    let retained: Vec<&LedgerEntry> = entries
        .iter()
        .filter(|e| e.status == Status::Retained && e.retention.is_some())
        .filter(|e| {
            status
                .deployments
                .iter()
                .any(|d| d.deployment_id == e.deployment_id.as_str())
        })
        .collect();
    if retained.is_empty() {
        return;
    }
    let forecasts = match reconciler::service_settings_of(
        &ctx.clients.ecs,
        &status.service_arn,
        &EnvDefaults::from_env(),
    )
    .await
    {
        Ok((settings, _)) => {
            let candidates: Vec<_> = entries.iter().filter_map(retirer::candidate).collect();
            retirement::forecast(&candidates, &retirer::retirement_settings(&settings), now)
        }
        Err(e) => {
            status.notes.push(format!(
                "could not read the service's retention settings: {}",
                DisplayErrorContext(&e)
            ));
            BTreeMap::new()
        }
    };
    let mut running: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_cluster: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in &retained {
        if let Some(copy) = &e.retention {
            by_cluster
                .entry(copy.cluster_arn.as_str())
                .or_default()
                .push(copy.service_name.clone());
        }
    }
    for (cluster, names) in by_cluster {
        match ctx.clients.ecs.service_tasks(cluster, &names).await {
            Ok(found) => running.extend(
                found
                    .into_iter()
                    .map(|(name, t)| (name, if t.active { t.running } else { 0 })),
            ),
            Err(e) => status.notes.push(format!(
                "could not read the retention services' tasks: {}",
                DisplayErrorContext(&e)
            )),
        }
    }
    let queries: Vec<TrafficQuery> = retained
        .iter()
        .map(|e| TrafficQuery {
            target_group_arn: e
                .retention
                .as_ref()
                .and_then(|c| c.target_group_arn.clone())
                .unwrap_or_default(),
            load_balancer_of: e.listener_arn.clone(),
        })
        .collect();
    let start = now - time::Duration::minutes(TRAFFIC_WINDOW_MINUTES);
    let rpm: Vec<Option<f64>> = match ctx
        .clients
        .cloudwatch
        .request_counts(&queries, start, now)
        .await
    {
        Ok(counts) => counts
            .into_iter()
            .map(|c| c.map(|n| n as f64 / TRAFFIC_WINDOW_MINUTES as f64))
            .collect(),
        Err(e) => {
            status.notes.push(format!(
                "could not read the retained versions' traffic from CloudWatch: {}",
                DisplayErrorContext(&e)
            ));
            vec![None; queries.len()]
        }
    };
    let mut sizes: BTreeMap<&str, Option<TaskSize>> = BTreeMap::new();
    for e in &retained {
        if sizes.contains_key(e.task_definition_arn.as_str()) {
            continue;
        }
        let size = match ctx.clients.ecs.task_size(&e.task_definition_arn).await {
            Ok(s) => match (s.cpu_units, s.memory_mib) {
                (Some(cpu_units), Some(memory_mib)) => Some(TaskSize {
                    cpu_units,
                    memory_mib,
                    architecture: s.architecture,
                }),
                _ => {
                    status.notes.push(format!(
                        "task definition {} sets no task-level CPU and memory: no cost shown",
                        e.task_definition_arn
                    ));
                    None
                }
            },
            Err(err) => {
                status.notes.push(format!(
                    "could not read task definition {}: {}",
                    e.task_definition_arn,
                    DisplayErrorContext(&err)
                ));
                None
            }
        };
        sizes.insert(e.task_definition_arn.as_str(), size);
    }
    for (e, rpm) in retained.iter().zip(rpm) {
        let Some(copy) = &e.retention else { continue };
        let tasks_now = running.get(&copy.service_name).copied();
        let cost = sizes
            .get(e.task_definition_arn.as_str())
            .and_then(Option::as_ref)
            .map(|size| prices.cost_per_day(tasks_now.unwrap_or(copy.tasks), size));
        let row = row_of(
            e,
            forecasts.get(&e.deployment_id),
            tasks_now,
            rpm,
            cost,
            now,
        );
        if let Some(d) = status
            .deployments
            .iter_mut()
            .find(|d| d.deployment_id == e.deployment_id.as_str())
        {
            d.retention = row;
        }
    }
    status.prices = Some(prices.source.clone());
}

/// The retained versions' table, after the deployments' (empty when none is retained).
pub fn table(status: &ServiceStatus) -> String {
    let rows: Vec<(&str, &RetainedRow)> = status
        .deployments
        .iter()
        .filter_map(|d| d.retention.as_ref().map(|r| (d.deployment_id.as_str(), r)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&[
        "RETAINED",
        "TASKS",
        "AGE",
        "TIME LEFT",
        "RETIRES FOR",
        "REQ/MIN (30M)",
        "COST/DAY",
    ]);
    for (id, r) in rows {
        let tasks = match r.running_tasks {
            Some(running) if running == r.tasks => (format!("{running}"), PLAIN),
            Some(running) => (format!("{running}/{}", r.tasks), WARNING),
            None => (format!("?/{}", r.tasks), QUIET),
        };
        let left = match (r.retiring, r.seconds_left, r.retire_at) {
            (true, _, _) => ("now".to_owned(), FAILURE),
            (false, Some(s), Some(at)) => (
                format!("{} (by {})", short_duration(s.max(0)), stamp(at)),
                PLAIN,
            ),
            _ => ("-".to_owned(), QUIET),
        };
        t.row(vec![
            (id.to_owned(), PLAIN),
            tasks,
            (short_duration(r.age_seconds.max(0)), PLAIN),
            left,
            (
                // A forecast's detail already opens with its rule (`max-age, or idle`).
                if r.retire_detail.starts_with(&r.retires_for) {
                    r.retire_detail.clone()
                } else {
                    format!("{}: {}", r.retires_for, r.retire_detail)
                },
                if r.retiring { FAILURE } else { PLAIN },
            ),
            (
                r.requests_per_minute
                    .map_or("no data".to_owned(), |v| format!("{v:.1}")),
                PLAIN,
            ),
            (
                r.cost_per_day_usd
                    .map_or("-".to_owned(), |c| format!("${c:.2}")),
                PLAIN,
            ),
        ]);
    }
    let mut out = t.render();
    if let Some(source) = &status.prices {
        out.push_str(&format!("cost at {source}; --prices FILE to change\n"));
    }
    out
}
