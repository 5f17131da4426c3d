//! skewguard's domain library: the lifecycle-hook payloads, per-service settings, the ledger,
//! ALB pin planning, and the narrow AWS operations the hooks need.

pub mod aws;
pub mod cold_start;
pub mod deployment_id;
pub mod event;
pub mod hook;
pub mod ledger;
pub mod listener;
pub mod pins;
#[cfg(test)]
mod proptests;
pub mod reconcile;
pub mod reconciler;
pub mod settings;
pub mod stages;
pub mod telemetry;

pub use deployment_id::DeploymentId;
