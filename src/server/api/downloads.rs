//! Download links for browsers: a signed-in user asks for a short-lived link to one file of one
//! sandbox, and the browser fetches it like any link — streamed to disk, never held in the page's
//! memory (a `fetch` with an Authorization header would have to be).
//!
//! The link carries a ticket sealed with the server's key: sandbox, team, user, path and expiry
//! ([`TICKET_TTL_SECS`]). Redeeming it checks the seal and expiry, that the user is still in the
//! team and that the team still owns the running sandbox; the ticket is bound to that one file.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, HeaderValue};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, AuthUser, Caller, CallerKind};
use super::files::{FileQuery, check_path, stream_file, target};
use crate::proto::api::DownloadUrlResponse;
use crate::proto::path::SandboxPath;
use crate::server::AppState;
use crate::server::auth::TokenKeys;
use crate::server::db::{now, users};
use crate::urlencode;

/// How long a download link works.
pub const TICKET_TTL_SECS: i64 = 60;
/// Marks the sealed value as a download ticket (the same key seals other things).
const PURPOSE: &str = "dl1";

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    #[serde(default)]
    pub ticket: Option<String>,
}

/// `POST /v1/sandboxes/{id}/files/download-url?path=P` → a link to that file.
pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Json<DownloadUrlResponse>> {
    let path = check_path(&q)?;
    let caller = Caller {
        kind: CallerKind::User,
        user_id: user.user_id.clone(),
        team_id: user.team_id.clone(),
        role: user.role.clone(),
        is_admin: user.is_admin,
    };
    let team = caller.team()?.to_string();
    // Only for a file of a running sandbox of the caller's team.
    let (_, s) = target(&st, &caller, id).await?;
    let expires_at = now() + TICKET_TTL_SECS;
    let ticket = Ticket {
        sandbox_id: s.id.clone(),
        team_id: team,
        user_id: user.user_id,
        path: path.into(),
        expires_at,
    }
    .seal(&st.keys);
    Ok(Json(DownloadUrlResponse {
        url: format!(
            "/v1/sandboxes/{}/files/download?ticket={}",
            s.id,
            urlencode::encode(&ticket)
        ),
        expires_at,
    }))
}

/// `GET /v1/sandboxes/{id}/files/download?ticket=T`: the file, as an attachment.
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
    let Ticket {
        team_id: team,
        user_id: user,
        path,
        ..
    } = Ticket::open(&st.keys, &ticket, &id, now()).ok_or(ApiError::Unauthorized)?;
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
    let path = SandboxPath::parse(&path)?;
    let mut resp = stream_file(&st, &caller, id, &path).await?;
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&name)) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// What a download link grants: one file of one sandbox, to one team member, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ticket {
    sandbox_id: String,
    team_id: String,
    user_id: String,
    path: String,
    expires_at: i64,
}

impl Ticket {
    fn seal(&self, keys: &TokenKeys) -> String {
        let value = [
            PURPOSE,
            &self.sandbox_id,
            &self.team_id,
            &self.user_id,
            &self.expires_at.to_string(),
            &B64.encode(self.path.as_bytes()),
        ]
        .join(":");
        keys.seal(&value)
    }

    /// The ticket, when the seal checks out, it is a download ticket for `sandbox_id` and it
    /// has not expired at `now`.
    fn open(keys: &TokenKeys, sealed: &str, sandbox_id: &str, now: i64) -> Option<Ticket> {
        let value = keys.unseal(sealed)?;
        let parts: Vec<&str> = value.split(':').collect();
        let [purpose, sbx, team, user, expires_at, path] = parts[..] else {
            return None;
        };
        let expires_at: i64 = expires_at.parse().ok()?;
        if purpose != PURPOSE || sbx != sandbox_id || expires_at < now {
            return None;
        }
        let path = String::from_utf8(B64.decode(path).ok()?).ok()?;
        Some(Ticket {
            sandbox_id: sbx.to_string(),
            team_id: team.to_string(),
            user_id: user.to_string(),
            path,
            expires_at,
        })
    }
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
    fn tickets_are_bound_sealed_and_expire() {
        let keys =
            TokenKeys::new(b"test secret", &crate::crypto::SigningKeyPair::generate()).unwrap();
        let t = Ticket {
            sandbox_id: "sbx_a".into(),
            team_id: "team_a".into(),
            user_id: "usr_a".into(),
            path: "/root/a b:c.txt".into(),
            expires_at: 1000,
        };
        let sealed = t.seal(&keys);
        assert_eq!(Ticket::open(&keys, &sealed, "sbx_a", 1000), Some(t.clone()));
        assert_eq!(Ticket::open(&keys, &sealed, "sbx_a", 1001), None, "expired");
        assert_eq!(
            Ticket::open(&keys, &sealed, "sbx_b", 999),
            None,
            "another sandbox"
        );
        let other =
            TokenKeys::new(b"other secret", &crate::crypto::SigningKeyPair::generate()).unwrap();
        assert_eq!(
            Ticket::open(&other, &sealed, "sbx_a", 999),
            None,
            "another server"
        );
        let longer = sealed.replacen(":1000:", ":9999:", 1);
        assert_eq!(Ticket::open(&keys, &longer, "sbx_a", 999), None, "tampered");
        // Something else the same key sealed is not a ticket.
        let state = keys.seal("state:sbx_a:team_a:usr_a:1000:eA");
        assert_eq!(Ticket::open(&keys, &state, "sbx_a", 999), None);
    }

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
