//! Job outputs as assets: the one place a runner's outputs become blobs, dedup
//! records and assets owned by the job's tenant.
//!
//! An output is stored under its attempt's key (`outputs/{job}/{attempt}/…`, see
//! [`crate::blob_keys::output`]) and never deduplicated away: each attempt keeps its
//! own bytes, so the retention of a job's outputs follows the job. The tenant's dedup
//! index still learns the hash (so `HEAD /assets/by-hash` and `from-hash` find
//! outputs), and the asset names its job, which is what keeps the bytes referenced.
//!
//! **Streamed, never held whole.** An output arrives as a stream (the runner pipes
//! ComfyUI's `/view` answer straight in) and goes to [`BlobStore::put_stream`] while a
//! blake3 hasher watches it go by: a 2 GB video costs one multipart part of memory,
//! not 2 GB.
//!
//! [`BlobStore::put_stream`]: crate::ports::BlobStore::put_stream

use super::{finish_hash, hashing};
use crate::model::{
    Asset, BlobRecord, Job, OutputKind, OutputRecord, SCHEMA_VERSION, new_asset_id,
};
use crate::ports::{BlobWriteError, ByteStream, Ports};

/// The largest single output stored (10 GiB): far above any image or short video,
/// and well inside S3's 10,000 parts of the blob store's part size.
pub const MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// One output of a finished prompt, as a stream of its bytes.
pub struct NewOutput {
    pub node_id: String,
    /// The file name, already made safe for a key (the runner sanitises ComfyUI's).
    pub name: String,
    pub kind: OutputKind,
    pub content_type: String,
    pub body: ByteStream,
}

/// Streams one output of `job`'s `attempt` into storage and mints an asset for it,
/// refusing more than `max_bytes`. Safe to repeat for the same attempt (a retried
/// finish): the blob is overwritten with the same bytes, the dedup record is written
/// only if absent, and a second asset over the same key is harmless (both belong to
/// the job and go with it).
pub async fn mint_output(
    ports: &Ports,
    job: &Job,
    attempt: u32,
    output: NewOutput,
    max_bytes: u64,
) -> Result<OutputRecord, BlobWriteError> {
    let blob_key = crate::blob_keys::output(&job.id, attempt, &output.node_id, &output.name);
    let (body, hasher) = hashing(output.body);
    let size = ports.blobs.put_stream(&blob_key, body, max_bytes).await?;
    let hash = finish_hash(&hasher);
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
