//! skewguard lifecycle hook for TEST_TRAFFIC_SHIFT and PRODUCTION_TRAFFIC_SHIFT: pins green as traffic moves, unpins it on rollback.

use skewguard_core::hook::HookFunction;
use skewguard_core::lambda::{self, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda::serve_hook(HookFunction::ProductionShift).await
}
