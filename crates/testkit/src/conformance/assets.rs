//! Asset, upload and retention records.

use super::*;

/// The asset and upload records' promises: reference checks over `(tenant, hash)` and
/// blob key, the dedup record's delete, and expired uploads listed oldest first, bounded.
pub async fn asset_records(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    use jobs::model::{Asset, BlobRecord, UploadRecord};
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
    use jobs::model::Asset;
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
