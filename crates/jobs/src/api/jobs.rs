//! The job routes: submit, get, workflow, cancel, events (Server-Sent Events) and list.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::extract::{RawBody, json_response};
use super::{
    ApiError, ApiState, BAD_PATH, DEFAULT_LIST_LIMIT, FORBIDDEN, MAX_LIST_FILTERS, MAX_LIST_LIMIT,
    UNAUTHORIZED, UNAVAILABLE, UNSUPPORTED_JSON,
};
use crate::auth::Tenant;
use crate::validate::validate_label_key;
use crate::views::{ErrorEnvelope, JobListView, JobView, SubmitRequest, WorkflowView};

/// `POST /api/v2/jobs`
#[utoipa::path(
    post, path = "/api/v2/jobs", tag = "jobs",
    request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "Stripe semantics: 1 to 255 visible ASCII characters (a UUID is recommended); keys last 24 h")),
    responses(
        (status = 201, description = "Job created and queued (or replayed: `Idempotency-Replayed: true`)", body = JobView),
        (status = 400, description = "`invalid_request`: an empty body, not UTF-8, not JSON, a duplicate key, or a malformed `Idempotency-Key`", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: a large body arrived too slowly", body = ErrorEnvelope),
        (status = 409, description = "`idempotency_conflict`: the same key is in flight; retry after Retry-After", body = ErrorEnvelope),
        (status = 413, description = "`payload_too_large`: too many bytes, or more than a million JSON values", body = ErrorEnvelope),
        (status = 415, description = UNSUPPORTED_JSON, body = ErrorEnvelope),
        (status = 422, description = "`invalid_workflow` (a malformed graph: `details.node_errors` lists `{field, reason, message}` per node; or a graph the node catalogue shows ComfyUI would refuse: `details` is ComfyUI's own 400 body, `error` and `node_errors` as `{errors, dependent_outputs, class_type}` per node, plus `catalogue`, its hash), `workflow_format_ui`, `missing_asset`, `metadata_invalid`, `invalid_extra_data`, `idempotency_key_reuse`, `reserved_field`, `unknown_field`, `invalid_request` (not an object)", body = ErrorEnvelope),
        (status = 429, description = "`quota_active_jobs` or `quota_submit_rate`: the tenant's quota; nothing was recorded, retry after Retry-After with the same Idempotency-Key", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn submit_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    headers: HeaderMap,
    RawBody(body, _permit): RawBody,
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

/// `GET /api/v2/jobs/{id}`
#[utoipa::path(
    get, path = "/api/v2/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job_<ULID>")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn get_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.get(&tenant.0, &id).await?,
    ))
}

/// `GET /api/v2/jobs/{id}/workflow`
#[utoipa::path(
    get, path = "/api/v2/jobs/{id}/workflow", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The workflow behind the job", body = WorkflowView),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn get_workflow(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.workflow(&tenant.0, &id).await?,
    ))
}

/// `POST /api/v2/jobs/{id}/cancel`
#[utoipa::path(
    post, path = "/api/v2/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The job as it now is: canceled, canceling, or already terminal", body = JobView),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn cancel_job(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.jobs.cancel(&tenant.0, &id).await?,
    ))
}

/// `GET /api/v2/jobs/{id}/events`: Server-Sent Events, bounded (see [`crate::events`]).
#[utoipa::path(
    get, path = "/api/v2/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "SSE: `status`, `progress`, `output` and `log` events; ends after the terminal status or after about 20 s (reconnect)", content_type = "text/event-stream"),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 429, description = "`too_many_streams`: too many open streams for the tenant", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn job_events(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let events = crate::events::job_events(
        state.jobs.clone(),
        state.streams.clone(),
        state.events.clone(),
        tenant.0,
        id,
    )
    .await?;
    let frames = futures::StreamExt::map(events, |event| {
        let frame = Event::default()
            .event(event.name())
            .json_data(event.data())
            .unwrap_or_else(|_| Event::default().event(event.name()).data("{}"));
        Ok::<_, std::convert::Infallible>(frame)
    });
    Ok(Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
        .into_response())
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
            if metadata.len() == MAX_LIST_FILTERS {
                return Err(bad_filter(format!(
                    "at most {MAX_LIST_FILTERS} metadata filters may be given"
                )));
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

/// `GET /api/v2/jobs`
#[utoipa::path(
    get, path = "/api/v2/jobs", tag = "jobs",
    params(
        // Its schema is set in `served_document`: keys have rules utoipa cannot spell.
        ("metadata" = Option<Object>, Query, style = DeepObject, explode,
            description = "Filters `metadata[key]=value`: the job's label `key` equals the value; one per key"),
        ("limit" = Option<u8>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page of the same query; anything else is 400 `invalid_cursor`"),
    ),
    responses(
        (status = 200, description = "A page of the tenant's jobs, newest first", body = JobListView),
        (status = 400, description = "`invalid_request` (an unknown parameter, a bad `limit`), `invalid_cursor`, `invalid_metadata_filter`", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn list_jobs(
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
    Ok(json_response(
        StatusCode::OK,
        &JobListView {
            jobs: page.jobs,
            next_cursor: page.next_cursor,
        },
    ))
}
