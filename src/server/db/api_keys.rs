//! Team API keys: stored as SHA-256 hashes, shown once.

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, DbResult, audit, now};

#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub prefix: String,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        team_id: r.get(1)?,
        name: r.get(2)?,
        prefix: r.get(3)?,
        created_by: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
    })
}

const COLS: &str = "id, team_id, name, prefix, created_by, created_at, last_used_at";

pub fn create(
    conn: &Connection,
    id: &str,
    team_id: &str,
    name: &str,
    prefix: &str,
    key_hash: &str,
    created_by: &str,
) -> DbResult<ApiKeyRow> {
    let t = now();
    conn.execute(
        "INSERT INTO api_keys (id, team_id, name, prefix, key_hash, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, team_id, name, prefix, key_hash, created_by, t],
    )?;
    audit::record(conn, Some(created_by), "api_key.create", Some(id), None)?;
    Ok(ApiKeyRow {
        id: id.into(),
        team_id: team_id.into(),
        name: name.into(),
        prefix: prefix.into(),
        created_by: created_by.into(),
        created_at: t,
        last_used_at: None,
    })
}

/// The team's live keys; with `created_by`, only that member's.
pub fn list(
    conn: &Connection,
    team_id: &str,
    created_by: Option<&str>,
) -> DbResult<Vec<ApiKeyRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM api_keys WHERE team_id = ?1 AND revoked_at IS NULL
           AND (?2 IS NULL OR created_by = ?2)
         ORDER BY created_at, id"
    ))?;
    let rows = st.query_map(params![team_id, created_by], key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A live key of the team, or `NotFound`.
pub fn get(conn: &Connection, team_id: &str, id: &str) -> DbResult<ApiKeyRow> {
    super::one(conn.query_row(
        &format!(
            "SELECT {COLS} FROM api_keys WHERE id = ?1 AND team_id = ?2 AND revoked_at IS NULL"
        ),
        params![id, team_id],
        key_row,
    ))
}

pub fn revoke(conn: &Connection, team_id: &str, id: &str, actor: &str) -> DbResult<()> {
    let n = conn.execute(
        "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND team_id = ?3 AND revoked_at IS NULL",
        params![now(), id, team_id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(conn, Some(actor), "api_key.revoke", Some(id), None)?;
    Ok(())
}

/// Revokes every live key `user_id` made for the team (they left it or were removed).
pub fn revoke_created_by(conn: &Connection, team_id: &str, user_id: &str) -> DbResult<usize> {
    Ok(conn.execute(
        "UPDATE api_keys SET revoked_at = ?1 WHERE team_id = ?2 AND created_by = ?3 AND revoked_at IS NULL",
        params![now(), team_id, user_id],
    )?)
}

/// How stale `last_used_at` may be: a key used many times a second stamps it once a minute, so
/// authenticating stays a read.
pub const LAST_USED_GRANULARITY_SECS: i64 = 60;

/// Looks a presented key up by its hash (unrevoked, team active, its creator still a member).
pub fn find(conn: &Connection, key_hash: &str) -> DbResult<Option<ApiKeyRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT k.id, k.team_id, k.name, k.prefix, k.created_by, k.created_at, k.last_used_at
             FROM api_keys k JOIN teams t ON t.id = k.team_id
               JOIN memberships m ON m.team_id = k.team_id AND m.user_id = k.created_by
             WHERE k.key_hash = ?1 AND k.revoked_at IS NULL AND t.deleted_at IS NULL",
        )?
        .query_row([key_hash], key_row)
        .optional()?)
}

/// Whether a key found with `last_used_at` needs a new stamp at `at`.
pub fn needs_stamp(last_used_at: Option<i64>, at: i64) -> bool {
    last_used_at.is_none_or(|t| at - t >= LAST_USED_GRANULARITY_SECS)
}

/// Stamps `last_used_at` unless another request did within the granularity.
pub fn stamp_used(conn: &Connection, id: &str) -> DbResult<()> {
    let t = now();
    conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = ?1
         WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at <= ?1 - ?3)",
    )?
    .execute(params![t, id, LAST_USED_GRANULARITY_SECS])?;
    Ok(())
}

/// [`find`] on a read connection, then [`stamp_used`] on the writer only when the stamp is
/// older than [`LAST_USED_GRANULARITY_SECS`].
pub async fn authenticate(db: &super::Db, key_hash: String) -> DbResult<Option<ApiKeyRow>> {
    let row = db.read(move |c| find(c, &key_hash)).await?;
    if let Some(r) = &row
        && needs_stamp(r.last_used_at, now())
    {
        let id = r.id.clone();
        db.call(move |c| stamp_used(c, &id)).await?;
    }
    Ok(row)
}
