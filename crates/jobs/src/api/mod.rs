//! The Comfy API v2 router (axum), and its OpenAPI document.
//!
//! One router serves `dev` directly and, on AWS, sits behind `lambda_http` in the
//! `submit` and `status` functions. Handlers are thin: authenticate, call a service,
//! shape the response. Every error, including the ones axum produces itself (unknown
//! route, wrong method, oversized body), leaves as the v2 envelope; the
//! [`envelope_errors`] middleware guarantees it.
//!
//! Routes are registered through `utoipa_axum`'s `OpenApiRouter`: a route and its
//! OpenAPI entry are one declaration, so `/api/v2/openapi.json` cannot drift from what
//! the router serves. Request schemas need JSON Schema that utoipa's derive cannot
//! spell; they are written next to their validators and set in [`served_document`].
//! `tests/schemathesis/run.sh` fuzzes a live `dev` against the document.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::assets::{
    AssetMeta, AssetService, AssetView, CreateUploadRequest, FromHashRequest, MAX_TAGS, UploadView,
    validate_meta,
};
use crate::auth::{Authenticator, Credentials, Tenant};
use crate::ports::QueueName;

mod content;
pub mod cross_site;
mod error;

use crate::service::JobService;
use crate::validate::validate_label_key;
use crate::views::{
    ErrorEnvelope, JobListView, JobView, SubmitRequest, WorkflowView, submit_request_schemas,
};
pub use axum::Router;
pub use content::{apply_serving_headers, blob_response};
pub use error::{ApiError, status_of};

/// What the server tells about itself in health.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    /// How ComfyUI is reached: `{"mode": "real"|"simulated"|"none", ...}`.
    pub comfyui: Value,
}

pub struct ApiState {
    pub jobs: Arc<JobService>,
    pub assets: Arc<AssetService>,
    /// The fleet as health shows it: read from the store, no launcher needed.
    pub fleet: crate::dispatch::FleetView,
    pub auth: Arc<dyn Authenticator>,
    pub info: ServerInfo,
    pub events: crate::events::EventsConfig,
    pub streams: Arc<crate::events::StreamLimiter>,
    /// Which web origins may call (see [`crate::cross_site`]).
    pub cross_site: Arc<crate::cross_site::CrossSitePolicy>,
}

/// The largest JSON request body accepted (API Gateway's limit is 10 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

pub const DEFAULT_LIST_LIMIT: usize = 20;
pub const MAX_LIST_LIMIT: usize = 100;
/// `metadata[k]=v` filters one list request may carry: each is a join for the store.
pub const MAX_LIST_FILTERS: usize = 16;

/// Response descriptions shared by the routes that can give them.
const UNAUTHORIZED: &str = "`unauthorized`: no API key, or an unknown or revoked one";
const FORBIDDEN: &str = "`origin_not_allowed`: sent by a web page of another site; or \
                         `host_not_allowed`: without keys, a request not addressed to a loopback name";
const ORIGIN_NOT_ALLOWED: &str = "`origin_not_allowed`: sent by a web page of another site";
const UNAVAILABLE: &str = "`unavailable`: storage failed; retry after Retry-After";
const UNSUPPORTED_JSON: &str = "`unsupported_media_type`: send `Content-Type: application/json`";
const BAD_PATH: &str = "`invalid_request`: a path segment that is not UTF-8";
const CONTENT_SERVED: &str = "The content: as its own type when that is a passive image, audio, \
                              video or text/plain type, otherwise as `application/octet-stream`, an attachment";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "serverless-comfyui: Comfy API v2",
        description = "Comfy API v2 (Comfy Cloud's contract) plus additive extensions under \
                       `/api/v2/x-serverless-comfyui/`. Every error is the envelope \
                       `{\"error\": {code, message, details}}`. Integers are JSON numbers \
                       without a fraction (`2`, not `2.0`); length limits count bytes of UTF-8 \
                       (the schemas' `maxLength` counts characters, so it says the same for ASCII)."
    ),
    tags(
        (name = "jobs", description = "One execution of a workflow: durable, pollable, cancelable."),
        (name = "assets", description = "UUID-identified records over content-addressed blobs."),
        (name = "x-serverless-comfyui", description = "Our extensions."),
        (name = "health", description = "Liveness and capacity."),
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <api key>`. A `dev` on loopback without keys \
                         needs none: its document then says `security: [{}]`.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearerAuth",
            Vec::<String>::new(),
        )]);
    }
}

/// Which routes a router serves. On AWS the `submit` function serves the writes and
/// the `status` function the reads (ARCHITECTURE §3), each with only the permissions
/// its routes need; `dev` serves both. API Gateway routes by method and path, so a
/// path with a read and a write (`/api/v2/jobs`: list and submit) is split by method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything that only reads: jobs, lists, workflows, events, assets and their
    /// content, health and the OpenAPI document.
    Reads,
    /// Everything that writes: submit, cancel, uploads, from-hash, asset deletion.
    Writes,
    /// Both (`dev`).
    All,
}

fn read_routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi_document))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(get_workflow))
        .routes(routes!(job_events))
        .routes(routes!(head_by_hash))
        .routes(routes!(get_asset))
        .routes(routes!(get_asset_content))
}

fn write_routes(max_body_bytes: usize, max_upload: usize) -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(submit_job))
        .routes(routes!(cancel_job))
        .routes(routes!(from_hash))
        .routes(routes!(delete_asset))
        .routes(routes!(create_upload))
        .routes(routes!(complete_upload))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Multipart uploads stream to storage, so they may be much larger.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(upload_asset))
                .layer(DefaultBodyLimit::max(max_upload)),
        )
}

/// The v2 router over the given state serving every route, and its OpenAPI document
/// (as served when keys are required).
pub fn router_and_openapi(state: Arc<ApiState>, max_body_bytes: usize) -> (Router, Value) {
    router_for(state, max_body_bytes, Routes::All)
}

/// A router serving `routes`, and the OpenAPI document, which always describes every
/// route: clients see one API however it is split behind the gateway.
pub fn router_for(state: Arc<ApiState>, max_body_bytes: usize, routes: Routes) -> (Router, Value) {
    let max_upload = usize::try_from(state.assets.config().max_upload_bytes).unwrap_or(usize::MAX);
    let every_route = || {
        OpenApiRouter::with_openapi(ApiDoc::openapi())
            .merge(read_routes())
            .merge(write_routes(max_body_bytes, max_upload))
            .split_for_parts()
    };
    let (api, openapi) = match routes {
        Routes::All => every_route(),
        Routes::Reads => (read_routes().split_for_parts().0, every_route().1),
        Routes::Writes => (
            write_routes(max_body_bytes, max_upload).split_for_parts().0,
            every_route().1,
        ),
    };
    // Built once and shared (an `Arc`), so cloning the router per connection copies no
    // document.
    let document = served_document(&openapi, state.assets.config());
    let router = api
        .layer(axum::Extension(Arc::new(document.clone())))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(envelope_errors))
        // Outermost: a disallowed web origin is refused before anything else runs.
        .layer(middleware::from_fn_with_state(
            state.cross_site.clone(),
            crate::cross_site::guard,
        ))
        .with_state(state);
    (router, document)
}

/// The document utoipa generates from the route declarations, with the request
/// schemas its derive cannot spell (see [`submit_request_schemas`] and
/// [`crate::assets::request_schemas`]).
fn served_document(
    openapi: &utoipa::openapi::OpenApi,
    assets: &crate::assets::AssetsConfig,
) -> Value {
    let mut document = serde_json::to_value(openapi).unwrap_or_default();
    let schemas = &mut document["components"]["schemas"];
    for (name, schema) in submit_request_schemas()
        .into_iter()
        .chain(crate::assets::request_schemas(assets))
    {
        schemas[name] = schema;
    }
    // `metadata[key]=value` filters: keys as in labels, one filter per key.
    if let Some(parameters) = document
        .pointer_mut("/paths/~1api~1v2~1jobs/get/parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            if parameter["name"] == "metadata" {
                parameter["schema"] = json!({
                    "type": "object",
                    "maxProperties": crate::api::MAX_LIST_FILTERS,
                    "propertyNames": {
                        "minLength": 1,
                        "maxLength": crate::validate::MAX_METADATA_KEY_BYTES,
                        "pattern": crate::views::NO_CONTROL_PATTERN,
                    },
                    "additionalProperties": {"type": "string"},
                });
            }
        }
    }
    document
}

/// The v2 router over the given state; anything else is a 404 envelope.
pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    router_and_openapi(state, max_body_bytes)
        .0
        .fallback(not_found)
}

/// The 404 envelope for a path no route serves.
pub async fn not_found() -> ApiError {
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
pub async fn envelope_errors(request: Request, next: Next) -> Response {
    let is_head = request.method() == axum::http::Method::HEAD;
    let response = next.run(request).await;
    let status = response.status();
    if is_head || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || status == StatusCode::RANGE_NOT_SATISFIABLE {
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

/// What the request's headers say about its caller.
fn credentials(headers: &HeaderMap) -> Credentials {
    Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().ok().map(str::to_owned)),
        addressed_to_loopback: cross_site::host_is_loopback(headers),
    }
}

impl axum::extract::FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(state
            .auth
            .authenticate(&credentials(&parts.headers))
            .await?)
    }
}

/// The raw body, with body-limit rejections mapped to 413 and others to 400. A large
/// body is read only with a permit ([`crate::json_budget::large_body_gate`]), held
/// while the handler runs: the permit is the second field.
struct RawBody(Bytes, Option<tokio::sync::OwnedSemaphorePermit>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use crate::json_budget::{LARGE_BODY_QUEUE_WAIT, LARGE_BODY_READ_TIMEOUT};
        // The content type is checked on the headers, and refused before a byte of the
        // body is read unless the body is empty: a cancel `POST` that carries nothing
        // needs no type.
        let declared_json = crate::cross_site::require_json(req.headers(), false);
        let declared = axum::body::HttpBody::size_hint(req.body()).exact();
        if let (Err(refusal), Some(1..)) = (&declared_json, declared) {
            return Err(refusal.clone());
        }
        let permit = crate::json_budget::large_body_gate(declared, LARGE_BODY_QUEUE_WAIT).await?;
        let read = Bytes::from_request(req, state);
        let read = match &permit {
            None => read.await,
            Some(_) => tokio::time::timeout(LARGE_BODY_READ_TIMEOUT, read)
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request body arrived too slowly",
                    )
                })?,
        };
        if let (Ok(bytes), Err(refusal)) = (&read, declared_json)
            && !bytes.is_empty()
        {
            return Err(refusal);
        }
        match read {
            Ok(bytes) => Ok(RawBody(bytes, permit)),
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

/// A strictly parsed JSON body of a declared type.
fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::json_budget::check_value_count(bytes)?;
    let value = crate::validate::parse_json_strict(bytes)?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(
            "invalid_request",
            format!("the request body does not match: {e}"),
        )
    })
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, Body::from(bytes)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

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
        (status = 422, description = "`invalid_workflow`, `workflow_format_ui`, `missing_asset`, `metadata_invalid`, `invalid_extra_data`, `idempotency_key_reuse`, `reserved_field`, `unknown_field`, `invalid_request` (not an object)", body = ErrorEnvelope),
        (status = 429, description = "`quota_active_jobs` or `quota_submit_rate`: the tenant's quota; nothing was recorded, retry after Retry-After with the same Idempotency-Key", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn submit_job(
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
async fn job_events(
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
    Ok(json_response(
        StatusCode::OK,
        &JobListView {
            jobs: page.jobs,
            next_cursor: page.next_cursor,
        },
    ))
}

fn asset_response(
    state: &ApiState,
    asset: &crate::model::Asset,
    created_new: bool,
) -> Result<Response, ApiError> {
    let view = state.assets.view(asset, Some(created_new))?;
    let status = if created_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view))
}

/// The multipart form of `POST /api/v2/assets`, for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AssetUploadForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    content_type: String,
    file_path: String,
    expected_hash: Option<String>,
    tags: Option<Vec<String>>,
}

/// `POST /api/v2/assets`: streamed, hashed while it streams, deduplicated per tenant.
#[utoipa::path(
    post, path = "/api/v2/assets", tag = "assets",
    request_body(content = AssetUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "New blob stored; asset minted", body = AssetView),
        (status = 200, description = "Bytes deduplicated to an existing blob; asset minted over it", body = AssetView),
        (status = 400, description = "`invalid_request` (a malformed or interrupted form), `invalid_hash`", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 409, description = "`hash_mismatch`: nothing minted", body = ErrorEnvelope),
        (status = 413, description = "`payload_too_large`: the file (use the upload extension) or a text part; `quota_storage`: the tenant's storage quota", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`: send `multipart/form-data`", body = ErrorEnvelope),
        (status = 422, description = "`invalid_file_path`, `invalid_content_type`, `invalid_tags`, `invalid_request` (a missing or repeated part)", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn upload_asset(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    request: Request,
) -> Result<Response, ApiError> {
    crate::cross_site::require_multipart(request.headers())?;
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            ApiError::invalid_request(
                "send multipart/form-data with file, content_type and file_path",
            )
        })?;
    // multer reads its input for as long as the input is ready, so a fast client would
    // be buffered whole in memory. Pausing between chunks keeps it to one chunk.
    let body = PausingStream::new(request.into_body().into_data_stream());
    // Text parts are read whole, so each has a small limit that multer enforces as the
    // part streams in; only `file` may be large (storage streams it).
    let limits = UPLOAD_TEXT_FIELDS
        .iter()
        .fold(multer::SizeLimit::new(), |limits, name| {
            limits.for_field(*name, MAX_TEXT_FIELD_BYTES)
        });
    let mut multipart = multer::Multipart::with_constraints(
        body,
        boundary,
        multer::Constraints::new().size_limit(limits),
    );
    let multipart_error = |e: multer::Error| match e {
        multer::Error::FieldSizeExceeded { limit, field_name } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the form field `{}` is longer than {limit} bytes",
                field_name.as_deref().unwrap_or("?")
            ),
        )
        .with_details(json!({ "field": field_name, "max_bytes": limit })),
        e => ApiError::invalid_request(format!("malformed multipart body: {e}")),
    };
    let mut meta = AssetMeta::default();
    let mut staged = None;
    let mut seen = std::collections::HashSet::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        // Unknown parts are ignored however often they come; a known one but `tags` once.
        let single =
            name == "file" || (name != "tags" && UPLOAD_TEXT_FIELDS.contains(&name.as_str()));
        if single && !seen.insert(name.clone()) {
            discard(&state, staged.take()).await;
            return Err(ApiError::unprocessable(
                "invalid_request",
                format!("the form field `{name}` is given twice"),
            ));
        }
        match name.as_str() {
            "file" => {
                // The field borrows the form, and storage wants an owned stream: hand
                // the chunks over through a small channel while both run here.
                let (mut chunks, received) = futures::channel::mpsc::channel(4);
                let pump = async move {
                    let mut field = field;
                    loop {
                        let next = match field.chunk().await {
                            Ok(Some(chunk)) => Ok(chunk),
                            Ok(None) => break,
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        };
                        let failed = next.is_err();
                        // A send fails when storage stopped reading (too large): stop too.
                        if chunks.send(next).await.is_err() || failed {
                            break;
                        }
                    }
                };
                let max = state.assets.config().max_upload_bytes;
                let (result, ()) = tokio::join!(state.assets.stage(Box::pin(received), max), pump);
                staged = Some(result?);
            }
            "content_type" | "file_path" | "expected_hash" | "tags" => {
                // Refused at the first extra tag, as `validate_meta` would later.
                if name == "tags" && meta.tags.len() >= MAX_TAGS {
                    discard(&state, staged.take()).await;
                    return Err(ApiError::unprocessable(
                        "invalid_tags",
                        format!("tags: at most {MAX_TAGS}"),
                    ));
                }
                let text = match field.text().await {
                    Ok(text) => text,
                    Err(e) => {
                        discard(&state, staged.take()).await;
                        return Err(multipart_error(e));
                    }
                };
                match name.as_str() {
                    "content_type" => meta.content_type = text,
                    "file_path" => meta.file_path = text,
                    "expected_hash" => meta.expected_hash = Some(text),
                    _ => meta.tags.push(text),
                }
            }
            // Unknown parts are ignored, as v2 leaves room for additive fields.
            _ => {}
        }
    }
    let Some(staged) = staged else {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "the form has no `file` part",
        ));
    };
    for (field, present) in [
        ("content_type", !meta.content_type.is_empty()),
        ("file_path", !meta.file_path.is_empty()),
    ] {
        if !present {
            discard(&state, Some(staged)).await;
            return Err(ApiError::unprocessable(
                "invalid_request",
                format!("the form has no `{field}` part"),
            ));
        }
    }
    if let Err(e) = validate_meta(&meta) {
        discard(&state, Some(staged)).await;
        return Err(e.into());
    }
    let (asset, created_new) = state.assets.mint_staged(&tenant.0, staged, meta).await?;
    asset_response(&state, &asset, created_new)
}

/// The text parts of `POST /api/v2/assets`.
const UPLOAD_TEXT_FIELDS: [&str; 4] = ["content_type", "file_path", "expected_hash", "tags"];

/// The most bytes one text part may hold: far above any valid value (a media type is
/// at most 255 bytes, a path 1024), far below what would cost memory.
pub const MAX_TEXT_FIELD_BYTES: u64 = 8 * 1024;

/// A stream that returns `Pending` once after every chunk (waking itself at once), so a
/// reader that drains whatever is ready takes one chunk at a time.
struct PausingStream<S> {
    inner: S,
    paused: bool,
}

impl<S> PausingStream<S> {
    fn new(inner: S) -> Self {
        PausingStream {
            inner,
            paused: false,
        }
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for PausingStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if self.paused {
            self.paused = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if matches!(next, std::task::Poll::Ready(Some(_))) {
            self.paused = true;
        }
        next
    }
}

async fn discard(state: &ApiState, staged: Option<crate::assets::Staged>) {
    if let Some(staged) = staged {
        let _ = state.jobs.ports().blobs.delete(&staged.key).await;
    }
}

/// `POST /api/v2/assets/from-hash`
#[utoipa::path(
    post, path = "/api/v2/assets/from-hash", tag = "assets",
    request_body = FromHashRequest,
    responses(
        (status = 201, description = "Asset minted over the existing blob", body = AssetView),
        (status = 200, description = "An identical reference already existed", body = AssetView),
        (status = 400, description = "`invalid_request` (not JSON), `invalid_hash`", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`blob_not_found`: no blob with this hash that you may mint from", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: a large body arrived too slowly", body = ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = ErrorEnvelope),
        (status = 415, description = UNSUPPORTED_JSON, body = ErrorEnvelope),
        (status = 422, description = "`invalid_file_path`, `invalid_content_type`, `invalid_tags`, `invalid_request` (the body does not match)", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn from_hash(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    RawBody(body, _permit): RawBody,
) -> Result<Response, ApiError> {
    let request: FromHashRequest = parse_body(&body)?;
    let (asset, created) = state.assets.from_hash(&tenant.0, request).await?;
    let view = state.assets.view(&asset, None)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view))
}

/// `HEAD /api/v2/assets/by-hash/{hash}`
#[utoipa::path(
    head, path = "/api/v2/assets/by-hash/{hash}", tag = "assets",
    params(("hash" = String, Path, description = "blake3:<hex>")),
    responses(
        (status = 200, description = "You may mint from this blob"),
        (status = 400, description = BAD_PATH),
        (status = 401, description = UNAUTHORIZED),
        (status = 403, description = FORBIDDEN),
        (status = 404, description = "No blob you may mint from (or not a hash)"),
        (status = 503, description = UNAVAILABLE),
    )
)]
async fn head_by_hash(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(hash): Path<String>,
) -> Result<StatusCode, ApiError> {
    Ok(if state.assets.has_blob(&tenant.0, &hash).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// `GET /api/v2/assets/{id}`
#[utoipa::path(
    get, path = "/api/v2/assets/{id}", tag = "assets",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The asset, with a fresh signed url", body = AssetView),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn get_asset(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let asset = state.assets.load(&tenant.0, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &state.assets.view(&asset, None)?,
    ))
}

/// `DELETE /api/v2/assets/{id}`
#[utoipa::path(
    delete, path = "/api/v2/assets/{id}", tag = "assets",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn delete_asset(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.assets.delete(&tenant.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v2/assets/{id}/content`
#[utoipa::path(
    get, path = "/api/v2/assets/{id}/content", tag = "assets",
    params(("id" = String, Path), ("Range" = Option<String>, Header, description = "bytes=first-last")),
    responses(
        (status = 200, description = CONTENT_SERVED, content_type = "*/*"),
        (status = 206, description = "Partial content, as for 200", content_type = "*/*"),
        (status = 302, description = "Redirect to a fresh signed URL (object storage)"),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 416, description = "Range not satisfiable: `Content-Range: bytes */<size>`, no body"),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn get_asset_content(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asset = state.assets.load(&tenant.0, &id).await?;
    let blobs = state.jobs.ports().blobs.as_ref();
    if blobs.serves_content_directly() {
        let filename = asset.file_path.as_deref().unwrap_or(&asset.blob_key);
        blob_response(
            blobs,
            &asset.blob_key,
            &headers,
            &asset.content_type,
            filename,
        )
        .await
    } else {
        let (url, _) = state
            .assets
            .signed_get(&asset.blob_key, &asset.content_type)?;
        Ok((StatusCode::FOUND, [(header::LOCATION, url)]).into_response())
    }
}

/// `POST /api/v2/x-serverless-comfyui/uploads`: start a large-file upload.
#[utoipa::path(
    post, path = "/api/v2/x-serverless-comfyui/uploads", tag = "x-serverless-comfyui",
    request_body = CreateUploadRequest,
    responses(
        (status = 201, description = "PUT the bytes to upload_url, then POST complete_url", body = UploadView),
        (status = 400, description = "`invalid_request` (not JSON), `invalid_hash`", body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: a large body arrived too slowly", body = ErrorEnvelope),
        (status = 413, description = "`payload_too_large`; `quota_storage`: the upload cannot fit the tenant's storage quota", body = ErrorEnvelope),
        (status = 415, description = UNSUPPORTED_JSON, body = ErrorEnvelope),
        (status = 422, description = "`invalid_file_path`, `invalid_content_type`, `invalid_tags`, `invalid_size`, `invalid_request` (the body does not match)", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn create_upload(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    RawBody(body, _permit): RawBody,
) -> Result<Response, ApiError> {
    let request: CreateUploadRequest = parse_body(&body)?;
    let upload = state.assets.create_upload(&tenant.0, request).await?;
    Ok(json_response(StatusCode::CREATED, &upload))
}

/// `POST /api/v2/x-serverless-comfyui/uploads/{id}/complete`: hash, dedup, mint.
#[utoipa::path(
    post, path = "/api/v2/x-serverless-comfyui/uploads/{id}/complete", tag = "x-serverless-comfyui",
    params(("id" = String, Path)),
    responses(
        (status = 201, description = "New blob; asset minted", body = AssetView),
        (status = 200, description = "Deduplicated; asset minted", body = AssetView),
        (status = 400, description = BAD_PATH, body = ErrorEnvelope),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 409, description = "`hash_mismatch` or `upload_incomplete`", body = ErrorEnvelope),
        (status = 410, description = "`upload_expired`", body = ErrorEnvelope),
        (status = 413, description = "`quota_storage`: the tenant's storage quota", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
async fn complete_upload(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (asset, created_new) = state.assets.complete_upload(&tenant.0, &id).await?;
    asset_response(&state, &asset, created_new)
}

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
async fn openapi_document(
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
async fn health(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
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
