//! A small SQLite handle: a group-committing writer, a few readers, migrations.
//!
//! SQLite in WAL mode lets readers run while one writer writes, also across processes
//! (the `dev` server and its runner subprocesses share the files). `synchronous=NORMAL`
//! makes each commit durable across a process crash, not across a power cut: the
//! README says so.
//!
//! **Group commit.** Every write is an operation sent to one writer thread. The thread
//! takes all operations waiting (up to [`MAX_BATCH`]) and commits them in one
//! transaction, and only then answers each caller with its own result. Under load this
//! turns many small commits into one, which is where SQLite spends its time; with one
//! caller it is one operation per commit, as before.
//!
//! **Each operation is still atomic on its own.** A batch first runs optimistically,
//! every operation straight into the transaction. If one of them fails, the whole
//! transaction is rolled back and the batch runs again with each operation inside its
//! own `SAVEPOINT`, so the failed one is undone without touching its neighbours. That
//! is why an operation is a `Fn`: it may run twice, the first run leaving no trace.
//! Savepoints are not free (SQLite copies every page an operation touches into a
//! sub-journal), and failures are rare, so the common case does without them. No
//! caller hears "done" before its write is committed.
//!
//! Point reads are short (microseconds) and run on the calling task. Reads that may
//! examine many rows (filtered listings) go through [`Db::scan`]: on a blocking
//! thread, with connections of their own, so they never hold up the async workers or
//! the point reads.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jobs::ports::StoreError;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

const READERS: usize = 4;
/// Connections for [`Db::scan`]; more scans at once wait for one.
const SCANNERS: usize = 2;
/// How often the checkpointer copies committed WAL frames into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// The WAL size (in pages, ~80 MB) at which the writer checkpoints after a commit.
/// Only a checkpoint that leaves nothing behind lets the next write restart the WAL
/// from its beginning, and under steady writes only the writer's own checkpoint can
/// be one: so this is what bounds the WAL, not a backstop that never runs.
const WAL_RESTART_PAGES: i64 = 20_000;
/// How often the checkpointer runs in the last stretch before the WAL reaches
/// [`WAL_RESTART_PAGES`], so that the writer's checkpoint there finds almost nothing
/// left to copy and sync. Without it, that checkpoint found up to 100 ms of writes,
/// and the commits behind it waited 10–25 ms for its fsyncs (submit p99 10–17 ms in
/// `bench/api.sh`; 5–12 ms with it).
const CHECKPOINT_NEAR_RESTART: Duration = Duration::from_millis(2);
/// How long before the WAL is expected to reach [`WAL_RESTART_PAGES`] the
/// checkpointer starts running every [`CHECKPOINT_NEAR_RESTART`]. Running that often
/// all along would copy the pages every commit rewrites (the newest leaf of each
/// index) fifty times more often.
const CHECKPOINT_LEAD: Duration = Duration::from_millis(40);
/// Operations committed together at most.
const MAX_BATCH: usize = 256;

pub(crate) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Several processes share the files: wait for a lock rather than fail.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints (copying the WAL back into the database, with fsyncs) are the
    // checkpointer thread's job, off the write path, except the one that lets the WAL
    // restart (see `WAL_RESTART_PAGES`).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_RESTART_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One write, type-erased so the writer thread can batch different kinds.
trait WriteOp: Send {
    /// Runs inside the open transaction and keeps the result. Returns whether it
    /// succeeded. May be called again after its transaction was rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Op<T, F> {
    work: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let succeeded = result.is_ok();
        self.result = Some(result);
        succeeded
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), None) => Err(StoreError::Unavailable("write was not run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

pub(crate) struct Db {
    path: std::path::PathBuf,
    writer: mpsc::Sender<Box<dyn WriteOp>>,
    /// Dropped with the handle, which stops the checkpointer.
    _checkpointer: mpsc::SyncSender<()>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    scanners: std::sync::Arc<Vec<Mutex<Connection>>>,
    /// A connection that only ever asks `PRAGMA data_version`: see [`Db::data_version`].
    watcher: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database and applies the migrations not yet
    /// applied, tracked in `PRAGMA user_version`.
    pub(crate) fn open(path: &Path, migrations: &[&str]) -> Result<Db, StoreError> {
        crate::private::prepare_database(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let mut conn = open_connection(path).map_err(unavailable)?;
        incremental_vacuum_mode(&conn, path)?;
        migrate(&mut conn, path, migrations)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        let scanners = (0..SCANNERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        let watcher = Mutex::new(open_connection(path).map_err(unavailable)?);
        let (writer, ops) = mpsc::channel::<Box<dyn WriteOp>>();
        let (checkpointer, wake) = mpsc::sync_channel::<()>(1);
        let commits = std::sync::Arc::new(Commits::default());
        let writer_commits = commits.clone();
        let writer_wakes = checkpointer.clone();
        spawn_for(path, "writer", move || {
            write_loop(conn, ops, &writer_commits, &writer_wakes)
        })?;
        let checkpointer_conn = open_connection(path).map_err(unavailable)?;
        spawn_for(path, "ckpt", move || {
            checkpoint_loop(checkpointer_conn, wake, &commits)
        })?;
        Ok(Db {
            path: path.to_path_buf(),
            writer,
            _checkpointer: checkpointer,
            readers,
            next_reader: AtomicUsize::new(0),
            scanners: std::sync::Arc::new(scanners),
            watcher,
        })
    }

    /// A number that changes whenever any connection (of this process or another)
    /// commits to the database: a waiting reader asks it, which costs a read of shared
    /// memory, to learn whether looking again could find anything new.
    pub(crate) fn data_version(&self) -> Result<i64, StoreError> {
        let conn = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(unavailable)
    }

    /// Runs `work` atomically in the writer, committed (possibly with others) before
    /// this returns. `work` may run twice (see the module docs), so it must not have
    /// effects outside the connection.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Op {
            work,
            result: None,
            reply,
        });
        self.writer
            .send(op)
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("sqlite writer dropped a write".into()))?
    }

    /// Bytes the database takes on disk: its file and its WAL.
    pub(crate) fn bytes_used(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Gives up to `max_pages` free pages back to the filesystem (after a sweep
    /// deleted many rows), in the writer like any write: a bounded step, so commits
    /// queued behind it wait milliseconds, not for a whole-file VACUUM. The file
    /// shrinks at the next checkpoint. Returns the free pages left.
    pub(crate) async fn reclaim(&self, max_pages: u32) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.execute_batch(&format!("PRAGMA incremental_vacuum({max_pages})"))
                .map_err(unavailable)?;
            conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(unavailable)
        })
        .await
    }

    /// Runs one statement in the writer; returns the rows changed.
    pub(crate) async fn execute(
        &self,
        sql: &'static str,
        params: Vec<rusqlite::types::Value>,
    ) -> Result<usize, StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(params.iter())))
                .map_err(unavailable)
        })
        .await
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Prefer a free reader; otherwise wait on one in turn.
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.readers.len() {
            let slot = &self.readers[(start + offset) % self.readers.len()];
            if let Ok(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let conn = self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }
}

impl Db {
    /// Runs a read that may take a while on a blocking thread, on one of the scan
    /// connections, so the async runtime and the point readers stay free.
    pub(crate) async fn scan<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let scanners = self.scanners.clone();
        tokio::task::spawn_blocking(move || {
            for slot in scanners.iter() {
                if let Ok(conn) = slot.try_lock() {
                    return f(&conn);
                }
            }
            let conn = scanners[0].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite scan stopped: {e}")))?
    }
}

/// Starts a thread named after its role and the database file (`sqlite-writer-jobs…`).
fn spawn_for(
    path: &Path,
    role: &str,
    run: impl FnOnce() + Send + 'static,
) -> Result<(), StoreError> {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    std::thread::Builder::new()
        .name(format!("sqlite-{role}-{file}"))
        .spawn(run)
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(format!("cannot start the sqlite {role}: {e}")))
}

/// Free pages one [`Db::reclaim`] step returns at most (1 MiB of 4 KiB pages): the
/// retention sweep takes one step per batch of 500 jobs, which free about that much.
/// Each step moves pages from the end of the file into free ones, holding the writer
/// meanwhile; a larger step (8 MiB) held it for up to 2 s in a debug build.
pub(crate) const RECLAIM_PAGES: u32 = 256;

/// A database file up to this size that predates incremental vacuum is converted at
/// open by one VACUUM (a rewrite of the file: about a second for 100 MB). A larger one
/// is left as it is, with a warning: its freed pages are still reused by later
/// writes, so it stops growing; `sqlite3 FILE 'PRAGMA auto_vacuum=INCREMENTAL;
/// VACUUM'` while `dev` is stopped converts it.
const VACUUM_AT_OPEN_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Puts the database in `auto_vacuum=INCREMENTAL`, so [`Db::reclaim`] can return freed
/// pages to the filesystem. The mode can only be chosen before the first table is
/// created, or by a VACUUM that rewrites the file: a new database gets it for free,
/// an existing one (bounded by [`VACUUM_AT_OPEN_MAX_BYTES`]) once.
fn incremental_vacuum_mode(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(unavailable)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(unavailable)?;
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)
        .map_err(unavailable)?;
    if tables == 0 {
        // Opening in WAL mode already wrote the file's header, so even a new, empty
        // database takes the mode only through a VACUUM (instant when empty).
        if let Err(e) = conn.execute_batch("VACUUM") {
            tracing::warn!(path = %path.display(), error = %e, "could not set incremental vacuum on a new database");
        }
        return Ok(());
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if size > VACUUM_AT_OPEN_MAX_BYTES {
        tracing::warn!(
            path = %path.display(),
            size,
            "database predates incremental vacuum and is too large to convert at start; \
             space freed by retention is reused, not returned to the filesystem"
        );
        return Ok(());
    }
    tracing::info!(path = %path.display(), size, "converting database to incremental vacuum (one VACUUM)");
    // Another process holding the file (a `dev` of the previous build still running
    // while `keys` opens it) makes VACUUM fail: that is no reason not to open. The
    // next open tries again.
    if let Err(e) = conn.execute_batch("VACUUM") {
        tracing::warn!(path = %path.display(), error = %e, "could not convert to incremental vacuum now; will try at the next start");
    }
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let applied: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    if applied > migrations.len() {
        return Err(StoreError::Unavailable(format!(
            "{} was written by a newer version (schema {applied}, this build knows {}); upgrade serverless-comfyui",
            path.display(),
            migrations.len()
        )));
    }
    for (index, migration) in migrations.iter().enumerate().skip(applied) {
        tx.execute_batch(migration).map_err(unavailable)?;
        tx.pragma_update(None, "user_version", index + 1)
            .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)
}

/// The checkpointer thread: every [`CHECKPOINT_EVERY`] (more often just before the
/// WAL restarts, see [`next_checkpoint_in`]), a passive checkpoint, which never blocks
/// the writer or the readers. The fsyncs a checkpoint needs happen here, so a commit
/// almost never waits for the disk (with `synchronous=NORMAL`, commits themselves do
/// not fsync).
///
/// **It sleeps while nothing is written.** After a checkpoint that found no commit
/// since the one before, it parks until the writer's next commit wakes it, so an idle
/// database costs no wake-ups (it used to wake ten times a second, for each of the
/// three databases of `dev` and of every runner). The writer only signals a parked
/// checkpointer (one atomic load per commit otherwise). The thread ends when the
/// handle and the writer are gone (the channel disconnects).
fn checkpoint_loop(conn: Connection, wake: mpsc::Receiver<()>, commits: &Commits) {
    let mut wait = CHECKPOINT_EVERY;
    let mut previous = None;
    let mut seen = commits.count.load(Ordering::Acquire);
    loop {
        match wake.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            // A stale wake-up from an earlier park: the timing goes on as it was.
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let count = commits.count.load(Ordering::Acquire);
        if count == seen {
            // Nothing committed since the last checkpoint: park until something is.
            commits.parked.store(true, Ordering::SeqCst);
            if commits.count.load(Ordering::SeqCst) == seen && wake.recv().is_err() {
                return;
            }
            commits.parked.store(false, Ordering::SeqCst);
            previous = None;
            wait = CHECKPOINT_EVERY;
            continue;
        }
        seen = count;
        // The second column is the WAL's size in pages.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(wal_pages) => {
                let now = (Instant::now(), wal_pages);
                wait = next_checkpoint_in(previous, now);
                previous = Some(now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "sqlite checkpoint failed; will retry");
                wait = CHECKPOINT_EVERY;
            }
        }
    }
}

/// When to checkpoint next, given the WAL's size (pages) at the last two checkpoints:
/// every [`CHECKPOINT_EVERY`], except in the last [`CHECKPOINT_LEAD`] before the WAL
/// reaches [`WAL_RESTART_PAGES`] at the rate it grew since the previous checkpoint.
fn next_checkpoint_in(previous: Option<(Instant, i64)>, now: (Instant, i64)) -> Duration {
    let Some((then, pages_then)) = previous else {
        return CHECKPOINT_EVERY;
    };
    let (at, pages) = now;
    let grown = pages - pages_then;
    let elapsed = at.duration_since(then).as_secs_f64();
    if grown <= 0 || elapsed <= 0.0 {
        // Idle, or the WAL restarted in between.
        return CHECKPOINT_EVERY;
    }
    let pages_per_second = grown as f64 / elapsed;
    let until_full = (WAL_RESTART_PAGES - pages).max(0) as f64 / pages_per_second;
    // (Capped before converting: a slowly growing WAL may be hours from full.)
    let until_full = Duration::from_secs_f64(until_full.min(3600.0));
    until_full
        .saturating_sub(CHECKPOINT_LEAD)
        .clamp(CHECKPOINT_NEAR_RESTART, CHECKPOINT_EVERY)
}

/// The writer thread: batch, run, commit once, answer.
/// What the writer tells the checkpointer: how many batches it committed, and whether
/// the checkpointer is parked waiting for one.
#[derive(Default)]
struct Commits {
    count: std::sync::atomic::AtomicU64,
    parked: std::sync::atomic::AtomicBool,
}

fn write_loop(
    conn: Connection,
    ops: mpsc::Receiver<Box<dyn WriteOp>>,
    commits: &Commits,
    checkpointer: &mpsc::SyncSender<()>,
) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        commits.count.fetch_add(1, Ordering::SeqCst);
        if commits.parked.load(Ordering::SeqCst) {
            // Full means a wake-up is already on its way.
            let _ = checkpointer.try_send(());
        }
        for op in batch {
            op.finish(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Unavailable(e.clone())),
            });
        }
    }
}

/// Commits a batch: optimistically without savepoints; if an operation fails, once
/// more with each operation in its own savepoint.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteOp>]) -> Result<(), String> {
    let fail = |e: rusqlite::Error| {
        let _ = conn.execute_batch("ROLLBACK");
        format!("sqlite: {e}")
    };
    run_cached(conn, "BEGIN IMMEDIATE").map_err(fail)?;
    let mut all_succeeded = true;
    for op in batch.iter_mut() {
        all_succeeded &= op.run(conn);
    }
    if !all_succeeded {
        conn.execute_batch("ROLLBACK; BEGIN IMMEDIATE")
            .map_err(fail)?;
        for op in batch.iter_mut() {
            conn.execute_batch("SAVEPOINT op").map_err(fail)?;
            let undo = if op.run(conn) {
                "RELEASE op"
            } else {
                "ROLLBACK TO op; RELEASE op"
            };
            conn.execute_batch(undo).map_err(fail)?;
        }
    }
    run_cached(conn, "COMMIT").map_err(fail)
}

/// Runs a statement without parameters (`BEGIN`, `COMMIT`) from the statement cache:
/// parsing even these anew is measurable when it happens at every commit and read.
pub(crate) fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const TABLE: &[&str] = &["CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL);"];

    fn count(db: &Db, sql: &str) -> i64 {
        db.read(|conn| conn.query_row(sql, [], |r| r.get(0)).map_err(unavailable))
            .unwrap()
    }

    /// Holds the writer busy for a moment, so that what is sent meanwhile forms one
    /// batch. Returns once the writer is held; the task ends when it lets go.
    async fn hold_writer(db: Arc<Db>) -> tokio::task::JoinHandle<()> {
        let (started, is_started) = oneshot::channel::<()>();
        let started = Mutex::new(Some(started));
        let handle = tokio::spawn(async move {
            db.write(move |_| {
                if let Some(started) = started.lock().unwrap().take() {
                    let _ = started.send(());
                }
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
            .await
            .unwrap();
        });
        is_started.await.unwrap();
        handle
    }

    #[tokio::test]
    async fn a_failed_operation_is_undone_alone_and_the_others_commit_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("t.sqlite"), TABLE).unwrap());
        let blocker = hold_writer(db.clone()).await;
        // While the writer is held, queue ten inserts and one operation that inserts
        // and then fails: they run as one batch.
        let mut writes = Vec::new();
        for i in 0..10 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |conn| {
                    conn.execute("INSERT INTO items VALUES (?1, 1)", [format!("ok-{i}")])
                        .map_err(unavailable)
                })
                .await
            }));
        }
        let failing = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|conn| {
                    conn.execute("INSERT INTO items VALUES ('half-done', 1)", [])
                        .map_err(unavailable)?;
                    Err::<(), _>(StoreError::Conflict)
                })
                .await
            })
        };
        blocker.await.unwrap();
        for write in writes {
            assert_eq!(write.await.unwrap().unwrap(), 1);
        }
        assert!(matches!(failing.await.unwrap(), Err(StoreError::Conflict)));
        assert_eq!(
            count(&db, "SELECT count(*) FROM items WHERE name = 'half-done'"),
            0
        );
        // Each successful operation ran twice (optimistically, then in a savepoint)
        // but left exactly one row: the primary key would have refused a second.
        assert_eq!(
            count(&db, "SELECT count(*) FROM items WHERE name LIKE 'ok-%'"),
            10
        );
    }

    /// A long read does not stop the async runtime: on a single-threaded runtime,
    /// another task keeps running while a scan takes its time.
    #[tokio::test(flavor = "current_thread")]
    async fn a_scan_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite"), TABLE).unwrap();
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let n: i64 = db
            .scan(|conn| {
                std::thread::sleep(Duration::from_millis(300));
                conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
                    .map_err(unavailable)
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
        ticker.abort();
        assert!(
            ticks.load(Ordering::Relaxed) >= 10,
            "the runtime was blocked during the scan"
        );
    }

    #[test]
    fn checkpoints_come_often_only_just_before_the_wal_restarts() {
        let start = Instant::now();
        let at = |ms: u64, pages: i64| (start + Duration::from_millis(ms), pages);
        // No history, idle, or restarted since: the normal pace.
        assert_eq!(next_checkpoint_in(None, at(0, 5_000)), CHECKPOINT_EVERY);
        assert_eq!(
            next_checkpoint_in(Some(at(0, 5_000)), at(100, 5_000)),
            CHECKPOINT_EVERY
        );
        assert_eq!(
            next_checkpoint_in(Some(at(0, 19_000)), at(100, 300)),
            CHECKPOINT_EVERY
        );
        // Growing slowly (1,000 pages a second): far from full, the normal pace.
        assert_eq!(
            next_checkpoint_in(Some(at(0, 1_000)), at(1_000, 2_000)),
            CHECKPOINT_EVERY
        );
        // 50,000 pages a second with 5,000 to go: full in 100 ms, so wait until the
        // lead before it.
        assert_eq!(
            next_checkpoint_in(Some(at(0, 10_000)), at(100, 15_000)),
            Duration::from_millis(100) - CHECKPOINT_LEAD
        );
        // Within the lead, and past the size: the tight pace.
        assert_eq!(
            next_checkpoint_in(Some(at(0, 17_500)), at(50, 20_000 - 500)),
            CHECKPOINT_NEAR_RESTART
        );
        assert_eq!(
            next_checkpoint_in(Some(at(0, 19_000)), at(10, 21_000)),
            CHECKPOINT_NEAR_RESTART
        );
    }

    #[tokio::test]
    async fn the_checkpointer_moves_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let db = Db::open(&path, TABLE).unwrap();
        for i in 0..50 {
            db.write(move |conn| {
                conn.execute(
                    "INSERT INTO items VALUES (?1, ?2)",
                    (format!("item-{i}"), i),
                )
                .map_err(unavailable)
            })
            .await
            .unwrap();
        }
        // Far below the backstop autocheckpoint: only the checkpointer can have copied
        // these rows out of the WAL. A copy of the main file alone must hold them.
        tokio::time::sleep(CHECKPOINT_EVERY * 5).await;
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 50);
    }
}
