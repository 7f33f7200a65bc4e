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

use chrono::{DateTime, Duration, Utc};

use crate::error::{DomainError, ErrorKind};
use crate::ports::{Clock, JobStore, StoreResult};

// The quota records are model types (the store ports read and write them); their
// home is `crate::model`, named here too so `jobs::quota::TenantQuota` keeps working.
pub use crate::model::{QuotaRefusal, TenantQuota, TenantUsage};

impl From<QuotaRefusal> for DomainError {
    fn from(refusal: QuotaRefusal) -> Self {
        match refusal {
            QuotaRefusal::ActiveJobs { limit } => DomainError::new(
                ErrorKind::TooManyRequests,
                "quota_active_jobs",
                format!(
                    "this tenant already has {limit} jobs queued or running, its limit; \
                     retry when some have finished"
                ),
            )
            .with_retry_after(5),
            QuotaRefusal::SubmitRate { limit } => DomainError::new(
                ErrorKind::TooManyRequests,
                "quota_submit_rate",
                format!("this tenant may submit {limit} jobs per second; retry in a second"),
            )
            .with_retry_after(1),
        }
    }
}

/// The storage refusal: the new bytes would take the tenant past its limit.
pub fn storage_refusal(usage: u64, adding: u64, limit: u64) -> DomainError {
    DomainError::new(
        ErrorKind::TooLarge,
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
