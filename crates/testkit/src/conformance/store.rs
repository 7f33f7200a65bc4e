//! The JobStore's core promises: conditional moves, idempotency, listing, progress, fleet and workers.

use super::*;

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
    let reserved = jobs::lifecycle::apply(
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
    let want = Some(jobs::ports::JobStatusRead { status, attempt });
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
