//! Teams and their members. Soft-deleted teams are invisible everywhere.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DbError, DbResult, audit, now, one};
use crate::ids::new_id;
use crate::proto::vocab::TeamRole;

#[derive(Debug, Clone)]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub is_byoc: bool,
    pub created_at: i64,
}

/// A team as one of its members sees it.
#[derive(Debug, Clone)]
pub struct MyTeamRow {
    pub team: TeamRow,
    pub role: TeamRole,
    pub is_default: bool,
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub user_id: String,
    pub name: String,
    pub email: String,
    pub role: TeamRole,
    pub joined_at: i64,
}

fn team_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TeamRow> {
    Ok(TeamRow {
        id: r.get(0)?,
        name: r.get(1)?,
        slug: r.get(2)?,
        is_byoc: r.get(3)?,
        created_at: r.get(4)?,
    })
}

pub fn slugify(s: &str) -> String {
    let slug: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    if slug.is_empty() {
        "team".to_string()
    } else {
        slug
    }
}

/// Inserts a team with `owner` as its owner (in the caller's transaction).
pub fn insert(conn: &Connection, name: &str, owner: &str, is_default: bool) -> DbResult<TeamRow> {
    let id = new_id("team");
    let t = now();
    let slug = format!("{}-{}", slugify(name), &id[5..11]);
    conn.execute(
        "INSERT INTO teams (id, name, slug, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, slug, t],
    )?;
    conn.execute(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES (?1, ?2, 'owner', ?3, ?4)",
        params![id, owner, is_default, t],
    )?;
    Ok(TeamRow {
        id,
        name: name.to_string(),
        slug,
        is_byoc: false,
        created_at: t,
    })
}

pub fn create(conn: &mut Connection, name: &str, owner: &str) -> DbResult<TeamRow> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let team = insert(&tx, name, owner, false)?;
    audit::record(&tx, Some(owner), "team.create", Some(&team.id), None)?;
    tx.commit()?;
    Ok(team)
}

pub fn mine(conn: &Connection, user_id: &str) -> DbResult<Vec<MyTeamRow>> {
    let mut st = conn.prepare(
        "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, m.role, m.is_default
         FROM memberships m JOIN teams t ON t.id = m.team_id
         WHERE m.user_id = ?1 AND t.deleted_at IS NULL ORDER BY m.created_at, t.id",
    )?;
    let rows = st.query_map([user_id], |r| {
        Ok(MyTeamRow {
            team: team_row(r)?,
            role: r.get(5)?,
            is_default: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get(conn: &Connection, team_id: &str) -> DbResult<TeamRow> {
    one(conn.query_row(
        "SELECT id, name, slug, is_byoc, created_at FROM teams WHERE id = ?1 AND deleted_at IS NULL",
        [team_id],
        team_row,
    ))
}

pub fn members(conn: &Connection, team_id: &str) -> DbResult<Vec<MemberRow>> {
    let mut st = conn.prepare(
        "SELECT u.id, u.name, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.team_id = ?1 ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, m.created_at, u.id",
    )?;
    let rows = st.query_map([team_id], |r| {
        Ok(MemberRow {
            user_id: r.get(0)?,
            name: r.get(1)?,
            email: r.get(2)?,
            role: r.get(3)?,
            joined_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn rename(conn: &Connection, team_id: &str, name: &str, actor: &str) -> DbResult<()> {
    let n = conn.execute(
        "UPDATE teams SET name = ?1 WHERE id = ?2 AND deleted_at IS NULL",
        params![name, team_id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(conn, Some(actor), "team.rename", Some(team_id), Some(name))?;
    Ok(())
}

pub fn soft_delete(conn: &Connection, team_id: &str, actor: &str) -> DbResult<()> {
    let n = conn.execute(
        "UPDATE teams SET deleted_at = ?1 WHERE id = ?2 AND deleted_at IS NULL",
        params![now(), team_id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(conn, Some(actor), "team.delete", Some(team_id), None)?;
    Ok(())
}

fn role_of(conn: &Connection, team_id: &str, user_id: &str) -> DbResult<Option<TeamRole>> {
    Ok(conn
        .query_row(
            "SELECT role FROM memberships WHERE team_id = ?1 AND user_id = ?2",
            params![team_id, user_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// A member who is not the owner (whose role and membership are fixed): 404 or 409 otherwise.
fn check_not_owner(conn: &Connection, team_id: &str, user_id: &str) -> DbResult<()> {
    match role_of(conn, team_id, user_id)? {
        None => Err(DbError::NotFound),
        Some(TeamRole::Owner) => Err(DbError::Conflict("owner_is_fixed")),
        Some(_) => Ok(()),
    }
}

/// Changes a member's role; the owner's role never changes and nobody becomes owner this way.
pub fn set_role(
    conn: &Connection,
    team_id: &str,
    user_id: &str,
    role: TeamRole,
    actor: &str,
) -> DbResult<()> {
    check_not_owner(conn, team_id, user_id)?;
    conn.execute(
        "UPDATE memberships SET role = ?1 WHERE team_id = ?2 AND user_id = ?3",
        params![role, team_id, user_id],
    )?;
    audit::record(
        conn,
        Some(actor),
        "team.member_role",
        Some(team_id),
        Some(&format!("{user_id} to {role}")),
    )?;
    Ok(())
}

/// Removes a member (also used for leaving); the owner cannot be removed.
pub fn remove_member(conn: &Connection, team_id: &str, user_id: &str, actor: &str) -> DbResult<()> {
    check_not_owner(conn, team_id, user_id)?;
    conn.execute(
        "DELETE FROM memberships WHERE team_id = ?1 AND user_id = ?2",
        params![team_id, user_id],
    )?;
    // Their keys for this team go with them (and a key whose creator is not a member never
    // authenticates anyway: see `api_keys::authenticate`).
    super::api_keys::revoke_created_by(conn, team_id, user_id)?;
    audit::record(
        conn,
        Some(actor),
        "team.member_remove",
        Some(team_id),
        Some(user_id),
    )?;
    Ok(())
}

/// Users the caller may find: people who share an active team with them, matched by email prefix or
/// name. At most 20. Nobody can find strangers, not even by their exact address (people join a
/// team through an invite, never by email).
pub fn search_users(
    conn: &Connection,
    caller: &str,
    q: &str,
) -> DbResult<Vec<(String, String, String)>> {
    let clean: String = q
        .chars()
        .filter(|c| !matches!(c, '%' | '_' | '\\'))
        .collect();
    if clean.is_empty() {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare(
        "SELECT u.id, u.name, u.email FROM users u
         WHERE (u.email LIKE ?1 OR u.name LIKE ?2) AND EXISTS (
                SELECT 1 FROM memberships a JOIN memberships b ON a.team_id = b.team_id
                JOIN teams t ON t.id = a.team_id AND t.deleted_at IS NULL
                WHERE a.user_id = ?3 AND b.user_id = u.id)
         ORDER BY u.email LIMIT 20",
    )?;
    let rows = st.query_map(
        params![format!("{clean}%"), format!("%{clean}%"), caller],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}
