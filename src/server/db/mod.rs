//! All SQL lives here. One SQLite file in WAL mode, one connection behind a mutex (one writer),
//! used from blocking tasks so the async threads never wait on disk.

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
}

impl Db {
    /// Opens (creating if needed) the database file and applies every pending migration.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let mut conn = Connection::open(path)?;
        Self::configure(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// An in-memory database with the full schema, for unit tests.
    pub fn open_in_memory() -> anyhow::Result<Db> {
        let mut conn = Connection::open_in_memory()?;
        Self::configure(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
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

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
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
}
