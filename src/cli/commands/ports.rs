//! `sandbox port-forward ID [LOCAL:]PORT`: a local listener whose every connection is carried to
//! the sandbox's port through the server (one upgraded `/v1/sandboxes/{id}/ports/{port}` each).

use std::io::Write;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::client::ApiClient;

/// `PORT` or `LOCAL:PORT` as (local, remote); LOCAL defaults to PORT, 0 picks a free port.
pub fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str, zero_ok: bool| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| zero_ok || *n > 0)
            .ok_or_else(|| format!("'{p}' is not a port number (1 to 65535)"))
    };
    match s.split_once(':') {
        Some((local, remote)) => Ok((port(local, true)?, port(remote, false)?)),
        None => {
            let p = port(s, false)?;
            Ok((p, p))
        }
    }
}

pub async fn forward(c: &ApiClient, id: &str, local: u16, remote: u16) -> anyhow::Result<i32> {
    // Fail at once on a sandbox that is not there, not at the first connection.
    c.get_sandbox(id).await?;
    let listener = TcpListener::bind(("127.0.0.1", local))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{local}"))?;
    let addr = listener.local_addr()?;
    println!("forwarding {addr} -> {id} port {remote} (Ctrl-C to stop)");
    let _ = std::io::stdout().flush();
    loop {
        let (mut conn, peer) = tokio::select! {
            a = listener.accept() => a.context("accepting a connection")?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let (c, id) = (c.clone(), id.to_string());
        tokio::spawn(async move {
            match c.open_port(&id, remote).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        assert_eq!(parse_forward("8000"), Ok((8000, 8000)));
        assert_eq!(parse_forward("0:8000"), Ok((0, 8000)));
        assert_eq!(parse_forward("9000:80"), Ok((9000, 80)));
        for bad in ["0", "x", "1:0", "70000", "1:2:3"] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
    }
}
