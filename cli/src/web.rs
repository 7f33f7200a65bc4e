//! The web app at `/`, embedded in the binary.
//!
//! `build.rs` builds `frontend/` with Vite into `$OUT_DIR/web` whenever npm is present,
//! and [`rust_embed`] puts those files into the executable (release builds; debug builds
//! read the same folder from disk). So a fresh clone's `cargo run -p serverless-comfyui --
//! dev` serves the app with no second step, and an installed binary carries it too.
//!
//! Unknown paths answer the app's `index.html`, so its client-side routes survive a reload.
//! When the build had no npm, `/` answers a short page that says how to get the app.
//! The files are our own build output, never a user's upload, so serving them as HTML from
//! this origin is safe; they still go out with `nosniff`.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "$OUT_DIR/web"]
struct WebApp;

/// Whether this binary was built with the web app.
pub fn is_embedded() -> bool {
    WebApp::get("index.html").is_some()
}

/// Answers any non-API path from the embedded app.
pub async fn serve(uri: Uri) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let (path, file) = match WebApp::get(path) {
        Some(file) => (path, file),
        None => match WebApp::get("index.html") {
            Some(index) => ("index.html", index),
            None => return (StatusCode::OK, Html(NOT_BUILT)).into_response(),
        },
    };
    let mut response = Body::from(file.data.into_owned()).into_response();
    let headers = response.headers_mut();
    if let Ok(content_type) = HeaderValue::from_str(file.metadata.mimetype()) {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Vite names everything under assets/ by its content hash; index.html must be fresh.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

const NOT_BUILT: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>serverless-comfyui dev</title>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>The web app is not in this build</h1>
<p>This <code>serverless-comfyui</code> was built without npm (or with
<code>SERVERLESS_COMFYUI_WEB=skip</code>), so it carries no web app. The API works:
<a href="/api/v2/health">/api/v2/health</a>.</p>
<p>To get the app, install Node.js 20 and npm, then rebuild; the build embeds it:</p>
<pre>cargo run --release -p serverless-comfyui -- dev</pre>
<p>Or build it apart (<code>bash frontend/ci.sh</code>) and point <code>dev</code> at it with
<code>SERVERLESS_COMFYUI_FRONTEND_DIR=frontend/dist</code>.</p>
</body>
"#;
