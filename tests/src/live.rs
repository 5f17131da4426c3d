//! The live world: the real hook binaries behind a local Lambda Runtime API, real example
//! backends as ECS tasks, the ALB data plane, and browser tabs calling through it that notice
//! version skew.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use skewguard_core::hook::HookFunction;

use crate::aws::{Endpoints, function_env};
use crate::backend::{Backend, validate_cart};
use crate::engine::{BoxFuture, Invocation, Invoker, Observer, RunningTask, TaskRunner};
use crate::iam::{AuthorisingProxy, Denial, Roles};
use crate::invariants::ServiceTruth;
use crate::lambda::{LocalFunction, workspace_binary};
use crate::moto::WorldError;
use crate::world::InvariantChecker;

/// Invokes the compiled hook functions, each a warm process behind a local Runtime API, each
/// confined to its role of infra/template.yaml by an [`AuthorisingProxy`].
pub struct ProcessInvoker {
    functions: BTreeMap<&'static str, LocalFunction>,
    proxies: BTreeMap<&'static str, AuthorisingProxy>,
    timeout: Duration,
}

impl ProcessInvoker {
    /// The hooks with the roles of infra/template.yaml ([`Roles::world`]).
    pub async fn start(endpoints: &Endpoints, table: &str) -> Result<ProcessInvoker, WorldError> {
        Self::start_with_roles(endpoints, table, Roles::world()?).await
    }

    /// The hooks with the given roles, in front of the stand-ins `endpoints` names.
    pub async fn start_with_roles(
        endpoints: &Endpoints,
        table: &str,
        roles: &Roles,
    ) -> Result<ProcessInvoker, WorldError> {
        let mut functions = BTreeMap::new();
        let mut proxies = BTreeMap::new();
        for function in [
            HookFunction::PostTestTraffic,
            HookFunction::ProductionShift,
            HookFunction::PostShift,
        ] {
            let name = function.name();
            let role = roles.role(name)?.clone();
            let proxy = AuthorisingProxy::start(name, role, endpoints, endpoints).await;
            let mut env = function_env(&proxy.endpoints());
            env.push(("SKEWGUARD_TABLE".to_owned(), table.to_owned()));
            env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), "JSON".to_owned()));
            let binary = workspace_binary(name, name)
                .map_err(WorldError::io(format!("finding the {name} binary")))?;
            let local = LocalFunction::start(name, binary, env)
                .await
                .map_err(WorldError::io(format!("starting {name}")))?;
            functions.insert(name, local);
            proxies.insert(name, proxy);
        }
        Ok(ProcessInvoker {
            functions,
            proxies,
            timeout: Duration::from_secs(60),
        })
    }

    pub fn function(&self, function: HookFunction) -> &LocalFunction {
        &self.functions[function.name()]
    }

    /// The calls `function`'s role refused.
    pub fn denials(&self, function: HookFunction) -> Vec<Denial> {
        self.proxies[function.name()].denials()
    }
}

impl Invoker for ProcessInvoker {
    fn invoke<'a>(&'a self, function: HookFunction, event: Value) -> BoxFuture<'a, Invocation> {
        Box::pin(async move {
            match self.functions[function.name()]
                .invoke(event, self.timeout)
                .await
            {
                Ok(answer) => Invocation::Answered(answer),
                Err(e) => Invocation::Failed(e.to_string()),
            }
        })
    }
}

impl RunningTask for Backend {
    fn port(&self) -> u16 {
        Backend::port(self)
    }
    fn ip(&self) -> std::net::IpAddr {
        self.addr().ip()
    }
}

/// Runs each task as an example `checkout` backend; `CART_SCHEMA` in the task's environment
/// picks the API version it serves.
pub struct CheckoutTasks;

impl TaskRunner for CheckoutTasks {
    fn start<'a>(
        &'a self,
        deployment_id: &'a str,
        environment: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>> {
        self.start_at(
            std::net::Ipv4Addr::LOCALHOST.into(),
            deployment_id,
            environment,
        )
    }

    fn start_at<'a>(
        &'a self,
        ip: std::net::IpAddr,
        deployment_id: &'a str,
        environment: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Box<dyn RunningTask>, String>> {
        Box::pin(async move {
            let schema = environment
                .iter()
                .find(|(k, _)| k == "CART_SCHEMA")
                .map_or("v1", |(_, v)| v.as_str());
            let backend = Backend::start(deployment_id, schema)
                .await
                .map_err(|e| e.to_string())?;
            if ip == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST) {
                return Ok(Box::new(backend) as Box<dyn RunningTask>);
            }
            let task = AddressedTask::start(ip, backend)
                .await
                .map_err(|e| format!("a task address {ip}: {e}"))?;
            Ok(Box::new(task) as Box<dyn RunningTask>)
        })
    }
}

/// A backend reached on an address of its own: the backend listens on `127.0.0.1`, and
/// connections to `ip:port` are relayed to it byte for byte (as an awsvpc task's own IP would
/// reach its container). Stops relaying, and stops the backend, when dropped.
pub struct AddressedTask {
    addr: std::net::SocketAddr,
    relay: tokio::task::JoinHandle<()>,
    _backend: Backend,
}

impl AddressedTask {
    pub async fn start(ip: std::net::IpAddr, backend: Backend) -> std::io::Result<AddressedTask> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let upstream = backend.addr();
        let relay = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(AddressedTask {
            addr,
            relay,
            _backend: backend,
        })
    }
}

impl Drop for AddressedTask {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl RunningTask for AddressedTask {
    fn port(&self) -> u16 {
        self.addr.port()
    }
    fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }
}

/// A browser tab: pinned to the deployment whose frontend it loaded (or not pinned), and
/// reading the cart schema that frontend was built for.
#[derive(Debug, Clone)]
pub struct Tab {
    pub name: String,
    pub service_arn: String,
    pub pin: Option<String>,
    /// The schema this tab's frontend understands; `None` accepts any.
    pub schema: Option<String>,
}

/// One answer a tab got.
#[derive(Debug, Clone)]
struct Answer {
    tab: usize,
    served_by: Option<String>,
    valid: bool,
    error: Option<String>,
    status: u16,
    at: Instant,
}

/// What one tab saw, classified against the moments its version was promised to be pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TabCounters {
    pub requests: u64,
    /// Served by its own version.
    pub own: u64,
    /// Served by another version while its own was protected: what skewguard exists to prevent.
    pub skewed: u64,
    /// Served by production after its own version's skew window ended.
    pub fell_back: u64,
    /// Answers that failed the tab's schema validation (while not skewed: after falling back).
    pub invalid: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub served_by: BTreeMap<String, u64>,
}

/// Protection over time: at each observed step, which deployment IDs were promised a pin.
#[derive(Debug, Default)]
struct Protection {
    steps: Vec<(Instant, BTreeSet<(String, String)>)>,
}

impl Protection {
    /// Whether `id` of `service` was protected both at the last step before `at` and at the
    /// first step after it: a wrong answer is skew only if the promise held on both sides of it
    /// (a pin being removed at the end of its window, or restored by a rollback, is not).
    fn protected_around(&self, at: Instant, service: &str, id: &str) -> bool {
        let key = (service.to_owned(), id.to_owned());
        let before = self.steps.iter().rev().find(|(t, _)| *t <= at);
        let after = self
            .steps
            .iter()
            .find(|(t, _)| *t >= at)
            .or(self.steps.last());
        [before, after]
            .into_iter()
            .all(|step| step.is_some_and(|(_, set)| set.contains(&key)))
    }
}

/// Tabs calling the data plane continuously until stopped.
pub struct Traffic {
    tabs: Mutex<Vec<Tab>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    protection: Mutex<Protection>,
    stop: Arc<AtomicBool>,
    /// Per tab (by index): closed, it calls no more.
    closed: Mutex<Vec<Arc<AtomicBool>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    url: String,
    pause: Duration,
}

impl Traffic {
    pub fn new(url: &str, pause: Duration) -> Traffic {
        Traffic {
            tabs: Mutex::new(Vec::new()),
            answers: Arc::new(Mutex::new(Vec::new())),
            protection: Mutex::new(Protection::default()),
            stop: Arc::new(AtomicBool::new(false)),
            closed: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            url: url.to_owned(),
            pause,
        }
    }

    /// Opens a tab: it starts calling at once and keeps calling until [`Traffic::stop`].
    pub fn open(&self, tab: Tab) {
        let index = {
            let mut tabs = self.tabs.lock().expect("tabs");
            tabs.push(tab.clone());
            tabs.len() - 1
        };
        let answers = self.answers.clone();
        let stop = self.stop.clone();
        let closed = Arc::new(AtomicBool::new(false));
        self.closed.lock().expect("closed").push(closed.clone());
        let url = format!("{}/v2/cart", self.url);
        let pause = self.pause;
        self.tasks
            .lock()
            .expect("tasks")
            .push(tokio::spawn(async move {
                let client: Client<HttpConnector, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                while !stop.load(Ordering::SeqCst) && !closed.load(Ordering::SeqCst) {
                    let answer = call(&client, &url, &tab, index).await;
                    answers.lock().expect("answers").push(answer);
                    tokio::time::sleep(pause).await;
                }
            }));
    }

    /// Closes the tab named `name`: it makes no further call (one in flight completes).
    /// Returns whether such a tab was open.
    pub fn close(&self, name: &str) -> bool {
        let tabs = self.tabs.lock().expect("tabs");
        let closed = self.closed.lock().expect("closed");
        let mut found = false;
        for (tab, flag) in tabs.iter().zip(closed.iter()) {
            if tab.name == name {
                flag.store(true, Ordering::SeqCst);
                found = true;
            }
        }
        found
    }

    /// Records which deployment IDs are promised a pin right now (from the engine's truth).
    pub fn record_protection(&self, truths: &[ServiceTruth]) {
        let set = truths
            .iter()
            .flat_map(|t| {
                t.must_be_pinned
                    .iter()
                    .map(|id| (t.service_arn.clone(), id.to_string()))
            })
            .collect();
        self.protection
            .lock()
            .expect("protection")
            .steps
            .push((Instant::now(), set));
    }

    pub async fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self.tasks.lock().expect("tasks").drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Every tab's counters so far.
    pub fn counters(&self) -> Vec<(Tab, TabCounters)> {
        let answers = self.answers.lock().expect("answers").clone();
        let tabs = self.tabs.lock().expect("tabs").clone();
        let protection = self.protection.lock().expect("protection");
        let mut counters = vec![TabCounters::default(); tabs.len()];
        for answer in answers {
            let tab = &tabs[answer.tab];
            let c = &mut counters[answer.tab];
            c.requests += 1;
            if answer.error.is_some() {
                c.transport_errors += 1;
                continue;
            }
            if answer.status >= 500 {
                c.server_errors += 1;
                continue;
            }
            if let Some(by) = &answer.served_by {
                *c.served_by.entry(by.clone()).or_default() += 1;
            }
            match &tab.pin {
                Some(pin) if answer.served_by.as_deref() == Some(pin.as_str()) => c.own += 1,
                Some(pin) if protection.protected_around(answer.at, &tab.service_arn, pin) => {
                    c.skewed += 1
                }
                Some(_) => c.fell_back += 1,
                None => c.own += 1,
            }
            if !answer.valid {
                c.invalid += 1;
            }
        }
        tabs.into_iter().zip(counters).collect()
    }

    /// Totals over every tab: requests, skewed, errors (5xx and transport).
    pub fn totals(&self) -> (u64, u64, u64) {
        self.counters().iter().fold((0, 0, 0), |(r, s, e), (_, c)| {
            (
                r + c.requests,
                s + c.skewed,
                e + c.server_errors + c.transport_errors,
            )
        })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.lock().expect("tasks").iter() {
            task.abort();
        }
    }
}

async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    tab: &Tab,
    index: usize,
) -> Answer {
    let mut request = hyper::Request::get(url);
    if let Some(pin) = &tab.pin {
        request = request.header("X-Deployment-ID", pin);
    }
    let request = request.body(Empty::new()).expect("a valid request");
    let result = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await;
    let failed = |error: String| Answer {
        tab: index,
        served_by: None,
        valid: false,
        error: Some(error),
        status: 0,
        at: Instant::now(),
    };
    let response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("timed out".to_owned()),
    };
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-deployment-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return failed(e.to_string()),
    };
    let valid = match (&tab.schema, serde_json::from_slice::<Value>(&body)) {
        (Some(schema), Ok(json)) => validate_cart(schema, &json).is_ok(),
        (None, Ok(_)) => true,
        (_, Err(_)) => false,
    };
    Answer {
        tab: index,
        served_by,
        valid,
        error: None,
        status,
        at: Instant::now(),
    }
}

/// Prints one step of a deployment.
pub type Timeline =
    Box<dyn Fn(&str, &str, &[ServiceTruth], Option<&crate::invariants::Observation>) + Send + Sync>;

/// Checks invariants after every step, records protection for the tabs, and (optionally)
/// prints a readable timeline.
pub struct LiveObserver {
    pub checker: Arc<InvariantChecker>,
    pub traffic: Arc<Traffic>,
    pub timeline: Option<Timeline>,
}

impl Observer for LiveObserver {
    fn after_step<'a>(
        &'a self,
        service: &'a str,
        step: &'a str,
        truths: Vec<ServiceTruth>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.traffic.record_protection(&truths);
            self.checker.after_step(service, step, truths.clone()).await;
            if let Some(print) = &self.timeline {
                let observation = self.checker.last_observation().await;
                print(service, step, &truths, observation.as_ref());
            }
        })
    }
}

/// The live world in one value: stand-ins, real hook processes, real backends, the data plane,
/// and tabs calling through it.
pub struct LiveWorld {
    pub world: crate::world::World,
    pub plane: crate::data_plane::DataPlane,
    pub traffic: Arc<Traffic>,
    pub invoker: Arc<ProcessInvoker>,
}

/// The production rule of the live world's service: the cart API.
pub const PRODUCTION_PATH: &str = "/v2/*";

impl LiveWorld {
    pub async fn start(
        timeline: impl FnOnce(Arc<InvariantChecker>, Arc<Traffic>) -> Option<Timeline>,
    ) -> Result<LiveWorld, WorldError> {
        let stand_ins = crate::world::StandIns::start(PRODUCTION_PATH).await;
        let invoker =
            Arc::new(ProcessInvoker::start(&stand_ins.endpoints, crate::world::TABLE).await?);
        let plane = crate::data_plane::DataPlane::start(
            stand_ins.clients.elbv2.clone(),
            stand_ins.alb.listener_arn.clone(),
        )
        .await
        .map_err(WorldError::io("starting the ALB data plane"))?;
        plane.publish_metrics(
            stand_ins.clients.cloudwatch.clone(),
            stand_ins.clock.clone(),
        );
        let traffic = Arc::new(Traffic::new(&plane.url(), Duration::from_millis(20)));
        let observer = Arc::new(LiveObserver {
            checker: stand_ins.checker.clone(),
            traffic: traffic.clone(),
            timeline: timeline(stand_ins.checker.clone(), traffic.clone()),
        });
        let world = stand_ins.with_engine(invoker.clone(), Arc::new(CheckoutTasks), observer);
        Ok(LiveWorld {
            world,
            plane,
            traffic,
            invoker,
        })
    }

    /// A service already running `deployment_id` (serving `schema`), with skewguard's hooks.
    pub async fn service(
        &self,
        name: &str,
        deployment_id: &str,
        schema: &str,
        hook_details: Value,
    ) -> String {
        self.service_with(
            name,
            deployment_id,
            schema,
            hook_details,
            crate::engine::Strategy::BlueGreen,
        )
        .await
    }

    pub async fn service_with(
        &self,
        name: &str,
        deployment_id: &str,
        schema: &str,
        hook_details: Value,
        strategy: crate::engine::Strategy,
    ) -> String {
        let setup = crate::engine::ServiceSetup {
            cluster: crate::world::CLUSTER.to_owned(),
            name: name.to_owned(),
            alb: self.world.alb.clone(),
            container: "web".to_owned(),
            hooks: crate::engine::HookRegistration::skewguard(hook_details),
            strategy,
            bake: Duration::from_millis(500),
            probe: skewguard_core::listener::Request::get("/v2/cart"),
        };
        self.world
            .engine
            .create_service(setup, deployment_id, &schema_env(schema))
            .await
            .expect("service starts");
        crate::ecs_emulator::service_arn(crate::world::CLUSTER, name)
    }

    pub async fn deploy(
        &self,
        service: &str,
        deployment_id: &str,
        schema: &str,
        intervention: crate::engine::Intervention,
    ) -> Result<crate::engine::Outcome, String> {
        self.world
            .engine
            .deploy(service, deployment_id, &schema_env(schema), intervention)
            .await
    }

    /// A tab that loaded the frontend of `pin` (built for `schema`).
    pub fn open_tab(&self, name: &str, service: &str, pin: Option<&str>, schema: Option<&str>) {
        self.traffic.open(Tab {
            name: name.to_owned(),
            service_arn: service.to_owned(),
            pin: pin.map(str::to_owned),
            schema: schema.map(str::to_owned),
        });
    }
}

pub fn schema_env(schema: &str) -> Vec<(String, String)> {
    vec![("CART_SCHEMA".to_owned(), schema.to_owned())]
}
