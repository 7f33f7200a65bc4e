//! Per-tenant quotas: how much one tenant may ask of a deployment at once.
//!
//! Three limits, each kept where every API instance sees the same number (the store,
//! never process memory: on Lambda each instance is its own process):
//!
//! | limit | counted | enforced | refusal |
//! |---|---|---|---|
//! | `max_active_jobs` | jobs `queued`, `running` or `canceling` | in the same write that records a job ([`crate::ports::JobStore::create_job`]) | 429 `quota_active_jobs`, `Retry-After` |
//! | `submits_per_second` | jobs recorded in the current second (a fixed one-second window) | the same write | 429 `quota_submit_rate`, `Retry-After: 1` |
//! | `max_stored_bytes` | bytes of the tenant's blobs (uploads and outputs, each distinct content once) | before a new blob is recorded | 413 `quota_storage` |
//!
//! A refused submit records nothing and enqueues nothing: the client retries after
//! `Retry-After`, with the same `Idempotency-Key`, and loses no job. A replay of an
//! already-recorded key is never refused by a quota: it names a job that exists.
//!
//! Job outputs count toward stored bytes but are never refused (that would fail a job
//! that already ran); a tenant over its storage quota can still run jobs, and uploads
//! are refused until assets are deleted or expire. The storage check reads the usage,
//! then records the blob, so concurrent uploads may overshoot it by what is in flight;
//! the job limits are exact (one conditional write).
//!
//! The limits are set per tenant (`serverless-comfyui tenants set-quota`); a tenant with
//! none set gets the deployment's default (`JobsConfig::default_quota`, by default
//! [`TenantQuota::default`]: 10,000 active jobs, 1,000 submits per second, 1 TiB
//! stored). Services read a tenant's quota through a short
//! cache ([`QuotaBook`]), so a submit normally costs no extra read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ports::{Clock, JobStore, StoreResult};

/// One tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuota {
    /// Jobs queued, running or canceling at once.
    pub max_active_jobs: u32,
    /// Jobs recorded per second.
    pub submits_per_second: u32,
    /// Bytes of distinct content stored (uploads and outputs).
    pub max_stored_bytes: u64,
}

impl TenantQuota {
    /// No limits: what stores apply when a caller has none to give.
    pub const UNLIMITED: TenantQuota = TenantQuota {
        max_active_jobs: u32::MAX,
        submits_per_second: u32::MAX,
        max_stored_bytes: u64::MAX,
    };
}

impl Default for TenantQuota {
    /// Generous: a studio's burst fits; a runaway script does not take the deployment.
    fn default() -> Self {
        TenantQuota {
            max_active_jobs: 10_000,
            submits_per_second: 1_000,
            max_stored_bytes: 1 << 40,
        }
    }
}

/// What a tenant uses now, as the store counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantUsage {
    pub active_jobs: u64,
    pub stored_bytes: u64,
}

/// Which job limit refused a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    ActiveJobs { limit: u32 },
    SubmitRate { limit: u32 },
}

impl From<QuotaRefusal> for ApiError {
    fn from(refusal: QuotaRefusal) -> Self {
        match refusal {
            QuotaRefusal::ActiveJobs { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_active_jobs",
                format!(
                    "this tenant already has {limit} jobs queued or running, its limit; \
                     retry when some have finished"
                ),
            )
            .with_retry_after(5),
            QuotaRefusal::SubmitRate { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_submit_rate",
                format!("this tenant may submit {limit} jobs per second; retry in a second"),
            )
            .with_retry_after(1),
        }
    }
}

/// The storage refusal: the new bytes would take the tenant past its limit.
pub fn storage_refusal(usage: u64, adding: u64, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "quota_storage",
        format!(
            "storing {adding} more bytes would take this tenant past its {limit}-byte storage \
             quota ({usage} used); delete assets first"
        ),
    )
}

/// Validates limits given by an operator: zero would lock a tenant out by accident.
pub fn validate(quota: &TenantQuota) -> Result<(), String> {
    if quota.max_active_jobs == 0 || quota.submits_per_second == 0 || quota.max_stored_bytes == 0 {
        return Err(
            "every limit must be at least 1 (revoke the tenant's keys to lock it out)".into(),
        );
    }
    Ok(())
}

/// Tenants' quotas as this instance last read them, for a few seconds: a changed
/// quota takes effect everywhere within [`QuotaBook::FRESH_FOR`].
pub struct QuotaBook {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<String, (DateTime<Utc>, TenantQuota)>>,
    /// What a tenant without a quota of its own gets.
    default: TenantQuota,
}

impl QuotaBook {
    pub const FRESH_FOR: Duration = Duration::seconds(5);
    /// Tenants remembered at once; past it the cache starts over (it is only a cache).
    const MAX_CACHED: usize = 10_000;

    pub fn new(store: Arc<dyn JobStore>, clock: Arc<dyn Clock>, default: TenantQuota) -> Self {
        QuotaBook {
            store,
            clock,
            default,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's quota: its own, or the default.
    pub async fn quota(&self, tenant: &str) -> StoreResult<TenantQuota> {
        let now = self.clock.now();
        if let Some((at, quota)) = self.lock().get(tenant)
            && now - *at < Self::FRESH_FOR
        {
            return Ok(*quota);
        }
        let quota = self
            .store
            .get_tenant_quota(tenant)
            .await?
            .unwrap_or(self.default);
        let mut cache = self.lock();
        if cache.len() >= Self::MAX_CACHED {
            cache.clear();
        }
        cache.insert(tenant.to_string(), (now, quota));
        Ok(quota)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (DateTime<Utc>, TenantQuota)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
