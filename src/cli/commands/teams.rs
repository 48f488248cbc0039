//! `team …`: teams, their members and roles, and which one the stored token works in.

use anyhow::{Context, bail};

use super::output::{print_json, table, until};
use super::{client, config};
use crate::cli::TeamCommand;
use crate::cli::client::ApiClient;

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
                                t.role.to_string(),
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
                                m.role.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TeamCommand::Invite { role, team, json } => {
            let id = team_or_current(&c, team).await?;
            let inv = c.create_invite(&id, &role).await?;
            if json {
                print_json(&inv)?;
            } else {
                println!("{}", inv.url);
                eprintln!(
                    "invite {} to {id} as {} (one use, expires {}): send the link; a new user signs up with it, an existing one runs `sandboxctl team join LINK`",
                    inv.invite.id,
                    inv.invite.role,
                    until(inv.invite.expires_at)
                );
            }
        }
        TeamCommand::Invites { team, json } => {
            let id = team_or_current(&c, team).await?;
            let list = c.list_invites(&id).await?;
            if json {
                print_json(&list)?;
            } else {
                table(
                    &["ID", "ROLE", "CREATED BY", "EXPIRES"],
                    list.iter()
                        .map(|i| {
                            vec![
                                i.id.clone(),
                                i.role.to_string(),
                                i.created_by.clone(),
                                until(i.expires_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TeamCommand::RevokeInvite { invite_id, team } => {
            let id = team_or_current(&c, team).await?;
            c.revoke_invite(&id, &invite_id).await?;
            println!("invite {invite_id} revoked");
        }
        TeamCommand::Join { invite } => {
            let t = c.accept_invite(&invite).await?;
            println!(
                "you joined {} ({}) as {}; `sandboxctl team switch {}` to work in it",
                t.name, t.id, t.role, t.id
            );
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
        TeamCommand::Quota { team, set, json } => {
            let id = team_or_current(&c, team).await?;
            let q = match set {
                Some(q) => c.set_team_quota(&id, &q).await?,
                None => c.team_quota(&id).await?,
            };
            if json {
                print_json(&q)?;
            } else {
                let limit = |v: Option<u64>, own: Option<u64>| {
                    let v = v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
                    if own.is_some() {
                        format!("{v} (team's own)")
                    } else {
                        v
                    }
                };
                table(
                    &["", "USED", "LIMIT"],
                    vec![
                        vec![
                            "sandboxes".into(),
                            q.usage.sandboxes.to_string(),
                            limit(
                                q.limits.sandboxes.map(u64::from),
                                q.overrides.sandboxes.map(u64::from),
                            ),
                        ],
                        vec![
                            "vcpus".into(),
                            q.usage.vcpus.to_string(),
                            limit(
                                q.limits.vcpus.map(u64::from),
                                q.overrides.vcpus.map(u64::from),
                            ),
                        ],
                        vec![
                            "memory_mb".into(),
                            q.usage.memory_mb.to_string(),
                            limit(q.limits.memory_mb, q.overrides.memory_mb),
                        ],
                    ],
                );
            }
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
