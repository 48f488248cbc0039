//! The bodies of the teams API (`/v1/teams…`, `/v1/auth/switch-team`, `/v1/users/search`):
//! teams, their members and roles, invites, and finding team mates.

use serde::{Deserialize, Serialize};

use super::vocab::TeamRole;

#[derive(Debug, Serialize, Deserialize)]
pub struct TeamResponse {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub is_byoc: bool,
    pub created_at: i64,
    /// The caller's role in it.
    pub role: TeamRole,
    #[serde(default)]
    pub is_default: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TeamListResponse {
    pub teams: Vec<TeamResponse>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberResponse {
    pub user_id: String,
    pub name: String,
    pub email: String,
    pub role: TeamRole,
    pub joined_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TeamDetailResponse {
    #[serde(flatten)]
    pub team: TeamResponse,
    pub members: Vec<MemberResponse>,
}

/// Creating a team, or renaming one.
#[derive(Debug, Serialize, Deserialize)]
pub struct NameRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RoleRequest {
    pub role: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SwitchTeamRequest {
    pub team_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: String,
    pub name: String,
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserSearchResponse {
    pub users: Vec<UserSummary>,
}

/// `POST /v1/teams/{id}/invites`: the role the invited person gets (default member).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateInviteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A pending invite as the team's owners and admins see it (the token is shown only at create).
#[derive(Debug, Serialize, Deserialize)]
pub struct InviteResponse {
    pub id: String,
    pub team_id: String,
    pub role: TeamRole,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A new invite: `token` is the secret, `url` the dashboard link that carries it. Shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedInviteResponse {
    #[serde(flatten)]
    pub invite: InviteResponse,
    pub token: String,
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InviteListResponse {
    pub invites: Vec<InviteResponse>,
}

/// `POST /v1/invites/accept`: an existing user joins a team with an invite's token.
#[derive(Debug, Serialize, Deserialize)]
pub struct AcceptInviteRequest {
    pub token: String,
}
