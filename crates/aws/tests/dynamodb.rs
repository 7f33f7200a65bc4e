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
    conformance::lease_protocol(store, queue, Arc::new(SystemClock), 3, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_with_faults() {
    let store = Arc::new(fresh_store(Arc::new(SystemClock)).await);
    let queue: Arc<dyn Queue> = Arc::new(common::fresh_queue(1000).await);
    let faulty = Arc::new(FaultyQueue::new(queue, Faults::CHAOTIC, 7));
    conformance::lease_protocol(store, faulty, Arc::new(SystemClock), 3, 20).await;
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
