//! ECS's service scheduler for the plain services of the world: those created through the ECS
//! emulator's `CreateService` (deployment controller ECS, rolling, no hooks).
//!
//! After every change to such a service (and every [`PASS_INTERVAL`] regardless) one pass brings
//! its tasks in line with it:
//! - an ACTIVE service runs `desiredCount` tasks of its task definition; a DRAINING one none,
//!   and goes INACTIVE once the last is stopped;
//! - each task is a real process from the world's [`TaskRunner`] (the example `checkout`
//!   backend in the live world) serving the version its task definition names
//!   (`DEPLOYMENT_ID` and the rest of the container's environment), reached on a loopback
//!   address of its own (`127.1.x.y`, as an awsvpc task has its own IP: moto keys targets by
//!   IP alone; [`crate::live::AddressedTask`] relays that address to the backend);
//! - a started task is registered in every target group of the service's `loadBalancers`
//!   (`Id` = its address, `Port` = its port), where moto reports it `healthy` at once, and is
//!   then counted in `runningCount`; under the fault
//!   [`crate::ecs_emulator::EcsEmulator::set_never_healthy`] it is never registered and stays
//!   in `pendingCount`;
//! - a new task definition replaces the tasks rolling (new ones start and register first, then
//!   the old ones go); a task to stop is deregistered first, given the deregistration delay,
//!   then stopped.
//!
//! Not modelled: task ARNs, `ListTasks`/`DescribeTasks`, service events, placement, the
//! circuit breaker, restarting a task that exits on its own.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use crate::ecs_emulator::{EcsEmulator, LoadBalancer};
use crate::engine::{RunningTask, TaskRunner};

/// How often a pass runs even when nothing was changed through the API.
pub const PASS_INTERVAL: Duration = Duration::from_millis(200);
/// How long a deregistered task keeps serving requests already routed to it.
pub const DEREGISTRATION_DELAY: Duration = Duration::from_millis(150);

static NEXT_ADDRESS: AtomicU32 = AtomicU32::new(0);

/// A fresh loopback address `127.1.x.y` for a task (never `127.0.0.1`, where the blue/green
/// tasks of the deployment engine register).
pub fn task_address() -> IpAddr {
    let n = NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed) % (250 * 250);
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8).into()
}

/// One task of a plain service.
struct Task {
    task_definition: String,
    running: Box<dyn RunningTask>,
    /// Target groups it is registered in.
    registered: Vec<String>,
}

impl Task {
    fn target(&self) -> TargetDescription {
        TargetDescription::builder()
            .id(self.running.ip().to_string())
            .port(i32::from(self.running.port()))
            .build()
    }
}

type Tasks = Arc<tokio::sync::Mutex<BTreeMap<String, Vec<Task>>>>;

/// The running scheduler; stops, and stops every task it started, when dropped.
pub struct RollingScheduler {
    tasks: Tasks,
    ecs: Arc<EcsEmulator>,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    runner: Arc<dyn TaskRunner>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RollingScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingScheduler").finish_non_exhaustive()
    }
}

impl RollingScheduler {
    /// Schedules the plain services of `ecs`, registering their tasks through `elb` (moto).
    pub fn start(
        ecs: Arc<EcsEmulator>,
        elb: aws_sdk_elasticloadbalancingv2::Client,
        runner: Arc<dyn TaskRunner>,
    ) -> RollingScheduler {
        let tasks: Tasks = Arc::default();
        let changed = ecs.with_state(|s| s.changed.clone());
        let server = {
            let (tasks, ecs, elb, runner) =
                (tasks.clone(), ecs.clone(), elb.clone(), runner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep(PASS_INTERVAL) => {}
                    }
                    pass(&tasks, &ecs, &elb, runner.as_ref()).await;
                }
            })
        };
        RollingScheduler {
            tasks,
            ecs,
            elb,
            runner,
            server,
        }
    }

    /// Runs a pass now and waits for it (and any pass in flight): afterwards every plain
    /// service has the tasks it asks for, registered where it says.
    pub async fn settle(&self) {
        pass(&self.tasks, &self.ecs, &self.elb, self.runner.as_ref()).await;
    }

    /// The addresses (`ip:port`) of the service's tasks.
    pub async fn task_addresses(&self, service_arn: &str) -> Vec<std::net::SocketAddr> {
        self.tasks
            .lock()
            .await
            .get(service_arn)
            .into_iter()
            .flatten()
            .map(|t| std::net::SocketAddr::new(t.running.ip(), t.running.port()))
            .collect()
    }
}

impl Drop for RollingScheduler {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What a pass needs of a service.
struct Wanted {
    active: bool,
    desired: usize,
    task_definition: Option<String>,
    load_balancers: Vec<LoadBalancer>,
    never_healthy: bool,
}

async fn pass(
    tasks: &Tasks,
    ecs: &EcsEmulator,
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    runner: &dyn TaskRunner,
) {
    let mut tasks = tasks.lock().await;
    let wanted: BTreeMap<String, Wanted> = ecs.with_state(|s| {
        s.services
            .values()
            .filter(|svc| svc.rolling)
            .map(|svc| {
                (
                    svc.service_arn.clone(),
                    Wanted {
                        active: svc.status == "ACTIVE",
                        desired: usize::try_from(svc.desired_count).unwrap_or(0),
                        task_definition: svc.task_definition.clone(),
                        load_balancers: svc.load_balancers.clone(),
                        never_healthy: s.is_never_healthy(&svc.service_arn),
                    },
                )
            })
            .collect()
    });
    // Services the emulator no longer knows lose their tasks.
    let gone: Vec<String> = tasks
        .keys()
        .filter(|arn| !wanted.contains_key(*arn))
        .cloned()
        .collect();
    for arn in gone {
        let stopping = tasks.remove(&arn).unwrap_or_default();
        stop(elb, stopping).await;
    }
    for (arn, want) in &wanted {
        let current = tasks.entry(arn.clone()).or_default();
        reconcile(ecs, elb, runner, arn, want, current).await;
        let running = current.iter().filter(|t| is_running(t, want)).count();
        let pending = current.len() - running;
        ecs.with_state(|s| {
            if let Some(service) = s.services.get_mut(arn) {
                service.running_count = i32::try_from(running).unwrap_or(i32::MAX);
                service.pending_count = i32::try_from(pending).unwrap_or(i32::MAX);
                if service.status == "DRAINING" && current.is_empty() {
                    service.status = "INACTIVE".to_owned();
                }
            }
        });
    }
}

fn is_running(task: &Task, want: &Wanted) -> bool {
    !want.never_healthy && task.registered.len() == want.load_balancers.len()
}

async fn reconcile(
    ecs: &EcsEmulator,
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    runner: &dyn TaskRunner,
    service_arn: &str,
    want: &Wanted,
    current: &mut Vec<Task>,
) {
    let target_groups: Vec<String> = want
        .load_balancers
        .iter()
        .map(|lb| lb.target_group_arn.clone())
        .collect();
    let desired = if want.active { want.desired } else { 0 };
    // Start what is missing of the current task definition.
    if let Some(td) = &want.task_definition {
        let have = current.iter().filter(|t| &t.task_definition == td).count();
        for _ in have..desired {
            match start(ecs, runner, td, &want.load_balancers).await {
                Ok(task) => current.push(Task {
                    task_definition: td.clone(),
                    running: task,
                    registered: Vec::new(),
                }),
                Err(e) => {
                    tracing::warn!(service = service_arn, error = %e, "a plain service's task did not start");
                    break;
                }
            }
        }
    }
    // Register (or move) every task that passes its health checks.
    for task in current.iter_mut() {
        if want.never_healthy {
            continue;
        }
        let stale: Vec<String> = task
            .registered
            .iter()
            .filter(|tg| !target_groups.contains(tg))
            .cloned()
            .collect();
        for tg in stale {
            deregister(elb, &tg, task).await;
            task.registered.retain(|r| *r != tg);
        }
        for tg in &target_groups {
            if task.registered.contains(tg) {
                continue;
            }
            let registered = elb
                .register_targets()
                .target_group_arn(tg)
                .targets(task.target())
                .send()
                .await;
            match registered {
                Ok(_) => task.registered.push(tg.clone()),
                Err(e) => tracing::warn!(
                    service = service_arn,
                    target_group = tg,
                    error = %aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(&e),
                    "a plain service's task could not be registered"
                ),
            }
        }
    }
    // Stop the old task definition's tasks once the new ones serve (or at once if they never
    // will), and anything above the desired count.
    let current_td = want.task_definition.clone().unwrap_or_default();
    let new_serving = current
        .iter()
        .filter(|t| t.task_definition == current_td && is_running(t, want))
        .count();
    let mut stopping = Vec::new();
    let mut kept_current = 0;
    for task in std::mem::take(current) {
        let keep = if task.task_definition == current_td {
            kept_current += 1;
            kept_current <= desired
        } else {
            want.active && new_serving < desired
        };
        if keep {
            current.push(task);
        } else {
            stopping.push(task);
        }
    }
    stop(elb, stopping).await;
}

async fn start(
    ecs: &EcsEmulator,
    runner: &dyn TaskRunner,
    task_definition: &str,
    load_balancers: &[LoadBalancer],
) -> Result<Box<dyn RunningTask>, String> {
    let container = ecs.with_state(|s| {
        let td = s.task_definition(task_definition)?;
        let named = load_balancers.first().map(|lb| lb.container_name.as_str());
        td.container_definitions
            .iter()
            .find(|c| Some(c.name.as_str()) == named)
            .or_else(|| td.container_definitions.first())
            .cloned()
    });
    let container =
        container.ok_or_else(|| format!("task definition {task_definition} has no container"))?;
    let environment: Vec<(String, String)> = container
        .environment
        .iter()
        .map(|kv| (kv.name.clone(), kv.value.clone()))
        .collect();
    let deployment_id = environment
        .iter()
        .find(|(k, _)| k == "DEPLOYMENT_ID")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("task definition {task_definition} sets no DEPLOYMENT_ID"))?;
    runner
        .start_at(task_address(), &deployment_id, &environment)
        .await
}

async fn deregister(elb: &aws_sdk_elasticloadbalancingv2::Client, tg: &str, task: &Task) {
    if let Err(e) = elb
        .deregister_targets()
        .target_group_arn(tg)
        .targets(task.target())
        .send()
        .await
    {
        tracing::warn!(
            target_group = tg,
            error = %aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(&e),
            "a plain service's task could not be deregistered"
        );
    }
}

/// ECS stops routing before it stops a task: deregister, let in-flight requests finish, stop.
async fn stop(elb: &aws_sdk_elasticloadbalancingv2::Client, tasks: Vec<Task>) {
    if tasks.is_empty() {
        return;
    }
    let mut drained = false;
    for task in &tasks {
        for tg in &task.registered {
            deregister(elb, tg, task).await;
            drained = true;
        }
    }
    if drained {
        tokio::time::sleep(DEREGISTRATION_DELAY).await;
    }
    drop(tasks);
}
