//! Retention through `dev`: a finished job past its retention goes with its outputs,
//! its workflow and its bytes, and health's disk figure falls. Time moves through a
//! `ManualClock`, never by sleeping.

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{Duration, Utc};
use futures::StreamExt;
use jobs::auth::DEFAULT_TENANT;
use jobs::model::{
    Asset, BlobRecord, JobId, JobStatus, OutputKind, OutputRecord, SCHEMA_VERSION, new_asset_id,
};
use jobs::ports::ManualClock;
use serde_json::{Value, json};

mod common;
use common::*;

/// Bytes large enough to be files (not rows), so the disk figure moves at once.
fn image(seed: u8) -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect()
}

/// Finishes a submitted job with one output over `bytes`, as a runner would: the bytes
/// at the job's own key, the tenant's dedup record, an asset naming the job.
async fn finish_with_output(t: &TestApp, id: &str, bytes: &[u8]) -> OutputRecord {
    let ports = t.app.state.jobs.ports();
    let id = JobId::parse(id).unwrap();
    let mut job = ports.store.get_job(&id).await.unwrap().unwrap();
    let hash = blake3_of(bytes);
    let blob_key = format!("outputs/{id}/1/9/out.png");
    ports
        .blobs
        .put(&blob_key, Bytes::copy_from_slice(bytes), "image/png")
        .await
        .unwrap();
    let now = ports.clock.now();
    ports
        .store
        .put_blob_record_if_absent(&BlobRecord {
            v: SCHEMA_VERSION,
            tenant: DEFAULT_TENANT.into(),
            hash: hash.clone(),
            size_bytes: bytes.len() as u64,
            blob_key: blob_key.clone(),
            created_at: now,
        })
        .await
        .unwrap();
    let asset = Asset {
        v: SCHEMA_VERSION,
        id: new_asset_id(),
        tenant: DEFAULT_TENANT.into(),
        hash: hash.clone(),
        size_bytes: bytes.len() as u64,
        content_type: "image/png".into(),
        file_path: Some("out.png".into()),
        tags: vec!["output".into()],
        created_at: now,
        blob_key: blob_key.clone(),
        job_id: Some(id.clone()),
    };
    ports.store.put_asset(&asset).await.unwrap();
    let output = OutputRecord {
        node_id: "9".into(),
        name: "out.png".into(),
        kind: OutputKind::Image,
        content_type: "image/png".into(),
        size_bytes: bytes.len() as u64,
        asset_id: asset.id,
        hash: Some(hash),
        blob_key,
    };
    let retention = job.expires_at - job.created_at;
    job.status = JobStatus::Succeeded;
    job.completed_at = Some(now);
    job.expires_at = now + retention;
    job.outputs = vec![output.clone()];
    job.rev += 1;
    ports.store.put_job(&job, job.rev - 1).await.unwrap();
    output
}

async fn submit(t: &TestApp) -> (String, String) {
    let reply = t.submit(&invert()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let job = t
        .app
        .state
        .jobs
        .ports()
        .store
        .get_job(&JobId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    (id, job.input_key)
}

async fn blob_bytes(t: &TestApp) -> u64 {
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    health.body["storage"]["blob_bytes"].as_u64().unwrap()
}

fn jobs_in(health: &Value, status: &str) -> u64 {
    health["storage"]["jobs"][status].as_u64().unwrap()
}

#[tokio::test]
async fn a_job_past_its_retention_goes_with_its_outputs_workflow_and_bytes() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let ports = t.app.state.jobs.ports().clone();

    let (expiring, expiring_input) = submit(&t).await;
    let own = finish_with_output(&t, &expiring, &image(3)).await;
    // A job finished a day later: still kept when the first one goes.
    clock.advance(Duration::days(1));
    let (kept, kept_input) = submit(&t).await;
    let kept_output = finish_with_output(&t, &kept, &image(5)).await;
    let health = t.get("/api/v2/health").await;
    assert_eq!(jobs_in(&health.body, "succeeded"), 2, "{}", health.body);
    let before = blob_bytes(&t).await;
    assert!(before >= 400_000, "both outputs counted: {before}");

    clock.advance(Duration::days(6) + Duration::minutes(1));
    let report = t.app.dispatcher.tick().await;
    assert_eq!(report.retention.jobs, 1, "{report:?}");
    assert_eq!(report.retention.assets, 1);

    let gone = t.get(&format!("/api/v2/jobs/{expiring}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    let asset = t.get(&format!("/api/v2/assets/{}", own.asset_id)).await;
    assert_eq!(asset.status, StatusCode::NOT_FOUND, "its output asset too");
    assert_eq!(ports.blobs.size(&own.blob_key).await.unwrap(), None);
    assert_eq!(
        ports.blobs.get(&expiring_input).await.unwrap(),
        None,
        "its workflow too"
    );
    assert!(
        ports
            .store
            .get_blob_record(DEFAULT_TENANT, own.hash.as_deref().unwrap())
            .await
            .unwrap()
            .is_none(),
        "no dedup record left over deleted bytes"
    );
    let after = blob_bytes(&t).await;
    // The output file goes; the small-blob database's WAL may grow a few pages.
    assert!(
        after + 150_000 <= before,
        "the disk figure falls by the output: {before} -> {after}"
    );

    // The later job is untouched.
    let kept_view = t.get(&format!("/api/v2/jobs/{kept}")).await;
    assert_eq!(kept_view.status, StatusCode::OK);
    assert!(ports.blobs.get(&kept_input).await.unwrap().is_some());
    assert!(
        ports
            .blobs
            .size(&kept_output.blob_key)
            .await
            .unwrap()
            .is_some()
    );
    let health = t.get("/api/v2/health").await;
    assert_eq!(jobs_in(&health.body, "succeeded"), 1, "{}", health.body);

    clock.advance(Duration::days(1));
    assert_eq!(t.app.dispatcher.tick().await.retention.jobs, 1);
    assert_eq!(
        t.get(&format!("/api/v2/jobs/{kept}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.app.dispatcher.tick().await.retention.jobs,
        0,
        "nothing left"
    );
}

#[tokio::test]
async fn a_blob_shared_by_an_expired_and_a_live_asset_stays_until_both_are_gone() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let ports = t.app.state.jobs.ports().clone();
    let bytes = image(7);

    let (id, _) = submit(&t).await;
    let output = finish_with_output(&t, &id, &bytes).await;
    // The user keeps the output as an asset of their own: minted over the same blob.
    let kept = t
        .send(json_request(
            "POST",
            "/api/v2/assets/from-hash",
            &json!({"hash": output.hash, "file_path": "keep.png"}),
        ))
        .await;
    assert!(kept.status.is_success(), "{}", kept.body);
    let kept_id = kept.body["id"].as_str().unwrap().to_string();
    let before = blob_bytes(&t).await;

    clock.advance(Duration::days(8));
    let report = t.app.dispatcher.tick().await;
    assert_eq!(report.retention.jobs, 1, "{report:?}");
    assert_eq!(
        t.get(&format!("/api/v2/assets/{}", output.asset_id))
            .await
            .status,
        StatusCode::NOT_FOUND,
        "the output asset expired with its job"
    );
    assert_eq!(
        ports.blobs.size(&output.blob_key).await.unwrap(),
        Some(bytes.len() as u64),
        "the user's asset still names the bytes"
    );
    let (status, _, content) = t
        .fetch(&format!("/api/v2/assets/{kept_id}/content"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content, bytes);
    let still = blob_bytes(&t).await;
    assert!(
        still + 100_000 > before,
        "nothing freed yet: {before} -> {still}"
    );

    let deleted = t
        .send(empty_request(
            "DELETE",
            &format!("/api/v2/assets/{kept_id}"),
        ))
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.body);
    assert_eq!(ports.blobs.size(&output.blob_key).await.unwrap(), None);
    let freed = blob_bytes(&t).await;
    assert!(
        freed + 150_000 <= before,
        "both gone: the bytes are freed: {before} -> {freed}"
    );
}

#[tokio::test]
async fn expired_idempotency_records_are_swept() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let ports = t.app.state.jobs.ports().clone();
    let request = axum::http::Request::post("/api/v2/jobs")
        .header("content-type", "application/json")
        .header("idempotency-key", "retention-key")
        .body(axum::body::Body::from(invert().to_string()))
        .unwrap();
    assert_eq!(t.send(request).await.status, StatusCode::CREATED);
    assert!(
        ports
            .store
            .get_idempotency(DEFAULT_TENANT, "retention-key")
            .await
            .unwrap()
            .is_some()
    );
    clock.advance(Duration::hours(25));
    let report = t.app.dispatcher.tick().await;
    assert_eq!(report.retention.idempotency_records, 1, "{report:?}");
    assert!(
        ports
            .store
            .get_idempotency(DEFAULT_TENANT, "retention-key")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn bytes_a_crash_left_in_staging_go_after_a_day() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let ports = t.app.state.jobs.ports().clone();
    let key = "staging/01JZV8Q3M7K2W9X0Y1Z2A3B4C5";
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(image(1)))]).boxed();
    ports.blobs.put_stream(key, body, 1 << 20).await.unwrap();

    clock.advance(Duration::hours(23));
    assert_eq!(t.app.dispatcher.tick().await.retention.staged_blobs, 0);
    assert!(
        ports.blobs.size(key).await.unwrap().is_some(),
        "young: may be in use"
    );
    clock.advance(Duration::hours(2));
    assert_eq!(t.app.dispatcher.tick().await.retention.staged_blobs, 1);
    assert_eq!(ports.blobs.size(key).await.unwrap(), None);
}
