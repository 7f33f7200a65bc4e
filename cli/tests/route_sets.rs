//! The router split the AWS functions use: `submit` serves the writes, `status` the
//! reads, and `dev` both. Every operation of the document is served by exactly one
//! set (reads: GET and HEAD; writes: the rest), and each set serves the whole document.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use jobs::api::{DEFAULT_MAX_BODY_BYTES, Routes, router_for};
use serde_json::Value;
use tower::ServiceExt;

/// Whether `router` routes `method uri` to a handler: anything but 405 and the
/// router's own 404 ("no such route"; handlers' 404s name what was not found).
async fn routed(router: &axum::Router, method: &str, uri: &str) -> bool {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(if method == "POST" { "{}" } else { "" }))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    status != StatusCode::METHOD_NOT_ALLOWED
        && !(status == StatusCode::NOT_FOUND
            && (bytes.is_empty() || body["error"]["message"] == "no such route"))
}

#[tokio::test]
async fn every_operation_is_served_by_exactly_one_set() {
    let t = TestApp::new();
    // A real asset, so that HEAD by-hash answers 200 where it is routed.
    let (content_type, body) = multipart(&[
        ("file", Some("a.png"), b"bytes"),
        ("content_type", None, b"image/png"),
        ("file_path", None, b"a.png"),
    ]);
    let uploaded = t
        .send(
            Request::post("/api/v2/assets")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.body);
    let hash = uploaded.body["hash"].as_str().unwrap().to_string();

    let state = t.app.state.clone();
    let (reads, reads_doc) = router_for(state.clone(), DEFAULT_MAX_BODY_BYTES, Routes::Reads);
    let (writes, writes_doc) = router_for(state.clone(), DEFAULT_MAX_BODY_BYTES, Routes::Writes);
    let (_, all_doc) = router_for(state, DEFAULT_MAX_BODY_BYTES, Routes::All);
    assert_eq!(reads_doc, all_doc, "one document describes the whole API");
    assert_eq!(writes_doc, all_doc);

    let mut checked = 0;
    for (path, item) in all_doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{id}", "job_01JZTGXW9Q2M4R8V0B1N3P5D7F")
            .replace("{hash}", &hash);
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if !["GET", "HEAD", "POST", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let is_read = matches!(method.as_str(), "GET" | "HEAD");
            let (in_reads, in_writes) = (
                routed(&reads, &method, &uri).await,
                routed(&writes, &method, &uri).await,
            );
            assert_eq!(
                (in_reads, in_writes),
                (is_read, !is_read),
                "{method} {path}: served by reads {in_reads}, by writes {in_writes}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} operations in the document");
}
