//! skewguard reconciler: on ECS deployment state changes (one service) and on a schedule (every
//! service in the ledger), repairs drift between the ledger, the listener's pin rules and ECS.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use skewguard_core::cold_start;
use skewguard_core::metrics::{self, Invocation};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    skewguard_core::telemetry::init();
    let (defaults, table) = cold_start::reconciler_config()?;
    let clients = cold_start::clients(&cold_start::sdk_config().await, &table);
    let (defaults, clients) = (&defaults, &clients);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = Invocation {
            request_id: event.context.request_id,
            xray_trace_id: event.context.xray_trace_id,
        };
        metrics::run_reconciler(clients, defaults, event.payload, &invocation)
            .await
            .map_err(|e| Diagnostic {
                error_type: e.kind().to_owned(),
                error_message: e.to_string(),
            })
    }))
    .await
}
