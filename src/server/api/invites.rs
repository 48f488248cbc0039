//! Team invites (SPEC §15): the only way into a team. A team's owners and admins (and platform
//! admins) make one-time links; the person who accepts one — signing up with it, or already signed
//! in — joins the team with the invite's role.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::auth::refused;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser, IdPath};
use super::team_access::admin_or_platform_admin;
use crate::crypto;
use crate::ids::{InviteId, TeamId};
use crate::proto::teams::{
    AcceptInviteRequest, CreateInviteRequest, CreatedInviteResponse, InviteListResponse,
    InviteResponse, TeamResponse,
};
use crate::proto::vocab::TeamRole;
use crate::server::AppState;
use crate::server::db::{DbError, invites, teams};

/// How long an invite can be accepted.
pub const INVITE_TTL_SECS: i64 = 7 * 24 * 3600;

fn invite_resp(i: invites::InviteRow) -> InviteResponse {
    InviteResponse {
        id: i.id,
        team_id: i.team_id,
        role: i.role,
        created_by: i.created_by,
        created_at: i.created_at,
        expires_at: i.expires_at,
    }
}

/// The role an invite gives: admin or member (a team has one owner).
fn invite_role(role: Option<&str>) -> ApiResult<TeamRole> {
    match role.map(str::parse::<TeamRole>) {
        None => Ok(TeamRole::Member),
        Some(Ok(TeamRole::Owner)) => Err(ApiError::bad(
            "role",
            "a team has one owner; invite an admin or a member",
        )),
        Some(Ok(r)) => Ok(r),
        Some(Err(_)) => Err(ApiError::bad("role", "must be admin or member")),
    }
}

pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
    ApiJson(req): ApiJson<CreateInviteRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInviteResponse>)> {
    let admin = admin_or_platform_admin(&st, &user, &id).await?;
    let role = invite_role(req.role.as_deref())?;
    let token = crypto::random_token("sbi_");
    let hash = crypto::sha256_hex(token.as_bytes());
    let (tid, uid) = (admin.team_id().to_string(), user.user_id.clone());
    let row = st
        .db
        .call(move |c| invites::create(c, &tid, role, &uid, &hash, INVITE_TTL_SECS))
        .await?;
    let url = format!(
        "{}/#invite={token}",
        st.settings.public_url.trim_end_matches('/')
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedInviteResponse {
            invite: invite_resp(row),
            token,
            url,
        }),
    ))
}

pub async fn list(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
) -> ApiResult<Json<InviteListResponse>> {
    let admin = admin_or_platform_admin(&st, &user, &id).await?;
    let tid = admin.team_id().to_string();
    let rows = st.db.call(move |c| invites::pending(c, &tid)).await?;
    Ok(Json(InviteListResponse {
        invites: rows.into_iter().map(invite_resp).collect(),
    }))
}

pub async fn revoke(
    State(st): State<AppState>,
    user: AuthUser,
    Path((id, invite)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id: TeamId = id.parse().map_err(|_| ApiError::NotFound("team"))?;
    let admin = admin_or_platform_admin(&st, &user, &id).await?;
    let invite: InviteId = invite.parse().map_err(|_| ApiError::NotFound("invite"))?;
    let (tid, uid) = (admin.team_id().to_string(), user.user_id.clone());
    st.db
        .call(move |c| invites::revoke(c, &tid, invite.as_str(), &uid))
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::NotFound("invite"),
            DbError::Conflict("invite_used") => {
                ApiError::conflict("invite_used", "this invite was already used")
            }
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// A signed-in user joins the invite's team with its role; answers the team as they now see it.
pub async fn accept(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<AcceptInviteRequest>,
) -> ApiResult<Json<TeamResponse>> {
    let token = req.token.trim();
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::bad("token", "not an invite token"));
    }
    let hash = crypto::sha256_hex(token.as_bytes());
    let uid = user.user_id.clone();
    let (team, role) = st
        .db
        .call(move |c| {
            let invite = invites::accept(c, &hash, &uid)?;
            Ok((teams::get(c, &invite.team_id)?, invite.role))
        })
        .await
        .map_err(refused)?;
    Ok(Json(TeamResponse {
        id: team.id,
        name: team.name,
        slug: team.slug,
        is_byoc: team.is_byoc,
        created_at: team.created_at,
        role,
        is_default: false,
    }))
}
