//! The `webhooks` Lambda: the jobs table's DynamoDB stream (events fanned out to
//! deliveries) and the webhook delivery queue (signed requests sent, retried with
//! delayed messages), one handler told apart by the records' source.
//!
//! Only wiring: the handler is `functions_common::webhooks::WebhooksHandler`, tested
//! there.

use std::sync::Arc;

use functions_common::webhooks::WebhooksHandler;
use functions_common::{Deployment, Function, init_tracing};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Reads the environment (the delivery queue is required) and builds the clients:
    // no network call before the first event.
    let deployment = Deployment::from_env(Function::Webhooks).await?;
    let handler = Arc::new(
        WebhooksHandler::new(&deployment)
            .ok_or_else(|| anyhow::anyhow!("no webhook delivery queue configured"))?,
    );
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
