//! [`Api`]: the HTTP side of the client, one method per Comfy API v2 route it uses.
//!
//! ## Addresses
//!
//! The base URL is what comfy-sdk calls `COMFY_BASE_URL`: the server's origin, plus a
//! mount prefix if it has one (`https://example.com/comfy`). Routes are that base plus
//! `/api/v2/...`; a base given with `/api/v2` already on it is accepted too. The links
//! a server returns (`urls.events`, an output's `url`) are either absolute or
//! root-relative *with the prefix already in them*, so they resolve against the origin,
//! never against the base (which would double the prefix).
//!
//! ## The key
//!
//! The API key goes out as `Authorization: Bearer <key>` and only to the base URL's own
//! origin: a server-chosen absolute link to another host (an S3 presigned URL, say)
//! never sees it, and reqwest drops the header on a redirect to another host. The key
//! is never printed, logged, or put in an error; [`Api`]'s `Debug` redacts it.
//!
//! ## Retries
//!
//! Every call may be retried: they are reads, or idempotent writes (cancel), or the
//! submit, which carries an `Idempotency-Key` so that a retry returns the same job
//! instead of running the workflow twice. A call is retried on a connection failure, a
//! timeout, 429, 502, 503 and 504 (and the submit on 409 `idempotency_conflict`, the
//! first attempt still in flight on the server), waiting what `Retry-After` says, or
//! 0.5 s, 1 s, 2 s, ... otherwise. A refused connection is retried only briefly: the
//! server is more likely down than restarting.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use url::Url;

use super::error::ClientError;
use super::types::{Asset, Job, JobPage};

/// How many times a call is tried in all.
const ATTEMPTS: u32 = 5;
/// How many times a refused connection is tried.
const CONNECT_ATTEMPTS: u32 = 2;
/// The longest wait between tries, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The time limit of a JSON call (not of downloads, uploads or event streams).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one Comfy API v2 server.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The base, with a trailing `/`.
    base: Url,
    key: Option<String>,
    /// For tests: shorter waits between retries.
    backoff: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base.as_str())
            .field("authenticated", &self.key.is_some())
            .finish()
    }
}

/// What one try of a call came to.
enum Attempt {
    Done(Response),
    Retry {
        wait: Option<Duration>,
        last: ClientError,
    },
}

impl Api {
    /// Connects (lazily: nothing is sent yet) to the server at `base_url`.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Api, ClientError> {
        let base = parse_base(base_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("serverless-comfyui/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: base_url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Api {
            http,
            base,
            key: api_key.filter(|k| !k.trim().is_empty()),
            backoff: Duration::from_millis(500),
        })
    }

    /// The base URL, as shown to the user (without any userinfo).
    pub fn base(&self) -> String {
        redact(&self.base)
    }

    /// `base/api/v2/<segments...>`, each segment escaped.
    fn route(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have paths");
            path.pop_if_empty().extend(["api", "v2"]).extend(segments);
        }
        url
    }

    /// A link from the server: absolute, or root-relative (with the mount prefix).
    pub fn resolve(&self, link: &str) -> Result<Url, ClientError> {
        let resolved = if link.starts_with('/') && !link.starts_with("//") {
            let mut origin = self.base.clone();
            origin.set_path("/");
            origin.set_query(None);
            origin.join(link)
        } else {
            Url::parse(link)
        };
        resolved.map_err(|e| ClientError::NotV2 {
            url: self.base(),
            what: format!("a link that is not a URL ({link:?}: {e})"),
        })
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// A request, with the key when it goes to the base's origin.
    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let send_key = self.same_origin(&url);
        let mut request = self.http.request(method, url);
        if let (true, Some(key)) = (send_key, &self.key) {
            request = request.bearer_auth(key);
        }
        request
    }

    /// Sends with retries (see the module docs); answers the first non-retryable
    /// response, successful or not.
    async fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
        idempotency_key: bool,
    ) -> Result<Response, ClientError> {
        let mut attempt = 0;
        let mut refused = 0;
        loop {
            attempt += 1;
            let outcome = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    let retryable = matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ) || (idempotency_key && status == StatusCode::CONFLICT);
                    if retryable && attempt < ATTEMPTS {
                        let wait = retry_after(&response);
                        let last = self.error_from(response).await;
                        // A 409 that is not the in-flight conflict is final.
                        if status == StatusCode::CONFLICT
                            && last.code() != Some("idempotency_conflict")
                        {
                            return Err(last);
                        }
                        Attempt::Retry { wait, last }
                    } else {
                        Attempt::Done(response)
                    }
                }
                Err(e) => {
                    let refused_now = e.is_connect();
                    refused += u32::from(refused_now);
                    let last = self.transport_error(&e);
                    if attempt >= ATTEMPTS || refused >= CONNECT_ATTEMPTS || e.is_builder() {
                        return Err(last);
                    }
                    Attempt::Retry { wait: None, last }
                }
            };
            match outcome {
                Attempt::Done(response) => return Ok(response),
                Attempt::Retry { wait, last } => {
                    if attempt >= ATTEMPTS {
                        return Err(last);
                    }
                    let backoff = self.backoff * 2u32.pow(attempt - 1);
                    tokio::time::sleep(wait.unwrap_or(backoff).min(MAX_WAIT)).await;
                }
            }
        }
    }

    /// Sends, then reads a JSON body from a 2xx; anything else becomes a [`ClientError`].
    async fn call(
        &self,
        build: impl Fn() -> RequestBuilder,
        idempotency_key: bool,
    ) -> Result<Value, ClientError> {
        let response = self
            .send(|| build().timeout(CALL_TIMEOUT), idempotency_key)
            .await?;
        self.json_body(response).await
    }

    async fn json_body(&self, response: Response) -> Result<Value, ClientError> {
        if !response.status().is_success() {
            return Err(self.error_from(response).await);
        }
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::NotV2 {
            url: self.base(),
            what: format!("{status} with a body that is not JSON"),
        })
    }

    /// An error response as a [`ClientError`]: the v2 envelope's code and message.
    pub(crate) async fn error_from(&self, response: Response) -> ClientError {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let envelope = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").cloned())
            .filter(|e| e.get("code").and_then(Value::as_str).is_some());
        let Some(error) = envelope else {
            if status.is_server_error() {
                return ClientError::Server {
                    status: status.as_u16(),
                    code: status
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_ascii_lowercase()
                        .replace(' ', "_"),
                    message: snippet(&body),
                };
            }
            if status == StatusCode::UNAUTHORIZED {
                return ClientError::Unauthorized {
                    message: snippet(&body),
                    sent_key: self.key.is_some(),
                };
            }
            return ClientError::NotV2 {
                url: self.base(),
                what: format!("{status}"),
            };
        };
        let code = error["code"].as_str().unwrap_or_default().to_string();
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let details = error.get("details").filter(|d| !d.is_null()).cloned();
        if status == StatusCode::UNAUTHORIZED {
            ClientError::Unauthorized {
                message,
                sent_key: self.key.is_some(),
            }
        } else if status.is_server_error() {
            ClientError::Server {
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            ClientError::Api {
                status: status.as_u16(),
                code,
                message,
                details,
            }
        }
    }

    /// A failure below HTTP, as a [`ClientError`] that names the server, not the key.
    pub(crate) fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let url = self.base();
        let reason = root_cause(e);
        if e.is_builder() {
            ClientError::BadUrl { url, reason }
        } else if e.is_connect() {
            ClientError::Connect { url, reason }
        } else if e.is_timeout() {
            ClientError::Transport {
                url,
                reason: format!("timed out: {reason}"),
            }
        } else {
            ClientError::Transport { url, reason }
        }
    }

    // ---- routes -------------------------------------------------------------------

    /// A call to one of our extension routes, `base/api/v2/<segments...>?<query>`,
    /// with a JSON body or none: the JSON answer, or `None` for a 204. Not retried on a refused
    /// POST (only connection errors and 429/5xx, as every call).
    pub(crate) async fn extension(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        let mut url = self.route(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let response = self
            .send(
                || {
                    let request = self
                        .request(method.clone(), url.clone())
                        .timeout(CALL_TIMEOUT);
                    match body {
                        Some(body) => request.json(body),
                        None => request,
                    }
                },
                false,
            )
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.json_body(response).await.map(Some)
    }

    /// `GET /api/v2/health` (no auth needed; sent anyway, harmlessly).
    pub async fn health(&self) -> Result<Value, ClientError> {
        let url = self.route(&["health"]);
        // 503 means degraded, and still carries the body.
        let response = self
            .send(
                || self.request(Method::GET, url.clone()).timeout(CALL_TIMEOUT),
                false,
            )
            .await?;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(body) = response.json::<Value>().await {
                return Ok(body);
            }
            return Err(ClientError::NotV2 {
                url: self.base(),
                what: "503 from /api/v2/health".into(),
            });
        }
        self.json_body(response).await
    }

    /// `POST /api/v2/jobs` with an `Idempotency-Key`.
    pub async fn submit(&self, body: &Value, idempotency_key: &str) -> Result<Job, ClientError> {
        let url = self.route(&["jobs"]);
        let value = self
            .call(
                || {
                    self.request(Method::POST, url.clone())
                        .header("Idempotency-Key", idempotency_key)
                        .json(body)
                },
                true,
            )
            .await?;
        self.job_from(value)
    }

    fn job_from(&self, value: Value) -> Result<Job, ClientError> {
        Job::from_json(value).map_err(|e| ClientError::NotV2 {
            url: self.base(),
            what: format!("a job that does not read as v2 ({e})"),
        })
    }

    /// `GET /api/v2/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.route(&["jobs", id]);
        let value = self
            .call(|| self.request(Method::GET, url.clone()), false)
            .await?;
        self.job_from(value)
    }

    /// `GET /api/v2/jobs?metadata[k]=v&limit=&cursor=`.
    pub async fn list_jobs(
        &self,
        labels: &[(String, String)],
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<JobPage, ClientError> {
        let mut url = self.route(&["jobs"]);
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in labels {
                query.append_pair(&format!("metadata[{key}]"), value);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let value = self
            .call(|| self.request(Method::GET, url.clone()), false)
            .await?;
        JobPage::from_json(value).map_err(|e| ClientError::NotV2 {
            url: self.base(),
            what: format!("a job list that does not read as v2 ({e})"),
        })
    }

    /// `POST /api/v2/jobs/{id}/cancel` (idempotent).
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.route(&["jobs", id, "cancel"]);
        let value = self
            .call(|| self.request(Method::POST, url.clone()), false)
            .await?;
        self.job_from(value)
    }

    /// Opens `GET /api/v2/jobs/{id}/events` (or the job's own `urls.events` link).
    /// Answers the response when it is a stream; a 501 (no SSE on this server) and
    /// other errors come back as [`ClientError`]s for the caller to decide.
    pub async fn open_events(&self, id: &str, link: Option<&str>) -> Result<Response, ClientError> {
        let url = match link {
            Some(link) => self.resolve(link)?,
            None => self.route(&["jobs", id, "events"]),
        };
        // No overall timeout: the stream lives ~20 s; the reader times out when idle.
        let response = self
            .request(Method::GET, url)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.error_from(response).await)
        }
    }

    /// `HEAD /api/v2/assets/by-hash/{hash}`: may this tenant mint an asset from it?
    pub async fn asset_exists(&self, hash: &str) -> Result<bool, ClientError> {
        let url = self.route(&["assets", "by-hash", hash]);
        let response = self
            .send(
                || {
                    self.request(Method::HEAD, url.clone())
                        .timeout(CALL_TIMEOUT)
                },
                false,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error_from(response).await),
        }
    }

    /// `POST /api/v2/assets/from-hash`: mints an asset over bytes the server has.
    pub async fn asset_from_hash(
        &self,
        hash: &str,
        file_path: &str,
        content_type: &str,
    ) -> Result<Asset, ClientError> {
        let url = self.route(&["assets", "from-hash"]);
        let body = json!({"hash": hash, "file_path": file_path, "content_type": content_type});
        let value = self
            .call(
                || self.request(Method::POST, url.clone()).json(&body),
                false,
            )
            .await?;
        self.asset_from(value)
    }

    /// `POST /api/v2/assets` (multipart), with `expected_hash` so the server checks
    /// the bytes it got.
    pub async fn upload_asset(
        &self,
        bytes: bytes::Bytes,
        file_path: &str,
        content_type: &str,
        hash: &str,
    ) -> Result<Asset, ClientError> {
        let url = self.route(&["assets"]);
        let file_name = file_path
            .rsplit('/')
            .next()
            .unwrap_or(file_path)
            .to_string();
        let form = || {
            let part = reqwest::multipart::Part::stream(bytes.clone())
                .file_name(file_name.clone())
                .mime_str(content_type)
                .unwrap_or_else(|_| reqwest::multipart::Part::stream(bytes.clone()));
            reqwest::multipart::Form::new()
                .text("content_type", content_type.to_string())
                .text("file_path", file_path.to_string())
                .text("expected_hash", hash.to_string())
                .part("file", part)
        };
        let response = self
            .send(
                || self.request(Method::POST, url.clone()).multipart(form()),
                false,
            )
            .await?;
        let value = self.json_body(response).await?;
        self.asset_from(value)
    }

    /// Our large-file extension, for servers that refuse a big multipart body (413):
    /// create an upload, send the bytes to the signed URL it returns, then complete.
    pub async fn upload_asset_large(
        &self,
        bytes: bytes::Bytes,
        file_path: &str,
        content_type: &str,
        hash: &str,
    ) -> Result<Asset, ClientError> {
        let url = self.route(&["x-serverless-comfyui", "uploads"]);
        let body = json!({
            "file_path": file_path,
            "content_type": content_type,
            "size_bytes": bytes.len(),
            "expected_hash": hash,
        });
        let upload = self
            .call(
                || self.request(Method::POST, url.clone()).json(&body),
                false,
            )
            .await?;
        let link = |field: &str| {
            upload
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| ClientError::NotV2 {
                    url: self.base(),
                    what: format!("an upload without `{field}`"),
                })
        };
        let target = self.resolve(link("upload_url")?)?;
        let complete = self.resolve(link("complete_url")?)?;
        let method = upload
            .get("upload_method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(Method::PUT);
        // The headers the signature covers. `content-length` is the exact size, which
        // the body already sets; any other is sent as given.
        let signed_headers: Vec<(String, String)> = upload
            .get("upload_headers")
            .and_then(Value::as_object)
            .map(|headers| {
                headers
                    .iter()
                    .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"))
                    .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let response = self
            .send(
                || {
                    let mut request = self
                        .request(method.clone(), target.clone())
                        .header("Content-Type", content_type)
                        .body(bytes.clone());
                    for (name, value) in &signed_headers {
                        request = request.header(name.as_str(), value.as_str());
                    }
                    request
                },
                false,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.error_from(response).await);
        }
        let value = self
            .call(|| self.request(Method::POST, complete.clone()), false)
            .await?;
        self.asset_from(value)
    }

    fn asset_from(&self, value: Value) -> Result<Asset, ClientError> {
        Asset::from_json(value).map_err(|e| ClientError::NotV2 {
            url: self.base(),
            what: format!("an asset that does not read as v2 ({e})"),
        })
    }

    /// Starts a download: the output's signed `url` when it has one, else
    /// `GET /api/v2/assets/{id}/content` (which may redirect to a signed URL).
    pub async fn open_download(
        &self,
        url: Option<&str>,
        asset_id: Option<&str>,
    ) -> Result<Response, ClientError> {
        let mut last = None;
        if let Some(link) = url {
            let target = self.resolve(link)?;
            let response = self
                .send(|| self.request(Method::GET, target.clone()), false)
                .await?;
            if response.status().is_success() {
                return Ok(response);
            }
            // An expired signature: the asset route signs a fresh one.
            last = Some(self.error_from(response).await);
        }
        if let Some(id) = asset_id {
            let target = self.route(&["assets", id, "content"]);
            let response = self
                .send(|| self.request(Method::GET, target.clone()), false)
                .await?;
            if response.status().is_success() {
                return Ok(response);
            }
            last = Some(self.error_from(response).await);
        }
        Err(last.unwrap_or_else(|| ClientError::NotV2 {
            url: self.base(),
            what: "an output with neither a url nor an asset id".into(),
        }))
    }

    #[cfg(test)]
    fn with_backoff(mut self, backoff: Duration) -> Api {
        self.backoff = backoff;
        self
    }
}

/// Parses and normalises a base URL: http(s), no query, trailing `/`, and without a
/// trailing `/api/v2` (accepted for convenience).
fn parse_base(raw: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut url = Url::parse(trimmed).map_err(|e| {
        if !trimmed.contains("://") {
            bad("it has no scheme; write http:// or https:// in front")
        } else {
            bad(&e.to_string())
        }
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(if trimmed.contains("://") {
            "only http:// and https:// are supported"
        } else {
            "it has no scheme; write http:// or https:// in front"
        }));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    url.set_query(None);
    url.set_fragment(None);
    let mut path = url.path().trim_end_matches('/').to_string();
    if let Some(stripped) = path.strip_suffix("/api/v2") {
        path = stripped.to_string();
    }
    url.set_path(&format!("{path}/"));
    Ok(url)
}

/// The URL without userinfo, for messages.
fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.as_str().trim_end_matches('/').to_string()
}

fn retry_after(response: &Response) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The innermost cause of a transport error: "Connection refused (os error 111)"
/// rather than "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    // reqwest's own message may carry the URL; the root cause does not.
    if text.is_empty() { e.to_string() } else { text }
}

/// The start of a non-envelope body, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if line.is_empty() => "(no body)".into(),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_normalise() {
        let api = Api::new("http://127.0.0.1:8787", None).unwrap();
        assert_eq!(
            api.route(&["jobs", "job_1"]).as_str(),
            "http://127.0.0.1:8787/api/v2/jobs/job_1"
        );
        let prefixed = Api::new("https://example.com/comfy/api/v2/", None).unwrap();
        assert_eq!(
            prefixed.route(&["jobs"]).as_str(),
            "https://example.com/comfy/api/v2/jobs"
        );
        // Links from the server carry the prefix and resolve against the origin.
        assert_eq!(
            prefixed
                .resolve("/comfy/api/v2/jobs/j/events")
                .unwrap()
                .as_str(),
            "https://example.com/comfy/api/v2/jobs/j/events"
        );
        assert_eq!(
            prefixed
                .resolve("https://bucket.s3/x?sig=1")
                .unwrap()
                .as_str(),
            "https://bucket.s3/x?sig=1"
        );
        // Ids are escaped, never spliced into the path.
        assert_eq!(
            api.route(&["jobs", "../health"]).as_str(),
            "http://127.0.0.1:8787/api/v2/jobs/..%2Fhealth"
        );
    }

    #[test]
    fn bad_base_urls_say_why() {
        for (raw, why) in [
            ("", "empty"),
            ("127.0.0.1:8787", "scheme"),
            ("localhost:8787", "scheme"),
            ("ftp://example.com", "http"),
            ("http://", "host"),
        ] {
            let e = Api::new(raw, None).unwrap_err();
            assert!(matches!(e, ClientError::BadUrl { .. }), "{raw}: {e}");
            assert!(e.to_string().contains(why), "{raw}: {e}");
        }
    }

    #[test]
    fn the_key_is_never_in_debug_and_only_goes_to_the_origin() {
        let with_userinfo = Api::new("http://user:pw@127.0.0.1:8787", None).unwrap();
        assert!(!with_userinfo.base().contains("pw"));
        let api = Api::new("http://127.0.0.1:8787", Some("sk-secret".into())).unwrap();
        assert!(!format!("{api:?}").contains("sk-secret"));
        let same = api
            .request(Method::GET, api.route(&["jobs"]))
            .build()
            .unwrap();
        let header = same.headers().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer sk-secret");
        assert!(
            header.is_sensitive(),
            "kept out of reqwest's own Debug output"
        );
        let other = api
            .request(Method::GET, Url::parse("http://elsewhere:9000/x").unwrap())
            .build()
            .unwrap();
        assert!(other.headers().get("authorization").is_none());
    }

    #[tokio::test]
    async fn a_refused_connection_is_one_clear_error() {
        // Bind then drop: nothing listens on that port now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(
            &format!("http://127.0.0.1:{port}"),
            Some("sk-secret".into()),
        )
        .unwrap()
        .with_backoff(Duration::from_millis(10));
        let e = api.job("job_1").await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("serverless-comfyui dev"), "{text}");
        assert!(!text.contains("sk-secret"), "{text}");
    }
}

/// Against a scripted server: retries, envelopes, what is not v2.
#[cfg(test)]
mod server_tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    use super::*;

    /// Serves `router` on a free loopback port; answers its base URL.
    async fn serve(router: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{address}")
    }

    fn envelope(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
        let body = json!({"error": {"code": code, "message": message, "details": null}});
        (status, axum::Json(body)).into_response()
    }

    #[tokio::test]
    async fn a_submit_is_retried_with_the_same_key_honouring_retry_after() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        let router = axum::Router::new().route(
            "/api/v2/jobs",
            post(move |headers: HeaderMap| {
                let log = log.clone();
                async move {
                    let key = headers["idempotency-key"].to_str().unwrap().to_string();
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(key);
                        log.len()
                    };
                    match n {
                        1 => {
                            let mut r =
                                envelope(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "busy");
                            r.headers_mut().insert("retry-after", "0".parse().unwrap());
                            r
                        }
                        2 => envelope(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down"),
                        3 => envelope(StatusCode::CONFLICT, "idempotency_conflict", "in flight"),
                        _ => (
                            StatusCode::CREATED,
                            axum::Json(json!({"id": "job_1", "status": "queued"})),
                        )
                            .into_response(),
                    }
                }
            }),
        );
        let api = Api::new(&serve(router).await, None)
            .unwrap()
            .with_backoff(Duration::from_millis(5));
        let job = api.submit(&json!({"workflow": {}}), "key-1").await.unwrap();
        assert_eq!(job.id, "job_1");
        assert_eq!(*seen.lock().unwrap(), vec!["key-1"; 4]);
    }

    #[tokio::test]
    async fn errors_carry_the_servers_code_and_say_what_to_do() {
        let router = axum::Router::new()
            .route(
                "/api/v2/jobs/{id}",
                get(|| async { envelope(StatusCode::NOT_FOUND, "not_found", "job not found") }),
            )
            .route(
                "/api/v2/jobs",
                get(|| async { envelope(StatusCode::INTERNAL_SERVER_ERROR, "internal", "boom") }),
            )
            .route(
                "/api/v2/health",
                get(|| async { (StatusCode::NOT_FOUND, "<html>nope</html>") }),
            );
        let api = Api::new(&serve(router).await, Some("sk-secret".into()))
            .unwrap()
            .with_backoff(Duration::from_millis(1));
        let e = api.job("job_x").await.unwrap_err();
        assert_eq!(e.to_string(), "not_found: job not found");
        let e = api.list_jobs(&[], None, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Server { status: 500, .. }), "{e}");
        assert!(
            e.to_string().contains("internal: boom. Retry in a moment"),
            "{e}"
        );
        let e = api.health().await.unwrap_err();
        assert!(matches!(e, ClientError::NotV2 { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("is --url (or COMFY_BASE_URL) the base URL"),
            "{e}"
        );
        // Persistent 503s give up after a few tries, with the server's message.
        let router = axum::Router::new().route(
            "/api/v2/jobs/{id}",
            get(|| async { envelope(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "down") }),
        );
        let api = Api::new(&serve(router).await, None)
            .unwrap()
            .with_backoff(Duration::from_millis(1));
        let e = api.job("job_x").await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the server failed: 503 unavailable: down"),
            "{e}"
        );
    }
}
