//! Assets: v2's UUID-identified records over content-addressed blobs.
//!
//! Bytes arrive as a stream (multipart, or our large-file upload extension) and are
//! written to a staging blob while a blake3 hasher watches them go by, so nothing is
//! ever held whole in memory. Then:
//!
//! 1. a declared `expected_hash` is checked (409 `hash_mismatch`, nothing minted);
//! 2. the hash is looked up in the tenant's dedup index: a hit discards the staged
//!    copy (200, `created_new: false`), a miss moves it to `cas/{tenant}/{hex}-{ulid}`
//!    (201);
//! 3. an asset record is minted over the blob.
//!
//! The dedup index is per tenant, so `HEAD /assets/by-hash/{hash}` cannot tell one
//! tenant whether another has some bytes.
//!
//! **Deleting the last asset over some bytes deletes them.** No transaction spans the
//! asset and the dedup record, so deleting and minting follow a protocol instead: the
//! deleter removes the dedup record *before* its final check for other assets (and puts
//! it back if one appeared), and a minter checks, *after* writing its asset, that the
//! record it minted from still stands (and withdraws its asset if not). Whichever way
//! the two interleave, no asset is left over deleted bytes. Each new blob gets a key of
//! its own (the ULID), so a signed URL of deleted bytes never serves a later upload of
//! the same bytes.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{DomainError, ErrorKind};
use crate::model::{Asset, BlobRecord, SCHEMA_VERSION, UploadRecord, new_asset_id, timestamp};
use crate::ports::Ports;
use crate::ports::{BlobWriteError, ByteStream, SignedAccess, StoreError};

#[derive(Debug, Clone)]
pub struct AssetsConfig {
    /// The largest single-request upload (`POST /api/v2/assets`).
    pub max_upload_bytes: u64,
    /// The largest upload through the large-file extension.
    pub max_large_upload_bytes: u64,
    /// How long a large-file upload may take before its signed URL lapses.
    pub upload_ttl: Duration,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        AssetsConfig {
            max_upload_bytes: 1024 * 1024 * 1024,
            max_large_upload_bytes: 50 * 1024 * 1024 * 1024,
            upload_ttl: Duration::hours(1),
        }
    }
}

/// What the client says about the bytes it sends.
#[derive(Debug, Clone, Default)]
pub struct AssetMeta {
    pub content_type: String,
    pub file_path: String,
    pub expected_hash: Option<String>,
    pub tags: Vec<String>,
}

/// v2's `Asset`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssetView {
    #[schema(example = "asset_01JZV8Q3M7K2W9X0Y1Z2A3B4C5")]
    pub id: String,
    /// `blake3:<hex>`.
    pub hash: Option<String>,
    pub size_bytes: u64,
    pub content_type: String,
    pub file_path: Option<String>,
    pub tags: Vec<String>,
    /// On create responses: a brand-new blob (true) or a dedup hit (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_new: Option<bool>,
    pub created_at: String,
    /// Short-lived signed content URL.
    pub url: String,
    pub url_expires_at: String,
}

/// The body of `POST /api/v2/assets/from-hash`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromHashRequest {
    pub hash: String,
    pub file_path: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not in v2; accepted so a client may say what the bytes are.
    pub content_type: Option<String>,
}

/// The body of `POST /api/v2/x-serverless-comfyui/uploads` (our extension).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUploadRequest {
    /// Placement path / filename, as in `POST /api/v2/assets`.
    pub file_path: String,
    pub content_type: String,
    /// The exact or maximum size of the file; the signed URL refuses more.
    pub size_bytes: u64,
    pub expected_hash: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An upload in progress: PUT the bytes to `upload_url`, then POST `complete_url`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    pub id: String,
    pub upload_url: String,
    /// The HTTP method for `upload_url`.
    pub upload_method: String,
    pub max_bytes: u64,
    pub expires_at: String,
    pub complete_url: String,
}

/// Checks a placement path: relative, no `..`, no NUL, no backslash.
pub fn validate_file_path(path: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        DomainError::unprocessable(
            "invalid_file_path",
            format!("file_path {path:?} is not allowed: {why}"),
        )
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.len() > 1024 {
        return Err(bad("it is longer than 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("it must be relative, without a leading '/'"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(bad("it contains a backslash; use '/'"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(bad("it contains '..'"));
    }
    if path.split('/').any(str::is_empty) {
        return Err(bad("it has an empty path segment"));
    }
    Ok(())
}

/// Parses `blake3:<64 hex digits>`, case-insensitively, into its canonical lowercase form.
pub fn parse_hash(raw: &str) -> Result<String, DomainError> {
    let hex = raw.strip_prefix("blake3:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::new(
            ErrorKind::InvalidRequest,
            "invalid_hash",
            format!("{raw:?} is not a hash: expected blake3:<64 hex digits>"),
        ));
    }
    Ok(format!("blake3:{}", hex.to_ascii_lowercase()))
}

/// The most tags an asset may carry.
pub const MAX_TAGS: usize = 16;

fn validate_tags(tags: &[String]) -> Result<(), DomainError> {
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(DomainError::unprocessable(
            "invalid_tags",
            "tags: at most 16, each 1 to 64 bytes",
        ));
    }
    Ok(())
}

fn validate_content_type(content_type: &str) -> Result<(), DomainError> {
    let plausible = content_type.len() <= 255
        && content_type.contains('/')
        && content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
    if !plausible {
        return Err(DomainError::unprocessable(
            "invalid_content_type",
            format!("{content_type:?} is not a media type such as image/png"),
        ));
    }
    Ok(())
}

/// Validates what a client says about an upload, before any byte is kept.
pub fn validate_meta(meta: &AssetMeta) -> Result<(), DomainError> {
    validate_content_type(&meta.content_type)?;
    validate_file_path(&meta.file_path)?;
    validate_tags(&meta.tags)?;
    if let Some(expected) = &meta.expected_hash {
        parse_hash(expected)?;
    }
    Ok(())
}

/// [`validate_file_path`] as a pattern: `/`-separated segments, none empty or `..`,
/// without NUL or backslash (no lookaround, so every regex engine reads it alike).
pub const FILE_PATH_PATTERN: &str = r"^(?:[^/\\\x00.][^/\\\x00]*|\.|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)(?:/(?:[^/\\\x00.][^/\\\x00]*|\.|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+))*$";

/// [`parse_hash`] as a pattern.
pub const HASH_PATTERN: &str = "^blake3:[0-9a-fA-F]{64}$";

/// The document's schemas of what clients say about bytes, to the letter of
/// [`validate_meta`]: `(schema name, JSON Schema)` for the request bodies of
/// `POST /api/v2/assets`, `/assets/from-hash` and `/x-serverless-comfyui/uploads`.
/// Lengths are in characters here and in bytes of UTF-8 on the server: the
/// descriptions say so.
pub fn request_schemas(config: &AssetsConfig) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let file_path = json!({
        "type": "string",
        "maxLength": 1024,
        "pattern": FILE_PATH_PATTERN,
        "description": "Placement path / filename: relative, `/`-separated, at most 1024 bytes of \
                        UTF-8, no empty or `..` segment, no NUL, no backslash (422 `invalid_file_path`).",
        "example": "photo.png",
    });
    let content_type = json!({
        "type": "string",
        "maxLength": 255,
        "pattern": "^[ -~]*/[ -~]*$",
        "description": "A media type such as `image/png`: printable ASCII with a `/`, at most 255 \
                        bytes (422 `invalid_content_type`).",
        "example": "image/png",
    });
    let hash = json!({
        "type": "string",
        "pattern": HASH_PATTERN,
        "description": "`blake3:<64 hex digits>` (400 `invalid_hash`).",
    });
    let tags = json!({
        "type": "array",
        "maxItems": MAX_TAGS,
        "items": {"type": "string", "minLength": 1, "maxLength": 64},
        "description": format!("At most {MAX_TAGS} tags, each 1 to 64 bytes of UTF-8 (422 `invalid_tags`)."),
    });
    let nullable = |schema: &serde_json::Value| {
        let mut schema = schema.clone();
        schema["type"] = json!(["string", "null"]);
        schema
    };
    vec![
        (
            "AssetUploadForm",
            json!({
                "type": "object",
                "description": "Parts other than these are ignored; each part but `tags` at most once \
                                (422). Text parts are at most 8 KiB each (413).",
                "required": ["file", "content_type", "file_path"],
                // A part's name is a header parameter: no control characters but tab
                // (encoders percent-encode CR and LF, as browsers do).
                "propertyNames": {"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"},
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "content_type": content_type,
                    "file_path": file_path,
                    "expected_hash": {
                        "allOf": [hash],
                        "description": "Verified against the bytes received: 409 `hash_mismatch` and nothing stored when they differ.",
                    },
                    "tags": tags,
                },
            }),
        ),
        (
            "FromHashRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["hash"],
                "properties": {
                    "hash": hash,
                    "file_path": nullable(&file_path),
                    "tags": tags,
                    // Not in v2; accepted so a client may say what the bytes are.
                    "content_type": nullable(&content_type),
                },
            }),
        ),
        (
            "CreateUploadRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["file_path", "content_type", "size_bytes"],
                "properties": {
                    "file_path": file_path,
                    "content_type": content_type,
                    "size_bytes": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": config.max_large_upload_bytes,
                        "description": "The exact or maximum size of the file; the signed URL refuses more (422 `invalid_size`).",
                    },
                    "expected_hash": nullable(&hash),
                    "tags": tags,
                },
            }),
        ),
    ]
}

/// Which part of a blob a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    /// Inclusive byte positions.
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parses a `Range` header against a blob of `size` bytes (RFC 9110 §14). Only single
/// ranges are honoured; anything else is served whole, as the RFC allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.parse::<u64>(), last.parse::<u64>()) {
        // bytes=-N: the last N bytes.
        (Err(_), Ok(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(size.saturating_sub(suffix), size - 1)
            }
        }
        // bytes=N-: from N to the end.
        (Ok(start), Err(_)) if last.is_empty() => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, size - 1)
            }
        }
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, end.min(size - 1))
            }
        }
        _ => RangeRequest::Full,
    }
}

/// A stream that feeds every chunk to a blake3 hasher on its way through.
pub fn hashing(stream: ByteStream) -> (ByteStream, Arc<Mutex<blake3::Hasher>>) {
    let hasher = Arc::new(Mutex::new(blake3::Hasher::new()));
    let watcher = hasher.clone();
    let stream = stream
        .inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                watcher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update(bytes);
            }
        })
        .boxed();
    (stream, hasher)
}

fn finish_hash(hasher: &Mutex<blake3::Hasher>) -> String {
    let hash = hasher.lock().unwrap_or_else(|e| e.into_inner()).finalize();
    format!("blake3:{}", hash.to_hex())
}

/// Bytes written to a staging key, with their hash.
pub struct Staged {
    pub key: String,
    pub hash: String,
    pub size: u64,
}

/// How many times a mint retries when concurrent deletes keep retiring its blob.
const MINT_ROUNDS: usize = 3;

fn blob_not_found() -> DomainError {
    DomainError::new(
        ErrorKind::NotFound,
        "blob_not_found",
        "no blob with this hash that you may mint from; upload the bytes instead",
    )
}

pub struct AssetService {
    ports: Ports,
    config: AssetsConfig,
    path_prefix: String,
    /// How long a content URL is valid: the jobs' setting, since every output is an
    /// asset and both hand out the same URLs.
    url_ttl: Duration,
    quotas: crate::quota::QuotaBook,
}

impl AssetService {
    /// URLs follow the jobs' settings: their path prefix and their lifetime.
    pub fn new(ports: Ports, config: AssetsConfig, jobs: &crate::service::JobsConfig) -> Self {
        AssetService {
            quotas: crate::quota::QuotaBook::new(
                ports.store.clone(),
                ports.clock.clone(),
                jobs.default_quota,
            ),
            ports,
            config,
            path_prefix: jobs.path_prefix.clone(),
            url_ttl: jobs.url_ttl,
        }
    }

    pub fn config(&self) -> &AssetsConfig {
        &self.config
    }

    /// Refuses `adding` new bytes that would take the tenant past its storage quota.
    async fn check_storage_room(&self, tenant: &str, adding: u64) -> Result<(), DomainError> {
        let limit = self.quotas.quota(tenant).await?.max_stored_bytes;
        let used = self.ports.store.tenant_usage(tenant).await?.stored_bytes;
        if used.saturating_add(adding) > limit {
            return Err(crate::quota::storage_refusal(used, adding, limit));
        }
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.ports.clock.now()
    }

    /// The v2 view of an asset, with a fresh signed URL.
    pub fn view(&self, asset: &Asset, created_new: Option<bool>) -> Result<AssetView, DomainError> {
        let (url, url_expires_at) = self.signed_get(&asset.blob_key, &asset.content_type)?;
        Ok(AssetView {
            id: asset.id.clone(),
            hash: Some(asset.hash.clone()),
            size_bytes: asset.size_bytes,
            content_type: asset.content_type.clone(),
            file_path: asset.file_path.clone(),
            tags: asset.tags.clone(),
            created_new,
            created_at: timestamp(asset.created_at),
            url,
            url_expires_at,
        })
    }

    /// A fresh signed GET URL for a blob, and when it expires. The URL carries the type
    /// the content policy serves, never an active one.
    pub fn signed_get(
        &self,
        blob_key: &str,
        content_type: &str,
    ) -> Result<(String, String), DomainError> {
        let expires = self.now() + self.url_ttl;
        let url = self.ports.blobs.signed_url(
            blob_key,
            SignedAccess::Get,
            expires,
            Some(&crate::content_policy::served_type(content_type)),
        )?;
        Ok((url, timestamp(expires)))
    }

    /// Streams bytes into a staging blob, hashing as they pass.
    pub async fn stage(&self, body: ByteStream, max_bytes: u64) -> Result<Staged, DomainError> {
        let key = format!("staging/{}", ulid::Ulid::new());
        let (stream, hasher) = hashing(body);
        let size = self
            .ports
            .blobs
            .put_stream(&key, stream, max_bytes)
            .await
            .map_err(|e| match e {
                BlobWriteError::TooLarge { max_bytes } => DomainError::new(
                    ErrorKind::TooLarge,
                    "payload_too_large",
                    format!(
                        "the file is larger than {max_bytes} bytes; use the large-file upload \
                         extension (POST /api/v2/x-serverless-comfyui/uploads)"
                    ),
                ),
                BlobWriteError::Body(e) => {
                    DomainError::invalid_request(format!("the upload was interrupted: {e}"))
                }
                BlobWriteError::Store(e) => e.into(),
            })?;
        Ok(Staged {
            key,
            hash: finish_hash(&hasher),
            size,
        })
    }

    /// Verifies, dedups and mints an asset over staged bytes. Returns the asset and
    /// whether its blob is new.
    pub async fn mint_staged(
        &self,
        tenant: &str,
        staged: Staged,
        meta: AssetMeta,
    ) -> Result<(Asset, bool), DomainError> {
        if let Some(expected) = &meta.expected_hash
            && parse_hash(expected)? != staged.hash
        {
            let _ = self.ports.blobs.delete(&staged.key).await;
            return Err(DomainError::new(
                ErrorKind::Conflict,
                "hash_mismatch",
                format!(
                    "expected_hash {expected} does not match the received bytes ({}); nothing was stored",
                    staged.hash
                ),
            ));
        }
        let now = self.now();
        let store = &self.ports.store;
        // Where our own bytes are, once moved out of staging.
        let mut ours: Option<String> = None;
        // A round repeats only when a concurrent delete retired the blob minted from.
        for _ in 0..MINT_ROUNDS {
            let blob = match store.get_blob_record(tenant, &staged.hash).await? {
                Some(existing) => existing,
                None => {
                    let blob_key = match &ours {
                        Some(key) => key.clone(),
                        None => {
                            // New content: it must fit the tenant's storage quota.
                            if let Err(refusal) = self.check_storage_room(tenant, staged.size).await
                            {
                                let _ = self.ports.blobs.delete(&staged.key).await;
                                return Err(refusal);
                            }
                            let hex = staged.hash.trim_start_matches("blake3:");
                            let key = format!(
                                "cas/{tenant}/{hex}-{}",
                                ulid::Ulid::new().to_string().to_ascii_lowercase()
                            );
                            self.ports.blobs.rename(&staged.key, &key).await?;
                            ours = Some(key.clone());
                            key
                        }
                    };
                    let record = BlobRecord {
                        v: SCHEMA_VERSION,
                        tenant: tenant.to_string(),
                        hash: staged.hash.clone(),
                        size_bytes: staged.size,
                        blob_key,
                        created_at: now,
                    };
                    store.put_blob_record_if_absent(&record).await?.0
                }
            };
            let asset = Asset {
                v: SCHEMA_VERSION,
                id: new_asset_id(),
                tenant: tenant.to_string(),
                hash: blob.hash.clone(),
                size_bytes: blob.size_bytes,
                content_type: meta.content_type.clone(),
                file_path: Some(meta.file_path.clone()),
                tags: meta.tags.clone(),
                created_at: now,
                blob_key: blob.blob_key.clone(),
                job_id: None,
            };
            if self.mint_over(&blob, &asset).await? {
                let our_key = ours.as_deref().unwrap_or(&staged.key);
                let created_new = blob.blob_key == our_key;
                if !created_new {
                    let _ = self.ports.blobs.delete(our_key).await;
                }
                tracing::info!(asset_id = %asset.id, tenant, size = asset.size_bytes, created_new, "asset minted");
                return Ok((asset, created_new));
            }
        }
        let _ = self
            .ports
            .blobs
            .delete(ours.as_deref().unwrap_or(&staged.key))
            .await;
        Err(StoreError::Unavailable("the blob kept changing while minting; retry".into()).into())
    }

    /// Writes an asset over a blob record, then checks that the record still stands;
    /// if a concurrent delete retired it meanwhile, withdraws the asset (false). See the
    /// module docs for why this order makes deletes safe.
    async fn mint_over(&self, blob: &BlobRecord, asset: &Asset) -> Result<bool, DomainError> {
        let store = &self.ports.store;
        store.put_asset(asset).await?;
        let standing = store.get_blob_record(&blob.tenant, &blob.hash).await?;
        if standing.is_some_and(|r| r.blob_key == blob.blob_key) {
            return Ok(true);
        }
        store.delete_asset(&asset.id).await?;
        Ok(false)
    }

    /// `POST /api/v2/assets/from-hash`.
    pub async fn from_hash(
        &self,
        tenant: &str,
        request: FromHashRequest,
    ) -> Result<(Asset, bool), DomainError> {
        let hash = parse_hash(&request.hash)?;
        if let Some(path) = &request.file_path {
            validate_file_path(path)?;
        }
        validate_tags(&request.tags)?;
        let Some(blob) = self.ports.store.get_blob_record(tenant, &hash).await? else {
            return Err(blob_not_found());
        };
        if let Some(existing) = self
            .ports
            .store
            .find_asset(tenant, &hash, request.file_path.as_deref())
            .await?
            && request
                .content_type
                .as_ref()
                .is_none_or(|c| *c == existing.content_type)
        {
            return Ok((existing, false));
        }
        let content_type = match request.content_type {
            Some(c) => {
                validate_content_type(&c)?;
                c
            }
            // Borrow the type of another asset over these bytes. Without a file path
            // the lookup above already was that one, and found nothing.
            None if request.file_path.is_some() => self
                .ports
                .store
                .find_asset(tenant, &hash, None)
                .await?
                .map(|a| a.content_type)
                .unwrap_or_else(|| "application/octet-stream".into()),
            None => "application/octet-stream".into(),
        };
        let asset = Asset {
            v: SCHEMA_VERSION,
            id: new_asset_id(),
            tenant: tenant.to_string(),
            hash: blob.hash.clone(),
            size_bytes: blob.size_bytes,
            content_type,
            file_path: request.file_path,
            tags: request.tags,
            created_at: self.now(),
            blob_key: blob.blob_key.clone(),
            job_id: None,
        };
        if !self.mint_over(&blob, &asset).await? {
            return Err(blob_not_found());
        }
        Ok((asset, true))
    }

    /// `HEAD /api/v2/assets/by-hash/{hash}`: may this tenant mint from the hash?
    pub async fn has_blob(&self, tenant: &str, raw_hash: &str) -> Result<bool, DomainError> {
        let Ok(hash) = parse_hash(raw_hash) else {
            return Ok(false);
        };
        Ok(self
            .ports
            .store
            .get_blob_record(tenant, &hash)
            .await?
            .is_some())
    }

    /// Reads an asset of this tenant; another tenant's is "not found".
    pub async fn load(&self, tenant: &str, id: &str) -> Result<Asset, DomainError> {
        match self.ports.store.get_asset(id).await? {
            Some(asset) if asset.tenant == tenant => Ok(asset),
            _ => Err(DomainError::not_found("asset")),
        }
    }

    /// Deletes an asset, and its bytes once no asset of the tenant references them.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), DomainError> {
        let asset = self.load(tenant, id).await?;
        if self.ports.store.delete_asset(id).await? {
            self.release_bytes(&asset).await?;
        }
        tracing::info!(asset_id = id, tenant, "asset deleted");
        Ok(())
    }

    async fn release_bytes(&self, deleted: &Asset) -> Result<(), DomainError> {
        Ok(release_bytes(&self.ports, deleted).await?)
    }

    /// Creates a large-file upload (our extension).
    pub async fn create_upload(
        &self,
        tenant: &str,
        request: CreateUploadRequest,
    ) -> Result<UploadView, DomainError> {
        validate_meta(&AssetMeta {
            content_type: request.content_type.clone(),
            file_path: request.file_path.clone(),
            expected_hash: request.expected_hash.clone(),
            tags: request.tags.clone(),
        })?;
        if request.size_bytes == 0 || request.size_bytes > self.config.max_large_upload_bytes {
            return Err(DomainError::unprocessable(
                "invalid_size",
                format!(
                    "size_bytes must be from 1 to {}",
                    self.config.max_large_upload_bytes
                ),
            ));
        }
        // Refused before any byte is sent when it cannot fit; checked again on complete.
        self.check_storage_room(tenant, request.size_bytes).await?;
        let now = self.now();
        let id = format!("upload_{}", ulid::Ulid::new());
        let upload = UploadRecord {
            v: SCHEMA_VERSION,
            blob_key: format!("{UPLOAD_KEY_PREFIX}{id}"),
            id,
            tenant: tenant.to_string(),
            max_bytes: request.size_bytes,
            content_type: request.content_type,
            file_path: request.file_path,
            expected_hash: request.expected_hash,
            tags: request.tags,
            created_at: now,
            expires_at: now + self.config.upload_ttl,
        };
        self.ports.store.put_upload(&upload).await?;
        let upload_url = self.ports.blobs.signed_url(
            &upload.blob_key,
            SignedAccess::Put {
                max_bytes: upload.max_bytes,
            },
            upload.expires_at,
            None,
        )?;
        Ok(UploadView {
            complete_url: format!(
                "{}/api/v2/x-serverless-comfyui/uploads/{}/complete",
                self.path_prefix, upload.id
            ),
            id: upload.id,
            upload_url,
            upload_method: "PUT".into(),
            max_bytes: upload.max_bytes,
            expires_at: timestamp(upload.expires_at),
        })
    }

    /// Completes a large-file upload: hash the uploaded object, dedup, mint.
    pub async fn complete_upload(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(Asset, bool), DomainError> {
        let upload = match self.ports.store.get_upload(id).await? {
            Some(upload) if upload.tenant == tenant => upload,
            _ => return Err(DomainError::not_found("upload")),
        };
        if upload.expires_at <= self.now() {
            return Err(upload_expired());
        }
        if self.ports.blobs.size(&upload.blob_key).await?.is_none() {
            return Err(DomainError::new(
                ErrorKind::Conflict,
                "upload_incomplete",
                "no bytes were uploaded yet: PUT the file to upload_url first",
            ));
        }
        // Move the bytes out of the upload's key and end the upload before hashing: a
        // PUT from now on is refused, and none can change the bytes being hashed.
        let staged_key = format!("staging/{}", ulid::Ulid::new());
        self.ports
            .blobs
            .rename(&upload.blob_key, &staged_key)
            .await?;
        self.ports.store.delete_upload(id).await?;
        let hashed = async {
            let read = self
                .ports
                .blobs
                .read(&staged_key, None)
                .await?
                .ok_or_else(|| StoreError::Unavailable("the staged upload vanished".into()))?;
            // Hash the object as stored; never trust the client's hash.
            let (mut stream, hasher) = hashing(read.stream);
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                size += chunk
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?
                    .len() as u64;
            }
            Ok::<_, StoreError>((finish_hash(&hasher), size))
        }
        .await;
        let (hash, size) = match hashed {
            Ok(hashed) => hashed,
            Err(e) => {
                let _ = self.ports.blobs.delete(&staged_key).await;
                return Err(e.into());
            }
        };
        let staged = Staged {
            key: staged_key,
            hash,
            size,
        };
        let meta = AssetMeta {
            content_type: upload.content_type,
            file_path: upload.file_path,
            expected_hash: upload.expected_hash,
            tags: upload.tags,
        };
        self.mint_staged(tenant, staged, meta).await
    }
}

/// After `deleted` is gone: deletes its bytes, and the tenant's dedup record, unless
/// another asset still references them. The asset delete and the retention sweep
/// both end here. See the module docs for the protocol.
pub async fn release_bytes(ports: &Ports, deleted: &Asset) -> Result<(), StoreError> {
    let store = &ports.store;
    let (tenant, hash) = (deleted.tenant.as_str(), deleted.hash.as_str());
    let record = store.get_blob_record(tenant, hash).await?;
    if store.is_blob_referenced(tenant, hash, None).await? {
        // Other assets share the bytes. The deleted one's key may still go if it is
        // its own copy (a job output's key): nothing mints over such a key later.
        let record_key = record.as_ref().map(|r| r.blob_key.as_str());
        if record_key != Some(deleted.blob_key.as_str())
            && !store
                .is_blob_referenced(tenant, hash, Some(&deleted.blob_key))
                .await?
        {
            ports.blobs.delete(&deleted.blob_key).await?;
        }
        return Ok(());
    }
    // The last reference: retire the record first, so nothing mints from it, then
    // check again for an asset minted from it meanwhile.
    store.delete_blob_record(tenant, hash).await?;
    if store.is_blob_referenced(tenant, hash, None).await? {
        if let Some(record) = &record {
            store.put_blob_record_if_absent(record).await?;
        }
        return Ok(());
    }
    ports.blobs.delete(&deleted.blob_key).await?;
    if let Some(record) = record
        && record.blob_key != deleted.blob_key
    {
        ports.blobs.delete(&record.blob_key).await?;
    }
    tracing::info!(tenant, hash, "blob deleted: no asset references it");
    Ok(())
}

/// Where an upload's bytes are PUT: `uploads/{upload id}`.
const UPLOAD_KEY_PREFIX: &str = "uploads/";

fn upload_expired() -> DomainError {
    DomainError::new(
        ErrorKind::Gone,
        "upload_expired",
        "this upload expired before it was completed; start a new one",
    )
}

/// Whether a signed PUT to `key` may write now. Only uploads are written through signed
/// URLs, and only while pending: once completed, expired or swept, the URL (which
/// stays valid by its signature alone) is refused with 403.
pub async fn check_upload_put(
    store: &dyn crate::ports::JobStore,
    key: &str,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let refused = |why: &str| {
        DomainError::new(
            ErrorKind::Forbidden,
            "forbidden",
            format!("{why}; create a new upload"),
        )
    };
    let Some(id) = key.strip_prefix(UPLOAD_KEY_PREFIX) else {
        return Err(refused("this key does not accept uploads"));
    };
    match store.get_upload(id).await? {
        Some(upload) if upload.blob_key == key && now < upload.expires_at => Ok(()),
        Some(upload) if upload.blob_key == key => Err(refused("this upload has expired")),
        _ => Err(refused("this upload is completed or gone")),
    }
}

/// How many abandoned uploads one tick removes at most.
pub const UPLOAD_SWEEP_BATCH: usize = 100;

/// Removes uploads abandoned past their expiry, at most `limit`: the staged bytes
/// first, then the record (so a failure leaves the record for the next sweep). Returns
/// how many were removed. The tick calls it.
pub async fn sweep_expired_uploads(
    ports: &Ports,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<u32, StoreError> {
    let mut removed = 0;
    for upload in ports.store.expired_uploads(now, limit).await? {
        ports.blobs.delete(&upload.blob_key).await?;
        ports.store.delete_upload(&upload.id).await?;
        tracing::info!(upload_id = %upload.id, tenant = %upload.tenant, "abandoned upload removed");
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Partial(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Partial(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Partial(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Partial(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn file_paths() {
        for ok in ["photo.png", "models/checkpoints/x.safetensors", "a b.png"] {
            validate_file_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a\\b",
            "a\0b",
            "a//b",
            "a/",
        ] {
            assert_eq!(
                validate_file_path(bad).unwrap_err().code,
                "invalid_file_path",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hashes() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_hash(&format!("blake3:{hex}")).unwrap(),
            format!("blake3:{}", hex.to_lowercase())
        );
        assert!(parse_hash(&hex).is_err());
        assert!(parse_hash("blake3:xyz").is_err());
    }
}
