//! The asset routes: from-hash, by-hash, get, delete, content, and the large-file
//! upload extension (create, complete). The multipart `POST /api/v2/assets` is in
//! [`super::multipart`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{RawBody, json_response, parse_body};
use super::{
    ApiError, ApiState, BAD_PATH, CONTENT_SERVED, ContentDelivery, FORBIDDEN, UNAUTHORIZED,
    UNAVAILABLE, UNSUPPORTED_JSON, blob_response,
};
use crate::assets::{AssetView, CreateUploadRequest, FromHashRequest, UploadView};
use crate::auth::Tenant;
use crate::views::ErrorEnvelope;

pub(super) async fn asset_response(
    state: &ApiState,
    asset: &crate::model::Asset,
    created_new: bool,
) -> Result<Response, ApiError> {
    let view = state.assets.view(asset, Some(created_new)).await?;
    let status = if created_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view))
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
pub(super) async fn from_hash(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    RawBody(body, _permit): RawBody,
) -> Result<Response, ApiError> {
    let request: FromHashRequest = parse_body(&body)?;
    let (asset, created) = state.assets.from_hash(&tenant.0, request).await?;
    let view = state.assets.view(&asset, None).await?;
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
pub(super) async fn head_by_hash(
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
pub(super) async fn get_asset(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let asset = state.assets.load(&tenant.0, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &state.assets.view(&asset, None).await?,
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
pub(super) async fn delete_asset(
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
pub(super) async fn get_asset_content(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asset = state.assets.load(&tenant.0, &id).await?;
    match state.content_delivery {
        ContentDelivery::Stream => {
            let blobs = state.jobs.ports().blobs.as_ref();
            let filename = asset.file_path.as_deref().unwrap_or(&asset.blob_key);
            blob_response(
                blobs,
                &asset.blob_key,
                &headers,
                &asset.content_type,
                filename,
            )
            .await
        }
        ContentDelivery::Redirect => {
            let (url, _) = state
                .assets
                .signed_get(&asset.blob_key, &asset.content_type)
                .await?;
            Ok((StatusCode::FOUND, [(header::LOCATION, url)]).into_response())
        }
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
pub(super) async fn create_upload(
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
pub(super) async fn complete_upload(
    State(state): State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (asset, created_new) = state.assets.complete_upload(&tenant.0, &id).await?;
    asset_response(&state, &asset, created_new).await
}
