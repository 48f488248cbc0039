//! All SQL lives here. One SQLite file in WAL mode, one connection behind a mutex (the one
//! writer, [`Db::call`]) and a few read-only connections ([`Db::read`]) that never wait for it,
//! all used from blocking tasks so the async threads never wait on disk.

pub mod api_keys;
pub mod audit;
pub mod backup;
pub mod hosts;
pub mod invites;
pub mod quotas;
pub mod sandboxes;
pub mod sessions;
pub mod teams;
pub mod templates;
pub mod tickets;
pub mod users;
pub mod vocab;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// The database's file name in the server's data dir.
pub const DB_FILE: &str = "sandboxctl.db";

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("not found")]
    NotFound,
    /// A uniqueness or state rule refused the write; the code says which.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("database task failed: {0}")]
    Task(String),
}

pub type DbResult<T> = Result<T, DbError>;

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Read-only connections to the same file (none for an in-memory database: reads then use
    /// the writer). In WAL mode a reader sees the last commit and neither waits for the writer
    /// nor holds it up.
    readers: Arc<Readers>,
    /// Turns at the connections, handed out in order (a permit per connection): a call waits
    /// here, as a task, instead of as one more blocking thread asleep on a connection's lock.
    turns: Turns,
    timings: DbTimings,
}

/// The queues in front of the writer and the readers.
#[derive(Clone)]
struct Turns {
    write: Arc<tokio::sync::Semaphore>,
    read: Arc<tokio::sync::Semaphore>,
}

impl Turns {
    fn new(readers: usize) -> Turns {
        Turns {
            write: Arc::new(tokio::sync::Semaphore::new(1)),
            read: Arc::new(tokio::sync::Semaphore::new(readers.max(1))),
        }
    }
}

/// How many read-only connections a file database keeps.
const READERS: usize = 4;

#[derive(Default)]
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    fn open(path: &Path, n: usize) -> anyhow::Result<Readers> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.pragma_update(None, "query_only", "ON")?;
            Self::tune(&conn)?;
            conns.push(Mutex::new(conn));
        }
        Ok(Readers {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// Page cache and memory-mapped reads, for the writer and every reader alike.
    fn tune(conn: &Connection) -> rusqlite::Result<()> {
        // 16 MiB of page cache (negative: KiB) and up to 256 MiB of the file mapped.
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.pragma_update(None, "mmap_size", 268_435_456)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(())
    }

    /// A free reader if there is one, else the next in turn (waiting for it).
    fn get(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        if self.conns.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        for i in 0..n {
            if let Ok(g) = self.conns[(start + i) % n].try_lock() {
                return Some(g);
            }
        }
        Some(
            self.conns[start % n]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// How long calls wait for the one connection and how long their statements then take (the
/// server's `/metrics` shows both).
#[derive(Clone)]
pub struct DbTimings {
    pub wait: prometheus_client::metrics::histogram::Histogram,
    pub query: prometheus_client::metrics::histogram::Histogram,
}

impl Default for DbTimings {
    fn default() -> Self {
        DbTimings {
            wait: crate::prom::latency_histogram(),
            query: crate::prom::latency_histogram(),
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database file and applies every pending migration.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let mut conn = Connection::open(path)?;
        Self::configure(&mut conn)?;
        Readers::tune(&conn)?;
        let readers = Readers::open(path, READERS)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::new(readers),
            turns: Turns::new(READERS),
            timings: DbTimings::default(),
        })
    }

    /// An in-memory database with the full schema, for unit tests.
    pub fn open_in_memory() -> anyhow::Result<Db> {
        let mut conn = Connection::open_in_memory()?;
        Self::configure(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Readers::default()),
            turns: Turns::new(0),
            timings: DbTimings::default(),
        })
    }

    fn configure(conn: &mut Connection) -> anyhow::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        embedded::migrations::runner().run(conn)?;
        Ok(())
    }

    /// The wait and query timings of every [`Db::call`].
    pub fn timings(&self) -> &DbTimings {
        &self.timings
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let timings = self.timings.clone();
        let asked = std::time::Instant::now();
        let turn = self.turns.write.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let started = std::time::Instant::now();
            timings.wait.observe((started - asked).as_secs_f64());
            let out = f(&mut guard);
            timings.query.observe(started.elapsed().as_secs_f64());
            out
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` with a read-only connection on a blocking thread: it sees every write committed
    /// before it starts and does not wait for [`Db::call`]s (a write in `f` fails). For reads on
    /// the request path (authentication, sandbox GETs and lists).
    pub async fn read<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        if self.readers.conns.is_empty() {
            return self.call(move |c| f(c)).await;
        }
        let readers = self.readers.clone();
        let timings = self.timings.clone();
        let asked = std::time::Instant::now();
        let turn = self.turns.read.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let guard = readers.get().expect("readers exist");
            let started = std::time::Instant::now();
            timings.wait.observe((started - asked).as_secs_f64());
            let out = f(&guard);
            timings.query.observe(started.elapsed().as_secs_f64());
            out
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

/// Runs `f` in one immediate transaction, committed only when it answers `Ok(Ok(_))`: a check
/// and the write it allows (a quota and the sandbox counted against it) see the same state.
pub fn atomically<T, E>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> DbResult<Result<T, E>>,
) -> DbResult<Result<T, E>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    if out.is_ok() {
        tx.commit()?;
    }
    Ok(out)
}

/// Seconds since the Unix epoch, on the server's clock (which tests may move; see
/// [`crate::server::clock`]).
pub fn now() -> i64 {
    crate::server::clock::now()
}

/// The newest schema version this binary's migrations make.
pub fn newest_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Why a database's schema is not one this binary can migrate.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "its schema is version {found}, made by a newer sandboxctl (this one knows up to version \
         {known}): restore it with that release or a newer one"
    )]
    Newer { found: i64, known: i64 },
    #[error(
        "its migration {version} ({name}) is not this sandboxctl's: it was not made by this \
         sandboxctl or a release before it"
    )]
    Foreign { version: i64, name: String },
    #[error("its migration history cannot be read: {0}")]
    Unreadable(#[from] rusqlite::Error),
}

/// Checks that every migration applied to `conn` is one of this binary's (same version, name and
/// checksum), so the server can open it and apply the rest; answers the newest one applied.
pub fn check_schema(conn: &Connection, history_table: &str) -> Result<i64, SchemaError> {
    let applied: Vec<(i64, String, String)> = conn
        .prepare(&format!(
            "SELECT version, name, checksum FROM {history_table} ORDER BY version"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let runner = embedded::migrations::runner();
    let ours = runner.get_migrations();
    let known = newest_schema_version();
    let mut newest = 0;
    for (version, name, checksum) in applied {
        if version > known {
            return Err(SchemaError::Newer {
                found: version,
                known,
            });
        }
        let same = ours.iter().any(|m| {
            i64::from(m.version()) == version
                && m.name() == name
                && m.checksum().to_string() == checksum
        });
        if !same {
            return Err(SchemaError::Foreign { version, name });
        }
        newest = newest.max(version);
    }
    Ok(newest)
}

/// Maps "no rows" to `NotFound`.
pub(crate) fn one<T>(r: rusqlite::Result<T>) -> DbResult<T> {
    match r {
        Ok(v) => Ok(v),
        Err(rusqlite::Error::QueryReturnedNoRows) => Err(DbError::NotFound),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_to_an_empty_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let conn = db.conn.lock().unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN
                 ('users','teams','memberships','api_keys','oauth_identities','hosts','host_tags',
                  'host_registration_tokens','host_refresh_tokens','sandboxes','templates','audit_events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 12);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        drop(conn);
        // Opening again applies nothing twice.
        drop(db);
        Db::open(&dir.path().join("t.db")).unwrap();
    }

    #[tokio::test]
    async fn readers_see_commits_and_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        assert_eq!(db.readers.conns.len(), READERS);
        db.call(|c| {
            c.execute(
                "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES ('u1', 'a@example.com', 'A', 'x', 1, 1)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        for _ in 0..READERS * 2 {
            let n: i64 = db
                .read(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
                .await
                .unwrap();
            assert_eq!(n, 1, "every reader sees the commit");
        }
        let refused = db.read(|c| Ok(c.execute("DELETE FROM users", [])?)).await;
        assert!(refused.is_err(), "a reader cannot write");
        let mem = Db::open_in_memory().unwrap();
        let n: i64 = mem
            .read(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 0, "an in-memory database reads through its writer");
    }
}
