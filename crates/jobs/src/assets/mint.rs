//! Minting: staged bytes verified, deduplicated per tenant and made an asset, and
//! assets minted over bytes the tenant already has (`from-hash`). See the module docs
//! of [`super`] for the protocol that keeps deletes and mints safe together.

use super::checks::{parse_hash, validate_content_type, validate_file_path, validate_tags};
use super::{
    AssetMeta, AssetService, FromHashRequest, MINT_ROUNDS, Staged, blob_not_found, finish_hash,
    hashing,
};
use crate::error::{DomainError, ErrorKind};
use crate::model::{Asset, BlobRecord, SCHEMA_VERSION, new_asset_id};
use crate::ports::{BlobWriteError, ByteStream, StoreError};

impl AssetService {
    /// Streams bytes into a staging blob, hashing as they pass.
    pub async fn stage(&self, body: ByteStream, max_bytes: u64) -> Result<Staged, DomainError> {
        let key = crate::blob_keys::staging();
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
                            let key = crate::blob_keys::cas(tenant, &staged.hash);
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
}
