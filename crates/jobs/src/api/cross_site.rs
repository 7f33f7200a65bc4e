//! Requests from other web sites: which ones the API answers.
//!
//! A browser lets any page send some requests to any server without asking first: a
//! `POST` whose body is `text/plain`, a form, or a `Blob` with no type. It attaches the
//! page's `Origin`, and the server is the only one that can say no. For a `dev` on
//! loopback without keys that matters: ComfyUI custom nodes run arbitrary code, so a
//! drive-by page that could submit a workflow could run code on the user's machine.
//!
//! Three rules, each in one place:
//! - **Origin** ([`guard`], a middleware on every API route): a request that carries an
//!   `Origin` header must come from the server's own origin (the `Origin` names the same
//!   host and port as `Host`), from a loopback origin when [`CrossSitePolicy`] allows
//!   them (`dev`), or from a configured origin (the deployed web app). Anything else —
//!   `null` included — is 403 `origin_not_allowed` before a handler runs. Preflights
//!   (`OPTIONS` with `Access-Control-Request-Method`) follow the same list; only the
//!   configured cross-origin sites get CORS headers.
//! - **Content type** ([`require_json`], [`require_multipart`], called by the body
//!   extractors): JSON routes accept only `application/json` (with parameters),
//!   multipart routes only `multipart/form-data`; anything else is 415
//!   `unsupported_media_type`. No request a browser may send without a preflight is
//!   either, so a cross-site page can never get a body to a handler.
//! - **Host** ([`host_is_loopback`], used by the authenticator): the keyless default
//!   tenant is granted only to requests addressed to a loopback name or address, so a
//!   DNS-rebound name (`attacker.example` resolving to 127.0.0.1) gets nothing.
//!
//! Requests with no `Origin` (curl, SDKs, servers) are not cross-site browser requests
//! and pass the origin rule; they still meet the content-type rule and authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Which origins may call the API from a browser, besides the server's own.
#[derive(Debug, Clone, Default)]
pub struct CrossSitePolicy {
    /// Exact origins (`https://app.example.com`), compared case-insensitively, without a
    /// trailing slash: the deployed web app. These get CORS headers.
    pub allowed_origins: Vec<String>,
    /// Whether any `http://localhost:*`, `http://127.0.0.1:*` or `http://[::1]:*` origin
    /// may call (`dev`: the web app from Vite's dev server, or on another loopback port).
    pub allow_loopback_origins: bool,
}

impl CrossSitePolicy {
    /// The policy of `dev`: loopback origins, plus any given ones.
    pub fn local(extra_origins: Vec<String>) -> Self {
        CrossSitePolicy {
            allowed_origins: normalize_all(extra_origins),
            allow_loopback_origins: true,
        }
    }

    /// The policy of a deployed stack: exactly the configured origins.
    pub fn deployed(origins: Vec<String>) -> Self {
        CrossSitePolicy {
            allowed_origins: normalize_all(origins),
            allow_loopback_origins: false,
        }
    }

    fn is_configured(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Whether a request whose `Origin` is `origin` and whose `Host` is `host` may be
    /// answered.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        if self.is_configured(origin) {
            return true;
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            // `null` (sandboxed frames, file: pages) and anything stranger.
            return false;
        };
        if host.is_some_and(|host| host.eq_ignore_ascii_case(authority)) {
            return true;
        }
        self.allow_loopback_origins
            && origin.starts_with("http://")
            && is_loopback_name(split_port(authority))
    }
}

fn normalize_all(origins: Vec<String>) -> Vec<String> {
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect()
}

/// The host part of `host[:port]` or `[v6]:port`.
fn split_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request is addressed to a loopback name or address (`Host`). A request
/// with no `Host` (HTTP/1.0, in-process tests) is not from a browser and counts as local.
pub fn host_is_loopback(headers: &HeaderMap) -> bool {
    match headers.get(header::HOST) {
        None => true,
        Some(value) => value
            .to_str()
            .is_ok_and(|host| is_loopback_name(split_port(host))),
    }
}

/// The middleware: refuses disallowed origins, answers preflights.
pub async fn guard(
    State(policy): State<Arc<CrossSitePolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return next.run(request).await;
    };
    let origin = origin.to_str().unwrap_or("null").to_string();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !policy.allows(&origin, host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "requests from this web origin are not allowed; configure it as an allowed origin",
        )
        .into_response();
    }
    let cors = policy.is_configured(origin.trim_end_matches('/'));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if cors && let Ok(origin) = HeaderValue::from_str(&origin) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("idempotency-replayed, retry-after, content-range"),
        );
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, POST, DELETE"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, idempotency-key, range"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    response
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

fn unsupported(expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("send this request with Content-Type: {expected}"),
    )
}

/// A JSON route's body must be declared `application/json`. An empty body (a `POST`
/// that carries nothing, such as cancel) needs no type.
pub fn require_json(headers: &HeaderMap, body_is_empty: bool) -> Result<(), ApiError> {
    match media_type(headers) {
        Some(t) if t == "application/json" => Ok(()),
        None if body_is_empty => Ok(()),
        _ => Err(unsupported("application/json")),
    }
}

/// A multipart route's body must be declared `multipart/form-data`.
pub fn require_multipart(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers) {
        Some(t) if t == "multipart/form-data" => Ok(()),
        _ => Err(unsupported("multipart/form-data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn own_origin_loopback_and_configured_origins_pass_others_do_not() {
        let dev = CrossSitePolicy::local(vec!["https://app.example.com/".into()]);
        assert!(dev.allows("http://127.0.0.1:8787", Some("127.0.0.1:8787")));
        assert!(dev.allows("http://localhost:5173", Some("localhost:5173")));
        assert!(dev.allows("http://localhost:5173", Some("127.0.0.1:8787")));
        assert!(dev.allows("http://[::1]:3000", Some("127.0.0.1:8787")));
        assert!(dev.allows("https://APP.example.com", Some("127.0.0.1:8787")));
        assert!(!dev.allows("http://evil.example", Some("127.0.0.1:8787")));
        assert!(!dev.allows("null", Some("127.0.0.1:8787")));
        assert!(!dev.allows("http://127.0.0.1.evil.example", Some("127.0.0.1:8787")));
        // A loopback name over https is not what dev serves; a lookalike host is not loopback.
        assert!(!dev.allows("http://localhost.evil.example:80", Some("127.0.0.1:8787")));

        let deployed = CrossSitePolicy::deployed(vec!["https://app.example.com".into()]);
        assert!(deployed.allows("https://app.example.com", Some("api.example.com")));
        assert!(deployed.allows("https://api.example.com", Some("api.example.com")));
        assert!(!deployed.allows("http://localhost:5173", Some("api.example.com")));
    }

    #[test]
    fn only_loopback_hosts_count_as_local() {
        assert!(host_is_loopback(&headers(&[("host", "127.0.0.1:8787")])));
        assert!(host_is_loopback(&headers(&[("host", "localhost")])));
        assert!(host_is_loopback(&headers(&[("host", "[::1]:8787")])));
        assert!(host_is_loopback(&headers(&[])));
        assert!(!host_is_loopback(&headers(&[(
            "host",
            "rebound.evil.example:8787"
        )])));
        assert!(!host_is_loopback(&headers(&[("host", "192.168.1.4:8787")])));
    }

    #[test]
    fn json_routes_take_json_only() {
        let json = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert!(require_json(&json, false).is_ok());
        for simple in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let err = require_json(&headers(&[("content-type", simple)]), false).unwrap_err();
            assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{simple}");
        }
        // A typeless Blob body is a simple request too.
        assert!(require_json(&headers(&[]), false).is_err());
        assert!(require_json(&headers(&[]), true).is_ok());
        assert!(require_multipart(&headers(&[("content-type", "text/plain")])).is_err());
        assert!(
            require_multipart(&headers(&[(
                "content-type",
                "multipart/form-data; boundary=b"
            )]))
            .is_ok()
        );
    }
}
