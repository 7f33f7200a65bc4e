//! The `submit` Lambda: the Comfy API v2 write routes (submit, cancel, assets,
//! uploads, from-hash) behind API Gateway's HTTP API (payload v2).
//!
//! Only wiring: the router is `functions_common::submit_router`, tested there.

use functions_common::{Deployment, Function, init_tracing, submit_router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Reads the environment and builds the clients: no network call before the
    // first request.
    let deployment = Deployment::from_env(Function::Submit).await?;
    lambda_http::run(submit_router(&deployment))
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
