//! The one typed client of the REST API, used by the CLI and the integration tests.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::api::*;
use crate::proto::keys::{CreateKeyRequest, KeyListResponse, KeyResponse};
use crate::proto::teams::{
    AddMemberRequest, MemberResponse, NameRequest, RoleRequest, SwitchTeamRequest,
    TeamDetailResponse, TeamListResponse, TeamResponse, UserSearchResponse, UserSummary,
};
use crate::urlencode;
use futures_util::StreamExt;

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
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
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
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ClientError::Api {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                    sandbox_ids: b.error.sandbox_ids,
                },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: "http_error".into(),
                    message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                    sandbox_ids: None,
                },
            });
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

    pub async fn signup(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<AuthResponse, ClientError> {
        let body = SignupRequest {
            email: email.into(),
            password: password.into(),
            name: name.into(),
        };
        self.json(reqwest::Method::POST, "/v1/auth/signup", Some(&body))
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
        policy: &crate::proto::net::EgressPolicy,
    ) -> Result<SandboxResponse, ClientError> {
        self.json(
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{id}/network"),
            Some(policy),
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

    pub async fn build_template(&self, name: &str) -> Result<serde_json::Value, ClientError> {
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
    ) -> Result<serde_json::Value, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/templates/{}/build", urlencode::encode(name)),
            None,
        )
        .await
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
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
                sandbox_ids: b.error.sandbox_ids,
            },
            Err(_) => ClientError::Api {
                status,
                code: "http_error".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                sandbox_ids: None,
            },
        })
    }

    /// Streams a file out of a sandbox into `out`; returns the bytes written.
    pub async fn download<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        id: &str,
        path: &str,
        out: &mut W,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .raw(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/files?path={}", urlencode::encode(path)),
                None,
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Transport(e.to_string()))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            n += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(n)
    }

    /// Streams `body` into a file of a sandbox.
    pub async fn upload(
        &self,
        id: &str,
        path: &str,
        body: reqwest::Body,
    ) -> Result<FileEntry, ClientError> {
        let resp = self
            .raw(
                reqwest::Method::PUT,
                &format!("/v1/sandboxes/{id}/files?path={}", urlencode::encode(path)),
                Some(body),
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A team template from a root filesystem archive (the raw body).
    pub async fn import_template(
        &self,
        name: &str,
        overwrite: bool,
        body: reqwest::Body,
    ) -> Result<crate::proto::api::TemplateResponse, ClientError> {
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

    pub async fn list_files(&self, id: &str, path: &str) -> Result<FileListResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!(
                "/v1/sandboxes/{id}/files/list?path={}",
                urlencode::encode(path)
            ),
            None,
        )
        .await
    }

    pub async fn stat_file(&self, id: &str, path: &str) -> Result<FileEntry, ClientError> {
        self.json::<(), _>(
            reqwest::Method::GET,
            &format!(
                "/v1/sandboxes/{id}/files/stat?path={}",
                urlencode::encode(path)
            ),
            None,
        )
        .await
    }

    /// A short-lived link (relative to the server) that fetches one file without credentials.
    pub async fn download_url(
        &self,
        id: &str,
        path: &str,
    ) -> Result<crate::proto::api::DownloadUrlResponse, ClientError> {
        self.json::<(), _>(
            reqwest::Method::POST,
            &format!(
                "/v1/sandboxes/{id}/files/download-url?path={}",
                urlencode::encode(path)
            ),
            None,
        )
        .await
    }

    pub async fn mkdir(
        &self,
        id: &str,
        path: &str,
        parents: bool,
    ) -> Result<FileEntry, ClientError> {
        let p = if parents { "&parents=true" } else { "" };
        self.json::<(), _>(
            reqwest::Method::POST,
            &format!(
                "/v1/sandboxes/{id}/files/mkdir?path={}{p}",
                urlencode::encode(path)
            ),
            None,
        )
        .await
    }

    pub async fn remove_file(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let r = if recursive { "&recursive=true" } else { "" };
        self.empty(
            reqwest::Method::DELETE,
            &format!(
                "/v1/sandboxes/{id}/files?path={}{r}",
                urlencode::encode(path)
            ),
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

    pub async fn list_teams(&self) -> Result<Vec<TeamResponse>, ClientError> {
        Ok(self
            .json::<(), TeamListResponse>(reqwest::Method::GET, "/v1/teams", None)
            .await?
            .teams)
    }

    pub async fn create_team(&self, name: &str) -> Result<TeamResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/teams",
            Some(&NameRequest { name: name.into() }),
        )
        .await
    }

    pub async fn get_team(&self, id: &str) -> Result<TeamDetailResponse, ClientError> {
        self.json::<(), _>(reqwest::Method::GET, &format!("/v1/teams/{id}"), None)
            .await
    }

    pub async fn rename_team(&self, id: &str, name: &str) -> Result<TeamResponse, ClientError> {
        self.json(
            reqwest::Method::PATCH,
            &format!("/v1/teams/{id}"),
            Some(&NameRequest { name: name.into() }),
        )
        .await
    }

    pub async fn delete_team(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/teams/{id}"))
            .await
    }

    pub async fn add_member(
        &self,
        team: &str,
        email: &str,
        role: &str,
    ) -> Result<MemberResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("/v1/teams/{team}/members"),
            Some(&AddMemberRequest {
                email: email.into(),
                role: Some(role.into()),
            }),
        )
        .await
    }

    pub async fn set_role(
        &self,
        team: &str,
        user: &str,
        role: &str,
    ) -> Result<MemberResponse, ClientError> {
        self.json(
            reqwest::Method::PATCH,
            &format!("/v1/teams/{team}/members/{user}"),
            Some(&RoleRequest { role: role.into() }),
        )
        .await
    }

    pub async fn remove_member(&self, team: &str, user: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/teams/{team}/members/{user}"),
        )
        .await
    }

    pub async fn leave_team(&self, team: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::POST, &format!("/v1/teams/{team}/leave"))
            .await
    }

    pub async fn switch_team(&self, team: &str) -> Result<AuthResponse, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/auth/switch-team",
            Some(&SwitchTeamRequest {
                team_id: team.into(),
            }),
        )
        .await
    }

    pub async fn search_users(&self, q: &str) -> Result<Vec<UserSummary>, ClientError> {
        let url = format!("/v1/users/search?q={}", urlencode::encode(q));
        Ok(self
            .json::<(), UserSearchResponse>(reqwest::Method::GET, &url, None)
            .await?
            .users)
    }
}
