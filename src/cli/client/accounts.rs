//! Signing up, logging in, and who the token belongs to.

use super::{ApiClient, ClientError};
use crate::proto::api::{AuthResponse, LoginRequest, MeResponse, SignupRequest};

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

    pub async fn me(&self) -> Result<MeResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, "/v1/me", None)
            .await
    }
}
