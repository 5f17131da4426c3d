//! `skewguard`: see what skewguard is doing without the AWS console.
//!
//! Every command reads AWS through the standard configuration chain (profiles, `--region`,
//! `AWS_ENDPOINT_URL_*`), so it works against AWS and the local world alike, and prints either
//! a table (coloured on a terminal) or JSON (`--output json`).

pub mod commands;
pub mod pricing;
pub mod render;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::ProvideCredentials;
use clap::{Parser, Subcommand, ValueEnum};
use skewguard_core::aws::DisplayErrorContext;
use skewguard_core::aws::ledger_store::LedgerError;
use skewguard_core::hook::Clients;
use skewguard_core::reconciler::ReconcileError;

pub use commands::Rendered;

/// The default ledger table name.
pub const DEFAULT_TABLE: &str = "skewguard-ledger";

#[derive(Debug, Parser)]
#[command(
    name = "skewguard",
    version,
    about = "See and steer skewguard: pins, ledger, skew windows, drift",
    long_about = "See and steer skewguard: which deployment each pin leads to, the ledger history, \
                  where a request would go, ending a skew window early, and repairing drift.\n\n\
                  AWS access uses the standard configuration chain: AWS_PROFILE or --profile, \
                  AWS_REGION or --region, and AWS_ENDPOINT_URL_<SERVICE> for other endpoints."
)]
pub struct Cli {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// The ledger table.
    #[arg(long, env = "SKEWGUARD_TABLE", default_value = DEFAULT_TABLE, global = true)]
    pub table: String,
    /// AWS region (else AWS_REGION or the profile's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS profile (else AWS_PROFILE).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One table per service: deployments, status, target group, pins, skew windows.
    Status(commands::status::Args),
    /// The ledger history of one deployment of a service.
    History(commands::history::Args),
    /// Which rule, target group and deployment a request would reach, and for how long.
    Explain(commands::explain::Args),
    /// End the current skew window now: the holding hook retires the previous version on its
    /// next call.
    Release(commands::release::Args),
    /// Compare ledger, listener and ECS, and repair drift (the reconciler, run locally).
    Reconcile(commands::reconcile::Args),
    /// Retire a retained version now: its pins, then its retention service and target group.
    /// The history records you as the actor.
    Revoke(commands::retire::Args),
    /// Retire every retained version older than the given deployment now (the kill switch
    /// after a security fix). The history records you as the actor.
    Cutoff(commands::retire::Args),
    /// Wait until the service's newest deployment can be called done: production shifted to
    /// green and green pinned (while skewguard still holds the deployment), or the deployment
    /// completed. Exits non-zero on a rollback, a stop or the timeout.
    Wait(commands::wait::Args),
    /// Check a service's setup before its first deployment under skewguard (and after any
    /// change): strategy, hooks, settings, timeouts, listener, deployment ID, quotas, ledger
    /// table and, with --simulate-iam, the functions' permissions. Exits non-zero on any error.
    Doctor(commands::doctor::Args),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown service {given:?}: {why}")]
    UnknownService { given: String, why: String },
    #[error(
        "no AWS credentials found ({0}); set AWS_PROFILE or --profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials(String),
    #[error("no AWS region: pass --region or set AWS_REGION")]
    NoRegion,
    #[error(
        "the ledger table {table:?} does not exist in {region}; pass --table or set SKEWGUARD_TABLE"
    )]
    TableMissing { table: String, region: String },
    #[error("invalid argument: {0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// An error the command cannot say more plainly: its whole chain, down to what AWS
    /// answered.
    pub fn failed(e: &(dyn std::error::Error + 'static)) -> CliError {
        CliError::Failed(DisplayErrorContext(e).to_string())
    }
}

/// What the commands need: the SDK clients and where they point.
pub struct Context {
    pub clients: Clients,
    /// ECS itself, for what the shared clients do not read (a deployment's lifecycle stage).
    pub ecs: aws_sdk_ecs::Client,
    /// STS, to tell who is acting ([`Context::caller_arn`]).
    pub sts: aws_sdk_sts::Client,
    pub table: String,
    pub region: String,
    /// The AWS configuration, for clients only one command needs.
    pub config: aws_config::SdkConfig,
}

impl Context {
    /// Loads the AWS configuration the standard way and makes sure credentials resolve.
    pub async fn load(cli: &Cli) -> Result<Context, CliError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(20))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        );
        if let Some(profile) = &cli.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &cli.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let config = loader.load().await;
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or(CliError::NoRegion)?;
        let provider = config
            .credentials_provider()
            .ok_or_else(|| CliError::NoCredentials("no credentials provider".to_owned()))?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| CliError::NoCredentials(e.to_string()))?;
        Ok(Context {
            clients: skewguard_core::cold_start::clients(&config, &cli.table),
            ecs: aws_sdk_ecs::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            table: cli.table.clone(),
            region,
            config,
        })
    }

    /// Who is acting, for the ledger history of a command that writes: the caller's IAM ARN
    /// (`sts:GetCallerIdentity`, which needs no permission). Best effort: a command that ends a
    /// skew window or repairs drift must not wait on STS, so when STS cannot be reached within
    /// a few seconds it says so on stderr and the history records no actor.
    pub async fn caller_arn(&self) -> String {
        let asked = tokio::time::timeout(
            Duration::from_secs(5),
            self.sts.get_caller_identity().send(),
        )
        .await;
        let why = match asked {
            Ok(Ok(identity)) => match identity.arn() {
                Some(arn) => return arn.to_owned(),
                None => "it named no ARN".to_owned(),
            },
            Ok(Err(e)) => aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        anstream::eprintln!(
            "skewguard: warning: could not tell who is calling (sts:GetCallerIdentity: {why}); the ledger history records no actor"
        );
        String::new()
    }

    /// A ledger error, said plainly.
    pub fn ledger_error(&self, e: LedgerError) -> CliError {
        match &e {
            LedgerError::Aws(aws) if aws.code == "ResourceNotFoundException" => {
                CliError::TableMissing {
                    table: self.table.clone(),
                    region: self.region.clone(),
                }
            }
            _ => CliError::failed(&e),
        }
    }

    /// A reconciler error, said plainly.
    pub fn reconcile_error(&self, e: ReconcileError) -> CliError {
        match e {
            ReconcileError::Ledger(l) => self.ledger_error(l),
            ReconcileError::Aws(aws) if aws.code == "ResourceNotFoundException" => {
                CliError::TableMissing {
                    table: self.table.clone(),
                    region: self.region.clone(),
                }
            }
            other => CliError::Failed(format!("{}: {}", other.kind(), DisplayErrorContext(&other))),
        }
    }
}

/// Runs one command: the text to print (styled; print it through anstream, which drops the
/// styles where colour is off), and whether part of it failed (exit non-zero).
pub async fn run(cli: Cli) -> Result<(String, bool), CliError> {
    let ctx = Context::load(&cli).await?;
    let rendered = commands::dispatch(&ctx, cli.command).await?;
    let text = match cli.output {
        Output::Json => rendered.json(),
        Output::Table => rendered.table(),
    };
    Ok((text, rendered.failed()))
}
