//! The Lambda entry points the function binaries wire to: cold start (telemetry, configuration
//! and SDK clients, each once per process) and then, per invocation, the handler with its
//! metrics. Behind the `lambda` feature, so that the CLI and the tests need no Lambda runtime.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

use crate::cold_start;
use crate::hook::HookFunction;
use crate::metrics::{self, Invocation};
use crate::reconciler::ReconcilerConfig;

pub use lambda_runtime::Error;

/// The invocation's identity, for logs and metrics.
fn invocation(event: &LambdaEvent<Value>) -> Invocation {
    Invocation {
        request_id: event.context.request_id.clone(),
        xray_trace_id: event.context.xray_trace_id.clone(),
    }
}

/// Runs one of the lifecycle-hook functions. Every invocation gets an answer ECS understands
/// (never a function error); only an invalid configuration stops the cold start.
pub async fn serve_hook(function: HookFunction) -> Result<(), Error> {
    crate::telemetry::init();
    let (config, table) = cold_start::hook_config(function)?;
    let clients = cold_start::clients(&cold_start::sdk_config().await, &table);
    let (config, clients) = (&config, &clients);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = invocation(&event);
        Ok::<_, Error>(metrics::run_hook(config, clients, event.payload, &invocation).await)
    }))
    .await
}

/// Runs the reconciler function. A failed run is a function error carrying the error's kind,
/// so that Lambda's asynchronous retry and the dead-letter queue see it; an SQS batch answers
/// its failed messages instead (partial batch response).
pub async fn serve_reconciler() -> Result<(), Error> {
    crate::telemetry::init();
    let (defaults, table) = cold_start::reconciler_config()?;
    let sdk = cold_start::sdk_config().await;
    let sweep_queue = cold_start::sweep_queue(&sdk)?;
    let clients = cold_start::clients(&sdk, &table);
    let config = ReconcilerConfig {
        defaults,
        sweep_queue,
        deadline: None,
    };
    let (config, clients) = (&config, &clients);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = invocation(&event);
        let config = ReconcilerConfig {
            deadline: deadline(&event),
            ..config.clone()
        };
        metrics::run_reconciler(clients, &config, event.payload, &invocation)
            .await
            .map_err(|e| Diagnostic {
                error_type: e.kind().to_owned(),
                error_message: e.to_string(),
            })
    }))
    .await
}

/// Lambda's deadline for the invocation (epoch milliseconds), as an instant of this process.
fn deadline(event: &LambdaEvent<Value>) -> Option<Instant> {
    if event.context.deadline == 0 {
        return None;
    }
    let deadline = UNIX_EPOCH.checked_add(Duration::from_millis(event.context.deadline))?;
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now().checked_add(left)
}
