//! The web app at `/`: embedded by the build, or a page that says how to get it, and
//! never in the way of an API path.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use jobs::ports::SystemClock;
use serverless_comfyui::dev::{DevApp, DevConfig};
use tower::ServiceExt;

async fn fetch(app: &DevApp, path: &str) -> (StatusCode, String, String) {
    let response = app
        .router()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn app(dir: &tempfile::TempDir) -> DevApp {
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        frontend_dir: None,
        ..DevConfig::default()
    };
    DevApp::build(&config, Arc::new(SystemClock)).unwrap()
}

#[tokio::test]
async fn root_serves_the_embedded_app_or_explains_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir);
    let (status, content_type, body) = fetch(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    if serverless_comfyui::web::is_embedded() {
        assert!(body.contains("<div id=\"root\">"), "{body}");
        // A client-side route reloads into the same app.
        let (status, _, deep) = fetch(&app, "/jobs/job_01ABC").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(deep, body);
        // The script the page names is served, as JavaScript.
        let script = body
            .split("src=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("index.html names its script");
        let (status, content_type, _) = fetch(&app, script).await;
        assert_eq!(status, StatusCode::OK, "{script}");
        assert!(content_type.contains("javascript"), "{content_type}");
    } else {
        assert!(body.contains("not in this build"), "{body}");
    }
}

/// The test command builds with npm, so there the app must really be embedded: a build
/// that lost it would otherwise pass the test above through its fallback branch.
#[test]
fn the_test_command_builds_embed_the_app() {
    if std::env::var_os("SERVERLESS_COMFYUI_REQUIRE_WEB").is_some() {
        assert!(serverless_comfyui::web::is_embedded());
    }
}

#[tokio::test]
async fn api_paths_never_fall_through_to_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (status, content_type, body) = fetch(&app(&dir), "/api/v2/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(body.contains("\"error\""), "{body}");
}
