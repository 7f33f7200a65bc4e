//! The webhook routes (our extension): register, list, delete endpoints, and see
//! delivery attempts. The logic is in [`crate::webhooks::service`].

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::extract::{RawBody, json_response, parse_body};
use super::{ApiError, ApiState, BAD_PATH, FORBIDDEN, UNAUTHORIZED, UNAVAILABLE, UNSUPPORTED_JSON};
use crate::auth::Tenant;
use crate::views::ErrorEnvelope;
use crate::webhooks::service::{
    AttemptList, CreateEndpointRequest, EndpointList, EndpointView, MAX_ATTEMPTS_LISTED,
    WebhookService,
};

const NOT_CONFIGURED: &str = "`webhooks_not_configured`: this deployment has no webhook store";

fn service(state: &ApiState) -> Result<&Arc<WebhookService>, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "webhooks_not_configured",
            "webhooks are not available on this deployment",
        )
    })
}

/// `POST /api/v2/x-serverless-comfyui/webhooks`
#[utoipa::path(
    post, path = "/api/v2/x-serverless-comfyui/webhooks", tag = "x-serverless-comfyui",
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, description = "Registered. `secret` (`whsec_…`) signs every request as Standard Webhooks says; it is shown only now", body = EndpointView),
        (status = 400, description = "`invalid_request`: not JSON", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 409, description = "`too_many_webhooks`: the tenant has the most endpoints allowed", body = ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = ErrorEnvelope),
        (status = 415, description = UNSUPPORTED_JSON, body = ErrorEnvelope),
        (status = 422, description = "`invalid_webhook_url` (not http(s), credentials in it, or not a public address), `invalid_event_type`, `invalid_labels`, `invalid_request` (the body does not match)", body = ErrorEnvelope),
        (status = 501, description = NOT_CONFIGURED, body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn create_webhook(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    RawBody(body, _permit): RawBody,
) -> Result<Response, ApiError> {
    let hooks = service(&state)?;
    let request: CreateEndpointRequest = parse_body(&body)?;
    let created = hooks.create(&tenant.0, request).await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// `GET /api/v2/x-serverless-comfyui/webhooks`
#[utoipa::path(
    get, path = "/api/v2/x-serverless-comfyui/webhooks", tag = "x-serverless-comfyui",
    responses(
        (status = 200, description = "The tenant's endpoints (at most 16), without secrets", body = EndpointList),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 501, description = NOT_CONFIGURED, body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn list_webhooks(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
) -> Result<Response, ApiError> {
    let hooks = service(&state)?;
    Ok(json_response(StatusCode::OK, &hooks.list(&tenant.0).await?))
}

/// `DELETE /api/v2/x-serverless-comfyui/webhooks/{id}`
#[utoipa::path(
    delete, path = "/api/v2/x-serverless-comfyui/webhooks/{id}", tag = "x-serverless-comfyui",
    params(("id" = String, Path, description = "wh_<ULID>")),
    responses(
        (status = 204, description = "Deleted, with its pending deliveries"),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 501, description = NOT_CONFIGURED, body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn delete_webhook(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service(&state)?.delete(&tenant.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v2/x-serverless-comfyui/webhooks/{id}/deliveries`
#[utoipa::path(
    get, path = "/api/v2/x-serverless-comfyui/webhooks/{id}/deliveries", tag = "x-serverless-comfyui",
    params(
        ("id" = String, Path, description = "wh_<ULID>"),
        ("limit" = Option<u8>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
    ),
    responses(
        (status = 200, description = "Delivery attempts, newest first: event, job, status code, latency, next attempt", body = AttemptList),
        (status = 400, description = "`invalid_request` (an unknown parameter, a bad `limit`, a path that is not UTF-8)", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 501, description = NOT_CONFIGURED, body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn webhook_deliveries(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let hooks = service(&state)?;
    let mut limit = super::DEFAULT_LIST_LIMIT;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "limit" {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter `{name}`; use limit"
            )));
        }
        limit = value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ATTEMPTS_LISTED).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "limit must be an integer from 1 to {MAX_ATTEMPTS_LISTED}"
                ))
            })?;
    }
    Ok(json_response(
        StatusCode::OK,
        &hooks.attempts(&tenant.0, &id, limit).await?,
    ))
}
