//! Benchmark (ignored by default): a retention sweep over many expired jobs, in the
//! tick's batches, while a submit loop runs; prints submit latency before and during.
//!
//! ```sh
//! RETENTION_BENCH_JOBS=100000 cargo test --release -p serverless-comfyui \
//!     --test retention_bench -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{Duration, Utc};
use futures::StreamExt;
use jobs::auth::DEFAULT_TENANT;
use jobs::model::{Asset, BlobRecord, JobStatus, SCHEMA_VERSION, new_asset_id};
use jobs::ports::{Clock, ManualClock};

mod common;
use common::*;

fn percentile(sorted: &[StdDuration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Submits `n` jobs one after another (each waits for the previous), returning the
/// latencies sorted.
async fn submit_loop(t: &TestApp, n: usize) -> Vec<StdDuration> {
    let body = invert();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let reply = t.submit(&body).await;
        latencies.push(start.elapsed());
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    latencies.sort();
    latencies
}

fn summary(label: &str, l: &[StdDuration]) {
    println!(
        "{label}: {} submits, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(l, 0.5),
        percentile(l, 0.99),
        percentile(l, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn sweep_of_many_expired_jobs_keeps_submit_latency() {
    let n: usize = std::env::var("RETENTION_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let ports = t.app.state.jobs.ports().clone();
    // The clock stands still, so every submit falls in one quota second.
    ports
        .store
        .put_tenant_quota(DEFAULT_TENANT, &jobs::quota::TenantQuota::UNLIMITED)
        .await
        .unwrap();

    // n finished jobs, each with its workflow blob; one in ten with an output asset.
    let start = Instant::now();
    let now = clock.now();
    futures::stream::iter(0..n)
        .map(|i| {
            let ports = ports.clone();
            async move {
                let mut job = testkit::conformance::sample_job(DEFAULT_TENANT, now, &[("n", "x")]);
                job.status = JobStatus::Succeeded;
                job.completed_at = Some(now);
                ports
                    .blobs
                    .put(
                        &job.input_key,
                        Bytes::from_static(b"{\"v\":1}"),
                        "application/json",
                    )
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    let bytes = format!("output {i}").into_bytes();
                    let hash = blake3_of(&bytes);
                    let key = format!("outputs/{}/1/9/o.png", job.id);
                    ports
                        .blobs
                        .put(&key, Bytes::from(bytes.clone()), "image/png")
                        .await
                        .unwrap();
                    let record = BlobRecord {
                        v: SCHEMA_VERSION,
                        tenant: DEFAULT_TENANT.into(),
                        hash: hash.clone(),
                        size_bytes: bytes.len() as u64,
                        blob_key: key.clone(),
                        created_at: now,
                    };
                    ports
                        .store
                        .put_blob_record_if_absent(&record)
                        .await
                        .unwrap();
                    ports
                        .store
                        .put_asset(&Asset {
                            v: SCHEMA_VERSION,
                            id: new_asset_id(),
                            tenant: DEFAULT_TENANT.into(),
                            hash,
                            size_bytes: bytes.len() as u64,
                            content_type: "image/png".into(),
                            file_path: Some("o.png".into()),
                            tags: vec![],
                            created_at: now,
                            blob_key: key,
                            job_id: Some(job.id.clone()),
                        })
                        .await
                        .unwrap();
                }
                ports.store.create_job(&job, None, now).await.unwrap();
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
    println!(
        "seeded {n} finished jobs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let storage = jobs::retention::storage_report(&ports).await.unwrap();
    println!("before: {storage:?}");

    clock.advance(Duration::days(8));
    let quiet = submit_loop(&t, 2000).await;
    summary("submits, no sweep", &quiet);

    let dispatcher = t.app.dispatcher.clone();
    let sweeper = tokio::spawn(async move {
        let start = Instant::now();
        let mut ticks = 0;
        let mut swept = 0;
        let mut longest = StdDuration::ZERO;
        loop {
            let tick = Instant::now();
            let report = dispatcher.tick().await;
            longest = longest.max(tick.elapsed());
            ticks += 1;
            swept += report.retention.jobs;
            if !report.retention.more {
                break;
            }
        }
        (swept, ticks, start.elapsed(), longest)
    });
    let mut during = Vec::new();
    while !sweeper.is_finished() {
        during.extend(submit_loop(&t, 200).await);
    }
    during.sort();
    let (swept, ticks, took, longest) = sweeper.await.unwrap();
    println!(
        "swept {swept} jobs in {ticks} ticks, {:.1} s ({:.0} jobs/s), longest tick {:.2} s",
        took.as_secs_f64(),
        swept as f64 / took.as_secs_f64(),
        longest.as_secs_f64()
    );
    summary("submits during the sweep", &during);
    let storage = jobs::retention::storage_report(&ports).await.unwrap();
    println!("after: {storage:?}");
    assert!(swept as usize >= n, "every expired job went: {swept}");
}
