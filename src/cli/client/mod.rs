//! The one typed client of the REST API, used by the CLI and the integration tests: the transport
//! and error decoding here, the calls by concept in the submodules.

mod accounts;
mod files;
mod hosts;
mod keys;
mod ports;
mod sandboxes;
pub mod teams;
mod templates;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        sandbox_ids: Option<Vec<String>>,
    },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// The error a failed answer carries: the API's error body, or the start of whatever else
    /// came back.
    fn from_answer(status: u16, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
                sandbox_ids: b.error.sandbox_ids,
            },
            Err(_) => ClientError::Api {
                status,
                code: "http_error".into(),
                message: String::from_utf8_lossy(bytes).chars().take(300).collect(),
                sandbox_ids: None,
            },
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: crate::tls::http_client(|b| {
                b.connect_timeout(Duration::from_secs(10))
                    // Shown in the user's sessions list.
                    .user_agent(concat!("sandboxctl/", env!("CARGO_PKG_VERSION")))
            })
            .expect("HTTP client builds"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status.as_u16(), &bytes));
        }
        if status == reqwest::StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.json_timeout(method, path, body, Duration::from_secs(60))
            .await
    }

    async fn json_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.send(method, path, body, timeout)
            .await?
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    async fn empty(&self, method: reqwest::Method, path: &str) -> Result<(), ClientError> {
        self.send::<(), serde_json::Value>(method, path, None, Duration::from_secs(120))
            .await
            .map(|_| ())
    }

    pub async fn healthz(&self) -> bool {
        matches!(self.http.get(format!("{}/healthz", self.base)).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
    }

    /// A request whose successful answer is handed back unread (for streaming).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/octet-stream")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.without_url().to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(ClientError::from_answer(status, &bytes))
    }
}
