//! `skewguard wait`: holds a pipeline until the service's newest deployment can be called done.
//!
//! While skewguard holds a deployment for the skew window, ECS reports it `IN_PROGRESS` for an
//! hour or more, so waiters that wait for the whole deployment (or for a stable service) time
//! out. What a pipeline needs to know is earlier: production runs green and green is pinned
//! (`--until shifted`); or, when it must, that the deployment completed (`--until done`).

use std::time::{Duration, SystemTime};

use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::Serialize;
use skewguard_core::ledger::{LedgerEntry, Status};
use skewguard_core::listener::Priority;
use skewguard_core::stages::short_arn;
use time::OffsetDateTime;

use super::status::row_of;
use super::{cluster_and_name, name_of, rfc3339_opt};
use crate::render::{EMPHASIS, paint, short_duration, stamp};
use crate::{CliError, Context};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// Production runs green and green is pinned; the skew window may still be running.
    Shifted,
    /// The deployment completed (`SUCCESSFUL`), skew window and bake time included.
    Done,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service ARN or `cluster/service`.
    pub service: String,
    /// What to wait for.
    #[arg(long, value_enum, default_value_t = Until::Shifted)]
    pub until: Until,
    /// Give up after this long (`90s`, `30m`, `2h`); with `--until done`, allow for the skew
    /// window and the bake time.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often to look.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Follow only a deployment created after this time (`2026-03-01T12:00:00Z`): for when the
    /// deployment starts after `wait` does (a CloudFormation stack update), so the previous,
    /// completed deployment is not taken for it.
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub created_after: Option<SystemTime>,
}

/// ECS's lifecycle stages of a service deployment, in the order a deployment goes through them.
/// A poll can miss a stage that passed quickly, so progress is a position in this list, never
/// a particular stage seen.
pub const LIFECYCLE_STAGES: [&str; 11] = [
    "RECONCILE_SERVICE",
    "PRE_SCALE_UP",
    "SCALE_UP",
    "POST_SCALE_UP",
    "TEST_TRAFFIC_SHIFT",
    "POST_TEST_TRAFFIC_SHIFT",
    "PRE_PRODUCTION_TRAFFIC_SHIFT",
    "PRODUCTION_TRAFFIC_SHIFT",
    "POST_PRODUCTION_TRAFFIC_SHIFT",
    "BAKE_TIME",
    "CLEAN_UP",
];

/// The stage from which production traffic has shifted to green for good.
const SHIFTED_STAGE: &str = "POST_PRODUCTION_TRAFFIC_SHIFT";

fn stage_position(stage: &str) -> Option<usize> {
    LIFECYCLE_STAGES.iter().position(|s| *s == stage)
}

/// A service deployment as one poll saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentSeen {
    pub arn: String,
    pub service_arn: String,
    /// `PENDING`, `IN_PROGRESS`, `SUCCESSFUL`, `STOPPED`, `STOP_REQUESTED`, `ROLLBACK_*`.
    pub status: String,
    pub lifecycle_stage: Option<String>,
    pub status_reason: Option<String>,
    pub rollback_reason: Option<String>,
    /// Green: the revision being deployed.
    pub target_revision: Option<String>,
}

/// Green's ledger entry as one poll saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreenSeen {
    pub deployment_id: String,
    pub status: Status,
    pub pins: usize,
    /// Pins the ledger lists that are not on the listener.
    pub missing_pins: usize,
}

/// What one poll saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The service's newest deployment; none before its first.
    pub deployment: Option<DeploymentSeen>,
    /// Green's ledger entry; none until the hooks record it.
    pub green: Option<GreenSeen>,
    /// When the hold ends: the latest end of a draining version's skew window.
    pub hold_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Production runs green and green is pinned.
    Shifted,
    /// The deployment completed.
    Done,
    RolledBack,
    Stopped,
    /// The deployment completed but the ledger shows no live pin for green: skewguard did not
    /// take part in it.
    NotPinned,
    TimedOut,
}

impl Outcome {
    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Shifted | Outcome::Done)
    }
}

/// What a poll means for the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting, for this.
    Waiting(String),
    Ended {
        outcome: Outcome,
        reason: Option<String>,
    },
}

/// Decides the wait from one poll.
pub fn judge(until: Until, seen: &Seen) -> Verdict {
    let Some(deployment) = &seen.deployment else {
        return Verdict::Waiting("a deployment to start".to_owned());
    };
    let reason_of = |first: &Option<String>, then: &Option<String>| {
        Some(
            first
                .clone()
                .or_else(|| then.clone())
                .unwrap_or_else(|| "ECS gave no reason".to_owned()),
        )
    };
    if deployment.status.starts_with("ROLLBACK_") {
        return Verdict::Ended {
            outcome: Outcome::RolledBack,
            reason: reason_of(&deployment.rollback_reason, &deployment.status_reason),
        };
    }
    if matches!(deployment.status.as_str(), "STOPPED" | "STOP_REQUESTED") {
        return Verdict::Ended {
            outcome: Outcome::Stopped,
            reason: reason_of(&deployment.status_reason, &deployment.rollback_reason),
        };
    }
    let completed = deployment.status == "SUCCESSFUL";
    let green = seen
        .green
        .as_ref()
        .map_or("green".to_owned(), |g| g.deployment_id.clone());
    match until {
        Until::Done if completed => Verdict::Ended {
            outcome: Outcome::Done,
            reason: None,
        },
        Until::Done => Verdict::Waiting(match seen.hold_until {
            Some(until) => format!(
                "the deployment to complete (skewguard holds it until {}, then bake time)",
                stamp(until)
            ),
            None => "the deployment to complete".to_owned(),
        }),
        Until::Shifted => {
            let shifted = completed
                || deployment
                    .lifecycle_stage
                    .as_deref()
                    .and_then(stage_position)
                    .zip(stage_position(SHIFTED_STAGE))
                    .is_some_and(|(at, shifted)| at >= shifted);
            if !shifted {
                return Verdict::Waiting(format!("production to shift to {green}"));
            }
            let pinned = match &seen.green {
                None => Err("the ledger has no entry for green's revision yet".to_owned()),
                Some(g) if g.status != Status::Live => {
                    Err(format!("the ledger shows {} {}", g.deployment_id, g.status))
                }
                Some(g) if g.pins == 0 => Err(format!("{} has no pin yet", g.deployment_id)),
                Some(g) if g.missing_pins > 0 => Err(format!(
                    "{} of the pins of {} are missing from the listener",
                    g.missing_pins, g.deployment_id
                )),
                Some(_) => Ok(()),
            };
            match pinned {
                Ok(()) => Verdict::Ended {
                    outcome: Outcome::Shifted,
                    reason: None,
                },
                // Nothing changes the ledger for this deployment any more.
                Err(why) if completed => Verdict::Ended {
                    outcome: Outcome::NotPinned,
                    reason: Some(format!(
                        "{why}; are skewguard's hooks registered on the service?"
                    )),
                },
                Err(why) => Verdict::Waiting(format!("{green} to be live and pinned ({why})")),
            }
        }
    }
}

/// What `wait` ended with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitResult {
    /// The service ARN, or the name given when no deployment was ever seen.
    pub service_arn: String,
    pub until: Until,
    pub outcome: Outcome,
    /// Why the wait failed; at a timeout, what it was still waiting for.
    pub reason: Option<String>,
    pub deployment_arn: Option<String>,
    pub status: Option<String>,
    pub lifecycle_stage: Option<String>,
    /// Green's deployment ID, once the ledger knows it.
    pub deployment_id: Option<String>,
    /// When skewguard's hold ends (the previous version's skew window), while it runs.
    #[serde(serialize_with = "rfc3339_opt")]
    pub hold_until: Option<OffsetDateTime>,
    pub waited_seconds: u64,
}

impl WaitResult {
    pub fn of(
        service: &str,
        until: Until,
        seen: &Seen,
        outcome: Outcome,
        reason: Option<String>,
        waited: Duration,
    ) -> Self {
        let deployment = seen.deployment.as_ref();
        WaitResult {
            service_arn: deployment.map_or(service.to_owned(), |d| d.service_arn.clone()),
            until,
            outcome,
            reason,
            deployment_arn: deployment.map(|d| d.arn.clone()),
            status: deployment.map(|d| d.status.clone()),
            lifecycle_stage: deployment.and_then(|d| d.lifecycle_stage.clone()),
            deployment_id: seen.green.as_ref().map(|g| g.deployment_id.clone()),
            hold_until: seen.hold_until,
            waited_seconds: waited.as_secs(),
        }
    }

    /// One line: the outcome, and the reason when it failed.
    pub fn table(&self) -> String {
        let name = paint(name_of(&self.service_arn), EMPHASIS);
        let deployment = self
            .deployment_arn
            .as_deref()
            .map_or("-".to_owned(), |a| short_arn(a).to_owned());
        let status = self.status.as_deref().unwrap_or("-");
        let green = self.deployment_id.as_deref().unwrap_or("green");
        let reason = self.reason.as_deref().unwrap_or("ECS gave no reason");
        let line = match self.outcome {
            Outcome::Shifted => format!(
                "{name}: production runs {green} and {green} is pinned; deployment {deployment} is {status}{}",
                match self.hold_until {
                    Some(until) => format!(" while skewguard holds it until {}", stamp(until)),
                    None => String::new(),
                }
            ),
            Outcome::Done => {
                format!("{name}: deployment {deployment} completed; production runs {green}")
            }
            Outcome::RolledBack => {
                format!("{name}: deployment {deployment} rolled back ({status}): {reason}")
            }
            Outcome::Stopped => {
                format!("{name}: deployment {deployment} stopped ({status}): {reason}")
            }
            Outcome::NotPinned => {
                format!("{name}: deployment {deployment} completed, but not pinned: {reason}")
            }
            Outcome::TimedOut => format!(
                "{name}: gave up after {}: {}; still waiting for {reason}",
                short_duration(self.waited_seconds as i64),
                match (&self.deployment_arn, &self.lifecycle_stage) {
                    (None, _) => "no deployment seen".to_owned(),
                    (Some(_), Some(stage)) =>
                        format!("deployment {deployment} is {status} at {stage}"),
                    (Some(_), None) => format!("deployment {deployment} is {status}"),
                }
            ),
        };
        line + "\n"
    }
}

/// A progress line, for stderr: where the deployment is and what the wait waits for.
pub fn progress_line(service: &str, seen: &Seen, waiting_for: &str, waited: Duration) -> String {
    let at = format!("[{}]", short_duration(waited.as_secs() as i64));
    match &seen.deployment {
        None => format!("{at} {service}: no deployment yet; waiting for {waiting_for}"),
        Some(d) => format!(
            "{at} {}: deployment {} {}{}; waiting for {waiting_for}",
            name_of(&d.service_arn),
            short_arn(&d.arn),
            d.status,
            d.lifecycle_stage
                .as_deref()
                .map_or(String::new(), |s| format!(" at {s}"))
        ),
    }
}

/// How ECS is asked about the service: a service ARN, or a cluster and a service name.
struct ServiceRef {
    cluster: String,
    service: String,
}

impl ServiceRef {
    fn parse(given: &str) -> Result<ServiceRef, CliError> {
        if given.starts_with("arn:") {
            let cluster = skewguard_core::aws::ecs::cluster_of_service(given).ok_or_else(|| {
                CliError::UnknownService {
                    given: given.to_owned(),
                    why: "not an ECS service ARN (arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME)"
                        .to_owned(),
                }
            })?;
            return Ok(ServiceRef {
                cluster: cluster.to_owned(),
                service: given.to_owned(),
            });
        }
        let (cluster, name) = cluster_and_name(given)?;
        Ok(ServiceRef {
            cluster: cluster.to_owned(),
            service: name.to_owned(),
        })
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<WaitResult, CliError> {
    // ECS, not the ledger, names the service: on a service's first deployment under skewguard
    // the ledger learns of it only midway.
    let service = ServiceRef::parse(&args.service)?;
    let started = tokio::time::Instant::now();
    let deadline = started + args.timeout;
    let mut seen = Seen::default();
    let mut waiting_for = String::new();
    let mut last_progress = String::new();
    let mut first_poll = true;
    loop {
        match observe(ctx, &service, &args.service, args.created_after).await {
            Ok(now) => {
                seen = now;
                match judge(args.until, &seen) {
                    Verdict::Ended { outcome, reason } => {
                        return Ok(WaitResult::of(
                            &args.service,
                            args.until,
                            &seen,
                            outcome,
                            reason,
                            started.elapsed(),
                        ));
                    }
                    Verdict::Waiting(what) => waiting_for = what,
                }
                // One line per change, not per poll: a held deployment looks the same for an
                // hour. The line without its time says whether anything changed.
                let line = progress_line(&args.service, &seen, &waiting_for, Duration::ZERO);
                if line != last_progress {
                    anstream::eprintln!(
                        "{}",
                        progress_line(&args.service, &seen, &waiting_for, started.elapsed())
                    );
                    last_progress = line;
                }
            }
            // A wrong name, missing permissions or a missing table show on the first poll;
            // later errors are passing trouble on an hour-long wait.
            Err(e) if first_poll => return Err(e),
            Err(e) => anstream::eprintln!(
                "[{}] {}: {e}; trying again",
                short_duration(started.elapsed().as_secs() as i64),
                args.service
            ),
        }
        first_poll = false;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(WaitResult::of(
                &args.service,
                args.until,
                &seen,
                Outcome::TimedOut,
                Some(waiting_for),
                started.elapsed(),
            ));
        }
        tokio::time::sleep(args.interval.min(deadline - now)).await;
    }
}

/// Reads the newest deployment from ECS and green's entry from the ledger (and, once green is
/// live, its pins from the listener, as `status` does).
async fn observe(
    ctx: &Context,
    service: &ServiceRef,
    given: &str,
    created_after: Option<SystemTime>,
) -> Result<Seen, CliError> {
    let listed = ctx
        .ecs
        .list_service_deployments()
        .cluster(&service.cluster)
        .service(&service.service)
        .set_created_at(created_after.map(|t| {
            aws_sdk_ecs::types::CreatedAt::builder()
                .after(aws_sdk_ecs::primitives::DateTime::from(t))
                .build()
        }))
        .max_results(20)
        .send()
        .await
        .map_err(|e| ecs_error(ctx, "ListServiceDeployments", given, e))?;
    let newest = listed
        .service_deployments()
        .iter()
        .filter(|d| d.service_deployment_arn().is_some())
        .max_by_key(|d| d.created_at().map(|t| (t.secs(), t.subsec_nanos())));
    let Some(arn) = newest.and_then(|d| d.service_deployment_arn()) else {
        return Ok(Seen::default());
    };
    let described = ctx
        .ecs
        .describe_service_deployments()
        .service_deployment_arns(arn)
        .send()
        .await
        .map_err(|e| ecs_error(ctx, "DescribeServiceDeployments", given, e))?;
    let Some(d) = described
        .service_deployments()
        .iter()
        .find(|d| d.service_deployment_arn() == Some(arn))
    else {
        return Ok(Seen::default());
    };
    let deployment = DeploymentSeen {
        arn: arn.to_owned(),
        service_arn: d.service_arn().unwrap_or_default().to_owned(),
        status: d
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        lifecycle_stage: d.lifecycle_stage().map(|s| s.as_str().to_owned()),
        status_reason: d.status_reason().map(str::to_owned),
        rollback_reason: d.rollback().and_then(|r| r.reason()).map(str::to_owned),
        target_revision: d
            .target_service_revision()
            .and_then(|t| t.arn())
            .map(str::to_owned),
    };
    let entries = ctx
        .clients
        .ledger
        .load_with_archive(&deployment.service_arn)
        .await
        .map_err(|e| ctx.ledger_error(e))?;
    let green = match entries
        .iter()
        .find(|e| Some(&e.service_revision_arn) == deployment.target_revision.as_ref())
    {
        Some(entry) => Some(green_seen(ctx, entry).await?),
        None => None,
    };
    let hold_until = entries
        .iter()
        .filter(|e| e.status == Status::Draining)
        .filter_map(|e| e.drain_until)
        .max();
    Ok(Seen {
        deployment: Some(deployment),
        green,
        hold_until,
    })
}

async fn green_seen(ctx: &Context, entry: &LedgerEntry) -> Result<GreenSeen, CliError> {
    // The listener is read only once it matters: green live means its pin must be there.
    let priorities: std::collections::BTreeMap<String, Priority> =
        if entry.status == Status::Live && !entry.rule_arns.is_empty() {
            ctx.clients
                .elb
                .describe_listener_rules(&entry.listener_arn)
                .await
                .map_err(|e| CliError::failed(&e))?
                .into_iter()
                .map(|r| (r.arn, r.priority))
                .collect()
        } else {
            Default::default()
        };
    let row = row_of(entry, &priorities, None, OffsetDateTime::now_utc());
    Ok(GreenSeen {
        deployment_id: row.deployment_id,
        status: entry.status,
        pins: row.pins.len(),
        missing_pins: row.pins.iter().filter(|p| p.priority.is_none()).count(),
    })
}

fn ecs_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    ctx: &Context,
    operation: &str,
    given: &str,
    e: SdkError<E, R>,
) -> CliError {
    match e.code() {
        Some("ServiceNotFoundException" | "ClusterNotFoundException") => CliError::UnknownService {
            given: given.to_owned(),
            why: format!("ECS has no such service in {}", ctx.region),
        },
        Some(code) => CliError::Failed(format!(
            "ECS {operation} failed: {code}: {}",
            e.message().unwrap_or_default()
        )),
        None => CliError::Failed(format!(
            "ECS {operation} failed: {}",
            DisplayErrorContext(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";

    fn at(status: &str, stage: Option<&str>) -> Seen {
        Seen {
            deployment: Some(DeploymentSeen {
                arn: "arn:aws:ecs:us-east-1:123456789012:service-deployment/shop/web/d1".into(),
                service_arn: SVC.into(),
                status: status.into(),
                lifecycle_stage: stage.map(str::to_owned),
                target_revision: Some("rev-green".into()),
                ..DeploymentSeen::default()
            }),
            green: None,
            hold_until: None,
        }
    }

    fn with_green(mut seen: Seen, status: Status, pins: usize, missing: usize) -> Seen {
        seen.green = Some(GreenSeen {
            deployment_id: "v2".into(),
            status,
            pins,
            missing_pins: missing,
        });
        seen
    }

    fn outcome(v: Verdict) -> Option<Outcome> {
        match v {
            Verdict::Ended { outcome, .. } => Some(outcome),
            Verdict::Waiting(_) => None,
        }
    }

    #[test]
    fn shifted_needs_the_production_shift_and_a_live_pinned_green() {
        let live = |seen| with_green(seen, Status::Live, 1, 0);
        // Before the shift, even a pinned green is not enough.
        let before = with_green(
            at("IN_PROGRESS", Some("PRODUCTION_TRAFFIC_SHIFT")),
            Status::Testing,
            1,
            0,
        );
        assert_eq!(
            judge(Until::Shifted, &before),
            Verdict::Waiting("production to shift to v2".into())
        );
        // At the shift, before the post-shift hook made green live.
        let Verdict::Waiting(what) = judge(
            Until::Shifted,
            &with_green(
                at("IN_PROGRESS", Some("POST_PRODUCTION_TRAFFIC_SHIFT")),
                Status::Testing,
                1,
                0,
            ),
        ) else {
            panic!("green is still testing")
        };
        assert_eq!(
            what,
            "v2 to be live and pinned (the ledger shows v2 testing)"
        );
        // A pin the ledger lists but the listener lacks is not a pin.
        assert!(matches!(
            judge(
                Until::Shifted,
                &with_green(
                    at("IN_PROGRESS", Some("POST_PRODUCTION_TRAFFIC_SHIFT")),
                    Status::Live,
                    1,
                    1
                )
            ),
            Verdict::Waiting(w) if w.contains("missing from the listener")
        ));
        // Live and pinned at the shift, during the hold, and in any later stage (a poll may
        // have missed the shift stage entirely).
        for stage in ["POST_PRODUCTION_TRAFFIC_SHIFT", "BAKE_TIME", "CLEAN_UP"] {
            assert_eq!(
                outcome(judge(Until::Shifted, &live(at("IN_PROGRESS", Some(stage))))),
                Some(Outcome::Shifted),
                "{stage}"
            );
        }
        assert_eq!(
            outcome(judge(Until::Shifted, &live(at("SUCCESSFUL", None)))),
            Some(Outcome::Shifted)
        );
        // An unknown stage is not taken for progress.
        assert_eq!(
            outcome(judge(
                Until::Shifted,
                &live(at("IN_PROGRESS", Some("SOMETHING_NEW")))
            )),
            None
        );
    }

    #[test]
    fn a_completed_deployment_without_a_pin_fails_rather_than_waits_forever() {
        let Verdict::Ended { outcome, reason } = judge(Until::Shifted, &at("SUCCESSFUL", None))
        else {
            panic!("nothing will change any more")
        };
        assert_eq!(outcome, Outcome::NotPinned);
        assert!(reason.unwrap().contains("hooks registered"));
    }

    #[test]
    fn done_needs_success() {
        let mut held = with_green(
            at("IN_PROGRESS", Some("POST_PRODUCTION_TRAFFIC_SHIFT")),
            Status::Live,
            1,
            0,
        );
        held.hold_until = Some(datetime!(2026-03-01 12:55 UTC));
        assert_eq!(
            judge(Until::Done, &held),
            Verdict::Waiting(
                "the deployment to complete (skewguard holds it until 2026-03-01 12:55:00Z, then bake time)"
                    .into()
            )
        );
        assert_eq!(
            outcome(judge(Until::Done, &at("SUCCESSFUL", Some("CLEAN_UP")))),
            Some(Outcome::Done)
        );
    }

    #[test]
    fn rollbacks_and_stops_end_the_wait_with_their_reason() {
        for status in [
            "ROLLBACK_REQUESTED",
            "ROLLBACK_IN_PROGRESS",
            "ROLLBACK_SUCCESSFUL",
            "ROLLBACK_FAILED",
        ] {
            let mut seen = at(status, Some("PRODUCTION_TRAFFIC_SHIFT"));
            seen.deployment.as_mut().unwrap().rollback_reason = Some("alarm fired".into());
            for until in [Until::Shifted, Until::Done] {
                assert_eq!(
                    judge(until, &seen),
                    Verdict::Ended {
                        outcome: Outcome::RolledBack,
                        reason: Some("alarm fired".into())
                    },
                    "{status}"
                );
            }
        }
        let mut stopped = at("STOPPED", Some("SCALE_UP"));
        stopped.deployment.as_mut().unwrap().status_reason = Some("stopped by user".into());
        assert_eq!(
            judge(Until::Shifted, &stopped),
            Verdict::Ended {
                outcome: Outcome::Stopped,
                reason: Some("stopped by user".into())
            }
        );
        assert_eq!(
            judge(Until::Done, &at("STOP_REQUESTED", None)),
            Verdict::Ended {
                outcome: Outcome::Stopped,
                reason: Some("ECS gave no reason".into())
            }
        );
    }

    #[test]
    fn no_deployment_yet_is_waited_for() {
        assert_eq!(
            judge(Until::Shifted, &Seen::default()),
            Verdict::Waiting("a deployment to start".into())
        );
    }

    #[test]
    fn result_lines_say_what_happened() {
        let plain = |r: &WaitResult| crate::render::plain(&r.table());
        let mut held = with_green(
            at("IN_PROGRESS", Some("POST_PRODUCTION_TRAFFIC_SHIFT")),
            Status::Live,
            1,
            0,
        );
        held.hold_until = Some(datetime!(2026-03-01 12:55 UTC));
        let shifted = WaitResult::of(
            "shop/web",
            Until::Shifted,
            &held,
            Outcome::Shifted,
            None,
            Duration::from_secs(75),
        );
        assert_eq!(
            plain(&shifted),
            "web: production runs v2 and v2 is pinned; deployment d1 is IN_PROGRESS while skewguard holds it until 2026-03-01 12:55:00Z\n"
        );
        let timed_out = WaitResult::of(
            "shop/web",
            Until::Done,
            &held,
            Outcome::TimedOut,
            Some("the deployment to complete".into()),
            Duration::from_secs(1800),
        );
        assert!(!timed_out.outcome.succeeded());
        assert_eq!(
            plain(&timed_out),
            "web: gave up after 30m 0s: deployment d1 is IN_PROGRESS at POST_PRODUCTION_TRAFFIC_SHIFT; still waiting for the deployment to complete\n"
        );
        let never = WaitResult::of(
            "shop/web",
            Until::Shifted,
            &Seen::default(),
            Outcome::TimedOut,
            Some("a deployment to start".into()),
            Duration::from_secs(5),
        );
        assert_eq!(
            plain(&never),
            "web: gave up after 5s: no deployment seen; still waiting for a deployment to start\n"
        );
        assert_eq!(never.service_arn, "shop/web");
    }

    #[test]
    fn progress_lines_name_the_stage() {
        let seen = at("IN_PROGRESS", Some("TEST_TRAFFIC_SHIFT"));
        assert_eq!(
            progress_line(
                "shop/web",
                &seen,
                "production to shift to green",
                Duration::from_secs(12)
            ),
            "[12s] web: deployment d1 IN_PROGRESS at TEST_TRAFFIC_SHIFT; waiting for production to shift to green"
        );
        assert_eq!(
            progress_line(
                "shop/web",
                &Seen::default(),
                "a deployment to start",
                Duration::ZERO
            ),
            "[0s] shop/web: no deployment yet; waiting for a deployment to start"
        );
    }
}
