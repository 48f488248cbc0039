//! The bodies of the teams API (`/v1/teams…`, `/v1/auth/switch-team`, `/v1/users/search`):
//! teams, their members and roles, and the users one can add.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct TeamResponse {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub is_byoc: bool,
    pub created_at: i64,
    /// The caller's role in it.
    pub role: String,
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
    pub role: String,
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
pub struct AddMemberRequest {
    pub email: String,
    #[serde(default)]
    pub role: Option<String>,
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
