//! Sandbox ports: one TCP connection to a port inside a sandbox, carried over an upgraded
//! `GET /v1/sandboxes/{id}/ports/{port}`.

use super::{ApiClient, ClientError};
use crate::proto::agent::PORT_UPGRADE;

impl ApiClient {
    /// A byte stream to `port` inside sandbox `id` (409 `port_closed` when nothing listens).
    pub async fn open_port(&self, id: &str, port: u16) -> Result<reqwest::Upgraded, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/v1/sandboxes/{id}/ports/{port}", self.base))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, PORT_UPGRADE);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.without_url().to_string()))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(ClientError::from_answer(status, &bytes));
        }
        resp.upgrade()
            .await
            .map_err(|e| ClientError::Transport(format!("upgrading the port stream: {e}")))
    }
}
