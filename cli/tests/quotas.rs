//! Per-tenant quotas through the API: each limit refuses with the right status and
//! envelope, loses no job (a refused submit records nothing, and its Idempotency-Key
//! stays free for the retry), and frees up as jobs end or time passes.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, Utc};
use common::*;
use jobs::auth::DEFAULT_TENANT;
use jobs::ports::ManualClock;
use jobs::quota::TenantQuota;
use serde_json::json;

async fn set_quota(t: &TestApp, quota: TenantQuota) {
    t.app
        .state
        .jobs
        .ports()
        .store
        .put_tenant_quota(DEFAULT_TENANT, &quota)
        .await
        .unwrap();
}

async fn job_count(t: &TestApp) -> usize {
    t.get("/api/v2/jobs?limit=100").await.body["jobs"]
        .as_array()
        .unwrap()
        .len()
}

const ROOMY: TenantQuota = TenantQuota {
    max_active_jobs: 1_000,
    submits_per_second: 1_000,
    max_stored_bytes: 1 << 30,
};

#[tokio::test]
async fn active_jobs_past_the_limit_are_429_and_nothing_is_lost() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    set_quota(
        &t,
        TenantQuota {
            max_active_jobs: 2,
            ..ROOMY
        },
    )
    .await;
    let first = t.submit(&invert()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(t.submit(&invert()).await.status, StatusCode::CREATED);

    let refused = t
        .post_raw("/api/v2/jobs", invert().to_string(), Some("retry-me"))
        .await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "quota_active_jobs");
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(
        job_count(&t).await,
        2,
        "the refused submit recorded nothing"
    );

    // One job ends; the client's retry with the same key now goes through, once.
    let id = first.body["id"].as_str().unwrap();
    let canceled = t
        .post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
        .await;
    assert_eq!(canceled.body["status"], "canceled");
    let retried = t
        .post_raw("/api/v2/jobs", invert().to_string(), Some("retry-me"))
        .await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    // A replay answers the same job (409 while dev still records the enqueue).
    let mut replayed = t
        .post_raw("/api/v2/jobs", invert().to_string(), Some("retry-me"))
        .await;
    for _ in 0..40 {
        if replayed.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        replayed = t
            .post_raw("/api/v2/jobs", invert().to_string(), Some("retry-me"))
            .await;
    }
    assert_eq!(
        replayed.body["id"], retried.body["id"],
        "a replay, not a second job"
    );
    assert_eq!(job_count(&t).await, 3);
}

#[tokio::test]
async fn submits_past_the_rate_are_429_until_the_next_second() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    set_quota(
        &t,
        TenantQuota {
            submits_per_second: 2,
            ..ROOMY
        },
    )
    .await;
    assert_eq!(t.submit(&invert()).await.status, StatusCode::CREATED);
    assert_eq!(t.submit(&invert()).await.status, StatusCode::CREATED);
    let refused = t.submit(&invert()).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "quota_submit_rate");
    assert_eq!(refused.headers["retry-after"], "1");
    clock.advance(Duration::seconds(1));
    assert_eq!(t.submit(&invert()).await.status, StatusCode::CREATED);
    assert_eq!(job_count(&t).await, 3);
}

async fn upload(t: &TestApp, bytes: &[u8], path: &str) -> Reply {
    let (content_type, body) = multipart(&[
        ("file", Some(path), bytes),
        ("content_type", None, b"image/png"),
        ("file_path", None, path.as_bytes()),
    ]);
    t.send(
        Request::post("/api/v2/assets")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn stored_bytes_past_the_limit_are_413_and_dedup_is_free() {
    let t = TestApp::new();
    set_quota(
        &t,
        TenantQuota {
            max_stored_bytes: 1_000,
            ..ROOMY
        },
    )
    .await;
    let a = vec![1u8; 600];
    let first = upload(&t, &a, "a.png").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The same bytes again add nothing: allowed.
    let again = upload(&t, &a, "again.png").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    // New bytes that would pass the limit: refused, nothing minted.
    let refused = upload(&t, &[2u8; 600], "b.png").await;
    assert_envelope(&refused, StatusCode::PAYLOAD_TOO_LARGE, "quota_storage");
    let probe = t
        .send(
            Request::head(format!(
                "/api/v2/assets/by-hash/blake3:{}",
                blake3::hash(&[2u8; 600]).to_hex()
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(probe.status, StatusCode::NOT_FOUND);
    // A large upload that cannot fit is refused before a byte is sent.
    let create = t
        .post_raw(
            "/api/v2/x-serverless-comfyui/uploads",
            json!({"content_type": "image/png", "file_path": "big.png", "size_bytes": 5_000})
                .to_string(),
            None,
        )
        .await;
    assert_envelope(&create, StatusCode::PAYLOAD_TOO_LARGE, "quota_storage");
    // Deleting frees the room.
    for asset in [&first, &again] {
        let id = asset.body["id"].as_str().unwrap();
        let deleted = t
            .send(
                Request::delete(format!("/api/v2/assets/{id}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert!(deleted.status.is_success(), "{}", deleted.status);
    }
    assert_eq!(
        upload(&t, &[2u8; 600], "b.png").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn other_tenants_have_their_own_quota() {
    let t = TestApp::new();
    set_quota(
        &t,
        TenantQuota {
            max_active_jobs: 1,
            ..ROOMY
        },
    )
    .await;
    let store = t.app.state.jobs.ports().store.clone();
    assert_eq!(store.get_tenant_quota("someone-else").await.unwrap(), None);
    assert_eq!(t.submit(&invert()).await.status, StatusCode::CREATED);
    assert_eq!(
        t.submit(&invert()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        store
            .tenant_usage(DEFAULT_TENANT)
            .await
            .unwrap()
            .active_jobs,
        1
    );
    assert_eq!(
        store
            .tenant_usage("someone-else")
            .await
            .unwrap()
            .active_jobs,
        0
    );
}
