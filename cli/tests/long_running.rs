//! `dev` as a long-running service: `--public-url` behind a reverse proxy, the
//! lifetime flags, and what health shows to whom.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serverless_comfyui::dev::{DevApp, DevConfig, parse_lifetime, parse_public_url};

fn app_with(config: DevConfig, dir: tempfile::TempDir) -> TestApp {
    let app = DevApp::build(&config, std::sync::Arc::new(jobs::ports::SystemClock)).unwrap();
    TestApp::from_app(app, dir)
}

#[tokio::test]
async fn signed_urls_and_allowed_origins_follow_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        public_url: Some(parse_public_url("https://gpu.example.com/").unwrap()),
        ..DevConfig::default()
    };
    let t = app_with(config, dir);
    let uploaded = t.upload(None, b"\x89PNG\r\n\x1a\nabc", "a.png", &[]).await;
    assert!(uploaded.status.is_success(), "{}", uploaded.body);
    let url = uploaded.body["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://gpu.example.com/_blobs/"),
        "signed URLs name the public origin: {url}"
    );
    let (status, _, bytes) = t.fetch(url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"\x89PNG\r\n\x1a\nabc");

    // A browser on the proxied origin, whose proxy forwards another Host.
    let submit = Request::post("/api/v2/jobs")
        .header("host", "127.0.0.1:8787")
        .header("origin", "https://gpu.example.com")
        .header("content-type", "application/json")
        .body(Body::from(invert().to_string()))
        .unwrap();
    let reply = t.send(submit).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let other = Request::post("/api/v2/jobs")
        .header("host", "127.0.0.1:8787")
        .header("origin", "https://evil.example.com")
        .header("content-type", "application/json")
        .body(Body::from(invert().to_string()))
        .unwrap();
    assert_envelope(
        &t.send(other).await,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
    );
}

#[test]
fn public_url_must_be_an_absolute_http_origin() {
    assert_eq!(
        parse_public_url("https://GPU.example.com").unwrap(),
        "https://gpu.example.com"
    );
    assert_eq!(
        parse_public_url("http://10.0.0.5:8787/").unwrap(),
        "http://10.0.0.5:8787"
    );
    for bad in [
        "gpu.example.com",
        "/api",
        "ftp://gpu.example.com",
        "https://gpu.example.com/comfy",
        "https://gpu.example.com/?a=1",
        "https://gpu.example.com/#x",
        "",
    ] {
        assert!(parse_public_url(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn lifetimes_take_human_durations_and_refuse_zero() {
    let d = chrono::Duration::days;
    assert_eq!(parse_lifetime("7d").unwrap(), d(7));
    assert_eq!(parse_lifetime("24h").unwrap(), chrono::Duration::hours(24));
    assert_eq!(
        parse_lifetime("30m").unwrap(),
        chrono::Duration::minutes(30)
    );
    assert_eq!(
        parse_lifetime("90s").unwrap(),
        chrono::Duration::seconds(90)
    );
    assert_eq!(parse_lifetime("2w").unwrap(), d(14));
    assert_eq!(
        parse_lifetime("1d12h").unwrap(),
        d(1) + chrono::Duration::hours(12)
    );
    for bad in [
        "0",
        "0d",
        "0h0m",
        "",
        "7",
        "d",
        "7x",
        "-1d",
        "1.5d",
        "99999999999d",
    ] {
        assert!(parse_lifetime(bad).is_err(), "{bad:?} accepted");
    }
}

#[tokio::test]
async fn the_retention_flag_sets_how_long_a_job_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        retention: parse_lifetime("2h").unwrap(),
        idempotency_ttl: parse_lifetime("1h").unwrap(),
        ..DevConfig::default()
    };
    let t = app_with(config, dir);
    let reply = t.submit(&invert()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let created =
        chrono::DateTime::parse_from_rfc3339(reply.body["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(reply.body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires - created,
        chrono::Duration::hours(2),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn storage_figures_are_shown_to_authenticated_callers_only() {
    let t = TestApp::new();
    let keyless = t.get("/api/v2/health").await;
    assert!(
        keyless.body["storage"]["jobs"]["queued"].is_u64(),
        "a keyless loopback caller is the operator: {}",
        keyless.body
    );
    assert!(keyless.body["storage"]["database_bytes"].as_u64().unwrap() > 0);
    let (key, _) = t.create_key("t1").await;
    let anonymous = t.get("/api/v2/health").await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert!(
        anonymous.body.get("storage").is_none(),
        "no storage figures without a key: {}",
        anonymous.body
    );
    let authed = t
        .send_as(
            Some(&key),
            Request::get("/api/v2/health").body(Body::empty()).unwrap(),
        )
        .await;
    assert!(
        authed.body["storage"]["blob_bytes"].is_u64(),
        "{}",
        authed.body
    );
}

#[test]
fn an_idempotency_key_may_not_outlive_the_retention_of_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        retention: parse_lifetime("12h").unwrap(),
        idempotency_ttl: parse_lifetime("24h").unwrap(),
        ..DevConfig::default()
    };
    let refused = DevApp::build(&config, std::sync::Arc::new(jobs::ports::SystemClock));
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("--idempotency-ttl"), "{message}");
    let config = DevConfig {
        idempotency_ttl: parse_lifetime("12h").unwrap(),
        ..config
    };
    assert!(DevApp::build(&config, std::sync::Arc::new(jobs::ports::SystemClock)).is_ok());
}
