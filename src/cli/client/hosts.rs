//! The hosts that run sandboxes: create, list, registration tokens, tags, drain, delete.

use super::{ApiClient, ClientError};
use crate::proto::api::{
    CreateHostRequest, CreateHostResponse, DeletePreview, HostListResponse, HostResponse,
    TagsRequest, TokenResponse,
};

impl ApiClient {
    pub async fn create_host(
        &self,
        req: &CreateHostRequest,
    ) -> Result<CreateHostResponse, ClientError> {
        self.json(reqwest::Method::POST, "/v1/hosts", Some(req))
            .await
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostResponse>, ClientError> {
        Ok(self
            .json::<(), HostListResponse>(reqwest::Method::GET, "/v1/hosts", None)
            .await?
            .hosts)
    }

    pub async fn get_host(&self, id: &str) -> Result<HostResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, &format!("/v1/hosts/{id}"), None)
            .await
    }

    pub async fn host_token(&self, id: &str) -> Result<TokenResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/hosts/{id}/token"),
            None,
        )
        .await
    }

    pub async fn host_delete_preview(&self, id: &str) -> Result<DeletePreview, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/hosts/{id}/delete-preview"),
            None,
        )
        .await
    }

    pub async fn delete_host(&self, id: &str, force: bool) -> Result<(), ClientError> {
        let q = if force { "?force=true" } else { "" };
        self.empty(reqwest::Method::DELETE, &format!("/v1/hosts/{id}{q}"))
            .await
    }

    pub async fn set_host_tags(
        &self,
        id: &str,
        tags: &[String],
    ) -> Result<HostResponse, ClientError> {
        self.json(
            reqwest::Method::PUT,
            &format!("/v1/hosts/{id}/tags"),
            Some(&TagsRequest {
                tags: tags.to_vec(),
            }),
        )
        .await
    }

    pub async fn drain_host(&self, id: &str) -> Result<HostResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/hosts/{id}/drain"),
            None,
        )
        .await
    }

    pub async fn undrain_host(&self, id: &str) -> Result<HostResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/hosts/{id}/drain"),
            None,
        )
        .await
    }
}
