//! `sandbox files …`: copy files in and out of a sandbox, list, inspect, make and remove them.

use anyhow::Context;

use super::output::{print_json, table};
use super::terminal::line;
use crate::cli::FilesCommand;
use crate::cli::client::ApiClient;
use crate::proto::api::FileKind;

pub(super) async fn files(c: &ApiClient, cmd: FilesCommand) -> anyhow::Result<i32> {
    match cmd {
        FilesCommand::Get { id, path, dest } => {
            if dest.as_os_str() == "-" {
                c.download(&id, &path, &mut tokio::io::stdout()).await?;
            } else {
                let tmp = dest.with_extension("sandboxctl-part");
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("creating {}", tmp.display()))?;
                let n = match c.download(&id, &path, &mut f).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.into());
                    }
                };
                tokio::fs::rename(&tmp, &dest).await?;
                eprintln!("{n} bytes written to {}", dest.display());
            }
        }
        FilesCommand::Put { id, src, path } => {
            let body = if src.as_os_str() == "-" {
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::io::stdin()))
            } else {
                let f = tokio::fs::File::open(&src)
                    .await
                    .with_context(|| format!("opening {}", src.display()))?;
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f))
            };
            let e = c.upload(&id, &path, body).await?;
            eprintln!("{} bytes written to {}", e.size, line(&e.path));
        }
        FilesCommand::Ls {
            id,
            path,
            json,
            raw,
        } => {
            super::terminal::set_raw(raw);
            let l = c.list_files(&id, &path).await?;
            if json {
                print_json(&l)?;
            } else {
                table(
                    &["MODE", "SIZE", "NAME"],
                    l.entries
                        .iter()
                        .map(|e| {
                            let kind = match e.kind {
                                FileKind::Dir => "d",
                                FileKind::Symlink => "l",
                                FileKind::File => "-",
                                FileKind::Other => "?",
                            };
                            let name = match &e.link_target {
                                Some(t) => format!("{} -> {t}", e.name),
                                None => e.name.clone(),
                            };
                            vec![
                                format!("{kind}{:o}", e.mode & 0o7777),
                                e.size.to_string(),
                                name,
                            ]
                        })
                        .collect(),
                );
            }
        }
        FilesCommand::Stat {
            id,
            path,
            json,
            raw,
        } => {
            super::terminal::set_raw(raw);
            let e = c.stat_file(&id, &path).await?;
            if json {
                print_json(&e)?;
            } else {
                println!(
                    "{} {:?} {} bytes mode {:o}",
                    line(&e.path),
                    e.kind,
                    e.size,
                    e.mode & 0o7777
                );
            }
        }
        FilesCommand::Mkdir { id, path, parents } => {
            let e = c.mkdir(&id, &path, parents).await?;
            println!("{}", line(&e.path));
        }
        FilesCommand::Rm {
            id,
            path,
            recursive,
        } => {
            c.remove_file(&id, &path, recursive).await?;
            println!("{path} removed");
        }
    }
    Ok(0)
}
