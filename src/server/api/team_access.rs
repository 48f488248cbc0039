//! Team access as values: a caller's membership of a team, read from the database, and the
//! proofs made from it. Team-admin and owner work takes a [`TeamAdmin`] or [`TeamOwner`], which
//! only [`Membership::admin`] and [`Membership::owner`] hand out, instead of comparing role
//! strings in each handler.

use super::error::{ApiError, ApiResult};
use super::extract::AuthUser;
use crate::proto::vocab::TeamRole;
use crate::server::AppState;
use crate::server::db::teams::{self, TeamRow};
use crate::server::db::users;

/// The caller is a member of an active team, with this role.
pub struct Membership {
    pub team: TeamRow,
    pub role: TeamRole,
}

/// Proof that the caller administers the team (its owner or an admin).
pub struct TeamAdmin {
    team_id: String,
    role: TeamRole,
}

/// Proof that the caller owns the team.
pub struct TeamOwner {
    team_id: String,
}

impl TeamAdmin {
    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    pub fn role(&self) -> TeamRole {
        self.role
    }
}

impl TeamOwner {
    pub fn team_id(&self) -> &str {
        &self.team_id
    }
}

/// The caller's membership of the active team `team_id`, or 404 (a team you are not in does not
/// exist for you).
pub async fn membership(st: &AppState, user: &AuthUser, team_id: &str) -> ApiResult<Membership> {
    let (t, u) = (team_id.to_string(), user.user_id.clone());
    let found = st
        .db
        .call(move |c| match users::membership(c, &t, &u)? {
            Some(role) => Ok(Some(Membership {
                team: teams::get(c, &t)?,
                role,
            })),
            None => Ok(None),
        })
        .await?;
    found.ok_or(ApiError::NotFound("team"))
}

/// Team-admin work that a platform admin may do in any active team too (making and revoking
/// invites): the team's owners and admins, and platform admins; 403 `team_admin_required` for
/// members, 404 for everyone else.
pub async fn admin_or_platform_admin(
    st: &AppState,
    user: &AuthUser,
    team_id: &str,
) -> ApiResult<TeamAdmin> {
    if user.is_admin {
        let (t, u) = (team_id.to_string(), user.user_id.clone());
        let (active, role) = st
            .db
            .call(move |c| Ok((users::team_active(c, &t)?, users::membership(c, &t, &u)?)))
            .await?;
        if !active {
            return Err(ApiError::NotFound("team"));
        }
        return Ok(TeamAdmin {
            team_id: team_id.to_string(),
            role: role.unwrap_or(TeamRole::Admin),
        });
    }
    membership(st, user, team_id).await?.admin()
}

impl Membership {
    /// Owners and admins; 403 `team_admin_required` for members.
    pub fn admin(&self) -> ApiResult<TeamAdmin> {
        if self.role.is_team_admin() {
            Ok(TeamAdmin {
                team_id: self.team.id.clone(),
                role: self.role,
            })
        } else {
            Err(ApiError::forbidden(
                "team_admin_required",
                "only the team's owners and admins can do this",
            ))
        }
    }

    /// The owner; 403 `owner_required` for everyone else.
    pub fn owner(&self) -> ApiResult<TeamOwner> {
        if self.role == TeamRole::Owner {
            Ok(TeamOwner {
                team_id: self.team.id.clone(),
            })
        } else {
            Err(ApiError::forbidden(
                "owner_required",
                "only the team's owner can delete it",
            ))
        }
    }
}
