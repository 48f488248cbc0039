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

/// Ends the stored token's session on the server, then forgets the token (even when the server
/// cannot be reached: the token is gone from here either way).
pub async fn logout() -> anyhow::Result<i32> {
    let mut cfg = config::load()?;
    let Some(token) = cfg.token.take() else {
        println!("not logged in");
        return Ok(0);
    };
    let mut ended = true;
    // API keys have no session (revoke them with `sandboxctl key revoke`).
    if !token.starts_with("sk_")
        && let Some(server) = &cfg.server
    {
        match ApiClient::new(server, Some(token)).logout().await {
            Ok(()) => {}
            // The session had ended already.
            Err(e) if e.status() == Some(401) => {}
            Err(e) => {
                eprintln!("warning: could not end the session on the server: {e}");
                ended = false;
            }
        }
    }
    config::save(&cfg)?;
    println!(
        "logged out{}",
        if ended {
            ""
        } else {
            " here (the token is forgotten; it stays valid until it expires)"
        }
    );
    Ok(if ended { 0 } else { 1 })
}

/// Reads one line of a password: with a prompt and no echo on a terminal, else a plain line.
fn read_secret_line(prompt: &str, input: &mut impl std::io::BufRead) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdin().is_terminal();
    let echo = tty.then(NoEcho::enable).flatten();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let n = input
        .read_line(&mut line)
        .context("reading standard input")?;
    if tty {
        eprintln!();
    }
    drop(echo);
    if n == 0 {
        bail!(
            "standard input ended before the {}",
            prompt.trim_end_matches([':', ' '])
        );
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns terminal echo off until dropped.
struct NoEcho {
    saved: libc::termios,
}

impl NoEcho {
    fn enable() -> Option<NoEcho> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(NoEcho { saved })
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// `sandboxctl password`: the current password, then the new one, a line each on stdin.
pub async fn password() -> anyhow::Result<i32> {
    let c = client()?;
    if c.token().is_some_and(|t| t.starts_with("sk_")) {
        bail!("an API key has no password: log in as a user (`sandboxctl login`) to change it");
    }
    let mut input = std::io::stdin().lock();
    let current = read_secret_line("current password: ", &mut input)?;
    let new = read_secret_line("new password: ", &mut input)?;
    if current.is_empty() || new.is_empty() {
        bail!("the password is empty");
    }
    let r = c.change_password(&current, &new).await?;
    println!(
        "password changed; {} other session{} signed out",
        r.ended_sessions,
        if r.ended_sessions == 1 { "" } else { "s" }
    );
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
