//! Hosts, their registration tokens and refresh tokens.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DbError, DbResult, audit, now, one};
use crate::ids::new_id;
use crate::proto::agent::{HeartbeatRequest, HostFacts};
use crate::server::state::HostStatus;

pub const REGISTRATION_TTL_SECS: i64 = 3600;
pub const REFRESH_TTL_SECS: i64 = 60 * 86400;

#[derive(Debug, Clone)]
pub struct HostRow {
    pub id: String,
    pub host_type: String,
    pub team_id: Option<String>,
    pub name: Option<String>,
    pub provider: Option<String>,
    pub zone: Option<String>,
    pub arch: Option<String>,
    pub cpu_cores: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub address: Option<String>,
    pub accel: Option<String>,
    pub accel_reason: Option<String>,
    pub cgroups: Option<String>,
    pub status: HostStatus,
    pub last_heartbeat_at: Option<i64>,
    pub running_vms: Option<u32>,
    pub used_memory_mb: Option<u64>,
    pub used_vcpus: Option<u32>,
    pub created_at: i64,
    pub tags: Vec<String>,
    /// Base templates ready on the host (as of its last heartbeat).
    pub templates: Vec<String>,
}

const COLS: &str = "id, type, team_id, name, provider, zone, arch, cpu_cores, memory_mb, disk_gb, address,
    accel, accel_reason, status, last_heartbeat_at, running_vms, used_memory_mb, used_vcpus, created_at,
    (SELECT group_concat(tag, char(10)) FROM (SELECT tag FROM host_tags WHERE host_id = hosts.id ORDER BY tag)),
    templates, cgroups";

fn host_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRow> {
    Ok(HostRow {
        id: r.get(0)?,
        host_type: r.get(1)?,
        team_id: r.get(2)?,
        name: r.get(3)?,
        provider: r.get(4)?,
        zone: r.get(5)?,
        arch: r.get(6)?,
        cpu_cores: r.get(7)?,
        memory_mb: r.get(8)?,
        disk_gb: r.get(9)?,
        address: r.get(10)?,
        accel: r.get(11)?,
        accel_reason: r.get(12)?,
        cgroups: r.get::<_, Option<String>>(21)?.filter(|c| !c.is_empty()),
        status: r.get(13)?,
        last_heartbeat_at: r.get(14)?,
        running_vms: r.get(15)?,
        used_memory_mb: r.get(16)?,
        used_vcpus: r.get(17)?,
        created_at: r.get(18)?,
        tags: r
            .get::<_, Option<String>>(19)?
            .map(|t| {
                t.split('\n')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        templates: serde_json::from_str(&r.get::<_, String>(20)?).unwrap_or_default(),
    })
}

pub struct NewHost<'a> {
    pub host_type: &'a str,
    pub team_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub created_by: Option<&'a str>,
}

/// Creates a pending host and its first registration token (only the hash is stored).
pub fn create(
    conn: &mut Connection,
    h: &NewHost<'_>,
    token_hash: &str,
) -> DbResult<(HostRow, i64)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let id = new_id("host");
    let t = now();
    tx.execute(
        "INSERT INTO hosts (id, type, team_id, name, provider, zone, status, created_by, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?9, ?7, ?8, ?8)",
        params![
            id,
            h.host_type,
            h.team_id,
            h.name,
            h.provider,
            h.zone,
            h.created_by,
            t,
            HostStatus::Pending
        ],
    )?;
    let expires = insert_registration_token(&tx, &id, token_hash, h.created_by)?;
    audit::record(&tx, h.created_by, "host.create", Some(&id), None)?;
    let row = get(&tx, &id)?;
    tx.commit()?;
    Ok((row, expires))
}

fn insert_registration_token(
    conn: &Connection,
    host_id: &str,
    token_hash: &str,
    created_by: Option<&str>,
) -> DbResult<i64> {
    let t = now();
    let expires = t + REGISTRATION_TTL_SECS;
    conn.execute(
        "INSERT INTO host_registration_tokens (id, host_id, token_hash, expires_at, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new_id("hrt"), host_id, token_hash, expires, created_by, t],
    )?;
    Ok(expires)
}

/// A fresh registration token for a host that is still pending; earlier unused ones stop working.
pub fn new_registration_token(
    conn: &mut Connection,
    host_id: &str,
    token_hash: &str,
    actor: Option<&str>,
) -> DbResult<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let status: HostStatus = one(tx.query_row(
        "SELECT status FROM hosts WHERE id = ?1",
        [host_id],
        |r| r.get(0),
    ))?;
    if status != HostStatus::Pending && has_live_credentials(&tx, host_id)? {
        return Err(DbError::Conflict("host_already_registered"));
    }
    tx.execute(
        "UPDATE host_registration_tokens SET expires_at = min(expires_at, ?1) WHERE host_id = ?2 AND used_at IS NULL",
        params![now() - 1, host_id],
    )?;
    let expires = insert_registration_token(&tx, host_id, token_hash, actor)?;
    audit::record(&tx, actor, "host.token", Some(host_id), None)?;
    tx.commit()?;
    Ok(expires)
}

/// Consumes a registration token (exactly once, before it expires), stores the host's facts,
/// marks it online and issues the first refresh token. Returns the host id.
/// The type (`regular`/`byoc`) of the host a still-usable registration token is for.
pub fn registering_type(conn: &Connection, token_hash: &str) -> DbResult<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT h.type FROM host_registration_tokens t JOIN hosts h ON h.id = t.host_id
             WHERE t.token_hash = ?1 AND t.used_at IS NULL AND t.expires_at > ?2",
            params![token_hash, now()],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn register(
    conn: &mut Connection,
    token_hash: &str,
    facts: &HostFacts,
    refresh_hash: &str,
) -> DbResult<(String, i64)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = now();
    let host_id: Option<String> = tx
        .query_row(
            "UPDATE host_registration_tokens SET used_at = ?1
             WHERE token_hash = ?2 AND used_at IS NULL AND expires_at > ?1
             RETURNING host_id",
            params![t, token_hash],
            |r| r.get(0),
        )
        .optional()?;
    let Some(host_id) = host_id else {
        return Err(DbError::NotFound);
    };
    let n = tx.execute(
        "UPDATE hosts SET arch = ?1, cpu_cores = ?2, memory_mb = ?3, disk_gb = ?4, address = ?5,
             accel = ?6, accel_reason = ?7, status = ?11, last_heartbeat_at = ?8, updated_at = ?8,
             cgroups = ?10
         WHERE id = ?9 AND (status = ?12 OR NOT EXISTS
             (SELECT 1 FROM host_refresh_tokens WHERE host_id = ?9 AND revoked_at IS NULL))",
        params![
            facts.arch,
            facts.cpu_cores,
            facts.memory_mb,
            facts.disk_gb,
            facts.address,
            facts.accel.as_str(),
            facts.accel_reason,
            t,
            host_id,
            facts.cgroups,
            HostStatus::Online,
            HostStatus::Pending
        ],
    )?;
    if n == 0 {
        return Err(DbError::Conflict("host_already_registered"));
    }
    insert_refresh_token(&tx, &host_id, &new_id("fam"), None, refresh_hash)?;
    audit::record(&tx, Some(&host_id), "host.register", Some(&host_id), None)?;
    let generation = token_generation(&tx, &host_id)?.ok_or(DbError::NotFound)?;
    tx.commit()?;
    Ok((host_id, generation))
}

fn insert_refresh_token(
    conn: &Connection,
    host_id: &str,
    family_id: &str,
    parent_id: Option<&str>,
    token_hash: &str,
) -> DbResult<String> {
    let id = new_id("hrf");
    let t = now();
    conn.execute(
        "INSERT INTO host_refresh_tokens (id, host_id, family_id, parent_id, token_hash, expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, host_id, family_id, parent_id, token_hash, t + REFRESH_TTL_SECS, t],
    )?;
    Ok(id)
}

/// True while the host holds a refresh token that is not revoked.
pub fn has_live_credentials(conn: &Connection, host_id: &str) -> DbResult<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM host_refresh_tokens WHERE host_id = ?1 AND revoked_at IS NULL LIMIT 1",
            [host_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The generation host JWTs must carry to be accepted, or None for a deleted host.
pub fn token_generation(conn: &Connection, host_id: &str) -> DbResult<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT token_generation FROM hosts WHERE id = ?1",
            [host_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Outcome of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new refresh token was issued for this host.
    Rotated { host_id: String, generation: i64 },
    /// The token was already retired: the whole family is now revoked.
    Reuse { host_id: String },
    /// Unknown, expired or revoked.
    Invalid,
}

/// Rotates a refresh token: the successor is issued in the same transaction that marks the
/// presented token superseded. A superseded token stays usable until its successor is first
/// presented (so an agent that crashed before saving the successor is not locked out); after that
/// it is retired, and presenting it is reuse.
pub fn rotate_refresh(
    conn: &mut Connection,
    presented_hash: &str,
    new_hash: &str,
) -> DbResult<RefreshOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = now();
    let row: Option<(String, String, String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT id, host_id, family_id, expires_at, revoked_at
             FROM host_refresh_tokens WHERE token_hash = ?1",
            [presented_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((id, host_id, family, expires_at, revoked_at)) = row else {
        return Ok(RefreshOutcome::Invalid);
    };
    if revoked_at.is_some() || expires_at <= t {
        return Ok(RefreshOutcome::Invalid);
    }
    // A token whose successor has been used (and so superseded in turn) is retired: presenting it
    // again is reuse, and the whole family goes.
    let retired: bool = tx
        .query_row(
            "SELECT 1 FROM host_refresh_tokens WHERE parent_id = ?1 AND superseded_at IS NOT NULL",
            [&id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if retired {
        tx.execute(
            "UPDATE host_refresh_tokens SET revoked_at = ?1 WHERE family_id = ?2 AND revoked_at IS NULL",
            params![t, family],
        )?;
        // Every host JWT issued so far stops working: the host must register again.
        tx.execute(
            "UPDATE hosts SET token_generation = token_generation + 1, updated_at = ?1 WHERE id = ?2",
            params![t, host_id],
        )?;
        audit::record(
            &tx,
            Some(&host_id),
            "host.refresh_reuse",
            Some(&host_id),
            Some(&family),
        )?;
        tx.commit()?;
        return Ok(RefreshOutcome::Reuse { host_id });
    }
    // Still usable: either current, or superseded but its successor never used (crash mid-rotation).
    // Any unused successors issued earlier are dropped so only one chain continues.
    tx.execute(
        "UPDATE host_refresh_tokens SET revoked_at = ?1 WHERE parent_id = ?2 AND revoked_at IS NULL",
        params![t, id],
    )?;
    insert_refresh_token(&tx, &host_id, &family, Some(&id), new_hash)?;
    tx.execute(
        "UPDATE host_refresh_tokens SET superseded_at = coalesce(superseded_at, ?1) WHERE id = ?2",
        params![t, id],
    )?;
    audit::record(&tx, Some(&host_id), "host.refresh", Some(&host_id), None)?;
    let generation = token_generation(&tx, &host_id)?.ok_or(DbError::NotFound)?;
    tx.commit()?;
    Ok(RefreshOutcome::Rotated {
        host_id,
        generation,
    })
}

/// Records a heartbeat; an unreachable host comes back online (or draining, if it was drained).
/// Returns the host's status.
pub fn heartbeat(conn: &Connection, host_id: &str, hb: &HeartbeatRequest) -> DbResult<HostStatus> {
    let t = now();
    let status: Option<HostStatus> = conn
        .query_row(
            "UPDATE hosts SET last_heartbeat_at = ?1, updated_at = ?1, address = ?2, cpu_cores = ?3,
                memory_mb = ?4, disk_gb = ?5, accel = ?6, accel_reason = ?7, running_vms = ?8,
                used_memory_mb = ?9, used_vcpus = ?10, templates = ?12, cgroups = ?13,
                status = CASE WHEN status = ?14 THEN (CASE WHEN drain = 1 THEN ?17 ELSE ?15 END)
                    ELSE status END
             WHERE id = ?11 AND status != ?16
             RETURNING status",
            params![
                t,
                hb.facts.address,
                hb.facts.cpu_cores,
                hb.facts.memory_mb,
                hb.facts.disk_gb,
                hb.facts.accel.as_str(),
                hb.facts.accel_reason,
                hb.running_vms,
                hb.used_memory_mb,
                hb.used_vcpus,
                host_id,
                serde_json::to_string(&hb.templates).unwrap_or_else(|_| "[]".into()),
                hb.facts.cgroups,
                HostStatus::Unreachable,
                HostStatus::Online,
                HostStatus::Pending,
                HostStatus::Draining
            ],
            |r| r.get(0),
        )
        .optional()?;
    status.ok_or(DbError::NotFound)
}

pub fn get(conn: &Connection, id: &str) -> DbResult<HostRow> {
    one(conn.query_row(
        &format!("SELECT {COLS} FROM hosts WHERE id = ?1"),
        [id],
        host_row,
    ))
}

/// Every host for platform admins; otherwise the BYOC hosts of the given teams.
pub fn list(conn: &Connection, all: bool, team_ids: &[String]) -> DbResult<Vec<HostRow>> {
    let mut st = conn.prepare(&format!("SELECT {COLS} FROM hosts ORDER BY created_at, id"))?;
    let rows = st.query_map([], host_row)?;
    let mut out = Vec::new();
    for r in rows {
        let r = r?;
        if all || r.team_id.as_ref().is_some_and(|t| team_ids.contains(t)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// How many hosts are in each status (statuses with none are absent), for `/metrics`.
pub fn count_by_status(conn: &Connection) -> DbResult<Vec<(HostStatus, u64)>> {
    let mut st = conn.prepare("SELECT status, count(*) FROM hosts GROUP BY status")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Hosts that may take new sandboxes: online with an address.
pub fn schedulable(conn: &Connection) -> DbResult<Vec<HostRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM hosts WHERE status = 'online' AND address IS NOT NULL ORDER BY id"
    ))?;
    let rows = st.query_map([], host_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Hosts the monitor reconciles: online or draining, with an address.
pub fn schedulable_or_draining(conn: &mut Connection) -> DbResult<Vec<HostRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM hosts WHERE status IN ('online', 'draining') AND address IS NOT NULL ORDER BY id"
    ))?;
    let rows = st.query_map([], host_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replaces the host's tags.
pub fn set_tags(
    conn: &mut Connection,
    host_id: &str,
    tags: &[String],
    actor: &str,
) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM host_tags WHERE host_id = ?1", [host_id])?;
    for t in tags {
        tx.execute(
            "INSERT OR IGNORE INTO host_tags (host_id, tag) VALUES (?1, ?2)",
            params![host_id, t],
        )?;
    }
    audit::record(
        &tx,
        Some(actor),
        "host.tags",
        Some(host_id),
        Some(&tags.join(",")),
    )?;
    tx.commit()?;
    Ok(())
}

/// Moves an online host to draining: it keeps its sandboxes and takes no new ones.
/// With `draining`, moves an online host to draining (it keeps its sandboxes and takes no new
/// ones); without, puts a draining host back online.
pub fn set_draining(conn: &Connection, host_id: &str, draining: bool, actor: &str) -> DbResult<()> {
    let (from, to, action) = if draining {
        (HostStatus::Online, HostStatus::Draining, "host.drain")
    } else {
        (HostStatus::Draining, HostStatus::Online, "host.undrain")
    };
    if !from.can_become(to) {
        return Err(DbError::Conflict("invalid_transition"));
    }
    let n = conn.execute(
        "UPDATE hosts SET status = ?1, drain = ?5, updated_at = ?2 WHERE id = ?3 AND status = ?4",
        params![to, now(), host_id, from, draining],
    )?;
    if n == 0 {
        return Err(DbError::Conflict("invalid_transition"));
    }
    audit::record(conn, Some(actor), action, Some(host_id), None)?;
    Ok(())
}

/// Deletes a team's BYOC hosts (in the caller's transaction); returns their ids.
pub fn delete_team_hosts(conn: &Connection, team_id: &str, actor: &str) -> DbResult<Vec<String>> {
    let ids: Vec<String> = {
        let mut st =
            conn.prepare("DELETE FROM hosts WHERE team_id = ?1 AND type = 'byoc' RETURNING id")?;
        st.query_map([team_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for id in &ids {
        audit::record(
            conn,
            Some(actor),
            "host.delete",
            Some(id),
            Some("team deleted"),
        )?;
    }
    Ok(ids)
}

/// Deletes the host row with its tokens (sandbox rows keep their history with host_id cleared).
pub fn delete(conn: &mut Connection, id: &str, actor: Option<&str>) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = tx.execute("DELETE FROM hosts WHERE id = ?1", [id])?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    audit::record(&tx, actor, "host.delete", Some(id), None)?;
    tx.commit()?;
    Ok(())
}

/// Hosts online whose last heartbeat is older than `cutoff` become unreachable, and their live
/// sandboxes missing. Returns the hosts it changed.
pub fn mark_stale(conn: &mut Connection, cutoff: i64) -> DbResult<Vec<String>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ids: Vec<String> = {
        // Draining hosts too: draining stops new work, not the check that the host is alive.
        let mut st = tx.prepare(
            "UPDATE hosts SET status = ?3, updated_at = ?1
             WHERE status IN (?4, ?5) AND coalesce(last_heartbeat_at, 0) < ?2 RETURNING id",
        )?;
        let (online, draining, to) = (
            HostStatus::Online,
            HostStatus::Draining,
            HostStatus::Unreachable,
        );
        debug_assert!(online.can_become(to) && draining.can_become(to));
        st.query_map(params![now(), cutoff, to, online, draining], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for id in &ids {
        tx.execute(
            "UPDATE sandboxes SET status = 'missing' WHERE host_id = ?1 AND status IN ('pending', 'starting', 'running')",
            [id],
        )?;
        audit::record(&tx, None, "host.unreachable", Some(id), None)?;
    }
    tx.commit()?;
    Ok(ids)
}
