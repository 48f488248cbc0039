//! Templates: snapshots of sandboxes, imported root filesystems, base template builds.

use std::time::Duration;

use super::{ApiClient, ClientError};
use crate::proto::api::{
    SnapshotRequest, TemplateBuildRequest, TemplateBuildResponse, TemplateBuildStatusResponse,
    TemplateListResponse, TemplateResponse,
};
use crate::urlencode;

impl ApiClient {
    pub async fn snapshot(
        &self,
        sandbox_id: &str,
        name: &str,
        overwrite: bool,
    ) -> Result<TemplateResponse, ClientError> {
        let q = if overwrite { "?overwrite=true" } else { "" };
        let body = SnapshotRequest {
            sandbox_id: sandbox_id.into(),
            name: name.into(),
        };
        self.json_timeout(
            reqwest::Method::POST,
            &format!("/v1/snapshots{q}"),
            Some(&body),
            Duration::from_secs(330),
        )
        .await
    }

    pub async fn list_templates(&self) -> Result<Vec<TemplateResponse>, ClientError> {
        Ok(self
            .json::<(), TemplateListResponse>(reqwest::Method::GET, "/v1/templates", None)
            .await?
            .templates)
    }

    pub async fn delete_template(&self, id: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/templates/{}", urlencode::encode(id)),
        )
        .await
    }

    pub async fn build_template(&self, name: &str) -> Result<TemplateBuildResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/templates",
            Some(&TemplateBuildRequest { name: name.into() }),
        )
        .await
    }

    pub async fn template_build_status(
        &self,
        name: &str,
    ) -> Result<TemplateBuildStatusResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/templates/{}/build", urlencode::encode(name)),
            None,
        )
        .await
    }

    /// A team template from a root filesystem archive (the raw body).
    pub async fn import_template(
        &self,
        name: &str,
        overwrite: bool,
        body: reqwest::Body,
    ) -> Result<TemplateResponse, ClientError> {
        let resp = self
            .raw(
                reqwest::Method::POST,
                &format!(
                    "/v1/templates/import?name={}&overwrite={overwrite}",
                    urlencode::encode(name)
                ),
                Some(body),
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }
}
