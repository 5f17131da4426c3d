//! One function per ECS operation: the request's members in, the answer's JSON out, over
//! [`EcsState`].

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use std::collections::BTreeMap;

use super::protocol::{ApiError, required_str, string_list, to_json};
use super::state::{
    ContainerDefinition, EcsState, LoadBalancer, Service, ServiceDeployment, ServiceRevision,
    cluster_name, service_arn, tags_json,
};

pub(super) fn missing(arn: &str) -> Value {
    json!({"arn": arn, "reason": "MISSING"})
}

pub(super) fn describe_service_revisions(
    state: &EcsState,
    input: &Value,
) -> Result<Value, ApiError> {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for arn in string_list(input, "serviceRevisionArns")? {
        match state.service_revisions.get(&arn) {
            Some(revision) => found.push(to_json(revision)),
            None => failures.push(missing(&arn)),
        }
    }
    Ok(json!({"serviceRevisions": found, "failures": failures}))
}

pub(super) fn describe_services(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let with_tags = input
        .get("include")
        .and_then(Value::as_array)
        .is_some_and(|i| i.iter().any(|v| v == "TAGS"));
    let cluster = input
        .get("cluster")
        .and_then(Value::as_str)
        .map_or("default", cluster_name);
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for service in string_list(input, "services")? {
        let arn = if service.starts_with("arn:") {
            service
        } else {
            service_arn(cluster, &service)
        };
        match state.services.get(&arn) {
            Some(service) => found.push(service.description(with_tags)),
            None => failures.push(missing(&arn)),
        }
    }
    Ok(json!({"services": found, "failures": failures}))
}

pub(super) fn describe_service_deployments(
    state: &EcsState,
    input: &Value,
) -> Result<Value, ApiError> {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for arn in string_list(input, "serviceDeploymentArns")? {
        match state.service_deployment(&arn) {
            Some(deployment) => found.push(to_json(deployment)),
            None => failures.push(missing(&arn)),
        }
    }
    Ok(json!({"serviceDeployments": found, "failures": failures}))
}

pub(super) fn describe_task_definition(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
    let reference = required_str(input, "taskDefinition")?;
    let task_definition = state.task_definition(reference).ok_or_else(|| {
        ApiError::client("ClientException", "Unable to describe task definition.")
    })?;
    Ok(json!({"taskDefinition": to_json(task_definition)}))
}

pub(super) fn list_service_deployments(state: &EcsState, input: &Value) -> Result<Value, ApiError> {
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
        service_arn(cluster, service)
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

pub(super) fn register_task_definition(
    state: &mut EcsState,
    input: &Value,
) -> Result<Value, ApiError> {
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
// Plain (rolling) services

/// What the protocol found out about the target groups a request names, before the state is
/// locked: for each, whether a listener rule or default action of some load balancer forwards
/// to it (any weight), or `None` when it does not exist.
pub(super) type Associations = BTreeMap<String, Option<bool>>;

/// The target-group ARNs of a request's `loadBalancers`.
pub(super) fn requested_target_groups(input: &Value) -> Vec<String> {
    input
        .get("loadBalancers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|lb| lb.get("targetGroupArn").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn service_arn_of(input: &Value, member: &str) -> Result<String, ApiError> {
    let service = input
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter(format!("{member} is required")))?;
    if service.starts_with("arn:") {
        return Ok(service.to_owned());
    }
    let cluster = input
        .get("cluster")
        .and_then(Value::as_str)
        .map_or("default", cluster_name);
    Ok(service_arn(cluster, service))
}

fn tags_of(input: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let mut tags = Vec::new();
    for tag in input
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = tag
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::invalid_parameter("Tag key must not be empty."))?;
        let value = tag.get("value").and_then(Value::as_str).unwrap_or_default();
        tags.push((key.to_owned(), value.to_owned()));
    }
    if tags.len() > 50 {
        return Err(ApiError::invalid_parameter(
            "A resource can have at most 50 tags.",
        ));
    }
    Ok(tags)
}

fn load_balancers_of(
    input: &Value,
    associations: &Associations,
) -> Result<Option<Vec<LoadBalancer>>, ApiError> {
    let Some(list) = input.get("loadBalancers") else {
        return Ok(None);
    };
    let load_balancers: Vec<LoadBalancer> = serde_json::from_value(list.clone())
        .map_err(|e| ApiError::invalid_parameter(format!("loadBalancers: {e}")))?;
    for lb in &load_balancers {
        if lb.target_group_arn.is_empty() {
            return Err(ApiError::invalid_parameter(
                "The skewguard ECS emulator models Application Load Balancer target groups only: targetGroupArn is required.",
            ));
        }
        if lb.container_name.is_empty() || lb.container_port == 0 {
            return Err(ApiError::invalid_parameter(
                "containerName and containerPort are required with a targetGroupArn.",
            ));
        }
        match associations.get(&lb.target_group_arn).copied().flatten() {
            Some(true) => {}
            Some(false) => {
                return Err(ApiError::invalid_parameter(format!(
                    "The target group with targetGroupArn {} does not have an associated load balancer.",
                    lb.target_group_arn
                )));
            }
            None if associations.contains_key(&lb.target_group_arn) => {
                return Err(ApiError::invalid_parameter(format!(
                    "Unable to assume role and validate the specified targetGroupArn {}. Please verify that the target group exists.",
                    lb.target_group_arn
                )));
            }
            // No ELBv2 to ask: every target group counts as associated.
            None => {}
        }
    }
    Ok(Some(load_balancers))
}

fn opt_string(input: &Value, member: &str) -> Option<String> {
    input
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn desired_count(input: &Value) -> Result<Option<i32>, ApiError> {
    match input.get("desiredCount") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid_parameter("desiredCount must be 0 or more.")),
    }
}

fn check_task_definition(state: &EcsState, reference: &str) -> Result<String, ApiError> {
    state
        .task_definition(reference)
        .map(|td| td.task_definition_arn.clone())
        .ok_or_else(|| ApiError::invalid_parameter("TaskDefinition not found."))
}

fn check_propagate_tags(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value.as_deref() {
        None | Some("SERVICE" | "TASK_DEFINITION" | "NONE") => Ok(value),
        Some(other) => Err(ApiError::invalid_parameter(format!(
            "propagateTags must be SERVICE, TASK_DEFINITION or NONE, not {other}."
        ))),
    }
}

/// A new service revision for a plain service's current configuration.
fn put_revision(state: &mut EcsState, service: &Service) {
    let (cluster, name) = super::state::cluster_and_service(&service.service_arn)
        .unwrap_or_else(|| (String::new(), service.service_name.clone()));
    let mut revision = ServiceRevision::new(
        &cluster,
        &name,
        service.task_definition.as_deref().unwrap_or_default(),
    );
    revision.launch_type = service
        .launch_type
        .as_deref()
        .map(aws_sdk_ecs::types::LaunchType::from);
    revision.capacity_provider_strategy = service.capacity_provider_strategy.clone();
    revision.platform_version = service.platform_version.clone();
    revision.network_configuration = service.network_configuration.clone();
    revision.load_balancers = service.load_balancers.clone();
    state
        .service_revisions
        .insert(revision.service_revision_arn.clone(), revision);
}

/// `CreateService` for a plain service: deployment controller ECS (rolling), no lifecycle
/// hooks, no service registries or Service Connect.
pub(super) fn create_service(
    state: &mut EcsState,
    input: &Value,
    associations: &Associations,
) -> Result<Value, ApiError> {
    let name = required_str(input, "serviceName")
        .map_err(|_| ApiError::invalid_parameter("serviceName is required."))?;
    let cluster = input
        .get("cluster")
        .and_then(Value::as_str)
        .map_or("default", cluster_name);
    let arn = service_arn(cluster, name);
    let client_token = opt_string(input, "clientToken");
    let mut request = input.clone();
    if let Some(obj) = request.as_object_mut() {
        obj.remove("clientToken");
    }
    if let Some(existing) = state.services.get(&arn) {
        match existing.status.as_str() {
            "ACTIVE" => {
                return match &existing.creation {
                    Some((same, token)) if *same == request && *token == client_token => {
                        Ok(json!({"service": existing.description(false)}))
                    }
                    _ => Err(ApiError::invalid_parameter(
                        "Creation of service was not idempotent.",
                    )),
                };
            }
            "DRAINING" => {
                return Err(ApiError::invalid_parameter(
                    "Unable to Start a service that is still Draining.",
                ));
            }
            _ => {}
        }
    }
    let controller = input
        .pointer("/deploymentController/type")
        .and_then(Value::as_str)
        .unwrap_or("ECS");
    if controller != "ECS" {
        return Err(ApiError::invalid_parameter(format!(
            "the skewguard ECS emulator creates services with the ECS deployment controller only, not {controller}"
        )));
    }
    let strategy = input
        .pointer("/deploymentConfiguration/strategy")
        .and_then(Value::as_str)
        .unwrap_or("ROLLING");
    let hooks = input
        .pointer("/deploymentConfiguration/lifecycleHooks")
        .and_then(Value::as_array)
        .is_some_and(|h| !h.is_empty());
    if strategy != "ROLLING" || hooks {
        return Err(ApiError::invalid_parameter(
            "the skewguard ECS emulator creates ROLLING services without lifecycle hooks only",
        ));
    }
    for unsupported in ["serviceRegistries", "serviceConnectConfiguration"] {
        let given = input.get(unsupported).is_some_and(|v| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => o.get("enabled").and_then(Value::as_bool) != Some(false),
            Value::Null => false,
            _ => true,
        });
        if given {
            return Err(ApiError::invalid_parameter(format!(
                "the skewguard ECS emulator does not model {unsupported}"
            )));
        }
    }
    let launch_type = opt_string(input, "launchType");
    let capacity_provider_strategy: Vec<Value> = input
        .get("capacityProviderStrategy")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if launch_type.is_some() && !capacity_provider_strategy.is_empty() {
        return Err(ApiError::invalid_parameter(
            "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again.",
        ));
    }
    if let Some(lt) = &launch_type
        && !matches!(
            lt.as_str(),
            "EC2" | "FARGATE" | "EXTERNAL" | "MANAGED_INSTANCES"
        )
    {
        return Err(ApiError::invalid_parameter(format!(
            "launchType {lt} is not valid."
        )));
    }
    let task_definition = check_task_definition(
        state,
        required_str(input, "taskDefinition")
            .map_err(|_| ApiError::invalid_parameter("taskDefinition is required."))?,
    )?;
    let load_balancers = load_balancers_of(input, associations)?.unwrap_or_default();
    let desired = desired_count(input)?.unwrap_or(0);
    let tags = tags_of(input)?;
    let propagate_tags = check_propagate_tags(opt_string(input, "propagateTags"))?;
    let fargate = launch_type.as_deref() == Some("FARGATE")
        || capacity_provider_strategy.iter().any(|s| {
            s.get("capacityProvider")
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with("FARGATE"))
        });
    let platform_version =
        opt_string(input, "platformVersion").or_else(|| fargate.then(|| "LATEST".to_owned()));
    let mut service = Service::new(&arn);
    service.task_definition = Some(task_definition);
    service.load_balancers = load_balancers;
    service.deployment_configuration = Some(
        input
            .get("deploymentConfiguration")
            .cloned()
            .unwrap_or_else(|| {
                json!({"strategy": "ROLLING", "maximumPercent": 200, "minimumHealthyPercent": 100})
            }),
    );
    service.desired_count = desired;
    service.running_count = 0;
    service.pending_count = 0;
    service.launch_type = if capacity_provider_strategy.is_empty() {
        Some(launch_type.unwrap_or_else(|| "EC2".to_owned()))
    } else {
        None
    };
    service.capacity_provider_strategy = capacity_provider_strategy;
    service.platform_version = platform_version;
    service.network_configuration = input.get("networkConfiguration").cloned();
    service.tags = tags;
    service.propagate_tags = propagate_tags;
    service.rolling = true;
    service.creation = Some((request, client_token));
    put_revision(state, &service);
    let description = service.description(false);
    state.services.insert(arn, service);
    state.changed.notify_one();
    Ok(json!({"service": description}))
}

fn active_service<'a>(state: &'a mut EcsState, arn: &str) -> Result<&'a mut Service, ApiError> {
    let service = state
        .services
        .get_mut(arn)
        .ok_or_else(|| ApiError::client("ServiceNotFoundException", "Service not found."))?;
    if service.status != "ACTIVE" {
        return Err(ApiError::client(
            "ServiceNotActiveException",
            "Service was not ACTIVE.",
        ));
    }
    Ok(service)
}

/// `UpdateService`: desired count, task definition, load balancers, network configuration,
/// capacity provider strategy, platform version, propagateTags.
pub(super) fn update_service(
    state: &mut EcsState,
    input: &Value,
    associations: &Associations,
) -> Result<Value, ApiError> {
    let arn = service_arn_of(input, "service")?;
    active_service(state, &arn)?;
    let task_definition = match opt_string(input, "taskDefinition") {
        Some(reference) => Some(check_task_definition(state, &reference)?),
        None => None,
    };
    let load_balancers = load_balancers_of(input, associations)?;
    let desired = desired_count(input)?;
    let propagate_tags = check_propagate_tags(opt_string(input, "propagateTags"))?;
    let service = active_service(state, &arn)?;
    let mut new_revision = false;
    if let Some(td) = task_definition {
        new_revision |= service.task_definition.as_ref() != Some(&td);
        service.task_definition = Some(td);
    }
    if let Some(lbs) = load_balancers {
        new_revision = true;
        service.load_balancers = lbs;
    }
    if let Some(n) = desired {
        service.desired_count = n;
    }
    if let Some(network) = input.get("networkConfiguration") {
        new_revision = true;
        service.network_configuration = Some(network.clone());
    }
    if let Some(strategy) = input
        .get("capacityProviderStrategy")
        .and_then(Value::as_array)
    {
        new_revision = true;
        service.capacity_provider_strategy = strategy.clone();
        service.launch_type = None;
    }
    if let Some(version) = opt_string(input, "platformVersion") {
        new_revision = true;
        service.platform_version = Some(version);
    }
    if propagate_tags.is_some() {
        service.propagate_tags = propagate_tags;
    }
    let service = service.clone();
    if new_revision && service.rolling {
        put_revision(state, &service);
    }
    state.changed.notify_one();
    Ok(json!({"service": service.description(false)}))
}

/// `DeleteService`: refused while the desired count is above 0 unless `force`; the service goes
/// DRAINING (desired count 0), and INACTIVE once its tasks are stopped.
pub(super) fn delete_service(state: &mut EcsState, input: &Value) -> Result<Value, ApiError> {
    let arn = service_arn_of(input, "service")?;
    let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
    let service = active_service(state, &arn)?;
    if service.desired_count > 0 && !force {
        return Err(ApiError::invalid_parameter(
            "The service cannot be stopped while it is scaled above 0.",
        ));
    }
    service.desired_count = 0;
    // The rolling scheduler stops its tasks and then marks it INACTIVE; a service the
    // deployment engine runs has no scheduler here and goes INACTIVE at once.
    service.status = if service.rolling {
        "DRAINING"
    } else {
        "INACTIVE"
    }
    .to_owned();
    let description = service.description(false);
    state.changed.notify_one();
    Ok(json!({"service": description}))
}

fn tagged_service<'a>(state: &'a mut EcsState, input: &Value) -> Result<&'a mut Service, ApiError> {
    let arn = required_str(input, "resourceArn")
        .map_err(|_| ApiError::invalid_parameter("resourceArn is required."))?;
    state
        .services
        .get_mut(arn)
        .filter(|s| s.status != "INACTIVE")
        .ok_or_else(|| {
            ApiError::client(
                "ResourceNotFoundException",
                "The specified resource could not be found.",
            )
        })
}

/// `TagResource` on a service: new keys are added, existing keys get the new value.
pub(super) fn tag_resource(state: &mut EcsState, input: &Value) -> Result<Value, ApiError> {
    let tags = tags_of(input)?;
    let service = tagged_service(state, input)?;
    for (key, value) in tags {
        match service.tags.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => service.tags.push((key, value)),
        }
    }
    if service.tags.len() > 50 {
        return Err(ApiError::invalid_parameter(
            "A resource can have at most 50 tags.",
        ));
    }
    Ok(json!({}))
}

/// `UntagResource` on a service.
pub(super) fn untag_resource(state: &mut EcsState, input: &Value) -> Result<Value, ApiError> {
    let keys: Vec<String> = input
        .get("tagKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let service = tagged_service(state, input)?;
    service.tags.retain(|(k, _)| !keys.contains(k));
    Ok(json!({}))
}

/// `ListTagsForResource` of a service.
pub(super) fn list_tags_for_resource(
    state: &mut EcsState,
    input: &Value,
) -> Result<Value, ApiError> {
    let service = tagged_service(state, input)?;
    Ok(json!({"tags": tags_json(&service.tags)}))
}
