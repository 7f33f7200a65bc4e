//! The HTTP and WebSocket side: ComfyUI 0.3.64's routes, status codes and bodies, every
//! route served bare and under `/api`, plus the simulator's own `/__sim/*` admin routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::catalogue::SimCatalogue;
use crate::config::Faults;
use crate::nodes::{self, annotated_filepath, commonpath, normpath, pjoin};
use crate::pyfmt::{obj, py_float, py_str, py_truthy};
use crate::state::{Item, Session, Shared, WsOut, lock};
use comfyui_graph::validate_prompt;

type St = State<Arc<Shared>>;

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_string(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn ok_json(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// What aiohttp answers when a handler raises.
pub(crate) fn internal_error() -> Response {
    let mut r = (
        StatusCode::INTERNAL_SERVER_ERROR,
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn parse_json(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

pub(crate) fn router(sh: Arc<Shared>) -> Router {
    let comfy: Router<Arc<Shared>> = Router::new()
        .route("/ws", get(ws_handler))
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{id}", get(get_history_id))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/system_stats", get(system_stats))
        .route("/object_info", get(object_info_all))
        .route("/object_info/{class}", get(object_info_one))
        .route("/features", get(features))
        .route("/embeddings", get(|| async { ok_json(&json!([])) }))
        .route("/extensions", get(|| async { ok_json(&json!([])) }))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_folder))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image));
    let mut app = Router::new()
        .route("/", get(index))
        .merge(comfy.clone())
        .nest("/api", comfy)
        .route("/__sim/faults", get(get_faults).post(post_faults))
        .route("/__sim/crash", post(post_crash))
        .route("/__sim/drop_ws", post(post_drop_ws))
        .route("/__sim/info", get(sim_info));
    if sh.cfg.jobs_api {
        app = app.route("/api/jobs/{id}", get(get_job));
        app = if sh.cfg.jobs_api_cancel {
            app.route("/api/jobs/{id}/cancel", post(cancel_job))
        } else {
            // ComfyUI 0.8.0: the jobs routes are there, their cancel is not (aiohttp's 405).
            app.route(
                "/api/jobs/{id}/cancel",
                axum::routing::any(|| async {
                    (StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed")
                }),
            )
        };
    }
    let limit = (sh.cfg.max_upload_size_mb as usize).saturating_mul(1024 * 1024);
    app.fallback(|| async {
        let mut r = (StatusCode::NOT_FOUND, "404: Not Found").into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    })
    .layer(middleware::from_fn_with_state(sh.clone(), guard))
    .layer(DefaultBodyLimit::max(limit))
    .with_state(sh)
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h == "::1" || h.starts_with("127.")
}

fn split_host_port(s: &str) -> (String, Option<String>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (h.to_string(), p.strip_prefix(':').map(str::to_string));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p.to_string())),
        _ => (s.to_string(), None),
    }
}

/// Faults (500, slow), the loopback origin check, OPTIONS and CORS headers.
async fn guard(State(sh): St, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let admin = path.starts_with("/__sim/");
    if !admin {
        let f = sh.faults();
        if f.slow_http_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(f.slow_http_ms)).await;
        }
        if f.http_500 {
            return internal_error();
        }
    }
    let cors = sh.cfg.cors_origin.clone();
    if cors.is_none() && !admin {
        let headers = req.headers();
        if let (Some(host), Some(origin)) = (
            headers.get(header::HOST).and_then(|v| v.to_str().ok()),
            headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        ) {
            let (hh, hp) = split_host_port(host);
            let o = origin.split_once("://").map(|(_, r)| r).unwrap_or(origin);
            let (oh, op) = split_host_port(o.trim_end_matches('/'));
            if is_loopback_host(&hh) {
                let differs = hh != oh || (hp.is_some() && op.is_some() && hp != op);
                if differs {
                    tracing::warn!(
                        "request with non matching host and origin {host} != {origin}, returning 403"
                    );
                    return empty(StatusCode::FORBIDDEN);
                }
            }
        }
    }
    let mut resp = if req.method() == Method::OPTIONS {
        empty(StatusCode::OK)
    } else {
        next.run(req).await
    };
    if let Some(origin) = cors {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, DELETE, PUT, OPTIONS, PATCH"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type, Authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

async fn index() -> Response {
    let mut r = "<!doctype html><title>comfyui-sim</title><h1>comfyui-sim</h1><p>This is a <b>simulator</b> of the ComfyUI server protocol (0.3.64), not ComfyUI. It has no frontend and no models.</p>".into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

// ---------------------------------------------------------------- WebSocket

async fn ws_handler(
    State(sh): St,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q.get("clientId").filter(|s| !s.is_empty()).cloned();
    ws.on_upgrade(move |socket| ws_session(sh, sid, socket))
}

async fn ws_session(sh: Arc<Shared>, sid: Option<String>, mut socket: WebSocket) {
    let sid = sid.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WsOut>();
    {
        let q = lock(&sh.q);
        let mut hub = lock(&sh.hub);
        // Reusing a clientId replaces the old session; the old socket stays open but
        // receives nothing more (ComfyUI does not close it).
        hub.sessions.remove(&sid);
        hub.sessions.insert(
            sid.clone(),
            Session {
                tx: tx.clone(),
                flags: json!({}),
            },
        );
        let mut data = Shared::status_data(&q);
        data["sid"] = json!(sid);
        hub.send("status", data, Some(&sid));
        if hub.client_id.as_deref() == Some(sid.as_str())
            && let Some(node) = hub.last_node_id.clone()
        {
            hub.send("executing", json!({ "node": node }), Some(&sid));
        }
    }
    drop(tx);
    let mut first = true;
    let mut outgoing_open = true;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        match serde_json::from_str::<Value>(t.as_str()) {
                            Ok(v) => {
                                if first && v.get("type").and_then(|t| t.as_str()) == Some("feature_flags") {
                                    let flags = v.get("data").cloned().unwrap_or_else(|| json!({}));
                                    let mut hub = lock(&sh.hub);
                                    if let Some(s) = hub.sessions.get_mut(&sid) {
                                        s.flags = flags;
                                    }
                                    hub.send("feature_flags", features_value(&sh), Some(&sid));
                                }
                                if v.is_object() { first = false; }
                            }
                            Err(_) => tracing::warn!("Invalid JSON received from client {sid}"),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            out = rx.recv(), if outgoing_open => {
                match out {
                    Some(WsOut::Text(t)) => { if socket.send(Message::Text(t.into())).await.is_err() { break; } }
                    Some(WsOut::Binary(b)) => { if socket.send(Message::Binary(b.into())).await.is_err() { break; } }
                    Some(WsOut::Drop) => { return_drop(&sh, &sid); return; }
                    None => outgoing_open = false,
                }
            }
        }
    }
    // ComfyUI's `finally: self.sockets.pop(sid)`: removes the entry even when it now
    // belongs to a newer socket with the same clientId. A faithful quirk.
    lock(&sh.hub).sessions.remove(&sid);
}

fn return_drop(sh: &Shared, sid: &str) {
    lock(&sh.hub).sessions.remove(sid);
}

// ---------------------------------------------------------------- prompt

async fn get_prompt(State(sh): St) -> Response {
    let q = lock(&sh.q);
    ok_json(&json!({"exec_info": {"queue_remaining": q.remaining()}}))
}

fn is_canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

async fn post_prompt(State(sh): St, body: Bytes) -> Response {
    tracing::info!("got prompt");
    let Some(data) = parse_json(&body) else {
        return internal_error();
    };
    let json_data = match data {
        Value::Object(m) => m,
        Value::Array(_) | Value::String(_) => {
            lock(&sh.q).counter += 1;
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}),
            );
        }
        _ => return internal_error(),
    };
    let number = if let Some(n) = json_data.get("number") {
        match py_float(n) {
            Ok(v) if !v.is_null() => v,
            _ => return internal_error(),
        }
    } else {
        let mut q = lock(&sh.q);
        let mut n = q.counter;
        if json_data.get("front").is_some_and(py_truthy) {
            n = -n;
        }
        q.counter += 1;
        json!(n)
    };
    let Some(prompt_v) = json_data.get("prompt") else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}),
        );
    };
    let prompt_id = match json_data.get("prompt_id") {
        None => uuid::Uuid::new_v4().to_string(),
        Some(Value::Null) if sh.cfg.strict_prompt_id => uuid::Uuid::new_v4().to_string(),
        Some(v) => py_str(v),
    };
    if sh.cfg.strict_prompt_id
        && json_data.get("prompt_id").is_some_and(|v| !v.is_null())
        && !is_canonical_uuid(&prompt_id)
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"type": "invalid_prompt_id", "message": "Invalid prompt_id format", "details": format!("prompt_id must be a valid UUID, got: {prompt_id}"), "extra_info": {}}, "node_errors": {}}),
        );
    }
    let mut prompt = match prompt_v {
        Value::Object(m) => m.clone(),
        _ => return internal_error(),
    };
    let partial = json_data.get("partial_execution_targets");
    let valid = match validate_prompt(&mut prompt, partial, &SimCatalogue(&sh.env)) {
        Ok(v) => v,
        Err(crash) => {
            tracing::error!("error while validating: {}: {}", crash.0.ty, crash.0.msg);
            return internal_error();
        }
    };
    let mut extra_data = match json_data.get("extra_data") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) if json_data.contains_key("client_id") => return internal_error(),
        Some(_) => Map::new(),
    };
    if let Some(c) = json_data.get("client_id") {
        extra_data.insert("client_id".into(), c.clone());
    }
    match valid {
        Ok(v) => {
            for k in ["auth_token_comfy_org", "api_key_comfy_org"] {
                extra_data.shift_remove(k);
            }
            let item = Item {
                number: number.clone(),
                prompt_id: prompt_id.clone(),
                prompt,
                extra_data,
                outputs: v.outputs,
            };
            {
                let mut q = lock(&sh.q);
                q.push(item);
                sh.broadcast_status(&q);
            }
            sh.cv.notify_all();
            ok_json(&obj([
                ("prompt_id", json!(prompt_id)),
                ("number", number),
                ("node_errors", Value::Object(v.node_errors)),
            ]))
        }
        Err(r) => {
            tracing::warn!("invalid prompt: {}", r.error);
            json_response(
                StatusCode::BAD_REQUEST,
                &obj([
                    ("error", r.error),
                    ("node_errors", Value::Object(r.node_errors)),
                ]),
            )
        }
    }
}

// ---------------------------------------------------------------- queue & history

async fn get_queue(State(sh): St) -> Response {
    let q = lock(&sh.q);
    let running: Vec<Value> = q.running.iter().map(Item::tuple).collect();
    let pending: Vec<Value> = q.heap.iter().map(Item::tuple).collect();
    ok_json(&json!({"queue_running": running, "queue_pending": pending}))
}

async fn post_queue(State(sh): St, body: Bytes) -> Response {
    let Some(Value::Object(data)) = parse_json(&body) else {
        return internal_error();
    };
    let mut q = lock(&sh.q);
    if data.get("clear").is_some_and(py_truthy) {
        q.heap.clear();
        sh.broadcast_status(&q);
    }
    if let Some(del) = data.get("delete") {
        let Value::Array(ids) = del else {
            return internal_error();
        };
        for id in ids {
            let id = py_str(id);
            if let Some(was_last) = q.remove_pending(&id) {
                if was_last {
                    sh.broadcast_status(&q);
                }
                sh.broadcast_status(&q);
            }
        }
    }
    empty(StatusCode::OK)
}

async fn get_history(State(sh): St, Query(qs): Query<HashMap<String, String>>) -> Response {
    let max_items = match qs.get("max_items").map(|s| s.trim().parse::<i64>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return internal_error(),
    };
    let mut offset = match qs.get("offset").map(|s| s.trim().parse::<i64>()) {
        None => -1,
        Some(Ok(v)) => v,
        Some(Err(_)) => return internal_error(),
    };
    let q = lock(&sh.q);
    if offset < 0
        && let Some(m) = max_items
    {
        offset = q.history.len() as i64 - m;
    }
    let mut out = Map::new();
    for (i, (k, v)) in q.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(k.clone(), v.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    ok_json(&Value::Object(out))
}

async fn get_history_id(State(sh): St, Path(id): Path<String>) -> Response {
    let q = lock(&sh.q);
    match q.history.get(&id) {
        Some(e) => ok_json(&obj([(id.as_str(), e.clone())])),
        None => ok_json(&json!({})),
    }
}

async fn post_history(State(sh): St, body: Bytes) -> Response {
    let Some(Value::Object(data)) = parse_json(&body) else {
        return internal_error();
    };
    let mut q = lock(&sh.q);
    if data.get("clear").is_some_and(py_truthy) {
        q.history.clear();
    }
    if let Some(Value::Array(ids)) = data.get("delete") {
        for id in ids {
            q.history.shift_remove(&py_str(id));
        }
    }
    empty(StatusCode::OK)
}

async fn post_interrupt(State(sh): St, body: Bytes) -> Response {
    let data = parse_json(&body).unwrap_or_else(|| json!({}));
    let Value::Object(data) = data else {
        return internal_error();
    };
    let q = lock(&sh.q);
    match data.get("prompt_id").filter(|v| py_truthy(v)) {
        Some(pid) => {
            let pid = py_str(pid);
            if q.running.iter().any(|i| i.prompt_id == pid) {
                tracing::info!("Interrupting prompt {pid}");
                sh.interrupt.store(true, Ordering::SeqCst);
            } else {
                tracing::info!("Prompt {pid} is not currently running, skipping interrupt");
            }
        }
        None => {
            tracing::info!("Global interrupt (no prompt_id specified)");
            sh.interrupt.store(true, Ordering::SeqCst);
        }
    }
    empty(StatusCode::OK)
}

async fn post_free(State(sh): St, body: Bytes) -> Response {
    let Some(Value::Object(data)) = parse_json(&body) else {
        return internal_error();
    };
    let mut q = lock(&sh.q);
    if data.get("unload_models").is_some_and(py_truthy) {
        q.unload_models = true;
    }
    if data.get("free_memory").is_some_and(py_truthy) {
        q.free_memory = true;
    }
    drop(q);
    sh.cv.notify_all();
    empty(StatusCode::OK)
}

// ---------------------------------------------------------------- jobs API ([newer])

fn job_status(q: &crate::state::Queue, id: &str) -> Option<(&'static str, Value)> {
    if let Some(i) = q.running.iter().find(|i| i.prompt_id == id) {
        return Some(("in_progress", i.number.clone()));
    }
    if let Some(i) = q.heap.iter().find(|i| i.prompt_id == id) {
        return Some(("pending", i.number.clone()));
    }
    let h = q.history.get(id)?;
    let status = &h["status"];
    let last = status["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m.get(0))
        .and_then(|e| e.as_str())
        .unwrap_or("");
    let s = if status["status_str"] == "success" {
        "completed"
    } else if last == "execution_interrupted" {
        "cancelled"
    } else {
        "failed"
    };
    Some((s, h["prompt"][0].clone()))
}

async fn get_job(State(sh): St, Path(id): Path<String>) -> Response {
    let q = lock(&sh.q);
    match job_status(&q, &id) {
        None => json_response(StatusCode::NOT_FOUND, &json!({"error": "Job not found"})),
        Some((status, priority)) => {
            let mut job = obj([
                ("id", json!(id)),
                ("status", json!(status)),
                ("priority", priority),
            ]);
            if let Some(h) = q.history.get(&id) {
                job["outputs"] = h["outputs"].clone();
                job["execution_status"] = h["status"].clone();
            }
            ok_json(&job)
        }
    }
}

async fn cancel_job(State(sh): St, Path(id): Path<String>) -> Response {
    let mut q = lock(&sh.q);
    let cancelled = if q.running.iter().any(|i| i.prompt_id == id) {
        tracing::info!("Cancelling running job {id}");
        sh.interrupt.store(true, Ordering::SeqCst);
        true
    } else if let Some(was_last) = q.remove_pending(&id) {
        if was_last {
            sh.broadcast_status(&q);
        }
        sh.broadcast_status(&q);
        true
    } else {
        false
    };
    ok_json(&json!({ "cancelled": cancelled }))
}

// ---------------------------------------------------------------- introspection

pub(crate) fn features_value(sh: &Shared) -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": sh.cfg.max_upload_size_mb * 1024 * 1024})
}

async fn features(State(sh): St) -> Response {
    ok_json(&features_value(&sh))
}

async fn system_stats(State(sh): St) -> Response {
    let argv: Vec<String> = std::env::args().collect();
    let ram: u64 = 17_179_869_184;
    ok_json(&json!({
        "system": {
            "os": "posix",
            "ram_total": ram,
            "ram_free": ram / 2,
            "comfyui_version": "0.3.64",
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": format!("none: comfyui-sim {} is a Rust SIMULATOR of ComfyUI, not ComfyUI", env!("CARGO_PKG_VERSION")),
            "pytorch_version": "none (simulator)",
            "embedded_python": false,
            "argv": argv,
        },
        "devices": [{
            "name": "sim:0 comfyui-sim (simulated device; model nodes return placeholders)",
            "type": "sim",
            "index": null,
            "vram_total": 0,
            "vram_free": 0,
            "torch_vram_total": 0,
            "torch_vram_free": 0
        }],
        "simulator": {
            "name": "comfyui-sim",
            "version": env!("CARGO_PKG_VERSION"),
            "simulates": "ComfyUI 0.3.64",
            "uptime_s": sh.started.elapsed().as_secs(),
        }
    }))
}

async fn object_info_all(State(sh): St) -> Response {
    let mut m = Map::new();
    for c in nodes::CLASSES {
        m.insert(c.name.to_string(), nodes::object_info(c, &sh.env));
    }
    ok_json(&Value::Object(m))
}

async fn object_info_one(State(sh): St, Path(class): Path<String>) -> Response {
    match nodes::class_info(&class) {
        Some(c) => ok_json(&obj([(class.as_str(), nodes::object_info(c, &sh.env))])),
        None => ok_json(&json!({})),
    }
}

const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "configs",
];

async fn models() -> Response {
    ok_json(&json!(MODEL_FOLDERS))
}

async fn models_folder(State(sh): St, Path(folder): Path<String>) -> Response {
    match folder.as_str() {
        "checkpoints" => ok_json(&json!(sh.env.checkpoints)),
        f if MODEL_FOLDERS.contains(&f) => ok_json(&json!([])),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

// ---------------------------------------------------------------- files

fn dir_by_type<'a>(sh: &'a Shared, ty: &str) -> Option<&'a std::path::Path> {
    match ty {
        "output" => Some(&sh.env.output_dir),
        "input" => Some(&sh.env.input_dir),
        "temp" => Some(&sh.env.temp_dir),
        _ => None,
    }
}

fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/x-wav",
        "flac" => "audio/flac",
        "ogg" | "opus" => "audio/ogg",
        "json" => "application/json",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

async fn view(State(sh): St, Query(qs): Query<HashMap<String, String>>) -> Response {
    let Some(raw) = qs.get("filename") else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (name, annotated_dir) = {
        let (n, d) = annotated_filepath(raw, &sh.env);
        let annotated = n.len() != raw.len();
        (n.to_string(), annotated.then(|| d.to_path_buf()))
    };
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let dir = match annotated_dir {
        Some(d) => d,
        None => match dir_by_type(&sh, qs.get("type").map(String::as_str).unwrap_or("output")) {
            Some(d) => d.to_path_buf(),
            None => return empty(StatusCode::BAD_REQUEST),
        },
    };
    let mut dir_s = dir.to_string_lossy().to_string();
    if let Some(sub) = qs.get("subfolder") {
        let full = pjoin(&dir_s, sub);
        if commonpath(&normpath(&full), &dir_s) != dir_s {
            return empty(StatusCode::FORBIDDEN);
        }
        dir_s = full;
    }
    let base = name.rsplit('/').next().unwrap_or(&name).to_string();
    let file = std::path::PathBuf::from(pjoin(&dir_s, &base));
    if !file.is_file() {
        return empty(StatusCode::NOT_FOUND);
    }
    let Ok(bytes) = tokio::fs::read(&file).await else {
        return empty(StatusCode::NOT_FOUND);
    };
    let channel = qs.get("channel").map(String::as_str).unwrap_or("rgba");
    let (bytes, ctype) = match channel {
        "rgb" | "a" => match crate::image::decode_png(&bytes) {
            Some(d) => {
                let png = if channel == "rgb" {
                    crate::image::encode_png(
                        d.width as u32,
                        d.height as u32,
                        png::ColorType::Rgb,
                        &d.rgb8(),
                        &[],
                        true,
                    )
                } else {
                    crate::image::encode_png(
                        d.width as u32,
                        d.height as u32,
                        png::ColorType::Rgba,
                        &d.alpha_only_rgba8(),
                        &[],
                        true,
                    )
                };
                (png, "image/png")
            }
            None => return internal_error(),
        },
        _ => {
            let mut ct = content_type(&base);
            if matches!(
                ct,
                "text/html" | "application/xhtml+xml" | "text/javascript" | "text/css"
            ) {
                ct = "application/octet-stream";
            }
            (bytes, ct)
        }
    };
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("filename=\"{base}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn upload_image(
    State(sh): St,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let _ = headers;
    let Ok(mut mp) = multipart else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let mut image: Option<(String, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        match mp.next_field().await {
            Ok(Some(f)) => {
                let name = f.name().unwrap_or("").to_string();
                let file_name = f.file_name().map(str::to_string);
                let Ok(data) = f.bytes().await else {
                    return empty(StatusCode::BAD_REQUEST);
                };
                if name == "image" {
                    image = Some((file_name.unwrap_or_default(), data));
                } else {
                    fields.insert(name, String::from_utf8_lossy(&data).to_string());
                }
            }
            Ok(None) => break,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        }
    }
    let ty = fields
        .get("type")
        .cloned()
        .unwrap_or_else(|| "input".into());
    let Some(dir) = dir_by_type(&sh, &ty) else {
        return internal_error();
    };
    let Some((mut filename, data)) = image else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if filename.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let dir_s = dir.to_string_lossy().to_string();
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    let folder = pjoin(&dir_s, &normpath(&subfolder));
    let filepath = normpath(&pjoin(&folder, &filename));
    if commonpath(&dir_s, &filepath) != dir_s {
        return empty(StatusCode::BAD_REQUEST);
    }
    if std::fs::create_dir_all(&folder).is_err() {
        return internal_error();
    }
    let overwrite = matches!(
        fields.get("overwrite").map(String::as_str),
        Some("true") | Some("1")
    );
    let (stem, ext) = match filename.rfind('.') {
        Some(i) if i > 0 => (filename[..i].to_string(), filename[i..].to_string()),
        _ => (filename.clone(), String::new()),
    };
    let mut path = std::path::PathBuf::from(&filepath);
    let mut duplicate = false;
    if !overwrite {
        let mut i = 1;
        while path.exists() {
            if std::fs::read(&path).is_ok_and(|existing| existing == data.as_ref()) {
                duplicate = true;
                break;
            }
            filename = format!("{stem} ({i}){ext}");
            path = std::path::PathBuf::from(pjoin(&folder, &filename));
            i += 1;
        }
    }
    if !duplicate && std::fs::write(&path, &data).is_err() {
        return internal_error();
    }
    ok_json(&json!({"name": filename, "subfolder": subfolder, "type": ty}))
}

// ---------------------------------------------------------------- admin

async fn get_faults(State(sh): St) -> Response {
    ok_json(&serde_json::to_value(sh.faults()).unwrap_or_default())
}

/// `POST /__sim/faults`: set any subset of the fault fields; the others keep their value.
async fn post_faults(State(sh): St, body: Bytes) -> Response {
    let Some(Value::Object(patch)) = parse_json(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "expected a JSON object"}),
        );
    };
    let mut current = serde_json::to_value(sh.faults()).unwrap_or_default();
    for (k, v) in patch {
        current[k] = v;
    }
    match serde_json::from_value::<Faults>(current) {
        Ok(f) => {
            tracing::warn!("comfyui-sim faults set: {f:?}");
            *lock(&sh.faults) = f.clone();
            ok_json(&serde_json::to_value(f).unwrap_or_default())
        }
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    }
}

async fn post_crash(State(sh): St) -> Response {
    let sh2 = sh.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        sh2.teardown(true);
    });
    empty(StatusCode::OK)
}

async fn post_drop_ws(State(sh): St) -> Response {
    lock(&sh.hub).drop_all();
    empty(StatusCode::OK)
}

async fn sim_info(State(sh): St) -> Response {
    let q = lock(&sh.q);
    ok_json(&json!({
        "simulator": "comfyui-sim",
        "version": env!("CARGO_PKG_VERSION"),
        "input_dir": sh.env.input_dir,
        "output_dir": sh.env.output_dir,
        "temp_dir": sh.env.temp_dir,
        "worker_alive": q.worker_alive,
        "websockets": lock(&sh.hub).sessions.len(),
    }))
}
