//! Team quotas (SPEC §15): `GET /v1/teams/{id}/quota` shows the limits in force and what the team
//! holds (its members, and platform admins for any team); `PUT` sets the team's own limits
//! (platform admins only).

use axum::Json;
use axum::extract::State;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser, IdPath};
use super::team_access::membership;
use crate::ids::TeamId;
use crate::proto::quota::{QuotaResponse, SetQuotaRequest};
use crate::server::AppState;
use crate::server::db::{DbError, quotas, teams};

/// The team as the caller may see it: a member's, or any active team for a platform admin.
async fn visible_team(st: &AppState, user: &AuthUser, id: &TeamId) -> ApiResult<()> {
    if user.is_admin {
        let t = id.to_string();
        return st
            .db
            .call(move |c| teams::get(c, &t).map(|_| ()))
            .await
            .map_err(|e| match e {
                DbError::NotFound => ApiError::NotFound("team"),
                other => other.into(),
            });
    }
    membership(st, user, id).await.map(|_| ())
}

async fn answer(st: &AppState, id: &TeamId) -> ApiResult<Json<QuotaResponse>> {
    let default = st.settings.team_quota;
    let t = id.to_string();
    let (overrides, usage) = st
        .db
        .call(move |c| Ok((quotas::overrides(c, &t)?, quotas::usage(c, &t)?)))
        .await?;
    Ok(Json(QuotaResponse {
        team_id: id.to_string(),
        limits: overrides.or(default),
        overrides,
        default,
        usage,
    }))
}

pub async fn get(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
) -> ApiResult<Json<QuotaResponse>> {
    visible_team(&st, &user, &id).await?;
    answer(&st, &id).await
}

pub async fn set(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<TeamId>,
    ApiJson(req): ApiJson<SetQuotaRequest>,
) -> ApiResult<Json<QuotaResponse>> {
    visible_team(&st, &user, &id).await?;
    if !user.is_admin {
        return Err(ApiError::forbidden(
            "admin_required",
            "only a platform admin can set a team's quota",
        ));
    }
    let (t, actor) = (id.to_string(), user.user_id.clone());
    st.db
        .call(move |c| quotas::set_overrides(c, &t, &req, &actor))
        .await?;
    tracing::info!(team = %id, actor = %user.user_id, overrides = ?req, "team quota set");
    answer(&st, &id).await
}
