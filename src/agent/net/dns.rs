//! The DNS server a sandbox sees at 10.0.2.3: a UDP socket the agent binds inside the sandbox's
//! namespace, whose queries the agent forwards from the host to its upstream resolver. The
//! guest never talks to the resolver itself (it may sit on the host's loopback or a private
//! address the policy closes), and only DNS messages cross.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::rules::GUEST_DNS;

/// Queries of one sandbox in flight at once; more are dropped (the guest retries).
const IN_FLIGHT: usize = 32;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest DNS message over UDP we pass (EDNS0 sizes included).
const MAX_MESSAGE: usize = 4096;

/// The first `nameserver` of /etc/resolv.conf.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// Binds the guest's DNS address, port 53; call on a thread inside the namespace.
pub fn bind_in_namespace() -> anyhow::Result<UdpSocket> {
    let addr: SocketAddr = format!("{GUEST_DNS}:53").parse().expect("address parses");
    let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr} in the namespace"))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// One sandbox's forwarder task.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub fn start(
        socket: UdpSocket,
        upstream: Option<SocketAddr>,
        vm_id: String,
    ) -> anyhow::Result<Forwarder> {
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let task = tokio::spawn(async move {
            let Some(upstream) = upstream else { return };
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let (n, from) = match socket.recv_from(&mut buf).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(vm = %vm_id, error = %e, "DNS socket");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Shortest real query: a 12-byte header and a question.
                if n < 17 {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let query = buf[..n].to_vec();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match ask(upstream, &query).await {
                        Ok(Some(answer)) => {
                            let _ = socket.send_to(&answer, from).await;
                        }
                        Ok(None) => tracing::debug!(%upstream, "DNS upstream did not answer"),
                        Err(e) => tracing::debug!(%upstream, error = %e, "DNS upstream"),
                    }
                });
            }
        });
        Ok(Forwarder { task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Sends `query` to `upstream` and returns the answer with the same id.
async fn ask(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("parses")
    } else {
        "[::]:0".parse().expect("parses")
    };
    let s = tokio::net::UdpSocket::bind(bind).await?;
    s.connect(upstream).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        if n >= 12 && buf[..2] == query[..2] {
            return Ok(Some(buf[..n].to_vec()));
        }
    }
}
