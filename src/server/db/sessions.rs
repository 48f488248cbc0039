//! Sign-in sessions: every user token names one, and a token works only while its session is
//! live (not ended, not expired). Logging out, ending a session from the list and changing the
//! password end sessions here.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DbError, DbResult, audit, now};
use crate::ids::SessionId;

/// How often `last_seen_at` is written at most (a read-mostly check stays a read).
const TOUCH_EVERY_SECS: i64 = 60;
/// Ended and expired sessions are kept this long for the list and the audit, then removed.
const KEEP_ENDED_SECS: i64 = 30 * 86400;

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub method: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

const COLS: &str = "id, user_id, created_at, last_seen_at, expires_at, method, user_agent, ip";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        created_at: r.get(2)?,
        last_seen_at: r.get(3)?,
        expires_at: r.get(4)?,
        method: r.get(5)?,
        user_agent: r.get(6)?,
        ip: r.get(7)?,
    })
}

/// What a new session records about the client that started it.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub method: &'static str,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub ttl_secs: i64,
}

/// Starts a session for `user_id` (and drops long-dead ones of the same user).
pub fn create(conn: &Connection, user_id: &str, new: &NewSession) -> DbResult<SessionRow> {
    let t = now();
    conn.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND coalesce(ended_at, expires_at) < ?2
           AND id NOT IN (SELECT session_id FROM tickets WHERE session_id IS NOT NULL)",
        params![user_id, t - KEEP_ENDED_SECS],
    )?;
    let row = SessionRow {
        id: SessionId::generate().into_string(),
        user_id: user_id.to_string(),
        created_at: t,
        last_seen_at: t,
        expires_at: t + new.ttl_secs,
        method: new.method.to_string(),
        user_agent: new.user_agent.clone(),
        ip: new.ip.clone(),
    };
    conn.execute(
        &format!("INSERT INTO sessions ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            row.id,
            row.user_id,
            row.created_at,
            row.last_seen_at,
            row.expires_at,
            row.method,
            row.user_agent,
            row.ip
        ],
    )?;
    Ok(row)
}

/// The session `id` of `user_id` when it is live; notes that it was seen (at most once a
/// minute, so the check on every request stays one indexed read).
pub fn live(conn: &Connection, id: &str, user_id: &str) -> DbResult<Option<SessionRow>> {
    let t = now();
    let row = conn
        .query_row(
            &format!(
                "SELECT {COLS} FROM sessions
                 WHERE id = ?1 AND user_id = ?2 AND ended_at IS NULL AND expires_at > ?3"
            ),
            params![id, user_id, t],
            session_row,
        )
        .optional()?;
    if let Some(r) = &row
        && r.last_seen_at + TOUCH_EVERY_SECS <= t
    {
        conn.execute(
            "UPDATE sessions SET last_seen_at = ?1 WHERE id = ?2",
            params![t, id],
        )?;
    }
    Ok(row)
}

/// The user's live sessions, the most recently seen first.
pub fn list(conn: &Connection, user_id: &str) -> DbResult<Vec<SessionRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM sessions WHERE user_id = ?1 AND ended_at IS NULL AND expires_at > ?2
         ORDER BY last_seen_at DESC, created_at DESC, id"
    ))?;
    let rows = st.query_map(params![user_id, now()], session_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ends one live session of `user_id`; `NotFound` when there is none by that id.
pub fn end(conn: &Connection, user_id: &str, id: &str, why: &str) -> DbResult<()> {
    let n = conn.execute(
        "UPDATE sessions SET ended_at = ?1
         WHERE id = ?2 AND user_id = ?3 AND ended_at IS NULL AND expires_at > ?1",
        params![now(), id, user_id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(conn, Some(user_id), why, Some(id), None)?;
    Ok(())
}

/// Ends every live session of `user_id` except `keep`; returns how many ended.
pub fn end_others(conn: &Connection, user_id: &str, keep: &str) -> DbResult<usize> {
    Ok(conn.execute(
        "UPDATE sessions SET ended_at = ?1 WHERE user_id = ?2 AND id != ?3 AND ended_at IS NULL",
        params![now(), user_id, keep],
    )?)
}

/// Sets the user's password and ends their other sessions (all but `keep`), in one transaction.
pub fn change_password(
    conn: &mut Connection,
    user_id: &str,
    password_hash: &str,
    keep_session: &str,
) -> DbResult<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE id = ?3",
        params![password_hash, now(), user_id],
    )?;
    let ended = end_others(&tx, user_id, keep_session)?;
    audit::record(
        &tx,
        Some(user_id),
        "user.password_change",
        Some(user_id),
        None,
    )?;
    tx.commit()?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::{Db, users};

    #[tokio::test]
    async fn sessions_live_end_and_expire() {
        let db = Db::open_in_memory().unwrap();
        db.call(|c| {
            let (u, _) = users::create_with_team(c, "a@x.io", "Ann", Some("h"), false)?;
            let new = NewSession {
                method: "password",
                ttl_secs: 3600,
                ..Default::default()
            };
            let a = create(c, &u.id, &new)?;
            let b = create(c, &u.id, &new)?;
            assert!(live(c, &a.id, &u.id)?.is_some());
            assert!(live(c, &a.id, "usr_other")?.is_none(), "another user's id");
            assert_eq!(list(c, &u.id)?.len(), 2);
            end(c, &u.id, &a.id, "session.logout")?;
            assert!(live(c, &a.id, &u.id)?.is_none());
            assert!(matches!(
                end(c, &u.id, &a.id, "session.logout"),
                Err(DbError::NotFound)
            ));
            let c2 = create(c, &u.id, &new)?;
            assert_eq!(end_others(c, &u.id, &c2.id)?, 1);
            assert!(live(c, &b.id, &u.id)?.is_none());
            assert!(live(c, &c2.id, &u.id)?.is_some());
            c.execute("UPDATE sessions SET expires_at = 0 WHERE id = ?1", [&c2.id])?;
            assert!(live(c, &c2.id, &u.id)?.is_none(), "expired");
            assert!(list(c, &u.id)?.is_empty());
            Ok(())
        })
        .await
        .unwrap();
    }
}
