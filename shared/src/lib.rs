//! skewguard's domain library: the lifecycle-hook payloads, per-service settings, the ledger,
//! ALB pin planning, and the narrow AWS operations the hooks need.
//!
//! One invocation (a hook stage, a reconciler run) is one pipeline, retried as a whole from a
//! fresh observation when another writer got there first ([`retry`]):
//!
//! 1. **observe**: the ledger ([`aws::ledger_store`]), ECS ([`aws::ecs`]) and the listener
//!    ([`aws::elb`]), through narrow named operations;
//! 2. **decide**: pure functions over plain data: the ledger entries a stage wants
//!    ([`stages`], on a [`stages::Draft`]), what the reconciler repairs ([`reconcile`]), and
//!    the listener changes with their priorities ([`pins::plan`], [`pins::place`]);
//! 3. **apply**: the one executor of listener changes ([`apply::apply`]), shared by the hooks,
//!    the reconciler and the property tests;
//! 4. **commit**: one conditional ledger write ([`aws::ledger_store::LedgerStore::commit`]).
//!
//! The runners that walk those steps are [`hook`] (lifecycle hooks) and [`reconciler`].
//!
//! | stage (or trigger) | decided by |
//! |---|---|
//! | `POST_TEST_TRAFFIC_SHIFT` | [`stages::post_test_traffic`] |
//! | `TEST_TRAFFIC_SHIFT` forward | nothing to do (answered from the event) |
//! | `PRODUCTION_TRAFFIC_SHIFT` forward (each LINEAR/CANARY step) | [`stages::production_shift`] |
//! | either traffic shift with green at weight 0 (a rollback) | [`stages::rollback`] |
//! | `POST_PRODUCTION_TRAFFIC_SHIFT` | [`stages::post_shift`]; with `retention: service`, the previous version's copy: [`starter::decide`] over [`retention::next_step`] |
//! | a forward call for a deployment that already ended | [`stages::ended_deployment`]: nothing |
//! | reconciler (schedule, deployment events, `skewguard reconcile`) | [`reconcile::decide`], [`reconcile::review_pins`] |
//! | retirement of retained versions (the reconciler, `skewguard revoke` / `cutoff`) | [`retirement::decide`], [`retirement::next_step`], run by [`retirer::retire_service`] |
//! | which pins exist, at which priorities | [`pins::plan`], [`pins::place`] |

pub mod apply;
pub mod aws;
pub mod cold_start;
pub mod deployment_id;
pub mod event;
pub mod hook;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod pins;
#[cfg(test)]
mod proptests;
pub mod reconcile;
pub mod reconciler;
pub mod retention;
pub mod retirement;
pub mod retirer;
pub mod retry;
pub mod settings;
pub mod stages;
pub mod starter;
pub mod telemetry;

pub use deployment_id::DeploymentId;
