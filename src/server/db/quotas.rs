//! Team quota overrides and what a team holds against its quota.

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbResult, audit, now};
use crate::proto::quota::{QuotaUsage, TeamQuota};

/// The team's overrides (all `None` when it has none).
pub fn overrides(conn: &Connection, team_id: &str) -> DbResult<TeamQuota> {
    Ok(conn
        .query_row(
            "SELECT sandboxes, vcpus, memory_mb FROM team_quotas WHERE team_id = ?1",
            [team_id],
            |r| {
                Ok(TeamQuota {
                    sandboxes: r.get(0)?,
                    vcpus: r.get(1)?,
                    memory_mb: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Replaces the team's overrides (a quota of all `None` removes them).
pub fn set_overrides(conn: &Connection, team_id: &str, q: &TeamQuota, actor: &str) -> DbResult<()> {
    if *q == TeamQuota::default() {
        conn.execute("DELETE FROM team_quotas WHERE team_id = ?1", [team_id])?;
    } else {
        conn.execute(
            "INSERT INTO team_quotas (team_id, sandboxes, vcpus, memory_mb, updated_by, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (team_id) DO UPDATE SET sandboxes = ?2, vcpus = ?3, memory_mb = ?4,
                updated_by = ?5, updated_at = ?6",
            params![team_id, q.sandboxes, q.vcpus, q.memory_mb, actor, now()],
        )?;
    }
    audit::record(conn, Some(actor), "team.quota", Some(team_id), None)?;
    Ok(())
}

/// What the team's sandboxes hold: those starting, running or missing (a paused sandbox's
/// memory is on disk, an ended one holds nothing). The same statuses count against a host's
/// capacity ([`super::sandboxes::load_by_host`]).
pub fn usage(conn: &Connection, team_id: &str) -> DbResult<QuotaUsage> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(vcpus), 0), coalesce(sum(memory_mb), 0) FROM sandboxes
         WHERE team_id = ?1 AND status IN ('pending', 'starting', 'running', 'missing')",
        [team_id],
        |r| {
            Ok(QuotaUsage {
                sandboxes: r.get(0)?,
                vcpus: r.get(1)?,
                memory_mb: r.get(2)?,
            })
        },
    )?)
}
