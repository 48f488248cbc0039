//! The client's address: the TCP peer, or for a peer in `--trusted-proxy` the address that
//! peer's `X-Forwarded-For` names (the nearest hop that is not itself a trusted proxy).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::proto::net::Cidr;
use crate::server::AppState;

/// The address rate limits and lockouts count against.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| anyhow::anyhow!("no peer address on the connection"))?;
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.settings.limits.trusted_proxies,
        )))
    }
}

/// Walks `X-Forwarded-For` from the right while the hop so far is trusted; the first address
/// not in `trusted` is the client. Anything unparsable stops the walk at the last good hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(canonical(ip)));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    canonical(client)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// An IPv4 address mapped into IPv6 counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = xff(&["198.51.100.1, 203.0.113.5"]);
        assert_eq!(client_ip(ip("192.0.2.9"), &h, &trusted), ip("192.0.2.9"));
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.5"));
        // Trusted hops are skipped; a client cannot pick its address by prepending one.
        let h = xff(&["6.6.6.6", "203.0.113.5, 10.9.9.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.5"));
        // Garbage stops the walk at the last good hop.
        let h = xff(&["203.0.113.5, nonsense, 10.9.9.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("10.9.9.9"));
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(
                ip("::ffff:10.1.2.3"),
                &xff(&["[2001:db8::1]:443"]),
                &trusted
            ),
            ip("2001:db8::1")
        );
    }
}
