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
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`AssetService`]: views, signed URLs, lookups, deletes, and [`release_bytes`] |
//! | `mint` | staging streamed bytes, verifying, dedup and minting ([`AssetService::mint_staged`]) |
//! | `outputs` | a runner's outputs stored and minted as the job tenant's assets ([`mint_output`]) |
//! | `uploads` | the large-file upload extension, signed PUT checks, the sweep of abandoned uploads |
//! | `checks` | what a client says about bytes: paths, hashes, tags, types |
//! | `requests` | the request and response shapes, and their JSON Schemas |
//! | `range` | `Range` header parsing |

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;

use crate::error::{DomainError, ErrorKind};
use crate::model::{Asset, timestamp};
use crate::ports::{ByteStream, Ports, SignedAccess, StoreError};

mod checks;
mod mint;
mod outputs;
mod range;
mod requests;
mod uploads;

pub use checks::{
    FILE_PATH_PATTERN, HASH_PATTERN, MAX_TAGS, parse_hash, validate_file_path, validate_meta,
};
pub use outputs::{MAX_OUTPUT_BYTES, NewOutput, mint_output};
pub use range::{RangeRequest, parse_range};
pub use requests::{
    AssetView, CreateUploadRequest, FromHashRequest, SizeEnforcement, UploadView, request_schemas,
};
pub use uploads::{UPLOAD_SWEEP_BATCH, check_upload_put, sweep_expired_uploads};

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
    pub async fn view(
        &self,
        asset: &Asset,
        created_new: Option<bool>,
    ) -> Result<AssetView, DomainError> {
        let (url, url_expires_at) = self
            .signed_get(&asset.blob_key, &asset.content_type)
            .await?;
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
    pub async fn signed_get(
        &self,
        blob_key: &str,
        content_type: &str,
    ) -> Result<(String, String), DomainError> {
        let expires = self.now() + self.url_ttl;
        let access = SignedAccess::Get {
            content_type: Some(crate::content_policy::served_type(content_type)),
        };
        let signed = self.ports.blobs.presign(blob_key, access, expires).await?;
        Ok((signed.url, timestamp(expires)))
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
