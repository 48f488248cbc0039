//! `filesystem.Filesystem`: stat, make, move, list and remove entries, and watch directories
//! (/work/shared/E2B.md §3.3). Relative paths are the user's home's; what envd creates belongs
//! to the user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::connect::{Code, RpcError, RpcResult, unary_request, unary_response};
use super::users::{self, User};
use super::{Envd, resolve_required, watch};
use crate::proto::envd::{
    Empty, EntryInfo, EntryResponse, FileType, ListDirRequest, ListDirResponse, MoveRequest,
    PathRequest,
};

/// Serves `POST /filesystem.Filesystem/{method}`.
pub(super) async fn call(
    envd: Arc<Envd>,
    method: &str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        "WatchDir" => return watch::watch_dir(envd, headers, body).await,
        "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
            return watch::polling(envd, method, headers, body).await;
        }
        _ => {}
    }
    let user = match envd.user(&headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    match method {
        "Stat" => {
            unary(headers, body, move |r: PathRequest| {
                stat(&resolve_required(&user, &r.path, "path")?)
            })
            .await
        }
        "MakeDir" => {
            unary(headers, body, move |r: PathRequest| {
                make_dir(&user, &r.path)
            })
            .await
        }
        "Move" => unary(headers, body, move |r: MoveRequest| move_entry(&user, &r)).await,
        "ListDir" => unary(headers, body, move |r: ListDirRequest| list_dir(&user, &r)).await,
        "Remove" => unary(headers, body, move |r: PathRequest| remove(&user, &r.path)).await,
        other => RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem has no method {other}"),
        )
        .into_response(),
    }
}

/// A unary call whose work blocks (file system calls).
async fn unary<Req, Resp, F>(headers: HeaderMap, body: Body, work: F) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: FnOnce(Req) -> RpcResult<Resp> + Send + 'static,
{
    let result = match unary_request::<Req>(&headers, body).await {
        Ok(req) => tokio::task::spawn_blocking(move || work(req))
            .await
            .unwrap_or_else(|e| Err(RpcError::new(Code::Internal, e.to_string()))),
        Err(e) => Err(e),
    };
    unary_response(result)
}

/// Go's `FileMode.String()` for what envd reports (`drwxr-xr-x`, `-rw-r--r--`).
fn permissions(kind: FileType, broken_link: bool, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileType::Directory => 'd',
        _ if broken_link => 'L',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// What envd says about `path`: a symbolic link reports its target's type, size and mode,
/// with the absolute target.
pub(super) fn entry(path: &Path) -> std::io::Result<EntryInfo> {
    let own = std::fs::symlink_metadata(path)?;
    let is_link = own.file_type().is_symlink();
    let (meta, target) = if is_link {
        (
            std::fs::metadata(path).ok(),
            std::fs::canonicalize(path)
                .ok()
                .or_else(|| std::fs::read_link(path).ok()),
        )
    } else {
        (None, None)
    };
    let broken = is_link && meta.is_none();
    let m = meta.as_ref().unwrap_or(&own);
    let kind = if broken {
        FileType::Symlink
    } else if m.is_dir() {
        FileType::Directory
    } else if m.is_file() {
        FileType::File
    } else {
        FileType::Unspecified
    };
    let mode = m.mode() & 0o777;
    Ok(EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        kind,
        path: path.to_string_lossy().into_owned(),
        size: m.len() as i64,
        mode,
        permissions: permissions(kind, broken, mode),
        owner: users::user_name(m.uid()),
        group: users::group_name(m.gid()),
        modified_time: Some(crate::time::rfc3339(m.mtime())),
        symlink_target: target.map(|t| t.to_string_lossy().into_owned()),
        is_symlink: is_link,
    })
}

fn stat(path: &Path) -> RpcResult<EntryResponse> {
    let entry = entry(path).map_err(|e| RpcError::io(&e, &path.display().to_string()))?;
    Ok(EntryResponse { entry })
}

/// Creates `dir` and its missing parents, each owned by `user`.
pub(super) fn create_dirs_as(user: &User, dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for d in missing.into_iter().rev() {
        std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

fn make_dir(user: &User, path: &str) -> RpcResult<EntryResponse> {
    let path = resolve_required(user, path, "path")?;
    let shown = path.display().to_string();
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(RpcError::new(
            Code::AlreadyExists,
            format!("{shown} already exists"),
        ));
    }
    create_dirs_as(user, &path).map_err(|e| RpcError::io(&e, &shown))?;
    stat(&path)
}

fn move_entry(user: &User, req: &MoveRequest) -> RpcResult<EntryResponse> {
    let from = resolve_required(user, &req.source, "source")?;
    let to = resolve_required(user, &req.destination, "destination")?;
    std::fs::symlink_metadata(&from).map_err(|e| RpcError::io(&e, &from.display().to_string()))?;
    if let Some(parent) = to.parent() {
        create_dirs_as(user, parent)
            .map_err(|e| RpcError::io(&e, &parent.display().to_string()))?;
    }
    std::fs::rename(&from, &to)
        .map_err(|e| RpcError::io(&e, &format!("move {} to {}", from.display(), to.display())))?;
    stat(&to)
}

fn list_dir(user: &User, req: &ListDirRequest) -> RpcResult<ListDirResponse> {
    let root = resolve_required(
        user,
        if req.path.is_empty() { "." } else { &req.path },
        "path",
    )?;
    let shown = root.display().to_string();
    let meta = std::fs::metadata(&root).map_err(|e| RpcError::io(&e, &shown))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid(format!("{shown} is not a directory")));
    }
    let mut entries = Vec::new();
    walk(&root, req.depth.max(1), &mut entries).map_err(|e| RpcError::io(&e, &shown))?;
    Ok(ListDirResponse { entries })
}

/// Depth-first, lexical order, `depth` levels below `dir`, not following links.
fn walk(dir: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> std::io::Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for path in names {
        let Ok(info) = entry(&path) else { continue };
        let descend =
            depth > 1 && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir());
        out.push(info);
        if descend {
            // A directory we may not read is listed but not entered.
            let _ = walk(&path, depth - 1, out);
        }
    }
    Ok(())
}

fn remove(user: &User, path: &str) -> RpcResult<Empty> {
    let path = resolve_required(user, path, "path")?;
    let shown = path.display().to_string();
    if path == Path::new("/") {
        return Err(RpcError::invalid("refusing to remove /"));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| RpcError::io(&e, &shown))?;
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(&path)
    } else {
        std::fs::remove_file(&path)
    };
    r.map_err(|e| RpcError::io(&e, &shown))?;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(FileType::File, false, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileType::Directory, false, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileType::Symlink, true, 0o777), "Lrwxrwxrwx");
    }

    #[test]
    fn entries_and_listing_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        std::fs::write(root.join("b/c/d.txt"), b"yy").unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("link")).unwrap();
        let mut out = Vec::new();
        walk(root, 3, &mut out).unwrap();
        let names: Vec<String> = out
            .iter()
            .map(|e| {
                e.path
                    .strip_prefix(&*root.to_string_lossy())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["/a.txt", "/b", "/b/c", "/b/c/d.txt", "/link"]);
        let link = out.last().unwrap();
        assert_eq!(link.kind, FileType::File);
        assert!(link.is_symlink);
        assert_eq!(
            link.symlink_target.as_deref(),
            Some(
                &*std::fs::canonicalize(root.join("a.txt"))
                    .unwrap()
                    .to_string_lossy()
            )
        );
        let mut shallow = Vec::new();
        walk(root, 1, &mut shallow).unwrap();
        assert_eq!(shallow.len(), 3);
        assert_eq!(out[3].size, 2);
    }
}
