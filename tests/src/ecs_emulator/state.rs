//! What the emulator knows: services, their revisions and deployments, and task definitions;
//! the ARNs and IDs ECS gives them; and how they serialize on the wire.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::{LaunchType, ServiceDeploymentLifecycleStage, ServiceDeploymentStatus};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use crate::aws::{ACCOUNT_ID, REGION};

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
pub fn cluster_name(cluster: &str) -> &str {
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

/// An ECS service, known to the emulator once anything of it is put (or explicitly), or created
/// through `CreateService`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub service_arn: String,
    pub cluster_arn: String,
    pub service_name: String,
    /// `taskDefinition` and `loadBalancers`: those of the newest revision put, as after the
    /// `UpdateService` that made it.
    pub task_definition: Option<String>,
    pub load_balancers: Vec<LoadBalancer>,
    /// `deploymentController.type`.
    pub deployment_controller: String,
    /// `deploymentConfiguration` in the wire shape (strategy, lifecycle hooks), as the next
    /// deployment will use it; `None` answers without one.
    pub deployment_configuration: Option<Value>,
    /// `ACTIVE`, `DRAINING` (deleted, tasks stopping) or `INACTIVE` (deleted, no task left).
    pub status: String,
    pub desired_count: i32,
    /// Tasks registered and serving / started but not (yet) serving, as the world's rolling
    /// scheduler ([`crate::scheduler`]) keeps them for services created through
    /// `CreateService`.
    pub running_count: i32,
    pub pending_count: i32,
    /// `launchType`, or `capacityProviderStrategy` (wire shape), never both.
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Vec<Value>,
    pub platform_version: Option<String>,
    /// `networkConfiguration` in the wire shape (`{"awsvpcConfiguration": {...}}`).
    pub network_configuration: Option<Value>,
    /// `(key, value)` in the order given.
    pub tags: Vec<(String, String)>,
    /// `SERVICE`, `TASK_DEFINITION` or `NONE`.
    pub propagate_tags: Option<String>,
    pub created_at: SystemTime,
    /// Created through `CreateService`: the world's rolling scheduler runs its tasks (the
    /// deployment engine runs those of the blue/green services it puts).
    pub rolling: bool,
    /// The `CreateService` request (without `clientToken`), and its `clientToken`: a repeated
    /// identical request answers the service it created.
    pub creation: Option<(Value, Option<String>)>,
}

impl Service {
    /// An ACTIVE service named by its ARN, with nothing configured.
    pub fn new(service_arn: &str) -> Self {
        let (cluster, name) = cluster_and_service(service_arn)
            .unwrap_or_else(|| panic!("not a service ARN: {service_arn}"));
        Service {
            service_arn: service_arn.to_owned(),
            cluster_arn: cluster_arn(&cluster),
            service_name: name,
            task_definition: None,
            load_balancers: Vec::new(),
            deployment_controller: "ECS".to_owned(),
            deployment_configuration: None,
            status: "ACTIVE".to_owned(),
            desired_count: 1,
            running_count: 1,
            pending_count: 0,
            launch_type: Some("FARGATE".to_owned()),
            capacity_provider_strategy: Vec::new(),
            platform_version: Some(PLATFORM_VERSION.to_owned()),
            network_configuration: None,
            tags: Vec::new(),
            propagate_tags: None,
            created_at: now(),
            rolling: false,
            creation: None,
        }
    }

    /// The service as `DescribeServices` answers it (`tags` only when `include` names `TAGS`).
    pub(super) fn description(&self, with_tags: bool) -> Value {
        let mut description = json!({
            "serviceArn": self.service_arn,
            "serviceName": self.service_name,
            "clusterArn": self.cluster_arn,
            "status": self.status,
            "desiredCount": self.desired_count,
            "runningCount": self.running_count,
            "pendingCount": self.pending_count,
            "loadBalancers": self.load_balancers,
            "serviceRegistries": [],
            "deploymentController": {"type": self.deployment_controller},
            "schedulingStrategy": "REPLICA",
            "createdAt": secs(self.created_at),
            "propagateTags": self.propagate_tags.as_deref().unwrap_or("NONE"),
        });
        let obj = description.as_object_mut().expect("an object");
        if let Some(task_definition) = &self.task_definition {
            obj.insert("taskDefinition".into(), json!(task_definition));
        }
        if let Some(configuration) = &self.deployment_configuration {
            obj.insert("deploymentConfiguration".into(), configuration.clone());
        }
        if let Some(launch_type) = &self.launch_type {
            obj.insert("launchType".into(), json!(launch_type));
        }
        if !self.capacity_provider_strategy.is_empty() {
            obj.insert(
                "capacityProviderStrategy".into(),
                json!(self.capacity_provider_strategy),
            );
        }
        if let Some(platform_version) = &self.platform_version {
            obj.insert("platformVersion".into(), json!(platform_version));
        }
        if let Some(network) = &self.network_configuration {
            obj.insert("networkConfiguration".into(), network.clone());
        }
        if self.rolling {
            // One PRIMARY deployment, as a settled rolling service shows.
            let mut deployment = json!({
                "id": format!("ecs-svc/{}", self.service_name.len() * 7919 + 1_000_000),
                "status": "PRIMARY",
                "desiredCount": self.desired_count,
                "runningCount": self.running_count,
                "pendingCount": self.pending_count,
                "launchType": self.launch_type,
                "createdAt": secs(self.created_at),
                "updatedAt": secs(self.created_at),
                "rolloutState": if self.running_count >= self.desired_count { "COMPLETED" } else { "IN_PROGRESS" },
            });
            if let Some(task_definition) = &self.task_definition {
                deployment["taskDefinition"] = json!(task_definition);
            }
            if let Some(network) = &self.network_configuration {
                deployment["networkConfiguration"] = network.clone();
            }
            if self.launch_type.is_none() {
                deployment
                    .as_object_mut()
                    .expect("an object")
                    .remove("launchType");
            }
            obj.insert("deployments".into(), json!([deployment]));
        }
        if with_tags {
            obj.insert("tags".into(), tags_json(&self.tags));
        }
        description
    }
}

/// The platform version the world's Fargate services and revisions use.
pub const PLATFORM_VERSION: &str = "1.4.0";

/// `[{"key": .., "value": ..}]`, ECS's tag shape.
pub(super) fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(
        tags.iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect(),
    )
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity_provider_strategy: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_family: Option<String>,
    /// `{"awsvpcConfiguration": {"subnets": [..], "securityGroups": [..], "assignPublicIp": ..}}`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<Value>,
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
            capacity_provider_strategy: Vec::new(),
            platform_version: Some(PLATFORM_VERSION.to_owned()),
            platform_family: Some("Linux".to_owned()),
            network_configuration: Some(default_network_configuration()),
            load_balancers: Vec::new(),
            resolved_configuration: None,
            created_at: now(),
        }
    }

    /// Replaces the revision's `networkConfiguration` (wire shape).
    pub fn with_network_configuration(mut self, network: Value) -> Self {
        self.network_configuration = Some(network);
        self
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

/// The awsvpc network configuration of the world's services unless one is given: two private
/// subnets and one security group (IDs only; the world does not check them against EC2).
pub fn default_network_configuration() -> Value {
    json!({"awsvpcConfiguration": {
        "subnets": ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"],
        "securityGroups": ["sg-0a1b2c3d4e5f60001"],
        "assignPublicIp": "DISABLED",
    }})
}

/// A service's (or revision's) load balancer entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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

    pub(super) fn brief(&self) -> Value {
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
/// (through [`super::EcsEmulator::with_state`]); the HTTP side only reads it, except for
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
    /// Where `CreateService` / `UpdateService` check that a target group is associated with a
    /// load balancer (moto's ELBv2); without it every target group counts as associated.
    pub elbv2: Option<aws_sdk_elasticloadbalancingv2::Client>,
    /// Woken whenever a plain service changes, for the rolling scheduler.
    pub changed: std::sync::Arc<tokio::sync::Notify>,
    /// Fault: plain services whose ARN matches one of these patterns (`*` and `?` wildcards)
    /// start tasks that never pass their health checks.
    pub never_healthy: std::collections::BTreeSet<String>,
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

    /// Whether the fault [`EcsState::never_healthy`] holds for this service.
    pub fn is_never_healthy(&self, service_arn: &str) -> bool {
        self.never_healthy
            .iter()
            .any(|pattern| crate::iam::wildcard_match(pattern, service_arn))
    }

    /// Makes sure the service exists (derived from its ARN); returns it.
    pub fn ensure_service(&mut self, service_arn: &str) -> &Service {
        self.services
            .entry(service_arn.to_owned())
            .or_insert_with(|| Service::new(service_arn))
    }

    /// The service, made sure to exist, to change its configuration.
    pub fn service_mut(&mut self, service_arn: &str) -> &mut Service {
        self.ensure_service(service_arn);
        self.services.get_mut(service_arn).expect("just ensured")
    }

    /// Inserts or replaces (by ARN) a revision; the service takes its task definition and load
    /// balancers.
    pub fn put_service_revision(&mut self, revision: ServiceRevision) {
        let service = self.service_mut(&revision.service_arn);
        service.task_definition = Some(revision.task_definition.clone());
        service.load_balancers = revision.load_balancers.clone();
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

// Wire shapes

pub(super) fn secs(t: SystemTime) -> f64 {
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
