//! ECS's `awsJson1_1` protocol over HTTP/1.1: the accept loop, the `X-Amz-Target` dispatch to
//! `operations`, the call log, faults and delays, error answers, and reading members
//! of a request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};

use super::operations::{
    Associations, create_service, delete_service, describe_service_deployments,
    describe_service_revisions, describe_services, describe_task_definition,
    list_service_deployments, list_tags_for_resource, register_task_definition,
    requested_target_groups, tag_resource, untag_resource, update_service,
};
use super::state::EcsState;
use super::{TARGET_PREFIX, lock};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// ECS's limit on ARNs per `DescribeServiceRevisions` / `DescribeServiceDeployments` call.
const MAX_DESCRIBE_ARNS: usize = 20;

pub(super) async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<EcsState>>) {
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
pub(super) struct ApiError {
    status: u16,
    error_type: String,
    message: String,
}

impl ApiError {
    pub(super) fn client(error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterException", message)
    }

    pub(super) fn server(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            error_type: "ServerException".to_owned(),
            message: message.into(),
        }
    }
}

/// Whether any listener (default action or rule) of any load balancer forwards to
/// `target_group_arn`, at any weight; `None` if the target group does not exist.
///
/// moto's `DescribeTargetGroups` `LoadBalancerArns` is filled by `CreateListener` and
/// `CreateRule` only (not by `ModifyRule`/`ModifyListener`, and never emptied when a rule goes),
/// so the association is read from the listeners themselves, as ELBv2 keeps it: first of the
/// load balancers moto names (where it usually is), then of every other one, page by page.
pub(super) async fn target_group_associated(
    elbv2: &aws_sdk_elasticloadbalancingv2::Client,
    target_group_arn: &str,
) -> Result<Option<bool>, String> {
    use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata};
    let found = elbv2
        .describe_target_groups()
        .target_group_arns(target_group_arn)
        .send()
        .await;
    let named: Vec<String> = match found {
        Err(e) if e.code() == Some("TargetGroupNotFound") => return Ok(None),
        Err(e) => return Err(DisplayErrorContext(&e).to_string()),
        Ok(answer) => answer
            .target_groups()
            .iter()
            .flat_map(|tg| tg.load_balancer_arns().iter().cloned())
            .collect(),
    };
    for balancer in &named {
        if balancer_forwards_to(elbv2, balancer, target_group_arn).await? {
            return Ok(Some(true));
        }
    }
    let mut marker: Option<String> = None;
    loop {
        let page = elbv2
            .describe_load_balancers()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        for balancer in page.load_balancers() {
            let Some(arn) = balancer.load_balancer_arn() else {
                continue;
            };
            if !named.iter().any(|n| n == arn)
                && balancer_forwards_to(elbv2, arn, target_group_arn).await?
            {
                return Ok(Some(true));
            }
        }
        match page.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => return Ok(Some(false)),
        }
    }
}

/// Whether a listener of `balancer` forwards to `target_group_arn` (default action or rule).
async fn balancer_forwards_to(
    elbv2: &aws_sdk_elasticloadbalancingv2::Client,
    balancer: &str,
    target_group_arn: &str,
) -> Result<bool, String> {
    use aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext;
    let forwards_to = |action: &aws_sdk_elasticloadbalancingv2::types::Action| {
        action.target_group_arn() == Some(target_group_arn)
            || action.forward_config().is_some_and(|f| {
                f.target_groups()
                    .iter()
                    .any(|t| t.target_group_arn() == Some(target_group_arn))
            })
    };
    let listeners = elbv2
        .describe_listeners()
        .load_balancer_arn(balancer)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(&e).to_string())?;
    for listener in listeners.listeners() {
        if listener.default_actions().iter().any(forwards_to) {
            return Ok(true);
        }
        let rules = elbv2
            .describe_rules()
            .set_listener_arn(listener.listener_arn().map(str::to_owned))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        if rules
            .rules()
            .iter()
            .any(|r| r.actions().iter().any(forwards_to))
        {
            return Ok(true);
        }
    }
    Ok(false)
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
    // Which target groups a new configuration names are associated with a load balancer: read
    // from ELBv2 before the state is locked.
    let mut associations = Associations::new();
    if matches!(operation.as_str(), "CreateService" | "UpdateService")
        && let Ok(input) = serde_json::from_slice::<Value>(&body)
    {
        let elbv2 = lock(state).elbv2.clone();
        if let Some(elbv2) = elbv2 {
            for tg in requested_target_groups(&input) {
                let associated = match target_group_associated(&elbv2, &tg).await {
                    Ok(found) => found,
                    Err(e) => {
                        return respond(
                            request_id,
                            Err(ApiError::server(format!(
                                "the emulator could not read target group {tg}: {e}"
                            ))),
                        );
                    }
                };
                associations.insert(tg, associated);
            }
        }
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
            "DescribeServices" => describe_services(&state, &input),
            "DescribeServiceRevisions" => describe_service_revisions(&state, &input),
            "DescribeServiceDeployments" => describe_service_deployments(&state, &input),
            "DescribeTaskDefinition" => describe_task_definition(&state, &input),
            "ListServiceDeployments" => list_service_deployments(&state, &input),
            "RegisterTaskDefinition" => register_task_definition(&mut state, &input),
            "CreateService" => create_service(&mut state, &input, &associations),
            "UpdateService" => update_service(&mut state, &input, &associations),
            "DeleteService" => delete_service(&mut state, &input),
            "TagResource" => tag_resource(&mut state, &input),
            "UntagResource" => untag_resource(&mut state, &input),
            "ListTagsForResource" => list_tags_for_resource(&mut state, &input),
            other => Err(ApiError::client(
                "UnknownOperationException",
                format!("the skewguard ECS emulator does not implement {other}"),
            )),
        }
    })();
    respond(request_id, result)
}

pub(super) fn respond(request_id: u64, result: Result<Value, ApiError>) -> Response<Full<Bytes>> {
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

pub(super) fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("emulator state serializes")
}

pub(super) fn string_list(input: &Value, member: &str) -> Result<Vec<String>, ApiError> {
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

pub(super) fn required_str<'a>(input: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    input
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::client("ClientException", format!("{member} is required")))
}
