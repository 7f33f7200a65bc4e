//! Submit: the write order that survives a crash at any point (see [`super`]), the
//! answer to a replayed `Idempotency-Key`, and enqueueing.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{JobService, Submitted};
use crate::catalogue::Verdict;
use crate::error::{DomainError, ErrorKind};
use crate::model::{
    IdempotencyRecord, Job, JobInput, JobStatus, Progress, ProgressRecord, SCHEMA_VERSION,
    WorkMessage,
};
use crate::ports::{CreateOutcome, JobSnapshot, JobStore, QueueName};
use crate::validate::{self, Submission};

impl JobService {
    /// `POST /api/v2/jobs`.
    pub async fn submit(
        &self,
        tenant: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, DomainError> {
        crate::json_budget::check_value_count(body)?;
        let submission = validate::parse_submission(validate::parse_json_strict(body)?)?;
        check_references(self.ports.store.as_ref(), tenant, &submission.workflow).await?;
        // Before anything is stored: a graph ComfyUI would refuse never reaches a GPU.
        // The tenant's quota is read meanwhile (two independent reads: on AWS each is
        // a DynamoDB round trip in a billed Lambda duration).
        let (verdict, quota) = tokio::try_join!(
            self.catalogues.check(&self.ports, &submission.workflow),
            async { Ok::<_, DomainError>(self.quotas.quota(tenant).await?) },
        )?;
        let now = self.ports.clock.now();
        let fingerprint = hex::encode(Sha256::digest(body));

        // A replayed key is found by the create step itself, atomically; reading it
        // first would cost every submit a read to spare the rare replay a blob write.
        if let Some(key) = idempotency_key {
            validate_idempotency_key(key)?;
        }

        let job = self.new_job(tenant, &submission, now);
        // Serialized into a buffer sized from the body (no doubling on the way), and
        // the parsed tree dropped before the blob is written: the two together are
        // most of a large submit's peak memory.
        let input_bytes = {
            let input = JobInput {
                v: SCHEMA_VERSION,
                workflow: submission.workflow,
                extra_data: submission.extra_data,
                cache_bypass: submission.cache_bypass,
            };
            let mut buffer = Vec::with_capacity(body.len() + 64);
            serde_json::to_writer(&mut buffer, &input).map_err(|_| DomainError::unavailable())?;
            buffer
        };
        self.ports
            .blobs
            .put(&job.input_key, Bytes::from(input_bytes), "application/json")
            .await?;

        let record = idempotency_key.map(|key| IdempotencyRecord {
            v: SCHEMA_VERSION,
            tenant: tenant.to_string(),
            key: key.to_string(),
            fingerprint: fingerprint.clone(),
            job_id: job.id.clone(),
            created_at: now,
            expires_at: now + self.config.idempotency_ttl,
        });
        let queue_position = match self
            .ports
            .store
            .create_job_within_quota(&job, record.as_ref(), now, &quota)
            .await?
        {
            CreateOutcome::Created { queue_position } => queue_position,
            CreateOutcome::OverQuota(refusal) => {
                // Nothing was recorded: the workflow blob is an orphan, and the client
                // retries after Retry-After.
                let _ = self.ports.blobs.delete(&job.input_key).await;
                return Err(refusal.into());
            }
            CreateOutcome::KeyTaken(existing) => {
                // A replay, or a concurrent request with the same key that won the
                // race. Our blob is an orphan; remove it (best effort: an orphan is
                // harmless).
                let _ = self.ports.blobs.delete(&job.input_key).await;
                return self.answer_existing(tenant, &existing, &fingerprint).await;
            }
        };
        tracing::info!(job_id = %job.id, tenant, "job recorded");
        let progress = match verdict {
            Verdict::Passed => None,
            Verdict::Unchecked => self.note_unchecked(&job, now).await,
        };
        let job = if self.config.record_enqueue_in_background {
            self.send_work(&job).await?;
            let store = self.ports.store.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.mark_enqueued(&id).await {
                    tracing::warn!(error = %e, "could not record an enqueue; the tick will send the job again");
                }
            });
            job
        } else {
            self.enqueue(job).await?
        };
        // A job this new has no progress record worth a read.
        let queue_position = (job.status == JobStatus::Queued).then_some(queue_position);
        let view = self
            .view_snapshot(JobSnapshot {
                job,
                progress,
                queue_position,
            })
            .await?;
        Ok(Submitted {
            job: view,
            replayed: false,
        })
    }

    /// Says in the job's progress that its graph was not checked (no catalogue yet).
    /// Best effort: the job is recorded already, and ComfyUI checks at run time.
    async fn note_unchecked(&self, job: &Job, now: DateTime<Utc>) -> Option<ProgressRecord> {
        let record = ProgressRecord {
            v: SCHEMA_VERSION,
            attempt: job.attempt,
            progress: Progress {
                message: Some(crate::catalogue::UNCHECKED_MESSAGE.to_string()),
                ..Progress::default()
            },
            updated_at: now,
        };
        match self.ports.store.put_progress(&job.id, &record).await {
            Ok(()) => Some(record),
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "could not note an unchecked graph");
                None
            }
        }
    }

    fn new_job(&self, tenant: &str, submission: &Submission, now: DateTime<Utc>) -> Job {
        let mut job = Job::new_queued(
            tenant,
            submission.metadata.clone(),
            now,
            self.config.retention,
            self.config.queue_timeout,
        );
        let price = self.config.gpu_price_per_hour;
        job.gpu_price_per_hour = (price.is_finite() && price > 0.0).then_some(price);
        job
    }

    /// Answers a request whose `Idempotency-Key` is already recorded.
    async fn answer_existing(
        &self,
        tenant: &str,
        record: &IdempotencyRecord,
        fingerprint: &str,
    ) -> Result<Submitted, DomainError> {
        if record.fingerprint != fingerprint {
            return Err(DomainError::unprocessable(
                "idempotency_key_reuse",
                "this Idempotency-Key was used with a different request body; use a new key for a new request",
            ));
        }
        let Some(job) = self.ports.store.get_job(&record.job_id).await? else {
            return Err(in_flight_conflict());
        };
        if job.tenant != tenant {
            // Records are keyed by tenant, so this cannot happen; never leak across.
            return Err(in_flight_conflict());
        }
        let job = if job.enqueued {
            job
        } else if self.ports.clock.now() - record.created_at < self.config.idempotency_in_flight {
            return Err(in_flight_conflict());
        } else {
            tracing::warn!(job_id = %job.id, "replay found a job that was never enqueued; enqueuing");
            self.enqueue(job).await?
        };
        Ok(Submitted {
            job: self.view(&job).await?,
            replayed: true,
        })
    }

    /// Sends the work message and a wake nudge, then records that it did.
    pub async fn enqueue(&self, job: Job) -> Result<Job, DomainError> {
        self.send_job_message(&job).await?;
        // The nudge and the record both follow the work message, not each other.
        let (_, job) = tokio::join!(self.wake(), record_enqueued(self.ports.store.as_ref(), job));
        job
    }

    /// Sends the job's work message and nudges the dispatcher.
    async fn send_work(&self, job: &Job) -> Result<(), DomainError> {
        self.send_job_message(job).await?;
        self.wake().await;
        Ok(())
    }

    async fn send_job_message(&self, job: &Job) -> Result<(), DomainError> {
        let message = WorkMessage::for_job(&job.id).body();
        self.ports.queue.send(QueueName::Work, &message).await?;
        Ok(())
    }
}

/// Records that the job's work message is out (see [`JobStore::mark_enqueued`]).
async fn record_enqueued(store: &dyn JobStore, mut job: Job) -> Result<Job, DomainError> {
    if !job.enqueued {
        store.mark_enqueued(&job.id).await?;
        job.enqueued = true;
    }
    Ok(job)
}

fn in_flight_conflict() -> DomainError {
    DomainError::new(
        ErrorKind::Conflict,
        "idempotency_conflict",
        "a request with this Idempotency-Key is still being processed; retry after the Retry-After delay",
    )
    .with_retry_after(1)
}

fn validate_idempotency_key(key: &str) -> Result<(), DomainError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DomainError::invalid_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is recommended)",
        ));
    }
    Ok(())
}

/// Checks that every `core/ASSET` reference of a workflow names an existing asset of
/// the tenant; otherwise 422 `missing_asset`, naming the node and the input.
async fn check_references(
    store: &dyn crate::ports::JobStore,
    tenant: &str,
    workflow: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), DomainError> {
    for (node_id, input, asset_id) in crate::validate::asset_references(workflow) {
        let found = if asset_id.is_empty() {
            None
        } else {
            store
                .get_asset(&asset_id)
                .await?
                .filter(|a| a.tenant == tenant)
        };
        if found.is_none() {
            let class = workflow
                .get(&node_id)
                .and_then(|n| n.get("class_type"))
                .and_then(|c| c.as_str())
                .unwrap_or("?");
            return Err(DomainError::unprocessable(
                "missing_asset",
                format!(
                    "node {node_id} ({class}) input `{input}` references asset {asset_id:?}, \
                     which does not exist or is not yours; upload it first"
                ),
            )
            .with_details(serde_json::json!({
                "node_id": node_id,
                "input": input,
                "asset_id": asset_id,
            })));
        }
    }
    Ok(())
}
