//! Sending webhooks over HTTP: the [`WebhookSender`] `dev` and the `webhooks` Lambda
//! use, with reqwest (behind this crate's `webhook-http` feature, so that what needs
//! no sender links no HTTP client; `local::webhook_http` re-exports it).
//!
//! What keeps a tenant's URL from turning our server against its own network:
//!
//! - **at connect time**, names resolve through [`GuardedResolver`], which drops every
//!   address [`address::is_public`] refuses and fails when none is left. The check
//!   runs on the very addresses the connection then uses, so a name that resolved to
//!   a public address at registration and to `127.0.0.1` now (DNS rebinding) is
//!   refused now. URLs with a literal address never reach a resolver, so
//!   [`HttpSender::send`] checks those itself;
//! - no redirects are followed (a 3xx is a failed attempt), no proxy from the
//!   environment is used (it would resolve the name for us, unchecked);
//! - every request has a connect and a total timeout, and at most 4 KiB of an answer
//!   is read (then the connection is dropped).
//!
//! `allow_private` (`dev --webhooks-allow-private`, or the Lambda's
//! `SERVERLESS_COMFYUI_WEBHOOKS_ALLOW_PRIVATE`, for local testing) turns the address rule off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::address;
use super::ports::{SendOutcome, WebhookSender};
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The most of an answer read before the connection is dropped.
pub const MAX_ANSWER_BYTES: usize = 4096;

/// How a name becomes addresses; the system resolver unless a test gives another.
pub type Lookup = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .collect::<Vec<_>>())
        })
    })
}

/// A name refused because all its addresses are inner ones.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} resolves only to addresses webhooks may not reach (loopback, private, link-local, metadata)"
)]
pub struct RefusedName(String);

/// The resolver the HTTP client connects through: public addresses only.
pub struct GuardedResolver {
    lookup: Lookup,
    timeout: Duration,
}

impl GuardedResolver {
    pub fn new(lookup: Lookup, timeout: Duration) -> Self {
        GuardedResolver { lookup, timeout }
    }

    /// The addresses of `host` a webhook may reach, or why none.
    pub async fn public_addresses(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found = tokio::time::timeout(self.timeout, (self.lookup)(host.to_string()))
            .await
            .map_err(|_| format!("resolving {host} timed out"))??;
        let public: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| address::is_public(a.ip()))
            .collect();
        if public.is_empty() {
            return Err(Box::new(RefusedName(host.to_string())));
        }
        Ok(public)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = GuardedResolver {
            lookup: self.lookup.clone(),
            timeout: self.timeout,
        };
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = this.public_addresses(&host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Settings of [`HttpSender`].
#[derive(Debug, Clone)]
pub struct HttpSenderConfig {
    /// The whole request, connect to last byte read.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub allow_private: bool,
}

impl Default for HttpSenderConfig {
    fn default() -> Self {
        HttpSenderConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            allow_private: false,
        }
    }
}

pub struct HttpSender {
    client: reqwest::Client,
    resolver: Arc<GuardedResolver>,
    allow_private: bool,
}

impl HttpSender {
    pub fn new(config: HttpSenderConfig) -> Result<Self, reqwest::Error> {
        Self::with_lookup(config, system_lookup())
    }

    /// With a given name lookup (tests stand in for DNS with it).
    pub fn with_lookup(config: HttpSenderConfig, lookup: Lookup) -> Result<Self, reqwest::Error> {
        let resolver = Arc::new(GuardedResolver::new(lookup, config.connect_timeout));
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(2)
            .user_agent(concat!(
                "serverless-comfyui-webhooks/",
                env!("CARGO_PKG_VERSION")
            ));
        if !config.allow_private {
            builder = builder.dns_resolver(resolver.clone());
        }
        Ok(HttpSender {
            client: builder.build()?,
            resolver,
            allow_private: config.allow_private,
        })
    }

    fn refused_literal(&self, url: &reqwest::Url) -> Option<String> {
        if self.allow_private {
            return None;
        }
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
            url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        (!address::is_public(ip)).then(|| format!("{ip} is not a public address"))
    }
}

fn failed(error: impl Into<String>) -> SendOutcome {
    SendOutcome {
        status: None,
        error: Some(error.into()),
    }
}

/// A reqwest error in a few words, without the URL (it may carry a token).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The innermost cause says why (a refused name, refused connection).
    let mut cause: Option<&dyn Error> = e.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    match last {
        Some(why) => format!("{kind}: {}", why.chars().take(160).collect::<String>()),
        None => kind.to_string(),
    }
}

#[async_trait]
impl WebhookSender for HttpSender {
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> SendOutcome {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return failed("not a URL");
        };
        if let Some(why) = self.refused_literal(&parsed) {
            return failed(why);
        }
        let mut request = self
            .client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status().as_u16();
        // Read a little (so a short answer leaves the connection reusable), never more.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        SendOutcome {
            status: Some(status),
            error: None,
        }
    }

    async fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let Some(url::Host::Domain(name)) = url.host() else {
            return Ok(()); // literal addresses were checked by the domain
        };
        let found = match tokio::time::timeout(
            Duration::from_secs(5),
            (self.resolver.lookup)(name.to_string()),
        )
        .await
        {
            Ok(Ok(found)) => found,
            // Unresolvable now: it may be later; every connect checks again.
            _ => return Ok(()),
        };
        match found.iter().find(|a| !address::is_public(a.ip())) {
            Some(inner) => Err(format!(
                "{name} resolves to {}, which is not a public address: webhooks are not sent to \
                 loopback, private, link-local or metadata addresses",
                inner.ip()
            )),
            None => Ok(()),
        }
    }
}
