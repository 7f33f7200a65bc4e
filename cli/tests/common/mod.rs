//! A test harness shared by the integration tests: the `dev` app over its own
//! temporary data directory, driven through `tower::ServiceExt::oneshot`.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jobs::ports::{Clock, SystemClock};
use serde_json::{Value, json};
use serverless_comfyui::dev::{DevApp, DevConfig};
use tower::ServiceExt;

pub struct TestApp {
    pub app: DevApp,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::in_dir(dir, clock, jobs::api::DEFAULT_MAX_BODY_BYTES)
    }

    /// Wraps an app built elsewhere, keeping its directory alive.
    pub fn from_app(app: DevApp, dir: tempfile::TempDir) -> Self {
        TestApp { app, _dir: dir }
    }

    pub fn in_dir(dir: tempfile::TempDir, clock: Arc<dyn Clock>, max_body_bytes: usize) -> Self {
        let config = DevConfig {
            data_dir: dir.path().join("data"),
            max_body_bytes,
            ..DevConfig::default()
        };
        TestApp {
            app: DevApp::build(&config, clock).unwrap(),
            _dir: dir,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{status}: body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post_raw(&self, uri: &str, body: impl Into<Body>, key: Option<&str>) -> Reply {
        let mut request = Request::post(uri).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    pub async fn submit(&self, body: &Value) -> Reply {
        self.post_raw("/api/v2/jobs", body.to_string(), None).await
    }
}

pub fn workflow(name: &str) -> Value {
    let path = format!(
        "{}/../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

pub fn invert() -> Value {
    json!({ "workflow": workflow("invert.json") })
}

pub fn assert_envelope(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "body: {}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "envelope has a message: {}",
        reply.body
    );
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/json"
    );
}

/// A multipart form: `(name, filename, bytes)` parts.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----serverless-comfyui-test-boundary";
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl TestApp {
    /// Sends with `Authorization: Bearer <key>` when a key is given.
    pub async fn send_as(&self, key: Option<&str>, mut request: Request<Body>) -> Reply {
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        self.send(request).await
    }

    /// Uploads bytes as an asset.
    pub async fn upload(
        &self,
        key: Option<&str>,
        bytes: &[u8],
        file_path: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
            ("content_type", None, b"image/png"),
            ("file_path", None, file_path.as_bytes()),
        ];
        for (name, value) in extra {
            parts.push((name, None, value.as_bytes()));
        }
        parts.push(("file", Some("upload.bin"), bytes));
        let (content_type, body) = multipart(&parts);
        let request = Request::post("/api/v2/assets")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        self.send_as(key, request).await
    }

    /// GETs a URL the API handed out (absolute), through the same router.
    pub async fn fetch(
        &self,
        url: &str,
        range: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let path = url
            .split_once("://")
            .map(|(_, rest)| &rest[rest.find('/').unwrap()..])
            .unwrap_or(url);
        let mut request = Request::get(path);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let response = self
            .app
            .router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, bytes)
    }

    /// Creates an API key for a tenant directly in the store.
    pub async fn create_key(&self, tenant: &str) -> (String, jobs::model::ApiKeyRecord) {
        let minted = jobs::auth::mint_key(tenant, chrono::Utc::now()).unwrap();
        self.app
            .state
            .jobs
            .ports()
            .store
            .put_api_key(&minted.record)
            .await
            .unwrap();
        // The authenticator caches "do keys exist" for a second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        (minted.secret, minted.record)
    }
}

pub fn blake3_of(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

pub fn json_request(method: &str, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub fn empty_request(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}
