//! The runner's model files on S3: what the model sync (`gpu_runner::models`) needs
//! from the bucket, and nothing more.
//!
//! Models live under the bucket's `models/` prefix (the runner's task role may read
//! only there, besides job inputs). The sync asks three things:
//!
//! | method | S3 call | why |
//! |---|---|---|
//! | [`S3Models::stat`] | `ListObjectsV2` (the key as prefix, one key) | size and ETag: is the cached copy current? |
//! | [`S3Models::read_range`] | ranged `GetObject` with `If-Match` | one part of a parallel download; a changed object fails the part instead of mixing two versions |
//! | [`S3Models::read_small`] | `ListObjectsV2` + `GetObject` | the manifest itself, refused past a size cap |
//!
//! Bodies are streamed chunk by chunk ([`jobs::ports::ByteStream`]): a model of many
//! gigabytes is never held in memory. ETags are opaque strings here (a multipart
//! object's ETag is not an MD5), compared for equality only.

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectError;
use bytes::Bytes;
use futures::StreamExt;
use jobs::ports::{ByteStream, StoreError, StoreResult};
use tracing::Instrument;

use crate::error::describe;
use crate::s3::body_stream;

/// The prefix every model key must start with (the task role's read scope).
pub const MODELS_PREFIX: &str = "models/";

/// An object's size and ETag (as S3 sends it, quotes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelObject {
    pub size: u64,
    pub etag: String,
}

/// Reads model files from one bucket.
#[derive(Debug, Clone)]
pub struct S3Models {
    client: Client,
    bucket: String,
}

impl S3Models {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Models {
            client,
            bucket: bucket.into(),
        }
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

    /// Size and ETag, or `None` when there is no such object.
    ///
    /// A `ListObjectsV2` of the key as prefix, not a `HeadObject`: for a missing key,
    /// S3 answers `HeadObject` with 403 unless the caller may list the bucket for that
    /// request, and the runner's role may list only under `models/` (an `s3:prefix`
    /// condition, which a `HeadObject` does not carry). A listing answers "absent" as an
    /// empty page, and carries the size and ETag itself: still one request.
    pub async fn stat(&self, key: &str) -> StoreResult<Option<ModelObject>> {
        let span = tracing::debug_span!("s3.models.stat", bucket = %self.bucket, key);
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .instrument(span)
            .await
            .map_err(|e| self.unavailable("ListObjectsV2", key, &e))?;
        // Keys list in UTF-8 binary order, so the key itself comes before any longer
        // key it is a prefix of.
        Ok(out
            .contents()
            .first()
            .filter(|o| o.key() == Some(key))
            .map(|o| ModelObject {
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().unwrap_or_default().to_string(),
            }))
    }

    /// Bytes `first..=last` of the object, only if its ETag is still `etag`
    /// (`StoreError::Conflict` otherwise: it changed since [`S3Models::stat`]).
    pub async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
        etag: &str,
    ) -> StoreResult<ByteStream> {
        let span =
            tracing::debug_span!("s3.models.read_range", bucket = %self.bucket, key, first, last);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={first}-{last}"))
            .if_match(etag)
            .send()
            .instrument(span)
            .await;
        match result {
            Ok(out) => Ok(body_stream(out.body)),
            Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                Err(StoreError::Conflict)
            }
            // 412 Precondition Failed: no modelled error, so read the raw status.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(self.unavailable("GetObject", key, &e)),
        }
    }

    /// The whole object if it is at most `max_bytes` long; `None` when absent.
    pub async fn read_small(&self, key: &str, max_bytes: u64) -> StoreResult<Option<Bytes>> {
        let Some(object) = self.stat(key).await? else {
            return Ok(None);
        };
        if object.size > max_bytes {
            return Err(StoreError::Unavailable(format!(
                "s3://{}/{key} is {} bytes; at most {max_bytes} expected",
                self.bucket, object.size
            )));
        }
        if object.size == 0 {
            return Ok(Some(Bytes::new()));
        }
        let mut stream = self
            .read_range(key, 0, object.size - 1, &object.etag)
            .await?;
        let mut out = Vec::with_capacity(object.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unavailable("GetObject", key, &e))?;
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(StoreError::Unavailable(format!(
                    "s3://{}/{key} grew past {max_bytes} bytes",
                    self.bucket
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(out)))
    }
}
