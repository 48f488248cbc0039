//! What each client command does. Errors print one sentence; exit codes: 0 ok, 1 failure,
//! 2 usage; `sandbox exec` exits with the command's own code.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{Context, bail};
use serde::Serialize;

use super::client::ApiClient;
use super::config::{self, CliConfig};
use super::{
    FilesCommand, HostCommand, KeyCommand, LoginArgs, SandboxCommand, SignupArgs, TeamCommand,
    TemplateCommand,
};
use crate::proto::api::{
    CreateHostRequest, CreateSandboxRequest, ExecRequest, HostResponse, SandboxResponse,
};

/// The client for the stored (or env-given) server and token.
pub fn client() -> anyhow::Result<ApiClient> {
    let cfg = config::load()?;
    let server = std::env::var("SANDBOXCTL_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .or(cfg.server)
        .context("no server configured: run `sandboxctl login --server URL --email EMAIL` (or set SANDBOXCTL_SERVER)")?;
    let token = std::env::var("SANDBOXCTL_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
        .or(cfg.token);
    if token.is_none() {
        bail!(
            "not logged in: run `sandboxctl login --server {server} --email EMAIL` (or set SANDBOXCTL_TOKEN to an API key)"
        );
    }
    Ok(ApiClient::new(&server, token))
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        std::env::var("SANDBOXCTL_PASSWORD")
            .context("give the password with --password-stdin or SANDBOXCTL_PASSWORD")?
    };
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

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

fn age(ts: i64) -> String {
    let secs = (crate::time::unix_now() - ts).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
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

fn host_rows(list: &[HostResponse]) {
    table(
        &[
            "ID",
            "TYPE",
            "STATUS",
            "NAME",
            "ADDRESS",
            "ACCEL",
            "CPU",
            "MEM",
            "VMS",
            "HEARTBEAT",
        ],
        list.iter()
            .map(|h| {
                vec![
                    h.id.clone(),
                    h.host_type.clone(),
                    h.status.to_string(),
                    h.name.clone().unwrap_or_else(|| "-".into()),
                    h.address.clone().unwrap_or_else(|| "-".into()),
                    h.accel.clone().unwrap_or_else(|| "-".into()),
                    h.cpu_cores
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    h.memory_mb
                        .map(|m| format!("{m}M"))
                        .unwrap_or_else(|| "-".into()),
                    h.running_vms
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    h.last_heartbeat_at
                        .map(|t| format!("{} ago", age(t)))
                        .unwrap_or_else(|| "never".into()),
                ]
            })
            .collect(),
    );
}

pub async fn signup(a: SignupArgs) -> anyhow::Result<i32> {
    let pw = read_password(a.password_stdin)?;
    let c = ApiClient::new(&a.server, None);
    let r = c.signup(&a.email, &pw, &a.name).await?;
    config::save(&CliConfig {
        server: Some(c.base().to_string()),
        token: Some(r.token),
        email: Some(r.email.clone()),
    })?;
    println!(
        "signed up and logged in as {} <{}>{}",
        r.name,
        r.email,
        if r.is_admin { " (platform admin)" } else { "" }
    );
    Ok(0)
}

pub async fn login(a: LoginArgs) -> anyhow::Result<i32> {
    let pw = read_password(a.password_stdin)?;
    let c = ApiClient::new(&a.server, None);
    let r = c.login(&a.email, &pw).await?;
    config::save(&CliConfig {
        server: Some(c.base().to_string()),
        token: Some(r.token),
        email: Some(r.email.clone()),
    })?;
    println!("logged in to {} as {} <{}>", c.base(), r.name, r.email);
    if r.team_id.is_none() {
        println!("note: you are not in any active team; sandboxes need one");
    }
    Ok(0)
}

pub fn logout() -> anyhow::Result<i32> {
    let mut cfg = config::load()?;
    cfg.token = None;
    config::save(&cfg)?;
    println!("logged out");
    Ok(0)
}

pub async fn whoami(json: bool) -> anyhow::Result<i32> {
    let me = client()?.me().await?;
    if json {
        print_json(&me)?;
    } else {
        println!("{} <{}>", me.name, me.email);
        println!(
            "user:  {}{}",
            me.user_id,
            if me.is_admin { " (platform admin)" } else { "" }
        );
        println!(
            "team:  {} ({})",
            me.team_id.as_deref().unwrap_or("none"),
            me.role.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
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
            env,
            metadata,
            no_network,
            egress,
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
                cold_boot: None,
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
                    println!("error: {e}");
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
                super::stream::run(&c, &id, start, tty || !std::io::stdin().is_terminal()).await?;
            return Ok(code.clamp(0, 255));
        }
        SandboxCommand::Shell { id } => {
            let start = super::stream::shell_start()?;
            return super::stream::run(&c, &id, start, true).await;
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
        SandboxCommand::Logs { id } => {
            print!("{}", c.logs(&id).await?);
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
        SandboxCommand::Files(f) => return files(&c, f).await,
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

pub async fn host(cmd: HostCommand) -> anyhow::Result<i32> {
    let c = client()?;
    match cmd {
        HostCommand::Create {
            host_type,
            team,
            name,
            json,
        } => {
            let r = c
                .create_host(&CreateHostRequest {
                    host_type,
                    team_id: team,
                    name,
                    provider: None,
                    zone: None,
                })
                .await?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "host {} created (pending). On the new host, within an hour, run:\n",
                    r.host.id
                );
                println!("  {}\n", r.register_command);
                println!(
                    "then start it with: sandboxctl agent run --data-dir /var/lib/sandboxctl/agent"
                );
            }
        }
        HostCommand::List { json } => {
            let list = c.list_hosts().await?;
            if json {
                print_json(&list)?;
            } else {
                host_rows(&list);
            }
        }
        HostCommand::Get { id, json } => {
            let h = c.get_host(&id).await?;
            if json {
                print_json(&h)?;
            } else {
                host_rows(std::slice::from_ref(&h));
                if let Some(r) = &h.accel_reason {
                    println!("accel: {r}");
                }
                if let Some(c) = &h.cgroups {
                    println!("cgroups: {c}");
                }
            }
        }
        HostCommand::Token { id, json } => {
            let t = c.host_token(&id).await?;
            if json {
                print_json(&t)?;
            } else {
                println!("{}", t.register_command);
            }
        }
        HostCommand::Tag { id, tags, json } => {
            let h = c.set_host_tags(&id, &tags).await?;
            if json {
                print_json(&h)?;
            } else {
                println!(
                    "{}: {}",
                    h.id,
                    if h.tags.is_empty() {
                        "no tags".to_string()
                    } else {
                        h.tags.join(", ")
                    }
                );
            }
        }
        HostCommand::Drain { id, json } => {
            let h = c.drain_host(&id).await?;
            if json {
                print_json(&h)?;
            } else {
                println!(
                    "{} is {}: it keeps its sandboxes and takes no new ones",
                    h.id, h.status
                );
            }
        }
        HostCommand::Undrain { id, json } => {
            let h = c.undrain_host(&id).await?;
            if json {
                print_json(&h)?;
            } else {
                println!("{} is {} again", h.id, h.status);
            }
        }
        HostCommand::Delete { id, force, json } => match c.delete_host(&id, force).await {
            Ok(()) => {
                if json {
                    print_json(&serde_json::json!({ "id": id, "deleted": true }))?;
                } else {
                    println!("{id} deleted");
                }
            }
            Err(super::client::ClientError::Api {
                code,
                sandbox_ids: Some(ids),
                ..
            }) if code == "host_has_sandboxes" => {
                eprintln!("host {id} still runs {} sandbox(es):", ids.len());
                for s in &ids {
                    eprintln!("  {s}");
                }
                eprintln!("delete them first, or run again with --force to destroy them");
                return Ok(1);
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(0)
}

pub async fn key(cmd: KeyCommand) -> anyhow::Result<i32> {
    let c = client()?;
    match cmd {
        KeyCommand::Create { name, json } => {
            let k = c.create_key(&name).await?;
            if json {
                print_json(&k)?;
            } else {
                println!("{}", k.key.as_deref().unwrap_or(""));
                eprintln!("API key {} created; it is shown only this once", k.id);
            }
        }
        KeyCommand::List { json } => {
            let keys = c.list_keys().await?;
            if json {
                print_json(&keys)?;
            } else {
                table(
                    &["ID", "NAME", "PREFIX", "CREATED", "LAST USED"],
                    keys.iter()
                        .map(|k| {
                            vec![
                                k.id.clone(),
                                k.name.clone(),
                                format!("{}…", k.prefix),
                                format!("{} ago", age(k.created_at)),
                                k.last_used_at
                                    .map(|t| format!("{} ago", age(t)))
                                    .unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect(),
                );
            }
        }
        KeyCommand::Revoke { id } => {
            c.revoke_key(&id).await?;
            println!("{id} revoked");
        }
    }
    Ok(0)
}

/// The team a command is about: the one given, else the current one.
async fn team_or_current(c: &ApiClient, team: Option<String>) -> anyhow::Result<String> {
    match team {
        Some(t) => Ok(t),
        None => c
            .me()
            .await?
            .team_id
            .context("you are not in any active team; pass --team"),
    }
}

pub async fn team(cmd: TeamCommand) -> anyhow::Result<i32> {
    let c = client()?;
    match cmd {
        TeamCommand::List { json } => {
            let teams = c.list_teams().await?;
            let current = c.me().await?.team_id;
            if json {
                print_json(&teams)?;
            } else {
                table(
                    &["", "ID", "NAME", "ROLE"],
                    teams
                        .iter()
                        .map(|t| {
                            vec![
                                if current.as_deref() == Some(t.id.as_str()) {
                                    "*".into()
                                } else {
                                    String::new()
                                },
                                t.id.clone(),
                                t.name.clone(),
                                t.role.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TeamCommand::Create { name, json } => {
            let t = c.create_team(&name).await?;
            if json {
                print_json(&t)?;
            } else {
                println!("{}", t.id);
                eprintln!(
                    "team {} created; `sandboxctl team switch {}` to work in it",
                    t.name, t.id
                );
            }
        }
        TeamCommand::Switch { team } => {
            let r = c.switch_team(&team).await?;
            let mut cfg = config::load()?;
            cfg.token = Some(r.token);
            config::save(&cfg)?;
            println!("now working in team {team}");
        }
        TeamCommand::Members { team, json } => {
            let id = team_or_current(&c, team).await?;
            let t = c.get_team(&id).await?;
            if json {
                print_json(&t)?;
            } else {
                println!("{} ({})", t.team.name, t.team.id);
                table(
                    &["USER", "NAME", "EMAIL", "ROLE"],
                    t.members
                        .iter()
                        .map(|m| {
                            vec![
                                m.user_id.clone(),
                                m.name.clone(),
                                m.email.clone(),
                                m.role.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TeamCommand::Add { email, role, team } => {
            let id = team_or_current(&c, team).await?;
            let m = c.add_member(&id, &email, &role).await?;
            println!("{} <{}> added to {id} as {}", m.name, m.email, m.role);
        }
        TeamCommand::Remove { user_id, team } => {
            let id = team_or_current(&c, team).await?;
            c.remove_member(&id, &user_id).await?;
            println!("{user_id} removed from {id}");
        }
        TeamCommand::Role {
            user_id,
            role,
            team,
        } => {
            let id = team_or_current(&c, team).await?;
            let m = c.set_role(&id, &user_id, &role).await?;
            println!("{} is now {} in {id}", m.name, m.role);
        }
        TeamCommand::Rename { name, team } => {
            let id = team_or_current(&c, team).await?;
            let t = c.rename_team(&id, &name).await?;
            println!("{} renamed to {}", t.id, t.name);
        }
        TeamCommand::Leave { team } => {
            c.leave_team(&team).await?;
            println!("you left {team}");
        }
        TeamCommand::Delete { team, yes } => {
            if !yes {
                bail!("deleting a team destroys its sandboxes: pass --yes to confirm");
            }
            c.delete_team(&team).await?;
            println!("{team} deleted");
        }
    }
    Ok(0)
}

async fn files(c: &ApiClient, cmd: FilesCommand) -> anyhow::Result<i32> {
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
            eprintln!("{} bytes written to {}", e.size, e.path);
        }
        FilesCommand::Ls { id, path, json } => {
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
                                crate::proto::api::FileKind::Dir => "d",
                                crate::proto::api::FileKind::Symlink => "l",
                                crate::proto::api::FileKind::File => "-",
                                crate::proto::api::FileKind::Other => "?",
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
        FilesCommand::Stat { id, path, json } => {
            let e = c.stat_file(&id, &path).await?;
            if json {
                print_json(&e)?;
            } else {
                println!(
                    "{} {:?} {} bytes mode {:o}",
                    e.path,
                    e.kind,
                    e.size,
                    e.mode & 0o7777
                );
            }
        }
        FilesCommand::Mkdir { id, path, parents } => {
            let e = c.mkdir(&id, &path, parents).await?;
            println!("{}", e.path);
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
            let n = r["hosts"].as_array().map(Vec::len).unwrap_or(0);
            eprintln!("building {name} on {n} host(s)");
            for f in r["failed"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {}: {}",
                    f["host_id"].as_str().unwrap_or("?"),
                    f["error"].as_str().unwrap_or("?")
                );
            }
            if no_wait {
                return Ok(0);
            }
            let mut last = String::new();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let st = c.template_build_status(&name).await?;
                let hosts = st["hosts"].as_array().cloned().unwrap_or_default();
                let line = hosts
                    .iter()
                    .map(|h| {
                        format!(
                            "{}: {} {}",
                            h["host_id"].as_str().unwrap_or("?"),
                            h["status"].as_str().unwrap_or("?"),
                            h["progress"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                if hosts.iter().all(|h| h["status"] != "building") {
                    let failed = hosts
                        .iter()
                        .any(|h| h["status"] == "failed" || h["error"].is_string());
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
