//! Signing up, logging in and out, sessions, the password, and who the token belongs to.

use super::{ApiClient, ClientError};
use crate::proto::api::{AuthResponse, LoginRequest, MeResponse, SignupRequest};
use crate::proto::sessions::{
    PasswordChangeRequest, PasswordChangeResponse, SessionListResponse, SessionResponse,
};

impl ApiClient {
    pub async fn signup(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<AuthResponse, ClientError> {
        self.signup_with(&SignupRequest {
            email: email.into(),
            password: password.into(),
            name: name.into(),
            invite: None,
            bootstrap_token: None,
        })
        .await
    }

    /// Signs up with every field of the request (an invite, the bootstrap token).
    pub async fn signup_with(&self, body: &SignupRequest) -> Result<AuthResponse, ClientError> {
        self.json(reqwest::Method::POST, "/v1/auth/signup", Some(body))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<AuthResponse, ClientError> {
        let body = LoginRequest {
            email: email.into(),
            password: password.into(),
        };
        self.json(reqwest::Method::POST, "/v1/auth/login", Some(&body))
            .await
    }

    /// Ends the token's session on the server.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.empty(reqwest::Method::POST, "/v1/auth/logout").await
    }

    pub async fn sessions(&self) -> Result<Vec<SessionResponse>, ClientError> {
        Ok(self
            .json::<(), SessionListResponse>(reqwest::Method::GET, "/v1/auth/sessions", None)
            .await?
            .sessions)
    }

    pub async fn end_session(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/auth/sessions/{id}"))
            .await
    }

    /// Changes the password; the other sessions end (this one stays).
    pub async fn change_password(
        &self,
        current: &str,
        new: &str,
    ) -> Result<PasswordChangeResponse, ClientError> {
        let body = PasswordChangeRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.json(reqwest::Method::POST, "/v1/auth/password", Some(&body))
            .await
    }

    pub async fn me(&self) -> Result<MeResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, "/v1/me", None)
            .await
    }
}
