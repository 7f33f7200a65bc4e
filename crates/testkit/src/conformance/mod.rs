//! The adapter conformance suite: one set of checks against the ports, run on every
//! adapter (local now, AWS later), with and without a fault-injecting queue.
//!
//! Each function panics with a message naming the broken promise. Adapters call them
//! from their own tests, each with fresh, isolated resources:
//!
//! - [`job_store`]: conditional writes, idempotency records, listing, progress, fleet,
//!   worker registry;
//! - [`queue_strict`]: SQS's exact semantics (visibility, receipts, receive counts,
//!   dead letters), for a queue without injected faults; [`queue_sqs`] is the same
//!   with stale receipts allowed to be accepted, as SQS itself does;
//! - [`queue_at_least_once`]: what still holds when faults are injected: nothing sent
//!   is lost, and processing with deletes drains the queue;
//! - [`lease_protocol`]: several simulated runners working through jobs concurrently
//!   over the store and the queue; every job must finish exactly once;
//! - [`asset_records`]: blob references, dedup records and expired uploads;
//! - [`retention_records`]: what the retention sweep finds and deletes;
//! - [`catalogues`]: the node catalogue's pointer, content-addressed publishing, and
//!   the check submit makes against it;
//! - [`blob_store`]: whole and streamed writes, overwrites, ranges, sizes, renames and
//!   deletes, for blobs small (a workflow) and large (an image), since an adapter may
//!   keep the two apart;
//! - [`webhook_store`]: webhook endpoints, the outbox the job's own moves fill, claims
//!   under a lease and fenced attempt records; [`webhook_deliveries`] is the same
//!   without the outbox, for a store whose outbox is its stream (DynamoDB).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use jobs::lifecycle::{Fence, Finish, Move, Refusal};
use jobs::model::{
    IdempotencyRecord, Job, JobId, JobStatus, OutputKind, OutputRecord, Progress, ProgressRecord,
    SCHEMA_VERSION, WorkMessage,
};
use jobs::ports::{
    BlobStore, BlobWriteError, Clock, CreateOutcome, Fleet, JobStore, ListQuery, ManualClock,
    QUEUE_POSITION_CAP, Queue, QueueError, QueueName, StoreError, WorkerPhase, WorkerRecord,
};
use jobs::service::{MoveError, apply_move};

mod assets;
mod blobs;
mod catalogue;
mod lease;
mod queues;
mod quotas;
mod store;
mod streams;
mod webhooks;

pub use assets::{asset_records, retention_records};
pub use blobs::blob_store;
pub use catalogue::catalogues;
pub use lease::{lease_protocol, stalled_runner_is_fenced};
pub use queues::{queue_at_least_once, queue_sqs, queue_strict};
pub use quotas::tenant_quotas;
pub use store::job_store;
pub use streams::{stream_slots, stream_slots_are_exact_under_concurrency};
pub use webhooks::{webhook_deliveries, webhook_store};

/// Moves time forward for a queue under test: a manual clock, or real sleeping.
#[async_trait]
pub trait TimeControl: Send + Sync {
    async fn advance(&self, by: StdDuration);
}

#[async_trait]
impl TimeControl for ManualClock {
    async fn advance(&self, by: StdDuration) {
        ManualClock::advance(self, Duration::from_std(by).expect("small duration"));
    }
}

/// A new queued job for `tenant`, created at `now`.
pub fn sample_job(tenant: &str, now: DateTime<Utc>, metadata: &[(&str, &str)]) -> Job {
    let labels = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    Job::new_queued(tenant, labels, now, Duration::days(7), Duration::hours(1))
}

pub(crate) async fn create(store: &dyn JobStore, job: &Job) {
    let outcome = store
        .create_job(job, None, job.created_at)
        .await
        .expect("create");
    let CreateOutcome::Created { queue_position } = outcome else {
        panic!("create refused: {outcome:?}");
    };
    assert_eq!(
        queue_position,
        store
            .queue_position(&job.id, QUEUE_POSITION_CAP)
            .await
            .unwrap(),
        "the position reported at creation is the queue position"
    );
}
