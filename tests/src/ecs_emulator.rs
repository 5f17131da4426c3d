//! The project's own ECS endpoint: moto has no service revisions or service deployments.
//!
//! A small HTTP/1.1 server on `127.0.0.1:0` speaking ECS's `awsJson1_1` protocol (`POST /`,
//! `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`, JSON in and out, errors as
//! HTTP 400 `{"__type": .., "message": ..}`), over an in-memory [`EcsState`] that tests (and a
//! deployment engine playing ECS's blue/green part) mutate directly from Rust.
//!
//! Operations: `DescribeServiceRevisions`, `DescribeServiceDeployments`, `DescribeTaskDefinition`,
//! `ListServiceDeployments`, `RegisterTaskDefinition`. Anything else answers
//! `UnknownOperationException`.
//!
//! Wire shapes follow the SDK's schemas (`aws-sdk-ecs` 1.157): member names are the camelCase
//! names below, timestamps are epoch seconds as JSON numbers (millisecond precision, like ECS).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::{LaunchType, ServiceDeploymentLifecycleStage, ServiceDeploymentStatus};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use crate::aws::{ACCOUNT_ID, REGION};
use crate::moto::WorldError;

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// ECS's limit on ARNs per `DescribeServiceRevisions` / `DescribeServiceDeployments` call.
const MAX_DESCRIBE_ARNS: usize = 20;

// ---------------------------------------------------------------------------------------------
// ARNs

pub fn cluster_arn(cluster: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:cluster/{cluster}")
}

pub fn service_arn(cluster: &str, service: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{cluster}/{service}")
}

/// `…:service-revision/<cluster>/<service>/<19-digit number>`
pub fn service_revision_arn(cluster: &str, service: &str, id: u64) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service-revision/{cluster}/{service}/{id:019}")
}

/// A service-revision ARN with a fresh 19-digit id.
pub fn new_service_revision_arn(cluster: &str, service: &str) -> String {
    service_revision_arn(cluster, service, new_revision_id())
}

/// `…:service-deployment/<cluster>/<service>/<id>`
pub fn service_deployment_arn(cluster: &str, service: &str, id: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service-deployment/{cluster}/{service}/{id}")
}

/// A service-deployment ARN with a fresh id (21 alphanumerics, like ECS's).
pub fn new_service_deployment_arn(cluster: &str, service: &str) -> String {
    service_deployment_arn(cluster, service, &new_deployment_id())
}

pub fn task_definition_arn(family: &str, revision: i32) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/{family}:{revision}")
}

/// `(cluster, service)` of a service, service-revision or service-deployment ARN.
pub fn cluster_and_service(arn: &str) -> Option<(String, String)> {
    let (_, resource) = arn.split_once(&format!(":{ACCOUNT_ID}:"))?;
    let (kind, path) = resource.split_once('/')?;
    if !matches!(kind, "service" | "service-revision" | "service-deployment") {
        return None;
    }
    let mut parts = path.split('/');
    let (cluster, service) = (parts.next()?, parts.next()?);
    (!cluster.is_empty() && !service.is_empty()).then(|| (cluster.to_owned(), service.to_owned()))
}

/// The last path segment of a cluster ARN, or the name itself.
fn cluster_name(cluster: &str) -> &str {
    cluster.rsplit_once(":cluster/").map_or(cluster, |(_, n)| n)
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let count = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 over time, pid and a counter: distinct within and across test processes.
    let mut z = nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 19-digit number, as in service-revision ARNs.
pub fn new_revision_id() -> u64 {
    1_000_000_000_000_000_000 + unique_seed() % 8_000_000_000_000_000_000
}

fn new_deployment_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let (mut a, mut b) = (unique_seed(), unique_seed());
    (0..21)
        .map(|i| {
            let word = if i < 10 { &mut a } else { &mut b };
            let c = ALPHABET[(*word % 62) as usize];
            *word /= 62;
            c as char
        })
        .collect()
}

/// Now, truncated to the millisecond (the precision that survives the wire).
pub fn now() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// State

/// Task-definition container fields the emulator keeps (the rest of a registered definition is
/// accepted and dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    pub environment: Vec<KeyValuePair>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub docker_labels: BTreeMap<String, String>,
    pub port_mappings: Vec<PortMapping>,
}

impl ContainerDefinition {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            essential: Some(true),
            ..Self::default()
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.environment.push(KeyValuePair {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.docker_labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn port(mut self, container_port: i32) -> Self {
        self.port_mappings.push(PortMapping {
            container_port,
            host_port: Some(container_port),
            protocol: Some("tcp".to_owned()),
            name: None,
        });
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyValuePair {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortMapping {
    pub container_port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    pub task_definition_arn: String,
    pub family: String,
    pub revision: i32,
    pub container_definitions: Vec<ContainerDefinition>,
    /// `ACTIVE` or `INACTIVE`.
    pub status: String,
    #[serde(serialize_with = "epoch_seconds")]
    pub registered_at: SystemTime,
}

/// An ECS service, known to the emulator once anything of it is put (or explicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub service_arn: String,
    pub cluster_arn: String,
    pub service_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRevision {
    pub service_revision_arn: String,
    pub service_arn: String,
    pub cluster_arn: String,
    /// Task-definition ARN.
    pub task_definition: String,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_as_str")]
    pub launch_type: Option<LaunchType>,
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_configuration: Option<ResolvedConfiguration>,
    #[serde(serialize_with = "epoch_seconds")]
    pub created_at: SystemTime,
}

impl ServiceRevision {
    /// A Fargate revision of `cluster/service` with a fresh ARN, no load balancers yet.
    pub fn new(cluster: &str, service: &str, task_definition_arn: &str) -> Self {
        Self {
            service_revision_arn: new_service_revision_arn(cluster, service),
            service_arn: service_arn(cluster, service),
            cluster_arn: cluster_arn(cluster),
            task_definition: task_definition_arn.to_owned(),
            launch_type: Some(LaunchType::Fargate),
            load_balancers: Vec::new(),
            resolved_configuration: None,
            created_at: now(),
        }
    }

    /// Adds a blue/green load balancer: ECS alternates between `target_group_arn` and
    /// `advanced.alternate_target_group_arn`.
    pub fn with_load_balancer(mut self, load_balancer: LoadBalancer) -> Self {
        self.load_balancers.push(load_balancer);
        self
    }

    /// Records which target group this revision serves from, behind which production rule
    /// (`resolvedConfiguration.loadBalancers`).
    pub fn with_resolved(mut self, target_group_arn: &str, production_rule: Option<&str>) -> Self {
        self.resolved_configuration
            .get_or_insert_with(ResolvedConfiguration::default)
            .load_balancers
            .push(ServiceRevisionLoadBalancer {
                target_group_arn: target_group_arn.to_owned(),
                production_listener_rule: production_rule.map(str::to_owned),
            });
        self
    }
}

/// A service's (or revision's) load balancer entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub target_group_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_name: Option<String>,
    pub container_name: String,
    pub container_port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advanced_configuration: Option<AdvancedConfiguration>,
}

impl LoadBalancer {
    /// The blue/green shape: primary and alternate target groups, production (and test) rule.
    pub fn blue_green(
        container: (&str, i32),
        target_group_arn: &str,
        alternate_target_group_arn: &str,
        production_listener_rule: &str,
        test_listener_rule: Option<&str>,
    ) -> Self {
        Self {
            target_group_arn: target_group_arn.to_owned(),
            load_balancer_name: None,
            container_name: container.0.to_owned(),
            container_port: container.1,
            advanced_configuration: Some(AdvancedConfiguration {
                alternate_target_group_arn: alternate_target_group_arn.to_owned(),
                production_listener_rule: production_listener_rule.to_owned(),
                test_listener_rule: test_listener_rule.map(str::to_owned),
                role_arn: format!(
                    "arn:aws:iam::{ACCOUNT_ID}:role/ecsInfrastructureRoleForLoadBalancers"
                ),
            }),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdvancedConfiguration {
    pub alternate_target_group_arn: String,
    pub production_listener_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_listener_rule: Option<String>,
    pub role_arn: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedConfiguration {
    pub load_balancers: Vec<ServiceRevisionLoadBalancer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRevisionLoadBalancer {
    pub target_group_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production_listener_rule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDeployment {
    pub service_deployment_arn: String,
    pub service_arn: String,
    pub cluster_arn: String,
    #[serde(serialize_with = "epoch_seconds")]
    pub created_at: SystemTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_epoch_seconds"
    )]
    pub started_at: Option<SystemTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_epoch_seconds"
    )]
    pub finished_at: Option<SystemTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_epoch_seconds"
    )]
    pub stopped_at: Option<SystemTime>,
    #[serde(serialize_with = "epoch_seconds")]
    pub updated_at: SystemTime,
    pub source_service_revisions: Vec<ServiceRevisionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_service_revision: Option<ServiceRevisionSummary>,
    #[serde(serialize_with = "as_str")]
    pub status: ServiceDeploymentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_as_str")]
    pub lifecycle_stage: Option<ServiceDeploymentLifecycleStage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// Passed through as-is, in the wire shape (`{"strategy": "BLUE_GREEN", ...}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<Value>,
}

impl ServiceDeployment {
    /// An `IN_PROGRESS` deployment of `cluster/service` from `sources` to `target` (revision
    /// ARNs), started now, in `RECONCILE_SERVICE`, with a fresh ARN and zero task counts.
    pub fn new(cluster: &str, service: &str, sources: &[&str], target: &str) -> Self {
        let at = now();
        Self {
            service_deployment_arn: new_service_deployment_arn(cluster, service),
            service_arn: service_arn(cluster, service),
            cluster_arn: cluster_arn(cluster),
            created_at: at,
            started_at: Some(at),
            finished_at: None,
            stopped_at: None,
            updated_at: at,
            source_service_revisions: sources
                .iter()
                .map(|arn| ServiceRevisionSummary::new(arn))
                .collect(),
            target_service_revision: Some(ServiceRevisionSummary::new(target)),
            status: ServiceDeploymentStatus::InProgress,
            status_reason: None,
            lifecycle_stage: Some(ServiceDeploymentLifecycleStage::ReconcileService),
            rollback: None,
            deployment_configuration: Some(json!({
                "strategy": "BLUE_GREEN",
                "bakeTimeInMinutes": 0,
                "maximumPercent": 200,
                "minimumHealthyPercent": 100,
            })),
        }
    }

    fn brief(&self) -> Value {
        let mut brief = json!({
            "serviceDeploymentArn": self.service_deployment_arn,
            "serviceArn": self.service_arn,
            "clusterArn": self.cluster_arn,
            "createdAt": secs(self.created_at),
            "status": self.status.as_str(),
        });
        let obj = brief.as_object_mut().expect("an object");
        if let Some(t) = self.started_at {
            obj.insert("startedAt".into(), json!(secs(t)));
        }
        if let Some(t) = self.finished_at {
            obj.insert("finishedAt".into(), json!(secs(t)));
        }
        if let Some(target) = &self.target_service_revision {
            obj.insert("targetServiceRevisionArn".into(), json!(target.arn));
        }
        if let Some(reason) = &self.status_reason {
            obj.insert("statusReason".into(), json!(reason));
        }
        brief
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRevisionSummary {
    pub arn: String,
    pub requested_task_count: i32,
    pub running_task_count: i32,
    pub pending_task_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_test_traffic_weight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_production_traffic_weight: Option<f64>,
}

impl ServiceRevisionSummary {
    pub fn new(arn: &str) -> Self {
        Self {
            arn: arn.to_owned(),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    pub reason: String,
    #[serde(serialize_with = "epoch_seconds")]
    pub started_at: SystemTime,
    /// The revision ECS rolls back to.
    pub service_revision_arn: String,
}

/// An error the next call of an operation answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub error_type: String,
    pub message: String,
}

/// Everything the emulator knows. Public so tests and a deployment engine can act on it directly
/// (through [`EcsEmulator::with_state`]); the HTTP side only reads it, except for
/// `RegisterTaskDefinition`, the call log and the fault queue.
#[derive(Debug, Default)]
pub struct EcsState {
    /// By service ARN.
    pub services: BTreeMap<String, Service>,
    /// By family; `task_definitions[family][n - 1]` is revision `n`.
    pub task_definitions: BTreeMap<String, Vec<TaskDefinition>>,
    /// By service-revision ARN.
    pub service_revisions: BTreeMap<String, ServiceRevision>,
    /// In the order they were put.
    pub service_deployments: Vec<ServiceDeployment>,
    /// Operation names received, in order (including failed and unknown ones).
    pub calls: Vec<String>,
    /// Per operation, the errors its next calls answer with.
    pub faults: BTreeMap<String, VecDeque<Fault>>,
    /// Answers of an operation held back this long before they are computed, in order.
    pub delays: BTreeMap<String, VecDeque<Duration>>,
}

impl EcsState {
    /// Registers revision n+1 of `family`; returns its ARN.
    pub fn register_task_definition(
        &mut self,
        family: &str,
        containers: Vec<ContainerDefinition>,
    ) -> String {
        let revisions = self.task_definitions.entry(family.to_owned()).or_default();
        let revision = i32::try_from(revisions.len() + 1).expect("fewer than 2^31 revisions");
        let arn = task_definition_arn(family, revision);
        revisions.push(TaskDefinition {
            task_definition_arn: arn.clone(),
            family: family.to_owned(),
            revision,
            container_definitions: containers,
            status: "ACTIVE".to_owned(),
            registered_at: now(),
        });
        arn
    }

    /// Resolves an ARN, `family:revision` or `family` (latest ACTIVE revision).
    pub fn task_definition(&self, reference: &str) -> Option<&TaskDefinition> {
        let reference = reference
            .rsplit_once(":task-definition/")
            .map_or(reference, |(_, r)| r);
        match reference.rsplit_once(':') {
            Some((family, revision)) => {
                let revision: usize = revision.parse().ok()?;
                self.task_definitions
                    .get(family)?
                    .get(revision.checked_sub(1)?)
            }
            None => self
                .task_definitions
                .get(reference)?
                .iter()
                .rev()
                .find(|td| td.status == "ACTIVE"),
        }
    }

    /// Makes sure the service exists (derived from its ARN); returns it.
    pub fn ensure_service(&mut self, service_arn: &str) -> &Service {
        self.services
            .entry(service_arn.to_owned())
            .or_insert_with(|| {
                let (cluster, name) = cluster_and_service(service_arn)
                    .unwrap_or_else(|| panic!("not a service ARN: {service_arn}"));
                Service {
                    service_arn: service_arn.to_owned(),
                    cluster_arn: cluster_arn(&cluster),
                    service_name: name,
                }
            })
    }

    /// Inserts or replaces (by ARN) a revision.
    pub fn put_service_revision(&mut self, revision: ServiceRevision) {
        self.ensure_service(&revision.service_arn);
        self.service_revisions
            .insert(revision.service_revision_arn.clone(), revision);
    }

    /// Inserts or replaces (by ARN, keeping its place) a deployment.
    pub fn put_service_deployment(&mut self, deployment: ServiceDeployment) {
        self.ensure_service(&deployment.service_arn);
        match self.service_deployment_mut(&deployment.service_deployment_arn) {
            Some(existing) => *existing = deployment,
            None => self.service_deployments.push(deployment),
        }
    }

    pub fn service_deployment(&self, arn: &str) -> Option<&ServiceDeployment> {
        self.service_deployments
            .iter()
            .find(|d| d.service_deployment_arn == arn)
    }

    pub fn service_deployment_mut(&mut self, arn: &str) -> Option<&mut ServiceDeployment> {
        self.service_deployments
            .iter_mut()
            .find(|d| d.service_deployment_arn == arn)
    }

    /// A service's deployments, newest first (by `createdAt`, then by put order).
    pub fn deployments_of(&self, service_arn: &str) -> Vec<&ServiceDeployment> {
        let mut found: Vec<(usize, &ServiceDeployment)> = self
            .service_deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| d.service_arn == service_arn)
            .collect();
        found.sort_by(|(ia, a), (ib, b)| b.created_at.cmp(&a.created_at).then(ib.cmp(ia)));
        found.into_iter().map(|(_, d)| d).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Server

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

async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<EcsState>>) {
    let mut connections = tokio::task::JoinSet::new();
    let request_ids = Arc::new(AtomicU64::new(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let request_ids = Arc::clone(&request_ids);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        let id = request_ids.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(handle(&state, request, id).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// An ECS error answer.
#[derive(Debug)]
struct ApiError {
    status: u16,
    error_type: String,
    message: String,
}

impl ApiError {
    fn client(error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterException", message)
    }
}

async fn handle(
    state: &Mutex<EcsState>,
    request: Request<Incoming>,
    request_id: u64,
) -> Response<Full<Bytes>> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let operation = target
        .strip_prefix(TARGET_PREFIX)
        .unwrap_or(&target)
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return respond(
                request_id,
                Err(ApiError::client(
                    "SerializationException",
                    format!("reading body: {e}"),
                )),
            );
        }
    };
    let delay = lock(state)
        .delays
        .get_mut(&operation)
        .and_then(VecDeque::pop_front);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let result = (|| {
        let mut state = lock(state);
        state.calls.push(operation.clone());
        if let Some(fault) = state
            .faults
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            return Err(ApiError {
                status: fault.status,
                error_type: fault.error_type,
                message: fault.message,
            });
        }
        if !target.starts_with(TARGET_PREFIX) {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("X-Amz-Target must be {TARGET_PREFIX}<Operation>, got {target:?}"),
            ));
        }
        let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::client("SerializationException", format!("invalid JSON body: {e}"))
            })?
        };
        match operation.as_str() {
            "DescribeServiceRevisions" => describe_service_revisions(&state, &input),
            "DescribeServiceDeployments" => describe_service_deployments(&state, &input),
            "DescribeTaskDefinition" => describe_task_definition(&state, &input),
            "ListServiceDeployments" => list_service_deployments(&state, &input),
            "RegisterTaskDefinition" => register_task_definition(&mut state, &input),
            other => Err(ApiError::client(
                "UnknownOperationException",
                format!("the skewguard ECS emulator does not implement {other}"),
            )),
        }
    })();
    respond(request_id, result)
}

fn respond(request_id: u64, result: Result<Value, ApiError>) -> Response<Full<Bytes>> {
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(err) => (
            err.status,
            json!({"__type": err.error_type, "message": err.message}),
        ),
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", CONTENT_TYPE)
        .header(
            "x-amzn-requestid",
            format!("00000000-0000-4000-8000-{request_id:012x}"),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("emulator state serializes")
}

fn string_list(input: &Value, member: &str) -> Result<Vec<String>, ApiError> {
    let list = input
        .get(member)
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid_parameter(format!("{member} is required")))?;
    if list.is_empty() || list.len() > MAX_DESCRIBE_ARNS {
        return Err(ApiError::invalid_parameter(format!(
            "{member} must hold between 1 and {MAX_DESCRIBE_ARNS} ARNs"
        )));
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid_parameter(format!("{member} must be strings")))
        })
        .collect()
}

fn required_str<'a>(input: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    input
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::client("ClientException", format!("{member} is required")))
}

fn missing(arn: &str) -> Value {
    json!({"arn": arn, "reason": "MISSING"})
}

fn describe_service_revisions(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for arn in string_list(input, "serviceRevisionArns")? {
        match state.service_revisions.get(&arn) {
            Some(revision) => found.push(to_json(revision)),
            None => failures.push(missing(&arn)),
        }
    }
    Ok(json!({"serviceRevisions": found, "failures": failures}))
}

fn describe_service_deployments(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for arn in string_list(input, "serviceDeploymentArns")? {
        match state.service_deployment(&arn) {
            Some(deployment) => found.push(to_json(deployment)),
            None => failures.push(missing(&arn)),
        }
    }
    Ok(json!({"serviceDeployments": found, "failures": failures}))
}

fn describe_task_definition(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let reference = required_str(input, "taskDefinition")?;
    let task_definition = state.task_definition(reference).ok_or_else(|| {
        ApiError::client("ClientException", "Unable to describe task definition.")
    })?;
    Ok(json!({"taskDefinition": to_json(task_definition)}))
}

fn list_service_deployments(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let service = input
        .get("service")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter("service is required"))?;
    let service_arn = if service.starts_with("arn:") {
        service.to_owned()
    } else {
        let cluster = input
            .get("cluster")
            .and_then(Value::as_str)
            .map_or("default", cluster_name);
        self::service_arn(cluster, service)
    };
    if !state.services.contains_key(&service_arn) {
        return Err(ApiError::client(
            "ServiceNotFoundException",
            "Service not found.",
        ));
    }
    let statuses: Option<Vec<&str>> = input
        .get("status")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).collect());
    let created = input.get("createdAt");
    let bound = |key| {
        created
            .and_then(|c| c.get(key))
            .and_then(Value::as_f64)
            .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0)))
    };
    let (before, after) = (bound("before"), bound("after"));
    let matching: Vec<Value> = state
        .deployments_of(&service_arn)
        .into_iter()
        .filter(|d| {
            statuses
                .as_ref()
                .is_none_or(|s| s.contains(&d.status.as_str()))
                && before.is_none_or(|t| d.created_at <= t)
                && after.is_none_or(|t| d.created_at >= t)
        })
        .map(ServiceDeployment::brief)
        .collect();
    let start: usize = match input.get("nextToken").and_then(Value::as_str) {
        Some(token) => token
            .parse()
            .map_err(|_| ApiError::invalid_parameter("invalid nextToken"))?,
        None => 0,
    };
    let page = input
        .get("maxResults")
        .and_then(Value::as_u64)
        .map_or(20, |n| n.clamp(1, 100) as usize);
    let end = matching.len().min(start.saturating_add(page));
    let mut output = json!({
        "serviceDeployments": matching.get(start..end).unwrap_or_default(),
    });
    if end < matching.len() {
        output["nextToken"] = json!(end.to_string());
    }
    Ok(output)
}

fn register_task_definition(state: &mut EcsState, input: &Value) -> Result<Value, ApiError> {
    let family = required_str(input, "family")?.to_owned();
    let containers: Vec<ContainerDefinition> = input
        .get("containerDefinitions")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ApiError::client("ClientException", format!("containerDefinitions: {e}")))?
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(ApiError::client(
            "ClientException",
            "Container list cannot be empty.",
        ));
    }
    for container in &containers {
        if container.name.is_empty() {
            return Err(ApiError::client(
                "ClientException",
                "Container.name should not be null or empty.",
            ));
        }
        if container.image.is_empty() {
            return Err(ApiError::client(
                "ClientException",
                "Container.image should not be null or empty.",
            ));
        }
    }
    let arn = state.register_task_definition(&family, containers);
    let registered = state.task_definition(&arn).expect("just registered");
    Ok(json!({"taskDefinition": to_json(registered)}))
}

// ---------------------------------------------------------------------------------------------
// Wire helpers

fn secs(t: SystemTime) -> f64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_millis() as f64 / 1000.0
}

fn epoch_seconds<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(secs(*t))
}

fn opt_epoch_seconds<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_f64(secs(*t)),
        None => s.serialize_none(),
    }
}

fn as_str<S: Serializer, T: AsRef<str>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_ref())
}

fn opt_as_str<S: Serializer, T: AsRef<str>>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v.as_ref()),
        None => s.serialize_none(),
    }
}
