//! The team's API keys.

use super::{ApiClient, ClientError};
use crate::proto::keys::{CreateKeyRequest, KeyListResponse, KeyResponse};

impl ApiClient {
    pub async fn create_key(&self, name: &str) -> Result<KeyResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/api-keys",
            Some(&CreateKeyRequest { name: name.into() }),
        )
        .await
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyResponse>, ClientError> {
        Ok(self
            .json::<(), KeyListResponse>(reqwest::Method::GET, "/v1/api-keys", None)
            .await?
            .keys)
    }

    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/api-keys/{id}"))
            .await
    }
}
