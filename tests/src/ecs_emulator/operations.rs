//! One function per ECS operation: the request's members in, the answer's JSON out, over
//! [`EcsState`].

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::protocol::{ApiError, required_str, string_list, to_json};
use super::state::{ContainerDefinition, EcsState, ServiceDeployment, cluster_name, service_arn};

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
            Some(service) => found.push(service.description()),
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
