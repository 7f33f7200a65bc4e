//! What the functions' test files share: a deployment on fresh moto resources with ECS
//! mocked, the template's tunables, and the EventBridge tick's event.
#![allow(dead_code)]

use std::sync::Arc;

use aws::testing::{MockEcs, mock_ecs_instance};
use functions_common::{Deployment, Tunables};
use jobs::ports::{Clock, SystemClock};
use serde_json::{Value, json};

pub const INSTANCE: &str = "i-0abcdef1234567890";
pub const RUNNER_TASK: &str =
    "arn:aws:ecs:us-east-1:123456789012:task/gpu-cluster/5f2c9a7e1b3d4c6a8e0f2b4d6c8a0e1f";

/// The template's defaults for the tunables.
pub fn template_env(name: &str) -> Option<String> {
    let value = match name {
        "SERVERLESS_COMFYUI_MAX_WORKERS" => "2",
        "SERVERLESS_COMFYUI_MIN_WARM_WORKERS" => "0",
        "SERVERLESS_COMFYUI_QUEUE_TIMEOUT_SECONDS" => "3600",
        "SERVERLESS_COMFYUI_MAX_ATTEMPTS" => "3",
        "SERVERLESS_COMFYUI_RETENTION_DAYS" => "7",
        "SERVERLESS_COMFYUI_IDEMPOTENCY_TTL_HOURS" => "24",
        "SERVERLESS_COMFYUI_UPLOAD_TTL_MINUTES" => "60",
        "SERVERLESS_COMFYUI_ALLOWED_ORIGINS" => "https://comfy.example.com",
        // The template parameter GpuPricePerHour defaults to 0 (no estimate).
        "SERVERLESS_COMFYUI_GPU_PRICE_PER_HOUR" => "0",
        // Not set by the template (off); only local testing turns it on.
        "SERVERLESS_COMFYUI_WEBHOOKS_ALLOW_PRIVATE" => "false",
        _ => return None,
    };
    Some(value.to_string())
}

/// A deployment on fresh moto resources, with ECS mocked.
pub async fn deployment() -> (Deployment, MockEcs) {
    deployment_with(5, Arc::new(SystemClock)).await
}

/// [`deployment`] with its own redrive count (receives before a message goes to the
/// dead-letter queue) and clock.
pub async fn deployment_with(
    max_receive_count: u32,
    clock: Arc<dyn Clock>,
) -> (Deployment, MockEcs) {
    let ecs = mock_ecs_instance(INSTANCE, &[RUNNER_TASK]);
    let mut clients = aws::testing::clients().await;
    clients.ecs = ecs.client.clone();
    let deployment = Deployment {
        aws: aws::testing::fresh_resources(max_receive_count).await,
        clients,
        tunables: Tunables::from_lookup(template_env).unwrap(),
        cursor_key: vec![7; 32],
        clock,
        webhooks: Default::default(),
    };
    (deployment, ecs)
}

/// The EventBridge rule's every-minute event: the tick.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-06T23:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/stack-DispatchFunctionTick-1ABC"],
        "detail": {}
    })
}

/// Serves `router` on a loopback port; returns its base URL.
pub async fn front(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// An API key of `tenant`, stored as `keys create` stores it.
pub async fn api_key(deployment: &Deployment, tenant: &str) -> String {
    let minted = jobs::auth::mint_key(tenant, chrono::Utc::now()).unwrap();
    deployment
        .ports()
        .store
        .put_api_key(&minted.record)
        .await
        .unwrap();
    minted.secret
}

pub fn invert() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workflows/invert.json"
    );
    json!({ "workflow": serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap() })
}
