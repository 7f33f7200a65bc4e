//! Health and the OpenAPI document: the two routes that need no authentication.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::credentials;
use super::{ApiState, ORIGIN_NOT_ALLOWED};
use crate::ports::QueueName;
use crate::views::ErrorEnvelope;

/// What health shows about ComfyUI: its URLs (which may name internal hosts) only to a
/// caller who authenticates (on a keyless loopback server, everyone does).
fn comfyui_for(state: &ApiState, authenticated: bool) -> Value {
    let mut comfyui = state.info.comfyui.clone();
    if !authenticated && let Some(fields) = comfyui.as_object_mut() {
        fields.remove("urls");
    }
    comfyui
}

/// `GET /api/v2/openapi.json`: no authentication.
#[utoipa::path(
    get, path = "/api/v2/openapi.json", tag = "health", security(()),
    responses(
        (status = 200, description = "This document. Its `security` is what this server asks now: \
                                      `[{}]` (none) while a loopback `dev` has no keys", body = Object),
        (status = 403, description = ORIGIN_NOT_ALLOWED, body = ErrorEnvelope),
    )
)]
pub(super) async fn openapi_document(
    State(state): State<Arc<ApiState>>,
    axum::Extension(document): axum::Extension<Arc<Value>>,
) -> Response {
    let required = state.auth.describe().await["required"]
        .as_bool()
        .unwrap_or(true);
    if required {
        return Json(document.as_ref()).into_response();
    }
    // The keyless default tenant: asking for a key would be untrue.
    let mut document = document.as_ref().clone();
    document["security"] = json!([{}]);
    Json(document).into_response()
}

/// `GET /api/v2/health`: no authentication, no tenant data.
#[utoipa::path(
    get, path = "/api/v2/health", tag = "health", security(()),
    responses(
        (status = 200, description = "Version, store, queue depth, workers, capacity", body = Object),
        (status = 403, description = ORIGIN_NOT_ALLOWED, body = ErrorEnvelope),
        (status = 503, description = "Degraded", body = Object),
    )
)]
pub(super) async fn health(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let ports = state.jobs.ports();
    let store_ok = ports.store.ping().await.is_ok();
    let depth = ports.queue.depth(QueueName::Work).await.ok();
    let dead = ports.queue.depth(QueueName::WorkDeadLetter).await.ok();
    let fleet = state
        .fleet
        .summary(ports.store.as_ref(), ports.clock.as_ref())
        .await
        .ok();
    let healthy = store_ok && depth.is_some();
    let capacity_error = fleet.as_ref().and_then(|f| f.capacity_error.clone());
    let authenticated = state
        .auth
        .authenticate(&credentials(&headers))
        .await
        .is_ok();
    // Job counts and disk use are the operator's business, like ComfyUI's URLs.
    let storage = if authenticated {
        crate::retention::storage_report(ports)
            .await
            .ok()
            .map(|r| json!(r))
    } else {
        None
    };
    let mut body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "version": state.info.version,
        "store": { "kind": ports.store.kind(), "ok": store_ok },
        "queue": {
            "depth": depth.map(|d| d.visible + d.in_flight),
            "visible": depth.map(|d| d.visible),
            "in_flight": depth.map(|d| d.in_flight),
            "dead_letters": dead.map(|d| d.visible + d.in_flight),
        },
        "workers": fleet.as_ref().map(|f| json!({
            "starting": f.starting,
            "idle": f.idle,
            "busy": f.busy,
            "draining": f.draining,
            "refusing": f.refusing,
            "refusals": f.refusals,
            "desired": f.desired,
            "max": f.max,
        })),
        "launcher": state.fleet.launcher_kind,
        "capacity": {
            "state": if capacity_error.is_some() { "failing" } else { "ok" },
            "message": capacity_error,
        },
        "comfyui": comfyui_for(&state, authenticated),
        "auth": state.auth.describe().await,
    });
    if let (Some(storage), Some(fields)) = (storage, body.as_object_mut()) {
        fields.insert("storage".into(), storage);
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
