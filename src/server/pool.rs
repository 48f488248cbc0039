//! `HostClientPool`: one lazily-built client per host id, each call signed for that host and bound
//! to its method, path and body (see [`crate::crypto::agent_call`]). The pool never follows a
//! redirect from an agent and reads at most a few MiB of any answer it buffers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crypto::agent_call::CallBinding;
use crate::proto::agent::{
    BuildTemplateRequest, CreateVmRequest, MAX_LISTING_BYTES, PORT_UPGRADE, SnapshotVmRequest,
    TemplateInfo, TemplateListResponse, VmInfo, VmListResponse,
};
use crate::proto::api::{EXEC_OUTPUT_CAP, ErrorBody, ExecRequest, ExecResponse};
use crate::proto::net::EgressPolicy;
use crate::server::auth::TokenKeys;

/// Largest JSON answer read from an agent.
pub const MAX_JSON_ANSWER: usize = 4 << 20;
/// Largest directory listing read from an agent: the agent's own bound, plus room for the framing.
pub const MAX_LISTING_ANSWER: usize = MAX_LISTING_BYTES as usize + (1 << 20);
/// Largest one-shot exec answer: two streams of at most `EXEC_OUTPUT_CAP` bytes of JSON text each.
pub const MAX_EXEC_ANSWER: usize = 2 * EXEC_OUTPUT_CAP + (64 << 10);
/// How long an agent may take to connect a port (the guest answers at once, or is unresponsive).
const PORT_OPEN_WAIT: Duration = Duration::from_secs(30);
/// Largest error answer read from an agent.
pub const MAX_ERROR_ANSWER: usize = 64 << 10;

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
    /// The agent answered something the server will not take (too large, not what was asked).
    #[error("bad answer from host: {0}")]
    BadAnswer(String),
}

/// The body of a call to an agent.
pub enum CallBody {
    Empty,
    /// Bytes sent whole; the call is bound to their digest.
    Json(Vec<u8>),
    /// A body passed on as it comes; the call is bound to the "streamed" marker, which only the
    /// agent's upload routes accept.
    Streamed(reqwest::Body),
}

/// A client for one agent.
#[derive(Clone)]
pub struct AgentClient {
    host_id: String,
    base: String,
    http: reqwest::Client,
    keys: Arc<TokenKeys>,
}

/// An agent's error answer as [`AgentError::Remote`], with the agent's code.
async fn remote_error(resp: reqwest::Response) -> AgentError {
    let status = resp.status().as_u16();
    let bytes = read_capped(resp, MAX_ERROR_ANSWER)
        .await
        .unwrap_or_default();
    let (code, message, field) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => (b.error.code, b.error.message, b.error.field),
        Err(_) => (
            "agent_error".into(),
            String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            None,
        ),
    };
    AgentError::Remote {
        status,
        code,
        message,
        field,
    }
}

/// Reads at most `limit` bytes of an answer; a longer one is an error, not an allocation.
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, AgentError> {
    let too_large = || AgentError::BadAnswer(format!("the answer is over {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// A JSON answer of at most `limit` bytes.
pub async fn read_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    limit: usize,
) -> Result<T, AgentError> {
    let bytes = read_capped(resp, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| AgentError::BadAnswer(e.to_string()))
}

impl AgentClient {
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The URL of `path_and_query` on the agent and the request target as it goes on the wire
    /// (what the call is signed over).
    fn target(&self, path_and_query: &str) -> Result<(reqwest::Url, String), AgentError> {
        let url = reqwest::Url::parse(&format!("{}{}", self.base, path_and_query))
            .map_err(|e| AgentError::Unreachable(format!("bad host address: {e}")))?;
        let wire = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok((url, wire))
    }

    fn sign(&self, call: &CallBinding) -> Result<String, AgentError> {
        self.keys
            .agent_call_token(&self.host_id, call)
            .map_err(|e| AgentError::Unreachable(format!("signing call: {e}")))
    }

    /// Sends a signed request; an error answer becomes `AgentError::Remote` with the agent's code.
    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: CallBody,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AgentError> {
        let (url, wire) = self.target(path_and_query)?;
        let call = match &body {
            CallBody::Empty => CallBinding::new(method.as_str(), &wire, b""),
            CallBody::Json(b) => CallBinding::new(method.as_str(), &wire, b),
            CallBody::Streamed(_) => CallBinding::streamed(method.as_str(), &wire),
        };
        let token = self.sign(&call)?;
        let mut req = self.http.request(method, url).bearer_auth(token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req = match body {
            CallBody::Empty => req,
            CallBody::Json(b) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b),
            CallBody::Streamed(b) => req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(remote_error(resp).await)
    }

    /// A JSON call: `None` for an empty (204) answer.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, AgentError> {
        self.call_limited(method, path, body, timeout, MAX_JSON_ANSWER)
            .await
    }

    /// A JSON call whose answer may be up to `limit` bytes.
    async fn call_limited<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Option<T>, AgentError> {
        let body = match body {
            Some(b) => CallBody::Json(
                serde_json::to_vec(b)
                    .map_err(|e| AgentError::Unreachable(format!("encoding: {e}")))?,
            ),
            None => CallBody::Empty,
        };
        let resp = self.send(method, path, body, Some(timeout)).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        read_json(resp, limit).await.map(Some)
    }

    fn expect<T>(v: Option<T>) -> Result<T, AgentError> {
        v.ok_or_else(|| AgentError::BadAnswer("no body".into()))
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

    /// A raw request whose successful answer is handed back unread: file downloads stream it
    /// through, everything else reads it with [`read_capped`] or [`read_json`]. A body given here
    /// is streamed. Error answers are decoded like every other call.
    pub async fn stream(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<reqwest::Body>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AgentError> {
        let body = body.map_or(CallBody::Empty, CallBody::Streamed);
        self.send(method, path_and_query, body, timeout).await
    }

    /// A call without a body whose JSON answer, at most `limit` bytes, is decoded.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<T, AgentError> {
        let resp = self
            .send(method, path_and_query, CallBody::Empty, Some(timeout))
            .await?;
        read_json(resp, limit).await
    }

    /// The WebSocket URL and a bearer token for a streaming exec on the agent: the upgrade is a
    /// GET without a body, signed like any other.
    pub fn exec_stream_target(&self, id: &str) -> Result<(String, String), AgentError> {
        let (url, wire) = self.target(&format!("/v1/vms/{id}/exec/stream"))?;
        let token = self.sign(&CallBinding::new("GET", &wire, b""))?;
        Ok((url.as_str().replacen("http", "ws", 1), token))
    }

    /// A byte stream to `port` on VM `id`'s loopback (the agent's upgraded
    /// `GET /v1/vms/{id}/ports/{port}`). Nothing listening there is [`AgentError::Remote`] with
    /// code `port_closed`. The stream lives as long as either side keeps it open.
    pub async fn open_port(&self, id: &str, port: u16) -> Result<reqwest::Upgraded, AgentError> {
        let (url, wire) = self.target(&format!("/v1/vms/{id}/ports/{port}"))?;
        let token = self.sign(&CallBinding::new("GET", &wire, b""))?;
        let req = self
            .http
            .get(url)
            .bearer_auth(token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, PORT_UPGRADE);
        let resp = tokio::time::timeout(PORT_OPEN_WAIT, req.send())
            .await
            .map_err(|_| AgentError::Unreachable("the host did not answer in time".into()))?
            .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return Err(remote_error(resp).await);
        }
        resp.upgrade()
            .await
            .map_err(|e| AgentError::BadAnswer(format!("upgrading the port stream: {e}")))
    }

    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, AgentError> {
        // The agent answers by the command's timeout plus its 30 s grace (sooner, 504, when the
        // guest stops answering): wait a little longer, so its answer is what the caller gets.
        let wait = Duration::from_secs(req.timeout_sec.unwrap_or(60) + 45);
        let r = self
            .call_limited(
                reqwest::Method::POST,
                &format!("/v1/vms/{id}/exec"),
                Some(req),
                wait,
                MAX_EXEC_ANSWER,
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
        // An agent's answer is never followed elsewhere: a redirect would send a signed call's
        // answer-taking to an address the agent chose (docs/ARCHITECTURE.md#server-and-agent).
        let http = crate::tls::http_client(|b| {
            b.connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
        })
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
