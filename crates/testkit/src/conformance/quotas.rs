//! Per-tenant quotas and usage: limits held in the same write that records a job.

use super::*;

/// Per-tenant quotas: limits set and read back; the active-job and submit-rate limits
/// held in the write that records a job (a refused job leaves nothing behind); usage
/// that follows jobs ending and blob records coming and going.
pub async fn tenant_quotas(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    use jobs::quota::{QuotaRefusal, TenantQuota};
    let store = store.as_ref();
    let now = clock.now();

    assert_eq!(store.get_tenant_quota("q1").await.unwrap(), None);
    let tight = TenantQuota {
        max_active_jobs: 2,
        submits_per_second: 100,
        max_stored_bytes: 1_000,
    };
    store.put_tenant_quota("q1", &tight).await.unwrap();
    assert_eq!(store.get_tenant_quota("q1").await.unwrap(), Some(tight));
    assert_eq!(
        store.get_tenant_quota("q2").await.unwrap(),
        None,
        "per tenant"
    );

    // Active jobs: the third is refused and not written.
    let mut first = sample_job("q1", now, &[]);
    for job in [&first, &sample_job("q1", now, &[])] {
        assert!(matches!(
            store
                .create_job_within_quota(job, None, now, &tight)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ));
    }
    let third = sample_job("q1", now, &[]);
    assert_eq!(
        store
            .create_job_within_quota(&third, None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::ActiveJobs { limit: 2 })
    );
    assert_eq!(
        store.get_job(&third.id).await.unwrap(),
        None,
        "a refused job is not written"
    );
    let refused_key = IdempotencyRecord {
        v: SCHEMA_VERSION,
        tenant: "q1".into(),
        key: "refused".into(),
        fingerprint: "f".into(),
        job_id: third.id.clone(),
        created_at: now,
        expires_at: now + Duration::hours(24),
    };
    assert!(matches!(
        store
            .create_job_within_quota(&third, Some(&refused_key), now, &tight)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(_)
    ));
    assert_eq!(
        store.get_idempotency("q1", "refused").await.unwrap(),
        None,
        "a refused job leaves its key free for the retry"
    );
    assert_eq!(store.tenant_usage("q1").await.unwrap().active_jobs, 2);
    // Another tenant is not held to q1's count.
    assert!(matches!(
        store
            .create_job_within_quota(&sample_job("q2", now, &[]), None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // A replay of a recorded key is answered, not refused, even at the limit.
    let keyed = IdempotencyRecord {
        v: SCHEMA_VERSION,
        tenant: "q2".into(),
        key: "quota-key".into(),
        fingerprint: "f".into(),
        job_id: JobId::generate(),
        created_at: now,
        expires_at: now + Duration::hours(24),
    };
    let one_active = TenantQuota {
        max_active_jobs: 2,
        ..tight
    };
    let keyed_job = Job {
        id: keyed.job_id.clone(),
        ..sample_job("q2", now, &[])
    };
    assert!(matches!(
        store
            .create_job_within_quota(&keyed_job, Some(&keyed), now, &one_active)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));
    assert_eq!(
        store
            .create_job_within_quota(&sample_job("q2", now, &[]), Some(&keyed), now, &one_active)
            .await
            .unwrap(),
        CreateOutcome::KeyTaken(keyed.clone())
    );

    // A job that ends frees its slot.
    first.status = JobStatus::Succeeded;
    first.rev += 1;
    store.put_job(&first, first.rev - 1).await.unwrap();
    assert_eq!(store.tenant_usage("q1").await.unwrap().active_jobs, 1);
    assert!(matches!(
        store
            .create_job_within_quota(&third, None, now, &tight)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // The submit rate: a one-second window.
    let rate = TenantQuota {
        max_active_jobs: 1_000,
        submits_per_second: 2,
        ..tight
    };
    let second = now + Duration::seconds(10);
    for _ in 0..2 {
        assert!(matches!(
            store
                .create_job_within_quota(&sample_job("q3", second, &[]), None, second, &rate)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ));
    }
    let fast = sample_job("q3", second, &[]);
    assert_eq!(
        store
            .create_job_within_quota(&fast, None, second, &rate)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(QuotaRefusal::SubmitRate { limit: 2 })
    );
    let next_second = second + Duration::seconds(1);
    assert!(matches!(
        store
            .create_job_within_quota(&fast, None, next_second, &rate)
            .await
            .unwrap(),
        CreateOutcome::Created { .. }
    ));

    // Stored bytes follow the tenant's blob records.
    let blob = jobs::model::BlobRecord {
        v: SCHEMA_VERSION,
        tenant: "q1".into(),
        hash: format!("blake3:{}", "ab".repeat(32)),
        size_bytes: 700,
        blob_key: "cas/q1/quota".into(),
        created_at: now,
    };
    store.put_blob_record_if_absent(&blob).await.unwrap();
    store.put_blob_record_if_absent(&blob).await.unwrap();
    assert_eq!(
        store.tenant_usage("q1").await.unwrap().stored_bytes,
        700,
        "counted once"
    );
    assert_eq!(store.tenant_usage("q2").await.unwrap().stored_bytes, 0);
    assert!(store.delete_blob_record("q1", &blob.hash).await.unwrap());
    assert_eq!(store.tenant_usage("q1").await.unwrap().stored_bytes, 0);
    assert_eq!(
        store.tenant_usage("nobody").await.unwrap(),
        jobs::quota::TenantUsage::default()
    );
}
