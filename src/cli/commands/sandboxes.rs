//! `sandbox …`: create, list, inspect, run commands in, pause, resume, time out, network,
//! snapshot and kill sandboxes (`sandbox files …` is in [`super::files`]).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;

use super::client;
use super::output::{age, print_json, table};
use crate::cli::SandboxCommand;
use crate::proto::api::{CreateSandboxRequest, ExecRequest, SandboxResponse};

fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--{flag} {p}: expected KEY=VALUE"))
        })
        .collect()
}

fn sandbox_rows(list: &[SandboxResponse]) {
    table(
        &[
            "ID", "STATUS", "TEMPLATE", "HOST", "VCPU", "MEM", "TIMEOUT", "AGE",
        ],
        list.iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.status.to_string(),
                    s.template.clone(),
                    s.host_id.clone().unwrap_or_else(|| "-".into()),
                    s.vcpus.to_string(),
                    format!("{}M", s.memory_mb),
                    if s.timeout_sec == 0 {
                        "never".into()
                    } else {
                        format!("{}s", s.timeout_sec)
                    },
                    age(s.created_at),
                ]
            })
            .collect(),
    );
}

pub async fn sandbox(cmd: SandboxCommand) -> anyhow::Result<i32> {
    let c = client()?;
    match cmd {
        SandboxCommand::Create {
            template,
            vcpus,
            memory,
            timeout,
            on_timeout,
            end_in,
            env,
            metadata,
            no_network,
            egress,
            public_ports,
            json,
        } => {
            let req = CreateSandboxRequest {
                template: Some(template),
                vcpus,
                memory_mb: memory,
                timeout_sec: timeout,
                env: Some(parse_pairs("env", &env)?),
                metadata: Some(parse_pairs("meta", &metadata)?),
                network: Some(if no_network {
                    crate::proto::net::NetworkSetting::Enabled(false)
                } else {
                    crate::proto::net::NetworkSetting::Policy(egress.policy())
                }),
                on_timeout,
                end_in_sec: end_in,
                cold_boot: None,
                public_ports: public_ports.then_some(true),
            };
            if !json {
                eprint!("creating sandbox… ");
                let _ = std::io::stderr().flush();
            }
            let s = c.create_sandbox(&req).await;
            if !json {
                eprintln!("{}", if s.is_ok() { "done" } else { "failed" });
            }
            let s = s?;
            if json {
                print_json(&s)?;
            } else {
                println!("{}", s.id);
                eprintln!(
                    "{} on host {} ({} vCPU, {} MB{})",
                    s.status,
                    s.host_id.as_deref().unwrap_or("-"),
                    s.vcpus,
                    s.memory_mb,
                    s.boot_ms
                        .map(|b| format!(", started in {:.1} s", b as f64 / 1000.0))
                        .unwrap_or_default()
                );
            }
        }
        SandboxCommand::List { status, json } => {
            let list = c.list_sandboxes(status.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else {
                sandbox_rows(&list);
            }
        }
        SandboxCommand::Get { id, json } => {
            let s = c.get_sandbox(&id).await?;
            if json {
                print_json(&s)?;
            } else {
                sandbox_rows(std::slice::from_ref(&s));
                if let Some(e) = &s.error {
                    println!("error: {}", super::terminal::text(e));
                }
            }
        }
        SandboxCommand::Exec {
            id,
            timeout,
            cwd,
            env,
            tty,
            json,
            command,
        } => {
            let (cmd, args) = command.split_first().context("give the command after --")?;
            let env = parse_pairs("env", &env)?;
            if json {
                let req = ExecRequest {
                    cmd: cmd.clone(),
                    args: args.to_vec(),
                    timeout_sec: timeout,
                    env,
                    cwd,
                };
                let out = c.exec(&id, &req).await?;
                print_json(&out)?;
                return Ok(out.exit_code.clamp(0, 255));
            }
            use std::io::IsTerminal;
            let start = crate::proto::api::ExecStreamStart {
                cmd: cmd.clone(),
                args: args.to_vec(),
                env,
                cwd,
                timeout_sec: timeout,
                pty: tty.then_some(crate::proto::api::PtySize { rows: 24, cols: 80 }),
            };
            let code =
                crate::cli::stream::run(&c, &id, start, tty || !std::io::stdin().is_terminal())
                    .await?;
            return Ok(code.clamp(0, 255));
        }
        SandboxCommand::PortForward { id, ports } => {
            return super::ports::forward(&c, &id, ports.0, ports.1).await;
        }
        SandboxCommand::Shell { id } => {
            let start = crate::cli::stream::shell_start()?;
            return crate::cli::stream::run(&c, &id, start, true).await;
        }
        SandboxCommand::Pause { id, json } => {
            let s = c.pause_sandbox(&id).await?;
            if json {
                print_json(&s)?;
            } else {
                println!("{} {}", s.id, s.status);
            }
        }
        SandboxCommand::Resume { id, json } => {
            let s = c.resume_sandbox(&id).await?;
            if json {
                print_json(&s)?;
            } else {
                println!("{} {}", s.id, s.status);
            }
        }
        SandboxCommand::Deadline { id, seconds, json } => {
            let s = c.set_deadline(&id, seconds).await?;
            if json {
                print_json(&s)?;
            } else if let Some(at) = s.end_at {
                println!(
                    "{} will {} at {} (in {}s)",
                    s.id,
                    s.on_timeout,
                    at,
                    at - crate::time::unix_now()
                );
            } else {
                println!("{}: no deadline", s.id);
            }
        }
        SandboxCommand::Timeout {
            id,
            seconds,
            on_timeout,
            json,
        } => {
            let s = c.set_timeout(&id, seconds, on_timeout.as_deref()).await?;
            if json {
                print_json(&s)?;
            } else if let Some(at) = s.timeout_at {
                println!(
                    "{} will {} after {}s idle (at {}, in {}s)",
                    s.id,
                    s.on_timeout,
                    s.timeout_sec,
                    at,
                    at - crate::time::unix_now()
                );
            } else {
                println!("{}: no idle timeout", s.id);
            }
        }
        SandboxCommand::Network { id, egress, json } => {
            let s = c.set_network(&id, &egress.policy()).await?;
            if json {
                print_json(&s)?;
            } else if let Some(p) = &s.network {
                println!(
                    "{}: internet {}, allow {}, deny {}",
                    s.id,
                    if p.internet { "open" } else { "closed" },
                    if p.allow_out.is_empty() {
                        "-".into()
                    } else {
                        p.allow_out.join(",")
                    },
                    if p.deny_out.is_empty() {
                        "-".into()
                    } else {
                        p.deny_out.join(",")
                    },
                );
            }
        }
        SandboxCommand::Metrics {
            id,
            watch,
            since,
            json,
        } => return super::metrics::metrics(&id, watch, since, json).await,
        SandboxCommand::Logs { id, raw } => {
            use std::io::Write;
            super::terminal::set_raw(raw);
            let log = c.logs_bytes(&id).await?;
            let mut out = std::io::stdout().lock();
            if raw {
                out.write_all(&log)?;
            } else {
                let text = String::from_utf8_lossy(&log);
                out.write_all(super::terminal::text(&text).as_bytes())?;
            }
            out.flush()?;
        }
        SandboxCommand::Snapshot {
            id,
            name,
            overwrite,
            json,
        } => {
            if !json {
                eprint!("saving memory and disk… ");
            }
            let t = c.snapshot(&id, &name, overwrite).await;
            if !json {
                eprintln!("{}", if t.is_ok() { "done" } else { "failed" });
            }
            let t = t?;
            if json {
                print_json(&t)?;
            } else {
                println!("{}", t.id);
                eprintln!(
                    "template {} on host {} ({} MB); start one with: sandboxctl sandbox create --template {}",
                    t.name,
                    t.host_id.as_deref().unwrap_or("-"),
                    t.size_bytes.unwrap_or(0) / 1_000_000,
                    t.name
                );
            }
        }
        SandboxCommand::Files(f) => return super::files::files(&c, f).await,
        SandboxCommand::Kill { id, json } => {
            c.delete_sandbox(&id).await?;
            if json {
                print_json(&serde_json::json!({ "id": id, "deleted": true }))?;
            } else {
                println!("{id} deleted");
            }
        }
    }
    Ok(0)
}
