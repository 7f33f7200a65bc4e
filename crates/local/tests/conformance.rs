//! The shared adapter conformance suite (`testkit::conformance`) on the local adapters,
//! with and without the fault-injecting queue. Each test gets its own data directory.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use jobs::faults::{Faults, FaultyQueue};
use jobs::ports::{Clock, ManualClock, Queue, SystemClock};
use local::{DataDir, SqliteJobStore, SqliteQueue};
use testkit::conformance;

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ))
}

#[tokio::test]
async fn job_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::job_store(store, manual_clock()).await;
}

#[tokio::test]
async fn tenant_quotas_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::tenant_quotas(store, manual_clock()).await;
}

#[tokio::test]
async fn asset_records_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::asset_records(store, manual_clock()).await;
}

#[tokio::test]
async fn retention_records_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::retention_records(store, manual_clock()).await;
}

#[tokio::test]
async fn webhook_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::webhook_store(store, manual_clock()).await;
}

#[tokio::test]
async fn stalled_runner_is_fenced_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::stalled_runner_is_fenced(store, manual_clock()).await;
}

#[tokio::test]
async fn queue_strict_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let queue =
        Arc::new(SqliteQueue::open(&dir.path().join("q.sqlite"), clock.clone(), 5).unwrap());
    conformance::queue_strict(queue, clock.as_ref(), 5).await;
}

fn real_queue(dir: &tempfile::TempDir) -> Arc<dyn Queue> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Arc::new(
        SqliteQueue::open(
            &dir.path().join("q.sqlite"),
            clock,
            local::MAX_RECEIVE_COUNT,
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn queue_at_least_once_without_faults() {
    let dir = tempfile::tempdir().unwrap();
    conformance::queue_at_least_once(real_queue(&dir), 50).await;
}

#[tokio::test]
async fn queue_at_least_once_with_faults() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyQueue::new(real_queue(&dir), Faults::CHAOTIC, 7));
    conformance::queue_at_least_once(faulty, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_without_faults() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::lease_protocol(store, real_queue(&dir), Arc::new(SystemClock), 4, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_protocol_with_faults() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    for seed in [1, 2, 3] {
        let faulty = Arc::new(FaultyQueue::new(real_queue(&dir), Faults::CHAOTIC, seed));
        conformance::lease_protocol(store.clone(), faulty, Arc::new(SystemClock), 4, 60).await;
    }
}

#[tokio::test]
async fn blob_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let (ports, _) = data
        .ports_and_blobs(manual_clock(), "http://127.0.0.1:8787")
        .unwrap();
    conformance::blob_store(ports.blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_slot_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    conformance::stream_slots(store.clone()).await;
    // Locally one store serves every stream (the slots live in its memory).
    conformance::stream_slots_are_exact_under_concurrency(store.clone(), store).await;
}

#[tokio::test]
async fn catalogue_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let clock = manual_clock();
    let ports = data.ports(clock.clone(), "http://127.0.0.1:8787").unwrap();
    conformance::catalogues(ports, clock).await;
}
