//! The HTTP client and the high-level helpers (`run_prompt`, `cancel_prompt`,
//! `clear_leftovers`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;
use url::Url;

use crate::error::{Error, NodeError, PromptError, PromptRejection, Result};
use crate::events::Event;
use crate::outputs::{FileRef, Outputs};
use crate::types::{
    HistoryEntry, PromptAccepted, PromptOutcome, PromptState, QueueItem, QueueState, UploadOptions,
    UploadedFile,
};
use crate::ws::{EventStream, StreamConfig, StreamItem};

/// A prompt to queue.
#[derive(Debug, Clone)]
pub struct PromptRequest {
    /// Choose it yourself ([`crate::new_prompt_id`]): then events that arrive before the
    /// HTTP answer can be matched, and a retried POST cannot create a twin.
    pub prompt_id: String,
    /// API-format workflow.
    pub prompt: Map<String, Value>,
    /// Picks the WebSocket session that receives this prompt's events. Without it most
    /// execution events go to nobody.
    pub client_id: Option<String>,
    pub extra_data: Option<Map<String, Value>>,
    /// Jump ahead of the queue.
    pub front: bool,
    /// Only these output nodes run.
    pub partial_execution_targets: Option<Vec<String>>,
    /// Accept a 200 whose `node_errors` is not empty (some outputs dropped). Default:
    /// treat it as a rejection.
    pub allow_partial: bool,
}

impl PromptRequest {
    pub fn new(prompt_id: impl Into<String>, prompt: Map<String, Value>) -> Self {
        PromptRequest {
            prompt_id: prompt_id.into(),
            prompt,
            client_id: None,
            extra_data: None,
            front: false,
            partial_execution_targets: None,
            allow_partial: false,
        }
    }

    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    fn body(&self) -> Value {
        let mut b = Map::new();
        b.insert("prompt".into(), Value::Object(self.prompt.clone()));
        b.insert("prompt_id".into(), json!(self.prompt_id));
        if let Some(c) = &self.client_id {
            b.insert("client_id".into(), json!(c));
        }
        if let Some(e) = &self.extra_data {
            b.insert("extra_data".into(), Value::Object(e.clone()));
        }
        if self.front {
            b.insert("front".into(), json!(true));
        }
        if let Some(t) = &self.partial_execution_targets {
            b.insert("partial_execution_targets".into(), json!(t));
        }
        Value::Object(b)
    }
}

/// Options of [`Client::run_prompt`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// WebSocket clientId; default: the client's own ([`Client::client_id`]).
    pub client_id: Option<String>,
    pub extra_data: Option<Map<String, Value>>,
    /// Give up (with [`Error::Timeout`]) after this long. ComfyUI 0.3.64 can stall forever
    /// (a dead worker thread): always set one in production.
    pub deadline: Option<Duration>,
    /// Check `/queue` then `/history` this often even while the WebSocket is healthy, so
    /// lost events can never hang us.
    pub poll_interval: Duration,
    /// After success/interruption/fatal error, how long to wait for `executing null`
    /// before reading history anyway.
    pub completion_grace: Duration,
    /// HTTP failures in a row (while polling) before reporting the server gone.
    pub max_poll_failures: u32,
    /// See [`PromptRequest::allow_partial`].
    pub allow_partial: bool,
    pub stream: StreamConfig,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            client_id: None,
            extra_data: None,
            deadline: None,
            poll_interval: Duration::from_secs(2),
            completion_grace: Duration::from_secs(2),
            max_poll_failures: 3,
            allow_partial: false,
            stream: StreamConfig::default(),
        }
    }
}

/// What [`Client::run_prompt`] returns when the prompt reached an end.
#[derive(Debug, Clone)]
pub struct PromptRun {
    pub prompt_id: String,
    pub outcome: PromptOutcome,
    /// Everything the prompt produced (on failure: what finished before it).
    pub outputs: Outputs,
    pub history: HistoryEntry,
    /// `node_errors` of a partially accepted prompt (only with `allow_partial`).
    pub node_errors: Map<String, Value>,
    /// How many times the WebSocket had to reconnect.
    pub reconnects: u32,
}

/// How a cancel was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMethod {
    /// `POST /api/jobs/{id}/cancel` (newer servers; atomic).
    JobsApi,
    /// `POST /queue {"delete": [id]}` while pending.
    QueueDelete,
    /// `POST /interrupt {"prompt_id": id}` while running.
    Interrupt,
    /// Nothing to do: finished or unknown.
    None,
}

/// Where the prompt ended up after a cancel.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// Removed before it ran: no history entry, no events.
    RemovedWhilePending,
    /// Stopped; history says interrupted.
    Interrupted(Box<HistoryEntry>),
    /// It finished on its own (success or error) before the cancel landed.
    AlreadyFinished(Box<HistoryEntry>),
    /// Neither queued nor in history.
    NotFound,
    /// Interrupt requested but not confirmed within the verify timeout: an interrupt lands
    /// at the next node boundary or progress tick, which can take long.
    Requested,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CancelReport {
    pub method: CancelMethod,
    pub outcome: CancelOutcome,
}

/// What [`Client::clear_leftovers`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leftovers {
    /// Pending prompts deleted.
    pub deleted: Vec<String>,
    /// Running prompts asked to stop (not waited for).
    pub interrupted: Vec<String>,
}

/// A ComfyUI server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    client_id: String,
    jobs_api: std::sync::Arc<OnceCell<bool>>,
    /// Set once `POST /api/jobs/{id}/cancel` proved absent though the jobs API is there
    /// (ComfyUI 0.8.0 answers it 405): cancels then use the queue and `/interrupt`.
    jobs_cancel_missing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn status_err(method: &'static str, path: &str, status: u16, body: &[u8]) -> Error {
    let mut body = String::from_utf8_lossy(body).to_string();
    body.truncate(2000);
    Error::Status {
        method,
        path: path.to_string(),
        status,
        body,
    }
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8188`), with a fresh
    /// `client_id`.
    pub fn new(base_url: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Url(e.to_string()))?;
        Self::with_http(base_url, http)
    }

    /// Use your own `reqwest::Client` (timeouts, proxies...).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Client> {
        let mut base = Url::parse(base_url).map_err(|e| Error::Url(format!("{base_url}: {e}")))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(Client {
            http,
            base,
            client_id: uuid::Uuid::new_v4().to_string(),
            jobs_api: Default::default(),
            jobs_cancel_missing: Default::default(),
        })
    }

    /// Use this WebSocket clientId by default (e.g. `"<runner-prefix>-<uuid>"`, so that a
    /// successor can find your prompts with [`Client::clear_leftovers`]).
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("relative path joins")
    }

    /// `ws://host:port/ws`.
    pub fn ws_url(&self) -> Url {
        let mut u = self.url("ws");
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        let _ = u.set_scheme(scheme);
        u
    }

    async fn send(&self, path: &str, rb: reqwest::RequestBuilder) -> Result<(u16, Bytes)> {
        let resp = rb.send().await.map_err(|source| Error::Transport {
            url: self.url(path).to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|source| Error::Transport {
            url: self.url(path).to_string(),
            source,
        })?;
        Ok((status, body))
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let (status, body) = self.send(path, self.http.get(self.url(path))).await?;
        if status != 200 {
            return Err(status_err("GET", path, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what: format!("GET {path}"),
            detail: e.to_string(),
        })
    }

    async fn post_empty_ok(&self, path: &str, body: &Value) -> Result<()> {
        let (status, b) = self
            .send(path, self.http.post(self.url(path)).json(body))
            .await?;
        if status != 200 {
            return Err(status_err("POST", path, status, &b));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ introspection

    /// `GET /system_stats`: the cheap health and version probe.
    pub async fn system_stats(&self) -> Result<Value> {
        self.get_json("system_stats").await
    }

    /// Poll `/system_stats` until it answers 200 (ComfyUI takes seconds to open its port).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            let last = match self.system_stats().await {
                Ok(v) => return Ok(v),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= end {
                return Err(Error::Timeout(format!(
                    "ComfyUI not ready after {timeout:?}: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET /object_info`: every node class.
    pub async fn object_info(&self) -> Result<Map<String, Value>> {
        match self.get_json("object_info").await? {
            Value::Object(m) => Ok(m),
            _ => Err(Error::Decode {
                what: "GET /object_info".into(),
                detail: "not an object".into(),
            }),
        }
    }

    /// `GET /object_info/{class}`; `None` for an unknown class (the server answers `{}`).
    pub async fn object_info_class(&self, class: &str) -> Result<Option<Value>> {
        let v = self.get_json(&format!("object_info/{class}")).await?;
        Ok(v.get(class).cloned())
    }

    /// `GET /features`.
    pub async fn features(&self) -> Result<Value> {
        self.get_json("features").await
    }

    /// `POST /free`. `free_memory` also drops ComfyUI's caches (the next identical prompt
    /// runs again). Applied after the current prompt.
    pub async fn free(&self, unload_models: bool, free_memory: bool) -> Result<()> {
        self.post_empty_ok(
            "free",
            &json!({"unload_models": unload_models, "free_memory": free_memory}),
        )
        .await
    }

    // ------------------------------------------------------------------ prompts

    /// `POST /prompt`. A 400 becomes [`Error::Rejected`] with per-node errors; so does a
    /// 200 with non-empty `node_errors` unless `req.allow_partial` (then `queued` is true:
    /// the valid outputs are on the queue, cancel them if you fail the job).
    pub async fn queue_prompt(&self, req: &PromptRequest) -> Result<PromptAccepted> {
        let (status, body) = self
            .send(
                "prompt",
                self.http.post(self.url("prompt")).json(&req.body()),
            )
            .await?;
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        match (status, parsed) {
            (200, Some(v)) => {
                let acc: PromptAccepted = serde_json::from_value(v).map_err(|e| Error::Decode {
                    what: "POST /prompt".into(),
                    detail: e.to_string(),
                })?;
                if !acc.node_errors.is_empty() && !req.allow_partial {
                    return Err(Error::Rejected(Box::new(PromptRejection {
                        prompt_id: acc.prompt_id.clone(),
                        http_status: 200,
                        error: PromptError {
                            kind: "partial_validation_failure".into(),
                            message: "some output nodes failed validation and were dropped".into(),
                            details: String::new(),
                            extra_info: json!({}),
                        },
                        node_errors: node_errors(&acc.node_errors),
                        queued: true,
                    })));
                }
                Ok(acc)
            }
            (400, Some(v)) if v.get("error").is_some() => {
                let error = match v.get("error") {
                    Some(Value::String(s)) => PromptError {
                        kind: "error".into(),
                        message: s.clone(),
                        details: String::new(),
                        extra_info: json!({}),
                    },
                    Some(e) => serde_json::from_value(e.clone()).unwrap_or(PromptError {
                        kind: "unknown".into(),
                        message: e.to_string(),
                        details: String::new(),
                        extra_info: json!({}),
                    }),
                    None => unreachable!(),
                };
                let ne = v
                    .get("node_errors")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                Err(Error::Rejected(Box::new(PromptRejection {
                    prompt_id: req.prompt_id.clone(),
                    http_status: 400,
                    error,
                    node_errors: node_errors(&ne),
                    queued: false,
                })))
            }
            _ => Err(status_err("POST", "prompt", status, &body)),
        }
    }

    /// `GET /history/{id}`; `None` while pending or running, and for unknown ids (the
    /// server cannot tell them apart: use [`Client::prompt_state`]).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>> {
        let v = self.get_json(&format!("history/{prompt_id}")).await?;
        match v.get(prompt_id) {
            None => Ok(None),
            Some(e) => serde_json::from_value(e.clone())
                .map(Some)
                .map_err(|e| Error::Decode {
                    what: format!("GET /history/{prompt_id}"),
                    detail: e.to_string(),
                }),
        }
    }

    /// `GET /history?max_items=N`: the last N entries, oldest first.
    pub async fn history_recent(
        &self,
        max_items: Option<u32>,
    ) -> Result<Vec<(String, HistoryEntry)>> {
        let path = match max_items {
            Some(n) => format!("history?max_items={n}"),
            None => "history".into(),
        };
        let v = self.get_json(&path).await?;
        Ok(v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, e)| {
                        serde_json::from_value(e.clone())
                            .ok()
                            .map(|e| (k.clone(), e))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `POST /history {"delete": ids}`.
    pub async fn delete_history(&self, prompt_ids: &[&str]) -> Result<()> {
        self.post_empty_ok("history", &json!({ "delete": prompt_ids }))
            .await
    }

    /// `GET /queue`, pending items sorted into run order.
    pub async fn queue(&self) -> Result<QueueState> {
        let v = self.get_json("queue").await?;
        let items = |k: &str| -> Vec<QueueItem> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(QueueItem::from_tuple).collect())
                .unwrap_or_default()
        };
        let mut pending = items("queue_pending");
        pending.sort_by(|a, b| {
            a.number
                .total_cmp(&b.number)
                .then_with(|| a.prompt_id.cmp(&b.prompt_id))
        });
        Ok(QueueState {
            running: items("queue_running"),
            pending,
        })
    }

    /// `POST /queue {"delete": ids}`: removes *pending* prompts (a running one is not
    /// touched: interrupt it).
    pub async fn delete_pending(&self, prompt_ids: &[&str]) -> Result<()> {
        self.post_empty_ok("queue", &json!({ "delete": prompt_ids }))
            .await
    }

    /// `POST /queue {"clear": true}`: every pending prompt, everyone's.
    pub async fn clear_pending(&self) -> Result<()> {
        self.post_empty_ok("queue", &json!({"clear": true})).await
    }

    /// `POST /interrupt`. With a prompt id it only acts if that prompt is running now;
    /// without one it interrupts whatever runs (never do that on a shared server). The
    /// flag is cleared when the next prompt starts, and it lands at the next node
    /// boundary or progress tick.
    pub async fn interrupt(&self, prompt_id: Option<&str>) -> Result<()> {
        let body = match prompt_id {
            Some(p) => json!({ "prompt_id": p }),
            None => json!({}),
        };
        self.post_empty_ok("interrupt", &body).await
    }

    /// Whether the server has the jobs API (`/api/jobs`, newer than 0.3.64). Detected
    /// once: `GET /api/jobs/<random uuid>` answers 404 with a JSON `error` body when the
    /// route exists, and the router's plain 404 when it doesn't.
    pub async fn has_jobs_api(&self) -> Result<bool> {
        let v = self
            .jobs_api
            .get_or_try_init(|| async {
                let path = format!("api/jobs/{}", uuid::Uuid::new_v4());
                let (status, body) = self.send(&path, self.http.get(self.url(&path))).await?;
                let json_err = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .is_some_and(|v| v.get("error").is_some());
                Ok::<bool, Error>(status == 200 || (status == 404 && json_err))
            })
            .await?;
        Ok(*v)
    }

    /// `POST /api/jobs/{id}/cancel` → `Some(cancelled)`. `None` where the server has no
    /// such route (405, or the router's plain 404), which some servers with the jobs API
    /// lack (ComfyUI 0.8.0): remembered, so later cancels go straight to the queue and
    /// `/interrupt`.
    pub async fn cancel_job(&self, prompt_id: &str) -> Result<Option<bool>> {
        use std::sync::atomic::Ordering;
        if self.jobs_cancel_missing.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let path = format!("api/jobs/{prompt_id}/cancel");
        let (status, body) = self.send(&path, self.http.post(self.url(&path))).await?;
        let json_error = serde_json::from_slice::<Value>(&body)
            .ok()
            .is_some_and(|v| v.get("error").is_some());
        if status == 405 || (status == 404 && !json_error) {
            self.jobs_cancel_missing.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        if status != 200 {
            return Err(status_err("POST", &path, status, &body));
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(Some(
            v.get("cancelled").and_then(Value::as_bool).unwrap_or(false),
        ))
    }

    /// Where a prompt stands: `/queue` first, then `/history` (moving an item from running
    /// to history is atomic, and this order never misses it).
    pub async fn prompt_state(&self, prompt_id: &str) -> Result<PromptState> {
        let q = self.queue().await?;
        if q.is_running(prompt_id) {
            return Ok(PromptState::Running);
        }
        if q.is_pending(prompt_id) {
            return Ok(PromptState::Pending);
        }
        Ok(match self.history(prompt_id).await? {
            Some(h) => PromptState::Finished(Box::new(h)),
            None => PromptState::Unknown,
        })
    }

    // ------------------------------------------------------------------ files

    /// `/view?filename&subfolder&type` for a file.
    fn view_url(&self, file: &FileRef) -> Url {
        let mut url = self.url("view");
        url.query_pairs_mut()
            .append_pair("filename", &file.filename)
            .append_pair("subfolder", &file.subfolder)
            .append_pair("type", &file.kind);
        url
    }

    /// `GET /view`: a file's bytes. Take `type` from the output record (previews are `temp`).
    pub async fn view(&self, file: &FileRef) -> Result<Bytes> {
        let url = self.view_url(file);
        let (status, body) = self.send("view", self.http.get(url)).await?;
        if status != 200 {
            return Err(status_err(
                "GET",
                &format!("view?filename={}", file.filename),
                status,
                &body,
            ));
        }
        Ok(body)
    }

    /// `GET /view` as a response to stream (big videos).
    pub async fn view_response(&self, file: &FileRef) -> Result<reqwest::Response> {
        let url = self.view_url(file);
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|source| Error::Transport {
                url: url.to_string(),
                source,
            })?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(status_err("GET", "view", status, &body));
        }
        Ok(resp)
    }

    /// `POST /upload/image` (any file type). The server may rename on a clash; use the
    /// returned name ([`UploadedFile::load_image_name`]).
    pub async fn upload_image(
        &self,
        filename: &str,
        data: impl Into<Bytes>,
        opts: &UploadOptions,
    ) -> Result<UploadedFile> {
        let data: Bytes = data.into();
        let part = reqwest::multipart::Part::stream(data).file_name(filename.to_string());
        let mut form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", opts.kind.clone().unwrap_or_else(|| "input".into()))
            .text("subfolder", opts.subfolder.clone());
        if opts.overwrite {
            form = form.text("overwrite", "true");
        }
        let (status, body) = self
            .send(
                "upload/image",
                self.http.post(self.url("upload/image")).multipart(form),
            )
            .await?;
        if status != 200 {
            return Err(status_err("POST", "upload/image", status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what: "POST /upload/image".into(),
            detail: e.to_string(),
        })
    }

    // ------------------------------------------------------------------ helpers

    /// Follow the WebSocket as `client_id` (reconnecting with backoff).
    pub async fn events(&self, client_id: &str, cfg: StreamConfig) -> Result<EventStream> {
        EventStream::connect(&self.ws_url(), client_id, cfg).await
    }

    /// Cancel a prompt, whatever its state (ARCHITECTURE §4): the jobs-cancel API where
    /// the server has it (the jobs API alone is not enough: see [`Client::cancel_job`]);
    /// otherwise delete it while pending or interrupt it (by id) while
    /// running; then verify with `/queue` and `/history` for up to `verify_timeout`.
    pub async fn cancel_prompt(
        &self,
        prompt_id: &str,
        verify_timeout: Duration,
    ) -> Result<CancelReport> {
        let mut method = CancelMethod::None;
        let via_jobs_api = if self.has_jobs_api().await? {
            match self.cancel_job(prompt_id).await? {
                Some(true) => {
                    method = CancelMethod::JobsApi;
                    true
                }
                Some(false) => true,
                // The jobs API without its cancel route: as a server without it.
                None => false,
            }
        } else {
            false
        };
        if !via_jobs_api {
            // Bounded: a delete can lose the race against the worker picking it up.
            for _ in 0..3 {
                match self.prompt_state(prompt_id).await? {
                    PromptState::Pending => {
                        self.delete_pending(&[prompt_id]).await?;
                        method = CancelMethod::QueueDelete;
                    }
                    PromptState::Running => {
                        self.interrupt(Some(prompt_id)).await?;
                        method = CancelMethod::Interrupt;
                        break;
                    }
                    PromptState::Finished(h) => {
                        if method == CancelMethod::None {
                            return Ok(CancelReport {
                                method,
                                outcome: CancelOutcome::AlreadyFinished(h),
                            });
                        }
                        break;
                    }
                    PromptState::Unknown => break,
                }
            }
        }
        let end = Instant::now() + verify_timeout;
        loop {
            let outcome = match self.prompt_state(prompt_id).await? {
                PromptState::Finished(h) => match h.outcome() {
                    PromptOutcome::Interrupted(_) => Some(CancelOutcome::Interrupted(h)),
                    _ => Some(CancelOutcome::AlreadyFinished(h)),
                },
                PromptState::Unknown => Some(match method {
                    CancelMethod::QueueDelete | CancelMethod::JobsApi => {
                        CancelOutcome::RemovedWhilePending
                    }
                    _ => CancelOutcome::NotFound,
                }),
                PromptState::Pending if method == CancelMethod::QueueDelete => {
                    // Deleted, yet still listed: try again.
                    self.delete_pending(&[prompt_id]).await?;
                    None
                }
                PromptState::Running if method == CancelMethod::QueueDelete => {
                    // It started between our read and the delete.
                    self.interrupt(Some(prompt_id)).await?;
                    method = CancelMethod::Interrupt;
                    None
                }
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Ok(CancelReport { method, outcome });
            }
            if Instant::now() >= end {
                return Ok(CancelReport {
                    method,
                    outcome: CancelOutcome::Requested,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// On attach: delete the pending prompts whose `client_id` starts with `prefix` (a
    /// predecessor's), and ask a running one to stop. Does not wait for the interrupt.
    pub async fn clear_leftovers(&self, client_id_prefix: &str) -> Result<Leftovers> {
        let q = self.queue().await?;
        let mine = |i: &&QueueItem| {
            i.client_id()
                .is_some_and(|c| c.starts_with(client_id_prefix))
        };
        let mut out = Leftovers::default();
        let pending: Vec<&str> = q
            .pending
            .iter()
            .filter(mine)
            .map(|i| i.prompt_id.as_str())
            .collect();
        if !pending.is_empty() {
            self.delete_pending(&pending).await?;
            out.deleted = pending.iter().map(|s| s.to_string()).collect();
        }
        for i in q.running.iter().filter(mine) {
            let cancelled = if self.has_jobs_api().await? {
                self.cancel_job(&i.prompt_id).await?.is_some()
            } else {
                false
            };
            if !cancelled {
                self.interrupt(Some(&i.prompt_id)).await?;
            }
            out.interrupted.push(i.prompt_id.clone());
        }
        Ok(out)
    }

    /// Run a prompt to its end: connect the WebSocket first, queue the prompt with our
    /// own id, follow events (passing each to `on_event`), survive WebSocket drops
    /// (re-reading `/queue` and `/history` after each reconnect and every
    /// `poll_interval`), and return what history says.
    ///
    /// Errors: [`Error::Rejected`] (validation; a partial acceptance is cancelled first
    /// unless `allow_partial`), [`Error::ServerGone`] (the server stopped answering),
    /// [`Error::Timeout`] (`deadline`), [`Error::PromptLost`].
    pub async fn run_prompt(
        &self,
        prompt_id: &str,
        workflow: Map<String, Value>,
        opts: &RunOptions,
        mut on_event: impl FnMut(&StreamItem),
    ) -> Result<PromptRun> {
        let started = Instant::now();
        let client_id = opts
            .client_id
            .clone()
            .unwrap_or_else(|| self.client_id.clone());
        let mut stream = self.events(&client_id, opts.stream.clone()).await?;
        let req = PromptRequest {
            prompt_id: prompt_id.to_string(),
            prompt: workflow,
            client_id: Some(client_id.clone()),
            extra_data: opts.extra_data.clone(),
            front: false,
            partial_execution_targets: None,
            allow_partial: opts.allow_partial,
        };
        let accepted = match self.queue_prompt(&req).await {
            Ok(a) => a,
            Err(Error::Rejected(r)) => {
                if r.queued {
                    let _ = self.cancel_prompt(prompt_id, Duration::from_secs(2)).await;
                }
                stream.close().await;
                return Err(Error::Rejected(r));
            }
            Err(e) => {
                stream.close().await;
                return Err(e);
            }
        };
        let result = self
            .follow(prompt_id, &mut stream, opts, started, &mut on_event)
            .await;
        stream.close().await;
        let (history, reconnects) = result?;
        Ok(PromptRun {
            prompt_id: prompt_id.to_string(),
            outcome: history.outcome(),
            outputs: history.collect_outputs(),
            history,
            node_errors: accepted.node_errors,
            reconnects,
        })
    }

    async fn follow(
        &self,
        prompt_id: &str,
        stream: &mut EventStream,
        opts: &RunOptions,
        started: Instant,
        on_event: &mut impl FnMut(&StreamItem),
    ) -> Result<(HistoryEntry, u32)> {
        let far = Duration::from_secs(365 * 24 * 3600);
        let deadline = tokio::time::Instant::from_std(started + opts.deadline.unwrap_or(far));
        let mut poll = tokio::time::interval(opts.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut grace: Option<tokio::time::Instant> = None;
        let mut reconnects = 0u32;
        let mut failures = 0u32;
        let mut stream_open = true;
        loop {
            let grace_at = grace.unwrap_or(deadline);
            let mut check = false;
            tokio::select! {
                item = stream.next(), if stream_open => match item {
                    Some(item) => {
                        let relevant = match &item {
                            StreamItem::Event(e) => e.prompt_id().is_none_or(|p| p == prompt_id),
                            _ => true,
                        };
                        if relevant {
                            on_event(&item);
                        }
                        match &item {
                            StreamItem::Event(e) if e.is_done(prompt_id) => check = true,
                            StreamItem::Event(e) if e.is_terminal_for(prompt_id) => {
                                grace = Some(tokio::time::Instant::now() + opts.completion_grace);
                            }
                            StreamItem::Reconnected { .. } => {
                                reconnects += 1;
                                check = true;
                            }
                            StreamItem::GaveUp { reason } => {
                                // One last look over HTTP before declaring the server gone.
                                return match self.prompt_state(prompt_id).await {
                                    Ok(PromptState::Finished(h)) => Ok((*h, reconnects)),
                                    _ => Err(Error::ServerGone(reason.clone())),
                                };
                            }
                            _ => {}
                        }
                    }
                    None => stream_open = false,
                },
                _ = poll.tick() => check = true,
                _ = tokio::time::sleep_until(grace_at), if grace.is_some() => {
                    grace = None;
                    check = true;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Timeout(format!(
                        "prompt {prompt_id} did not finish within {:?}",
                        opts.deadline.unwrap_or(far)
                    )));
                }
            }
            if check {
                match self.prompt_state(prompt_id).await {
                    Ok(PromptState::Finished(h)) => return Ok((*h, reconnects)),
                    Ok(PromptState::Unknown) => {
                        return Err(Error::PromptLost(prompt_id.to_string()));
                    }
                    Ok(_) => failures = 0,
                    Err(e @ (Error::Transport { .. } | Error::Status { .. })) => {
                        failures += 1;
                        tracing::warn!("ComfyUI poll failed ({failures}): {e}");
                        if failures >= opts.max_poll_failures || !stream_open {
                            return Err(Error::ServerGone(e.to_string()));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn node_errors(m: &Map<String, Value>) -> BTreeMap<String, NodeError> {
    m.iter()
        .map(|(k, v)| {
            let ne = serde_json::from_value(v.clone()).unwrap_or(NodeError {
                errors: vec![],
                dependent_outputs: vec![],
                class_type: String::new(),
            });
            (k.clone(), ne)
        })
        .collect()
}

/// Convenience: an [`Event`] if the item is one.
pub fn as_event(item: &StreamItem) -> Option<&Event> {
    match item {
        StreamItem::Event(e) => Some(e),
        _ => None,
    }
}
