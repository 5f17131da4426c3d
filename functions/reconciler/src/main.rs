//! skewguard reconciler: on ECS deployment state changes (one service) and on a schedule (every
//! service in the ledger), repairs drift between the ledger, the listener's pin rules and ECS.

use skewguard_core::lambda::{self, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda::serve_reconciler().await
}
