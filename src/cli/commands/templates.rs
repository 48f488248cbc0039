//! `template …`: list, build (base templates), import (root filesystems) and delete templates.

use anyhow::Context;

use super::client;
use super::output::{age, print_json, table};
use crate::cli::TemplateCommand;
use crate::proto::agent::TemplateStatus;
use crate::proto::api::HostBuildStatus;

pub async fn template(cmd: TemplateCommand) -> anyhow::Result<i32> {
    let c = client()?;
    match cmd {
        TemplateCommand::List { json } => {
            let list = c.list_templates().await?;
            if json {
                print_json(&list)?;
            } else {
                table(
                    &["ID", "NAME", "KIND", "WHERE", "SIZE", "CREATED"],
                    list.iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.name.clone(),
                                t.kind.to_string(),
                                match (&t.host_id, t.hosts) {
                                    (Some(h), _) => h.clone(),
                                    (None, Some(n)) => format!("{n} host(s)"),
                                    _ => "-".into(),
                                },
                                t.size_bytes
                                    .map(|b| format!("{}M", b / 1_000_000))
                                    .unwrap_or_else(|| "-".into()),
                                t.created_at
                                    .map(|t| format!("{} ago", age(t)))
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TemplateCommand::Build { name, no_wait } => {
            let r = c.build_template(&name).await?;
            eprintln!("building {name} on {} host(s)", r.hosts.len());
            for f in &r.failed {
                eprintln!("  {}: {}", f.host_id, super::terminal::line(&f.error));
            }
            if no_wait {
                return Ok(0);
            }
            let mut last = String::new();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let hosts = c.template_build_status(&name).await?.hosts;
                let line = hosts
                    .iter()
                    .map(|h| match h {
                        HostBuildStatus::Known {
                            host_id,
                            status,
                            progress,
                            ..
                        } => format!(
                            "{host_id}: {} {}",
                            status_word(*status),
                            progress.as_deref().unwrap_or("")
                        ),
                        HostBuildStatus::Unreachable(f) => format!("{}: ? ", f.host_id),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if line != last {
                    eprintln!("{}", super::terminal::line(&line));
                    last = line;
                }
                let building = |h: &HostBuildStatus| {
                    matches!(
                        h,
                        HostBuildStatus::Known {
                            status: TemplateStatus::Building,
                            ..
                        }
                    )
                };
                if !hosts.iter().any(building) {
                    let failed = hosts.iter().any(|h| match h {
                        HostBuildStatus::Known { status, error, .. } => {
                            *status == TemplateStatus::Failed || error.is_some()
                        }
                        HostBuildStatus::Unreachable(_) => true,
                    });
                    return Ok(if failed { 1 } else { 0 });
                }
            }
        }
        TemplateCommand::Import {
            name,
            from,
            overwrite,
            json,
        } => {
            let body = archive_body(&from).await?;
            eprintln!(
                "sending {} to a host, which builds and boots it…",
                from.display()
            );
            let t = c.import_template(&name, overwrite, body).await?;
            if json {
                print_json(&t)?;
            } else {
                println!(
                    "template {} ({}) ready on {}",
                    t.name,
                    t.id,
                    t.host_id.as_deref().unwrap_or("-")
                );
            }
        }
        TemplateCommand::Delete { id } => {
            c.delete_template(&id).await?;
            println!("{id} deleted");
        }
    }
    Ok(0)
}

/// An archive as it is, or a directory as a tar stream made on the fly (symlinks kept as links,
/// owners and modes as on disk).
async fn archive_body(from: &std::path::Path) -> anyhow::Result<reqwest::Body> {
    let meta = tokio::fs::metadata(from)
        .await
        .with_context(|| format!("reading {}", from.display()))?;
    let file = if meta.is_dir() {
        let (reader, writer) = std::io::pipe().context("make a pipe")?;
        let dir = from.to_path_buf();
        std::thread::spawn(move || {
            let mut b = tar::Builder::new(writer);
            b.follow_symlinks(false);
            let done = b.append_dir_all(".", &dir).and_then(|()| b.finish());
            if let Err(e) = done {
                eprintln!("sandboxctl: packing {}: {e}", dir.display());
            }
        });
        tokio::fs::File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(reader)))
    } else {
        tokio::fs::File::open(from)
            .await
            .with_context(|| format!("opening {}", from.display()))?
    };
    Ok(reqwest::Body::wrap_stream(
        tokio_util::io::ReaderStream::new(file),
    ))
}

/// A build state as the API spells it.
fn status_word(s: TemplateStatus) -> &'static str {
    match s {
        TemplateStatus::Building => "building",
        TemplateStatus::Ready => "ready",
        TemplateStatus::Failed => "failed",
    }
}
