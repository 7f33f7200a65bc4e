//! Who is calling: every `/api/v2` route except health runs as a [`Tenant`].
//!
//! The [`Authenticator`] decides the tenant from the request headers. Jobs and assets
//! belong to tenants, never to keys, so rotating a key orphans nothing.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde_json::{Value, json};

use crate::api::ApiState;
use crate::error::ApiError;

/// The tenant a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's tenant, or a 401 envelope.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, ApiError>;

    /// What health shows about authentication (never a secret).
    fn describe(&self) -> Value;
}

/// No keys: every request is the one default tenant. Only safe on loopback; `dev`
/// enforces that.
pub struct SingleTenant(pub String);

pub const DEFAULT_TENANT: &str = "default";

#[async_trait]
impl Authenticator for SingleTenant {
    async fn authenticate(&self, _headers: &HeaderMap) -> Result<Tenant, ApiError> {
        Ok(Tenant(self.0.clone()))
    }

    fn describe(&self) -> Value {
        json!({ "required": false, "loopback_default_tenant": true })
    }
}

impl FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        state.auth.authenticate(&parts.headers).await
    }
}
