use chrono::TimeZone;
use jobs::model::IdempotencyRecord;

use super::listing::candidates_sql;
use super::*;

fn at(hours: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, hours, 0, 0).unwrap()
}

/// Opens `path` at an older schema and writes a job the way that schema's build
/// did: `enqueued` inside the JSON body, labels and idempotency records in the
/// tables of the time (whose columns did not change before schema 4).
fn write_as_old_schema(path: &Path, schema: usize, job: &Job, record: Option<&IdempotencyRecord>) {
    drop(Db::open(path, &MIGRATIONS[..schema]).unwrap());
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut body = serde_json::to_value(job).unwrap();
    body["enqueued"] = job.enqueued.into();
    conn.execute(
        "INSERT INTO jobs (id, tenant, status, rev, reserved_until_ms, body) VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
        params![job.id.as_str(), job.tenant, job.status.as_str(), job.rev as i64, body.to_string()],
    )
    .unwrap();
    for (k, v) in &job.metadata {
        conn.execute(
            "INSERT INTO job_labels (job_id, tenant, k, v) VALUES (?1, ?2, ?3, ?4)",
            params![job.id.as_str(), job.tenant, k, v],
        )
        .unwrap();
    }
    if let Some(record) = record {
        conn.execute(
            "INSERT INTO idempotency (tenant, key, expires_at_ms, body) VALUES (?1, ?2, ?3, ?4)",
            params![
                record.tenant,
                record.key,
                record.expires_at.timestamp_millis(),
                to_json(record).unwrap()
            ],
        )
        .unwrap();
    }
}

/// A data dir written before the WITHOUT ROWID rebuild (schema 2) keeps its labels
/// and idempotency records through the upgrade.
#[tokio::test]
async fn upgrading_from_schema_2_keeps_labels_and_idempotency_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let now = at(0);
    let job = testkit::conformance::sample_job("t1", now, &[("team", "a")]);
    let record = IdempotencyRecord {
        v: 1,
        tenant: "t1".into(),
        key: "key-1".into(),
        fingerprint: "f".into(),
        job_id: job.id.clone(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(24),
    };
    write_as_old_schema(&path, 2, &job, Some(&record));
    let store = SqliteJobStore::open(&path).unwrap();
    assert_eq!(
        store.get_idempotency("t1", "key-1").await.unwrap(),
        Some(record)
    );
    let listed = store
        .list_jobs(&ListQuery {
            tenant: "t1".into(),
            metadata: vec![("team".into(), "a".into())],
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| &j.id).collect::<Vec<_>>(), [&job.id]);
}

/// Schema 4 takes `enqueued` out of the body and starts counting queued jobs:
/// both must carry over what a schema 3 data dir holds.
#[tokio::test]
async fn upgrading_from_schema_3_keeps_enqueued_flags_and_counts_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let mut sent = testkit::conformance::sample_job("t1", at(0), &[]);
    sent.enqueued = true;
    let unsent = testkit::conformance::sample_job("t1", at(1), &[]);
    let mut running = testkit::conformance::sample_job("t1", at(2), &[]);
    running.status = JobStatus::Running;
    running.enqueued = true;
    for job in [&sent, &unsent, &running] {
        write_as_old_schema(&path, 3, job, None);
    }
    let store = SqliteJobStore::open(&path).unwrap();
    for job in [&sent, &unsent, &running] {
        let read = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(read.enqueued, job.enqueued, "{}", job.id);
    }
    // Two jobs were queued before the upgrade: a new one is third in line.
    let next = testkit::conformance::sample_job("t1", at(3), &[]);
    assert_eq!(
        store.create_job(&next, None, at(3)).await.unwrap(),
        CreateOutcome::Created { queue_position: 2 }
    );
}

fn pragma(store: &SqliteJobStore, name: &str) -> i64 {
    store
        .db
        .read(|conn| {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(unavailable)
        })
        .unwrap()
}

/// A data dir from before retention (schema 5, written without incremental vacuum):
/// its finished jobs get their deadline column and its output assets their job, so
/// the sweep finds them; the file is converted to incremental vacuum at open, so a
/// sweep's deletes can be given back to the filesystem.
#[tokio::test]
async fn upgrading_from_schema_5_finds_expired_jobs_and_can_reclaim_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let mut finished = testkit::conformance::sample_job("t1", at(0), &[]);
    finished.status = JobStatus::Succeeded;
    finished.expires_at = at(1);
    let mut live = testkit::conformance::sample_job("t1", at(0), &[]);
    live.expires_at = at(1);
    let output = Asset {
        v: jobs::model::SCHEMA_VERSION,
        id: "asset_out".into(),
        tenant: "t1".into(),
        hash: format!("blake3:{}", "ab".repeat(32)),
        size_bytes: 3,
        content_type: "image/png".into(),
        file_path: Some("o.png".into()),
        tags: vec![],
        created_at: at(0),
        blob_key: "outputs/x".into(),
        job_id: Some(finished.id.clone()),
    };
    {
        // As an older build wrote it: the default auto_vacuum (none).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for migration in &MIGRATIONS[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        for job in [&finished, &live] {
            conn.execute(
                "INSERT INTO jobs (id, tenant, status, rev, body) VALUES (?1, ?2, ?3, 1, ?4)",
                params![
                    job.id.as_str(),
                    job.tenant,
                    job.status.as_str(),
                    to_json(job).unwrap()
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO assets (id, tenant, hash, file_path, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                output.id,
                output.tenant,
                output.hash,
                output.file_path,
                to_json(&output).unwrap()
            ],
        )
        .unwrap();
        let mode: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 0, "written without incremental vacuum");
    }
    let store = SqliteJobStore::open(&path).unwrap();
    assert_eq!(pragma(&store, "auto_vacuum"), 2, "converted at open");
    let expired = store.expired_jobs(at(2), 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&finished.id],
        "the finished job's deadline was carried over; the live one has none"
    );
    assert_eq!(
        store.job_assets(&finished.id, 10).await.unwrap(),
        vec![output]
    );

    // Space freed by deletes goes back in bounded steps.
    let mut many = Vec::new();
    for i in 0..2000u32 {
        let mut job = testkit::conformance::sample_job("t1", at(0), &[("pad", &"x".repeat(200))]);
        job.status = JobStatus::Succeeded;
        job.metadata.insert("i".into(), i.to_string());
        store.create_job(&job, None, at(0)).await.unwrap();
        many.push(job.id);
    }
    for id in &many {
        assert!(store.delete_job(id).await.unwrap());
    }
    let free = pragma(&store, "freelist_count");
    assert!(free > 0, "deletes left free pages");
    store.reclaim().await.unwrap();
    let after = pragma(&store, "freelist_count");
    assert!(
        after < free && free - after <= i64::from(crate::db::RECLAIM_PAGES),
        "one bounded step: {free} -> {after}"
    );
    while pragma(&store, "freelist_count") > 0 {
        store.reclaim().await.unwrap();
    }
}

/// A filtered listing over many jobs that match one filter but not the other stops
/// at the read budget with a short page and a place to go on; following it finds
/// exactly the matching jobs, newest first.
#[tokio::test]
async fn a_filtered_list_stops_at_the_read_budget_and_continues_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
    store.list_scan_budget = 50;
    let mut wanted = Vec::new();
    for _ in 0..5 {
        let job = testkit::conformance::sample_job("t1", at(0), &[("x", "1"), ("y", "1")]);
        store.create_job(&job, None, at(0)).await.unwrap();
        wanted.push(job.id);
    }
    wanted.reverse();
    for i in 0..200 {
        let labels: &[(&str, &str)] = if i % 2 == 0 {
            &[("x", "1"), ("y", "0")]
        } else {
            &[("x", "0"), ("y", "1")]
        };
        let job = testkit::conformance::sample_job("t1", at(0), labels);
        store.create_job(&job, None, at(0)).await.unwrap();
    }
    let filters = vec![
        ("x".to_string(), "1".to_string()),
        ("y".to_string(), "1".to_string()),
    ];
    let mut found = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 10, "the listing does not end");
        let page = store
            .list_jobs_page(&ListQuery {
                tenant: "t1".into(),
                metadata: filters.clone(),
                before: before.clone(),
                limit: 10,
            })
            .await
            .unwrap();
        found.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.resume_before {
            Some(at) => {
                assert!(
                    page.jobs.is_empty(),
                    "the 100 newest candidates do not match"
                );
                before = Some(at);
            }
            None => break,
        }
    }
    assert_eq!(
        pages, 3,
        "two pages stop at the budget of 50, the third finds all"
    );
    assert_eq!(found, wanted);
    // With room enough, one page.
    store.list_scan_budget = LIST_SCAN_BUDGET;
    let page = store
        .list_jobs_page(&ListQuery {
            tenant: "t1".into(),
            metadata: filters,
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.resume_before, None);
    assert_eq!(
        page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        wanted
    );
}

/// The candidates come from the label index in its order: no table scan and no
/// sort, whatever the number of filters.
#[test]
fn filtered_listing_reads_the_label_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
    for (others, below) in [(0, false), (1, true), (15, true)] {
        let plan: Vec<String> = store
            .db
            .read(|conn| {
                let mut stmt = conn
                    .prepare(&format!(
                        "EXPLAIN QUERY PLAN {}",
                        candidates_sql(others, below)
                    ))
                    .map_err(unavailable)?;
                let mut args = vec![text("t"), text("k"), text("v")];
                if below {
                    args.push(text("job_x"));
                }
                for _ in 0..others {
                    args.push(text("k"));
                    args.push(text("v"));
                }
                stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)
            })
            .unwrap();
        let text = plan.join("\n");
        assert!(text.contains("SEARCH l USING PRIMARY KEY"), "{text}");
        assert!(!text.contains("SCAN"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
    }
}

/// The queued-job count follows every way a job enters or leaves `queued`.
#[tokio::test]
async fn the_queued_count_follows_inserts_status_changes_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
    let count = || store.db.read(|conn| queued_count(conn, u64::MAX)).unwrap();
    let mut a = testkit::conformance::sample_job("t1", at(0), &[]);
    let b = testkit::conformance::sample_job("t1", at(0), &[]);
    let mut c = testkit::conformance::sample_job("t1", at(0), &[]);
    c.status = JobStatus::Running;
    for job in [&a, &b, &c] {
        store.create_job(job, None, at(0)).await.unwrap();
    }
    assert_eq!(count(), 2);
    // Queued -> running, and a write that keeps a job queued.
    a.status = JobStatus::Running;
    a.rev += 1;
    store.put_job(&a, a.rev - 1).await.unwrap();
    let mut b2 = b.clone();
    b2.rev += 1;
    store.put_job(&b2, b.rev).await.unwrap();
    assert_eq!(count(), 1);
    // Running -> queued (a hand-back).
    a.status = JobStatus::Queued;
    a.rev += 1;
    store.put_job(&a, a.rev - 1).await.unwrap();
    assert_eq!(count(), 2);
    store
        .db
        .execute("DELETE FROM jobs WHERE id = ?1", vec![text(a.id.as_str())])
        .await
        .unwrap();
    assert_eq!(count(), 1);
    // The count agrees with the jobs themselves.
    let queued = store.jobs_in_status(JobStatus::Queued, 100).await.unwrap();
    assert_eq!(queued.len() as u64, count());
}
