//! `DynamoJobStore` against moto_server, with the real SDK client: the shared store
//! conformance checks, the fencing check, and the lease protocol over the store and
//! SQS, with and without the fault-injecting queue.
//!
//! Where moto is kinder than DynamoDB: **TTL never deletes** (only the setting is
//! stored), so expiry is covered by the store filtering expired jobs itself, on its
//! clock (`expired_jobs_are_not_read`); moto's indexes update at once, while a real
//! GSI lags by a fraction of a second (nothing here reads an index to decide a write:
//! every move is a conditional write on the base table).

mod common;

use std::sync::Arc;

use aws::DynamoJobStore;
use aws::dynamodb::create_table;
use chrono::{Duration, TimeZone, Utc};
use jobs::conformance;
use jobs::ports::{Clock, JobStore, ManualClock, Queue, SystemClock};
use local::faults::{Faults, FaultyQueue};

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ))
}

async fn fresh_store(clock: Arc<dyn Clock>) -> DynamoJobStore {
    let client = common::clients().await.dynamodb;
    let table = common::unique("t");
    create_table(&client, &table).await.expect("create table");
    DynamoJobStore::new(client, table, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_conformance() {
    let clock = manual_clock();
    let store = Arc::new(fresh_store(clock.clone()).await);
    conformance::job_store(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_runner_is_fenced_through_the_store() {
    let clock = manual_clock();
    let store = Arc::new(fresh_store(clock.clone()).await);
    conformance::stalled_runner_is_fenced(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_without_faults() {
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    conformance::lease_protocol(store, queue, Arc::new(SystemClock), 4, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_with_faults() {
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    let faulty = Arc::new(FaultyQueue::new(queue, Faults::CHAOTIC, 7));
    conformance::lease_protocol(store, faulty, Arc::new(SystemClock), 4, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jobs_are_not_read() {
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let job = conformance::sample_job("t", clock.now(), &[]);
    store.create_job(&job, None, clock.now()).await.unwrap();
    assert!(store.get_job(&job.id).await.unwrap().is_some());
    clock.advance(job.expires_at - clock.now() + Duration::seconds(1));
    assert_eq!(
        store.get_job(&job.id).await.unwrap(),
        None,
        "past expires_at the job is gone, whether or not TTL has deleted it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_blob_records_keys_and_uploads_round_trip() {
    use jobs::model::{ApiKeyRecord, Asset, BlobRecord, SCHEMA_VERSION, UploadRecord};
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let now = clock.now();
    let asset = |id: &str, tenant: &str, path: Option<&str>, at: i64| Asset {
        v: SCHEMA_VERSION,
        id: id.into(),
        tenant: tenant.into(),
        hash: "blake3:aa".into(),
        size_bytes: 3,
        content_type: "image/png".into(),
        file_path: path.map(str::to_string),
        tags: vec![],
        created_at: now + Duration::seconds(at),
        blob_key: "assets/blake3:aa".into(),
        job_id: None,
    };
    for a in [
        asset("a1", "t", Some("x.png"), 1),
        asset("a2", "t", Some("x.png"), 2),
        asset("a3", "t", None, 3),
        // The same hash in another tenant, and a tenant whose name spells a prefix.
        asset("a4", "t#", Some("x.png"), 4),
    ] {
        store.put_asset(&a).await.unwrap();
    }
    assert_eq!(store.get_asset("a1").await.unwrap().unwrap().id, "a1");
    let found = |path: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .find_asset("t", "blake3:aa", path)
                .await
                .unwrap()
                .map(|a| a.id)
        }
    };
    assert_eq!(
        found(Some("x.png")).await.as_deref(),
        Some("a2"),
        "the newest"
    );
    assert_eq!(found(None).await.as_deref(), Some("a3"));
    assert_eq!(found(Some("y.png")).await, None);
    assert!(store.delete_asset("a2").await.unwrap());
    assert!(!store.delete_asset("a2").await.unwrap(), "already gone");
    assert_eq!(found(Some("x.png")).await.as_deref(), Some("a1"));

    let record = BlobRecord {
        v: SCHEMA_VERSION,
        tenant: "t".into(),
        hash: "blake3:bb".into(),
        size_bytes: 9,
        blob_key: "assets/blake3:bb".into(),
        created_at: now,
    };
    assert_eq!(
        store.put_blob_record_if_absent(&record).await.unwrap(),
        (record.clone(), true)
    );
    let mut second = record.clone();
    second.blob_key = "elsewhere".into();
    assert_eq!(
        store.put_blob_record_if_absent(&second).await.unwrap(),
        (record.clone(), false),
        "the first record stands"
    );
    assert_eq!(
        store.get_blob_record("t", "blake3:bb").await.unwrap(),
        Some(record)
    );
    assert_eq!(store.get_blob_record("u", "blake3:bb").await.unwrap(), None);

    let key = |id: &str, hash: &str| ApiKeyRecord {
        v: SCHEMA_VERSION,
        id: id.into(),
        tenant: "t".into(),
        key_hash: hash.into(),
        prefix: "sk_".into(),
        created_at: now,
        revoked_at: None,
    };
    store.put_api_key(&key("key_2", "h2")).await.unwrap();
    store.put_api_key(&key("key_1", "h1")).await.unwrap();
    let mut revoked = key("key_1", "h1");
    revoked.revoked_at = Some(now);
    store.put_api_key(&revoked).await.unwrap();
    assert_eq!(store.find_api_key("h1").await.unwrap(), Some(revoked));
    assert_eq!(store.find_api_key("nope").await.unwrap(), None);
    let ids: Vec<_> = store
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["key_1", "key_2"]);

    let upload = UploadRecord {
        v: SCHEMA_VERSION,
        id: "up_1".into(),
        tenant: "t".into(),
        blob_key: "uploads/up_1".into(),
        max_bytes: 10,
        content_type: "image/png".into(),
        file_path: "x.png".into(),
        expected_hash: None,
        tags: vec![],
        created_at: now,
        expires_at: now + Duration::hours(1),
    };
    store.put_upload(&upload).await.unwrap();
    assert_eq!(store.get_upload("up_1").await.unwrap(), Some(upload));
    store.delete_upload("up_1").await.unwrap();
    assert_eq!(store.get_upload("up_1").await.unwrap(), None);
    assert_eq!(store.kind(), "dynamodb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_jobs_leave_the_active_index_and_are_never_scanned_for() {
    use jobs::model::JobStatus;
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let job = conformance::sample_job("t", clock.now(), &[]);
    store.create_job(&job, None, clock.now()).await.unwrap();
    assert_eq!(
        store.count_unclaimed_queued(clock.now(), 10).await.unwrap(),
        1
    );
    let mut canceled = job.clone();
    canceled.status = JobStatus::Canceled;
    canceled.rev = 2;
    store.put_job(&canceled, 1).await.unwrap();
    assert_eq!(
        store.count_unclaimed_queued(clock.now(), 10).await.unwrap(),
        0
    );
    assert!(
        store
            .jobs_in_status(JobStatus::Queued, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store.jobs_in_status(JobStatus::Canceled, 10).await.is_err(),
        "terminal statuses are not indexed"
    );
    assert_eq!(
        store.get_job(&job.id).await.unwrap().unwrap().status,
        JobStatus::Canceled
    );
}
