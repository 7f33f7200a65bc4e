//! The `BlobStore` port on one private S3 bucket.
//!
//! Keys are the domain's (`workflows/`, `assets/`, `outputs/{job}/{attempt}/`); the
//! bucket is private and clients reach bytes only through presigned URLs (so the
//! functions' API answers `/content` with a 302 to one: `ContentDelivery::Redirect`).
//!
//! **Streaming writes, bounded memory.** [`BlobStore::put_stream`] never holds a whole
//! body: it buffers one part (8 MiB by default). A body that ends within the first part
//! is one `PutObject`; a larger one becomes a multipart upload, part by part. The size
//! limit is checked on every chunk *before* anything past it is sent, and a refused or
//! failed write aborts the multipart upload: nothing appears at the key, and the object
//! already there (if any) is untouched, because S3 publishes a multipart object only at
//! `CompleteMultipartUpload`. (A bounded buffer of `max_bytes` was the alternative; it
//! holds up to the whole limit in memory, which for output-sized limits is exactly what
//! must not happen.) If the process dies mid-upload, the bucket's
//! `AbortIncompleteMultipartUpload` lifecycle rule reclaims the parts.
//!
//! **Streaming reads.** [`BlobStore::read`] hands out the SDK's body stream chunk by
//! chunk; a range read is a ranged `GetObject`, its total size taken from
//! `Content-Range`.
//!
//! **Presigned URLs.** GET URLs override the response `Content-Type` and
//! `Content-Disposition` (S3's `response-content-*` query parameters), so a browser
//! shows an output as what it is whatever the object was stored as. PUT URLs sign a
//! `Content-Length` of exactly the upload's declared size, so S3 refuses any other
//! body, and the port's answer lists that header for the client to send. Presigning
//! is async (credentials come from an async cache), as the port method is. The
//! signature itself is unit-tested against botocore's for fixed inputs, because moto
//! checks no signature at all.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jobs::ports::{
    BlobRead, BlobStore, BlobWriteError, ByteStream, SignedAccess, SignedMethod, SignedRequest,
    StoreError, StoreResult,
};
use tracing::Instrument;

use crate::error::describe;

/// The part size of streamed writes: the memory one write holds at most (plus one
/// chunk). S3 needs parts of at least 5 MiB, all but the last.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// SigV4 presigned URLs live at most 7 days.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// S3 behind the `BlobStore` port.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    part_size: usize,
}

impl S3BlobStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3BlobStore {
            client,
            bucket: bucket.into(),
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// Sets the multipart part size (at least [`MIN_PART_SIZE`]).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn unavailable(
        &self,
        op: &str,
        key: &str,
        err: &(dyn std::error::Error + 'static),
    ) -> StoreError {
        StoreError::Unavailable(describe(op, &format!("s3://{}/{key}", self.bucket), err))
    }

    /// A presigned request for `access` to `key`, valid from `start` until
    /// `expires_at`: [`BlobStore::presign`] with the time as an argument, so the
    /// signature can be tested against known-good values.
    async fn presign_at(
        &self,
        key: &str,
        access: &SignedAccess,
        start: SystemTime,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<SignedRequest> {
        let until = SystemTime::from(expires_at);
        let lifetime = until
            .duration_since(start)
            .map_err(|_| StoreError::Unavailable(format!("presign {key}: expiry is in the past")))?
            .clamp(Duration::from_secs(1), MAX_PRESIGN);
        let config = PresigningConfig::builder()
            .start_time(start)
            .expires_in(lifetime)
            .build()
            .map_err(|e| self.unavailable("presign", key, &e))?;
        let (method, request) = match access {
            SignedAccess::Get { content_type } => (
                SignedMethod::Get,
                self.client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_response_content_type(content_type.clone())
                    .response_content_disposition(content_disposition(key))
                    .presigned(config)
                    .await
                    .map_err(|e| self.unavailable("presign GetObject", key, &e))?,
            ),
            SignedAccess::PutExact { size_bytes } => (
                SignedMethod::Put,
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_length(i64::try_from(*size_bytes).unwrap_or(i64::MAX))
                    .presigned(config)
                    .await
                    .map_err(|e| self.unavailable("presign PutObject", key, &e))?,
            ),
        };
        // Logged without the URL: its query string is a bearer credential.
        tracing::debug!(bucket = %self.bucket, key, "presigned {}", method.as_str());
        // The headers the signature covers besides `host` (which the URL carries):
        // for a PUT, the exact `content-length`.
        let mut headers: Vec<(String, String)> = request
            .headers()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .filter(|(name, _)| name != "host")
            .collect();
        headers.sort();
        Ok(SignedRequest {
            method,
            url: request.uri().to_string(),
            headers,
        })
    }

    async fn put_object(&self, key: &str, bytes: Bytes, content_type: &str) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(SdkByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.unavailable("PutObject", key, &e))?;
        Ok(())
    }
}

/// `inline; filename="<last path segment>"`, with the name reduced to characters
/// that need no quoting in any browser.
fn content_disposition(key: &str) -> String {
    let name: String = key
        .rsplit('/')
        .next()
        .unwrap_or(key)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("inline; filename=\"{name}\"")
}

/// Percent-encodes a key for `x-amz-copy-source` (`/` kept as the separator).
fn encode_copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The total size from a `Content-Range: bytes a-b/total` header.
/// The SDK's body as the ports' byte stream, chunk by chunk (never collected).
pub(crate) fn body_stream(body: SdkByteStream) -> ByteStream {
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        body.next()
            .await
            .map(|chunk| (chunk.map_err(std::io::Error::other), body))
    }))
}

fn total_from_content_range(range: &str) -> Option<u64> {
    range.rsplit('/').next()?.trim().parse().ok()
}

/// A multipart upload in progress. Dropped without [`Multipart::complete`] or
/// [`Multipart::abort`] (the writer's future was cancelled), it aborts itself in the
/// background.
struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    finished: bool,
}

impl Multipart {
    async fn start(store: &S3BlobStore, key: &str) -> StoreResult<Self> {
        let out = store
            .client
            .create_multipart_upload()
            .bucket(&store.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| store.unavailable("CreateMultipartUpload", key, &e))?;
        let upload_id = out.upload_id.ok_or_else(|| {
            StoreError::Unavailable(format!("CreateMultipartUpload on {key}: no upload id"))
        })?;
        Ok(Multipart {
            client: store.client.clone(),
            bucket: store.bucket.clone(),
            key: key.to_string(),
            upload_id,
            parts: Vec::new(),
            finished: false,
        })
    }

    fn unavailable(&self, op: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::Unavailable(describe(
            op,
            &format!("s3://{}/{}", self.bucket, self.key),
            err,
        ))
    }

    async fn upload(&mut self, part: Bytes) -> StoreResult<()> {
        let number = self.parts.len() as i32 + 1;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(SdkByteStream::from(part))
            .send()
            .await
            .map_err(|e| self.unavailable("UploadPart", &e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }

    async fn complete(mut self) -> StoreResult<()> {
        let parts = std::mem::take(&mut self.parts);
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => {
                self.finished = true;
                Ok(())
            }
            Err(e) => Err(self.unavailable("CompleteMultipartUpload", &e)),
        }
    }

    async fn abort(mut self) {
        self.finished = true;
        if let Err(e) = self.abort_request().await {
            // The lifecycle rule reclaims the parts later; nothing is visible meanwhile.
            tracing::warn!(bucket = %self.bucket, key = %self.key, "AbortMultipartUpload failed: {e}");
        }
    }

    fn abort_request(
        &self,
    ) -> impl Future<Output = Result<(), aws_sdk_s3::Error>> + Send + 'static {
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id);
        async move {
            request.send().await?;
            Ok(())
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let abort = self.abort_request();
            handle.spawn(async move {
                let _ = abort.await;
            });
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> StoreResult<()> {
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key);
        self.put_object(key, bytes, content_type)
            .instrument(span)
            .await
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key);
        async {
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                    return Ok(None);
                }
                Err(e) => return Err(self.unavailable("GetObject", key, &e)),
            };
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| self.unavailable("GetObject body", key, &e))?;
            Ok(Some(body.into_bytes()))
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let span = tracing::debug_span!("s3.delete", bucket = %self.bucket, key);
        // S3 answers 204 for a missing key too: deleting nothing is fine.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .instrument(span)
            .await
            .map_err(|e| self.unavailable("DeleteObject", key, &e))?;
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        max_bytes: u64,
    ) -> Result<u64, BlobWriteError> {
        let span = tracing::debug_span!("s3.put_stream", bucket = %self.bucket, key, max_bytes);
        async move {
            let mut buffer = BytesMut::new();
            let mut total: u64 = 0;
            let mut upload: Option<Multipart> = None;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        if let Some(upload) = upload {
                            upload.abort().await;
                        }
                        return Err(BlobWriteError::Body(e));
                    }
                };
                total += chunk.len() as u64;
                if total > max_bytes {
                    if let Some(upload) = upload {
                        upload.abort().await;
                    }
                    return Err(BlobWriteError::TooLarge { max_bytes });
                }
                buffer.extend_from_slice(&chunk);
                while buffer.len() >= self.part_size {
                    let part = buffer.split_to(self.part_size).freeze();
                    if upload.is_none() {
                        upload = Some(Multipart::start(self, key).await?);
                    }
                    let current = upload.as_mut().expect("just started");
                    if let Err(e) = current.upload(part).await {
                        upload.take().expect("present").abort().await;
                        return Err(e.into());
                    }
                }
            }
            match upload {
                // The whole body fitted in one part: one request.
                None => {
                    self.put_object(key, buffer.freeze(), "application/octet-stream")
                        .await?
                }
                Some(mut upload) => {
                    if !buffer.is_empty()
                        && let Err(e) = upload.upload(buffer.freeze()).await
                    {
                        upload.abort().await;
                        return Err(e.into());
                    }
                    upload.complete().await?;
                }
            }
            Ok(total)
        }
        .instrument(span)
        .await
    }

    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Option<BlobRead>> {
        let span = tracing::debug_span!("s3.read", bucket = %self.bucket, key);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
            .send()
            .instrument(span)
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                return Ok(None);
            }
            Err(e) => return Err(self.unavailable("GetObject", key, &e)),
        };
        let size = match (range, out.content_range()) {
            (Some(_), Some(content_range)) => total_from_content_range(content_range),
            _ => out.content_length().and_then(|n| u64::try_from(n).ok()),
        }
        .ok_or_else(|| StoreError::Unavailable(format!("GetObject on {key}: no size")))?;
        Ok(Some(BlobRead {
            size,
            stream: body_stream(out.body),
        }))
    }

    async fn size(&self, key: &str) -> StoreResult<Option<u64>> {
        let span = tracing::debug_span!("s3.size", bucket = %self.bucket, key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .instrument(span)
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(self.unavailable("HeadObject", key, &e)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<()> {
        let span = tracing::debug_span!("s3.rename", bucket = %self.bucket, from, to);
        async {
            // Copy first: a crash between the two leaves a harmless duplicate, never a loss.
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(encode_copy_source(&self.bucket, from))
                .send()
                .await
                .map_err(|e| self.unavailable("CopyObject", from, &e))?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(from)
                .send()
                .await
                .map_err(|e| self.unavailable("DeleteObject", from, &e))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn presign(
        &self,
        key: &str,
        access: SignedAccess,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<SignedRequest> {
        self.presign_at(key, &access, SystemTime::now(), expires_at)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_and_copy_sources_are_safe() {
        assert_eq!(
            content_disposition("outputs/01J/1/Fox \"cub\".png"),
            "inline; filename=\"Fox__cub_.png\""
        );
        assert_eq!(
            encode_copy_source("b", "uploads/a b+c/ü"),
            "b/uploads/a%20b%2Bc/%C3%BC"
        );
        assert_eq!(total_from_content_range("bytes 0-0/307200"), Some(307_200));
    }

    /// A store on a client with fixed credentials and no endpoint override: the URLs
    /// real S3 would get.
    fn fixed_store() -> S3BlobStore {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "fixed",
            ))
            .build();
        S3BlobStore::new(Client::from_conf(config), "example-bucket")
    }

    /// 2026-01-02T03:04:05Z, the time the expected URLs were signed at.
    fn fixed_start() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045)
    }

    fn fixed_expiry(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from(fixed_start()) + chrono::Duration::seconds(seconds)
    }

    /// The expected URLs are botocore's SigV4 query signer (1.44.18, in `.venv-moto`)
    /// over the same requests, credentials and time: `tests/aws/presign_known_good.py`
    /// prints them. (botocore's own `generate_presigned_url` omits the `x-id` parameter
    /// the Rust SDK adds, so it signs a different canonical query; for these inputs it
    /// agrees on everything else.) Moto checks no signature, so this is the test that
    /// a presigned URL would open on real S3.
    #[tokio::test]
    async fn presigned_urls_match_botocore_signatures() {
        let store = fixed_store();
        let get = store
            .presign_at(
                "outputs/01JOB/1/fox.png",
                &SignedAccess::Get {
                    content_type: Some("image/png".into()),
                },
                fixed_start(),
                fixed_expiry(3600),
            )
            .await
            .unwrap();
        assert_eq!(get.method, SignedMethod::Get);
        assert!(get.headers.is_empty(), "a GET needs no header: {get:?}");
        assert_eq!(
            get.url,
            "https://example-bucket.s3.us-east-1.amazonaws.com/outputs/01JOB/1/fox.png\
             ?x-id=GetObject\
             &response-content-disposition=inline%3B%20filename%3D%22fox.png%22\
             &response-content-type=image%2Fpng\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20260102%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20260102T030405Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=afa8c3af5ab1948406a661d103b24c72fd41f137f7494ece31c360569b118431"
        );
        let put = store
            .presign_at(
                "uploads/01UP",
                &SignedAccess::PutExact {
                    size_bytes: 1_048_576,
                },
                fixed_start(),
                fixed_expiry(900),
            )
            .await
            .unwrap();
        assert_eq!(put.method, SignedMethod::Put);
        assert_eq!(
            put.headers,
            vec![("content-length".to_string(), "1048576".to_string())],
            "the client is told the header the signature covers"
        );
        assert_eq!(
            put.url,
            "https://example-bucket.s3.us-east-1.amazonaws.com/uploads/01UP?x-id=PutObject\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20260102%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20260102T030405Z&X-Amz-Expires=900\
             &X-Amz-SignedHeaders=content-length%3Bhost\
             &X-Amz-Signature=e898b7b4a403cc0e1dd7594bef31b16b17bc4588459623bd7e0550841274909a",
            "the upload's size is signed: S3 refuses any other Content-Length"
        );
    }

    #[tokio::test]
    async fn presigning_refuses_a_past_expiry_and_caps_at_seven_days() {
        let store = fixed_store();
        let get = SignedAccess::Get { content_type: None };
        let past = store
            .presign_at("k", &get, fixed_start(), fixed_expiry(-1))
            .await;
        assert!(matches!(past, Err(StoreError::Unavailable(m)) if m.contains("in the past")));
        let long = store
            .presign_at("k", &get, fixed_start(), fixed_expiry(30 * 86_400))
            .await
            .unwrap();
        assert!(long.url.contains("X-Amz-Expires=604800"), "{long:?}");
    }
}
