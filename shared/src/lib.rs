//! skewguard's domain library: the lifecycle-hook payloads, per-service settings, the ledger,
//! ALB pin planning, and the narrow AWS operations the hooks need.

pub mod deployment_id;
pub mod event;
pub mod listener;
pub mod settings;

pub use deployment_id::DeploymentId;
