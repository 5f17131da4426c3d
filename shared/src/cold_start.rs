//! What a function reads once per cold start: the ledger table, the settings defaults and the
//! SDK clients, all from the standard AWS configuration chain (so `AWS_ENDPOINT_URL_<SERVICE>`
//! redirects them without special code).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;

use crate::aws::cloudwatch::CloudWatch;
use crate::aws::ecs::Ecs;
use crate::aws::elb::Elb;
use crate::aws::ledger_store::LedgerStore;
use crate::aws::sweep_queue::SweepQueue;
use crate::hook::{Clients, HookConfig, HookFunction};
use crate::metrics::CountAwsCalls;
use crate::settings::{EnvDefaults, Settings};

/// The environment variable naming the ledger table.
pub const TABLE_ENV: &str = "SKEWGUARD_TABLE";

/// The environment variable giving the reconciler the sweep queue's URL.
pub const SWEEP_QUEUE_ENV: &str = "SKEWGUARD_SWEEP_QUEUE_URL";

/// The longest one AWS call may take, the SDK's retries included ([`sdk_config`]).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(40);

/// Why a function cannot start: its configuration is missing or invalid. The function stops at
/// its cold start (Lambda reports an init error) rather than failing every invocation.
#[derive(Debug, thiserror::Error)]
pub enum ColdStartError {
    /// [`TABLE_ENV`] is unset or blank.
    #[error("{TABLE_ENV} is not set: it must name the skewguard ledger table")]
    NoTable,
    /// [`SWEEP_QUEUE_ENV`] is unset or blank (the reconciler only).
    #[error("{SWEEP_QUEUE_ENV} is not set: it must be the URL of the reconciler's sweep queue")]
    NoSweepQueue,
    /// A `SKEWGUARD_*` settings default is invalid.
    #[error("a function-level default is invalid: {0}")]
    Defaults(#[from] crate::settings::SettingsError),
}

/// Loads the shared SDK configuration with bounded per-call time, so a hung endpoint costs a
/// retry rather than the hook's whole budget.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// The ECS, ELBv2 and ledger clients, built once per cold start from `sdk`, each counting its
/// calls into the invocation's metrics ([`CountAwsCalls`]).
pub fn clients(sdk: &aws_config::SdkConfig, table: &str) -> Clients {
    let ecs = aws_sdk_ecs::config::Builder::from(sdk).interceptor(CountAwsCalls);
    let elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(sdk).interceptor(CountAwsCalls);
    let ddb = aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(CountAwsCalls);
    let cloudwatch = aws_sdk_cloudwatch::config::Builder::from(sdk).interceptor(CountAwsCalls);
    Clients {
        ecs: Ecs::new(aws_sdk_ecs::Client::from_conf(ecs.build())),
        elb: Elb::new(aws_sdk_elasticloadbalancingv2::Client::from_conf(
            elb.build(),
        )),
        ledger: LedgerStore::new(aws_sdk_dynamodb::Client::from_conf(ddb.build()), table),
        cloudwatch: CloudWatch::new(aws_sdk_cloudwatch::Client::from_conf(cloudwatch.build())),
    }
}

/// Reads and validates the function's own configuration; an invalid default stops the cold
/// start with a clear message rather than failing every invocation later.
pub fn hook_config(function: HookFunction) -> Result<(HookConfig, String), ColdStartError> {
    let (defaults, table) = reconciler_config()?;
    Ok((HookConfig { function, defaults }, table))
}

/// The configuration every function reads, the reconciler's whole: the ledger table and the
/// function-level settings defaults (each service's `hookDetails` go over them).
pub fn reconciler_config() -> Result<(EnvDefaults, String), ColdStartError> {
    let table = std::env::var(TABLE_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or(ColdStartError::NoTable)?;
    let defaults = EnvDefaults::from_env();
    Settings::resolve(&Default::default(), &defaults)?;
    Ok((defaults, table))
}

/// The reconciler's sweep queue ([`SWEEP_QUEUE_ENV`]), its client counting its calls like the
/// others' ([`CountAwsCalls`]).
pub fn sweep_queue(sdk: &aws_config::SdkConfig) -> Result<SweepQueue, ColdStartError> {
    let url = std::env::var(SWEEP_QUEUE_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or(ColdStartError::NoSweepQueue)?;
    let config = aws_sdk_sqs::config::Builder::from(sdk).interceptor(CountAwsCalls);
    Ok(SweepQueue::new(
        aws_sdk_sqs::Client::from_conf(config.build()),
        url.trim(),
    ))
}
