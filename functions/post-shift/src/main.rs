//! skewguard lifecycle hook for POST_PRODUCTION_TRAFFIC_SHIFT: holds the previous version pinned for the skew window, then retires it.

use skewguard_core::hook::HookFunction;
use skewguard_core::lambda::{self, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda::serve_hook(HookFunction::PostShift).await
}
