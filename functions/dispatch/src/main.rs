//! The `dispatch` Lambda: the SQS wake batch, the EventBridge tick, Spot notices and
//! Auto Scaling launch failures, one handler told apart by the event's shape.
//!
//! Only wiring: the handler is `functions_common::dispatch::DispatchHandler`, tested
//! there.

use std::sync::Arc;

use functions_common::dispatch::DispatchHandler;
use functions_common::{Deployment, Function, init_tracing};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Reads the environment and builds the clients: no network call before the
    // first event.
    let deployment = Deployment::from_env(Function::Dispatch).await?;
    let handler = Arc::new(DispatchHandler::new(&deployment));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move {
            handler
                .handle(event.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
