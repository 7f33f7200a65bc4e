//! The large-file upload extension: an upload record and a signed PUT URL, then a
//! complete step that hashes what arrived and mints it; the check a signed PUT meets;
//! and the sweep of uploads abandoned past their expiry.

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::checks::validate_meta;
use super::{
    AssetMeta, AssetService, CreateUploadRequest, SizeEnforcement, Staged, UploadView, finish_hash,
    hashing,
};
use crate::error::{DomainError, ErrorKind};
use crate::model::{Asset, SCHEMA_VERSION, UploadRecord, timestamp};
use crate::ports::{Ports, SignedAccess, StoreError};

impl AssetService {
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
            blob_key: crate::blob_keys::upload(&id),
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
        // Exact, not "at most": a presigned S3 PUT can sign one Content-Length, and S3
        // then refuses every other (a size range would need a POST policy).
        let signed = self
            .ports
            .blobs
            .presign(
                &upload.blob_key,
                SignedAccess::PutExact {
                    size_bytes: upload.max_bytes,
                },
                upload.expires_at,
            )
            .await?;
        Ok(UploadView {
            complete_url: format!(
                "{}/api/v2/x-serverless-comfyui/uploads/{}/complete",
                self.path_prefix, upload.id
            ),
            id: upload.id,
            upload_url: signed.url,
            upload_method: signed.method.as_str().into(),
            upload_headers: signed.headers.into_iter().collect(),
            size_enforcement: SizeEnforcement::Exact,
            size_bytes: upload.max_bytes,
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
        let staged_key = crate::blob_keys::staging();
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
    let Some(id) = crate::blob_keys::upload_id(key) else {
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
