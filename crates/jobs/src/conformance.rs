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
//! - [`blob_store`]: whole and streamed writes, overwrites, ranges, sizes, renames and
//!   deletes, for blobs small (a workflow) and large (an image), since an adapter may
//!   keep the two apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::lifecycle::{Fence, Finish, Move, Refusal};
use crate::model::{
    IdempotencyRecord, Job, JobId, JobStatus, OutputKind, OutputRecord, Progress, ProgressRecord,
    SCHEMA_VERSION, WorkMessage,
};
use crate::ports::{
    BlobStore, BlobWriteError, Clock, CreateOutcome, Fleet, JobStore, ListQuery, ManualClock,
    QUEUE_POSITION_CAP, Queue, QueueError, QueueName, StoreError, WorkerPhase, WorkerRecord,
};
use crate::service::{MoveError, apply_move};

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

async fn create(store: &dyn JobStore, job: &Job) {
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

/// Per-tenant quotas: limits set and read back; the active-job and submit-rate limits
/// held in the write that records a job (a refused job leaves nothing behind); usage
/// that follows jobs ending and blob records coming and going.
pub async fn tenant_quotas(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    use crate::quota::{QuotaRefusal, TenantQuota};
    let store = store.as_ref();
    let now = clock.now();

    assert_eq!(store.get_tenant_quota("q1").await.unwrap(), None);
    let tight = TenantQuota {
        max_active_jobs: 2,
        submits_per_second: 100,
        max_stored_bytes: 1_000,
    };
    store.put_tenant_quota("q1", &tight).await.unwrap();
    assert_eq!(store.get_tenant_quota("q1").await.unwrap(), Some(tight));
    assert_eq!(
        store.get_tenant_quota("q2").await.unwrap(),
        None,
        "per tenant"
    );

    // Active jobs: the third is refused and not written.
    let mut first = sample_job("q1", now, &[]);
    for job in [&first, &sample_job("q1", now, &[])] {
        assert!(matches!(
            store
                .create_job_within_quota(job, None, now, &tight)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ));
    }
    let third = sample_job("q1", now, &[]);
    assert_eq!(
        store
            .create_job_within_quota(&third, None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::ActiveJobs { limit: 2 })
    );
    assert_eq!(
        store.get_job(&third.id).await.unwrap(),
        None,
        "a refused job is not written"
    );
    let refused_key = IdempotencyRecord {
        v: SCHEMA_VERSION,
        tenant: "q1".into(),
        key: "refused".into(),
        fingerprint: "f".into(),
        job_id: third.id.clone(),
        created_at: now,
        expires_at: now + Duration::hours(24),
    };
    assert!(matches!(
        store
            .create_job_within_quota(&third, Some(&refused_key), now, &tight)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(_)
    ));
    assert_eq!(
        store.get_idempotency("q1", "refused").await.unwrap(),
        None,
        "a refused job leaves its key free for the retry"
    );
    assert_eq!(store.tenant_usage("q1").await.unwrap().active_jobs, 2);
    // Another tenant is not held to q1's count.
    assert!(matches!(
        store
            .create_job_within_quota(&sample_job("q2", now, &[]), None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // A replay of a recorded key is answered, not refused, even at the limit.
    let keyed = IdempotencyRecord {
        v: SCHEMA_VERSION,
        tenant: "q2".into(),
        key: "quota-key".into(),
        fingerprint: "f".into(),
        job_id: JobId::generate(),
        created_at: now,
        expires_at: now + Duration::hours(24),
    };
    let one_active = TenantQuota {
        max_active_jobs: 2,
        ..tight
    };
    let keyed_job = Job {
        id: keyed.job_id.clone(),
        ..sample_job("q2", now, &[])
    };
    assert!(matches!(
        store
            .create_job_within_quota(&keyed_job, Some(&keyed), now, &one_active)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));
    assert_eq!(
        store
            .create_job_within_quota(&sample_job("q2", now, &[]), Some(&keyed), now, &one_active)
            .await
            .unwrap(),
        CreateOutcome::KeyTaken(keyed.clone())
    );

    // A job that ends frees its slot.
    first.status = JobStatus::Succeeded;
    first.rev += 1;
    store.put_job(&first, first.rev - 1).await.unwrap();
    assert_eq!(store.tenant_usage("q1").await.unwrap().active_jobs, 1);
    assert!(matches!(
        store
            .create_job_within_quota(&third, None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // The submit rate: a one-second window.
    let rate = TenantQuota {
        max_active_jobs: 1_000,
        submits_per_second: 2,
        ..tight
    };
    let second = now + Duration::seconds(10);
    for _ in 0..2 {
        assert!(matches!(
            store
                .create_job_within_quota(&sample_job("q3", second, &[]), None, second, &rate)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ));
    }
    let fast = sample_job("q3", second, &[]);
    assert_eq!(
        store
            .create_job_within_quota(&fast, None, second, &rate)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::SubmitRate { limit: 2 })
    );
    let next_second = second + Duration::seconds(1);
    assert!(matches!(
        store
            .create_job_within_quota(&fast, None, next_second, &rate)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // Stored bytes follow the tenant's blob records.
    let blob = crate::model::BlobRecord {
        v: SCHEMA_VERSION,
        tenant: "q1".into(),
        hash: format!("blake3:{}", "ab".repeat(32)),
        size_bytes: 700,
        blob_key: "cas/q1/quota".into(),
        created_at: now,
    };
    store.put_blob_record_if_absent(&blob).await.unwrap();
    store.put_blob_record_if_absent(&blob).await.unwrap();
    assert_eq!(
        store.tenant_usage("q1").await.unwrap().stored_bytes,
        700,
        "counted once"
    );
    assert_eq!(store.tenant_usage("q2").await.unwrap().stored_bytes, 0);
    assert!(store.delete_blob_record("q1", &blob.hash).await.unwrap());
    assert_eq!(store.tenant_usage("q1").await.unwrap().stored_bytes, 0);
    assert_eq!(
        store.tenant_usage("nobody").await.unwrap(),
        crate::quota::TenantUsage::default()
    );
}

/// The JobStore's promises.
pub async fn job_store(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    let store = store.as_ref();
    let now = clock.now();

    // Create and read back, field for field (the price a job was accepted at too: its
    // cost is estimated from it, whatever the price is by then).
    let mut job = sample_job("t1", now, &[("project", "fox"), ("run", "1")]);
    job.gpu_price_per_hour = Some(1.212);
    create(store, &job).await;
    assert_eq!(
        store.get_job(&job.id).await.unwrap(),
        Some(job.clone()),
        "read back what was written"
    );
    assert_eq!(
        store.get_job(&JobId::generate()).await.unwrap(),
        None,
        "unknown id is None"
    );
    assert!(
        matches!(
            store.create_job(&job, None, now).await,
            Err(StoreError::Conflict)
        ),
        "creating an existing id must conflict"
    );

    // Conditional writes: the revision read must still be current.
    let mut next = job.clone();
    next.preemptions = 1;
    next.rev = 2;
    store
        .put_job(&next, 1)
        .await
        .expect("write at the right revision");
    assert_eq!(
        store
            .get_job(&job.id)
            .await
            .unwrap()
            .unwrap()
            .gpu_price_per_hour,
        Some(1.212),
        "a later write keeps the recorded price"
    );
    let mut stale = job.clone();
    stale.status = JobStatus::Canceled;
    stale.rev = 2;
    assert!(
        matches!(store.put_job(&stale, 1).await, Err(StoreError::Conflict)),
        "a write at a stale revision must conflict"
    );
    assert_eq!(store.get_job(&job.id).await.unwrap().unwrap(), next);

    // The enqueued flag: set apart from the record, without a revision, and never
    // cleared by a later write of a copy read before it was set.
    let mut unsent = next.clone();
    unsent.enqueued = true;
    unsent.rev = 3;
    store.put_job(&unsent, 2).await.expect("write");
    unsent.enqueued = false;
    assert!(
        !store.get_job(&job.id).await.unwrap().unwrap().enqueued,
        "put_job must not set the enqueued flag"
    );
    store.mark_enqueued(&job.id).await.expect("mark enqueued");
    store
        .mark_enqueued(&job.id)
        .await
        .expect("marking twice is fine");
    let sent = store.get_job(&job.id).await.unwrap().unwrap();
    assert!(sent.enqueued, "mark_enqueued sets the flag");
    assert_eq!(sent.rev, 3, "mark_enqueued does not touch the revision");
    let mut later = unsent.clone();
    later.rev = 4;
    store
        .put_job(&later, 3)
        .await
        .expect("a write from a copy read before the flag was set");
    assert!(
        store.get_job(&job.id).await.unwrap().unwrap().enqueued,
        "put_job must not clear the enqueued flag"
    );
    assert!(
        store
            .jobs_in_status(JobStatus::Queued, 1000)
            .await
            .unwrap()
            .iter()
            .any(|j| j.id == job.id && j.enqueued),
        "the flag reads back in every read path"
    );
    store
        .mark_enqueued(&JobId::generate())
        .await
        .expect("an unknown job is left alone");

    // Idempotency: the record is written with the job, and an unexpired one wins.
    let other = sample_job("t1", now, &[]);
    let record = IdempotencyRecord {
        v: SCHEMA_VERSION,
        tenant: "t1".into(),
        key: "key-1".into(),
        fingerprint: "f1".into(),
        job_id: other.id.clone(),
        created_at: now,
        expires_at: now + Duration::hours(24),
    };
    assert!(matches!(
        store.create_job(&other, Some(&record), now).await.unwrap(),
        CreateOutcome::Created { .. }
    ));
    assert_eq!(
        store.get_idempotency("t1", "key-1").await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store.get_idempotency("t2", "key-1").await.unwrap(),
        None,
        "keys are per tenant"
    );
    let loser = sample_job("t1", now, &[]);
    let mut loser_record = record.clone();
    loser_record.job_id = loser.id.clone();
    assert_eq!(
        store
            .create_job(&loser, Some(&loser_record), now)
            .await
            .unwrap(),
        CreateOutcome::KeyTaken(record.clone()),
        "an unexpired key is taken"
    );
    assert_eq!(
        store.get_job(&loser.id).await.unwrap(),
        None,
        "the loser's job is not written"
    );
    // After expiry the key can be used again.
    let later = now + Duration::hours(25);
    let mut fresh_record = loser_record.clone();
    fresh_record.created_at = later;
    fresh_record.expires_at = later + Duration::hours(24);
    assert!(
        matches!(
            store
                .create_job(&loser, Some(&fresh_record), later)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ),
        "an expired key is replaced"
    );
    // The same key in another tenant is independent.
    let t2_job = sample_job("t2", now, &[]);
    let mut t2_record = record.clone();
    t2_record.tenant = "t2".into();
    t2_record.job_id = t2_job.id.clone();
    assert!(matches!(
        store
            .create_job(&t2_job, Some(&t2_record), now)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // Listing: newest first, per tenant, filtered by every label, paged.
    let mut mine = Vec::new();
    for i in 0..5 {
        let label = if i % 2 == 0 { "even" } else { "odd" };
        let j = sample_job("lister", now, &[("parity", label), ("batch", "b")]);
        create(store, &j).await;
        mine.push(j.id.clone());
    }
    create(
        store,
        &sample_job("someone-else", now, &[("parity", "even")]),
    )
    .await;
    let query = |metadata: Vec<(&str, &str)>, before: Option<JobId>, limit| ListQuery {
        tenant: "lister".into(),
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        before,
        limit,
    };
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = ids(store.list_jobs(&query(vec![], None, 10)).await.unwrap());
    let newest_first: Vec<JobId> = mine.iter().rev().cloned().collect();
    assert_eq!(all, newest_first, "newest first, own tenant only");
    let even = ids(store
        .list_jobs(&query(vec![("parity", "even")], None, 10))
        .await
        .unwrap());
    assert_eq!(
        even,
        vec![mine[4].clone(), mine[2].clone(), mine[0].clone()]
    );
    let both = ids(store
        .list_jobs(&query(vec![("parity", "odd"), ("batch", "b")], None, 10))
        .await
        .unwrap());
    assert_eq!(
        both,
        vec![mine[3].clone(), mine[1].clone()],
        "every filter must match"
    );
    let none = store
        .list_jobs(&query(vec![("parity", "nope")], None, 10))
        .await
        .unwrap();
    assert!(none.is_empty());
    let page1 = ids(store.list_jobs(&query(vec![], None, 2)).await.unwrap());
    assert_eq!(page1, newest_first[..2]);
    let page2 = ids(store
        .list_jobs(&query(vec![], Some(page1[1].clone()), 2))
        .await
        .unwrap());
    assert_eq!(
        page2,
        newest_first[2..4],
        "paging continues below the cursor"
    );

    // Queue position and unclaimed counts follow status and reservations.
    let q = sample_job("pos", now, &[]);
    create(store, &q).await;
    let before_q = store.queue_position(&q.id, 1000).await.unwrap();
    let r = sample_job("pos", now, &[]);
    create(store, &r).await;
    assert_eq!(
        store.queue_position(&r.id, 1000).await.unwrap(),
        before_q + 1
    );
    assert_eq!(
        store.queue_position(&r.id, 1).await.unwrap(),
        1,
        "the count stops at the cap"
    );
    let snapshot = store.load_snapshot(&r.id, 1000).await.unwrap().unwrap();
    assert_eq!(snapshot.job, r);
    assert_eq!(snapshot.queue_position, Some(before_q + 1));
    assert_eq!(snapshot.progress, None);
    assert_eq!(
        store.load_snapshot(&JobId::generate(), 10).await.unwrap(),
        None
    );
    let unclaimed = store.count_unclaimed_queued(now, 1000).await.unwrap();
    assert_eq!(
        store.count_unclaimed_queued(now, 1).await.unwrap(),
        1,
        "the count stops at the cap"
    );
    let reserved = crate::lifecycle::apply(
        &r,
        &Move::Reserve {
            runner: "w".into(),
            until: now + Duration::seconds(10),
        },
        now,
    )
    .unwrap()
    .job;
    store.put_job(&reserved, r.rev).await.unwrap();
    assert_eq!(
        store.count_unclaimed_queued(now, 1000).await.unwrap(),
        unclaimed - 1,
        "a live reservation is not unclaimed"
    );
    assert_eq!(
        store
            .count_unclaimed_queued(now + Duration::seconds(11), 1000)
            .await
            .unwrap(),
        unclaimed,
        "a lapsed reservation is unclaimed again"
    );
    let queued_before = store.jobs_in_status(JobStatus::Queued, 1000).await.unwrap();
    assert!(queued_before.iter().any(|j| j.id == q.id));
    assert!(
        queued_before.windows(2).all(|w| w[0].id < w[1].id),
        "jobs_in_status is oldest first"
    );

    // Progress never goes back to an earlier attempt.
    let progress = |attempt, value| ProgressRecord {
        v: SCHEMA_VERSION,
        attempt,
        progress: Progress {
            value,
            ..Progress::default()
        },
        updated_at: now,
    };
    store.put_progress(&q.id, &progress(2, 0.5)).await.unwrap();
    store.put_progress(&q.id, &progress(1, 0.9)).await.unwrap();
    assert_eq!(
        store.get_progress(&q.id).await.unwrap(),
        Some(progress(2, 0.5)),
        "a stale attempt's progress is dropped"
    );
    store.put_progress(&q.id, &progress(2, 0.7)).await.unwrap();
    assert_eq!(
        store.get_progress(&q.id).await.unwrap(),
        Some(progress(2, 0.7))
    );
    assert_eq!(store.get_progress(&r.id).await.unwrap(), None);

    job_status_follows_the_moves(store, clock.as_ref()).await;

    // The fleet item is optimistic-locked, starting from revision 0.
    let fleet = store.get_fleet().await.unwrap();
    assert_eq!(fleet.rev, 0, "a fresh store has an unwritten fleet");
    let first = Fleet {
        v: SCHEMA_VERSION,
        rev: 1,
        desired: 2,
        ..Fleet::default()
    };
    store.put_fleet(&first, 0).await.unwrap();
    assert!(matches!(
        store.put_fleet(&first, 0).await,
        Err(StoreError::Conflict)
    ));
    let second = Fleet {
        rev: 2,
        desired: 3,
        ..first.clone()
    };
    store.put_fleet(&second, 1).await.unwrap();
    assert!(matches!(
        store.put_fleet(&second, 1).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_fleet().await.unwrap(), second);

    // Worker registry.
    let worker = |id: &str, phase| WorkerRecord {
        v: SCHEMA_VERSION,
        id: id.into(),
        phase,
        heartbeat_at: now,
        launched_at: now,
        detail: "test".into(),
    };
    store
        .put_worker(&worker("w1", WorkerPhase::Starting))
        .await
        .unwrap();
    store
        .put_worker(&worker("w2", WorkerPhase::Idle))
        .await
        .unwrap();
    store
        .put_worker(&worker("w1", WorkerPhase::Busy))
        .await
        .unwrap();
    let workers = store.list_workers().await.unwrap();
    assert_eq!(
        workers,
        vec![
            worker("w1", WorkerPhase::Busy),
            worker("w2", WorkerPhase::Idle)
        ]
    );
    store.delete_worker("w1").await.unwrap();
    store.delete_worker("never-there").await.unwrap();
    assert_eq!(store.list_workers().await.unwrap().len(), 1);
    store.ping().await.unwrap();
}

/// `job_status`, the read a runner polls every second: it names the status and attempt
/// of the job as moves leave it. It may be eventually consistent, so each check waits
/// (bounded) for the read to catch up with the write. And a progress write that comes
/// after the job ended is dropped.
async fn job_status_follows_the_moves(store: &dyn JobStore, clock: &dyn Clock) {
    let job = sample_job("status", clock.now(), &[]);
    create(store, &job).await;
    expect_status(store, &job.id, JobStatus::Queued, 0).await;
    let claim = Move::Claim {
        runner: "a".into(),
        lease: Duration::seconds(30),
        max_attempts: 3,
    };
    let job = apply_move(store, clock, job, &claim).await.unwrap();
    expect_status(store, &job.id, JobStatus::Running, 1).await;
    let progress = |value| ProgressRecord {
        v: SCHEMA_VERSION,
        attempt: 1,
        progress: Progress {
            value,
            ..Progress::default()
        },
        updated_at: clock.now(),
    };
    store.put_progress(&job.id, &progress(0.3)).await.unwrap();
    let job = apply_move(store, clock, job, &Move::Cancel).await.unwrap();
    expect_status(store, &job.id, JobStatus::Canceling, 1).await;
    store.put_progress(&job.id, &progress(0.4)).await.unwrap();
    let finish = Move::Finish {
        fence: Fence {
            owner: "a".into(),
            attempt: 1,
        },
        finish: Finish::Canceled,
    };
    let job = apply_move(store, clock, job, &finish).await.unwrap();
    expect_status(store, &job.id, JobStatus::Canceled, 1).await;
    // A runner that has not yet seen the end writes progress late: it is dropped.
    store.put_progress(&job.id, &progress(0.9)).await.unwrap();
    assert_eq!(
        store.get_progress(&job.id).await.unwrap(),
        Some(progress(0.4)),
        "a finished job's progress stays as it was when it ended"
    );
    assert_eq!(
        store
            .load_snapshot(&job.id, 10)
            .await
            .unwrap()
            .unwrap()
            .progress,
        Some(progress(0.4))
    );
    // A job that ended before any progress: none, before and after a late write.
    let early = sample_job("status", clock.now(), &[]);
    create(store, &early).await;
    let early = apply_move(store, clock, early, &Move::Cancel)
        .await
        .unwrap();
    assert_eq!(early.status, JobStatus::Canceled);
    assert_eq!(store.get_progress(&early.id).await.unwrap(), None);
    store.put_progress(&early.id, &progress(0.5)).await.unwrap();
    assert_eq!(store.get_progress(&early.id).await.unwrap(), None);
    assert_eq!(
        store
            .load_snapshot(&early.id, 10)
            .await
            .unwrap()
            .unwrap()
            .progress,
        None
    );
    assert_eq!(
        store.job_status(&JobId::generate()).await.unwrap(),
        None,
        "an unknown job has no status"
    );
}

async fn expect_status(store: &dyn JobStore, id: &JobId, status: JobStatus, attempt: u32) {
    let want = Some(crate::ports::JobStatusRead { status, attempt });
    let mut read = None;
    for _ in 0..50 {
        read = store.job_status(id).await.expect("job_status");
        if read == want {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    panic!("job_status must catch up with the moves within 5 s: want {want:?}, read {read:?}");
}

const VIS: StdDuration = StdDuration::from_secs(30);
const NO_WAIT: StdDuration = StdDuration::ZERO;

/// SQS's exact semantics, for a queue with no injected faults. `max_receive_count` is
/// what the adapter was built with. Stale receipts must be refused.
pub async fn queue_strict(queue: Arc<dyn Queue>, time: &dyn TimeControl, max_receive_count: u32) {
    queue_semantics(queue, time, max_receive_count, true).await
}

/// [`queue_strict`] for SQS itself, which promises less about stale receipts: a
/// delete or visibility change with a receipt from an earlier receive, or a second
/// delete, may be refused (`StaleReceipt`) *or* answer Ok (and a stale delete may
/// even act, as moto's does), as the `Queue` port documents. Every other check holds.
pub async fn queue_sqs(queue: Arc<dyn Queue>, time: &dyn TimeControl, max_receive_count: u32) {
    queue_semantics(queue, time, max_receive_count, false).await
}

async fn queue_semantics(
    queue: Arc<dyn Queue>,
    time: &dyn TimeControl,
    max_receive_count: u32,
    stale_receipts_refused: bool,
) {
    let q = QueueName::Work;
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "a new queue is empty"
    );

    queue.send(q, "a").await.unwrap();
    let depth = queue.depth(q).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (1, 0));
    let first = queue.receive(q, 10, NO_WAIT, VIS).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, "a");
    assert_eq!(first[0].receive_count, 1);
    let depth = queue.depth(q).await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 1),
        "received means in flight"
    );
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "a received message is hidden for its visibility timeout"
    );

    // Visibility lapses: the message comes back with a new receipt and a higher count.
    time.advance(VIS + StdDuration::from_secs(1)).await;
    let second = queue.receive(q, 1, NO_WAIT, VIS).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(
        second[0].receipt, first[0].receipt,
        "each receive mints a receipt"
    );
    if stale_receipts_refused {
        assert!(
            matches!(
                queue.delete(q, &first[0].receipt).await,
                Err(QueueError::StaleReceipt)
            ),
            "the old receipt is stale"
        );
        assert!(matches!(
            queue.change_visibility(q, &first[0].receipt, VIS).await,
            Err(QueueError::StaleReceipt)
        ));
    } else {
        // A stale delete's effect is undefined on SQS (ignored, or acting), so it is
        // not tried here; a stale visibility change may be refused or accepted.
        assert!(matches!(
            queue.change_visibility(q, &first[0].receipt, VIS).await,
            Ok(()) | Err(QueueError::StaleReceipt)
        ));
    }

    // Change visibility: extend, then reveal at once.
    queue
        .change_visibility(q, &second[0].receipt, StdDuration::from_secs(120))
        .await
        .unwrap();
    time.advance(VIS + StdDuration::from_secs(1)).await;
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "extended visibility holds"
    );
    queue
        .change_visibility(q, &second[0].receipt, StdDuration::ZERO)
        .await
        .unwrap();
    let third = queue.receive(q, 1, NO_WAIT, VIS).await.unwrap();
    assert_eq!(third.len(), 1, "visibility zero reveals at once");
    queue.delete(q, &third[0].receipt).await.unwrap();
    let again = queue.delete(q, &third[0].receipt).await;
    if stale_receipts_refused {
        assert!(matches!(again, Err(QueueError::StaleReceipt)));
    } else {
        assert!(matches!(again, Ok(()) | Err(QueueError::StaleReceipt)));
    }
    let depth = queue.depth(q).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "deleted is gone");

    // Batches, and queues are separate.
    for body in ["1", "2", "3"] {
        queue.send(q, body).await.unwrap();
    }
    queue.send(QueueName::Wake, "w").await.unwrap();
    let batch = queue.receive(q, 2, NO_WAIT, VIS).await.unwrap();
    assert_eq!(batch.len(), 2, "at most `max`");
    let rest = queue.receive(q, 10, NO_WAIT, VIS).await.unwrap();
    assert_eq!(rest.len(), 1);
    for m in batch.iter().chain(&rest) {
        assert_ne!(m.body, "w", "the wake queue is separate");
        queue.delete(q, &m.receipt).await.unwrap();
    }
    let wake = queue
        .receive(QueueName::Wake, 10, NO_WAIT, VIS)
        .await
        .unwrap();
    assert_eq!(wake.len(), 1);
    queue
        .delete(QueueName::Wake, &wake[0].receipt)
        .await
        .unwrap();

    // Dead-lettering after max_receive_count receives.
    queue.send(q, "poison").await.unwrap();
    for n in 1..=max_receive_count {
        let got = queue
            .receive(q, 1, NO_WAIT, StdDuration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "receive {n} of {max_receive_count}");
        assert_eq!(got[0].receive_count, n);
    }
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "past max_receive_count the message is dead-lettered, not delivered"
    );
    let dead = queue
        .receive(QueueName::WorkDeadLetter, 1, NO_WAIT, VIS)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    queue
        .delete(QueueName::WorkDeadLetter, &dead[0].receipt)
        .await
        .unwrap();

    // Long polling returns as soon as a message arrives.
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.receive(q, 1, StdDuration::from_secs(10), VIS).await })
    };
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    queue.send(q, "late").await.unwrap();
    let got = tokio::time::timeout(StdDuration::from_secs(5), waiter)
        .await
        .expect("long poll must return when a message arrives")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "late");
    queue.delete(q, &got[0].receipt).await.unwrap();
}

/// What holds under injected faults: every message sent is received at least once,
/// and a consumer that deletes what it processed (retrying what comes back) drains the
/// queue. Uses short visibility timeouts and real time.
pub async fn queue_at_least_once(queue: Arc<dyn Queue>, messages: usize) {
    let q = QueueName::Work;
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..messages {
        let body = format!("m{i}");
        queue.send(q, &body).await.unwrap();
        expected.insert(body);
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    loop {
        let depth = queue.depth(q).await.unwrap();
        if seen.len() == expected.len() && depth.visible + depth.in_flight == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain: seen {}/{}, depth {depth:?}",
            seen.len(),
            expected.len()
        );
        let batch = queue
            .receive(
                q,
                5,
                StdDuration::from_millis(50),
                StdDuration::from_millis(200),
            )
            .await
            .unwrap();
        for m in batch {
            seen.insert(m.body.clone());
            // A stale receipt means someone else holds it now; it will come back.
            let _ = queue.delete(q, &m.receipt).await;
        }
    }
    assert_eq!(seen, expected, "every message sent was received");
}

/// What the simulated runners recorded: successful finishing writes per job.
#[derive(Default)]
struct Ledger {
    commits: HashMap<JobId, Vec<Fence>>,
    fenced_out: u32,
    pushed_back: u32,
}

/// Several simulated runners work through `jobs` jobs concurrently over the store and
/// the queue. Every job must end `succeeded`, committed exactly once, listing exactly
/// its finishing attempt's outputs, whatever the queue does.
pub async fn lease_protocol(
    store: Arc<dyn JobStore>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    runners: usize,
    jobs: usize,
) {
    let now = clock.now();
    let mut ids = Vec::new();
    for _ in 0..jobs {
        let job = sample_job("chaos", now, &[]);
        create(store.as_ref(), &job).await;
        let body = serde_json::to_string(&WorkMessage {
            v: SCHEMA_VERSION,
            job_id: job.id.clone(),
        })
        .unwrap();
        queue.send(QueueName::Work, &body).await.unwrap();
        ids.push(job.id);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let lease = Duration::seconds(5);
    let mut tasks = Vec::new();
    for r in 0..runners {
        let (store, queue, clock, ledger, ids) = (
            store.clone(),
            queue.clone(),
            clock.clone(),
            ledger.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let runner = format!("runner-{r}");
            let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
            loop {
                let mut all_done = true;
                for id in &ids {
                    let job = store.get_job(id).await.unwrap().unwrap();
                    if !job.status.is_terminal() {
                        all_done = false;
                        break;
                    }
                }
                if all_done {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "runners did not finish all jobs"
                );
                let batch = queue
                    .receive(
                        QueueName::Work,
                        1,
                        StdDuration::from_millis(20),
                        StdDuration::from_secs(5),
                    )
                    .await
                    .unwrap();
                for message in batch {
                    let work: WorkMessage = serde_json::from_str(&message.body).unwrap();
                    let job = store.get_job(&work.job_id).await.unwrap().unwrap();
                    if job.status.is_terminal() {
                        let _ = queue.delete(QueueName::Work, &message.receipt).await;
                        continue;
                    }
                    let claim = Move::Claim {
                        runner: runner.clone(),
                        lease,
                        max_attempts: 3,
                    };
                    let claimed =
                        match apply_move(store.as_ref(), clock.as_ref(), job, &claim).await {
                            Ok(job) => job,
                            Err(MoveError::Refused(
                                Refusal::LeaseHeld { .. } | Refusal::Reserved { .. },
                            )) => {
                                // Another runner holds it: push the copy back, never delete it.
                                ledger.lock().unwrap().pushed_back += 1;
                                let _ = queue
                                    .change_visibility(
                                        QueueName::Work,
                                        &message.receipt,
                                        StdDuration::from_millis(100),
                                    )
                                    .await;
                                continue;
                            }
                            Err(MoveError::Refused(_)) => continue,
                            Err(e) => panic!("claim failed: {e}"),
                        };
                    if claimed.status != JobStatus::Running
                        || claimed.lease_owner.as_deref() != Some(&runner)
                    {
                        continue;
                    }
                    let fence = Fence {
                        owner: runner.clone(),
                        attempt: claimed.attempt,
                    };
                    // "Execute" long enough for duplicate deliveries to overlap.
                    tokio::time::sleep(StdDuration::from_millis(10)).await;
                    let output = OutputRecord {
                        node_id: "9".into(),
                        name: format!("{}_{}.png", fence.owner, fence.attempt),
                        kind: OutputKind::Image,
                        content_type: "image/png".into(),
                        size_bytes: 1,
                        asset_id: format!("asset_{}_{}", claimed.id, fence.attempt),
                        hash: None,
                        blob_key: format!("outputs/{}/{}/out.png", claimed.id, fence.attempt),
                    };
                    let finish = Move::Finish {
                        fence: fence.clone(),
                        finish: Finish::Succeeded {
                            outputs: vec![output],
                        },
                    };
                    match apply_move(store.as_ref(), clock.as_ref(), claimed.clone(), &finish).await
                    {
                        Ok(_) => {
                            ledger
                                .lock()
                                .unwrap()
                                .commits
                                .entry(claimed.id.clone())
                                .or_default()
                                .push(fence);
                            let _ = queue.delete(QueueName::Work, &message.receipt).await;
                        }
                        Err(MoveError::Refused(_)) => ledger.lock().unwrap().fenced_out += 1,
                        Err(e) => panic!("finish failed: {e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("runner task panicked");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    for id in &ids {
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(
            job.status,
            JobStatus::Succeeded,
            "job {id} ended {}",
            job.status
        );
        let commits = ledger.commits.get(id).map(Vec::len).unwrap_or(0);
        assert_eq!(commits, 1, "job {id} was committed {commits} times");
        let fence = &ledger.commits[id][0];
        assert_eq!(
            job.attempt, fence.attempt,
            "the stored attempt is the finishing one"
        );
        assert_eq!(
            job.outputs.len(),
            1,
            "exactly the finishing attempt's outputs"
        );
        assert!(
            job.outputs[0]
                .blob_key
                .contains(&format!("/{}/", fence.attempt))
        );
    }
}

/// A stalled runner that wakes after a takeover is fenced out, through a real store.
pub async fn stalled_runner_is_fenced(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    let job = sample_job("fence", clock.now(), &[]);
    create(store.as_ref(), &job).await;
    let lease = Duration::seconds(30);
    let claim = |runner: &str| Move::Claim {
        runner: runner.into(),
        lease,
        max_attempts: 3,
    };
    let a = apply_move(store.as_ref(), clock.as_ref(), job, &claim("a"))
        .await
        .unwrap();
    assert_eq!(a.attempt, 1);
    clock.advance(Duration::seconds(31));
    let b = apply_move(store.as_ref(), clock.as_ref(), a.clone(), &claim("b"))
        .await
        .unwrap();
    assert_eq!((b.attempt, b.lease_owner.as_deref()), (2, Some("b")));
    // Runner a wakes with its stale copy; the write re-reads and is refused.
    let finish_a = Move::Finish {
        fence: Fence {
            owner: "a".into(),
            attempt: 1,
        },
        finish: Finish::Succeeded { outputs: vec![] },
    };
    let refused = apply_move(store.as_ref(), clock.as_ref(), a, &finish_a).await;
    assert!(
        matches!(refused, Err(MoveError::Refused(Refusal::Fenced))),
        "stale runner must be fenced, got {refused:?}"
    );
    let stored = store.get_job(&b.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running);
    assert_eq!(stored.lease_owner.as_deref(), Some("b"));
}

/// The asset and upload records' promises: reference checks over `(tenant, hash)` and
/// blob key, the dedup record's delete, and expired uploads listed oldest first, bounded.
pub async fn asset_records(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    use crate::model::{Asset, BlobRecord, UploadRecord};
    let store = store.as_ref();
    let now = clock.now();
    let hash = format!("blake3:{}", "ab".repeat(32));
    let asset = |id: &str, tenant: &str, key: &str| Asset {
        v: SCHEMA_VERSION,
        id: id.into(),
        tenant: tenant.into(),
        hash: hash.clone(),
        size_bytes: 3,
        content_type: "image/png".into(),
        file_path: Some("a.png".into()),
        tags: vec![],
        created_at: now,
        blob_key: key.into(),
        job_id: None,
    };
    let referenced = |tenant: &'static str, key: Option<&'static str>| {
        let hash = hash.clone();
        async move { store.is_blob_referenced(tenant, &hash, key).await.unwrap() }
    };
    assert!(!referenced("t1", None).await, "no asset yet");
    store
        .put_asset(&asset("asset_a", "t1", "cas/t1/x"))
        .await
        .unwrap();
    store
        .put_asset(&asset("asset_b", "t1", "outputs/j/1/o.png"))
        .await
        .unwrap();
    assert!(referenced("t1", None).await);
    assert!(referenced("t1", Some("cas/t1/x")).await);
    assert!(referenced("t1", Some("outputs/j/1/o.png")).await);
    assert!(!referenced("t1", Some("cas/t1/other")).await, "by key");
    assert!(
        !referenced("t2", None).await,
        "another tenant's asset is no reference"
    );
    assert!(store.delete_asset("asset_b").await.unwrap());
    assert!(
        !referenced("t1", Some("outputs/j/1/o.png")).await,
        "deleted"
    );
    assert!(referenced("t1", None).await, "asset_a remains");
    assert!(store.delete_asset("asset_a").await.unwrap());
    assert!(!referenced("t1", None).await, "none left");

    let record = BlobRecord {
        v: SCHEMA_VERSION,
        tenant: "t1".into(),
        hash: hash.clone(),
        size_bytes: 3,
        blob_key: "cas/t1/x".into(),
        created_at: now,
    };
    store.put_blob_record_if_absent(&record).await.unwrap();
    let other_tenant = BlobRecord {
        tenant: "t2".into(),
        ..record.clone()
    };
    store
        .put_blob_record_if_absent(&other_tenant)
        .await
        .unwrap();
    assert!(store.delete_blob_record("t1", &hash).await.unwrap());
    assert!(
        !store.delete_blob_record("t1", &hash).await.unwrap(),
        "gone"
    );
    assert_eq!(store.get_blob_record("t1", &hash).await.unwrap(), None);
    assert_eq!(
        store.get_blob_record("t2", &hash).await.unwrap(),
        Some(other_tenant),
        "only the tenant's record goes"
    );
    let (again, created) = store.put_blob_record_if_absent(&record).await.unwrap();
    assert!(
        created && again == record,
        "a deleted record can be written again"
    );

    let upload = |n: u32, expires_at: DateTime<Utc>| UploadRecord {
        v: SCHEMA_VERSION,
        id: format!("upload_{n:02}"),
        tenant: "t1".into(),
        blob_key: format!("uploads/upload_{n:02}"),
        max_bytes: 10,
        content_type: "image/png".into(),
        file_path: "a.png".into(),
        expected_hash: None,
        tags: vec![],
        created_at: now,
        expires_at,
    };
    // Sub-second expiries, so an adapter that compares timestamps as text is caught.
    let ms = Duration::milliseconds;
    store.put_upload(&upload(1, now - ms(1500))).await.unwrap();
    store.put_upload(&upload(2, now)).await.unwrap();
    store.put_upload(&upload(3, now + ms(1))).await.unwrap();
    store
        .put_upload(&upload(4, now - Duration::hours(2)))
        .await
        .unwrap();
    store.put_upload(&upload(5, now + ms(500))).await.unwrap();
    let ids = |uploads: Vec<UploadRecord>| uploads.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.expired_uploads(now, 10).await.unwrap()),
        ["upload_01", "upload_02", "upload_04"],
        "expired at or before now, in id order"
    );
    assert_eq!(
        ids(store.expired_uploads(now, 2).await.unwrap()),
        ["upload_01", "upload_02"],
        "bounded"
    );
    clock.advance(ms(600));
    assert_eq!(
        ids(store.expired_uploads(clock.now(), 10).await.unwrap()),
        [
            "upload_01",
            "upload_02",
            "upload_03",
            "upload_04",
            "upload_05"
        ]
    );
    store.delete_upload("upload_01").await.unwrap();
    assert_eq!(store.get_upload("upload_01").await.unwrap(), None);
    assert_eq!(
        store.expired_uploads(clock.now(), 10).await.unwrap().len(),
        4
    );
}

/// Retention: finished jobs past `expires_at` found in deadline order (never a live
/// one), deleted with their labels and progress while the queued count and tenant
/// usage stay right; a job's assets found by job; expired idempotency records
/// deleted in bounded batches; jobs counted by status.
pub async fn retention_records(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    use crate::model::Asset;
    let store = store.as_ref();
    let now = clock.now();
    let finish = |job: &Job, status: JobStatus, expires_at: DateTime<Utc>| {
        let mut done = job.clone();
        done.status = status;
        done.completed_at = Some(now);
        done.expires_at = expires_at;
        done.rev += 1;
        done
    };
    // A live job whose `expires_at` has long passed: never swept.
    let mut live = sample_job("r1", now, &[("k", "live")]);
    live.expires_at = now - Duration::days(30);
    create(store, &live).await;
    let late = sample_job("r1", now, &[("k", "late")]);
    let early = sample_job("r1", now, &[("k", "early"), ("x", "1")]);
    let other = sample_job("r2", now, &[]);
    for job in [&late, &early, &other] {
        create(store, job).await;
    }
    let h = Duration::hours;
    let late_done = finish(&late, JobStatus::Canceled, now + h(3));
    let early_done = finish(&early, JobStatus::Succeeded, now + h(1));
    let other_done = finish(&other, JobStatus::Failed, now + h(2));
    for done in [&late_done, &early_done, &other_done] {
        store.put_job(done, done.rev - 1).await.unwrap();
    }
    store
        .put_progress(
            &early.id,
            &ProgressRecord {
                v: SCHEMA_VERSION,
                attempt: 1,
                progress: Progress::default(),
                updated_at: now,
            },
        )
        .await
        .unwrap();
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.expired_jobs(now, 10).await.unwrap()),
        Vec::<JobId>::new(),
        "nothing finished has expired yet; a live job never has"
    );
    clock.advance(h(2));
    let t = clock.now();
    assert_eq!(
        ids(store.expired_jobs(t, 10).await.unwrap()),
        [early.id.clone(), other.id.clone()],
        "finished jobs expired at or before now, earliest deadline first"
    );
    assert_eq!(
        ids(store.expired_jobs(t, 1).await.unwrap()),
        std::slice::from_ref(&early.id),
        "bounded"
    );

    let asset = |id: &str, job: Option<&JobId>| Asset {
        v: SCHEMA_VERSION,
        id: id.into(),
        tenant: "r1".into(),
        hash: format!("blake3:{}", "cd".repeat(32)),
        size_bytes: 3,
        content_type: "image/png".into(),
        file_path: Some("o.png".into()),
        tags: vec![],
        created_at: now,
        blob_key: format!("outputs/{id}"),
        job_id: job.cloned(),
    };
    for a in [
        asset("asset_r1", Some(&early.id)),
        asset("asset_r2", Some(&early.id)),
        asset("asset_r3", Some(&late.id)),
        asset("asset_r4", None),
    ] {
        store.put_asset(&a).await.unwrap();
    }
    let asset_ids = |assets: Vec<Asset>| assets.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        asset_ids(store.job_assets(&early.id, 10).await.unwrap()),
        ["asset_r1", "asset_r2"],
        "a job's assets, and only its own"
    );
    assert_eq!(store.job_assets(&early.id, 1).await.unwrap().len(), 1);

    let counts = |c: Vec<(JobStatus, u64)>| c.into_iter().collect::<HashMap<_, _>>();
    let before = counts(store.count_jobs_by_status().await.unwrap());
    assert_eq!(before.get(&JobStatus::Queued), Some(&1));
    assert_eq!(before.get(&JobStatus::Succeeded), Some(&1));
    assert_eq!(before.get(&JobStatus::Failed), Some(&1));
    assert_eq!(before.get(&JobStatus::Canceled), Some(&1));

    assert!(store.delete_job(&early.id).await.unwrap());
    assert!(!store.delete_job(&early.id).await.unwrap(), "already gone");
    assert_eq!(store.get_job(&early.id).await.unwrap(), None);
    assert_eq!(
        store.get_progress(&early.id).await.unwrap(),
        None,
        "its progress goes with it"
    );
    let labelled = |k: &str, v: &str| ListQuery {
        tenant: "r1".into(),
        metadata: vec![(k.into(), v.into())],
        before: None,
        limit: 10,
    };
    assert!(
        store
            .list_jobs(&labelled("k", "early"))
            .await
            .unwrap()
            .is_empty(),
        "its labels go with it"
    );
    assert_eq!(
        ids(store.list_jobs(&labelled("k", "late")).await.unwrap()),
        std::slice::from_ref(&late.id)
    );
    assert_eq!(
        ids(store.expired_jobs(t, 10).await.unwrap()),
        std::slice::from_ref(&other.id)
    );

    // Deleting a live job (not the sweep's doing, but the store's promise) keeps the
    // queued count and the tenant's active jobs right.
    let usage = store.tenant_usage("r1").await.unwrap().active_jobs;
    assert_eq!(usage, 1, "only the live job is active");
    let spare = sample_job("r1", now, &[]);
    create(store, &spare).await;
    assert_eq!(store.count_unclaimed_queued(t, 100).await.unwrap(), 2);
    assert!(store.delete_job(&live.id).await.unwrap());
    assert_eq!(store.count_unclaimed_queued(t, 100).await.unwrap(), 1);
    assert_eq!(store.tenant_usage("r1").await.unwrap().active_jobs, 1);
    assert_eq!(
        store
            .queue_position(&spare.id, QUEUE_POSITION_CAP)
            .await
            .unwrap(),
        0,
        "the deleted job no longer counts ahead"
    );
    let after = counts(store.count_jobs_by_status().await.unwrap());
    assert_eq!(after.get(&JobStatus::Queued), Some(&1));
    assert_eq!(after.get(&JobStatus::Succeeded).copied().unwrap_or(0), 0);

    // Idempotency records: only expired ones go, at most `limit` at a time.
    for (n, expires_in) in [(1, h(-3)), (2, h(-1)), (3, Duration::zero()), (4, h(1))] {
        let job = sample_job("r3", now, &[]);
        let record = IdempotencyRecord {
            v: SCHEMA_VERSION,
            tenant: "r3".into(),
            key: format!("key-{n}"),
            fingerprint: "f".into(),
            job_id: job.id.clone(),
            created_at: now,
            expires_at: t + expires_in,
        };
        store.create_job(&job, Some(&record), now).await.unwrap();
    }
    let present = |n: u32| async move {
        store
            .get_idempotency("r3", &format!("key-{n}"))
            .await
            .unwrap()
            .is_some()
    };
    assert_eq!(store.delete_expired_idempotency(t, 2).await.unwrap(), 2);
    assert_eq!(store.delete_expired_idempotency(t, 10).await.unwrap(), 1);
    assert_eq!(store.delete_expired_idempotency(t, 10).await.unwrap(), 0);
    assert!(!present(1).await && !present(2).await && !present(3).await);
    assert!(present(4).await, "an unexpired record stays");
}

/// Reads a whole blob, or a range of it, through [`BlobStore::read`].
async fn read_blob(blobs: &dyn BlobStore, key: &str, range: Option<(u64, u64)>) -> Option<Vec<u8>> {
    use futures::StreamExt;
    let read = blobs.read(key, range).await.expect("read")?;
    let mut bytes = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    Some(bytes)
}

/// A deterministic blob of `size` bytes, different for each `seed`.
fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The BlobStore's promises. Sizes straddle any small-blob threshold an adapter may
/// have (1 KiB and 300 KiB), and every case mixes them, because "the newest write
/// wins" must hold across the two.
pub async fn blob_store(blobs: Arc<dyn BlobStore>) {
    use bytes::Bytes;
    use futures::StreamExt;
    let small = pattern(1024, 1);
    let large = pattern(300 * 1024, 2);
    let blobs = blobs.as_ref();

    // Expiring a prefix never takes a blob younger than the cutoff (an adapter whose
    // service expires by itself may take none at all), nor one outside the prefix.
    let staged =
        || futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(large.clone()))]).boxed();
    blobs
        .put_stream("staging/conformance", staged(), 1 << 20)
        .await
        .unwrap();
    blobs
        .put_stream("kept/conformance", staged(), 1 << 20)
        .await
        .unwrap();
    let hour_ago = Utc::now() - Duration::hours(1);
    assert_eq!(
        blobs.expire_prefix("staging/", hour_ago, 10).await.unwrap(),
        0,
        "a young blob stays"
    );
    assert!(blobs.size("staging/conformance").await.unwrap().is_some());
    let later = Utc::now() + Duration::minutes(1);
    assert!(blobs.expire_prefix("staging/", later, 10).await.unwrap() <= 1);
    assert!(
        blobs.size("kept/conformance").await.unwrap().is_some(),
        "only under the prefix"
    );
    blobs.delete("staging/conformance").await.unwrap();
    blobs.delete("kept/conformance").await.unwrap();

    // Missing keys are absent, not errors.
    assert_eq!(blobs.get("conformance/missing").await.unwrap(), None);
    assert_eq!(blobs.size("conformance/missing").await.unwrap(), None);
    assert!(
        read_blob(blobs, "conformance/missing", None)
            .await
            .is_none()
    );
    blobs
        .delete("conformance/missing")
        .await
        .expect("deleting nothing is fine");

    for (name, bytes) in [("small", &small), ("large", &large)] {
        let key = format!("conformance/{name}");
        blobs
            .put(&key, Bytes::from(bytes.clone()), "application/octet-stream")
            .await
            .unwrap();
        assert_eq!(
            blobs.get(&key).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "{name}: get"
        );
        assert_eq!(
            blobs.size(&key).await.unwrap(),
            Some(bytes.len() as u64),
            "{name}: size"
        );
        assert_eq!(
            read_blob(blobs, &key, None).await.as_deref(),
            Some(&bytes[..]),
            "{name}: read"
        );
        assert_eq!(
            read_blob(blobs, &key, Some((10, 19))).await.as_deref(),
            Some(&bytes[10..20]),
            "{name}: an inclusive range"
        );
        let last = bytes.len() as u64 - 1;
        assert_eq!(
            read_blob(blobs, &key, Some((last, last))).await.as_deref(),
            Some(&bytes[bytes.len() - 1..]),
            "{name}: the last byte"
        );
        let read = blobs.read(&key, Some((0, 0))).await.unwrap().unwrap();
        assert_eq!(
            read.size,
            bytes.len() as u64,
            "{name}: a ranged read reports the whole size"
        );
    }

    // Overwrites: small → large → small, the newest always wins.
    let key = "conformance/overwritten";
    for (step, bytes) in [&small, &large, &small, &large].into_iter().enumerate() {
        blobs
            .put(key, Bytes::from(bytes.clone()), "application/octet-stream")
            .await
            .unwrap();
        assert_eq!(
            blobs.get(key).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "overwrite {step}"
        );
        assert_eq!(
            blobs.size(key).await.unwrap(),
            Some(bytes.len() as u64),
            "overwrite {step}"
        );
    }

    // A streamed write replaces a small blob, and refuses past its limit leaving the
    // old one.
    let key = "conformance/streamed";
    blobs
        .put(key, Bytes::from(small.clone()), "application/json")
        .await
        .unwrap();
    let chunks: Vec<Result<Bytes, std::io::Error>> = large
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let written = blobs
        .put_stream(
            key,
            Box::pin(futures::stream::iter(chunks)),
            large.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(written, large.len() as u64);
    assert_eq!(
        blobs.get(key).await.unwrap().as_deref(),
        Some(&large[..]),
        "streamed write wins"
    );
    let too_much: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(large.clone()))];
    let refused = blobs
        .put_stream(key, Box::pin(futures::stream::iter(too_much)), 1000)
        .await;
    assert!(matches!(
        refused,
        Err(BlobWriteError::TooLarge { max_bytes: 1000 })
    ));
    assert_eq!(
        blobs.get(key).await.unwrap().as_deref(),
        Some(&large[..]),
        "a refused write changes nothing"
    );

    // Renames, of each kind, onto a key that holds the other kind.
    for (name, bytes, other) in [("small", &small, &large), ("large", &large, &small)] {
        let (from, to) = (
            format!("conformance/rename-{name}-from"),
            format!("conformance/rename-{name}-to"),
        );
        blobs
            .put(
                &from,
                Bytes::from(bytes.clone()),
                "application/octet-stream",
            )
            .await
            .unwrap();
        blobs
            .put(&to, Bytes::from(other.clone()), "application/octet-stream")
            .await
            .unwrap();
        blobs.rename(&from, &to).await.unwrap();
        assert_eq!(
            blobs.get(&from).await.unwrap(),
            None,
            "{name}: renamed away"
        );
        assert_eq!(
            blobs.get(&to).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "{name}: renamed onto"
        );
        assert_eq!(blobs.size(&to).await.unwrap(), Some(bytes.len() as u64));
    }

    // Deletes remove either kind.
    for key in [
        "conformance/small",
        "conformance/large",
        "conformance/overwritten",
    ] {
        blobs.delete(key).await.unwrap();
        assert_eq!(blobs.get(key).await.unwrap(), None, "{key} deleted");
        assert_eq!(blobs.size(key).await.unwrap(), None, "{key} deleted");
    }
}
