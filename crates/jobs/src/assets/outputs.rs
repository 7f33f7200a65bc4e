//! Job outputs as assets: the one place a runner's outputs become blobs, dedup
//! records and assets owned by the job's tenant.
//!
//! An output is stored under its attempt's key (`outputs/{job}/{attempt}/…`, see
//! [`crate::blob_keys::output`]) and never deduplicated away: each attempt keeps its
//! own bytes, so the retention of a job's outputs follows the job. The tenant's dedup
//! index still learns the hash (so `HEAD /assets/by-hash` and `from-hash` find
//! outputs), and the asset names its job, which is what keeps the bytes referenced.

use bytes::Bytes;

use crate::model::{
    Asset, BlobRecord, Job, OutputKind, OutputRecord, SCHEMA_VERSION, new_asset_id,
};
use crate::ports::{Ports, StoreError};

/// One output a runner fetched from ComfyUI, ready to store.
#[derive(Debug, Clone)]
pub struct OutputBytes {
    pub node_id: String,
    /// The file name, already made safe for a key (the runner sanitises ComfyUI's).
    pub name: String,
    pub kind: OutputKind,
    pub content_type: String,
    pub bytes: Bytes,
}

/// Stores one output of `job`'s `attempt` and mints an asset for it. Safe to repeat
/// for the same attempt (a retried finish): the blob is overwritten with the same
/// bytes, the dedup record is written only if absent, and a second asset over the same
/// key is harmless (both belong to the job and go with it).
pub async fn mint_output(
    ports: &Ports,
    job: &Job,
    attempt: u32,
    output: OutputBytes,
) -> Result<OutputRecord, StoreError> {
    let hash = format!("blake3:{}", blake3::hash(&output.bytes).to_hex());
    let size = output.bytes.len() as u64;
    let blob_key = crate::blob_keys::output(&job.id, attempt, &output.node_id, &output.name);
    ports
        .blobs
        .put(&blob_key, output.bytes, &output.content_type)
        .await?;
    let now = ports.clock.now();
    ports
        .store
        .put_blob_record_if_absent(&BlobRecord {
            v: SCHEMA_VERSION,
            tenant: job.tenant.clone(),
            hash: hash.clone(),
            size_bytes: size,
            blob_key: blob_key.clone(),
            created_at: now,
        })
        .await?;
    let asset = Asset {
        v: SCHEMA_VERSION,
        id: new_asset_id(),
        tenant: job.tenant.clone(),
        hash: hash.clone(),
        size_bytes: size,
        content_type: output.content_type.clone(),
        file_path: Some(output.name.clone()),
        tags: vec!["output".into()],
        created_at: now,
        blob_key: blob_key.clone(),
        job_id: Some(job.id.clone()),
    };
    ports.store.put_asset(&asset).await?;
    Ok(OutputRecord {
        node_id: output.node_id,
        name: output.name,
        kind: output.kind,
        content_type: output.content_type,
        size_bytes: size,
        asset_id: asset.id,
        hash: Some(hash),
        blob_key,
    })
}
