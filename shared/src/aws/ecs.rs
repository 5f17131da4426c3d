//! ECS describe calls, and how a revision's facts answer "which version runs where".

use std::collections::BTreeMap;

use aws_sdk_ecs as ecs;

use super::{AwsError, AwsErrorKind, classify};
use crate::DeploymentId;
use crate::deployment_id::InvalidDeploymentId;
use crate::ledger::{RunningVersion, ServiceWiring};
use crate::listener::listener_arn_of_rule;
use crate::settings::DeploymentIdSource;

/// What a service revision says about its load balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionFacts {
    pub arn: String,
    pub task_definition_arn: String,
    /// `resolvedConfiguration.loadBalancers`: the target group this revision actually serves from.
    pub resolved: Vec<ResolvedLoadBalancer>,
    /// `loadBalancers`: the service's configuration as this revision recorded it.
    pub configured: Vec<ConfiguredLoadBalancer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLoadBalancer {
    pub target_group_arn: String,
    pub production_rule_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredLoadBalancer {
    pub target_group_arn: Option<String>,
    pub alternate_target_group_arn: Option<String>,
    pub container_name: Option<String>,
    pub production_rule_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionFacts {
    pub arn: String,
    pub containers: Vec<ContainerFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    pub name: String,
    pub image: String,
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "service revision {revision} has no load balancer with a production listener rule; is the service using BLUE_GREEN behind an ALB?"
    )]
    NoProductionRule { revision: String },
    #[error(
        "service revision {revision} has no resolvedConfiguration.loadBalancers, so the target group it serves from is unknown"
    )]
    NoResolvedTargetGroup { revision: String },
    #[error("production listener rule {rule} is not a listener-rule ARN")]
    BadRuleArn { rule: String },
    #[error(
        "container {container:?} is not in task definition {task_definition} (it has: {available}); set `container`"
    )]
    ContainerNotFound {
        container: String,
        task_definition: String,
        available: String,
    },
    #[error(
        "task definition {task_definition} has several containers and the load balancer names none; set `container`"
    )]
    AmbiguousContainer { task_definition: String },
    #[error(
        "container {container:?} of {task_definition} has no {source_desc}; set it, or point `deploymentIdFrom` at where the ID is"
    )]
    NoDeploymentId {
        container: String,
        task_definition: String,
        source_desc: String,
    },
    #[error(
        "container {container:?} of {task_definition}: image {image:?} has no tag to use as deployment ID"
    )]
    ImageWithoutTag {
        container: String,
        task_definition: String,
        image: String,
    },
    #[error(
        "container {container:?} of {task_definition} carries an invalid deployment ID: {error}"
    )]
    InvalidDeploymentId {
        container: String,
        task_definition: String,
        error: InvalidDeploymentId,
    },
    #[error("ECS has no {what} {arn}")]
    Missing { what: &'static str, arn: String },
    #[error(
        "service revision {revision} is behind more than one load balancer (production rules {first} and {second}); skewguard pins on one Application Load Balancer per service and would leave {second} unpinned: put the service behind one ALB, or run one service per load balancer"
    )]
    SeveralLoadBalancers {
        revision: String,
        first: String,
        second: String,
    },
    #[error(
        "service revision {revision} is behind a Network Load Balancer ({listener}): NLB listeners have no rules to pin on; skewguard needs an Application Load Balancer"
    )]
    NetworkLoadBalancer { revision: String, listener: String },
}

impl RevisionFacts {
    fn production_index(&self) -> Option<usize> {
        self.configured
            .iter()
            .position(|lb| lb.production_rule_arn.is_some())
    }

    /// The listener wiring and the target group this revision serves from.
    ///
    /// Errors: no production rule or resolved target group, a production "rule" that is an NLB
    /// listener, or production rules on more than one load balancer (pins on the first alone
    /// would leave the others' clients unprotected, silently).
    pub fn placement(&self) -> Result<(String, ServiceWiring), DiscoveryError> {
        let no_rule = || DiscoveryError::NoProductionRule {
            revision: self.arn.clone(),
        };
        let mut production_rules: Vec<&str> = Vec::new();
        for rule in self
            .configured
            .iter()
            .filter_map(|lb| lb.production_rule_arn.as_deref())
            .chain(
                self.resolved
                    .iter()
                    .filter_map(|lb| lb.production_rule_arn.as_deref()),
            )
        {
            if rule.contains(":listener/net/") || rule.contains(":listener-rule/net/") {
                return Err(DiscoveryError::NetworkLoadBalancer {
                    revision: self.arn.clone(),
                    listener: rule.to_owned(),
                });
            }
            if !production_rules.contains(&rule) {
                production_rules.push(rule);
            }
        }
        if let [first, second, ..] = production_rules.as_slice() {
            return Err(DiscoveryError::SeveralLoadBalancers {
                revision: self.arn.clone(),
                first: (*first).to_owned(),
                second: (*second).to_owned(),
            });
        }
        let configured_rule = self
            .production_index()
            .and_then(|i| self.configured[i].production_rule_arn.clone());
        let resolved = self
            .resolved
            .iter()
            .find(|r| {
                configured_rule.is_none()
                    || r.production_rule_arn == configured_rule
                    || r.production_rule_arn.is_none()
            })
            .ok_or_else(|| DiscoveryError::NoResolvedTargetGroup {
                revision: self.arn.clone(),
            })?;
        let rule = resolved
            .production_rule_arn
            .clone()
            .or(configured_rule)
            .ok_or_else(no_rule)?;
        let listener_arn = listener_arn_of_rule(&rule)
            .ok_or_else(|| DiscoveryError::BadRuleArn { rule: rule.clone() })?;
        Ok((
            resolved.target_group_arn.clone(),
            ServiceWiring {
                listener_arn,
                production_rule_arn: rule,
            },
        ))
    }

    /// The load-balanced container, if the configuration names one.
    pub fn load_balanced_container(&self) -> Option<&str> {
        self.production_index()
            .and_then(|i| self.configured[i].container_name.as_deref())
            .or_else(|| {
                self.configured
                    .iter()
                    .find_map(|lb| lb.container_name.as_deref())
            })
    }
}

/// Reads the deployment ID out of a task definition.
pub fn deployment_id_of(
    task_definition: &TaskDefinitionFacts,
    container: Option<&str>,
    source: &DeploymentIdSource,
) -> Result<DeploymentId, DiscoveryError> {
    let td = || task_definition.arn.clone();
    let chosen = match container {
        Some(name) => task_definition
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| DiscoveryError::ContainerNotFound {
                container: name.to_owned(),
                task_definition: td(),
                available: task_definition
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        None => match task_definition.containers.as_slice() {
            [only] => only,
            _ => {
                return Err(DiscoveryError::AmbiguousContainer {
                    task_definition: td(),
                });
            }
        },
    };
    let missing = |desc: String| DiscoveryError::NoDeploymentId {
        container: chosen.name.clone(),
        task_definition: td(),
        source_desc: desc,
    };
    let raw = match source {
        DeploymentIdSource::Env(name) => chosen
            .environment
            .get(name)
            .cloned()
            .ok_or_else(|| missing(format!("environment variable {name}")))?,
        DeploymentIdSource::Label(name) => chosen
            .labels
            .get(name)
            .cloned()
            .ok_or_else(|| missing(format!("docker label {name}")))?,
        DeploymentIdSource::ImageTag => {
            image_tag(&chosen.image).ok_or_else(|| DiscoveryError::ImageWithoutTag {
                container: chosen.name.clone(),
                task_definition: td(),
                image: chosen.image.clone(),
            })?
        }
    };
    DeploymentId::parse(&raw).map_err(|error| DiscoveryError::InvalidDeploymentId {
        container: chosen.name.clone(),
        task_definition: td(),
        error,
    })
}

/// The tag of an image reference: `repo:tag`, `host:5000/repo:tag`, `repo:tag@sha256:…`.
pub fn image_tag(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last_segment
        .split_once(':')
        .map(|(_, tag)| tag.to_owned())
        .filter(|t| !t.is_empty())
}

/// Which version a revision runs, where, and behind which listener.
pub fn running_version(
    revision: &RevisionFacts,
    task_definition: &TaskDefinitionFacts,
    container: Option<&str>,
    source: &DeploymentIdSource,
) -> Result<(RunningVersion, ServiceWiring), DiscoveryError> {
    let (target_group_arn, wiring) = revision.placement()?;
    let container = container.or_else(|| revision.load_balanced_container());
    let deployment_id = deployment_id_of(task_definition, container, source)?;
    Ok((
        RunningVersion {
            deployment_id,
            service_revision_arn: revision.arn.clone(),
            target_group_arn,
            task_definition_arn: task_definition.arn.clone(),
        },
        wiring,
    ))
}

#[derive(Clone, Debug)]
pub struct Ecs {
    client: ecs::Client,
}

impl Ecs {
    pub fn new(client: ecs::Client) -> Self {
        Self { client }
    }

    /// Facts of each revision, in the order asked; a revision ECS does not know is an error.
    pub async fn describe_revisions(
        &self,
        arns: &[String],
    ) -> Result<Vec<RevisionFacts>, EcsError> {
        let answer = self
            .client
            .describe_service_revisions()
            .set_service_revision_arns(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| classify("DescribeServiceRevisions", e))?;
        let found: Vec<RevisionFacts> = answer
            .service_revisions()
            .iter()
            .map(revision_from_sdk)
            .collect();
        arns.iter()
            .map(|arn| {
                found
                    .iter()
                    .find(|r| &r.arn == arn)
                    .cloned()
                    .ok_or_else(|| {
                        EcsError::Discovery(DiscoveryError::Missing {
                            what: "service revision",
                            arn: arn.clone(),
                        })
                    })
            })
            .collect()
    }

    pub async fn describe_task_definition(
        &self,
        arn: &str,
    ) -> Result<TaskDefinitionFacts, EcsError> {
        let answer = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(|e| classify("DescribeTaskDefinition", e))?;
        let td = answer.task_definition().ok_or_else(|| {
            EcsError::Discovery(DiscoveryError::Missing {
                what: "task definition",
                arn: arn.to_owned(),
            })
        })?;
        Ok(TaskDefinitionFacts {
            arn: td.task_definition_arn().unwrap_or(arn).to_owned(),
            containers: td
                .container_definitions()
                .iter()
                .map(|c| ContainerFacts {
                    name: c.name().unwrap_or_default().to_owned(),
                    image: c.image().unwrap_or_default().to_owned(),
                    environment: c
                        .environment()
                        .iter()
                        .filter_map(|kv| {
                            Some((
                                kv.name()?.to_owned(),
                                kv.value().unwrap_or_default().to_owned(),
                            ))
                        })
                        .collect(),
                    labels: c
                        .docker_labels()
                        .map(|labels| labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// One deployment as `DescribeServiceDeployments` tells it: its status, the revisions it
    /// started from (blue) and its target (green). Errors: `Missing` when ECS does not return it.
    pub async fn deployment(&self, deployment_arn: &str) -> Result<DeploymentFacts, EcsError> {
        let answer = self
            .client
            .describe_service_deployments()
            .service_deployment_arns(deployment_arn)
            .send()
            .await
            .map_err(|e| classify("DescribeServiceDeployments", e))?;
        answer
            .service_deployments()
            .iter()
            .find(|d| d.service_deployment_arn() == Some(deployment_arn))
            .map(deployment_from_sdk)
            .ok_or_else(|| {
                EcsError::Discovery(DiscoveryError::Missing {
                    what: "service deployment",
                    arn: deployment_arn.to_owned(),
                })
            })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EcsError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

impl EcsError {
    pub fn aws_kind(&self) -> Option<AwsErrorKind> {
        match self {
            EcsError::Aws(e) => Some(e.kind),
            EcsError::Discovery(_) => None,
        }
    }
}

fn revision_from_sdk(r: &ecs::types::ServiceRevision) -> RevisionFacts {
    RevisionFacts {
        arn: r.service_revision_arn().unwrap_or_default().to_owned(),
        task_definition_arn: r.task_definition().unwrap_or_default().to_owned(),
        resolved: r
            .resolved_configuration()
            .map(|c| c.load_balancers())
            .unwrap_or_default()
            .iter()
            .filter_map(|lb| {
                Some(ResolvedLoadBalancer {
                    target_group_arn: lb.target_group_arn()?.to_owned(),
                    production_rule_arn: lb.production_listener_rule().map(str::to_owned),
                })
            })
            .collect(),
        configured: r
            .load_balancers()
            .iter()
            .map(configured_load_balancer)
            .collect(),
    }
}

/// A `loadBalancers[]` entry (of a service or one of its revisions) as skewguard reads it.
pub fn configured_load_balancer(lb: &ecs::types::LoadBalancer) -> ConfiguredLoadBalancer {
    ConfiguredLoadBalancer {
        target_group_arn: lb.target_group_arn().map(str::to_owned),
        alternate_target_group_arn: lb
            .advanced_configuration()
            .and_then(|a| a.alternate_target_group_arn())
            .map(str::to_owned),
        container_name: lb.container_name().map(str::to_owned),
        production_rule_arn: lb
            .advanced_configuration()
            .and_then(|a| a.production_listener_rule())
            .map(str::to_owned),
    }
}

/// One service deployment, as `DescribeServiceDeployments` tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentFacts {
    pub arn: String,
    /// ECS's status: `IN_PROGRESS`, `SUCCESSFUL`, `ROLLBACK_SUCCESSFUL`, …
    pub status: String,
    pub created_at: Option<time::OffsetDateTime>,
    /// Blue: the revisions the deployment started from.
    pub source_revisions: Vec<String>,
    /// Green: the revision being deployed.
    pub target_revision: Option<String>,
    /// The revision ECS rolls back to, once a rollback started.
    pub rollback_revision: Option<String>,
    /// The lifecycle hooks the deployment was configured with.
    pub hooks: Vec<HookRegistrationFacts>,
}

impl DeploymentFacts {
    /// ECS still runs the deployment forward (`PENDING`, `IN_PROGRESS`). Any other status, or
    /// none, means it was stopped, rolled back or finished: a forward hook call for it is late.
    pub fn in_progress(&self) -> bool {
        matches!(self.status.as_str(), "PENDING" | "IN_PROGRESS")
    }
}

/// A lifecycle hook as a deployment's `deploymentConfiguration.lifecycleHooks[]` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct HookRegistrationFacts {
    pub target_arn: String,
    pub stages: Vec<String>,
    /// `hookDetails`, when it is a JSON object.
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// ECS answers at most this many ARNs per `DescribeServiceDeployments` call.
const DESCRIBE_DEPLOYMENTS_BATCH: usize = 20;

impl Ecs {
    /// The service's most recent deployments (at most `limit`), newest first.
    pub async fn list_service_deployments(
        &self,
        service_arn: &str,
        limit: usize,
    ) -> Result<Vec<String>, EcsError> {
        let mut request = self
            .client
            .list_service_deployments()
            .service(service_arn)
            .max_results(limit.clamp(1, 100) as i32);
        if let Some(cluster) = cluster_of_service(service_arn) {
            request = request.cluster(cluster);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| classify("ListServiceDeployments", e))?;
        let mut briefs: Vec<(i64, usize, String)> = answer
            .service_deployments()
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let at = d.created_at().map_or(0, |t| t.to_millis().unwrap_or(0));
                Some((at, i, d.service_deployment_arn()?.to_owned()))
            })
            .collect();
        // Newest first whatever order the answer had; ties keep ECS's order.
        briefs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(briefs
            .into_iter()
            .take(limit)
            .map(|(_, _, arn)| arn)
            .collect())
    }

    /// Facts of each deployment, in the order asked; deployments ECS does not know are left out.
    pub async fn describe_service_deployments(
        &self,
        arns: &[String],
    ) -> Result<Vec<DeploymentFacts>, EcsError> {
        let mut found = Vec::new();
        for batch in arns.chunks(DESCRIBE_DEPLOYMENTS_BATCH) {
            let answer = self
                .client
                .describe_service_deployments()
                .set_service_deployment_arns(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| classify("DescribeServiceDeployments", e))?;
            found.extend(answer.service_deployments().iter().map(deployment_from_sdk));
        }
        Ok(arns
            .iter()
            .filter_map(|arn| found.iter().find(|d| &d.arn == arn).cloned())
            .collect())
    }
}

/// How many tasks a service wants and runs, per DescribeServices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceTasks {
    pub desired: u32,
    pub running: u32,
    /// `ACTIVE`, `DRAINING` or `INACTIVE` (deleted).
    pub active: bool,
}

/// The task-level size of a task definition: what Fargate bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSize {
    /// CPU units (1024 = 1 vCPU); `None` when the task definition sets no task-level CPU.
    pub cpu_units: Option<u32>,
    /// MiB; `None` when the task definition sets no task-level memory.
    pub memory_mib: Option<u32>,
    /// `runtimePlatform.cpuArchitecture` (`X86_64`, `ARM64`), if set.
    pub architecture: Option<String>,
}

/// DescribeServices accepts at most 10 services per call.
const DESCRIBE_SERVICES_BATCH: usize = 10;

impl Ecs {
    /// The task counts of each named service of `cluster` that ECS knows (by the name or ARN
    /// asked); services ECS does not know are absent.
    ///
    /// Errors: any AWS error, classified by code.
    pub async fn service_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<BTreeMap<String, ServiceTasks>, AwsError> {
        let mut found = BTreeMap::new();
        for batch in services.chunks(DESCRIBE_SERVICES_BATCH) {
            let answer = self
                .client
                .describe_services()
                .cluster(cluster)
                .set_services(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| classify("DescribeServices", e))?;
            for service in answer.services() {
                let tasks = ServiceTasks {
                    desired: service.desired_count().max(0) as u32,
                    running: service.running_count().max(0) as u32,
                    active: service.status() != Some("INACTIVE"),
                };
                for asked in batch {
                    if service.service_name() == Some(asked.as_str())
                        || service.service_arn() == Some(asked.as_str())
                    {
                        found.insert(asked.clone(), tasks);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The task-level CPU, memory and architecture of a task definition.
    ///
    /// Errors: any AWS error, classified by code; a task definition ECS does not return.
    pub async fn task_size(&self, task_definition_arn: &str) -> Result<TaskSize, EcsError> {
        let answer = self
            .client
            .describe_task_definition()
            .task_definition(task_definition_arn)
            .send()
            .await
            .map_err(|e| classify("DescribeTaskDefinition", e))?;
        let td = answer.task_definition().ok_or_else(|| {
            EcsError::Discovery(DiscoveryError::Missing {
                what: "task definition",
                arn: task_definition_arn.to_owned(),
            })
        })?;
        Ok(TaskSize {
            cpu_units: td.cpu().and_then(|c| c.trim().parse().ok()),
            memory_mib: td.memory().and_then(|m| m.trim().parse().ok()),
            architecture: td
                .runtime_platform()
                .and_then(|p| p.cpu_architecture())
                .map(|a| a.as_str().to_owned()),
        })
    }
}

/// ECS's answer for a service that is gone or going: deleting or scaling it again is done.
fn service_is_gone(err: &AwsError) -> bool {
    err.is("ServiceNotFoundException")
        || err.is("ServiceNotActiveException")
        || err.is("ClusterNotFoundException")
}

impl Ecs {
    /// Scales a service to 0 tasks (`UpdateService desiredCount=0`), the step before deleting
    /// it. A service that is already gone (not found, not active, or its cluster gone) counts
    /// as scaled down. `cluster` and `service` are names or ARNs.
    ///
    /// Errors: any other AWS error, classified by code (a service without skewguard's tags is
    /// `AccessDenied` under skewguard's policy).
    pub async fn scale_service_to_zero(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<(), AwsError> {
        match self
            .client
            .update_service()
            .cluster(cluster)
            .service(service)
            .desired_count(0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("UpdateService", e);
                if service_is_gone(&err)
                    || self.service_is_gone_despite(&err, cluster, service).await
                {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Deletes a service that runs no task any more ([`Ecs::scale_service_to_zero`] first). A
    /// service that is already gone (not found, not active, or its cluster gone) counts as
    /// deleted. `cluster` and `service` are names or ARNs.
    ///
    /// Errors: any other AWS error, classified by code.
    pub async fn delete_service(&self, cluster: &str, service: &str) -> Result<(), AwsError> {
        match self
            .client
            .delete_service()
            .cluster(cluster)
            .service(service)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("DeleteService", e);
                if service_is_gone(&err)
                    || self.service_is_gone_despite(&err, cluster, service).await
                {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Under a policy conditioned on the service's tags, acting on a service that is already
    /// gone is denied rather than not found: look before reporting the denial.
    async fn service_is_gone_despite(&self, err: &AwsError, cluster: &str, service: &str) -> bool {
        if err.kind != AwsErrorKind::AccessDenied {
            return false;
        }
        match self
            .client
            .describe_services()
            .cluster(cluster)
            .services(service)
            .send()
            .await
        {
            Ok(answer) => answer
                .services()
                .iter()
                .all(|s| s.status() == Some("INACTIVE")),
            Err(e) => {
                let err = classify("DescribeServices", e);
                err.is("ClusterNotFoundException")
            }
        }
    }
}

/// `cluster` of `arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME`.
pub fn cluster_of_service(service_arn: &str) -> Option<&str> {
    let (_, path) = service_arn.split_once(":service/")?;
    let (cluster, name) = path.split_once('/')?;
    (!cluster.is_empty() && !name.is_empty()).then_some(cluster)
}

fn deployment_from_sdk(d: &ecs::types::ServiceDeployment) -> DeploymentFacts {
    DeploymentFacts {
        arn: d.service_deployment_arn().unwrap_or_default().to_owned(),
        status: d
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        created_at: d
            .created_at()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()),
        source_revisions: d
            .source_service_revisions()
            .iter()
            .filter_map(|s| s.arn().map(str::to_owned))
            .collect(),
        target_revision: d
            .target_service_revision()
            .and_then(|t| t.arn())
            .map(str::to_owned),
        rollback_revision: d
            .rollback()
            .and_then(|r| r.service_revision_arn())
            .map(str::to_owned),
        hooks: d
            .deployment_configuration()
            .map(|c| c.lifecycle_hooks())
            .unwrap_or_default()
            .iter()
            .map(|h| HookRegistrationFacts {
                target_arn: h.hook_target_arn().unwrap_or_default().to_owned(),
                stages: h
                    .lifecycle_stages()
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect(),
                details: h.hook_details().and_then(|doc| {
                    crate::event::hook_details_of(Some(&document_to_json(doc))).ok()
                }),
            })
            .collect(),
    }
}

/// A Smithy document as JSON.
pub fn document_to_json(doc: &aws_smithy_types::Document) -> serde_json::Value {
    use aws_smithy_types::{Document, Number};
    use serde_json::Value;
    match doc {
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), document_to_json(v)))
                .collect(),
        ),
        Document::Array(items) => Value::Array(items.iter().map(document_to_json).collect()),
        Document::Number(Number::PosInt(n)) => Value::from(*n),
        Document::Number(Number::NegInt(n)) => Value::from(*n),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Bool(b) => Value::Bool(*b),
        Document::Null => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";

    fn revision() -> RevisionFacts {
        RevisionFacts {
            arn: "rev-2".into(),
            task_definition_arn: "td:2".into(),
            resolved: vec![ResolvedLoadBalancer {
                target_group_arn: "tg-green".into(),
                production_rule_arn: Some(RULE.into()),
            }],
            configured: vec![ConfiguredLoadBalancer {
                target_group_arn: Some("tg-blue".into()),
                alternate_target_group_arn: Some("tg-green".into()),
                container_name: Some("web".into()),
                production_rule_arn: Some(RULE.into()),
            }],
        }
    }

    fn task_definition() -> TaskDefinitionFacts {
        TaskDefinitionFacts {
            arn: "td:2".into(),
            containers: vec![
                ContainerFacts {
                    name: "web".into(),
                    image: "123.dkr.ecr.us-east-1.amazonaws.com/web:9F86D08".into(),
                    environment: BTreeMap::from([("DEPLOYMENT_ID".into(), "9F86D08".into())]),
                    labels: BTreeMap::from([("sha".into(), "label-sha".into())]),
                },
                ContainerFacts {
                    name: "sidecar".into(),
                    image: "envoy:v1".into(),
                    environment: BTreeMap::new(),
                    labels: BTreeMap::new(),
                },
            ],
        }
    }

    #[test]
    fn the_resolved_target_group_wins_over_the_configured_one() {
        let (running, wiring) = running_version(
            &revision(),
            &task_definition(),
            None,
            &DeploymentIdSource::Env("DEPLOYMENT_ID".into()),
        )
        .unwrap();
        assert_eq!(running.target_group_arn, "tg-green");
        assert_eq!(running.deployment_id.as_str(), "9f86d08");
        assert_eq!(wiring.production_rule_arn, RULE);
        assert!(
            wiring
                .listener_arn
                .ends_with(":listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2")
        );
    }

    #[test]
    fn a_second_load_balancer_is_refused_by_name_rather_than_left_unpinned() {
        const INTERNAL: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener-rule/app/internal/60dc6c495c0c9188/a2f7dc8efc522ab2/1683b2d02a6cabee";
        let mut r = revision();
        r.configured.push(ConfiguredLoadBalancer {
            target_group_arn: Some("tg-internal-blue".into()),
            alternate_target_group_arn: Some("tg-internal-green".into()),
            container_name: Some("web".into()),
            production_rule_arn: Some(INTERNAL.into()),
        });
        r.resolved.push(ResolvedLoadBalancer {
            target_group_arn: "tg-internal-green".into(),
            production_rule_arn: Some(INTERNAL.into()),
        });
        let err = r.placement().unwrap_err();
        assert!(matches!(err, DiscoveryError::SeveralLoadBalancers { .. }));
        assert!(err.to_string().contains(INTERNAL), "{err}");
    }

    #[test]
    fn a_network_load_balancer_is_refused_with_the_reason() {
        const NLB: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener/net/tcp/50dc6c495c0c9188/f2f7dc8efc522ab2";
        let mut r = revision();
        r.configured[0].production_rule_arn = Some(NLB.into());
        r.resolved[0].production_rule_arn = Some(NLB.into());
        let err = r.placement().unwrap_err();
        assert!(err.to_string().contains("no rules to pin on"), "{err}");
    }

    #[test]
    fn without_a_resolved_configuration_nothing_is_guessed() {
        let mut r = revision();
        r.resolved.clear();
        assert!(matches!(
            r.placement(),
            Err(DiscoveryError::NoResolvedTargetGroup { .. })
        ));
    }

    #[test]
    fn ids_come_from_env_label_or_image_tag() {
        let td = task_definition();
        let label =
            deployment_id_of(&td, Some("web"), &DeploymentIdSource::Label("sha".into())).unwrap();
        assert_eq!(label.as_str(), "label-sha");
        let tag = deployment_id_of(&td, Some("web"), &DeploymentIdSource::ImageTag).unwrap();
        assert_eq!(tag.as_str(), "9f86d08");
        let err = deployment_id_of(
            &td,
            Some("sidecar"),
            &DeploymentIdSource::Env("DEPLOYMENT_ID".into()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("environment variable DEPLOYMENT_ID"),
            "{err}"
        );
        let err = deployment_id_of(&td, Some("nope"), &DeploymentIdSource::ImageTag).unwrap_err();
        assert!(err.to_string().contains("web, sidecar"), "{err}");
        let err = deployment_id_of(&td, None, &DeploymentIdSource::ImageTag).unwrap_err();
        assert!(matches!(err, DiscoveryError::AmbiguousContainer { .. }));
    }

    #[test]
    fn an_invalid_id_in_the_task_definition_is_reported() {
        let mut td = task_definition();
        td.containers[0]
            .environment
            .insert("DEPLOYMENT_ID".into(), "v1*".into());
        let err = deployment_id_of(
            &td,
            Some("web"),
            &DeploymentIdSource::Env("DEPLOYMENT_ID".into()),
        )
        .unwrap_err();
        assert!(
            matches!(err, DiscoveryError::InvalidDeploymentId { .. }),
            "{err}"
        );
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("web:abc").as_deref(), Some("abc"));
        assert_eq!(
            image_tag("registry:5000/team/web:abc").as_deref(),
            Some("abc")
        );
        assert_eq!(image_tag("registry:5000/team/web").as_deref(), None);
        assert_eq!(image_tag("web:abc@sha256:00ff").as_deref(), Some("abc"));
        assert_eq!(image_tag("web@sha256:00ff").as_deref(), None);
    }
}

/// How a service revision launches its tasks (DescribeServiceRevisions): what a retention
/// service copies so that the previous version runs exactly as it did.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionLaunch {
    /// The revision's task definition.
    pub task_definition_arn: String,
    /// Its `awsvpc` network configuration (subnets, security groups, public IP), if any.
    pub network_configuration: Option<ecs::types::NetworkConfiguration>,
    /// `FARGATE`, `EC2`, `EXTERNAL`, when it uses a launch type.
    pub launch_type: Option<ecs::types::LaunchType>,
    /// Its capacity provider strategy, when it uses one instead of a launch type.
    pub capacity_provider_strategy: Vec<ecs::types::CapacityProviderStrategyItem>,
    /// Its Fargate platform version, if set.
    pub platform_version: Option<String>,
    /// The load-balanced container and port, per the revision's load balancers.
    pub container_name: Option<String>,
    pub container_port: Option<i32>,
}

/// A retention service to create: an ordinary rolling service (no lifecycle hooks, no service
/// registries or Service Connect) in the user's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRetentionService<'a> {
    pub cluster: &'a str,
    pub name: &'a str,
    pub launch: &'a RevisionLaunch,
    pub target_group_arn: &'a str,
    pub desired_count: u32,
    pub tags: &'a [(&'static str, String)],
    /// The same for every attempt to create this service, so ECS answers a retried request
    /// with the service the first made (at most 36 ASCII characters).
    pub client_token: &'a str,
}

impl Ecs {
    /// How the revision `arn` launches its tasks.
    ///
    /// Errors: any AWS error, classified by code; a revision ECS does not return.
    pub async fn revision_launch(&self, arn: &str) -> Result<RevisionLaunch, EcsError> {
        let answer = self
            .client
            .describe_service_revisions()
            .service_revision_arns(arn)
            .send()
            .await
            .map_err(|e| classify("DescribeServiceRevisions", e))?;
        let revision = answer
            .service_revisions()
            .iter()
            .find(|r| r.service_revision_arn() == Some(arn))
            .ok_or_else(|| {
                EcsError::Discovery(DiscoveryError::Missing {
                    what: "service revision",
                    arn: arn.to_owned(),
                })
            })?;
        let lb = revision
            .load_balancers()
            .iter()
            .find(|lb| lb.container_name().is_some());
        Ok(RevisionLaunch {
            task_definition_arn: revision.task_definition().unwrap_or_default().to_owned(),
            network_configuration: revision.network_configuration().cloned(),
            launch_type: revision.launch_type().cloned(),
            capacity_provider_strategy: revision.capacity_provider_strategy().to_vec(),
            platform_version: revision.platform_version().map(str::to_owned),
            container_name: lb.and_then(|lb| lb.container_name()).map(str::to_owned),
            container_port: lb.and_then(|lb| lb.container_port()),
        })
    }

    /// Creates a retention service with its tags in the same request (skewguard's policy
    /// allows creating only with them) and a client token, and answers its ARN.
    ///
    /// Errors: any AWS error, classified by code (`InvalidParameterException` when its target
    /// group is not yet used by a listener rule).
    pub async fn create_retention_service(
        &self,
        service: &NewRetentionService<'_>,
    ) -> Result<String, AwsError> {
        use ecs::types::{DeploymentControllerType, LoadBalancer, PropagateTags, Tag};
        let launch = service.launch;
        let answer = self
            .client
            .create_service()
            .cluster(service.cluster)
            .service_name(service.name)
            .task_definition(&launch.task_definition_arn)
            .desired_count(service.desired_count.min(i32::MAX as u32) as i32)
            .load_balancers(
                LoadBalancer::builder()
                    .target_group_arn(service.target_group_arn)
                    .set_container_name(launch.container_name.clone())
                    .set_container_port(launch.container_port)
                    .build(),
            )
            .set_network_configuration(launch.network_configuration.clone())
            .set_launch_type(launch.launch_type.clone())
            .set_capacity_provider_strategy(
                (!launch.capacity_provider_strategy.is_empty())
                    .then(|| launch.capacity_provider_strategy.clone()),
            )
            .set_platform_version(launch.platform_version.clone())
            .deployment_controller(
                ecs::types::DeploymentController::builder()
                    .r#type(DeploymentControllerType::Ecs)
                    .build()
                    .map_err(|e| {
                        AwsError::concluded(
                            "CreateService",
                            "InvalidRequest",
                            AwsErrorKind::Invalid,
                            &e.to_string(),
                        )
                    })?,
            )
            .propagate_tags(PropagateTags::Service)
            .set_tags(Some(
                service
                    .tags
                    .iter()
                    .map(|(key, value)| Tag::builder().key(*key).value(value).build())
                    .collect(),
            ))
            .client_token(service.client_token)
            .send()
            .await
            .map_err(|e| classify("CreateService", e))?;
        answer
            .service()
            .and_then(|s| s.service_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                AwsError::concluded(
                    "CreateService",
                    "EmptyAnswer",
                    AwsErrorKind::Transient,
                    "CreateService answered without a service ARN",
                )
            })
    }

    /// The ARN of the service `name` in `cluster`, if ECS knows it and it is `ACTIVE` (a
    /// draining or deleted service of that name is none).
    ///
    /// Errors: any AWS error, classified by code.
    pub async fn active_service_arn(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<String>, AwsError> {
        let answer = self
            .client
            .describe_services()
            .cluster(cluster)
            .services(name)
            .send()
            .await
            .map_err(|e| classify("DescribeServices", e))?;
        Ok(answer
            .services()
            .iter()
            .find(|s| s.service_name() == Some(name) && s.status() == Some("ACTIVE"))
            .and_then(|s| s.service_arn())
            .map(str::to_owned))
    }
}
