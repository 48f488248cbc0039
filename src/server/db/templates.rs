//! Team templates: snapshots of sandboxes and uploaded root filesystems, each living on one host.
//! (Base templates such as `minimal` are not rows: agents report them in their heartbeats.)

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, DbResult, audit, is_unique_violation, now, one};
use crate::proto::vocab::TemplateKind;

#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub kind: TemplateKind,
    pub host_id: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub size_bytes: Option<u64>,
    pub source_sandbox_id: Option<String>,
    pub created_at: i64,
}

const COLS: &str =
    "id, team_id, name, kind, host_id, vcpus, memory_mb, size_bytes, source_sandbox_id, created_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        id: r.get(0)?,
        team_id: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        host_id: r.get(4)?,
        vcpus: r.get(5)?,
        memory_mb: r.get(6)?,
        size_bytes: r.get(7)?,
        source_sandbox_id: r.get(8)?,
        created_at: r.get(9)?,
    })
}

pub fn by_name(conn: &Connection, team_id: &str, name: &str) -> DbResult<Option<TemplateRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLS} FROM templates WHERE team_id = ?1 AND name = ?2"),
            params![team_id, name],
            row,
        )
        .optional()?)
}

pub fn get(conn: &Connection, team_id: &str, id: &str) -> DbResult<TemplateRow> {
    one(conn.query_row(
        &format!("SELECT {COLS} FROM templates WHERE team_id = ?1 AND id = ?2"),
        params![team_id, id],
        row,
    ))
}

pub fn list(conn: &Connection, team_id: &str) -> DbResult<Vec<TemplateRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM templates WHERE team_id = ?1 ORDER BY name"
    ))?;
    let rows = st.query_map([team_id], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts a template, or with `overwrite` replaces the team's template of the same name (keeping
/// its id, so the files on the host are replaced in place).
pub fn upsert(
    conn: &Connection,
    t: &TemplateRow,
    overwrite: bool,
    actor: &str,
) -> DbResult<TemplateRow> {
    let r = conn.execute(
        &format!("INSERT INTO templates ({COLS}, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            t.id,
            t.team_id,
            t.name,
            t.kind,
            t.host_id,
            t.vcpus,
            t.memory_mb,
            t.size_bytes,
            t.source_sandbox_id,
            t.created_at,
            actor
        ],
    );
    match r {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) && overwrite => {
            conn.execute(
                "UPDATE templates SET kind = ?1, host_id = ?2, vcpus = ?3, memory_mb = ?4, size_bytes = ?5,
                    source_sandbox_id = ?6, created_at = ?7, created_by = ?8 WHERE id = ?9",
                params![t.kind, t.host_id, t.vcpus, t.memory_mb, t.size_bytes, t.source_sandbox_id, now(), actor, t.id],
            )?;
        }
        Err(e) if is_unique_violation(&e) => return Err(DbError::Conflict("already_exists")),
        Err(e) => return Err(e.into()),
    }
    audit::record(
        conn,
        Some(actor),
        "template.save",
        Some(&t.id),
        Some(&t.name),
    )?;
    get(conn, &t.team_id, &t.id)
}

pub fn delete(conn: &Connection, team_id: &str, id: &str, actor: &str) -> DbResult<()> {
    let n = conn.execute(
        "DELETE FROM templates WHERE team_id = ?1 AND id = ?2",
        params![team_id, id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(conn, Some(actor), "template.delete", Some(id), None)?;
    Ok(())
}

/// Deletes every template row of a team (its files were removed from their hosts first).
pub fn delete_team(conn: &Connection, team_id: &str, actor: &str) -> DbResult<usize> {
    let mut st = conn.prepare("DELETE FROM templates WHERE team_id = ?1 RETURNING id")?;
    let ids: Vec<String> = st
        .query_map([team_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        audit::record(conn, Some(actor), "template.delete", Some(id), None)?;
    }
    Ok(ids.len())
}
