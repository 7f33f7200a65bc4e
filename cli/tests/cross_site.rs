//! Cross-site requests into `dev` (issue: "a web page on any site can submit jobs to a
//! local `dev`"). Each attack is what a browser really sends from another site without a
//! preflight; none may reach a handler, and none may leave a job behind.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;

const DEV_HOST: &str = "127.0.0.1:8787";

fn submit_from(origin: Option<&str>, host: &str, content_type: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/v2/jobs").header("host", host);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(Body::from(invert().to_string())).unwrap()
}

async fn job_count(t: &TestApp) -> usize {
    let list = t.get("/api/v2/jobs?limit=100").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    list.body["jobs"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_page_on_another_site_cannot_submit() {
    let t = TestApp::new();
    // The request from the report: a text/plain POST from http://evil.example.
    let reply = t
        .send(submit_from(
            Some("http://evil.example"),
            DEV_HOST,
            Some("text/plain"),
        ))
        .await;
    assert_envelope(&reply, StatusCode::FORBIDDEN, "origin_not_allowed");
    // Even claiming JSON (which would need a preflight) the origin is refused.
    let reply = t
        .send(submit_from(
            Some("http://evil.example"),
            DEV_HOST,
            Some("application/json"),
        ))
        .await;
    assert_envelope(&reply, StatusCode::FORBIDDEN, "origin_not_allowed");
    // Sandboxed frames and file: pages send `Origin: null`.
    let reply = t
        .send(submit_from(Some("null"), DEV_HOST, Some("text/plain")))
        .await;
    assert_envelope(&reply, StatusCode::FORBIDDEN, "origin_not_allowed");
    assert_eq!(job_count(&t).await, 0);
}

#[tokio::test]
async fn json_routes_refuse_bodies_a_browser_may_send_without_asking() {
    let t = TestApp::new();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        // `fetch(url, {method: "POST", body: new Blob([json])})` sends no type at all.
        None,
    ] {
        let reply = t.send(submit_from(None, DEV_HOST, content_type)).await;
        assert_envelope(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let (_, form) = multipart(&[("file", Some("a.png"), b"x")]);
    let reply = t
        .send(
            Request::post("/api/v2/assets")
                .header("content-type", "text/plain")
                .body(Body::from(form))
                .unwrap(),
        )
        .await;
    assert_envelope(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_eq!(job_count(&t).await, 0);
}

#[tokio::test]
async fn a_dns_rebound_name_gets_nothing_from_a_keyless_dev() {
    let t = TestApp::new();
    // The page's own origin, rebound to 127.0.0.1: same-origin to the browser.
    let rebound = "rebound.evil.example:8787";
    let reply = t
        .send(submit_from(
            Some("http://rebound.evil.example:8787"),
            rebound,
            Some("application/json"),
        ))
        .await;
    assert_envelope(&reply, StatusCode::FORBIDDEN, "host_not_allowed");
    let list = t
        .send(
            Request::get("/api/v2/jobs")
                .header("host", rebound)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_envelope(&list, StatusCode::FORBIDDEN, "host_not_allowed");
    assert_eq!(job_count(&t).await, 0);
}

#[tokio::test]
async fn the_web_app_and_plain_clients_still_work() {
    let t = TestApp::new();
    // The app served by dev itself: same origin.
    let reply = t
        .send(submit_from(
            Some("http://127.0.0.1:8787"),
            DEV_HOST,
            Some("application/json; charset=utf-8"),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    // Vite's dev server on another loopback port (it proxies with its own Host).
    let reply = t
        .send(submit_from(
            Some("http://localhost:5173"),
            "localhost:5173",
            Some("application/json"),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    // curl and the SDKs send no Origin.
    let reply = t
        .send(submit_from(None, DEV_HOST, Some("application/json")))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    // A POST with no body (cancel) needs no content type.
    let id = reply.body["id"].as_str().unwrap();
    let cancel = t
        .send(
            Request::post(format!("/api/v2/jobs/{id}/cancel"))
                .header("host", DEV_HOST)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    assert_eq!(job_count(&t).await, 3);
}

#[tokio::test]
async fn preflights_follow_the_same_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = serverless_comfyui::dev::DevConfig {
        data_dir: dir.path().join("data"),
        allowed_origins: vec!["https://app.example.com".into()],
        ..Default::default()
    };
    let app = serverless_comfyui::dev::DevApp::build(
        &config,
        std::sync::Arc::new(jobs::ports::SystemClock),
    )
    .unwrap();
    let t = TestApp::from_app(app, dir);
    let preflight = |origin: &str| {
        Request::options("/api/v2/jobs")
            .header("host", DEV_HOST)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .body(Body::empty())
            .unwrap()
    };
    let refused = t.send(preflight("http://evil.example")).await;
    assert_envelope(&refused, StatusCode::FORBIDDEN, "origin_not_allowed");
    assert!(refused.headers.get("access-control-allow-origin").is_none());

    let allowed = t.send(preflight("https://app.example.com")).await;
    assert_eq!(allowed.status, StatusCode::NO_CONTENT);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = allowed.headers["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");

    let submit = t
        .send(submit_from(
            Some("https://app.example.com"),
            DEV_HOST,
            Some("application/json"),
        ))
        .await;
    assert_eq!(submit.status, StatusCode::CREATED, "{}", submit.body);
    assert_eq!(
        submit.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
}

#[test]
fn allow_origin_takes_origins_only() {
    use serverless_comfyui::dev::parse_origin;
    assert_eq!(
        parse_origin("https://App.Example.com/").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        parse_origin("http://localhost:5173").unwrap(),
        "http://localhost:5173"
    );
    for bad in [
        "app.example.com",
        "https://app.example.com/path",
        "ftp://x",
        "https://x/?q=1",
        "*",
    ] {
        assert!(parse_origin(bad).is_err(), "{bad}");
    }
}
