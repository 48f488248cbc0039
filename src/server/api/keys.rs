//! Team API keys. Members see and revoke the keys they made; the team's owners and admins see
//! and revoke all of them. A key works only while its creator is in the team.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser, IdPath};
use crate::crypto;
use crate::ids::{KeyId, new_id};
use crate::proto::keys::{CreateKeyRequest, KeyListResponse, KeyResponse};
use crate::server::AppState;
use crate::server::db::DbError;
use crate::server::db::api_keys::{self, ApiKeyRow};

fn to_resp(r: ApiKeyRow, key: Option<String>) -> KeyResponse {
    KeyResponse {
        id: r.id,
        team_id: r.team_id,
        name: r.name,
        prefix: r.prefix,
        created_by: r.created_by,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        key,
    }
}

fn team_of(user: &AuthUser) -> ApiResult<String> {
    user.team_id
        .clone()
        .ok_or_else(|| ApiError::forbidden("no_team", "you are not in any active team"))
}

pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<KeyResponse>)> {
    let team = team_of(&user)?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "name",
            "must be 1 to 100 printable characters",
        ));
    }
    let key = crypto::random_token("sk_");
    let prefix: String = key.chars().take(10).collect();
    let hash = crypto::sha256_hex(key.as_bytes());
    let id = new_id("key");
    let uid = user.user_id.clone();
    let row = st
        .db
        .call(move |c| api_keys::create(c, &id, &team, &name, &prefix, &hash, &uid))
        .await?;
    Ok((StatusCode::CREATED, Json(to_resp(row, Some(key)))))
}

pub async fn list(State(st): State<AppState>, user: AuthUser) -> ApiResult<Json<KeyListResponse>> {
    let team = team_of(&user)?;
    let mine = (!user.is_team_admin(&team)).then(|| user.user_id.clone());
    let rows = st
        .db
        .call(move |c| api_keys::list(c, &team, mine.as_deref()))
        .await?;
    Ok(Json(KeyListResponse {
        keys: rows.into_iter().map(|r| to_resp(r, None)).collect(),
    }))
}

pub async fn revoke(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<KeyId>,
) -> ApiResult<StatusCode> {
    let team = team_of(&user)?;
    let admin = user.is_team_admin(&team);
    let uid = user.user_id.clone();
    st.db
        .call(move |c| {
            let key = api_keys::get(c, &team, id.as_str())?;
            if !admin && key.created_by != uid {
                return Err(DbError::Conflict("not_your_key"));
            }
            api_keys::revoke(c, &team, id.as_str(), &uid)
        })
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::NotFound("API key"),
            DbError::Conflict("not_your_key") => ApiError::forbidden(
                "team_admin_required",
                "members revoke only the keys they made; the team's owners and admins revoke any",
            ),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}
