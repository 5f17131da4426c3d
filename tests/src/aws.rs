//! SDK configuration for the stand-ins: ECS → the project's emulator, ELBv2, DynamoDB and SQS →
//! moto.
//!
//! Two ways in, meant to agree:
//! - in-process clients built from [`sdk_config`] (static test credentials, `us-east-1`, retries
//!   disabled, per-service endpoint URLs carried in the config itself, so any code that takes an
//!   `&SdkConfig` reaches the right stand-in for each service);
//! - hook processes, which load their config the standard way from [`function_env`].

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

pub const REGION: &str = "us-east-1";
pub const ACCOUNT_ID: &str = "123456789012";
pub const ACCESS_KEY_ID: &str = "test";
pub const SECRET_ACCESS_KEY: &str = "test";
/// `AWS_MAX_ATTEMPTS` for hook processes: one retry, so an injected retryable fault
/// ([`crate::ecs_emulator::EcsEmulator::fail_next`]) is absorbed once and a second one surfaces.
pub const FUNCTION_MAX_ATTEMPTS: u32 = 2;

/// The SDK service ids the per-service endpoint settings are keyed by
/// (`AWS_ENDPOINT_URL_<ID upper-cased, spaces to underscores>`).
pub const ECS_SERVICE_ID: &str = "ECS";
pub const ELBV2_SERVICE_ID: &str = "Elastic Load Balancing v2";
pub const DYNAMODB_SERVICE_ID: &str = "DynamoDB";
pub const CLOUDWATCH_SERVICE_ID: &str = "CloudWatch";
pub const SQS_SERVICE_ID: &str = "SQS";

/// Where each service's stand-in listens (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ecs: String,
    pub elbv2: String,
    pub dynamodb: String,
    /// CloudWatch metrics: the world's own stand-in ([`crate::cloudwatch`]); moto until one is
    /// named (moto does not speak the SDK's protocol, so calls fail clearly).
    pub cloudwatch: String,
    pub sqs: String,
}

impl Endpoints {
    /// ECS on the emulator, ELBv2, DynamoDB and SQS on moto.
    pub fn new(ecs_emulator: impl Into<String>, moto: impl Into<String>) -> Self {
        let moto = moto.into();
        Self {
            ecs: ecs_emulator.into(),
            elbv2: moto.clone(),
            cloudwatch: moto.clone(),
            dynamodb: moto.clone(),
            sqs: moto,
        }
    }

    /// The same with CloudWatch at `cloudwatch`.
    pub fn with_cloudwatch(mut self, cloudwatch: impl Into<String>) -> Self {
        self.cloudwatch = cloudwatch.into();
        self
    }
}

/// The static credentials every stand-in accepts.
pub fn test_credentials() -> aws_sdk_ecs::config::Credentials {
    aws_sdk_ecs::config::Credentials::new(
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
        None,
        None,
        "skewguard-world",
    )
}

/// An `SdkConfig` for the stand-ins: test credentials, `us-east-1`, no retries, generous but
/// finite timeouts (a stand-in that hangs fails the test instead of wedging it), and per-service
/// endpoint URLs that take precedence over anything in the test process's environment.
pub async fn sdk_config(endpoints: &Endpoints) -> SdkConfig {
    let loaded = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::from_static(REGION))
        .credentials_provider(test_credentials())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .load()
        .await;
    loaded
        .into_builder()
        .service_config(StandInEndpoints(endpoints.clone()))
        .build()
}

pub fn ecs_client(config: &SdkConfig) -> aws_sdk_ecs::Client {
    aws_sdk_ecs::Client::new(config)
}

pub fn elbv2_client(config: &SdkConfig) -> aws_sdk_elasticloadbalancingv2::Client {
    aws_sdk_elasticloadbalancingv2::Client::new(config)
}

pub fn dynamodb_client(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

pub fn cloudwatch_client(config: &SdkConfig) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(config)
}

pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// The clients the functions use, all pointed at the stand-ins.
#[derive(Debug, Clone)]
pub struct Clients {
    pub config: SdkConfig,
    pub ecs: aws_sdk_ecs::Client,
    pub elbv2: aws_sdk_elasticloadbalancingv2::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    pub async fn new(endpoints: &Endpoints) -> Self {
        let config = sdk_config(endpoints).await;
        Self {
            ecs: ecs_client(&config),
            elbv2: elbv2_client(&config),
            dynamodb: dynamodb_client(&config),
            cloudwatch: cloudwatch_client(&config),
            sqs: sqs_client(&config),
            config,
        }
    }
}

/// Environment variables that make a hook process's standard `aws_config` loading reach the
/// stand-ins (per-service endpoint URLs, static credentials, region, few attempts, no IMDS).
pub fn function_env(endpoints: &Endpoints) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL_ECS", endpoints.ecs.as_str()),
        (
            "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
            endpoints.elbv2.as_str(),
        ),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoints.dynamodb.as_str()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", endpoints.cloudwatch.as_str()),
        ("AWS_ENDPOINT_URL_SQS", endpoints.sqs.as_str()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_MAX_ATTEMPTS", &FUNCTION_MAX_ATTEMPTS.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Per-service `endpoint_url`, answered the way the SDK asks for `AWS_ENDPOINT_URL_<SERVICE>`.
#[derive(Debug)]
struct StandInEndpoints(Endpoints);

impl LoadServiceConfig for StandInEndpoints {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        if key.env() != "AWS_ENDPOINT_URL" {
            return None;
        }
        match key.service_id() {
            ECS_SERVICE_ID => Some(self.0.ecs.clone()),
            ELBV2_SERVICE_ID => Some(self.0.elbv2.clone()),
            DYNAMODB_SERVICE_ID => Some(self.0.dynamodb.clone()),
            CLOUDWATCH_SERVICE_ID => Some(self.0.cloudwatch.clone()),
            SQS_SERVICE_ID => Some(self.0.sqs.clone()),
            _ => None,
        }
    }
}
