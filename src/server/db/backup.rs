//! `server backup` and `server restore`: a consistent copy of the live database through SQLite's
//! online backup API, and putting such a copy back while the server is stopped.
//!
//! The database is only half of a server: its signing keys (`jwt.key`, `agent-signing.key`) live
//! beside it in the data dir and must be kept with every backup.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::DB_FILE;
use crate::server::auth::keys::{AGENT_SIGNING_KEY_FILE, JWT_KEY_FILE};
use crate::server::lock::DataDirLock;

/// refinery's table of applied migrations: its presence says the file is a sandboxctl database.
const HISTORY_TABLE: &str = "refinery_schema_history";
/// How long a backup waits for the server's writers to let go before giving up.
const BUSY_DEADLINE: Duration = Duration::from_secs(30);

/// The key files a backup is useless without.
pub const KEY_FILES: [&str; 2] = [JWT_KEY_FILE, AGENT_SIGNING_KEY_FILE];

/// What a database file holds, as `backup` and `restore` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSummary {
    pub bytes: u64,
    pub tables: usize,
    pub rows: i64,
    /// The newest migration applied to it.
    pub schema_version: i64,
}

impl fmt::Display for DbSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes, {} tables, {} rows, schema version {}",
            self.bytes, self.tables, self.rows, self.schema_version
        )
    }
}

#[derive(Debug)]
pub struct BackupReport {
    pub path: PathBuf,
    pub summary: DbSummary,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub db: PathBuf,
    pub summary: DbSummary,
    /// Where the database that was there before now is (None on an empty data dir).
    pub kept: Option<PathBuf>,
    /// Key files absent from the data dir (the server would make new ones).
    pub missing_keys: Vec<&'static str>,
}

/// Copies the database in `data_dir` to `to` while the server may be running: one backup step over
/// the whole file under a read transaction, so the copy is the database as of one commit and the
/// server's writers (WAL mode) are never blocked. Written to a temp file beside `to` (mode 0600)
/// and moved into place at the end; an existing `to` is replaced only with `force`.
pub fn backup(data_dir: &Path, to: &Path, force: bool) -> anyhow::Result<BackupReport> {
    let db_path = data_dir.join(DB_FILE);
    if !data_dir.is_dir() {
        bail!("--data-dir {} is not a directory", data_dir.display());
    }
    if !db_path.is_file() {
        bail!(
            "no database at {} (is --data-dir the server's data dir?)",
            db_path.display()
        );
    }
    if to.is_dir() {
        bail!("--to {} is a directory; name a file", to.display());
    }
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "--to {}: the directory {} does not exist",
            to.display(),
            parent.display()
        );
    }
    if !force && to.exists() {
        bail!("{} exists; pass --force to replace it", to.display());
    }
    let tmp = temp_beside(to, "backup")?;
    let result = write_backup(&db_path, &tmp).and_then(|summary| {
        if force {
            std::fs::rename(&tmp, to)
                .with_context(|| format!("moving the backup to {}", to.display()))?;
        } else {
            // A hard link fails if `to` appeared meanwhile: never replaced without --force.
            std::fs::hard_link(&tmp, to).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!("{} exists; pass --force to replace it", to.display())
                } else {
                    anyhow::Error::new(e).context(format!("moving the backup to {}", to.display()))
                }
            })?;
            let _ = std::fs::remove_file(&tmp);
        }
        sync_parent(to);
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(BackupReport {
        path: to.to_path_buf(),
        summary: result?,
    })
}

fn write_backup(db_path: &Path, tmp: &Path) -> anyhow::Result<DbSummary> {
    let src = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", db_path.display()))?;
    src.busy_timeout(Duration::from_secs(5))?;
    let mut dst = Connection::open(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    {
        let b = Backup::new(&src, &mut dst).context("starting the backup")?;
        let deadline = Instant::now() + BUSY_DEADLINE;
        loop {
            // -1: every page in one step, so no writer can make it start over.
            match b.step(-1).context("copying the database")? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if Instant::now() > deadline => {
                    bail!("the database stayed busy for {}s", BUSY_DEADLINE.as_secs())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // The copy is a standalone file: no -wal beside it.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    drop(dst);
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    // Read back from disk before it is called done.
    verify(tmp).context("the backup did not verify")
}

/// Checks that `path` is an intact sandboxctl database whose schema this binary can migrate, and
/// says what it holds.
pub fn check(path: &Path) -> anyhow::Result<DbSummary> {
    let summary = verify(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    super::check_schema(&conn, HISTORY_TABLE)
        .with_context(|| format!("{} cannot be used by this sandboxctl", path.display()))?;
    Ok(summary)
}

/// Checks that `path` is a sandboxctl database that passes SQLite's integrity check.
fn verify(path: &Path) -> anyhow::Result<DbSummary> {
    let mut magic = [0u8; 16];
    {
        use std::io::Read;
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if f.read_exact(&mut magic).is_err() || &magic != b"SQLite format 3\0" {
            bail!("{} is not a SQLite database", path.display());
        }
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let has_history: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [HISTORY_TABLE],
        |r| r.get(0),
    )?;
    if !has_history {
        bail!(
            "{} is a SQLite database but not a sandboxctl one (no {HISTORY_TABLE} table)",
            path.display()
        );
    }
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        bail!(
            "{} failed SQLite's integrity check: {integrity}",
            path.display()
        );
    }
    summarize(&conn, path)
}

fn summarize(conn: &Connection, path: &Path) -> anyhow::Result<DbSummary> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut rows = 0i64;
    for t in &tables {
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\"")),
            [],
            |r| r.get(0),
        )?;
        rows += n;
    }
    let schema_version: i64 = conn
        .query_row(
            &format!("SELECT coalesce(max(version), 0) FROM {HISTORY_TABLE}"),
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok(DbSummary {
        bytes,
        tables: tables.len(),
        rows,
        schema_version,
    })
}

/// Puts the backup `from` in place as the database in `data_dir`. Refuses while a server holds
/// the data dir; keeps the database that was there (with its -wal/-shm, so nothing committed is
/// lost) as `<db>.before-restore-<unix seconds>`. The next server start applies newer migrations.
pub fn restore(data_dir: &Path, from: &Path) -> anyhow::Result<RestoreReport> {
    if !data_dir.is_dir() {
        bail!(
            "no data dir at {} (create it and put the key files in it)",
            data_dir.display()
        );
    }
    if !from.is_file() {
        bail!("--from {}: no such file", from.display());
    }
    let _lock = DataDirLock::acquire(data_dir)?;
    let summary = check(from)?;
    let db = data_dir.join(DB_FILE);
    let tmp = temp_beside(&db, "restore")?;
    let copied = (|| -> anyhow::Result<()> {
        let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
        let mut out = OpenOptions::new().write(true).open(&tmp)?;
        std::io::copy(&mut src, &mut out)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        out.sync_all()?;
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let kept = if db.exists() {
        let stamp = super::now();
        let kept = data_dir.join(format!("{DB_FILE}.before-restore-{stamp}"));
        for suffix in ["", "-wal", "-shm"] {
            let old = PathBuf::from(format!("{}{suffix}", db.display()));
            if old.exists() {
                let new = PathBuf::from(format!("{}{suffix}", kept.display()));
                std::fs::rename(&old, &new)
                    .with_context(|| format!("moving {} to {}", old.display(), new.display()))?;
            }
        }
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&tmp, &db)
        .with_context(|| format!("moving {} to {}", tmp.display(), db.display()))?;
    sync_parent(&db);
    let missing_keys = KEY_FILES
        .into_iter()
        .filter(|k| !data_dir.join(k).exists())
        .collect();
    Ok(RestoreReport {
        db,
        summary,
        kept,
        missing_keys,
    })
}

/// A new, empty file (mode 0600) in `path`'s directory, for writing before a rename onto `path`.
fn temp_beside(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{what}-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} ({})\nkeep {} and {} from the same data dir with it: without them, agents \
             no longer trust the server and every user token is invalid",
            self.path.display(),
            self.summary,
            KEY_FILES[0],
            KEY_FILES[1]
        )
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "restored {} ({})", self.db.display(), self.summary)?;
        if let Some(k) = &self.kept {
            write!(f, "\nthe previous database is kept as {}", k.display())?;
        }
        if !self.missing_keys.is_empty() {
            write!(
                f,
                "\nwarning: {} missing from the data dir: copy the backed-up key files there \
                 before starting the server, or it makes new ones (agents must register again, \
                 everyone logs in again)",
                self.missing_keys.join(" and ")
            )?;
        }
        write!(
            f,
            "\nstart the server: it applies any newer migrations on start"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::Db;

    #[test]
    fn backup_then_restore_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        drop(Db::open(&data.join(DB_FILE)).unwrap());
        let out = dir.path().join("b.db");
        let r = backup(&data, &out, false).unwrap();
        assert!(r.summary.schema_version > 0 && r.summary.tables > 10);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp file is left beside it, and it is not replaced without force.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let e = backup(&data, &out, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        backup(&data, &out, true).unwrap();
        assert_eq!(check(&out).unwrap(), r.summary);

        let restored = restore(&data, &out).unwrap();
        assert!(restored.kept.as_ref().unwrap().exists());
        assert_eq!(restored.missing_keys, KEY_FILES.to_vec());
        Db::open(&data.join(DB_FILE)).unwrap();
    }

    #[test]
    fn restore_refuses_a_schema_this_binary_cannot_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let newer = dir.path().join("newer.db");
        drop(Db::open(&newer).unwrap());
        let known = crate::server::db::newest_schema_version();
        Connection::open(&newer)
            .unwrap()
            .execute(
                "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
                 VALUES (?1, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
                [known + 1],
            )
            .unwrap();
        let e = format!("{:#}", restore(&data, &newer).unwrap_err());
        assert!(
            e.contains("newer sandboxctl") && e.contains(&format!("version {}", known + 1)),
            "{e}"
        );
        let foreign = dir.path().join("foreign.db");
        drop(Db::open(&foreign).unwrap());
        Connection::open(&foreign)
            .unwrap()
            .execute(
                "UPDATE refinery_schema_history SET name = 'someone_elses' WHERE version = 1",
                [],
            )
            .unwrap();
        let e = format!("{:#}", restore(&data, &foreign).unwrap_err());
        assert!(
            e.contains("someone_elses") && e.contains("not this sandboxctl's"),
            "{e}"
        );
        assert!(!data.join(DB_FILE).exists(), "nothing was put in place");
    }

    #[test]
    fn bad_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let e = backup(&dir.path().join("nope"), &dir.path().join("b.db"), false).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = backup(&data, &dir.path().join("b.db"), false).unwrap_err();
        assert!(e.to_string().contains("no database at"), "{e}");
        drop(Db::open(&data.join(DB_FILE)).unwrap());
        let e = backup(&data, &dir.path().join("missing/b.db"), false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = backup(&data, dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = restore(&data, &dir.path().join("missing.db")).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let e = restore(&dir.path().join("nope"), &data.join(DB_FILE)).unwrap_err();
        assert!(e.to_string().contains("no data dir"), "{e}");
    }

    #[test]
    fn check_refuses_what_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "hello").unwrap();
        assert!(
            check(&text)
                .unwrap_err()
                .to_string()
                .contains("not a SQLite")
        );
        let other = dir.path().join("o.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(
            check(&other)
                .unwrap_err()
                .to_string()
                .contains("not a sandboxctl")
        );
    }
}
