//! Sandbox rows. Status changes go through the state machine in `server::state`.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, DbResult, now, one};
use crate::proto::net::EgressPolicy;
use crate::proto::vocab::OnTimeout;
use crate::server::state::SandboxStatus;

#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub id: String,
    pub team_id: String,
    pub host_id: Option<String>,
    pub template: String,
    pub status: SandboxStatus,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub timeout_sec: u64,
    pub network: bool,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub boot_ms: Option<u64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    pub on_timeout: OnTimeout,
    pub last_active_at: Option<i64>,
    pub boot_kind: Option<String>,
    /// The egress policy (None with no network device).
    pub egress: Option<EgressPolicy>,
    /// Its ports answer anyone, without the access token.
    pub public_ports: bool,
    /// The absolute deadline (Unix seconds): past it a running sandbox is paused or killed as
    /// `on_timeout` says. None: no deadline.
    pub end_at: Option<i64>,
}

const COLS: &str = "id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec, network,
    metadata, env, boot_ms, created_at, started_at, ended_at, error, on_timeout, last_active_at, boot_kind, egress, public_ports,
    end_at";

fn sandbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRow> {
    let metadata: String = r.get(9)?;
    let env: String = r.get(10)?;
    let network: bool = r.get(8)?;
    let egress: Option<String> = r.get(19)?;
    Ok(SandboxRow {
        id: r.get(0)?,
        team_id: r.get(1)?,
        host_id: r.get(2)?,
        template: r.get(3)?,
        status: r.get(4)?,
        vcpus: r.get(5)?,
        memory_mb: r.get(6)?,
        timeout_sec: r.get(7)?,
        network: r.get(8)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        env: serde_json::from_str(&env).unwrap_or_default(),
        boot_ms: r.get(11)?,
        created_at: r.get(12)?,
        started_at: r.get(13)?,
        ended_at: r.get(14)?,
        error: r.get(15)?,
        on_timeout: r.get(16)?,
        last_active_at: r.get(17)?,
        boot_kind: r.get(18)?,
        egress: network.then(|| {
            egress
                .and_then(|e| serde_json::from_str(&e).ok())
                .unwrap_or_default()
        }),
        public_ports: r.get(20)?,
        end_at: r.get(21)?,
    })
}

pub struct NewSandbox {
    pub id: String,
    pub team_id: String,
    pub host_id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub timeout_sec: u64,
    pub network: bool,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub created_by: String,
    pub on_timeout: OnTimeout,
    pub egress: Option<EgressPolicy>,
    pub public_ports: bool,
    pub end_at: Option<i64>,
}

/// Records a sandbox's new egress policy.
pub fn set_egress(conn: &Connection, id: &str, egress: &EgressPolicy) -> DbResult<()> {
    let json = serde_json::to_string(egress).unwrap_or_else(|_| "{}".into());
    let n = conn.execute(
        "UPDATE sandboxes SET egress = ?2 WHERE id = ?1",
        params![id, json],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// Inserts a sandbox already placed on a host, in `starting`.
pub fn insert(conn: &Connection, s: &NewSandbox) -> DbResult<()> {
    conn.execute(
        "INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec,
            network, metadata, env, created_by, created_at, on_timeout, egress, public_ports, end_at)
         VALUES (?1, ?2, ?3, ?4, 'starting', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            s.id,
            s.team_id,
            s.host_id,
            s.template,
            s.vcpus,
            s.memory_mb,
            s.timeout_sec,
            s.network,
            serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into()),
            serde_json::to_string(&s.env).unwrap_or_else(|_| "{}".into()),
            s.created_by,
            now(),
            s.on_timeout,
            s.egress
                .as_ref()
                .and_then(|e| serde_json::to_string(e).ok()),
            s.public_ports,
            s.end_at,
        ],
    )?;
    Ok(())
}

/// A sandbox of this team (other teams' sandboxes are not found).
pub fn get(conn: &Connection, team_id: &str, id: &str) -> DbResult<SandboxRow> {
    one(conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM sandboxes WHERE id = ?1 AND team_id = ?2"
        ))?
        .query_row(params![id, team_id], sandbox_row))
}

pub fn get_any(conn: &Connection, id: &str) -> DbResult<Option<SandboxRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLS} FROM sandboxes WHERE id = ?1"),
            [id],
            sandbox_row,
        )
        .optional()?)
}

pub fn list(
    conn: &Connection,
    team_id: &str,
    status: Option<SandboxStatus>,
) -> DbResult<Vec<SandboxRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM sandboxes WHERE team_id = ?1 AND (?2 IS NULL OR status = ?2)
         ORDER BY created_at DESC, id"
    ))?;
    let rows = st.query_map(params![team_id, status.map(|s| s.as_str())], sandbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Live sandboxes on a host (what a host delete would touch).
pub fn live_on_host(conn: &Connection, host_id: &str) -> DbResult<Vec<SandboxRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM sandboxes WHERE host_id = ?1 AND status NOT IN ('stopped', 'error') ORDER BY id"
    ))?;
    let rows = st.query_map([host_id], sandbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves a sandbox to `next` if the state machine allows it from its current status; refuses with
/// `Conflict("invalid_transition")` otherwise.
pub fn transition(
    conn: &Connection,
    id: &str,
    next: SandboxStatus,
    error: Option<&str>,
) -> DbResult<SandboxStatus> {
    let current: String = one(conn.query_row(
        "SELECT status FROM sandboxes WHERE id = ?1",
        [id],
        |r| r.get(0),
    ))?;
    let current: SandboxStatus = current
        .parse()
        .map_err(|_| DbError::Conflict("invalid_transition"))?;
    if !current.can_become(next) {
        return Err(DbError::Conflict("invalid_transition"));
    }
    let t = now();
    conn.execute(
        "UPDATE sandboxes SET status = ?1,
            started_at = CASE WHEN ?1 = 'running' AND started_at IS NULL THEN ?2 ELSE started_at END,
            ended_at = CASE WHEN ?1 IN ('stopped', 'error') THEN ?2 ELSE ended_at END,
            last_active_at = ?2,
            error = coalesce(?3, error)
         WHERE id = ?4",
        params![next.as_str(), t, error, id],
    )?;
    Ok(current)
}

/// Records a state the host has just confirmed (paused, resumed, killed): like [`transition`],
/// but a sandbox already there is fine — the host monitor may have seen the VM first.
pub fn settle(
    conn: &Connection,
    id: &str,
    next: SandboxStatus,
    error: Option<&str>,
) -> DbResult<()> {
    match transition(conn, id, next, error) {
        Ok(_) => Ok(()),
        Err(DbError::Conflict(c)) => {
            let current: String = one(conn.query_row(
                "SELECT status FROM sandboxes WHERE id = ?1",
                [id],
                |r| r.get(0),
            ))?;
            if current == next.as_str() {
                Ok(())
            } else {
                Err(DbError::Conflict(c))
            }
        }
        Err(e) => Err(e),
    }
}

/// Records why an ended sandbox ended, over what the host monitor may have written when it saw
/// the VM gone first (the service's own kill knows the reason: a deadline, the idle timeout).
pub fn set_end_reason(conn: &Connection, id: &str, why: &str) -> DbResult<()> {
    conn.execute(
        "UPDATE sandboxes SET error = ?2 WHERE id = ?1 AND status = 'stopped'",
        params![id, why],
    )?;
    Ok(())
}

pub fn set_boot(
    conn: &Connection,
    id: &str,
    boot_ms: Option<u64>,
    boot_kind: Option<&str>,
) -> DbResult<()> {
    conn.execute(
        "UPDATE sandboxes SET boot_ms = ?1, boot_kind = ?2 WHERE id = ?3",
        params![boot_ms, boot_kind, id],
    )?;
    Ok(())
}

pub fn touch(conn: &Connection, id: &str) -> DbResult<()> {
    conn.execute(
        "UPDATE sandboxes SET last_active_at = ?1 WHERE id = ?2",
        params![now(), id],
    )?;
    Ok(())
}

/// How many sandboxes are in each status (statuses with none are absent), for `/metrics`.
pub fn count_by_status(conn: &Connection) -> DbResult<Vec<(SandboxStatus, u64)>> {
    let mut st = conn.prepare("SELECT status, count(*) FROM sandboxes GROUP BY status")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sum of vCPUs and memory of the live sandboxes on each host, for the scheduler.
pub fn load_by_host(conn: &Connection) -> DbResult<BTreeMap<String, (u32, u64)>> {
    let mut st = conn.prepare(
        "SELECT host_id, sum(vcpus), sum(memory_mb) FROM sandboxes
         WHERE host_id IS NOT NULL AND status IN ('pending', 'starting', 'running', 'missing')
         GROUP BY host_id",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets a new idle timeout (and what happens then), counting from now.
pub fn set_timeout(
    conn: &Connection,
    id: &str,
    timeout_sec: u64,
    on_timeout: Option<OnTimeout>,
) -> DbResult<()> {
    conn.execute(
        "UPDATE sandboxes SET timeout_sec = ?1, on_timeout = coalesce(?2, on_timeout), last_active_at = ?3 WHERE id = ?4",
        params![timeout_sec, on_timeout, now(), id],
    )?;
    Ok(())
}

/// Running sandboxes idle past their timeout.
pub fn idle_expired(conn: &Connection, at: i64) -> DbResult<Vec<SandboxRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM sandboxes WHERE status = 'running' AND timeout_sec > 0
           AND coalesce(last_active_at, started_at, created_at) + timeout_sec <= ?1 ORDER BY id"
    ))?;
    let rows = st.query_map([at], sandbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets (or with None clears) a sandbox's absolute deadline.
pub fn set_end_at(conn: &Connection, id: &str, end_at: Option<i64>) -> DbResult<()> {
    let n = conn.execute(
        "UPDATE sandboxes SET end_at = ?1 WHERE id = ?2",
        params![end_at, id],
    )?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// Running sandboxes whose absolute deadline has passed.
pub fn deadline_expired(conn: &Connection, at: i64) -> DbResult<Vec<SandboxRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM sandboxes WHERE status = 'running' AND end_at IS NOT NULL
           AND end_at <= ?1 ORDER BY id"
    ))?;
    let rows = st.query_map([at], sandbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::{Db, users};

    #[tokio::test]
    async fn settle_accepts_a_state_the_monitor_recorded_first() {
        let db = Db::open_in_memory().unwrap();
        db.call(|c| {
            let (u, team) = users::create_with_team(c, "a@x.io", "Ann", Some("h"), true)?;
            c.execute(
                "INSERT INTO hosts (id, type, status, created_by, created_at, updated_at)
                 VALUES ('host_a', 'regular', 'online', ?1, 0, 0)",
                [&u.id],
            )?;
            insert(
                c,
                &NewSandbox {
                    id: "sbx_a".into(),
                    team_id: team.clone(),
                    host_id: "host_a".into(),
                    template: "minimal".into(),
                    vcpus: 1,
                    memory_mb: 256,
                    timeout_sec: 0,
                    network: true,
                    metadata: BTreeMap::new(),
                    env: BTreeMap::new(),
                    egress: Some(EgressPolicy::default()),
                    public_ports: false,
                    created_by: u.id.clone(),
                    on_timeout: OnTimeout::Pause,
                    end_at: None,
                },
            )?;
            transition(c, "sbx_a", SandboxStatus::Running, None)?;
            // The monitor saw the paused VM before the pause handler recorded it.
            transition(c, "sbx_a", SandboxStatus::Paused, None)?;
            assert!(matches!(
                transition(c, "sbx_a", SandboxStatus::Paused, None),
                Err(DbError::Conflict("invalid_transition"))
            ));
            settle(c, "sbx_a", SandboxStatus::Paused, None)?;
            settle(c, "sbx_a", SandboxStatus::Running, None)?;
            settle(c, "sbx_a", SandboxStatus::Stopped, None)?;
            // A real conflict stays one.
            assert!(matches!(
                settle(c, "sbx_a", SandboxStatus::Running, None),
                Err(DbError::Conflict("invalid_transition"))
            ));
            // Templates made from an uploaded root filesystem are rows too (V5).
            c.execute(
                "INSERT INTO templates (id, team_id, name, kind, host_id, created_at)
                 VALUES ('tpl_a', ?1, 'mine', 'image', 'host_a', 0)",
                [&team],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    }
}
