//! The project's own ECS endpoint: moto has no service revisions or service deployments.
//!
//! A small HTTP/1.1 server on `127.0.0.1:0` speaking ECS's `awsJson1_1` protocol (`POST /`,
//! `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`, JSON in and out, errors as
//! HTTP 400 `{"__type": .., "message": ..}`), over an in-memory [`EcsState`] that tests (and a
//! deployment engine playing ECS's blue/green part) mutate directly from Rust.
//!
//! Operations: `DescribeServices`, `DescribeServiceRevisions`, `DescribeServiceDeployments`,
//! `DescribeTaskDefinition`, `ListServiceDeployments`, `RegisterTaskDefinition`, and for plain
//! (rolling, hook-less) services `CreateService`, `UpdateService`, `DeleteService`,
//! `TagResource`, `UntagResource`, `ListTagsForResource`. Anything else answers
//! `UnknownOperationException`. The tasks of plain services are run by
//! [`crate::scheduler::RollingScheduler`]; `CreateService` and `UpdateService` check each
//! target group against ELBv2 once [`EcsEmulator::use_elbv2`] named it.
//!
//! Wire shapes follow the SDK's schemas (`aws-sdk-ecs` 1.157): member names are the camelCase
//! names of the state's fields, timestamps are epoch seconds as JSON numbers (millisecond
//! precision, like ECS).
//!
//! In three parts: `state` (services, revisions, deployments, task definitions, their ARNs and
//! wire shapes), `protocol` (the HTTP server, dispatch, faults and request parsing) and
//! `operations` (one function per ECS operation).

mod operations;
mod protocol;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use state::{
    AdvancedConfiguration, ContainerDefinition, EcsState, Fault, KeyValuePair, LoadBalancer,
    PLATFORM_VERSION, PortMapping, ResolvedConfiguration, Rollback, Service, ServiceDeployment,
    ServiceRevision, ServiceRevisionLoadBalancer, ServiceRevisionSummary, TaskDefinition,
    cluster_and_service, cluster_arn, cluster_name, default_network_configuration, new_revision_id,
    new_service_deployment_arn, new_service_revision_arn, now, service_arn, service_deployment_arn,
    service_revision_arn, task_definition_arn,
};

use crate::moto::WorldError;
use protocol::serve;

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// The running emulator; the server stops when this is dropped.
#[derive(Debug)]
pub struct EcsEmulator {
    state: Arc<Mutex<EcsState>>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl EcsEmulator {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start() -> Result<Self, WorldError> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(WorldError::io(
                "binding the ECS emulator to a loopback port",
            ))?;
        let addr = listener
            .local_addr()
            .map_err(WorldError::io("reading the ECS emulator's address"))?;
        let state = Arc::new(Mutex::new(EcsState::default()));
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(Self {
            state,
            addr,
            server,
        })
    }

    /// Checks the target groups of `CreateService` / `UpdateService` against this ELBv2 (moto):
    /// one that no listener forwards to is refused as ECS refuses it.
    pub fn use_elbv2(&self, elbv2: aws_sdk_elasticloadbalancingv2::Client) {
        self.with_state(|s| s.elbv2 = Some(elbv2));
    }

    /// A copy of the service (by ARN), if the emulator knows it.
    pub fn service(&self, service_arn: &str) -> Option<Service> {
        self.with_state(|s| s.services.get(service_arn).cloned())
    }

    /// Fault: the tasks of plain services whose ARN matches `pattern` (`*` and `?` wildcards;
    /// the service may not exist yet) start but never pass their health checks: they are never
    /// registered in the service's target groups and never count as running, only as pending.
    /// `false` heals them (their tasks register at the scheduler's next pass).
    pub fn set_never_healthy(&self, pattern: &str, never_healthy: bool) {
        self.with_state(|s| {
            if never_healthy {
                s.never_healthy.insert(pattern.to_owned());
            } else {
                s.never_healthy.remove(pattern);
            }
            s.changed.notify_one();
        });
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state, for code (a deployment engine) that outlives a borrow of the emulator.
    pub fn state(&self) -> Arc<Mutex<EcsState>> {
        Arc::clone(&self.state)
    }

    /// Runs `f` with the state locked.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut EcsState) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// Registers revision n+1 of `family`; returns its ARN.
    pub fn register_task_definition(
        &self,
        family: &str,
        containers: Vec<ContainerDefinition>,
    ) -> String {
        self.with_state(|s| s.register_task_definition(family, containers))
    }

    pub fn put_service_revision(&self, revision: ServiceRevision) {
        self.with_state(|s| s.put_service_revision(revision));
    }

    pub fn put_service_deployment(&self, deployment: ServiceDeployment) {
        self.with_state(|s| s.put_service_deployment(deployment));
    }

    /// Changes a deployment in place; `updatedAt` is set to now first (`f` may override it).
    ///
    /// # Panics
    /// If no deployment has that ARN.
    pub fn update_service_deployment(&self, arn: &str, f: impl FnOnce(&mut ServiceDeployment)) {
        self.with_state(|s| {
            let deployment = s
                .service_deployment_mut(arn)
                .unwrap_or_else(|| panic!("ECS emulator: no service deployment {arn}"));
            deployment.updated_at = now();
            f(deployment);
        });
    }

    pub fn service_deployment(&self, arn: &str) -> Option<ServiceDeployment> {
        self.with_state(|s| s.service_deployment(arn).cloned())
    }

    pub fn service_revision(&self, arn: &str) -> Option<ServiceRevision> {
        self.with_state(|s| s.service_revisions.get(arn).cloned())
    }

    /// Operation names received, in order.
    pub fn calls(&self) -> Vec<String> {
        self.with_state(|s| s.calls.clone())
    }

    /// How many times `operation` was called.
    pub fn call_count(&self, operation: &str) -> usize {
        self.with_state(|s| s.calls.iter().filter(|c| *c == operation).count())
    }

    pub fn clear_calls(&self) {
        self.with_state(|s| s.calls.clear());
    }

    /// The next call of `operation` answers HTTP `status` with `{"__type": error_type}`. Faults
    /// queue up: calling this twice fails the next two calls.
    pub fn fail_next(&self, operation: &str, status: u16, error_type: &str) {
        self.fail_next_with(
            operation,
            Fault {
                status,
                error_type: error_type.to_owned(),
                message: format!("injected by the test: {error_type}"),
            },
        );
    }

    /// The next call of `operation` is answered only after `delay` (a slow AWS endpoint).
    pub fn delay_next(&self, operation: &str, delay: Duration) {
        self.with_state(|s| {
            s.delays
                .entry(operation.to_owned())
                .or_default()
                .push_back(delay)
        });
    }

    pub fn fail_next_with(&self, operation: &str, fault: Fault) {
        self.with_state(|s| {
            s.faults
                .entry(operation.to_owned())
                .or_default()
                .push_back(fault)
        });
    }
}

impl Drop for EcsEmulator {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every open connection.
        self.server.abort();
    }
}

fn lock(state: &Mutex<EcsState>) -> MutexGuard<'_, EcsState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
