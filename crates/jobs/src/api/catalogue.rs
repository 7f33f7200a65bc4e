//! `GET /api/v2/x-serverless-comfyui/catalogue` (our extension): the latest node
//! catalogue (a ComfyUI's `/object_info`, [`crate::catalogue`]), so the web app can
//! offer the node classes, their inputs and the installed model files.
//!
//! The catalogue is content-addressed, so its hash is a strong `ETag`: a client that
//! sends it back in `If-None-Match` gets `304` without the megabytes (and the server
//! reads only the small pointer).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState, FORBIDDEN, UNAUTHORIZED, UNAVAILABLE};
use crate::auth::Tenant;
use crate::error::{DomainError, ErrorKind};
use crate::views::ErrorEnvelope;

/// The header naming where the catalogue came from and when.
pub const SOURCE_HEADER: &str = "x-serverless-comfyui-catalogue-source";

/// `GET /api/v2/x-serverless-comfyui/catalogue`
#[utoipa::path(
    get, path = "/api/v2/x-serverless-comfyui/catalogue", tag = "x-serverless-comfyui",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy you hold")),
    responses(
        (status = 200, description = "The latest node catalogue: a ComfyUI's `/object_info` \
                                      (node class → `input`, `output`, `output_node`, ...). \
                                      `ETag` is its hash (`\"blake3:<hex>\"`); \
                                      `X-Serverless-Comfyui-Catalogue-Source` says who published it and when", body = Object),
        (status = 304, description = "Unchanged since the `ETag` in `If-None-Match`"),
        (status = 401, description = UNAUTHORIZED, body = ErrorEnvelope),
        (status = 403, description = FORBIDDEN, body = ErrorEnvelope),
        (status = 404, description = "`no_catalogue`: none published yet (runners publish theirs at boot; \
                                      or `serverless-comfyui catalogue publish`)", body = ErrorEnvelope),
        (status = 503, description = UNAVAILABLE, body = ErrorEnvelope),
    )
)]
pub(super) async fn get_catalogue(
    State(state): State<Arc<ApiState>>,
    _tenant: Tenant,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ports = state.jobs.ports();
    let none = || {
        DomainError::new(
            ErrorKind::NotFound,
            "no_catalogue",
            "no node catalogue has been published yet: runners publish their ComfyUI's at boot, \
             or run `serverless-comfyui catalogue publish`",
        )
    };
    let Some(pointer) = ports.store.get_catalogue_ref().await? else {
        return Err(none().into());
    };
    let etag = format!("\"{}\"", pointer.hash);
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| DomainError::unavailable())?;
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let key = crate::blob_keys::catalogue(&pointer.hash);
    let Some(bytes) = ports.blobs.get(&key).await? else {
        return Err(none().into());
    };
    let source = format!(
        "{} at {}",
        pointer.source,
        pointer
            .published_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let mut response = (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            // Revalidate each time: a runner with other models may publish at any moment.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-cache"),
            ),
        ],
        bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&source) {
        response.headers_mut().insert(SOURCE_HEADER, v);
    }
    Ok(response)
}
