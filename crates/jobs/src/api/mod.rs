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
//!
//! This module is the only place in `jobs` that speaks HTTP. The services answer with
//! [`crate::error::DomainError`]; [`ApiError`] gives each kind its status. Its parts:
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`ApiState`], the route sets ([`Routes`]), the routers and the document |
//! | `error` | [`ApiError`], the status of each error kind, [`envelope_errors`] |
//! | `extract` | the `Tenant` extractor (headers to credentials), JSON bodies, JSON answers |
//! | `jobs` | the job routes, including events as Server-Sent Events |
//! | `assets` | the asset routes and the large-file upload extension |
//! | `catalogue` | the node catalogue route (our extension) |
//! | `multipart` | `POST /api/v2/assets`: the multipart form pumped to storage |
//! | `content` | serving stored bytes: `Range`, and the content policy's headers |
//! | `health` | health and the OpenAPI document (no authentication) |
//! | `webhooks` | the webhook extension: endpoints and their delivery attempts |
//! | [`cross_site`] | which web origins may call, and the body content-type rules |

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::assets::AssetService;
use crate::auth::Authenticator;
use crate::service::JobService;
use crate::views::submit_request_schemas;

mod assets;
mod catalogue;
mod content;
pub mod cross_site;
mod error;
mod extract;
mod health;
mod jobs;
mod multipart;
mod webhooks;

pub use axum::Router;
pub use content::{ContentDelivery, apply_serving_headers, blob_response};
pub use error::{ApiError, envelope_errors, status_of};
pub use multipart::MAX_TEXT_FIELD_BYTES;

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
    /// How asset content is delivered.
    pub content_delivery: ContentDelivery,
    /// Webhooks, where the deployment has a store for them (else their routes answer
    /// 501).
    pub webhooks: Option<Arc<crate::webhooks::service::WebhookService>>,
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
        .routes(routes!(health::health))
        .routes(routes!(health::openapi_document))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::get_workflow))
        .routes(routes!(jobs::job_events))
        .routes(routes!(assets::head_by_hash))
        .routes(routes!(assets::get_asset))
        .routes(routes!(assets::get_asset_content))
        .routes(routes!(webhooks::list_webhooks))
        .routes(routes!(webhooks::webhook_deliveries))
        .routes(routes!(catalogue::get_catalogue))
}

fn write_routes(max_body_bytes: usize, max_upload: usize) -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(jobs::submit_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(assets::from_hash))
        .routes(routes!(assets::delete_asset))
        .routes(routes!(assets::create_upload))
        .routes(routes!(assets::complete_upload))
        .routes(routes!(webhooks::create_webhook))
        .routes(routes!(webhooks::delete_webhook))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Multipart uploads stream to storage, so they may be much larger.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(multipart::upload_asset))
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
