//! Teams: mine, create, get with members, rename, delete, members role/remove, leave; switching
//! the token's team; finding team mates. People join a team only through an invite
//! (`api/invites.rs`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::validate_name;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, AuthUser, IdPath};
use super::team_access::{Membership, membership};
use crate::ids::TeamId;
use crate::proto::api::AuthResponse;
use crate::proto::teams::{
    MemberResponse, NameRequest, RoleRequest, SwitchTeamRequest, TeamDetailResponse,
    TeamListResponse, TeamResponse, UserSearchResponse, UserSummary,
};
use crate::proto::vocab::TeamRole;
use crate::server::AppState;
use crate::server::db::teams::{self, MemberRow, TeamRow};
use crate::server::db::{DbError, sandboxes, templates, users};
use crate::server::state::SandboxStatus;

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
}

fn team_resp(t: TeamRow, role: TeamRole, is_default: bool) -> TeamResponse {
    TeamResponse {
        id: t.id,
        name: t.name,
        slug: t.slug,
        is_byoc: t.is_byoc,
        created_at: t.created_at,
        role,
        is_default,
    }
}

fn member_resp(m: MemberRow) -> MemberResponse {
    MemberResponse {
        user_id: m.user_id,
        name: m.name,
        email: m.email,
        role: m.role,
        joined_at: m.joined_at,
    }
}

fn not_found_as(what: &'static str) -> impl Fn(DbError) -> ApiError {
    move |e| match e {
        DbError::NotFound => ApiError::NotFound(what),
        DbError::Conflict("owner_is_fixed") => ApiError::conflict(
            "owner_is_fixed",
            "the team's owner cannot be removed, demoted or leave",
        ),
        other => other.into(),
    }
}

pub async fn list(State(st): State<AppState>, user: AuthUser) -> ApiResult<Json<TeamListResponse>> {
    let uid = user.user_id.clone();
    let rows = st.db.call(move |c| teams::mine(c, &uid)).await?;
    Ok(Json(TeamListResponse {
        teams: rows
            .into_iter()
            .map(|r| team_resp(r.team, r.role, r.is_default))
            .collect(),
    }))
}

pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<(StatusCode, Json<TeamResponse>)> {
    let name = validate_name(&req.name)?;
    let uid = user.user_id.clone();
    let t = st.db.call(move |c| teams::create(c, &name, &uid)).await?;
    Ok((
        StatusCode::CREATED,
        Json(team_resp(t, TeamRole::Owner, false)),
    ))
}

pub async fn get(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
) -> ApiResult<Json<TeamDetailResponse>> {
    let Membership { team, role } = membership(&st, &user, &id).await?;
    let uid = user.user_id.clone();
    let (members, is_default) = st
        .db
        .call(move |c| {
            let mine = teams::mine(c, &uid)?;
            Ok((
                teams::members(c, &id)?,
                mine.iter().any(|t| t.team.id == id && t.is_default),
            ))
        })
        .await?;
    Ok(Json(TeamDetailResponse {
        team: team_resp(team, role, is_default),
        members: members.into_iter().map(member_resp).collect(),
    }))
}

pub async fn rename(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<Json<TeamResponse>> {
    let admin = membership(&st, &user, &id).await?.admin()?;
    let name = validate_name(&req.name)?;
    let (tid, uid) = (admin.team_id().to_string(), user.user_id.clone());
    let team = st
        .db
        .call(move |c| {
            teams::rename(c, &tid, &name, &uid)?;
            teams::get(c, &tid)
        })
        .await
        .map_err(not_found_as("team"))?;
    Ok(Json(team_resp(team, admin.role(), false)))
}

/// Soft-deletes a team (owner only) after destroying its live sandboxes on their hosts.
pub async fn delete(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
) -> ApiResult<StatusCode> {
    let owner = membership(&st, &user, &id).await?.owner()?;
    let id = owner.team_id().to_string();
    let tid = id.clone();
    let live = st
        .db
        .call(move |c| {
            let mut all = sandboxes::list(c, &tid, None)?;
            all.retain(|s| !s.status.is_terminal());
            Ok(all)
        })
        .await?;
    for s in &live {
        st.sandboxes()
            .destroy_for(s, crate::server::sandboxes::oplog::BY_TEAM_DELETED)
            .await?;
    }
    // The team's templates (snapshots hold guest memory) go from the hosts that hold them.
    let tid = id.clone();
    let owned = st.db.call(move |c| templates::list(c, &tid)).await?;
    for t in &owned {
        st.sandboxes().delete_template_files(t).await;
    }
    let uid = user.user_id.clone();
    st.db
        .call(move |c| {
            let tx = c.transaction()?;
            for s in &live {
                let next = if matches!(s.status, SandboxStatus::Pending | SandboxStatus::Starting) {
                    SandboxStatus::Error
                } else {
                    SandboxStatus::Stopped
                };
                sandboxes::transition(&tx, &s.id, next, Some("team deleted"))?;
            }
            teams::soft_delete(&tx, &id, &uid)?;
            templates::delete_team(&tx, &id, &uid)?;
            // The team's own (BYOC) hosts serve nobody now: they go too, with their credentials.
            let byoc = crate::server::db::hosts::delete_team_hosts(&tx, &id, &uid)?;
            tx.commit()?;
            Ok(byoc)
        })
        .await
        .map_err(not_found_as("team"))
        .map(|byoc: Vec<String>| {
            for h in byoc {
                st.pool.evict(&h);
            }
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// A role a member can be given: admin or member (a team has one owner, fixed).
fn assignable_role(field: &str, role: &str) -> ApiResult<TeamRole> {
    match role.parse::<TeamRole>() {
        Ok(TeamRole::Owner) => Err(ApiError::bad(
            field,
            "a team has one owner; choose admin or member",
        )),
        Ok(r) => Ok(r),
        Err(_) => Err(ApiError::bad(field, "must be admin or member")),
    }
}

pub async fn set_role(
    State(st): State<AppState>,
    user: AuthUser,
    Path((id, member)): Path<(String, String)>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> ApiResult<Json<MemberResponse>> {
    let admin = membership(&st, &user, &id).await?.admin()?;
    let new_role = assignable_role("role", &req.role)?;
    let (id, uid) = (admin.team_id().to_string(), user.user_id.clone());
    let m = st
        .db
        .call(move |c| {
            teams::set_role(c, &id, &member, new_role, &uid)?;
            teams::members(c, &id)?
                .into_iter()
                .find(|m| m.user_id == member)
                .ok_or(DbError::NotFound)
        })
        .await
        .map_err(not_found_as("member"))?;
    Ok(Json(member_resp(m)))
}

pub async fn remove_member(
    State(st): State<AppState>,
    user: AuthUser,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let m = membership(&st, &user, &id).await?;
    if member != user.user_id {
        m.admin()?;
    }
    let uid = user.user_id.clone();
    st.db
        .call(move |c| teams::remove_member(c, &id, &member, &uid))
        .await
        .map_err(not_found_as("member"))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn leave(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
) -> ApiResult<StatusCode> {
    membership(&st, &user, &id).await?;
    let uid = user.user_id.clone();
    st.db
        .call(move |c| teams::remove_member(c, &id, &uid, &uid))
        .await
        .map_err(not_found_as("member"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new user token for another of the caller's teams; name and role come from the database.
pub async fn switch(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<SwitchTeamRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let (t, u) = (req.team_id.clone(), user.user_id.clone());
    let (fresh, role) = st
        .db
        .call(move |c| Ok((users::get(c, &u)?, users::membership(c, &t, &u)?)))
        .await?;
    if role.is_none() {
        return Err(ApiError::NotFound("team"));
    }
    // The same session, now with another team active.
    let token = st.keys.user_token(
        &fresh.id,
        &fresh.email,
        &fresh.name,
        Some(&req.team_id),
        &user.session_id,
        user.session_expires_at,
    )?;
    Ok(Json(AuthResponse {
        token,
        user_id: fresh.id,
        team_id: Some(req.team_id),
        email: fresh.email,
        name: fresh.name,
        is_admin: fresh.is_admin,
    }))
}

/// Finds team mates: members of the caller's teams, by email prefix or name.
pub async fn search_users(
    State(st): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<UserSearchResponse>> {
    // The rule openapi.yaml states (`minLength: 3`): 3 characters, counted as JSON Schema counts
    // them (code points), before trimming. What is left after trimming is matched.
    if q.q.chars().count() < 3 {
        return Err(ApiError::bad("q", "give at least 3 characters"));
    }
    let q = q.q.trim().to_lowercase();
    let uid = user.user_id.clone();
    let rows = st
        .db
        .call(move |c| teams::search_users(c, &uid, &q))
        .await?;
    Ok(Json(UserSearchResponse {
        users: rows
            .into_iter()
            .map(|(user_id, name, email)| UserSummary {
                user_id,
                name,
                email,
            })
            .collect(),
    }))
}
