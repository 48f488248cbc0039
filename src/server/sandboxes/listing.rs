//! Listing a team's sandboxes with filters and keyset paging (what the E2B list and any other
//! front-end that pages needs): by status, metadata (every pair must match), template and start
//! time, ordered by start time, a page at a time.

use std::collections::BTreeMap;

use super::SandboxService;
use super::error::{SandboxError, SandboxResult};
use crate::ids::TeamId;
use crate::server::db::sandboxes::SandboxRow;
use crate::server::state::SandboxStatus;

/// Largest page.
pub const MAX_PAGE: usize = 100;

/// Which sandboxes, in which order, from where.
#[derive(Debug, Clone, Default)]
pub struct SandboxQuery {
    /// Any of these statuses (empty: any).
    pub statuses: Vec<SandboxStatus>,
    /// Every pair must be in the sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The template it was made from.
    pub template: Option<String>,
    /// Started at or after (Unix seconds).
    pub started_after: Option<i64>,
    /// Oldest first (default newest first).
    pub oldest_first: bool,
    /// The page after this cursor (from a previous page's `next`).
    pub after: Option<String>,
    /// Page size, 1 to [`MAX_PAGE`].
    pub limit: usize,
}

/// One page and the cursor of the next, if there is more.
#[derive(Debug, Clone)]
pub struct SandboxPage {
    pub sandboxes: Vec<SandboxRow>,
    pub next: Option<String>,
}

/// When a sandbox started for ordering and filters (created, if it never ran).
fn started(s: &SandboxRow) -> i64 {
    s.started_at.unwrap_or(s.created_at)
}

fn cursor_of(s: &SandboxRow) -> String {
    format!("{}.{}", started(s), s.id)
}

fn parse_cursor(c: &str) -> SandboxResult<(i64, String)> {
    c.split_once('.')
        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_string())))
        .ok_or_else(|| SandboxError::invalid("nextToken", "not a token this server gave"))
}

/// One page of `rows` as `q` asks. Pure.
pub fn page(mut rows: Vec<SandboxRow>, q: &SandboxQuery) -> SandboxResult<SandboxPage> {
    if !(1..=MAX_PAGE).contains(&q.limit) {
        return Err(SandboxError::invalid(
            "limit",
            format!("must be 1 to {MAX_PAGE}"),
        ));
    }
    let after = q.after.as_deref().map(parse_cursor).transpose()?;
    rows.retain(|s| {
        (q.statuses.is_empty() || q.statuses.contains(&s.status))
            && q.metadata.iter().all(|(k, v)| s.metadata.get(k) == Some(v))
            && q.template.as_ref().is_none_or(|t| &s.template == t)
            && q.started_after.is_none_or(|t| started(s) >= t)
    });
    rows.sort_by(|a, b| (started(a), &a.id).cmp(&(started(b), &b.id)));
    if !q.oldest_first {
        rows.reverse();
    }
    if let Some((t, id)) = after {
        let key = (t, id);
        rows.retain(|s| {
            let k = (started(s), s.id.clone());
            if q.oldest_first { k > key } else { k < key }
        });
    }
    let more = rows.len() > q.limit;
    rows.truncate(q.limit);
    let next = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    Ok(SandboxPage {
        sandboxes: rows,
        next,
    })
}

impl SandboxService<'_> {
    /// One page of the team's sandboxes as `q` asks.
    pub async fn list_page(&self, team: &TeamId, q: &SandboxQuery) -> SandboxResult<SandboxPage> {
        page(self.list(team, None).await?, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, started: i64, status: SandboxStatus, meta: &[(&str, &str)]) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            team_id: "team_a".into(),
            host_id: None,
            template: "minimal".into(),
            status,
            vcpus: 1,
            memory_mb: 256,
            timeout_sec: 0,
            network: false,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: BTreeMap::new(),
            boot_ms: None,
            created_at: started,
            started_at: Some(started),
            ended_at: None,
            error: None,
            on_timeout: Default::default(),
            last_active_at: None,
            boot_kind: None,
            egress: None,
            public_ports: false,
            end_at: None,
        }
    }

    #[test]
    fn pages_walk_every_match_once_in_order() {
        let rows: Vec<_> = (0..5)
            .map(|i| {
                row(
                    &format!("sbx_{i}"),
                    100 + i,
                    SandboxStatus::Running,
                    &[("k", "v")],
                )
            })
            .chain([row("sbx_x", 50, SandboxStatus::Stopped, &[("k", "v")])])
            .chain([row("sbx_y", 60, SandboxStatus::Running, &[("k", "other")])])
            .collect();
        let mut q = SandboxQuery {
            statuses: vec![SandboxStatus::Running, SandboxStatus::Paused],
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            limit: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let p = page(rows.clone(), &q).unwrap();
            seen.extend(p.sandboxes.iter().map(|s| s.id.clone()));
            match p.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["sbx_4", "sbx_3", "sbx_2", "sbx_1", "sbx_0"]);
        q.oldest_first = true;
        q.after = None;
        q.limit = 100;
        q.started_after = Some(103);
        let p = page(rows.clone(), &q).unwrap();
        let ids: Vec<_> = p.sandboxes.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["sbx_3", "sbx_4"]);
        assert!(p.next.is_none());
        q.limit = 0;
        assert!(page(rows.clone(), &q).is_err());
        q.limit = 1;
        q.after = Some("garbage".into());
        assert!(page(rows, &q).is_err());
    }
}
