//! The Comfy API v2 router (axum).
//!
//! One router serves `dev` directly and, on AWS, sits behind `lambda_http` in the
//! `submit` and `status` functions. Handlers are thin: authenticate, call a service,
//! shape the response. Every error, including the ones axum produces itself (unknown
//! route, wrong method, oversized body), leaves as the v2 envelope; the
//! [`envelope_errors`] middleware guarantees it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::{Authenticator, Tenant};
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::ports::QueueName;
use crate::service::JobService;
use crate::validate::validate_label_key;

/// What the server tells about itself in health.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    /// How ComfyUI is reached: `{"mode": "real"|"simulated"|"none", ...}`.
    pub comfyui: Value,
}

pub struct ApiState {
    pub jobs: Arc<JobService>,
    pub dispatcher: Arc<Dispatcher>,
    pub auth: Arc<dyn Authenticator>,
    pub info: ServerInfo,
}

/// The largest request body accepted (API Gateway's limit is 10 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

pub const DEFAULT_LIST_LIMIT: usize = 20;
pub const MAX_LIST_LIMIT: usize = 100;

/// The v2 router over the given state.
pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v2/health", get(health))
        .route("/api/v2/jobs", post(submit_job).get(list_jobs))
        .route("/api/v2/jobs/{id}", get(get_job))
        .route("/api/v2/jobs/{id}/workflow", get(get_workflow))
        .route("/api/v2/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v2/jobs/{id}/events", get(job_events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(envelope_errors))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Rewrites any error response that is not already JSON into the v2 envelope, so
/// rejections produced inside axum (body limits, extractors) look like ours.
async fn envelope_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not accept that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        s if s.is_client_error() => ("invalid_request", "the request could not be understood"),
        _ => ("internal", "internal error"),
    };
    ApiError::new(status, code, message).into_response()
}

/// The raw body, with body-limit rejections mapped to 413 and others to 400.
struct RawBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large; upload large inputs as assets and reference them",
                ))
            }
            Err(rejection) => Err(ApiError::invalid_request(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, Body::from(bytes)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn submit_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid_request("Idempotency-Key must be visible ASCII"))?,
        ),
    };
    let submitted = state.jobs.submit(&tenant.0, &body, key).await?;
    let mut response = json_response(StatusCode::CREATED, &submitted.job);
    if submitted.replayed {
        response
            .headers_mut()
            .insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn get_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.get(&tenant.0, &id).await?,
    ))
}

async fn get_workflow(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.workflow(&tenant.0, &id).await?,
    ))
}

async fn cancel_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.cancel(&tenant.0, &id).await?,
    ))
}

/// Live events arrive with the runner. Until then the route says so; comfy-sdk treats
/// a 501 from it as "no SSE on this surface" and polls.
async fn job_events(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.jobs.load(&tenant.0, &id).await?;
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "live events are not available on this server yet; poll the job instead",
    ))
}

/// A parsed `GET /api/v2/jobs` query.
struct ListParams {
    metadata: Vec<(String, String)>,
    limit: usize,
    cursor: Option<String>,
}

/// Parses `metadata[k]=v&limit=&cursor=`.
fn parse_list_query(raw: Option<&str>) -> Result<ListParams, ApiError> {
    let mut metadata = Vec::new();
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut cursor = None;
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            let bad_filter = |message: String| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_metadata_filter", message)
            };
            validate_label_key(key).map_err(bad_filter)?;
            if metadata.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(bad_filter(format!("metadata[{key}] is given twice")));
            }
            metadata.push((key.to_string(), value.into_owned()));
        } else if name == "limit" {
            limit = value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "limit must be an integer from 1 to {MAX_LIST_LIMIT}"
                    ))
                })?;
        } else if name == "cursor" {
            cursor = Some(value.into_owned());
        } else {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter `{name}`; use metadata[key]=value, limit and cursor"
            )));
        }
    }
    metadata.sort();
    Ok(ListParams {
        metadata,
        limit,
        cursor,
    })
}

async fn list_jobs(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_list_query(query.as_deref())?;
    let page = state
        .jobs
        .list(
            &tenant.0,
            params.metadata,
            params.limit,
            params.cursor.as_deref(),
        )
        .await?;
    let mut body = json!({ "jobs": page.jobs });
    if let Some(cursor) = page.next_cursor {
        body["next_cursor"] = Value::String(cursor);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /api/v2/health`: no authentication, no tenant data.
async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let ports = state.jobs.ports();
    let store_ok = ports.store.ping().await.is_ok();
    let depth = ports.queue.depth(QueueName::Work).await.ok();
    let dead = ports.queue.depth(QueueName::WorkDeadLetter).await.ok();
    let fleet = state.dispatcher.summary().await.ok();
    let healthy = store_ok && depth.is_some();
    let capacity_error = fleet.as_ref().and_then(|f| f.capacity_error.clone());
    let body = json!({
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
            "desired": f.desired,
            "max": f.max,
        })),
        "launcher": state.dispatcher.launcher().kind(),
        "capacity": {
            "state": if capacity_error.is_some() { "failing" } else { "ok" },
            "message": capacity_error,
        },
        "comfyui": state.info.comfyui,
        "auth": state.auth.describe(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
