//! Sandboxes: create, list, get, delete, one-shot exec, pause and resume, network, idle timeout,
//! logs, usage metrics.

use std::time::Duration;

use super::{ApiClient, ClientError};
use crate::proto::api::{
    CreateSandboxRequest, ExecRequest, ExecResponse, SandboxListResponse, SandboxMetric,
    SandboxResponse, TimeoutRequest,
};
use crate::proto::net::EgressPolicy;

impl ApiClient {
    pub async fn create_sandbox(
        &self,
        req: &CreateSandboxRequest,
    ) -> Result<SandboxResponse, ClientError> {
        self.json_timeout(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(req),
            Duration::from_secs(330),
        )
        .await
    }

    pub async fn list_sandboxes(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<SandboxResponse>, ClientError> {
        let q = status.map(|s| format!("?status={s}")).unwrap_or_default();
        Ok(self
            .json::<(), SandboxListResponse>(
                reqwest::Method::GET,
                &format!("/v1/sandboxes{q}"),
                None,
            )
            .await?
            .sandboxes)
    }

    pub async fn get_sandbox(&self, id: &str) -> Result<SandboxResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"), None)
            .await
    }

    pub async fn delete_sandbox(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .await
    }

    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, ClientError> {
        let limit = Duration::from_secs(req.timeout_sec.unwrap_or(60) + 60);
        self.json_timeout(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(req),
            limit,
        )
        .await
    }

    pub async fn pause_sandbox(&self, id: &str) -> Result<SandboxResponse, ClientError> {
        self.json_timeout::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/pause"),
            None,
            Duration::from_secs(180),
        )
        .await
    }

    pub async fn resume_sandbox(&self, id: &str) -> Result<SandboxResponse, ClientError> {
        self.json_timeout::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            None,
            Duration::from_secs(180),
        )
        .await
    }

    pub async fn set_network(
        &self,
        id: &str,
        policy: &EgressPolicy,
    ) -> Result<SandboxResponse, ClientError> {
        self.json(
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{id}/network"),
            Some(policy),
        )
        .await
    }

    /// Sets the absolute deadline `end_in_sec` from now (0 removes it).
    pub async fn set_deadline(
        &self,
        id: &str,
        end_in_sec: u64,
    ) -> Result<SandboxResponse, ClientError> {
        let body = crate::proto::api::DeadlineRequest { end_in_sec };
        self.json(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/deadline"),
            Some(&body),
        )
        .await
    }

    pub async fn set_timeout(
        &self,
        id: &str,
        timeout_sec: u64,
        on_timeout: Option<&str>,
    ) -> Result<SandboxResponse, ClientError> {
        let body = TimeoutRequest {
            timeout_sec,
            on_timeout: on_timeout.map(str::to_string),
        };
        self.json(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/timeout"),
            Some(&body),
        )
        .await
    }

    /// The sandbox's usage samples from `start` to `end` (unix seconds), oldest first.
    pub async fn sandbox_metrics(
        &self,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<SandboxMetric>, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = start {
            q.push(format!("start={s}"));
        }
        if let Some(e) = end {
            q.push(format!("end={e}"));
        }
        let path = format!("/v1/sandboxes/{id}/metrics?{}", q.join("&"));
        self.json::<(), _>(reqwest::Method::GET, &path, None).await
    }

    /// The guest's console log as it is (bytes: it may hold anything the guest wrote).
    pub async fn logs_bytes(&self, id: &str) -> Result<bytes::Bytes, ClientError> {
        let resp = self
            .raw(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/logs"),
                None,
            )
            .await?;
        resp.bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    pub async fn logs(&self, id: &str) -> Result<String, ClientError> {
        let resp = self
            .raw(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/logs"),
                None,
            )
            .await?;
        resp.text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}
