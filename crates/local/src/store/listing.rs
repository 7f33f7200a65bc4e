//! Label-filtered listing: candidates from the label index of one filter, checked
//! against the others, newest first, within a read budget (a short page and a cursor
//! rather than an unbounded scan).

use super::*;

/// Label entries one filtered list request examines at most (about 10 ms of index
/// steps). A filter that matches few of a tenant's many jobs then returns a short
/// page with a cursor instead of scanning on (every list page already costs a read).
pub const LIST_SCAN_BUDGET: usize = 5_000;

/// Candidates of a filtered listing, newest first, from the label index of one filter
/// (`?1` tenant, `?2` key, `?3` value, `?4` the cursor's id when `below`), each with
/// whether it matches the `others` filters that follow as key/value pairs.
pub(super) fn candidates_sql(others: usize, below: bool) -> String {
    // Numbered after ?1-?4: SQLite numbers a bare `?` after the largest number seen
    // so far in the text, and the select list comes before the WHERE clause.
    let first = if below { 5 } else { 4 };
    let mut matches = String::from("1");
    for i in 0..others {
        let (k, v) = (first + 2 * i, first + 2 * i + 1);
        matches.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM job_labels o WHERE o.tenant = l.tenant AND o.k = ?{k} AND o.v = ?{v} AND o.job_id = l.job_id)"
        ));
    }
    let below = if below { " AND l.job_id < ?4" } else { "" };
    format!(
        "SELECT l.job_id, {matches} FROM job_labels l WHERE l.tenant = ?1 AND l.k = ?2 AND l.v = ?3{below} ORDER BY l.job_id DESC"
    )
}

/// A filtered page, driven by the label index of the filter with the fewest entries
/// (counted up to the budget): candidates come newest first from that index, every
/// other filter is a primary-key probe of `job_labels`, and only matching jobs are
/// read. Stops at `limit` jobs or after `budget` candidates, whichever comes first.
pub(super) fn filtered_page(
    conn: &rusqlite::Connection,
    query: &ListQuery,
    budget: usize,
) -> StoreResult<ListedJobs> {
    let before = query.before.as_ref().map(|id| id.as_str().to_string());
    let below = if before.is_some() {
        " AND job_id < ?4"
    } else {
        ""
    };
    let bind_before = |args: &mut Vec<Value>| {
        if let Some(before) = &before {
            args.push(text(before));
        }
    };
    // The most selective filter drives the scan.
    let count_sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM job_labels WHERE tenant = ?1 AND k = ?2 AND v = ?3{below} LIMIT {budget})"
    );
    let mut driver = 0;
    let mut fewest = i64::MAX;
    for (i, (k, v)) in query.metadata.iter().enumerate() {
        let mut args = vec![text(&query.tenant), text(k), text(v)];
        bind_before(&mut args);
        let n: i64 = conn
            .prepare_cached(&count_sql)
            .and_then(|mut s| s.query_row(params_from_iter(args), |r| r.get(0)))
            .map_err(unavailable)?;
        if n < fewest {
            fewest = n;
            driver = i;
        }
    }
    let (k, v) = &query.metadata[driver];
    let mut args = vec![text(&query.tenant), text(k), text(v)];
    bind_before(&mut args);
    for (i, (k, v)) in query.metadata.iter().enumerate() {
        if i != driver {
            args.push(text(k));
            args.push(text(v));
        }
    }
    let sql = candidates_sql(query.metadata.len() - 1, before.is_some());
    let mut ids = Vec::new();
    let mut resume_before = None;
    {
        let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(unavailable)?;
        let mut examined = 0;
        while let Some(row) = rows.next().map_err(unavailable)? {
            let id: String = row.get(0).map_err(unavailable)?;
            let matched: bool = row.get(1).map_err(unavailable)?;
            examined += 1;
            if matched {
                ids.push(id.clone());
                if ids.len() >= query.limit {
                    break;
                }
            }
            if examined >= budget {
                resume_before = Some(id);
                break;
            }
        }
    }
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids.iter().filter_map(|id| JobId::parse(id)) {
        if let Some(job) = job_by_id(conn, &id)? {
            jobs.push(job);
        }
    }
    Ok(ListedJobs {
        jobs,
        resume_before: resume_before.and_then(|id| JobId::parse(&id)),
    })
}
