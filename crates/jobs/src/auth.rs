//! Who is calling: every `/api/v2` route except health runs as a [`Tenant`].
//!
//! The [`Authenticator`] decides the tenant from the [`Credentials`] a request carries
//! (the API reads them from its headers). Jobs and assets belong to tenants, never to
//! keys, so rotating a key orphans nothing.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::error::{DomainError, ErrorKind};

/// The tenant a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// What a request says about its caller, as the API read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The `Authorization` header: `None` when absent, `Some(None)` when present but
    /// not visible ASCII.
    pub authorization: Option<Option<String>>,
    /// Whether the request is addressed to a loopback name or address (its `Host`).
    pub addressed_to_loopback: bool,
}

#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's tenant, or an [`ErrorKind::Unauthenticated`] refusal.
    async fn authenticate(&self, credentials: &Credentials) -> Result<Tenant, DomainError>;

    /// What health shows about authentication (never a secret).
    async fn describe(&self) -> Value;
}

/// No keys: every request is the one default tenant. Only safe on loopback; `dev`
/// enforces that.
pub struct SingleTenant(pub String);

pub const DEFAULT_TENANT: &str = "default";

#[async_trait]
impl Authenticator for SingleTenant {
    async fn authenticate(&self, _credentials: &Credentials) -> Result<Tenant, DomainError> {
        Ok(Tenant(self.0.clone()))
    }

    async fn describe(&self) -> Value {
        json!({ "required": false, "loopback_default_tenant": true })
    }
}

/// API keys: `sck_` followed by 43 characters of URL-safe base64 (256 random bits).
pub const KEY_PREFIX: &str = "sck_";

/// A freshly minted key: the secret (shown once) and the record to store.
pub struct MintedKey {
    pub secret: String,
    pub record: crate::model::ApiKeyRecord,
}

/// SHA-256 of a key, hex: what the store keeps and looks up.
pub fn key_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Checks a tenant name: 1 to 64 of `a-z 0-9 - _`, so it is safe in keys and paths.
pub fn validate_tenant(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant {name:?} is not allowed: use 1 to 64 of a-z, 0-9, '-' and '_'"
        ))
    }
}

/// Mints a new key for a tenant.
pub fn mint_key(tenant: &str, now: chrono::DateTime<chrono::Utc>) -> Result<MintedKey, String> {
    use base64::Engine;
    validate_tenant(tenant)?;
    let random: [u8; 32] = rand::random();
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let record = crate::model::ApiKeyRecord {
        v: crate::model::SCHEMA_VERSION,
        id: format!("key_{}", crate::model::monotonic_ulid()),
        tenant: tenant.to_string(),
        key_hash: key_hash(&secret),
        prefix: secret.chars().take(KEY_PREFIX.len() + 6).collect(),
        created_at: now,
        revoked_at: None,
    };
    Ok(MintedKey { secret, record })
}

/// Bearer API keys. While no key was ever created and the server binds loopback only,
/// requests run as the default tenant (the `dev` convenience); once a key exists, every
/// request needs `Authorization: Bearer <key>`.
///
/// Revocation fails closed: a revoked key still counts as "a key exists", so revoking
/// the last key leaves every request refused rather than anonymous. Only deleting the
/// key records (`serverless-comfyui keys purge`, an explicit operator act) and a restart
/// bring the keyless default tenant back.
pub struct KeyAuthenticator {
    store: Arc<dyn crate::ports::JobStore>,
    clock: Arc<dyn crate::ports::Clock>,
    /// Whether "no keys yet" may mean "default tenant" (loopback `dev` only).
    allow_default_without_keys: bool,
    /// Whether any key record (active or revoked) exists, cached briefly: checked on
    /// every request. Once true it stays true for the life of the process.
    keys_exist: std::sync::Mutex<Option<(chrono::DateTime<chrono::Utc>, bool)>>,
    /// Keys accepted recently ([`KeyAuthenticator::remembering_accepted_keys`]).
    accepted: Option<AcceptedKeys>,
}

/// Keys this process accepted in the last `ttl`, by hash, with their tenant. Only
/// acceptances are kept: a new key works at once, and a wrong or revoked one is read
/// (and refused) every time. Bounded: at [`MAX_ACCEPTED_KEYS`] the expired entries go,
/// and if that frees nothing, all of them.
struct AcceptedKeys {
    ttl: chrono::Duration,
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (chrono::DateTime<chrono::Utc>, String)>,
    >,
}

/// At most this many accepted keys are remembered per process.
pub const MAX_ACCEPTED_KEYS: usize = 1024;

/// How long the deployed functions remember an accepted key: the longest a revoked key
/// keeps working there (in a warm `submit` or `status` instance that accepted it just
/// before). comfy-sdk polls a job every 0.5 to 5 s with the same key, so a warm
/// instance reads it about twice a minute instead of on every poll.
pub const ACCEPTED_KEY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

impl AcceptedKeys {
    fn tenant(&self, hash: &str, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(at, _)| now - *at < self.ttl)
            .map(|(_, tenant)| tenant.clone())
    }

    fn remember(&self, hash: String, tenant: String, now: chrono::DateTime<chrono::Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ACCEPTED_KEYS && !entries.contains_key(&hash) {
            entries.retain(|_, (at, _)| now - *at < self.ttl);
            if entries.len() >= MAX_ACCEPTED_KEYS {
                entries.clear();
            }
        }
        entries.insert(hash, (now, tenant));
    }
}

impl KeyAuthenticator {
    pub fn new(
        store: Arc<dyn crate::ports::JobStore>,
        clock: Arc<dyn crate::ports::Clock>,
        allow_default_without_keys: bool,
    ) -> Self {
        KeyAuthenticator {
            store,
            clock,
            allow_default_without_keys,
            keys_exist: std::sync::Mutex::new(None),
            accepted: None,
        }
    }

    /// Remembers each accepted key for `ttl`, so a client polling with it is not looked
    /// up on every request. The price: a revoked key keeps working for up to `ttl` in a
    /// process that accepted it just before. Deployed on AWS (where each lookup is a
    /// billed DynamoDB read and a round trip in every `status` poll) with 30 s; `dev`
    /// reads its SQLite file every time.
    pub fn remembering_accepted_keys(mut self, ttl: std::time::Duration) -> Self {
        self.accepted = Some(AcceptedKeys {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        self
    }

    async fn any_key_record(&self) -> Result<bool, DomainError> {
        let now = self.clock.now();
        let cached = *self.keys_exist.lock().unwrap_or_else(|e| e.into_inner());
        match cached {
            Some((_, true)) => return Ok(true),
            Some((at, false)) if now - at < chrono::Duration::seconds(1) => return Ok(false),
            _ => {}
        }
        // Revoked keys count: revoking the last key must not reopen the server.
        let exist = !self.store.list_api_keys().await?.is_empty();
        *self.keys_exist.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, exist));
        Ok(exist)
    }
}

fn bearer(credentials: &Credentials) -> Result<&str, DomainError> {
    let value = credentials
        .authorization
        .as_ref()
        .ok_or_else(|| {
            DomainError::unauthorized("missing credentials: send Authorization: Bearer <api key>")
        })?
        .as_deref()
        .ok_or_else(|| DomainError::unauthorized("the Authorization header is not readable"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(DomainError::unauthorized(
            "unsupported authorization scheme: use Authorization: Bearer <api key>",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(DomainError::unauthorized("the bearer token is empty"));
    }
    Ok(token)
}

#[async_trait]
impl Authenticator for KeyAuthenticator {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Tenant, DomainError> {
        if self.allow_default_without_keys
            && credentials.authorization.is_none()
            && !self.any_key_record().await?
        {
            // A DNS-rebound name reaches a loopback server from a web page: the keyless
            // tenant is only for requests addressed to loopback.
            if !credentials.addressed_to_loopback {
                return Err(DomainError::new(
                    ErrorKind::Forbidden,
                    "host_not_allowed",
                    "without API keys this server answers only requests addressed to a \
                     loopback name (127.0.0.1, ::1 or localhost); create a key to serve others",
                ));
            }
            return Ok(Tenant(DEFAULT_TENANT.to_string()));
        }
        let token = bearer(credentials)?;
        let presented = key_hash(token);
        let now = self.clock.now();
        if let Some(tenant) = self
            .accepted
            .as_ref()
            .and_then(|a| a.tenant(&presented, now))
        {
            return Ok(Tenant(tenant));
        }
        let record = self.store.find_api_key(&presented).await?;
        // Compare in constant time even though the lookup was by hash: the comparison
        // must not leak how much of a guessed hash matched.
        let matches = record.as_ref().is_some_and(|r| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                r.key_hash.as_bytes(),
                presented.as_bytes(),
            ))
        });
        match record {
            Some(record) if matches && record.revoked_at.is_none() => {
                if let Some(accepted) = &self.accepted {
                    accepted.remember(presented, record.tenant.clone(), now);
                }
                Ok(Tenant(record.tenant))
            }
            Some(_) if matches => Err(DomainError::unauthorized("this API key was revoked")),
            _ => Err(DomainError::unauthorized("invalid API key")),
        }
    }

    async fn describe(&self) -> Value {
        let keys = self.any_key_record().await.ok();
        let default_tenant = self.allow_default_without_keys && keys == Some(false);
        json!({
            "required": !default_tenant,
            "loopback_default_tenant": default_tenant,
        })
    }
}
