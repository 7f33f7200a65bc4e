//! The `status` Lambda: the Comfy API v2 read routes (jobs, lists, workflows, bounded
//! event streams, assets and their content as 302s to presigned S3 URLs, health,
//! the OpenAPI document) behind API Gateway's HTTP API (payload v2).
//!
//! Only wiring: the router is `functions_common::status_router`, tested there.

use functions_common::{Deployment, Function, init_tracing, status_router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Reads the environment (the cursor key included) and builds the clients: no
    // network call before the first request.
    let deployment = Deployment::from_env(Function::Status).await?;
    lambda_http::run(status_router(&deployment))
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
