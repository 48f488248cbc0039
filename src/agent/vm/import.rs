//! Team templates from a user's root filesystem archive (see [`crate::agent::images::import`]):
//! the upload is streamed to a file under a size limit, built into an image (unpacked under the
//! expansion limits of [`super::VmConfig::import_limits`], without the templates lock: other
//! tenants' creates never wait on it; only the final rename takes the lock), and booted once for
//! its boot snapshot before the answer, so a template that exists is one that boots.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::snapshot::DEFAULT_SHAPE;
use super::template_store::{TemplateError, valid_name};
use super::{BOOT_TIMEOUT, VmError, VmManager};
use crate::agent::images::{self, import};
use crate::proto::agent::{TemplateInfo, TemplateStatus};

pub use crate::proto::agent::MAX_IMAGE_BYTES;

impl VmManager {
    /// Makes template `name` (a team template id, `tpl_…`) from the tar archive in `body`,
    /// replacing one of that name. Answers once the template has booted and has its boot
    /// snapshot.
    pub async fn import_template<S, E>(
        &self,
        name: &str,
        body: S,
    ) -> Result<TemplateInfo, TemplateError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !name.starts_with("tpl_") || !valid_name(name) {
            return Err(VmError::BadRequest {
                field: "name",
                message: "must be a team template id (tpl_…)".into(),
            }
            .into());
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let upload = images::templates_dir(&self.cfg.data_dir).join(format!(
            ".upload-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _guard = RemoveOnDrop(upload.clone());
        receive(&upload, body).await?;
        let (data_dir, kernel, guest) = (
            self.cfg.data_dir.clone(),
            self.kernel.clone(),
            self.guest_binary.clone(),
        );
        let (owned, limits) = (name.to_string(), self.cfg.import_limits);
        // No lock while the tenant's archive is unpacked and made an image: it is built in a
        // folder of its own.
        let built = tokio::task::spawn_blocking(move || {
            import::build(&data_dir, &kernel, &guest, &owned, &upload, &limits)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the image build panicked: {e}"))?
        .map_err(refusal)?;
        let t = {
            let _files = self.templates_lock.write().await;
            let data_dir = self.cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || built.install(&data_dir))
                .await
                .map_err(|e| anyhow::anyhow!("the image install panicked: {e}"))?
                .context("install the image")?
        };
        // Boot it once: its boot snapshot makes the first sandbox fast, and proves it boots.
        if let Some(mut rx) = self.boot.request(&t, DEFAULT_SHAPE) {
            let _ = tokio::time::timeout(BOOT_TIMEOUT * 2, rx.wait_for(|done| *done)).await;
        }
        if self.boot.ready(&t, DEFAULT_SHAPE).is_none() {
            let _ = self.delete_template(name).await;
            return Err(VmError::BadRequest {
                field: "body",
                message: "the image did not boot (see the agent's log)".into(),
            }
            .into());
        }
        self.image_info(name)
            .ok_or_else(|| TemplateError::NotFound(name.to_string()))
    }

    /// An imported template as the server sees it.
    pub(super) fn image_info(&self, name: &str) -> Option<TemplateInfo> {
        let t = images::template(&self.cfg.data_dir, name).filter(import::is_imported)?;
        let dir = t.rootfs.parent()?.to_path_buf();
        Some(TemplateInfo {
            name: name.to_string(),
            kind: "image".into(),
            status: TemplateStatus::Ready,
            progress: None,
            error: None,
            size_bytes: super::snapshot::allocated(&t.rootfs)
                + super::snapshot::allocated(&dir.join(import::SOURCE)),
            has_snapshot: self.boot.ready(&t, DEFAULT_SHAPE).is_some(),
            vcpus: None,
            memory_mb: None,
            created_at: super::template_store::mtime_secs(&t.rootfs),
        })
    }
}

/// An image build's error as the answer: the archive's faults name `body`.
fn refusal(e: anyhow::Error) -> TemplateError {
    let e = match e.downcast::<import::BadArchive>() {
        Ok(bad) => {
            return TemplateError::Vm(VmError::BadRequest {
                field: "body",
                message: bad.0,
            });
        }
        Err(e) => e,
    };
    match e.downcast::<import::TooLarge>() {
        Ok(big) => TemplateError::Expands(big.0),
        Err(e) => TemplateError::Vm(VmError::Internal(e.context("build the image"))),
    }
}

/// Writes the upload to `path`, refusing more than [`MAX_IMAGE_BYTES`].
async fn receive<S, E>(path: &std::path::Path, mut body: S) -> Result<(), TemplateError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    }
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| VmError::BadRequest {
            field: "body",
            message: format!("the upload broke off: {e}"),
        })?;
        total += chunk.len() as u64;
        if total > MAX_IMAGE_BYTES {
            return Err(TemplateError::TooLarge(MAX_IMAGE_BYTES));
        }
        f.write_all(&chunk)
            .await
            .map_err(|e| anyhow::anyhow!("write the upload: {e}"))?;
    }
    f.flush()
        .await
        .map_err(|e| anyhow::anyhow!("write the upload: {e}"))?;
    Ok(())
}

/// Removes a file when dropped (an upload that was not used up).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
