//! A whole local AWS world in one value: moto (ELBv2, DynamoDB), the ECS emulator, the ledger
//! table, an ALB, and a deployment engine whose every step is checked against the invariants.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use skewguard_core::aws::elb::Elb;
use skewguard_core::aws::ledger_store::LedgerStore;
use skewguard_core::hook::Clients as HookClients;
use skewguard_core::listener::Request;
use skewguard_core::settings::EnvDefaults;

use crate::aws::{Clients, Endpoints};
use crate::clock::WorldClock;
use crate::cloudwatch::CloudWatchStandIn;
use crate::ecs_emulator::EcsEmulator;
use crate::engine::{
    BoxFuture, Engine, HookRegistration, InProcess, Invoker, Observer, ServiceSetup, StopHandle,
    Strategy, TaskRunner,
};
use crate::fixtures::{AlbFixture, Vpc, create_ledger_table};
use crate::invariants::{Observation, ServiceTruth, violations};
use crate::moto::MotoServer;
use crate::scheduler::RollingScheduler;

pub const TABLE: &str = "skewguard-ledger";
pub const CLUSTER: &str = "shop";

/// Checks the invariants after every step and keeps what it found.
pub struct InvariantChecker {
    elb: Elb,
    ledger: LedgerStore,
    listener_arn: String,
    previous: tokio::sync::Mutex<Option<Observation>>,
    pub violations: Mutex<Vec<String>>,
    pub steps: Mutex<Vec<String>>,
}

impl InvariantChecker {
    pub fn new(elb: Elb, ledger: LedgerStore, listener_arn: &str) -> Self {
        Self {
            elb,
            ledger,
            listener_arn: listener_arn.to_owned(),
            previous: tokio::sync::Mutex::new(None),
            violations: Mutex::new(Vec::new()),
            steps: Mutex::new(Vec::new()),
        }
    }

    pub async fn check_now(&self, label: &str, truths: &[ServiceTruth]) {
        let services: Vec<&str> = truths.iter().map(|t| t.service_arn.as_str()).collect();
        let mut previous = self.previous.lock().await;
        match Observation::take(&self.elb, &self.ledger, &self.listener_arn, &services).await {
            Ok(now) => {
                let found = violations(&now, previous.as_ref(), truths);
                self.violations
                    .lock()
                    .expect("violations")
                    .extend(found.into_iter().map(|v| format!("after {label}: {v}")));
                *previous = Some(now);
            }
            Err(e) => self
                .violations
                .lock()
                .expect("violations")
                .push(format!("after {label}: could not observe the world: {e}")),
        }
        self.steps.lock().expect("steps").push(label.to_owned());
    }

    /// The most recent observation, for timelines.
    pub async fn last_observation(&self) -> Option<Observation> {
        self.previous.lock().await.clone()
    }

    pub fn found(&self) -> Vec<String> {
        self.violations.lock().expect("violations").clone()
    }
}

impl Observer for InvariantChecker {
    fn after_step<'a>(
        &'a self,
        service: &'a str,
        step: &'a str,
        truths: Vec<ServiceTruth>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let name = service.rsplit('/').next().unwrap_or(service);
            self.check_now(&format!("{name}: {step}"), &truths).await;
        })
    }
}

pub struct World {
    pub moto: MotoServer,
    pub ecs: Arc<EcsEmulator>,
    /// CloudWatch metrics (moto does not speak the SDK's protocol for them).
    pub cloudwatch: Arc<CloudWatchStandIn>,
    /// World time: what the data plane stamps metrics with and CloudWatch answers in.
    pub clock: WorldClock,
    pub clients: Clients,
    pub endpoints: Endpoints,
    pub vpc: Vpc,
    pub hook_clients: HookClients,
    pub checker: Arc<InvariantChecker>,
    pub engine: Engine,
    /// Runs the tasks of the plain services created through the ECS emulator's `CreateService`.
    pub scheduler: RollingScheduler,
    pub alb: AlbFixture,
    /// The production rule's path pattern, e.g. `/api/*`.
    pub production_path: String,
}

/// The stand-ins, the ledger table and an ALB, before the engine is attached.
pub struct StandIns {
    pub moto: MotoServer,
    pub ecs: Arc<EcsEmulator>,
    pub cloudwatch: Arc<CloudWatchStandIn>,
    pub clock: WorldClock,
    pub clients: Clients,
    pub endpoints: Endpoints,
    pub vpc: Vpc,
    pub hook_clients: HookClients,
    pub checker: Arc<InvariantChecker>,
    pub alb: AlbFixture,
    pub production_path: String,
}

impl StandIns {
    /// moto, the ECS emulator, the ledger table, and an ALB whose production rule matches
    /// `production_path` at priority 100, with the ECS test rule at priority 10.
    pub async fn start(production_path: &str) -> StandIns {
        skewguard_core::telemetry::init();
        let moto = MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        StandIns::on(moto, production_path).await
    }

    /// The same on a running moto that holds nothing yet.
    pub async fn on(moto: MotoServer, production_path: &str) -> StandIns {
        let ecs = Arc::new(EcsEmulator::start().await.expect("ECS emulator starts"));
        let clock = WorldClock::real();
        let cloudwatch = Arc::new(
            CloudWatchStandIn::start(clock.clone())
                .await
                .expect("CloudWatch stand-in starts"),
        );
        let endpoints =
            Endpoints::new(ecs.endpoint(), moto.endpoint()).with_cloudwatch(cloudwatch.endpoint());
        let clients = Clients::new(&endpoints).await;
        ecs.use_elbv2(clients.elbv2.clone());
        create_ledger_table(&clients.dynamodb, TABLE)
            .await
            .expect("ledger table");
        let vpc = Vpc::default_in(&moto.endpoint()).await.expect("moto VPC");
        let alb = AlbFixture::with_path_rule_as_production(
            &clients.elbv2,
            &vpc,
            "web",
            None,
            100,
            production_path,
        )
        .await
        .expect("ALB")
        .with_test_rule(&clients.elbv2, 10)
        .await
        .expect("test rule");
        let hook_clients = skewguard_core::cold_start::clients(&clients.config, TABLE);
        let checker = Arc::new(InvariantChecker::new(
            hook_clients.elb.clone(),
            hook_clients.ledger.clone(),
            &alb.listener_arn,
        ));
        StandIns {
            moto,
            ecs,
            cloudwatch,
            clock,
            clients,
            endpoints,
            vpc,
            hook_clients,
            checker,
            alb,
            production_path: production_path.to_owned(),
        }
    }

    /// The hooks called in this process.
    pub fn in_process(&self) -> Arc<dyn Invoker> {
        Arc::new(InProcess {
            clients: self.hook_clients.clone(),
            defaults: EnvDefaults::default(),
        })
    }

    pub fn with_engine(
        self,
        invoker: Arc<dyn Invoker>,
        tasks: Arc<dyn TaskRunner>,
        observer: Arc<dyn Observer>,
    ) -> World {
        let scheduler =
            RollingScheduler::start(self.ecs.clone(), self.clients.elbv2.clone(), tasks.clone());
        let engine = Engine::new(
            self.ecs.clone(),
            self.clients.elbv2.clone(),
            invoker,
            tasks,
            observer,
        );
        World {
            moto: self.moto,
            ecs: self.ecs,
            cloudwatch: self.cloudwatch,
            clock: self.clock,
            clients: self.clients,
            endpoints: self.endpoints,
            vpc: self.vpc,
            hook_clients: self.hook_clients,
            checker: self.checker,
            engine,
            scheduler,
            alb: self.alb,
            production_path: self.production_path,
        }
    }
}

impl World {
    /// A world with one ALB whose production rule is `/api/*` at priority 100, a test rule at
    /// 10, and hooks invoked in-process.
    pub async fn start() -> World {
        Self::start_with(
            |hook_clients| {
                Arc::new(InProcess {
                    clients: hook_clients,
                    defaults: EnvDefaults::default(),
                })
            },
            Arc::new(crate::engine::PlaceholderTasks),
        )
        .await
    }

    pub async fn start_with(
        invoker: impl FnOnce(HookClients) -> Arc<dyn Invoker>,
        tasks: Arc<dyn TaskRunner>,
    ) -> World {
        let stand_ins = StandIns::start("/api/*").await;
        let invoker = invoker(stand_ins.hook_clients.clone());
        let observer = stand_ins.checker.clone();
        stand_ins.with_engine(invoker, tasks, observer)
    }

    /// A service behind the world's ALB running `deployment_id`, with skewguard's hooks.
    pub async fn service(
        &self,
        name: &str,
        deployment_id: &str,
        hook_details: Value,
    ) -> (String, StopHandle) {
        self.service_on(
            name,
            self.alb.clone(),
            Request::get("/api/cart"),
            deployment_id,
            HookRegistration::skewguard(hook_details),
            Strategy::BlueGreen,
        )
        .await
    }

    pub async fn service_on(
        &self,
        name: &str,
        alb: AlbFixture,
        probe: Request,
        deployment_id: &str,
        hooks: Vec<HookRegistration>,
        strategy: Strategy,
    ) -> (String, StopHandle) {
        let setup = ServiceSetup {
            cluster: CLUSTER.to_owned(),
            name: name.to_owned(),
            alb,
            container: "web".to_owned(),
            hooks,
            strategy,
            bake: std::time::Duration::from_millis(200),
            probe,
        };
        let stop = self
            .engine
            .create_service(setup, deployment_id, &[])
            .await
            .expect("service starts");
        (crate::ecs_emulator::service_arn(CLUSTER, name), stop)
    }

    /// Runs the invariant check once more, outside any deployment step.
    pub async fn check(&self, label: &str) {
        self.checker.check_now(label, &self.engine.truths()).await;
    }

    /// Fails the test with every invariant violation seen so far.
    pub fn assert_no_violations(&self) {
        let found = self.checker.found();
        assert!(
            found.is_empty(),
            "invariant violations:\n{}",
            found.join("\n")
        );
        assert!(
            !self.checker.steps.lock().expect("steps").is_empty(),
            "no step was checked"
        );
    }

    pub fn ledger(&self) -> &LedgerStore {
        &self.hook_clients.ledger
    }

    pub fn elb(&self) -> &Elb {
        &self.hook_clients.elb
    }
}
