//! `HostClientPool`: one lazily-built client per host id, each call signed for that host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::agent::{
    BuildTemplateRequest, CreateVmRequest, SnapshotVmRequest, TemplateInfo, TemplateListResponse,
    VmInfo, VmListResponse,
};
use crate::proto::api::{ErrorBody, ExecRequest, ExecResponse};
use crate::proto::net::EgressPolicy;
use crate::server::auth::TokenKeys;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host unreachable: {0}")]
    Unreachable(String),
    #[error("host answered {status} {code}: {message}")]
    Remote {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
}

/// A client for one agent.
#[derive(Clone)]
pub struct AgentClient {
    host_id: String,
    base: String,
    http: reqwest::Client,
    keys: Arc<TokenKeys>,
}

impl AgentClient {
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Sends a signed request; an error answer becomes `AgentError::Remote` with the agent's code.
    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<(reqwest::Body, &'static str)>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AgentError> {
        let token = self
            .keys
            .agent_call_token(&self.host_id)
            .map_err(|e| AgentError::Unreachable(format!("signing call: {e}")))?;
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query))
            .bearer_auth(token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some((b, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let (code, message, field) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message, b.error.field),
            Err(_) => (
                "agent_error".into(),
                String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                None,
            ),
        };
        Err(AgentError::Remote {
            status,
            code,
            message,
            field,
        })
    }

    /// A JSON call: `None` for an empty (204) answer.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, AgentError> {
        let body = match body {
            Some(b) => Some((
                reqwest::Body::from(
                    serde_json::to_vec(b)
                        .map_err(|e| AgentError::Unreachable(format!("encoding: {e}")))?,
                ),
                "application/json",
            )),
            None => None,
        };
        let resp = self.send(method, path, body, Some(timeout)).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Unreachable(format!("bad answer from host: {e}")))
    }

    fn expect<T>(v: Option<T>) -> Result<T, AgentError> {
        v.ok_or_else(|| AgentError::Unreachable("host answered with no body".into()))
    }

    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<VmInfo, AgentError> {
        let r = self
            .call(
                reqwest::Method::POST,
                "/v1/vms",
                Some(req),
                Duration::from_secs(300),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, AgentError> {
        let r: Option<VmListResponse> = self
            .call::<(), _>(
                reqwest::Method::GET,
                "/v1/vms",
                None,
                Duration::from_secs(15),
            )
            .await?;
        Ok(Self::expect(r)?.vms)
    }

    pub async fn destroy_vm(&self, id: &str) -> Result<(), AgentError> {
        self.call::<(), serde_json::Value>(
            reqwest::Method::DELETE,
            &format!("/v1/vms/{id}"),
            None,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    pub async fn pause_vm(&self, id: &str) -> Result<VmInfo, AgentError> {
        let r = self
            .call::<(), _>(
                reqwest::Method::POST,
                &format!("/v1/vms/{id}/pause"),
                None,
                Duration::from_secs(120),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn set_vm_network(
        &self,
        id: &str,
        policy: &EgressPolicy,
    ) -> Result<EgressPolicy, AgentError> {
        let r = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/vms/{id}/network"),
                Some(policy),
                Duration::from_secs(30),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn resume_vm(&self, id: &str) -> Result<VmInfo, AgentError> {
        let r = self
            .call::<(), _>(
                reqwest::Method::POST,
                &format!("/v1/vms/{id}/resume"),
                None,
                Duration::from_secs(120),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn snapshot_vm(
        &self,
        id: &str,
        req: &SnapshotVmRequest,
    ) -> Result<TemplateInfo, AgentError> {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/vms/{id}/snapshot"),
                Some(req),
                Duration::from_secs(300),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn list_templates(&self) -> Result<Vec<TemplateInfo>, AgentError> {
        let r: Option<TemplateListResponse> = self
            .call::<(), _>(
                reqwest::Method::GET,
                "/v1/templates",
                None,
                Duration::from_secs(15),
            )
            .await?;
        Ok(Self::expect(r)?.templates)
    }

    pub async fn build_template(
        &self,
        req: &BuildTemplateRequest,
    ) -> Result<TemplateInfo, AgentError> {
        let r = self
            .call(
                reqwest::Method::POST,
                "/v1/templates",
                Some(req),
                Duration::from_secs(30),
            )
            .await?;
        Self::expect(r)
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), AgentError> {
        self.call::<(), serde_json::Value>(
            reqwest::Method::DELETE,
            &format!("/v1/templates/{name}"),
            None,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    /// A raw request whose successful answer is handed back unread (for streaming bodies); error
    /// answers are decoded like every other call.
    pub async fn stream(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<reqwest::Body>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AgentError> {
        self.send(
            method,
            path_and_query,
            body.map(|b| (b, "application/octet-stream")),
            timeout,
        )
        .await
    }

    /// The WebSocket URL and a bearer token for a streaming exec on the agent.
    pub fn exec_stream_target(&self, id: &str) -> Result<(String, String), AgentError> {
        let token = self
            .keys
            .agent_call_token(&self.host_id)
            .map_err(|e| AgentError::Unreachable(format!("signing call: {e}")))?;
        let ws = self.base.replacen("http", "ws", 1);
        Ok((format!("{ws}/v1/vms/{id}/exec/stream"), token))
    }

    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, AgentError> {
        let limit = Duration::from_secs(req.timeout_sec.unwrap_or(60) + 30);
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/vms/{id}/exec"),
                Some(req),
                limit,
            )
            .await?;
        Self::expect(r)
    }
}

/// Clients keyed by host id; rebuilt when the host's address changes, evicted on delete.
pub struct HostClientPool {
    keys: Arc<TokenKeys>,
    http: reqwest::Client,
    clients: Mutex<HashMap<String, AgentClient>>,
}

impl HostClientPool {
    pub fn new(keys: Arc<TokenKeys>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client builds");
        Self {
            keys,
            http,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `host_id` at `address` (`host:port` or a URL).
    pub fn get(&self, host_id: &str, address: &str) -> AgentClient {
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{address}")
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(host_id)
            && c.base == base
        {
            return c.clone();
        }
        let c = AgentClient {
            host_id: host_id.to_string(),
            base,
            http: self.http.clone(),
            keys: self.keys.clone(),
        };
        clients.insert(host_id.to_string(), c.clone());
        c
    }

    pub fn evict(&self, host_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host_id);
    }

    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
