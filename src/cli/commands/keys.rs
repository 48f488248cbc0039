//! `key …`: the team's API keys.

use super::client;
use super::output::{age, print_json, table};
use crate::cli::KeyCommand;

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
