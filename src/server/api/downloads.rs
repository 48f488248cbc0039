//! Download links for browsers: a signed-in user asks for a short-lived link to one file of one
//! sandbox, and the browser fetches it like any link — streamed to disk, never held in the page's
//! memory (a `fetch` with an Authorization header would have to be).
//!
//! The link carries a one-time ticket (256 random bits; the server keeps its hash) bound to the
//! sandbox, team, path and the session that asked, good once within [`TICKET_TTL_SECS`].
//! Redeeming it uses it up, then checks that the session is live, the user still in the team and
//! the team still owns the running sandbox; the ticket is bound to that one file.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, HeaderValue};
use axum::response::Response;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, AuthUser, Caller, CallerKind, IdPath};
use super::files::{FileQuery, check_path, stream_file, target};
use super::signin::{issue_ticket, redeem_ticket};
use crate::ids::SandboxId;
use crate::proto::api::DownloadUrlResponse;
use crate::proto::path::SandboxPath;
use crate::server::AppState;
use crate::server::db::tickets::{Purpose, TicketGrant};
use crate::server::db::users;
use crate::urlencode;

/// How long a download link works.
pub const TICKET_TTL_SECS: i64 = 60;

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    #[serde(default)]
    pub ticket: Option<String>,
}

/// `POST /v1/sandboxes/{id}/files/download-url?path=P` → a link to that file.
pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<SandboxId>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Json<DownloadUrlResponse>> {
    let path = check_path(&q)?;
    let caller = Caller {
        kind: CallerKind::User,
        user_id: user.user_id.clone(),
        team_id: user.team_id.clone(),
        role: user.role,
        is_admin: user.is_admin,
    };
    let team = caller.team()?.to_string();
    // Only for a file of a running sandbox of the caller's team.
    let (_, s) = target(&st, &caller, &id).await?;
    let grant = TicketGrant {
        user_id: user.user_id,
        session_id: Some(user.session_id),
        team_id: Some(team),
        sandbox_id: Some(s.id.clone()),
        path: Some(path.into()),
    };
    let (ticket, expires_at) =
        issue_ticket(&st, "dl_", Purpose::Download, grant, TICKET_TTL_SECS).await?;
    Ok(Json(DownloadUrlResponse {
        url: format!(
            "/v1/sandboxes/{}/files/download?ticket={}",
            s.id,
            urlencode::encode(&ticket)
        ),
        expires_at,
    }))
}

/// `GET /v1/sandboxes/{id}/files/download?ticket=T`: the file, as an attachment. The ticket is
/// used up by the first try, whatever its outcome.
pub async fn redeem(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
) -> ApiResult<Response> {
    let ticket = q.ticket.ok_or_else(|| {
        ApiError::bad(
            "ticket",
            "required: ask POST …/files/download-url for a link",
        )
    })?;
    let grant = redeem_ticket(&st, &ticket, Purpose::Download)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (Some(team), Some(sandbox), Some(path)) = (grant.team_id, grant.sandbox_id, grant.path)
    else {
        return Err(ApiError::Unauthorized);
    };
    // A ticket for another sandbox's file does not open this one.
    if sandbox != id {
        return Err(ApiError::Unauthorized);
    }
    let user = grant.user_id;
    let role = {
        let (t, u) = (team.clone(), user.clone());
        st.db.call(move |c| users::membership(c, &t, &u)).await?
    }
    .ok_or(ApiError::Unauthorized)?;
    let caller = Caller {
        kind: CallerKind::User,
        user_id: user,
        team_id: Some(team),
        role: Some(role),
        is_admin: false,
    };
    let name = path.rsplit('/').next().unwrap_or("download").to_string();
    // The ticket names this sandbox, and only this server issues tickets: the id is one of ours.
    let id: SandboxId = id.parse().map_err(|_| ApiError::Unauthorized)?;
    let path = SandboxPath::parse(&path)?;
    let mut resp = stream_file(&st, &caller, &id, &path).await?;
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&name)) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != ';' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ascii = if ascii.trim().is_empty() {
        "download".to_string()
    } else {
        ascii
    };
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        urlencode::encode(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_names() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        let d = content_disposition("é\"x;\n.bin");
        assert!(
            d.starts_with("attachment; filename=\"__x__.bin\"; filename*=UTF-8''"),
            "{d}"
        );
        assert!(!d.contains('\n'));
        assert!(content_disposition("").contains("filename=\"download\""));
    }
}
