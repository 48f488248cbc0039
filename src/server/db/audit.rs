//! The audit trail: who did what to which target, and when.

use rusqlite::{Connection, params};

use super::{DbResult, now};

pub fn record(
    conn: &Connection,
    actor: Option<&str>,
    action: &str,
    target: Option<&str>,
    detail: Option<&str>,
) -> DbResult<()> {
    conn.execute(
        "INSERT INTO audit_events (actor, action, target, detail, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![actor, action, target, detail, now()],
    )?;
    Ok(())
}
