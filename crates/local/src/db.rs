//! A small SQLite handle: a group-committing writer, a few readers, migrations.
//!
//! SQLite in WAL mode lets readers run while one writer writes, also across processes
//! (the `dev` server and its runner subprocesses share the files). `synchronous=NORMAL`
//! makes each commit durable across a process crash, not across a power cut: the
//! README says so.
//!
//! **Group commit.** Every write is an operation sent to one writer thread. The thread
//! takes all operations waiting (up to [`MAX_BATCH`]), runs each inside its own
//! `SAVEPOINT` in one transaction, commits once, and only then answers each caller
//! with its own result. An operation that fails rolls back to its savepoint without
//! touching its neighbours. Under load this turns many small commits into one, which
//! is where SQLite spends its time; with one caller it is one operation per commit,
//! as before. Each operation is still atomic on its own, and no caller hears "done"
//! before its write is committed.
//!
//! Reads are short (microseconds) and run on the calling task.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use jobs::ports::StoreError;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

const READERS: usize = 4;
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
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One write, type-erased so the writer thread can batch different kinds.
trait WriteOp: Send {
    /// Runs inside the open transaction. An error rolls back this op only.
    fn run(&mut self, conn: &Connection) -> Result<(), ()>;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Op<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> Result<(), ()> {
        let work = self.work.take().expect("run once");
        let result = work(conn);
        let failed = result.is_err();
        self.result = Some(result);
        if failed { Err(()) } else { Ok(()) }
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
    writer: mpsc::Sender<Box<dyn WriteOp>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl Db {
    /// Opens (creating if needed) the database and applies the migrations not yet
    /// applied, tracked in `PRAGMA user_version`.
    pub(crate) fn open(path: &Path, migrations: &[&str]) -> Result<Db, StoreError> {
        let mut conn = open_connection(path).map_err(unavailable)?;
        migrate(&mut conn, path, migrations)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        let (writer, ops) = mpsc::channel::<Box<dyn WriteOp>>();
        std::thread::Builder::new()
            .name(format!(
                "sqlite-writer-{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ))
            .spawn(move || write_loop(conn, ops))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        Ok(Db {
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Runs `work` atomically in the writer, committed (possibly with others) before
    /// this returns.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Op {
            work: Some(work),
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

    /// Runs one statement in the writer; returns the rows changed.
    pub(crate) async fn execute(
        &self,
        sql: &'static str,
        params: Vec<rusqlite::types::Value>,
    ) -> Result<usize, StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
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

/// The writer thread: batch, run each op in a savepoint, commit once, answer.
fn write_loop(conn: Connection, ops: mpsc::Receiver<Box<dyn WriteOp>>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        for op in batch {
            op.finish(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Unavailable(e.0.clone())),
            });
        }
    }
}

/// `StoreError` is not `Clone`; a failed commit is reported to every op by message.
#[derive(Clone)]
struct StoreErrorCopy(String);

fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteOp>]) -> Result<(), StoreErrorCopy> {
    (|| -> Result<(), StoreErrorCopy> {
        let fail = |e: rusqlite::Error| StoreErrorCopy(format!("sqlite: {e}"));
        conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
        for op in batch.iter_mut() {
            if let Err(e) = conn.execute_batch("SAVEPOINT op") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(fail(e));
            }
            let undo = op.run(conn).is_err();
            let close = if undo {
                conn.execute_batch("ROLLBACK TO op; RELEASE op")
            } else {
                conn.execute_batch("RELEASE op")
            };
            if let Err(e) = close {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(fail(e));
            }
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(fail(e));
        }
        Ok(())
    })()
}
