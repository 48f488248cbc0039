//! Teams, members and roles, invites, switching the token's team, finding team mates.

use super::{ApiClient, ClientError};
use crate::proto::api::AuthResponse;
use crate::proto::quota::{QuotaResponse, TeamQuota};
use crate::proto::teams::{
    AcceptInviteRequest, CreateInviteRequest, CreatedInviteResponse, InviteListResponse,
    InviteResponse, MemberResponse, NameRequest, RoleRequest, SwitchTeamRequest,
    TeamDetailResponse, TeamListResponse, TeamResponse, UserSearchResponse, UserSummary,
};
use crate::urlencode;

impl ApiClient {
    pub async fn list_teams(&self) -> Result<Vec<TeamResponse>, ClientError> {
        Ok(self
            .json::<(), TeamListResponse>(reqwest::Method::GET, "/v1/teams", None)
            .await?
            .teams)
    }

    pub async fn create_team(&self, name: &str) -> Result<TeamResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/teams",
            Some(&NameRequest { name: name.into() }),
        )
        .await
    }

    pub async fn get_team(&self, id: &str) -> Result<TeamDetailResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, &format!("/v1/teams/{id}"), None)
            .await
    }

    pub async fn rename_team(&self, id: &str, name: &str) -> Result<TeamResponse, ClientError> {
        self.json(
            reqwest::Method::PATCH,
            &format!("/v1/teams/{id}"),
            Some(&NameRequest { name: name.into() }),
        )
        .await
    }

    /// The team's quota: the limits in force, its overrides, the server's default and its usage.
    pub async fn team_quota(&self, team: &str) -> Result<QuotaResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/teams/{}/quota", urlencode::encode(team)),
            None,
        )
        .await
    }

    /// Sets the team's own limits (platform admins); `None` falls back to the server's default.
    pub async fn set_team_quota(
        &self,
        team: &str,
        quota: &TeamQuota,
    ) -> Result<QuotaResponse, ClientError> {
        self.json(
            reqwest::Method::PUT,
            &format!("/v1/teams/{}/quota", urlencode::encode(team)),
            Some(quota),
        )
        .await
    }

    pub async fn delete_team(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/teams/{id}"))
            .await
    }

    /// Makes an invite to `team` for `role` (admin or member); the answer holds the token once.
    pub async fn create_invite(
        &self,
        team: &str,
        role: &str,
    ) -> Result<CreatedInviteResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("/v1/teams/{team}/invites"),
            Some(&CreateInviteRequest {
                role: Some(role.into()),
            }),
        )
        .await
    }

    /// The team's pending invites.
    pub async fn list_invites(&self, team: &str) -> Result<Vec<InviteResponse>, ClientError> {
        Ok(self
            .json::<(), InviteListResponse>(
                reqwest::Method::GET,
                &format!("/v1/teams/{team}/invites"),
                None,
            )
            .await?
            .invites)
    }

    pub async fn revoke_invite(&self, team: &str, invite: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/teams/{team}/invites/{invite}"),
        )
        .await
    }

    /// Joins the team an invite is for (the token, or the link that carries it).
    pub async fn accept_invite(&self, token: &str) -> Result<TeamResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/invites/accept",
            Some(&AcceptInviteRequest {
                token: invite_token(token).into(),
            }),
        )
        .await
    }

    pub async fn set_role(
        &self,
        team: &str,
        user: &str,
        role: &str,
    ) -> Result<MemberResponse, ClientError> {
        self.json(
            reqwest::Method::PATCH,
            &format!("/v1/teams/{team}/members/{user}"),
            Some(&RoleRequest { role: role.into() }),
        )
        .await
    }

    pub async fn remove_member(&self, team: &str, user: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/teams/{team}/members/{user}"),
        )
        .await
    }

    pub async fn leave_team(&self, team: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::POST, &format!("/v1/teams/{team}/leave"))
            .await
    }

    pub async fn switch_team(&self, team: &str) -> Result<AuthResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/auth/switch-team",
            Some(&SwitchTeamRequest {
                team_id: team.into(),
            }),
        )
        .await
    }

    pub async fn search_users(&self, q: &str) -> Result<Vec<UserSummary>, ClientError> {
        let url = format!("/v1/users/search?q={}", urlencode::encode(q));
        Ok(self
            .json::<(), UserSearchResponse>(reqwest::Method::GET, &url, None)
            .await?
            .users)
    }
}

/// The token of an invite given as the token itself or as the link that carries it
/// (`…/#invite=TOKEN`).
pub fn invite_token(given: &str) -> &str {
    let given = given.trim();
    match given.rsplit_once("invite=") {
        Some((_, t)) => t.split('&').next().unwrap_or(t),
        None => given,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn invite_links_and_tokens() {
        assert_eq!(super::invite_token(" sbi_abc "), "sbi_abc");
        assert_eq!(
            super::invite_token("https://sbx.example.com/#invite=sbi_abc"),
            "sbi_abc"
        );
    }
}
