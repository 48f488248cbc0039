//! E2B's snapshots on our snapshots-as-templates: `POST /sandboxes/{id}/snapshots` keeps the
//! sandbox as a team template (its name is the `snapshotID`, so `Sandbox.create(snapshotID)`
//! starts from it), `GET /snapshots` lists the team's snapshots a page at a time and
//! `DELETE /templates/{id}` deletes one.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use super::errors::{E2bCaller, E2bError, E2bJson, E2bResult};
use super::list::NEXT_TOKEN;
use super::sandboxes::{E2bSandboxId, live};
use crate::proto::e2b::{SnapshotCreated, SnapshotInfo, SnapshotRequest};
use crate::proto::vocab::TemplateKind;
use crate::server::AppState;
use crate::server::db::templates::TemplateRow;
use crate::server::sandboxes::listing::MAX_PAGE;

/// `POST /sandboxes/{id}/snapshots`: 201 `{snapshotID, names}`.
pub async fn create(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<SnapshotRequest>,
) -> E2bResult<(StatusCode, Json<SnapshotCreated>)> {
    if req.memory == Some(false) {
        return Err(E2bError::unsupported(
            "memory",
            "a filesystem-only snapshot (false)",
        ));
    }
    let name = match req.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!(
            "snapshot-{}",
            crate::crypto::random_token("")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect::<String>()
                .to_ascii_lowercase()
        ),
    };
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    let t = st
        .sandboxes()
        .snapshot(&team, &caller.user_id, &id, &name, false)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SnapshotCreated {
            snapshot_id: t.name.clone(),
            names: vec![t.name],
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: Option<String>,
    pub name: Option<String>,
    pub limit: Option<String>,
    pub next_token: Option<String>,
}

fn cursor(t: &TemplateRow) -> String {
    format!("{}.{}", t.created_at, t.id)
}

/// One page of snapshots, newest first, after `after`. Pure.
fn page(
    mut rows: Vec<TemplateRow>,
    q: &SnapshotQuery,
) -> E2bResult<(Vec<TemplateRow>, Option<String>)> {
    let limit = match q.limit.as_deref() {
        None | Some("") => MAX_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| E2bError::bad("limit", format!("must be 1 to {MAX_PAGE}")))?,
    };
    let after = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            t.split_once('.')
                .and_then(|(c, id)| Some((c.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| E2bError::bad("nextToken", "not a token this server gave"))?,
        ),
    };
    rows.retain(|t| {
        t.kind == TemplateKind::Snapshot
            && q.sandbox_id
                .as_deref()
                .is_none_or(|s| t.source_sandbox_id.as_deref() == Some(s))
            && q.name.as_deref().is_none_or(|n| t.name == n)
    });
    rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    if let Some(key) = after {
        rows.retain(|t| (t.created_at, t.id.clone()) < key);
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(cursor) } else { None };
    Ok((rows, next))
}

/// `GET /snapshots`: the team's snapshots, newest first, with `X-Next-Token` while there is
/// more.
pub async fn list(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> E2bResult<(HeaderMap, Json<Vec<SnapshotInfo>>)> {
    let Query(q) = query.map_err(|e| E2bError::bad("query", e.body_text()))?;
    let team = caller.team_id()?;
    let rows = st.sandboxes().team_templates(&team).await?;
    let (rows, next) = page(rows, &q)?;
    let mut headers = HeaderMap::new();
    if let Some(next) = next.as_deref()
        && let Ok(v) = HeaderValue::from_str(next)
    {
        headers.insert(NEXT_TOKEN, v);
    }
    let items = rows
        .into_iter()
        .map(|t| SnapshotInfo {
            snapshot_id: t.name.clone(),
            names: vec![t.name],
        })
        .collect();
    Ok((headers, Json(items)))
}

/// `DELETE /templates/{id}`: deletes the team's snapshot (or other team template) by name or
/// id; 404 when there is none.
pub async fn delete(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let team = caller.team_id()?;
    st.sandboxes()
        .delete_template(&team, &caller.user_id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
