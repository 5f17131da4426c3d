//! A tiny `lambda_runtime` function for testing the local Lambda ([`skewguard_world::lambda`]).
//!
//! Returns the event it received, except:
//! - `{"crash": true}`: exits the process with status 3 mid-invocation;
//! - `{"error": "message"}`: returns an error of type `EchoError`;
//! - `{"sleep_ms": N}`: sleeps N ms first;
//! - `{"env": "NAME"}`: answers `{"env": "<value of NAME or null>"}`;
//! - `{"log": "text"}`: logs `text` at info level first.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[derive(Debug)]
struct EchoError(String);

impl From<EchoError> for Diagnostic {
    fn from(error: EchoError) -> Diagnostic {
        Diagnostic {
            error_type: "EchoError".to_owned(),
            error_message: error.0,
        }
    }
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, EchoError> {
    let payload = event.payload;
    if let Some(text) = payload.get("log").and_then(Value::as_str) {
        tracing::info!(request_id = %event.context.request_id, "{text}");
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if payload.get("crash").and_then(Value::as_bool) == Some(true) {
        std::process::exit(3);
    }
    if let Some(message) = payload.get("error").and_then(Value::as_str) {
        return Err(EchoError(message.to_owned()));
    }
    if let Some(name) = payload.get("env").and_then(Value::as_str) {
        return Ok(json!({ "env": std::env::var(name).ok() }));
    }
    Ok(payload)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(handler)).await
}
