//! Assets, signed URLs, the large-file extension, tenants and API keys, and the OpenAPI
//! document: through the router, over the real local adapters.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

mod common;
use common::*;

fn png_bytes(seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..4096u32).map(|i| (i as u8).wrapping_mul(seed)));
    bytes
}

#[tokio::test]
async fn upload_dedup_get_and_fetch() {
    let t = TestApp::new();
    let bytes = png_bytes(3);
    let first = t
        .upload(None, &bytes, "photo.png", &[("tags", "input")])
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let asset = &first.body;
    assert!(asset["id"].as_str().unwrap().starts_with("asset_"));
    assert_eq!(asset["hash"], blake3_of(&bytes));
    assert_eq!(asset["size_bytes"], bytes.len());
    assert_eq!(asset["content_type"], "image/png");
    assert_eq!(asset["file_path"], "photo.png");
    assert_eq!(asset["created_new"], true);
    assert_eq!(asset["tags"], json!(["input"]));

    let again = t.upload(None, &bytes, "other.png", &[]).await;
    assert_eq!(again.status, StatusCode::OK, "a dedup hit is 200");
    assert_eq!(again.body["created_new"], false);
    assert_ne!(
        again.body["id"], asset["id"],
        "a new asset over the same blob"
    );
    assert_eq!(again.body["hash"], asset["hash"]);

    let id = asset["id"].as_str().unwrap();
    let read = t.get(&format!("/api/v2/assets/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(read.body.get("created_new").is_none());
    let url = read.body["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:8787/_blobs/"), "{url}");
    assert!(read.body["url_expires_at"].as_str().is_some());
    let (status, headers, fetched) = t.fetch(url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, bytes);
    assert_eq!(headers["content-type"], "image/png");

    // A tampered signature is refused.
    let tampered = url.replace("sig=", "sig=00");
    let (status, _, _) = t.fetch(&tampered, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let content = t.fetch(&format!("/api/v2/assets/{id}/content"), None).await;
    assert_eq!(content.0, StatusCode::OK);
    assert_eq!(content.2, bytes);
}

#[tokio::test]
async fn expected_hash_mismatch_mints_nothing() {
    let t = TestApp::new();
    let bytes = png_bytes(5);
    let wrong = blake3_of(b"something else");
    let reply = t
        .upload(None, &bytes, "photo.png", &[("expected_hash", &wrong)])
        .await;
    assert_envelope(&reply, StatusCode::CONFLICT, "hash_mismatch");
    let probe = t
        .send(empty_request(
            "HEAD",
            &format!("/api/v2/assets/by-hash/{}", blake3_of(&bytes)),
        ))
        .await;
    assert_eq!(probe.status, StatusCode::NOT_FOUND, "nothing was stored");
    let right = t
        .upload(
            None,
            &bytes,
            "photo.png",
            &[("expected_hash", &blake3_of(&bytes))],
        )
        .await;
    assert_eq!(right.status, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_file_paths_and_forms_are_422() {
    let t = TestApp::new();
    for bad in [
        "../etc/passwd",
        "/abs.png",
        "a\\b.png",
        "a\0b.png",
        "a/../../b",
        "",
    ] {
        let reply = t.upload(None, b"x", bad, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad:?}: {}",
            reply.body
        );
    }
    let reply = t.upload(None, b"x", "../x", &[]).await;
    assert_eq!(reply.body["error"]["code"], "invalid_file_path");
    let (content_type, body) = multipart(&[
        ("file_path", None, b"x.png"),
        ("content_type", None, b"image/png"),
    ]);
    let no_file = t
        .send(
            Request::post("/api/v2/assets")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_envelope(
        &no_file,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let not_multipart = t.post_raw("/api/v2/assets", "{}", None).await;
    assert_envelope(
        &not_multipart,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

/// Unknown parts are ignored, as v2 leaves room for additive fields, however often
/// they come; a known part may still come once only.
#[tokio::test]
async fn unknown_form_parts_are_ignored_even_repeated() {
    let t = TestApp::new();
    let form = |extra: &[(&'static str, Option<&'static str>, &'static [u8])]| {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
            ("file", Some("x.png"), b"bytes"),
            ("content_type", None, b"image/png"),
            ("file_path", None, b"x.png"),
        ];
        parts.extend_from_slice(extra);
        let (content_type, body) = multipart(&parts);
        Request::post("/api/v2/assets")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let reply = t
        .send(form(&[("future", None, b"1"), ("future", None, b"2")]))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let reply = t.send(form(&[("file_path", None, b"y.png")])).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
}

#[tokio::test]
async fn from_hash_and_by_hash() {
    let t = TestApp::new();
    let bytes = png_bytes(7);
    let hash = blake3_of(&bytes);
    let head = |h: String| empty_request("HEAD", &format!("/api/v2/assets/by-hash/{h}"));
    assert_eq!(
        t.send(head(hash.clone())).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.send(head("blake3:nothex".into())).await.status,
        StatusCode::NOT_FOUND
    );
    let missing = t
        .send(json_request(
            "POST",
            "/api/v2/assets/from-hash",
            &json!({"hash": hash, "file_path": "p.png"}),
        ))
        .await;
    assert_envelope(&missing, StatusCode::NOT_FOUND, "blob_not_found");

    t.upload(None, &bytes, "photo.png", &[]).await;
    assert_eq!(t.send(head(hash.clone())).await.status, StatusCode::OK);
    assert_eq!(
        t.send(head(hash.to_uppercase().replace("BLAKE3", "blake3")))
            .await
            .status,
        StatusCode::OK
    );
    let minted = t
        .send(json_request(
            "POST",
            "/api/v2/assets/from-hash",
            &json!({"hash": hash, "file_path": "copy.png"}),
        ))
        .await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    assert_eq!(minted.body["hash"], hash);
    assert_eq!(
        minted.body["content_type"], "image/png",
        "the blob's known type"
    );
    let same = t
        .send(json_request(
            "POST",
            "/api/v2/assets/from-hash",
            &json!({"hash": hash, "file_path": "copy.png"}),
        ))
        .await;
    assert_eq!(
        same.status,
        StatusCode::OK,
        "an identical reference is returned as-is"
    );
    assert_eq!(same.body["id"], minted.body["id"]);
    let bad = t
        .send(json_request(
            "POST",
            "/api/v2/assets/from-hash",
            &json!({"hash": "md5:abc"}),
        ))
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid_hash");
}

#[tokio::test]
async fn range_requests_206_and_416() {
    let t = TestApp::new();
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let id = t.upload(None, &bytes, "r.bin", &[]).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let content = format!("/api/v2/assets/{id}/content");
    let (status, headers, body) = t.fetch(&content, Some("bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 10-19/1000");
    assert_eq!(headers["content-length"], "10");
    assert_eq!(body, bytes[10..20]);
    let (status, headers, body) = t.fetch(&content, Some("bytes=-5")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 995-999/1000");
    assert_eq!(body, bytes[995..]);
    let (status, headers, body) = t.fetch(&content, Some("bytes=1000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */1000");
    assert!(body.is_empty());
    let (status, headers, body) = t.fetch(&content, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(body, bytes);
    // Signed URLs honour ranges too.
    let url = t.get(&format!("/api/v2/assets/{id}")).await.body["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, body) = t.fetch(&url, Some("bytes=0-0")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, vec![0]);
}

fn load_blur_with(asset_id: &str) -> Value {
    let mut wf = workflow("load-blur.json");
    wf["10"]["inputs"]["image"] = json!({"__type": "core/ASSET", "info": {"id": asset_id}});
    json!({ "workflow": wf })
}

#[tokio::test]
async fn deleted_asset_makes_a_job_fail_validation() {
    let t = TestApp::new();
    let id = t.upload(None, &png_bytes(9), "photo.png", &[]).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = t.submit(&load_blur_with(&id)).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let deleted = t
        .send(empty_request("DELETE", &format!("/api/v2/assets/{id}")))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_envelope(
        &t.get(&format!("/api/v2/assets/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let again = t
        .send(empty_request("DELETE", &format!("/api/v2/assets/{id}")))
        .await;
    assert_envelope(&again, StatusCode::NOT_FOUND, "not_found");
    let refused = t.submit(&load_blur_with(&id)).await;
    assert_envelope(&refused, StatusCode::UNPROCESSABLE_ENTITY, "missing_asset");
    assert_eq!(refused.body["error"]["details"]["node_id"], "10");
    assert_eq!(refused.body["error"]["details"]["input"], "image");
    let never = t
        .submit(&load_blur_with("asset_01JZV8Q3M7K2W9X0Y1Z2A3B4C5"))
        .await;
    assert_envelope(&never, StatusCode::UNPROCESSABLE_ENTITY, "missing_asset");
}

#[tokio::test]
async fn large_file_extension_end_to_end() {
    let t = TestApp::new();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let create = json!({"file_path": "big.bin", "content_type": "application/octet-stream", "size_bytes": bytes.len(), "expected_hash": blake3_of(&bytes)});
    let upload = t
        .send(json_request(
            "POST",
            "/api/v2/x-serverless-comfyui/uploads",
            &create,
        ))
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.body);
    assert_eq!(upload.body["upload_method"], "PUT");
    assert_eq!(upload.body["size_enforcement"], "exact");
    assert_eq!(upload.body["size_bytes"], bytes.len());
    assert_eq!(
        upload.body["upload_headers"],
        json!({"content-length": bytes.len().to_string()}),
        "the client is told the exact Content-Length the URL is signed for"
    );
    let upload_url = upload.body["upload_url"].as_str().unwrap();
    let path = &upload_url[upload_url.find("/_blobs/").unwrap()..];
    let complete_url = upload.body["complete_url"].as_str().unwrap().to_string();
    let put_of = |body: Vec<u8>, declared: usize| {
        Request::put(path)
            .header("content-length", declared)
            .body(Body::from(body))
            .unwrap()
    };

    // Completing before the bytes arrive is a clear 409.
    let early = t.post_raw(&complete_url, "", None).await;
    assert_envelope(&early, StatusCode::CONFLICT, "upload_incomplete");
    // Any other declared length is refused before a byte is read, as S3 refuses a
    // Content-Length its signature does not cover: one more, one less, or none.
    let longer = t
        .send(put_of(vec![0u8; bytes.len() + 1], bytes.len() + 1))
        .await;
    assert_envelope(&longer, StatusCode::FORBIDDEN, "forbidden");
    let shorter = t.send(put_of(vec![0u8; 10], 10)).await;
    assert_envelope(&shorter, StatusCode::FORBIDDEN, "forbidden");
    let undeclared = t
        .send(Request::put(path).body(Body::from(bytes.clone())).unwrap())
        .await;
    assert_envelope(&undeclared, StatusCode::FORBIDDEN, "forbidden");
    // A body that lies about its length is cut at the signed size, or refused
    // when it ends early; neither leaves bytes to complete.
    let overlong = t
        .send(put_of(vec![0u8; bytes.len() + 1], bytes.len()))
        .await;
    assert_envelope(
        &overlong,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let truncated = t.send(put_of(bytes[..1000].to_vec(), bytes.len())).await;
    assert_envelope(&truncated, StatusCode::BAD_REQUEST, "invalid_request");
    let early = t.post_raw(&complete_url, "", None).await;
    assert_envelope(&early, StatusCode::CONFLICT, "upload_incomplete");
    let put = t.send(put_of(bytes.clone(), bytes.len())).await;
    assert_eq!(put.status, StatusCode::OK);
    let done = t.post_raw(&complete_url, "", None).await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    assert_eq!(done.body["hash"], blake3_of(&bytes));
    assert_eq!(done.body["size_bytes"], bytes.len());
    let (_, _, fetched) = t
        .fetch(
            &format!(
                "/api/v2/assets/{}/content",
                done.body["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(fetched, bytes);
    // The upload is spent.
    assert_envelope(
        &t.post_raw(&complete_url, "", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let bad = t
        .send(json_request(
            "POST",
            "/api/v2/x-serverless-comfyui/uploads",
            &json!({"file_path": "../x", "content_type": "a/b", "size_bytes": 1}),
        ))
        .await;
    assert_envelope(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_path");
}

#[tokio::test]
async fn tenants_cannot_see_each_other() {
    let t = TestApp::new();
    let (a, _) = t.create_key("tenant-a").await;
    let (b, _) = t.create_key("tenant-b").await;
    let bytes = png_bytes(11);
    let asset = t.upload(Some(&a), &bytes, "a.png", &[]).await;
    assert_eq!(asset.status, StatusCode::CREATED, "{}", asset.body);
    let asset_id = asset.body["id"].as_str().unwrap().to_string();
    let job = t
        .send_as(
            Some(&a),
            json_request(
                "POST",
                "/api/v2/jobs",
                &json!({"workflow": workflow("invert.json"), "metadata": {"who": "a"}}),
            ),
        )
        .await;
    assert_eq!(job.status, StatusCode::CREATED);
    let job_id = job.body["id"].as_str().unwrap().to_string();

    for (method, uri) in [
        ("GET", format!("/api/v2/jobs/{job_id}")),
        ("GET", format!("/api/v2/jobs/{job_id}/workflow")),
        ("GET", format!("/api/v2/jobs/{job_id}/events")),
        ("POST", format!("/api/v2/jobs/{job_id}/cancel")),
        ("GET", format!("/api/v2/assets/{asset_id}")),
        ("GET", format!("/api/v2/assets/{asset_id}/content")),
        ("DELETE", format!("/api/v2/assets/{asset_id}")),
    ] {
        let reply = t.send_as(Some(&b), empty_request(method, &uri)).await;
        assert_envelope(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    let listed = t
        .send_as(
            Some(&b),
            empty_request("GET", "/api/v2/jobs?metadata[who]=a"),
        )
        .await;
    assert_eq!(listed.body["jobs"], json!([]));
    let probe = t
        .send_as(
            Some(&b),
            empty_request(
                "HEAD",
                &format!("/api/v2/assets/by-hash/{}", blake3_of(&bytes)),
            ),
        )
        .await;
    assert_eq!(
        probe.status,
        StatusCode::NOT_FOUND,
        "B cannot probe A's hashes"
    );
    let mint = t
        .send_as(
            Some(&b),
            json_request(
                "POST",
                "/api/v2/assets/from-hash",
                &json!({"hash": blake3_of(&bytes)}),
            ),
        )
        .await;
    assert_envelope(&mint, StatusCode::NOT_FOUND, "blob_not_found");
    let borrow = t
        .send_as(
            Some(&b),
            json_request("POST", "/api/v2/jobs", &load_blur_with(&asset_id)),
        )
        .await;
    assert_envelope(&borrow, StatusCode::UNPROCESSABLE_ENTITY, "missing_asset");
    // A still sees everything, and B's own upload of the same bytes is a new blob for B.
    assert_eq!(
        t.send_as(
            Some(&a),
            empty_request("GET", &format!("/api/v2/jobs/{job_id}"))
        )
        .await
        .status,
        StatusCode::OK
    );
    let b_upload = t.upload(Some(&b), &bytes, "b.png", &[]).await;
    assert_eq!(b_upload.status, StatusCode::CREATED);
    assert_eq!(b_upload.body["created_new"], true);
}

#[tokio::test]
async fn authentication_rules() {
    let t = TestApp::new();
    // No keys yet, on loopback: the default tenant, no credentials needed.
    assert_eq!(t.get("/api/v2/jobs").await.status, StatusCode::OK);
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.body["auth"]["required"], false);

    let (key, record) = t.create_key("team").await;
    let jobs = || empty_request("GET", "/api/v2/jobs");
    assert_envelope(
        &t.send(jobs()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_envelope(
        &t.send_as(Some("sck_wrong"), jobs()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let mut basic = jobs();
    basic
        .headers_mut()
        .insert("authorization", format!("Basic {key}").parse().unwrap());
    assert_envelope(
        &t.send(basic).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let mut empty = jobs();
    empty
        .headers_mut()
        .insert("authorization", "Bearer ".parse().unwrap());
    assert_envelope(
        &t.send(empty).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(t.send_as(Some(&key), jobs()).await.status, StatusCode::OK);
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.status, StatusCode::OK, "health needs no key");
    assert_eq!(health.body["auth"]["required"], true);
    assert!(!health.body.to_string().contains(&key));

    let mut revoked = record.clone();
    revoked.revoked_at = Some(chrono::Utc::now());
    t.app
        .state
        .jobs
        .ports()
        .store
        .put_api_key(&revoked)
        .await
        .unwrap();
    let reply = t.send_as(Some(&key), jobs()).await;
    assert_envelope(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

#[tokio::test]
async fn non_loopback_dev_requires_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = serverless_comfyui::dev::DevConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let error = serverless_comfyui::dev::run(config.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refusing to listen"), "{error}");
    // Built for a non-loopback address, even with no keys nothing is anonymous.
    let app = serverless_comfyui::dev::DevApp::build(
        &config,
        std::sync::Arc::new(jobs::ports::SystemClock),
    )
    .unwrap();
    use tower::ServiceExt;
    let response = app
        .router()
        .oneshot(empty_request("GET", "/api/v2/jobs"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// The OpenAPI document is generated from the router's own route declarations; this
/// checks it lists every route we serve, and that every documented route is served.
#[tokio::test]
async fn openapi_covers_every_route() {
    let t = TestApp::new();
    let doc = t.get("/api/v2/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.body["paths"].as_object().unwrap();
    let expected = [
        ("post", "/api/v2/jobs"),
        ("get", "/api/v2/jobs"),
        ("get", "/api/v2/jobs/{id}"),
        ("get", "/api/v2/jobs/{id}/workflow"),
        ("post", "/api/v2/jobs/{id}/cancel"),
        ("get", "/api/v2/jobs/{id}/events"),
        ("post", "/api/v2/assets"),
        ("post", "/api/v2/assets/from-hash"),
        ("head", "/api/v2/assets/by-hash/{hash}"),
        ("get", "/api/v2/assets/{id}"),
        ("delete", "/api/v2/assets/{id}"),
        ("get", "/api/v2/assets/{id}/content"),
        ("post", "/api/v2/x-serverless-comfyui/uploads"),
        ("post", "/api/v2/x-serverless-comfyui/uploads/{id}/complete"),
        ("post", "/api/v2/x-serverless-comfyui/webhooks"),
        ("get", "/api/v2/x-serverless-comfyui/webhooks"),
        ("delete", "/api/v2/x-serverless-comfyui/webhooks/{id}"),
        (
            "get",
            "/api/v2/x-serverless-comfyui/webhooks/{id}/deliveries",
        ),
        ("get", "/api/v2/x-serverless-comfyui/catalogue"),
        ("get", "/api/v2/health"),
        ("get", "/api/v2/openapi.json"),
    ];
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    wanted.sort();
    assert_eq!(
        documented, wanted,
        "the document lists exactly the routes served"
    );
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "x_unknown")
            .replace("{hash}", "blake3:00");
        let reply = t
            .send(empty_request(&method.to_uppercase(), &concrete))
            .await;
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is routed"
        );
        if reply.status == StatusCode::NOT_FOUND && method != "head" {
            assert_ne!(
                reply.body["error"]["message"], "no such route",
                "{method} {path} is routed"
            );
        }
    }
    assert!(doc.body["components"]["schemas"]["JobView"].is_object());
    assert!(doc.body["components"]["securitySchemes"]["bearerAuth"].is_object());
}

/// The document says what this server asks for now: no key while a loopback `dev` has
/// none (a bearer requirement would be untrue there), a bearer key once one exists;
/// health and the document itself never need one.
#[tokio::test]
async fn openapi_security_follows_keys() {
    let t = TestApp::new();
    let keyless = t.get("/api/v2/openapi.json").await;
    assert_eq!(keyless.status, StatusCode::OK);
    assert_eq!(keyless.body["security"], json!([{}]));

    let (_key, _) = t.create_key("team").await;
    let keyed = t.get("/api/v2/openapi.json").await;
    assert_eq!(keyed.status, StatusCode::OK, "the document needs no key");
    assert_eq!(keyed.body["security"], json!([{"bearerAuth": []}]));
    for path in ["/api/v2/health", "/api/v2/openapi.json"] {
        assert_eq!(
            keyed.body["paths"][path]["get"]["security"],
            json!([{}]),
            "{path} needs no key"
        );
    }
    // Every route that takes a key lists what a refused key gets.
    let paths = keyed.body["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security") != Some(&json!([{}])) {
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} lists 401"
                );
            }
            assert!(
                operation["responses"]["403"].is_object(),
                "{method} {path} lists 403 (origin_not_allowed)"
            );
        }
    }
}

/// The request schemas carry the rules the handlers enforce (spot checks; the
/// Schemathesis run in tests/schemathesis checks them all against a live server).
#[tokio::test]
async fn openapi_request_schemas_carry_the_handlers_rules() {
    let t = TestApp::new();
    let doc = t.get("/api/v2/openapi.json").await.body;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["WorkflowGraph"]["minProperties"], 1);
    assert_eq!(schemas["SubmitRequest"]["additionalProperties"], false);
    assert_eq!(
        schemas["SubmitRequest"]["properties"]["extra_data"]["minProperties"],
        1
    );
    assert_eq!(
        schemas["CreateUploadRequest"]["properties"]["size_bytes"]["minimum"],
        1
    );
    assert_eq!(
        schemas["AssetUploadForm"]["properties"]["file_path"]["maxLength"],
        1024
    );
    let limit = doc["paths"]["/api/v2/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 100);
    // A bad limit is refused as documented.
    let reply = t.get("/api/v2/jobs?limit=0").await;
    assert_envelope(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}
