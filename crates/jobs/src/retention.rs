//! Retention: what is past its deadline goes.
//!
//! Every finished job says how long it is kept (`expires_at`, `JobsConfig::retention`
//! after it finished), every idempotency record and upload too. The sweep, run by the
//! tick, removes in bounded batches:
//!
//! - **finished jobs past `expires_at`**, with what hangs off them: their output
//!   assets (of every attempt), their bytes once no other asset of the tenant names
//!   them ([`crate::assets::release_bytes`], the protocol an asset delete follows),
//!   the workflow blob (`input_key`), and, with the job record, its labels and
//!   progress. The job record goes last, so a sweep that fails half way leaves it for
//!   the next one to finish; every step is safe to repeat.
//! - **idempotency records past their expiry** (an expired one already answers
//!   nothing; this only frees the space);
//! - **abandoned uploads** ([`crate::assets::sweep_expired_uploads`]);
//! - **staged bytes a crash left** in `staging/` a day ago (no record ever names a
//!   staging key: bytes are moved to `cas/` before they are recorded).
//!
//! A job still queued or running is never swept, whatever its `expires_at`: queued
//! jobs expire through their queue deadline first, running ones finish or are reaped.
//! Assets a user uploaded have no deadline (v2: they are kept until deleted).
//!
//! On AWS, DynamoDB TTL (on `expires_at` of jobs, progress and idempotency items) and
//! S3 lifecycle rules (on `inputs/`, `outputs/`, `uploads/`, `staging/`) do most of
//! this by themselves; the sweep is still what removes output asset records and the
//! content-addressed blobs (`cas/…`) whose last asset went, which neither TTL nor a
//! prefix rule can know about. The same sweep runs against either store: the
//! conformance suite holds both to its rules.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::Job;
use crate::ports::Ports;
use crate::ports::StoreError;

/// Jobs one batch removes at most; the tick runs batches until the budget is spent.
pub const SWEEP_BATCH: usize = 500;

/// How long bytes may sit in `staging/` (while being hashed and deduplicated, which
/// takes seconds to minutes) before they count as a crash's leftover.
pub const STAGING_MAX_AGE: chrono::Duration = chrono::Duration::days(1);

/// Output assets of one job examined at most (a job has a handful).
const MAX_ASSETS_PER_JOB: usize = 1000;

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub jobs: u32,
    pub assets: u32,
    pub idempotency_records: u32,
    /// Staged bytes a crash left behind (`staging/`, no record names them).
    pub staged_blobs: u32,
    /// True when the sweep stopped at its budget with more left to remove.
    pub more: bool,
}

/// Removes one job past its retention, with its assets, their bytes and its
/// workflow. Safe to repeat after a failure at any step.
pub async fn remove_job(ports: &Ports, job: &Job) -> Result<u32, StoreError> {
    let mut assets = 0;
    loop {
        let batch = ports.store.job_assets(&job.id, MAX_ASSETS_PER_JOB).await?;
        if batch.is_empty() {
            break;
        }
        for asset in batch {
            if ports.store.delete_asset(&asset.id).await? {
                crate::assets::release_bytes(ports, &asset).await?;
                assets += 1;
            }
        }
    }
    // Outputs the job names that no asset record covered (a crash between writing
    // the bytes and minting the asset): their keys are the job's own, unless the
    // tenant's dedup record or another asset has come to name them.
    for output in &job.outputs {
        let Some(hash) = output.hash.as_deref() else {
            continue;
        };
        let store = &ports.store;
        let named_by_record = store
            .get_blob_record(&job.tenant, hash)
            .await?
            .is_some_and(|r| r.blob_key == output.blob_key);
        if !named_by_record
            && !store
                .is_blob_referenced(&job.tenant, hash, Some(&output.blob_key))
                .await?
        {
            ports.blobs.delete(&output.blob_key).await?;
        }
    }
    ports.blobs.delete(&job.input_key).await?;
    ports.store.delete_job(&job.id).await?;
    tracing::debug!(job_id = %job.id, tenant = %job.tenant, assets, "job removed past its retention");
    Ok(assets)
}

/// One sweep: batches of [`SWEEP_BATCH`] expired jobs until none are left or
/// `budget` batches ran, then expired idempotency records, then abandoned uploads.
/// Each removal is a handful of small writes, so requests interleave with it; the
/// budget bounds how long one tick spends here.
pub async fn sweep(
    ports: &Ports,
    now: DateTime<Utc>,
    budget: usize,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    for _ in 0..budget.max(1) {
        let batch = ports.store.expired_jobs(now, SWEEP_BATCH).await?;
        let full = batch.len() == SWEEP_BATCH;
        for job in &batch {
            report.assets += remove_job(ports, job).await?;
            report.jobs += 1;
        }
        if !batch.is_empty() {
            // A small step after each batch, rather than one large one at the end:
            // each step holds the store's writer for its duration.
            ports.store.reclaim().await?;
            ports.blobs.reclaim().await?;
        }
        report.more = full;
        if !full {
            break;
        }
    }
    for _ in 0..budget.max(1) {
        let n = ports
            .store
            .delete_expired_idempotency(now, SWEEP_BATCH)
            .await?;
        report.idempotency_records += n as u32;
        if n < SWEEP_BATCH {
            break;
        }
    }
    // Staged bytes are moved out (to `cas/`) before any record names them, so one
    // left in `staging/` this long is a crash's leftover.
    report.staged_blobs = ports
        .blobs
        .expire_prefix(
            crate::blob_keys::STAGING,
            now - STAGING_MAX_AGE,
            SWEEP_BATCH,
        )
        .await? as u32;
    if report.idempotency_records as usize >= SWEEP_BATCH {
        ports.store.reclaim().await?;
    }
    if report.jobs > 0 || report.idempotency_records > 0 || report.staged_blobs > 0 {
        tracing::info!(?report, "retention sweep");
    }
    Ok(report)
}

/// What health and `dev`'s banner show about storage: jobs by status, and bytes on
/// disk where the adapters can tell (`None` on AWS, where the services keep them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageReport {
    /// Jobs in each status, zero included.
    pub jobs: std::collections::BTreeMap<&'static str, u64>,
    /// The job store's and the queue's databases.
    pub database_bytes: Option<u64>,
    /// Stored blobs: workflows, inputs, outputs, uploads.
    pub blob_bytes: Option<u64>,
}

/// Reads the [`StorageReport`]. It counts jobs and may walk the blob directory, so
/// health shows it only to an authenticated caller.
pub async fn storage_report(ports: &Ports) -> Result<StorageReport, StoreError> {
    let mut jobs: std::collections::BTreeMap<&'static str, u64> = crate::model::JobStatus::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    for (status, n) in ports.store.count_jobs_by_status().await? {
        jobs.insert(status.as_str(), n);
    }
    let store_bytes = ports.store.bytes_used().await?;
    let queue_bytes = ports.queue.bytes_used();
    let database_bytes = match (store_bytes, queue_bytes) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    Ok(StorageReport {
        jobs,
        database_bytes,
        blob_bytes: ports.blobs.bytes_used().await?,
    })
}
