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
use jobs::faults::{Faults, FaultyQueue};
use jobs::ports::{Clock, JobStore, ManualClock, Queue, SystemClock};
use testkit::conformance;

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

/// The two lease-protocol runs take turns: moto is one Python process, and each of
/// its `TransactWriteItems` deep-copies the table (its rollback), so two runs side by
/// side on a small machine starve each other past the suite's deadline. For the same
/// reason they run 30 jobs, not the local suite's 60: moto's cost per write
/// grows with the table, DynamoDB's does not, and contended runners already exercise
/// every move of the protocol (4 runners on 30 jobs, with a faulty queue).
static LEASE_RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_without_faults() {
    let _turn = LEASE_RUNS.lock().await;
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    conformance::lease_protocol(store, queue, Arc::new(SystemClock), 4, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_with_faults() {
    let _turn = LEASE_RUNS.lock().await;
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    let faulty = Arc::new(FaultyQueue::new(queue, Faults::CHAOTIC, 7));
    conformance::lease_protocol(store, faulty, Arc::new(SystemClock), 4, 30).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quotas_conformance() {
    let clock = manual_clock();
    let store = Arc::new(fresh_store(clock.clone()).await);
    conformance::tenant_quotas(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_records_conformance() {
    let clock = manual_clock();
    let store = Arc::new(fresh_store(clock.clone()).await);
    conformance::asset_records(store, clock).await;
}

/// Another instance records a job of the tenant between this one's read of the usage
/// item and its transaction (the race on the rate window). The interceptor plays that
/// instance: just before the first `TransactWriteItems` goes out, it admits a job in
/// the same second over a separate client. The admission is refused on the window it
/// read, retried on the item the refusal returned, and the limit holds exactly.
///
/// moto is no judge of truly concurrent submits: its DynamoDB backend takes no lock
/// and its server is threaded, so two conditional writes to one item can both pass
/// (seen here: 4 of 16 concurrent submits admitted under a rate of 3). DynamoDB
/// evaluates a condition and applies the write atomically per item; this test pins
/// the interleaving instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_loses_the_rate_window_race_retries_and_the_limit_holds() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
    use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
    use aws_sdk_dynamodb::error::BoxError;
    use aws_sdk_dynamodb::types::AttributeValue;
    use jobs::ports::CreateOutcome;
    use jobs::quota::{QuotaRefusal, TenantQuota};

    #[derive(Debug)]
    struct OtherInstanceFirst {
        fired: AtomicBool,
        client: aws_sdk_dynamodb::Client,
        table: String,
        second: i64,
    }
    impl Intercept for OtherInstanceFirst {
        fn name(&self) -> &'static str {
            "OtherInstanceFirst"
        }
        fn read_before_transmit(
            &self,
            context: &BeforeTransmitInterceptorContextRef<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let transaction = context
                .request()
                .headers()
                .get("x-amz-target")
                .is_some_and(|t| t.ends_with("TransactWriteItems"));
            if !transaction || self.fired.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            let (client, table, second) = (self.client.clone(), self.table.clone(), self.second);
            // Interceptors are synchronous: the other instance's write runs to its end
            // on a thread of its own before this request goes out.
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    client
                        .update_item()
                        .table_name(table)
                        .key("pk", AttributeValue::S("TENANT#r".into()))
                        .key("sk", AttributeValue::S("USAGE".into()))
                        .update_expression("SET #w = :s ADD #n :one, #a :one")
                        .expression_attribute_names("#w", "window")
                        .expression_attribute_names("#n", "in_window")
                        .expression_attribute_names("#a", "active")
                        .expression_attribute_values(":s", AttributeValue::N(second.to_string()))
                        .expression_attribute_values(":one", AttributeValue::N("1".into()))
                        .send()
                        .await
                        .expect("the other instance's admission")
                })
            })
            .join()
            .map_err(|_| "the other instance panicked")?;
            Ok(())
        }
    }

    let clock = manual_clock();
    let now = clock.now();
    let plain = common::clients().await.dynamodb;
    let table = common::unique("t");
    create_table(&plain, &table).await.expect("create table");
    let racing = aws_sdk_dynamodb::Client::from_conf(
        plain
            .config()
            .to_builder()
            .interceptor(OtherInstanceFirst {
                fired: AtomicBool::new(false),
                client: plain.clone(),
                table: table.clone(),
                second: now.timestamp(),
            })
            .build(),
    );
    let store = DynamoJobStore::new(racing, table, clock.clone());
    let rate = TenantQuota {
        submits_per_second: 2,
        ..TenantQuota::UNLIMITED
    };
    let job = conformance::sample_job("r", now, &[]);
    assert!(matches!(
        store
            .create_job_within_quota(&job, None, now, &rate)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));
    assert!(store.get_job(&job.id).await.unwrap().is_some());
    assert_eq!(
        store
            .create_job_within_quota(&conformance::sample_job("r", now, &[]), None, now, &rate)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::SubmitRate { limit: 2 }),
        "the other instance's job and this one fill the second"
    );
    assert_eq!(store.tenant_usage("r").await.unwrap().active_jobs, 2);

    // An instance whose clock is behind takes the window ahead as the current one.
    let behind = now - Duration::seconds(1);
    assert_eq!(
        store
            .create_job_within_quota(
                &conformance::sample_job("r", behind, &[]),
                None,
                behind,
                &rate
            )
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::SubmitRate { limit: 2 })
    );
}

/// Every write that moves a job between an active and a terminal status moves the
/// tenant's count, whichever way and whatever the store guessed; one within a class
/// leaves it alone; a stale revision moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_class_changes_move_the_active_count() {
    use jobs::model::JobStatus;
    use jobs::ports::StoreError;
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let active = || async { store.tenant_usage("t").await.unwrap().active_jobs };
    let mut job = conformance::sample_job("t", clock.now(), &[]);
    store.create_job(&job, None, clock.now()).await.unwrap();
    assert_eq!(active().await, 1);
    for (status, expected) in [
        (JobStatus::Running, 1),
        (JobStatus::Canceling, 1),
        (JobStatus::Canceled, 0),
        // terminal to terminal (the guess "active" is wrong here), then back.
        (JobStatus::Expired, 0),
        (JobStatus::Queued, 1),
        (JobStatus::Failed, 0),
    ] {
        job.status = status;
        job.rev += 1;
        store.put_job(&job, job.rev - 1).await.unwrap();
        assert_eq!(active().await, expected, "after {status}");
        assert_eq!(
            store.get_job(&job.id).await.unwrap().unwrap().status,
            status
        );
    }
    let mut stale = job.clone();
    stale.status = JobStatus::Queued;
    assert!(matches!(
        store.put_job(&stale, job.rev - 1).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(active().await, 0, "a refused move moves no count");
}

/// A label filter that matches few of many jobs: each page stops at the read budget
/// with where to go on, and following those answers finds every match, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_list_stops_at_the_read_budget_and_continues_correctly() {
    use jobs::ports::ListQuery;
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await.with_list_read_budget(30);
    let now = clock.now();
    let mut wanted = Vec::new();
    for i in 0..100 {
        let labels: &[(&str, &str)] = if i % 25 == 0 {
            &[("x", "1")]
        } else {
            &[("x", "0")]
        };
        let job = conformance::sample_job("t", now, labels);
        store.create_job(&job, None, now).await.unwrap();
        if i % 25 == 0 {
            wanted.push(job.id);
        }
    }
    wanted.reverse();
    let mut found = Vec::new();
    let mut before = None;
    let mut short_pages = 0;
    for _ in 0..50 {
        let page = store
            .list_jobs_page(&ListQuery {
                tenant: "t".into(),
                metadata: vec![("x".into(), "1".into())],
                before: before.clone(),
                limit: 3,
            })
            .await
            .unwrap();
        found.extend(page.jobs.iter().map(|j| j.id.clone()));
        before = match (page.jobs.len(), page.resume_before) {
            (3, _) => page.jobs.last().map(|j| j.id.clone()),
            (_, Some(resume)) => {
                short_pages += 1;
                Some(resume)
            }
            (_, None) => break,
        };
    }
    assert_eq!(found, wanted);
    assert!(short_pages >= 2, "the budget stopped some pages");
}

/// What the retention sweep needs of the store on DynamoDB: a finished job's output
/// assets, then the job with its whole collection; an active job is never deleted;
/// health's counts of the active statuses. (Finding expired jobs is TTL's part here:
/// see the module's "Not done yet".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_goes_with_its_collection_and_names_its_assets() {
    use jobs::model::{Asset, JobStatus, OutputKind, OutputRecord, SCHEMA_VERSION};
    use jobs::ports::StoreError;
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let now = clock.now();
    let queued = conformance::sample_job("t", now, &[]);
    store.create_job(&queued, None, now).await.unwrap();
    let mut job = conformance::sample_job("t", now, &[("run", "1")]);
    store.create_job(&job, None, now).await.unwrap();
    assert_eq!(
        store.count_jobs_by_status().await.unwrap(),
        vec![(JobStatus::Queued, 2)]
    );
    assert!(
        matches!(store.delete_job(&job.id).await, Err(StoreError::Conflict)),
        "an active job is never deleted"
    );

    let asset = Asset {
        v: SCHEMA_VERSION,
        id: "asset_01JZTGXW9Q2M4R8V0B1N3P5D7F".into(),
        tenant: "t".into(),
        hash: format!("blake3:{}", "cd".repeat(32)),
        size_bytes: 5,
        content_type: "image/png".into(),
        file_path: None,
        tags: Vec::new(),
        created_at: now,
        blob_key: format!("outputs/{}/1/9/a.png", job.id.as_str()),
        job_id: Some(job.id.clone()),
    };
    store.put_asset(&asset).await.unwrap();
    job.status = JobStatus::Succeeded;
    job.outputs = vec![OutputRecord {
        node_id: "9".into(),
        name: "a.png".into(),
        kind: OutputKind::Image,
        content_type: "image/png".into(),
        size_bytes: 5,
        asset_id: asset.id.clone(),
        hash: Some(asset.hash.clone()),
        blob_key: asset.blob_key.clone(),
    }];
    job.rev += 1;
    store.put_job(&job, job.rev - 1).await.unwrap();
    assert_eq!(store.job_assets(&job.id, 10).await.unwrap(), vec![asset]);

    assert!(store.delete_job(&job.id).await.unwrap());
    assert_eq!(store.get_job(&job.id).await.unwrap(), None);
    assert!(!store.delete_job(&job.id).await.unwrap(), "already gone");
    assert!(store.job_assets(&job.id, 10).await.unwrap().is_empty());
    assert!(
        store.get_job(&queued.id).await.unwrap().is_some(),
        "others untouched"
    );
    assert_eq!(store.tenant_usage("t").await.unwrap().active_jobs, 1);
}

/// The webhook items on the same table: endpoints, fan-out, leased claims, fenced
/// attempts, listings and sweeps. The outbox is the table's stream on AWS, so the
/// outbox half of `webhook_store` is not run here (see `aws::webhooks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_conformance() {
    let clock = manual_clock();
    let client = common::clients().await.dynamodb;
    let table = common::unique("t");
    create_table(&client, &table).await.expect("create table");
    let store = Arc::new(aws::DynamoWebhookStore::new(client, table));
    conformance::webhook_deliveries(store, clock).await;
}

/// The tenant index projects what a listing reads and not `enqueued`: recording an
/// enqueue writes the job's item only, and the listing still answers whole jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_index_projects_the_list_fields_only() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use jobs::ports::ListQuery;
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let job = conformance::sample_job("t", clock.now(), &[("k", "v")]);
    store.create_job(&job, None, clock.now()).await.unwrap();
    store.mark_enqueued(&job.id).await.unwrap();
    let client = common::clients().await.dynamodb;
    let indexed = client
        .query()
        .table_name(store.table())
        .index_name(aws::dynamodb::GSI1)
        .key_condition_expression("gsi1pk = :t")
        .expression_attribute_values(":t", AttributeValue::S("TENANT#t".into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(indexed.len(), 1);
    let item = &indexed[0];
    for name in ["body", "out_count", "labels"] {
        assert!(item.contains_key(name), "{name} is projected");
    }
    for name in ["enqueued", "reserved_until", "status", "rev"] {
        assert!(!item.contains_key(name), "{name} is not projected");
    }
    let listed = store
        .list_jobs(&ListQuery {
            tenant: "t".into(),
            metadata: vec![("k".into(), "v".into())],
            limit: 10,
            before: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, job.id);
    assert_eq!(listed[0].metadata, job.metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_slot_conformance() {
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    conformance::stream_slots(store.clone()).await;
    // Two handles on one table: two Lambda instances of `status`.
    let other = Arc::new(DynamoJobStore::new(
        common::clients().await.dynamodb,
        store.table(),
        Arc::new(SystemClock),
    ));
    conformance::stream_slots_are_exact_under_concurrency(store, other).await;
}

/// One tenant's concurrent submits all meet on its `USAGE` item (the active count and
/// the submit-rate window): every one is admitted, none answered "unavailable", and the
/// count is exact. (moto raises no `TransactionConflict`; on DynamoDB those are retried
/// with full-jitter backoff, `backoff_delay`'s unit test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_of_one_tenant_are_all_admitted() {
    use jobs::ports::CreateOutcome;
    use jobs::quota::TenantQuota;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(fresh_store(clock.clone()).await);
    let submits = (0..16).map(|_| {
        let store = store.clone();
        let now = clock.now();
        async move {
            let job = conformance::sample_job("hot", now, &[]);
            store
                .create_job_within_quota(&job, None, now, &TenantQuota::default())
                .await
        }
    });
    let outcomes = futures::future::join_all(submits).await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(CreateOutcome::Created { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(store.tenant_usage("hot").await.unwrap().active_jobs, 16);
}

/// The node catalogue's pointer on DynamoDB, its JSON in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_conformance() {
    let clock = manual_clock();
    let store = fresh_store(clock.clone()).await;
    let s3 = common::clients().await.s3;
    let bucket = common::fresh_bucket().await;
    let ports = jobs::ports::Ports {
        store: Arc::new(store),
        blobs: Arc::new(aws::S3BlobStore::new(s3, bucket)),
        queue: Arc::new(common::fresh_queue(5).await),
        clock: clock.clone(),
    };
    conformance::catalogues(ports, clock).await;
}
