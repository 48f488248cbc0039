//! A sandbox's files: streamed downloads and uploads, listings, stat, mkdir, remove, download links.

use futures_util::StreamExt;

use super::{ApiClient, ClientError};
use crate::proto::api::{DownloadUrlResponse, FileEntry, FileListResponse};
use crate::urlencode;

impl ApiClient {
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
    ) -> Result<DownloadUrlResponse, ClientError> {
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
}
