//! skewguard lifecycle hook for POST_TEST_TRAFFIC_SHIFT: records green as testing and pins the production version.

use skewguard_core::hook::HookFunction;
use skewguard_core::lambda::{self, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda::serve_hook(HookFunction::PostTestTraffic).await
}
