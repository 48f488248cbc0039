//! `host …`: register, list, inspect, tag, drain and delete the hosts that run sandboxes.

use super::client;
use super::output::{age, print_json, table};
use crate::cli::HostCommand;
use crate::cli::client::ClientError;
use crate::proto::api::{CreateHostRequest, HostResponse};

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
                    // A BYOC agent reports these: another team's words.
                    println!("accel: {}", super::terminal::line(r));
                }
                if let Some(c) = &h.cgroups {
                    println!("cgroups: {}", super::terminal::line(c));
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
            Err(ClientError::Api {
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
