//! Signing up, logging in and out, and who the stored token belongs to.

use std::io::Read;

use anyhow::{Context, bail};

use super::output::print_json;
use super::{client, config};
use crate::cli::client::ApiClient;
use crate::cli::config::CliConfig;
use crate::cli::{LoginArgs, SignupArgs};
use crate::proto::api::SignupRequest;

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

pub async fn signup(a: SignupArgs) -> anyhow::Result<i32> {
    let pw = read_password(a.password_stdin)?;
    let c = ApiClient::new(&a.server, None);
    let bootstrap_token = match &a.bootstrap_token_file {
        None => None,
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the bootstrap token from {}", f.display()))?
                .trim()
                .to_string(),
        ),
    };
    let r = c
        .signup_with(&SignupRequest {
            email: a.email.clone(),
            password: pw,
            name: a.name.clone(),
            invite: a
                .invite
                .as_deref()
                .map(|i| crate::cli::client::teams::invite_token(i).to_string()),
            bootstrap_token,
        })
        .await?;
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
