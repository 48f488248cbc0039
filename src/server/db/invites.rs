//! Team invites: one-time links that add the person who accepts them to a team (SPEC §15). Only
//! the token's SHA-256 is stored. An invite is pending until it is used, revoked or expires; a
//! refused one names why (`invite_invalid`, `invite_expired`, `invite_used`, `invite_revoked`).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DbError, DbResult, audit, is_unique_violation, now};
use crate::ids::new_id;
use crate::proto::vocab::TeamRole;

#[derive(Debug, Clone)]
pub struct InviteRow {
    pub id: String,
    pub team_id: String,
    pub role: TeamRole,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const COLS: &str = "id, team_id, role, created_by, created_at, expires_at, used_at, revoked_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InviteRow> {
    Ok(InviteRow {
        id: r.get(0)?,
        team_id: r.get(1)?,
        role: r.get(2)?,
        created_by: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        used_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

/// Records an invite to `team_id` with `role` (admin or member), valid for `ttl_secs`.
pub fn create(
    conn: &Connection,
    team_id: &str,
    role: TeamRole,
    created_by: &str,
    token_hash: &str,
    ttl_secs: i64,
) -> DbResult<InviteRow> {
    let id = new_id("inv");
    let t = now();
    conn.execute(
        "INSERT INTO team_invites (id, team_id, token_hash, role, created_by, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, team_id, token_hash, role, created_by, t, t + ttl_secs],
    )?;
    audit::record(
        conn,
        Some(created_by),
        "team.invite_create",
        Some(team_id),
        Some(&format!("{id} as {role}")),
    )?;
    Ok(InviteRow {
        id,
        team_id: team_id.to_string(),
        role,
        created_by: created_by.to_string(),
        created_at: t,
        expires_at: t + ttl_secs,
        used_at: None,
        revoked_at: None,
    })
}

/// The team's invites that can still be accepted, newest first.
pub fn pending(conn: &Connection, team_id: &str) -> DbResult<Vec<InviteRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM team_invites
         WHERE team_id = ?1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?2
         ORDER BY created_at DESC, id"
    ))?;
    let rows = st.query_map(params![team_id, now()], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes an unused invite of the team; a used one is `Conflict("invite_used")`, an unknown or
/// already revoked one `NotFound`.
pub fn revoke(conn: &Connection, team_id: &str, invite_id: &str, actor: &str) -> DbResult<()> {
    let found = conn
        .query_row(
            &format!("SELECT {COLS} FROM team_invites WHERE id = ?1 AND team_id = ?2"),
            params![invite_id, team_id],
            row,
        )
        .optional()?;
    match found {
        None => return Err(DbError::NotFound),
        Some(i) if i.revoked_at.is_some() => return Err(DbError::NotFound),
        Some(i) if i.used_at.is_some() => return Err(DbError::Conflict("invite_used")),
        Some(_) => {}
    }
    conn.execute(
        "UPDATE team_invites SET revoked_at = ?1 WHERE id = ?2",
        params![now(), invite_id],
    )?;
    audit::record(
        conn,
        Some(actor),
        "team.invite_revoke",
        Some(team_id),
        Some(invite_id),
    )?;
    Ok(())
}

/// The pending invite behind a token (inside the caller's transaction), or the reason it cannot be
/// used. An invite to a team that was deleted is invalid.
pub(crate) fn usable(conn: &Connection, token_hash: &str) -> DbResult<InviteRow> {
    let found = conn
        .query_row(
            &format!(
                "SELECT {COLS} FROM team_invites
                 WHERE token_hash = ?1 AND team_id IN (SELECT id FROM teams WHERE deleted_at IS NULL)"
            ),
            [token_hash],
            row,
        )
        .optional()?;
    match found {
        None => Err(DbError::Conflict("invite_invalid")),
        Some(i) if i.revoked_at.is_some() => Err(DbError::Conflict("invite_revoked")),
        Some(i) if i.used_at.is_some() => Err(DbError::Conflict("invite_used")),
        Some(i) if i.expires_at <= now() => Err(DbError::Conflict("invite_expired")),
        Some(i) => Ok(i),
    }
}

/// Adds `user_id` to the invite's team with its role and marks the invite used by them (inside
/// the caller's transaction). `is_default` makes it the team a login lands in.
pub(crate) fn redeem(
    conn: &Connection,
    invite: &InviteRow,
    user_id: &str,
    is_default: bool,
) -> DbResult<()> {
    let added = conn.execute(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![invite.team_id, user_id, invite.role, is_default, now()],
    );
    match added {
        Err(e) if is_unique_violation(&e) => return Err(DbError::Conflict("already_member")),
        r => {
            r?;
        }
    }
    let n = conn.execute(
        "UPDATE team_invites SET used_by = ?1, used_at = ?2 WHERE id = ?3 AND used_at IS NULL AND revoked_at IS NULL",
        params![user_id, now(), invite.id],
    )?;
    if n != 1 {
        return Err(DbError::Conflict("invite_used"));
    }
    audit::record(
        conn,
        Some(user_id),
        "team.invite_accept",
        Some(&invite.team_id),
        Some(&format!("{} as {}", invite.id, invite.role)),
    )?;
    Ok(())
}

/// An existing user accepts an invite: joins its team with its role, in one transaction. Already
/// a member: `Conflict("already_member")` and the invite stays unused.
pub fn accept(conn: &mut Connection, token_hash: &str, user_id: &str) -> DbResult<InviteRow> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let invite = usable(&tx, token_hash)?;
    redeem(&tx, &invite, user_id, false)?;
    tx.commit()?;
    Ok(invite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::Db;

    /// A user with a personal team (SQL of its own: `users` builds on this module).
    fn user(c: &Connection, id: &str) -> DbResult<(String, String)> {
        c.execute(
            "INSERT INTO users (id, email, name, is_admin, created_at, updated_at) VALUES (?1, ?1 || '@x.io', ?1, 0, 0, 0)",
            [id],
        )?;
        let team = super::super::teams::insert(c, id, id, true)?;
        Ok((id.to_string(), team.id))
    }

    fn role(c: &Connection, team: &str, user: &str) -> DbResult<Option<TeamRole>> {
        Ok(c.query_row(
            "SELECT role FROM memberships WHERE team_id = ?1 AND user_id = ?2",
            params![team, user],
            |r| r.get(0),
        )
        .optional()?)
    }

    #[tokio::test]
    async fn an_invite_is_used_once_and_refusals_name_why() {
        let db = Db::open_in_memory().unwrap();
        let out = db
            .call(|c| {
                let (owner, team) = user(c, "olive")?;
                let (bob, _) = user(c, "bob")?;
                let (cy, _) = user(c, "cy")?;
                let inv = create(c, &team, TeamRole::Admin, &owner, "hash1", 60)?;
                assert_eq!(pending(c, &team)?.len(), 1);
                let accepted = accept(c, "hash1", &bob)?;
                assert_eq!(accepted.id, inv.id);
                assert_eq!(role(c, &team, &bob)?, Some(TeamRole::Admin));
                assert!(pending(c, &team)?.is_empty());
                let again = accept(c, "hash1", &cy);
                assert!(matches!(again, Err(DbError::Conflict("invite_used"))));
                let unknown = accept(c, "nope", &cy);
                assert!(matches!(unknown, Err(DbError::Conflict("invite_invalid"))));
                // Already a member: refused, and the invite can still be used by someone else.
                create(c, &team, TeamRole::Member, &owner, "hash2", 60)?;
                let dup = accept(c, "hash2", &bob);
                assert!(matches!(dup, Err(DbError::Conflict("already_member"))));
                let i3 = create(c, &team, TeamRole::Member, &owner, "hash3", 60)?;
                revoke(c, &team, &i3.id, &owner)?;
                let revoked = accept(c, "hash3", &cy);
                assert!(matches!(revoked, Err(DbError::Conflict("invite_revoked"))));
                accept(c, "hash2", &cy)?;
                Ok(())
            })
            .await;
        out.unwrap();
    }
}
