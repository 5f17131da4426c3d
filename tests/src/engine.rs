//! The deployment engine: plays ECS's part in a native blue/green deployment, following the
//! stage order, event shapes and rollback behaviour AWS documents.
//!
//! Per deployment: a new task definition and revision (green, resolved to the target group that
//! is not serving production), a service deployment in the ECS emulator, then each stage in
//! order: hooks registered for it are invoked (IN_PROGRESS honoured with `callBackDelay`), green's
//! tasks start at SCALE_UP and are registered in green's target group (in moto), traffic shifts
//! rewrite the weights of the test and production rules as ECS does, bake time passes, and clean
//! up deregisters and stops blue. A FAILED answer, an invalid answer, a crashed or timed-out
//! hook, or a stop request rolls back: weights return to blue, and the hooks registered at
//! TEST_TRAFFIC_SHIFT and PRODUCTION_TRAFFIC_SHIFT are invoked again with reversed weights.
//! Green and blue alternate between the two target groups across deployments.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ServiceDeploymentLifecycleStage, ServiceDeploymentStatus};
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use serde_json::{Map, Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::event::LifecycleStage;
use skewguard_core::hook::{self, Clients as HookClients, HookConfig, HookFunction};
use skewguard_core::listener::Request;
use skewguard_core::settings::EnvDefaults;

use crate::ecs_emulator::{
    ContainerDefinition, EcsEmulator, LoadBalancer, Rollback, ServiceDeployment, ServiceRevision,
};
use crate::fixtures::{AlbFixture, set_forward_weights};
use crate::invariants::ServiceTruth;

/// How long deregistered targets keep serving in-flight requests (ECS's deregistration delay,
/// shortened).
const DEREGISTRATION_DELAY: Duration = Duration::from_millis(150);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What came back from invoking a hook.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// The function answered (its answer may still be invalid for ECS).
    Answered(Value),
    /// The function crashed, timed out or returned a function error.
    Failed(String),
}

/// How the engine reaches the hook functions.
pub trait Invoker: Send + Sync {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation>;
}

/// Calls the hooks' handler in this process: the same code path as the Lambda binaries,
/// without process start-up (fast, for the many stage-level tests).
pub struct InProcess {
    pub clients: HookClients,
    pub defaults: EnvDefaults,
}

impl Invoker for InProcess {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            let config = HookConfig {
                function,
                defaults: self.defaults.clone(),
            };
            let answer = hook::handle(&config, &self.clients, event).await;
            Invocation::Answered(serde_json::to_value(answer).unwrap_or(Value::Null))
        })
    }
}

/// A task of a deployment: serving on a loopback port until dropped.
pub trait RunningTask: Send + Sync {
    fn port(&self) -> u16;
    /// The task's address: what is registered as the target's `Id`.
    fn ip(&self) -> IpAddr {
        Ipv4Addr::LOCALHOST.into()
    }
}

/// Starts the tasks of a revision.
pub trait TaskRunner: Send + Sync {
    fn start<'a>(
        &'a self,
        deployment_id: &'a str,
        environment: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>>;

    /// Starts a task on its own loopback address `ip` (a plain service's tasks, several per
    /// target group: moto keys a target group's targets by `Id` alone). Runners whose tasks
    /// serve nothing may ignore `ip`.
    fn start_at<'a>(
        &'a self,
        ip: IpAddr,
        deployment_id: &'a str,
        environment: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>> {
        let _ = ip;
        self.start(deployment_id, environment)
    }
}

/// Tasks that serve nothing: enough for hook-level tests, which never send traffic.
pub struct PlaceholderTasks;

struct PlaceholderTask(u16, IpAddr);

impl RunningTask for PlaceholderTask {
    fn port(&self) -> u16 {
        self.0
    }
    fn ip(&self) -> IpAddr {
        self.1
    }
}

static NEXT_PLACEHOLDER_PORT: AtomicU64 = AtomicU64::new(20_000);

impl TaskRunner for PlaceholderTasks {
    fn start<'a>(
        &'a self,
        _: &'a str,
        _: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>> {
        self.start_at(Ipv4Addr::LOCALHOST.into(), "", &[])
    }

    fn start_at<'a>(
        &'a self,
        ip: IpAddr,
        _: &'a str,
        _: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>> {
        let port = 20_000 + (NEXT_PLACEHOLDER_PORT.fetch_add(1, Ordering::Relaxed) % 40_000) as u16;
        Box::pin(async move { Ok(Box::new(PlaceholderTask(port, ip)) as Box<dyn RunningTask>) })
    }
}

/// A hook as registered on the service (`deploymentConfiguration.lifecycleHooks[]`).
#[derive(Clone)]
pub struct HookRegistration {
    pub function: HookFunction,
    pub stages: Vec<LifecycleStage>,
    pub hook_details: Map<String, Value>,
    /// `timeoutConfiguration.timeoutInMinutes`, already time-scaled.
    pub timeout: Duration,
    /// `timeoutConfiguration.action`.
    pub timeout_action: TimeoutAction,
    /// A hook of the user's own, registered beside skewguard's: answers instead of `function`.
    pub user: Option<UserHook>,
}

impl std::fmt::Debug for HookRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookRegistration")
            .field("function", &self.function)
            .field("stages", &self.stages)
            .field("timeout", &self.timeout)
            .field("timeout_action", &self.timeout_action)
            .field("user", &self.user.as_ref().map(|_| "user hook"))
            .finish()
    }
}

/// A user's own hook: the answer it gives to an event.
pub type UserHook = Arc<dyn Fn(Value) -> BoxFuture<'static, Value> + Send + Sync>;

/// What ECS does when a hook outlives `timeoutInMinutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    Rollback,
    Continue,
}

impl HookRegistration {
    /// A user's own hook at `stages`, answering with `answer`.
    pub fn user(
        stages: &[LifecycleStage],
        answer: impl Fn(Value) -> BoxFuture<'static, Value> + Send + Sync + 'static,
    ) -> HookRegistration {
        HookRegistration {
            // Never invoked: `user` answers instead.
            function: HookFunction::PostShift,
            stages: stages.to_vec(),
            hook_details: Map::new(),
            timeout: Duration::from_secs(600),
            timeout_action: TimeoutAction::Rollback,
            user: Some(Arc::new(answer)),
        }
    }

    /// The three skewguard hooks, registered as the README says, with the same settings.
    pub fn skewguard(hook_details: Value) -> Vec<HookRegistration> {
        let details = hook_details.as_object().cloned().unwrap_or_default();
        [
            HookFunction::PostTestTraffic,
            HookFunction::ProductionShift,
            HookFunction::PostShift,
        ]
        .into_iter()
        .map(|function| HookRegistration {
            function,
            stages: function.stages().to_vec(),
            hook_details: details.clone(),
            timeout: Duration::from_secs(600),
            timeout_action: TimeoutAction::Rollback,
            user: None,
        })
        .collect()
    }
}

/// The deployment strategy. Percentages are `Double` in ECS's API, in steps of 0.1 (a 2.5 %
/// canary is valid), and the hooks receive them as such.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    BlueGreen,
    /// Production shifts in equal steps of this percentage.
    Linear(f64),
    /// First this percentage, then the rest.
    Canary(f64),
}

/// A percentage rounded to ECS's 0.1 steps.
fn tenth(percent: f64) -> f64 {
    (percent * 10.0).round() / 10.0
}

impl Strategy {
    fn production_steps(self) -> Vec<f64> {
        match self {
            Strategy::BlueGreen => vec![100.0],
            Strategy::Linear(step) => {
                let step = tenth(step.clamp(0.1, 100.0));
                let mut steps: Vec<f64> = (1..)
                    .map(|i| tenth((f64::from(i) * step).min(100.0)))
                    .take_while(|w| *w < 100.0)
                    .collect();
                steps.push(100.0);
                steps
            }
            Strategy::Canary(first) => vec![tenth(first.clamp(0.1, 99.9)), 100.0],
        }
    }
}

/// How one deployment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    RolledBack { reason: String },
}

/// Something to do to a deployment while it runs, for rollback scenarios.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intervention {
    None,
    /// `StopServiceDeployment` with `stopType=ROLLBACK` (or an alarm) once this stage is reached.
    StopAt(LifecycleStage),
    /// Stop during bake time.
    StopDuringBake,
    /// Start a new deployment of `by` while this one is in flight: this one goes STOP_REQUESTED
    /// then STOPPED (no rollback, no further hook invocations) and the new one runs, from every
    /// revision that still has tasks, through RECONCILE_SERVICE.
    Supersede {
        when: SupersedeWhen,
        by: String,
        /// The superseding revision's extra container environment.
        environment: Vec<(String, String)>,
        scale_down: ScaleDownAt,
    },
}

/// When a superseding deployment starts, relative to the deployment it supersedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupersedeWhen {
    /// At this stage, before its hooks run (before the production shift: green has test
    /// traffic only).
    Before(LifecycleStage),
    /// While the post-shift hook holds the deployment (after its first IN_PROGRESS answer).
    WhileHolding,
    /// During bake time.
    DuringBake,
}

/// When ECS scales down the revision occupying the target group that the superseding
/// deployment's green takes. AWS does not say; both plausible points are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDownAt {
    /// At the end of RECONCILE_SERVICE, once its hooks answered.
    ReconcileService,
    /// At SCALE_UP, right before green's tasks start (after PRE_SCALE_UP's hooks).
    ScaleUp,
}

/// Why the engine stopped running a deployment's stages forward.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// Roll back, for this reason.
    Rollback(String),
    /// A new deployment superseded this one.
    Superseded,
}

/// The engine's view of one ECS service.
pub struct ServiceSetup {
    pub cluster: String,
    pub name: String,
    pub alb: AlbFixture,
    pub container: String,
    pub hooks: Vec<HookRegistration>,
    pub strategy: Strategy,
    pub bake: Duration,
    /// A request that reaches the service's production rule.
    pub probe: Request,
}

struct ServiceState {
    setup: ServiceSetup,
    service_arn: String,
    current_revision: String,
    /// The target group serving production (blue until the next deployment completes).
    production_tg: String,
    tasks: BTreeMap<String, Vec<Box<dyn RunningTask>>>,
    truth: ServiceTruth,
    stop_requested: Arc<AtomicBool>,
    task_family_revision: u32,
}

/// Called after every step, for invariant checks and timelines.
pub trait Observer: Send + Sync {
    fn after_step<'a>(
        &'a self,
        service: &'a str,
        step: &'a str,
        truths: Vec<ServiceTruth>,
    ) -> BoxFuture<'a, ()>;
}

/// Observes nothing.
pub struct Unobserved;

impl Observer for Unobserved {
    fn after_step<'a>(&'a self, _: &'a str, _: &'a str, _: Vec<ServiceTruth>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

pub struct Engine {
    ecs: Arc<EcsEmulator>,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    invoker: Arc<dyn Invoker>,
    tasks: Arc<dyn TaskRunner>,
    observer: Arc<dyn Observer>,
    services: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<ServiceState>>>>,
    truths: Mutex<BTreeMap<String, ServiceTruth>>,
    /// Multiplies every wait the engine does (callBackDelay, bake); hooks keep real durations.
    pub time_scale: f64,
    executions: AtomicU64,
    /// Hook invocations hold it shared; an observation holds it exclusively, so it sees the
    /// world between invocations, never halfway through one (deployments still overlap).
    quiesce: Arc<tokio::sync::RwLock<()>>,
    /// Services on which skewguard has recorded a deployment (post-test-traffic succeeded):
    /// from then on their production version must stay pinned.
    engaged: Mutex<BTreeSet<String>>,
}

/// A handle to request a stop of whatever deployment of that service runs.
#[derive(Clone)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn weights(green: &str, green_weight: f64, blue: &str) -> Value {
    // A service's first deployment has no blue: single-key maps.
    if green == blue || blue.is_empty() {
        json!({ green: green_weight })
    } else {
        json!({ green: green_weight, blue: tenth(100.0 - green_weight) })
    }
}

/// ALB forward weights (integers, at most 999) for a percentage on green.
fn alb_weights(green_percent: f64) -> (i32, i32) {
    let green = (green_percent * 9.99).round() as i32;
    (green, 999 - green)
}

impl Engine {
    pub fn new(
        ecs: Arc<EcsEmulator>,
        elb: aws_sdk_elasticloadbalancingv2::Client,
        invoker: Arc<dyn Invoker>,
        tasks: Arc<dyn TaskRunner>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            ecs,
            elb,
            invoker,
            tasks,
            observer,
            services: Mutex::new(BTreeMap::new()),
            truths: Mutex::new(BTreeMap::new()),
            time_scale: 1.0,
            executions: AtomicU64::new(1),
            quiesce: Arc::new(tokio::sync::RwLock::new(())),
            engaged: Mutex::new(BTreeSet::new()),
        }
    }

    /// The world's truth about every service: what runs where, and what must be pinned.
    /// What runs where, per service: the blue/green services' own target groups, and the
    /// target groups of the retention copies skewguard started for them (plain services tagged
    /// with the service's name, while they are active and asked to run tasks).
    pub fn truths(&self) -> Vec<ServiceTruth> {
        let mut truths: Vec<ServiceTruth> = self
            .truths
            .lock()
            .expect("truths")
            .values()
            .cloned()
            .collect();
        with_retention_copies(&self.ecs, &mut truths);
        truths
    }

    fn set_truth(&self, truth: &ServiceTruth) {
        self.truths
            .lock()
            .expect("truths")
            .insert(truth.service_arn.clone(), truth.clone());
    }

    /// A service already running `deployment_id` on the first target group, as before skewguard
    /// was added: no hooks run for it.
    pub async fn create_service(
        &self,
        setup: ServiceSetup,
        deployment_id: &str,
        environment: &[(String, String)],
    ) -> Result<StopHandle, String> {
        let service_arn = crate::ecs_emulator::service_arn(&setup.cluster, &setup.name);
        let mut state = ServiceState {
            service_arn: service_arn.clone(),
            current_revision: String::new(),
            production_tg: setup.alb.blue_tg.clone(),
            tasks: BTreeMap::new(),
            truth: ServiceTruth {
                service_arn: service_arn.clone(),
                production_rule_arn: setup.alb.production_rule_arn.clone(),
                probe: setup.probe.clone(),
                running: BTreeMap::new(),
                must_be_pinned: Vec::new(),
                retention_services: Vec::new(),
            },
            stop_requested: Arc::new(AtomicBool::new(false)),
            task_family_revision: 0,
            setup,
        };
        let tg = state.production_tg.clone();
        let revision = self.new_revision(&mut state, deployment_id, environment);
        self.activate_revision(&revision, &tg, &state.setup.alb.production_rule_arn);
        self.start_tasks(&mut state, deployment_id, environment, &tg)
            .await?;
        state.current_revision = revision;
        self.set_truth(&state.truth);
        let stop = StopHandle(state.stop_requested.clone());
        self.services
            .lock()
            .expect("services")
            .insert(service_arn, Arc::new(tokio::sync::Mutex::new(state)));
        Ok(stop)
    }

    /// A new service whose first deployment runs its lifecycle hooks, as ECS does at
    /// CreateService: nothing runs before it (no blue), the weight maps have one key, and the
    /// revision goes to the production rule's primary target group.
    pub async fn create_service_deployed(
        &self,
        setup: ServiceSetup,
        deployment_id: &str,
        environment: &[(String, String)],
        intervention: Intervention,
    ) -> Result<(StopHandle, Outcome), String> {
        let service_arn = crate::ecs_emulator::service_arn(&setup.cluster, &setup.name);
        let state = ServiceState {
            service_arn: service_arn.clone(),
            current_revision: String::new(),
            // So that green (the first revision) takes the primary target group.
            production_tg: setup.alb.green_tg.clone(),
            tasks: BTreeMap::new(),
            truth: ServiceTruth {
                service_arn: service_arn.clone(),
                production_rule_arn: setup.alb.production_rule_arn.clone(),
                probe: setup.probe.clone(),
                running: BTreeMap::new(),
                must_be_pinned: Vec::new(),
                retention_services: Vec::new(),
            },
            stop_requested: Arc::new(AtomicBool::new(false)),
            task_family_revision: 0,
            setup,
        };
        let stop = StopHandle(state.stop_requested.clone());
        self.set_truth(&state.truth);
        let service = Arc::new(tokio::sync::Mutex::new(state));
        self.services
            .lock()
            .expect("services")
            .insert(service_arn, service.clone());
        let mut state = service.lock().await;
        let outcome = self
            .deploy_locked(
                &mut state,
                deployment_id,
                environment,
                intervention,
                Vec::new(),
                None,
            )
            .await?;
        Ok((stop, outcome))
    }

    fn new_revision(
        &self,
        state: &mut ServiceState,
        deployment_id: &str,
        environment: &[(String, String)],
    ) -> String {
        let setup = &state.setup;
        let mut container = ContainerDefinition::new(
            &setup.container,
            &format!("registry.local/{}:{deployment_id}", setup.name),
        )
        .env("DEPLOYMENT_ID", deployment_id)
        .port(8080);
        for (k, v) in environment {
            container = container.env(k, v);
        }
        let task_definition = self
            .ecs
            .register_task_definition(&setup.name, vec![container]);
        state.task_family_revision += 1;
        let revision = ServiceRevision::new(&setup.cluster, &setup.name, &task_definition)
            .with_load_balancer(LoadBalancer::blue_green(
                (&setup.container, 8080),
                &setup.alb.blue_tg,
                &setup.alb.green_tg,
                &setup.alb.production_rule_arn,
                setup.alb.test_rule_arn.as_deref(),
            ));
        let arn = revision.service_revision_arn.clone();
        self.ecs.put_service_revision(revision);
        self.publish_configuration(state);
        arn
    }

    /// What `DescribeServices` says of the service's deployment configuration (strategy and
    /// lifecycle hooks), as set by the last `CreateService` or `UpdateService`.
    fn publish_configuration(&self, state: &ServiceState) {
        let configuration = deployment_configuration(&state.setup);
        self.ecs.with_state(|s| {
            s.service_mut(&state.service_arn).deployment_configuration = Some(configuration);
        });
    }

    /// ECS resolves a revision's configuration (`resolvedConfiguration.loadBalancers`: the
    /// target group it serves from) only once it is active, i.e. once its tasks start.
    fn activate_revision(&self, arn: &str, tg: &str, production_rule_arn: &str) {
        if let Some(revision) = self.ecs.service_revision(arn)
            && revision.resolved_configuration.is_none()
        {
            self.ecs
                .put_service_revision(revision.with_resolved(tg, Some(production_rule_arn)));
        }
    }

    async fn start_tasks(
        &self,
        state: &mut ServiceState,
        deployment_id: &str,
        environment: &[(String, String)],
        tg: &str,
    ) -> Result<(), String> {
        let task = self.tasks.start(deployment_id, environment).await?;
        self.elb
            .register_targets()
            .target_group_arn(tg)
            .targets(
                TargetDescription::builder()
                    .id("127.0.0.1")
                    .port(task.port() as i32)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("RegisterTargets: {e:?}"))?;
        state.tasks.entry(tg.to_owned()).or_default().push(task);
        // A task whose ID skewguard must refuse runs nothing any pin may lead to.
        match DeploymentId::parse(deployment_id) {
            Ok(id) => state.truth.running.insert(tg.to_owned(), id),
            Err(_) => state.truth.running.remove(tg),
        };
        Ok(())
    }

    async fn stop_tasks(&self, state: &mut ServiceState, tg: &str) -> Result<(), String> {
        // ECS stops routing before it stops the task: deregister first.
        let tasks = state.tasks.remove(tg).unwrap_or_default();
        for task in &tasks {
            self.elb
                .deregister_targets()
                .target_group_arn(tg)
                .targets(
                    TargetDescription::builder()
                        .id("127.0.0.1")
                        .port(task.port() as i32)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| format!("DeregisterTargets: {e:?}"))?;
        }
        state.truth.running.remove(tg);
        // Connection draining: requests already routed to these targets finish first.
        tokio::time::sleep(DEREGISTRATION_DELAY).await;
        drop(tasks);
        Ok(())
    }

    async fn step(&self, state: &ServiceState, step: &str) {
        let _exclusive = self.quiesce.write().await;
        self.set_truth(&state.truth);
        // Another service's promise is updated by its own deployment after its hook returns, so
        // it may lag what its hook just did; it is checked at that service's own steps.
        let truths = self
            .truths()
            .into_iter()
            .map(|mut truth| {
                if truth.service_arn != state.service_arn {
                    truth.must_be_pinned.clear();
                }
                truth
            })
            .collect();
        self.observer
            .after_step(&state.service_arn, step, truths)
            .await;
    }

    /// Requests a stop (rollback) of the service's running deployment, as an alarm would.
    pub fn stop_handle(&self, service_arn: &str) -> Result<StopHandle, String> {
        let service = self.service(service_arn)?;
        let state = service
            .try_lock()
            .map_err(|_| "the service is busy".to_owned())?;
        Ok(StopHandle(state.stop_requested.clone()))
    }

    /// Changes the deployment strategy for the service's next deployments.
    pub async fn set_strategy(&self, service_arn: &str, strategy: Strategy) -> Result<(), String> {
        let service = self.service(service_arn)?;
        let mut state = service.lock().await;
        state.setup.strategy = strategy;
        self.publish_configuration(&state);
        Ok(())
    }

    /// Unregisters one of the service's hooks (for tests that prove a check can fail).
    pub async fn drop_hook(&self, service_arn: &str, function: HookFunction) -> Result<(), String> {
        let service = self.service(service_arn)?;
        let mut state = service.lock().await;
        state.setup.hooks.retain(|h| h.function != function);
        self.publish_configuration(&state);
        Ok(())
    }

    /// Registers another hook on the service.
    pub async fn add_hook(
        &self,
        service_arn: &str,
        registration: HookRegistration,
    ) -> Result<(), String> {
        let service = self.service(service_arn)?;
        let mut state = service.lock().await;
        state.setup.hooks.push(registration);
        self.publish_configuration(&state);
        Ok(())
    }

    fn is_engaged(&self, service_arn: &str) -> bool {
        self.engaged.lock().expect("engaged").contains(service_arn)
    }

    fn service(&self, service_arn: &str) -> Result<Arc<tokio::sync::Mutex<ServiceState>>, String> {
        self.services
            .lock()
            .expect("services")
            .get(service_arn)
            .cloned()
            .ok_or_else(|| format!("unknown service {service_arn}"))
    }

    /// Deploys `deployment_id` to the service and runs the whole blue/green deployment (and,
    /// with [`Intervention::Supersede`], the deployment that supersedes it: the outcome is then
    /// that one's).
    pub async fn deploy(
        &self,
        service_arn: &str,
        deployment_id: &str,
        environment: &[(String, String)],
        intervention: Intervention,
    ) -> Result<Outcome, String> {
        let service = self.service(service_arn)?;
        let mut state = service.lock().await;
        self.deploy_locked(
            &mut state,
            deployment_id,
            environment,
            intervention,
            Vec::new(),
            None,
        )
        .await
    }

    /// One deployment; `older_sources` are revisions besides production that still have tasks
    /// (a superseded deployment's), which make ECS pass through RECONCILE_SERVICE.
    fn deploy_locked<'a>(
        &'a self,
        state: &'a mut ServiceState,
        deployment_id: &'a str,
        environment: &'a [(String, String)],
        intervention: Intervention,
        older_sources: Vec<String>,
        reconcile: Option<ScaleDownAt>,
    ) -> BoxFuture<'a, Result<Outcome, String>> {
        Box::pin(async move {
            state.stop_requested.store(false, Ordering::SeqCst);
            let blue_revision = state.current_revision.clone();
            let blue_tg = state.production_tg.clone();
            let green_tg = if blue_tg == state.setup.alb.blue_tg {
                state.setup.alb.green_tg.clone()
            } else {
                state.setup.alb.blue_tg.clone()
            };
            let green_revision = self.new_revision(state, deployment_id, environment);
            let mut sources: Vec<&str> = Vec::new();
            if !blue_revision.is_empty() {
                sources.push(&blue_revision);
            }
            sources.extend(older_sources.iter().map(String::as_str));
            let mut deployment = ServiceDeployment::new(
                &state.setup.cluster,
                &state.setup.name,
                &sources,
                &green_revision,
            );
            let deployment_arn = deployment.service_deployment_arn.clone();
            deployment.deployment_configuration = Some(deployment_configuration(&state.setup));
            self.ecs.put_service_deployment(deployment);
            let hooks_registered = !state.setup.hooks.is_empty();
            if !hooks_registered {
                // Nothing promises pins for a deployment skewguard does not take part in.
                state.truth.must_be_pinned.clear();
            }
            let blue_id = state.truth.running.get(&blue_tg).cloned();
            let green_id = DeploymentId::parse(deployment_id).ok();

            let ctx = DeploymentContext {
                deployment_arn: deployment_arn.clone(),
                green_revision: green_revision.clone(),
                blue_revision: blue_revision.clone(),
                older_revisions: older_sources.clone(),
                blue_tg: blue_tg.clone(),
                green_tg: green_tg.clone(),
                deployment_id: deployment_id.to_owned(),
                environment: environment.to_vec(),
                intervention: intervention.clone(),
                blue_id: blue_id.clone(),
                green_id: green_id.clone(),
                hooks_registered,
                reconcile,
            };
            let result = self.forward(state, &ctx).await?;
            match result {
                None => {
                    state.current_revision = green_revision;
                    state.production_tg = green_tg;
                    self.set_deployment(
                        &deployment_arn,
                        None,
                        Some(ServiceDeploymentStatus::Successful),
                    );
                    self.step(state, "deployment succeeded").await;
                    Ok(Outcome::Succeeded)
                }
                Some(Stop::Rollback(reason)) => {
                    self.rollback(
                        state,
                        &ctx,
                        &blue_tg,
                        &green_tg,
                        &reason,
                        blue_id.as_ref(),
                        hooks_registered,
                    )
                    .await?;
                    Ok(Outcome::RolledBack { reason })
                }
                Some(Stop::Superseded) => {
                    let Intervention::Supersede {
                        when,
                        by,
                        environment: by_environment,
                        scale_down,
                    } = intervention
                    else {
                        return Err("superseded without a superseding deployment".to_owned());
                    };
                    self.ecs.update_service_deployment(&deployment_arn, |d| {
                        d.status = ServiceDeploymentStatus::StopRequested;
                        d.status_reason = Some(format!("a new deployment of {by} started"));
                    });
                    self.ecs.update_service_deployment(&deployment_arn, |d| {
                        d.status = ServiceDeploymentStatus::Stopped;
                        d.finished_at = Some(crate::ecs_emulator::now());
                        d.stopped_at = Some(crate::ecs_emulator::now());
                    });
                    // Production has shifted to green once the production shift completed.
                    let shifted = match when {
                        SupersedeWhen::Before(stage) => {
                            stage == LifecycleStage::PostProductionTrafficShift
                        }
                        SupersedeWhen::WhileHolding | SupersedeWhen::DuringBake => true,
                    };
                    let older = if shifted {
                        state.current_revision = green_revision;
                        state.production_tg = green_tg.clone();
                        blue_revision
                    } else {
                        green_revision
                    };
                    let production = state.truth.running.get(&state.production_tg).cloned();
                    if hooks_registered && self.is_engaged(&state.service_arn) {
                        // Until the next deployment's hooks speak, production's pin is what
                        // remains promised; the superseded deployment's other version is
                        // about to be scaled down.
                        state.truth.must_be_pinned = production.into_iter().collect();
                    }
                    self.step(state, "superseded: deployment stopped").await;
                    self.deploy_locked(
                        state,
                        &by,
                        &by_environment,
                        Intervention::None,
                        vec![older],
                        Some(scale_down),
                    )
                    .await
                }
            }
        })
    }

    fn set_deployment(
        &self,
        arn: &str,
        stage: Option<LifecycleStage>,
        status: Option<ServiceDeploymentStatus>,
    ) {
        self.ecs.update_service_deployment(arn, |d| {
            if let Some(stage) = stage {
                d.lifecycle_stage = Some(ServiceDeploymentLifecycleStage::from(stage.as_str()));
            }
            if let Some(status) = status {
                d.status = status;
                d.finished_at = Some(crate::ecs_emulator::now());
            }
            d.updated_at = crate::ecs_emulator::now();
        });
    }

    /// Runs the stages forward; `Some(stop)` means the deployment must roll back or was
    /// superseded.
    async fn forward(
        &self,
        state: &mut ServiceState,
        ctx: &DeploymentContext,
    ) -> Result<Option<Stop>, String> {
        let (blue_tg, green_tg) = (ctx.blue_tg.as_str(), ctx.green_tg.as_str());
        let (deployment_id, environment) = (ctx.deployment_id.as_str(), &ctx.environment[..]);
        let intervention = &ctx.intervention;
        let (blue_id, green_id) = (ctx.blue_id.as_ref(), ctx.green_id.as_ref());
        let hooks_registered = ctx.hooks_registered;
        let alb = state.setup.alb.clone();
        let no_weights = json!({});
        let stages = ctx
            .reconcile
            .map(|_| LifecycleStage::ReconcileService)
            .into_iter()
            .chain([
                LifecycleStage::PreScaleUp,
                LifecycleStage::PostScaleUp,
                LifecycleStage::TestTrafficShift,
                LifecycleStage::PostTestTrafficShift,
                LifecycleStage::PreProductionTrafficShift,
                LifecycleStage::ProductionTrafficShift,
                LifecycleStage::PostProductionTrafficShift,
            ]);
        for stage in stages {
            if *intervention == Intervention::StopAt(stage)
                || state.stop_requested.load(Ordering::SeqCst)
            {
                return Ok(Some(Stop::Rollback(format!(
                    "deployment stopped with ROLLBACK at {stage}"
                ))));
            }
            if matches!(intervention, Intervention::Supersede { when: SupersedeWhen::Before(at), .. } if *at == stage)
            {
                return Ok(Some(Stop::Superseded));
            }
            self.set_deployment(&ctx.deployment_arn, Some(stage), None);
            match stage {
                LifecycleStage::ReconcileService => {
                    // Every revision that still has tasks is named, as in ECS's example payload.
                    let mut production = serde_json::Map::new();
                    production.insert(ctx.blue_revision.clone(), json!(100.0));
                    for older in &ctx.older_revisions {
                        production.insert(older.clone(), json!(0.0));
                    }
                    production.insert(ctx.green_revision.clone(), json!(0.0));
                    let production = Value::Object(production);
                    if let Some(stop) = self
                        .run_hooks(state, ctx, stage, &no_weights, &production)
                        .await
                    {
                        return Ok(Some(stop));
                    }
                    if ctx.reconcile == Some(ScaleDownAt::ReconcileService)
                        && state.tasks.contains_key(green_tg)
                    {
                        self.stop_tasks(state, green_tg).await?;
                        self.step(
                            state,
                            "RECONCILE_SERVICE: the revision in green's target group scaled down",
                        )
                        .await;
                    }
                }
                LifecycleStage::PostScaleUp => {
                    // SCALE_UP (not hookable) comes first: whatever still runs in green's target
                    // group is scaled down, then green's tasks start, serving nothing yet.
                    if state.tasks.contains_key(green_tg) {
                        self.stop_tasks(state, green_tg).await?;
                        self.step(
                            state,
                            "SCALE_UP: the revision in green's target group scaled down",
                        )
                        .await;
                    }
                    self.start_tasks(state, deployment_id, environment, green_tg)
                        .await?;
                    self.activate_revision(
                        &ctx.green_revision,
                        green_tg,
                        &state.setup.alb.production_rule_arn,
                    );
                    self.step(state, "SCALE_UP").await;
                    if let Some(stop) = self
                        .run_hooks(state, ctx, stage, &no_weights, &no_weights)
                        .await
                    {
                        return Ok(Some(stop));
                    }
                }
                LifecycleStage::TestTrafficShift => {
                    if let Some(test_rule) = &alb.test_rule_arn {
                        set_forward_weights(&self.elb, test_rule, &[(green_tg, 1), (blue_tg, 0)])
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    let test = weights(&ctx.green_revision, 100.0, &ctx.blue_revision);
                    if let Some(stop) = self.run_hooks(state, ctx, stage, &test, &no_weights).await
                    {
                        return Ok(Some(stop));
                    }
                }
                LifecycleStage::PostTestTrafficShift => {
                    if let Some(stop) = self
                        .run_hooks(state, ctx, stage, &no_weights, &no_weights)
                        .await
                    {
                        return Ok(Some(stop));
                    }
                    if hooks_registered && self.is_engaged(&state.service_arn) {
                        state.truth.must_be_pinned = blue_id.cloned().into_iter().collect();
                    }
                    self.step(state, "after POST_TEST_TRAFFIC_SHIFT").await;
                }
                LifecycleStage::ProductionTrafficShift => {
                    for green_weight in state.setup.strategy.production_steps() {
                        if state.stop_requested.load(Ordering::SeqCst) {
                            return Ok(Some(Stop::Rollback(
                                "deployment stopped with ROLLBACK during the production shift"
                                    .to_owned(),
                            )));
                        }
                        let pre_step = state.setup.strategy != Strategy::BlueGreen;
                        if pre_step
                            && let Some(stop) = self
                                .run_hooks(
                                    state,
                                    ctx,
                                    LifecycleStage::PreProductionTrafficShift,
                                    &no_weights,
                                    &no_weights,
                                )
                                .await
                        {
                            return Ok(Some(stop));
                        }
                        let (green_alb, blue_alb) = alb_weights(green_weight);
                        set_forward_weights(
                            &self.elb,
                            &alb.production_rule_arn,
                            &[(green_tg, green_alb), (blue_tg, blue_alb)],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        let production =
                            weights(&ctx.green_revision, green_weight, &ctx.blue_revision);
                        if let Some(stop) = self
                            .run_hooks(state, ctx, stage, &no_weights, &production)
                            .await
                        {
                            return Ok(Some(stop));
                        }
                        if hooks_registered && self.is_engaged(&state.service_arn) {
                            state.truth.must_be_pinned =
                                blue_id.into_iter().chain(green_id).cloned().collect();
                            dedup(&mut state.truth.must_be_pinned);
                        }
                        self.step(state, &format!("PRODUCTION_TRAFFIC_SHIFT {green_weight}%"))
                            .await;
                    }
                }
                LifecycleStage::PreProductionTrafficShift
                    if state.setup.strategy != Strategy::BlueGreen =>
                {
                    // Invoked before each production step instead.
                }
                _ => {
                    if let Some(stop) = self
                        .run_hooks(state, ctx, stage, &no_weights, &no_weights)
                        .await
                    {
                        return Ok(Some(stop));
                    }
                }
            }
        }
        if hooks_registered && self.is_engaged(&state.service_arn) {
            state.truth.must_be_pinned = green_id.cloned().into_iter().collect();
        }
        self.set_deployment(&ctx.deployment_arn, None, None);
        self.step(state, "BAKE_TIME").await;
        let bake_until = Instant::now() + state.setup.bake.mul_f64(self.time_scale);
        if matches!(
            intervention,
            Intervention::Supersede {
                when: SupersedeWhen::DuringBake,
                ..
            }
        ) {
            return Ok(Some(Stop::Superseded));
        }
        while Instant::now() < bake_until {
            if *intervention == Intervention::StopDuringBake
                || state.stop_requested.load(Ordering::SeqCst)
            {
                return Ok(Some(Stop::Rollback(
                    "deployment stopped with ROLLBACK during bake time".to_owned(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if *intervention == Intervention::StopDuringBake {
            return Ok(Some(Stop::Rollback(
                "deployment stopped with ROLLBACK during bake time".to_owned(),
            )));
        }
        // CLEAN_UP: blue is scaled down; its test-rule weight is already 0.
        self.stop_tasks(state, blue_tg).await?;
        self.step(state, "CLEAN_UP").await;
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    async fn rollback(
        &self,
        state: &mut ServiceState,
        ctx: &DeploymentContext,
        blue_tg: &str,
        green_tg: &str,
        reason: &str,
        blue_id: Option<&DeploymentId>,
        hooks_registered: bool,
    ) -> Result<(), String> {
        let alb = state.setup.alb.clone();
        self.ecs
            .update_service_deployment(&ctx.deployment_arn, |d| {
                d.status = ServiceDeploymentStatus::RollbackInProgress;
                d.rollback = Some(Rollback {
                    reason: reason.to_owned(),
                    started_at: crate::ecs_emulator::now(),
                    service_revision_arn: ctx.blue_revision.clone(),
                });
            });
        set_forward_weights(
            &self.elb,
            &alb.production_rule_arn,
            &[(blue_tg, 1), (green_tg, 0)],
        )
        .await
        .map_err(|e| e.to_string())?;
        if let Some(test_rule) = &alb.test_rule_arn {
            set_forward_weights(&self.elb, test_rule, &[(blue_tg, 1), (green_tg, 0)])
                .await
                .map_err(|e| e.to_string())?;
        }
        let reversed = weights(&ctx.green_revision, 0.0, &ctx.blue_revision);
        let none = json!({});
        // Rollback has no stage of its own: the traffic-shift hooks are invoked again.
        let mut rollback_failed = false;
        for (stage, test, production) in [
            (LifecycleStage::TestTrafficShift, &reversed, &none),
            (LifecycleStage::ProductionTrafficShift, &none, &reversed),
        ] {
            if let Some(problem) = self.run_hooks(state, ctx, stage, test, production).await {
                // A hook answering FAILED (or timing out) during a rollback: ECS ends in
                // ROLLBACK_FAILED.
                tracing::warn!(?problem, "a hook failed during rollback");
                rollback_failed = true;
            }
        }
        if hooks_registered && self.is_engaged(&state.service_arn) {
            state.truth.must_be_pinned = blue_id.cloned().into_iter().collect();
        }
        self.step(state, "rollback: hooks done").await;
        self.stop_tasks(state, green_tg).await?;
        self.ecs
            .update_service_deployment(&ctx.deployment_arn, |d| {
                d.status = if rollback_failed {
                    ServiceDeploymentStatus::RollbackFailed
                } else {
                    ServiceDeploymentStatus::RollbackSuccessful
                };
                d.finished_at = Some(crate::ecs_emulator::now());
            });
        self.step(state, "rollback: green stopped").await;
        Ok(())
    }

    /// Invokes every hook registered for `stage`; `Some(stop)` if one failed (or the
    /// deployment was superseded while a hook held it).
    async fn run_hooks(
        &self,
        state: &ServiceState,
        ctx: &DeploymentContext,
        stage: LifecycleStage,
        test: &Value,
        production: &Value,
    ) -> Option<Stop> {
        let registrations: Vec<HookRegistration> = state
            .setup
            .hooks
            .iter()
            .filter(|h| h.stages.contains(&stage))
            .cloned()
            .collect();
        // Every hook registered at a stage runs at the same time; the first to fail ends the
        // stage at once (a rollback may then start while the others' invocations still run:
        // each invocation is its own task and goes on).
        let hooks: Vec<BoxFuture<'_, Result<(), Stop>>> = registrations
            .iter()
            .map(|registration| {
                Box::pin(self.run_hook(state, ctx, stage, registration, test, production))
                    as BoxFuture<'_, Result<(), Stop>>
            })
            .collect();
        first_stop(hooks).await
    }

    async fn run_hook(
        &self,
        state: &ServiceState,
        ctx: &DeploymentContext,
        stage: LifecycleStage,
        registration: &HookRegistration,
        test: &Value,
        production: &Value,
    ) -> Result<(), Stop> {
        let execution_id = format!(
            "{:08x}-engine-{}",
            self.executions.fetch_add(1, Ordering::Relaxed),
            stage.as_str().to_ascii_lowercase()
        );
        let started = Instant::now();
        let mut details = registration.hook_details.clone();
        loop {
            let event = json!({
                "executionId": execution_id,
                "lifecycleStage": stage.as_str(),
                "resourceArn": ctx.deployment_arn,
                "executionDetails": {
                    "serviceArn": state.service_arn,
                    "targetServiceRevisionArn": ctx.green_revision,
                    "testTrafficWeights": test,
                    "productionTrafficWeights": production,
                },
                "hookDetails": details,
            });
            // Its own task, holding the world shared: a stage that ends early (another hook
            // failed) leaves it running, as ECS would.
            let invocation = {
                let quiesce = self.quiesce.clone();
                let invoker = self.invoker.clone();
                let user = registration.user.clone();
                let function = registration.function;
                tokio::spawn(async move {
                    let _shared = quiesce.read_owned().await;
                    match user {
                        Some(user) => Invocation::Answered(user(event).await),
                        None => invoker.invoke(function, event).await,
                    }
                })
                .await
                .unwrap_or_else(|e| Invocation::Failed(format!("invocation task: {e}")))
            };
            let answer = match invocation {
                Invocation::Answered(answer) => answer,
                Invocation::Failed(reason) => {
                    return Err(Stop::Rollback(format!(
                        "{} failed at {stage}: {reason}",
                        registration.function.name()
                    )));
                }
            };
            match answer.get("hookStatus").and_then(Value::as_str) {
                Some("SUCCEEDED") => {
                    if stage == LifecycleStage::PostTestTrafficShift
                        && registration.function == HookFunction::PostTestTraffic
                    {
                        self.engaged
                            .lock()
                            .expect("engaged")
                            .insert(state.service_arn.clone());
                    }
                    return Ok(());
                }
                Some("FAILED") => {
                    return Err(Stop::Rollback(format!(
                        "{} answered FAILED at {stage}",
                        registration.function.name()
                    )));
                }
                Some("IN_PROGRESS") => {
                    let delay = answer
                        .get("callBackDelay")
                        .and_then(Value::as_u64)
                        .unwrap_or(30);
                    if let Some(returned) = answer.get("hookDetails").and_then(Value::as_object) {
                        for (k, v) in returned {
                            details.insert(k.clone(), v.clone());
                        }
                    }
                    self.step(state, &format!("{stage} holding")).await;
                    if stage == LifecycleStage::PostProductionTrafficShift
                        && matches!(
                            ctx.intervention,
                            Intervention::Supersede {
                                when: SupersedeWhen::WhileHolding,
                                ..
                            }
                        )
                    {
                        return Err(Stop::Superseded);
                    }
                    let wait = Duration::from_secs(delay).mul_f64(self.time_scale);
                    if started.elapsed() + wait > registration.timeout {
                        if registration.timeout_action == TimeoutAction::Continue {
                            tracing::warn!(%stage, "hook timed out; action CONTINUE");
                            return Ok(());
                        }
                        return Err(Stop::Rollback(format!(
                            "{} timed out at {stage} (action ROLLBACK)",
                            registration.function.name()
                        )));
                    }
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if state.stop_requested.load(Ordering::SeqCst) {
                            return Err(Stop::Rollback(format!(
                                "deployment stopped with ROLLBACK while {} held {stage}",
                                registration.function.name()
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                other => {
                    return Err(Stop::Rollback(format!(
                        "{} gave an invalid answer at {stage}: hookStatus {other:?}",
                        registration.function.name()
                    )));
                }
            }
        }
    }
}

/// `deploymentConfiguration` as ECS records it on each deployment, lifecycle hooks included.
fn deployment_configuration(setup: &ServiceSetup) -> Value {
    let (strategy, extra) = match setup.strategy {
        Strategy::BlueGreen => ("BLUE_GREEN", json!({})),
        Strategy::Linear(step) => (
            "LINEAR",
            json!({"linearConfiguration": {"stepPercent": step}}),
        ),
        Strategy::Canary(first) => (
            "CANARY",
            json!({"canaryConfiguration": {"canaryPercent": first}}),
        ),
    };
    let hooks: Vec<Value> = setup
        .hooks
        .iter()
        .map(|h| {
            json!({
                "hookTargetArn": match &h.user {
                    Some(_) => "arn:aws:lambda:us-east-1:123456789012:function:user-hook".to_owned(),
                    None => format!("arn:aws:lambda:us-east-1:123456789012:function:skewguard-{}", h.function.name()),
                },
                "roleArn": "arn:aws:iam::123456789012:role/skewguard-ecs-hooks",
                "lifecycleStages": h.stages.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "hookDetails": h.hook_details,
                "timeoutConfiguration": {
                    "timeoutInMinutes": h.timeout.as_secs().div_ceil(60).max(1),
                    "action": match h.timeout_action {
                        TimeoutAction::Rollback => "ROLLBACK",
                        TimeoutAction::Continue => "CONTINUE",
                    },
                },
            })
        })
        .collect();
    let mut configuration = json!({
        "strategy": strategy,
        "bakeTimeInMinutes": 0,
        "maximumPercent": 200,
        "minimumHealthyPercent": 100,
        "lifecycleHooks": hooks,
    });
    if let (Some(map), Some(extra)) = (configuration.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    configuration
}

/// Runs the hooks of one stage together: `Some(stop)` as soon as one stops the stage, `None`
/// once all succeeded. Dropping the others leaves their invocations running.
async fn first_stop(mut hooks: Vec<BoxFuture<'_, Result<(), Stop>>>) -> Option<Stop> {
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < hooks.len() {
            match hooks[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(())) => {
                    drop(hooks.swap_remove(i));
                }
                std::task::Poll::Ready(Err(stop)) => return std::task::Poll::Ready(Some(stop)),
                std::task::Poll::Pending => i += 1,
            }
        }
        if hooks.is_empty() {
            std::task::Poll::Ready(None)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// One deployment as the engine runs it.
struct DeploymentContext {
    deployment_arn: String,
    green_revision: String,
    blue_revision: String,
    /// Revisions besides blue that still had tasks when the deployment started.
    older_revisions: Vec<String>,
    blue_tg: String,
    green_tg: String,
    /// Green's deployment ID as written into its task definition (possibly invalid).
    deployment_id: String,
    environment: Vec<(String, String)>,
    intervention: Intervention,
    blue_id: Option<DeploymentId>,
    green_id: Option<DeploymentId>,
    hooks_registered: bool,
    /// Set when the deployment passes through RECONCILE_SERVICE: when ECS scales down what
    /// occupies green's target group.
    reconcile: Option<ScaleDownAt>,
}

fn dedup(ids: &mut Vec<DeploymentId>) {
    let mut seen = BTreeSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

/// Replaces what `truths` say of retention copies with what the emulator runs now: each
/// service's active copies (invariant 7) and, while a copy is asked to run tasks, its target
/// group as running its version.
pub fn with_retention_copies(ecs: &EcsEmulator, truths: &mut [ServiceTruth]) {
    let copies = ecs.with_state(|s| retention_copies(s));
    for truth in truths.iter_mut() {
        // What an earlier truth said of copies is recomputed below (skewguard names their
        // target groups `sg-<16 hex>`).
        truth.retention_services.clear();
        truth
            .running
            .retain(|tg, _| !tg.contains(":targetgroup/sg-"));
        for copy in copies.iter().filter(|c| c.owner == truth.service_arn) {
            truth.retention_services.push(copy.name.clone());
            if copy.asked_to_run {
                for target_group in &copy.target_groups {
                    truth
                        .running
                        .insert(target_group.clone(), copy.deployment_id.clone());
                }
            }
        }
    }
}

/// An active retention copy in the emulator: a plain service tagged `skewguard:service`.
struct RetentionCopy {
    /// The service it keeps a version of.
    owner: String,
    name: String,
    target_groups: Vec<String>,
    deployment_id: DeploymentId,
    /// Its desired count is above 0 (it is not being retired).
    asked_to_run: bool,
}

/// The retention copies in the emulator: every ACTIVE plain service tagged `skewguard:service`.
fn retention_copies(state: &crate::ecs_emulator::EcsState) -> Vec<RetentionCopy> {
    let mut copies = Vec::new();
    for service in state.services.values() {
        let Some(owner) = service
            .tags
            .iter()
            .find(|(k, _)| k == "skewguard:service")
            .map(|(_, v)| v)
        else {
            continue;
        };
        if service.status != "ACTIVE" {
            continue;
        }
        let Some(cluster) = service.cluster_arn.rsplit('/').next() else {
            continue;
        };
        let version = service
            .task_definition
            .as_deref()
            .and_then(|td| state.task_definition(td))
            .and_then(|td| {
                td.container_definitions.iter().find_map(|c| {
                    c.environment
                        .iter()
                        .find(|kv| kv.name == "DEPLOYMENT_ID")
                        .and_then(|kv| DeploymentId::parse(&kv.value).ok())
                })
            });
        let Some(deployment_id) = version else {
            continue;
        };
        copies.push(RetentionCopy {
            owner: crate::ecs_emulator::service_arn(cluster, owner),
            name: service.service_name.clone(),
            target_groups: service
                .load_balancers
                .iter()
                .map(|lb| lb.target_group_arn.clone())
                .collect(),
            deployment_id,
            asked_to_run: service.desired_count > 0,
        });
    }
    copies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_steps_follow_the_strategy() {
        assert_eq!(Strategy::BlueGreen.production_steps(), vec![100.0]);
        assert_eq!(
            Strategy::Linear(25.0).production_steps(),
            vec![25.0, 50.0, 75.0, 100.0]
        );
        assert_eq!(
            Strategy::Linear(30.0).production_steps(),
            vec![30.0, 60.0, 90.0, 100.0]
        );
        assert_eq!(
            Strategy::Linear(33.3).production_steps(),
            vec![33.3, 66.6, 99.9, 100.0]
        );
        assert_eq!(Strategy::Canary(2.5).production_steps(), vec![2.5, 100.0]);
        assert_eq!(alb_weights(2.5), (25, 974));
        assert_eq!(alb_weights(100.0), (999, 0));
    }
}
