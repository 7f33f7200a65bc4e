//! The HTTP side of local blob storage: `dev` serves signed URLs as S3 would.
//!
//! - `GET /_blobs/{key}?expires&max&sig`: the bytes, with `Range` (206, 416);
//! - `PUT /_blobs/{key}?…`: a streamed upload of exactly the signed size (S3 holds a
//!   presigned PUT to its signed `Content-Length` the same way), and
//!   refused once its upload is completed or expired.
//!
//! Every request is checked against its signature and expiry; a bad one is 403 in the
//! v2 envelope. Nothing here logs the query string.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use jobs::ApiError;
use jobs::ports::{BlobStore, BlobWriteError, Clock};

use crate::blobs::FileBlobStore;

struct BlobServer {
    blobs: Arc<FileBlobStore>,
    clock: Arc<dyn Clock>,
}

/// Routes for signed blob URLs, to merge into the `dev` router.
pub fn blob_routes(blobs: Arc<FileBlobStore>, clock: Arc<dyn Clock>) -> Router {
    let state = Arc::new(BlobServer { blobs, clock });
    Router::new()
        .route("/_blobs/{*key}", get(get_blob).put(put_blob))
        .with_state(state)
}

fn forbidden(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{why}; ask the API for a fresh URL"),
    )
}

async fn get_blob(
    State(server): State<Arc<BlobServer>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, signed_type) = server
        .blobs
        .signer()
        .verify(
            "GET",
            &key,
            query.as_deref().unwrap_or_default(),
            server.clock.now(),
        )
        .map_err(forbidden)?;
    // The signed type, too, goes through the content policy (in `blob_response`): a
    // URL signed before the policy, or for a type it refuses, never renders inline.
    let content_type = signed_type.unwrap_or_else(|| content_type_for(&key));
    jobs::api::blob_response(server.blobs.as_ref(), &key, &headers, &content_type, &key).await
}

/// The media type to serve a blob with, from its key's extension.
fn content_type_for(key: &str) -> String {
    let extension = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("flac") => "audio/flac",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
    .to_string()
}

async fn put_blob(
    State(server): State<Arc<BlobServer>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (exact_size, _) = server
        .blobs
        .signer()
        .verify(
            "PUT",
            &key,
            query.as_deref().unwrap_or_default(),
            server.clock.now(),
        )
        .map_err(forbidden)?;
    if exact_size == 0 {
        return Err(forbidden("this URL does not allow uploads"));
    }
    // The signed size is exact, as S3 holds a presigned PUT to its signed
    // `Content-Length`: any other declared length is refused before a byte is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared != Some(exact_size) {
        return Err(forbidden(&format!(
            "this URL accepts a body of exactly {exact_size} bytes, sent with that Content-Length"
        )));
    }
    // A signature outlives its upload: the upload itself must still be pending.
    let Some(uploads) = server.blobs.upload_records() else {
        return Err(forbidden("this server does not accept uploads"));
    };
    jobs::assets::check_upload_put(uploads, &key, server.clock.now()).await?;
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    match server
        .blobs
        .put_stream(&key, Box::pin(body), exact_size)
        .await
    {
        Ok(size) if size != exact_size => {
            // The body ended early: what arrived is not the file that was declared.
            let _ = server.blobs.delete(&key).await;
            Err(ApiError::invalid_request(format!(
                "the body ended after {size} of its {exact_size} bytes"
            )))
        }
        Ok(size) => {
            // Completed or swept while the bytes streamed in: nothing would ever
            // collect them, so they go now.
            if let Err(e) = jobs::assets::check_upload_put(uploads, &key, server.clock.now()).await
            {
                let _ = server.blobs.delete(&key).await;
                return Err(e.into());
            }
            Ok((
                StatusCode::OK,
                [(header::ETAG, format!("\"{size}\""))],
                Body::empty(),
            )
                .into_response())
        }
        Err(BlobWriteError::TooLarge { max_bytes }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("this upload URL accepts at most {max_bytes} bytes"),
        )),
        Err(BlobWriteError::Body(e)) => Err(ApiError::invalid_request(format!(
            "upload interrupted: {e}"
        ))),
        Err(BlobWriteError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::UrlSigner;
    use chrono::{Duration, Utc};
    use jobs::ports::SignedAccess;

    #[test]
    fn signatures_bind_method_key_expiry_and_size() {
        let signer = UrlSigner::new(vec![7; 32]);
        let now = Utc::now();
        let get = SignedAccess::Get { content_type: None };
        let q = signer.query("a/b.png", &get, now + Duration::minutes(5));
        assert_eq!(signer.verify("GET", "a/b.png", &q, now), Ok((0, None)));
        let typed = signer.query(
            "a/b.png",
            &SignedAccess::Get {
                content_type: Some("image/png".into()),
            },
            now + Duration::minutes(5),
        );
        assert_eq!(
            signer.verify("GET", "a/b.png", &typed, now),
            Ok((0, Some("image/png".into())))
        );
        let retyped = typed.replace("image%2Fpng", "text%2Fhtml");
        assert!(
            signer.verify("GET", "a/b.png", &retyped, now).is_err(),
            "content type"
        );
        assert!(signer.verify("PUT", "a/b.png", &q, now).is_err(), "method");
        assert!(signer.verify("GET", "a/c.png", &q, now).is_err(), "key");
        assert!(
            signer
                .verify("GET", "a/b.png", &q, now + Duration::minutes(6))
                .is_err(),
            "expiry"
        );
        let tampered = q.replace("max=0", "max=99");
        assert!(
            signer.verify("GET", "a/b.png", &tampered, now).is_err(),
            "size"
        );
        let put = signer.query(
            "u",
            &SignedAccess::PutExact { size_bytes: 10 },
            now + Duration::minutes(5),
        );
        assert_eq!(signer.verify("PUT", "u", &put, now), Ok((10, None)));
        let other = UrlSigner::new(vec![8; 32]);
        assert!(other.verify("GET", "a/b.png", &q, now).is_err(), "secret");
        assert!(signer.verify("GET", "a/b.png", "expires=1", now).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("x/y.PNG"), "image/png");
        assert_eq!(content_type_for("x/y"), "application/octet-stream");
    }
}
