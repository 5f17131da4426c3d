//! skewguard lifecycle hook for POST_PRODUCTION_TRAFFIC_SHIFT: holds the previous version pinned for the skew window, then retires it.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use skewguard_core::cold_start;
use skewguard_core::hook::HookFunction;
use skewguard_core::metrics::{self, Invocation};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    skewguard_core::telemetry::init();
    let (config, table) = cold_start::hook_config(HookFunction::PostShift)?;
    let clients = cold_start::clients(&cold_start::sdk_config().await, &table);
    let (config, clients) = (&config, &clients);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = Invocation {
            request_id: event.context.request_id,
            xray_trace_id: event.context.xray_trace_id,
        };
        Ok::<_, Error>(metrics::run_hook(config, clients, event.payload, &invocation).await)
    }))
    .await
}
