//! `POST /api/v2/assets`: the multipart form pumped to storage as it arrives.
//!
//! The `file` part streams to a staging blob (hashed on the way, never held whole);
//! text parts are read whole under a small limit each. A form that fails after the
//! file was staged discards the staged bytes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::SinkExt;
use serde_json::json;

use super::assets::asset_response;
use super::{ApiError, ApiState, FORBIDDEN, UNAUTHORIZED, UNAVAILABLE};
use crate::assets::{AssetMeta, AssetView, MAX_TAGS, validate_meta};
use crate::auth::Tenant;
use crate::views::ErrorEnvelope;

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
pub(super) async fn upload_asset(
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
    asset_response(&state, &asset, created_new).await
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

pub(super) async fn discard(state: &ApiState, staged: Option<crate::assets::Staged>) {
    if let Some(staged) = staged {
        let _ = state.jobs.ports().blobs.delete(&staged.key).await;
    }
}
