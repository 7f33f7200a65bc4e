//! Serving stored bytes: `Range` requests (200 whole, 206 partial, 416 unsatisfiable)
//! streamed from the [`BlobStore`], with the headers [`crate::content_policy`] decides.
//! Shared by `GET /api/v2/assets/{id}/content` and the local signed-URL server.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// How `GET /api/v2/assets/{id}/content` delivers the bytes. An HTTP decision, so it
/// lives here and each entry point makes it, not the storage port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentDelivery {
    /// The API streams the bytes itself, with `Range` (`dev`: files on this machine).
    Stream,
    /// A 302 to a fresh presigned URL (the Lambdas: a Lambda response is capped at
    /// 6 MB and billed by the millisecond, while S3 serves any size for free).
    Redirect,
}
use crate::assets::{RangeRequest, parse_range};
use crate::content_policy;
use crate::ports::BlobStore;

/// Sets the serving headers for bytes declared as `declared`, downloaded as `filename`:
/// the served type, `Content-Disposition: attachment` unless passive, `nosniff` and the
/// sandboxing CSP.
pub fn apply_serving_headers(headers: &mut HeaderMap, declared: &str, filename: &str) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(content_policy::CONTENT_SECURITY_POLICY),
    );
    let served = content_policy::served_type(declared);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&served)
            .unwrap_or(HeaderValue::from_static(content_policy::OPAQUE_TYPE)),
    );
    if !content_policy::is_inline(declared)
        && let Ok(value) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{}\"",
            content_policy::safe_filename(filename)
        ))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
}

/// Streams a blob (or the requested range of it) with the right status and headers:
/// 200 whole, 206 partial, 416 unsatisfiable. Shared by `/content` and local signed URLs.
/// Bytes declared as `content_type` are served as [`crate::content_policy`] says, and
/// downloaded as `filename` when they may not be rendered.
pub async fn blob_response(
    blobs: &dyn BlobStore,
    key: &str,
    headers: &HeaderMap,
    content_type: &str,
    filename: &str,
) -> Result<Response, ApiError> {
    // Only a ranged request needs the size before reading; a whole read reports it.
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match range_header {
        None => RangeRequest::Full,
        Some(_) => {
            let size = blobs
                .size(key)
                .await?
                .ok_or_else(|| ApiError::not_found("content"))?;
            match parse_range(range_header, size) {
                RangeRequest::Unsatisfiable => {
                    let mut response = (
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [
                            (header::CONTENT_RANGE, format!("bytes */{size}")),
                            (header::ACCEPT_RANGES, "bytes".to_string()),
                        ],
                    )
                        .into_response();
                    apply_serving_headers(response.headers_mut(), content_type, filename);
                    return Ok(response);
                }
                satisfiable => satisfiable,
            }
        }
    };
    let (status, wanted) = match range {
        RangeRequest::Partial(first, last) => (StatusCode::PARTIAL_CONTENT, Some((first, last))),
        _ => (StatusCode::OK, None),
    };
    let read = blobs
        .read(key, wanted)
        .await?
        .ok_or_else(|| ApiError::not_found("content"))?;
    let length = match wanted {
        Some((first, last)) => last - first + 1,
        None => read.size,
    };
    let mut response = Response::new(Body::from_stream(read.stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    apply_serving_headers(h, content_type, filename);
    if let Some((first, last)) = wanted
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", read.size))
    {
        h.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        apply_serving_headers(&mut h, "text/html", "dir/x\r\n.html");
        assert_eq!(h[header::CONTENT_TYPE], content_policy::OPAQUE_TYPE);
        assert_eq!(
            h[header::CONTENT_DISPOSITION],
            "attachment; filename=\"x__.html\""
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            content_policy::CONTENT_SECURITY_POLICY
        );
        let mut h = HeaderMap::new();
        apply_serving_headers(&mut h, "image/png", "x.png");
        assert_eq!(h[header::CONTENT_TYPE], "image/png");
        assert!(h.get(header::CONTENT_DISPOSITION).is_none());
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
