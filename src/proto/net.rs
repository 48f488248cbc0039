//! A sandbox's network setting and egress policy (docs/ARCHITECTURE.md#isolation), checked the
//! same way by the server (at create and update) and the agent (before it writes firewall rules).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Entries per list: the rules stay small and cheap to apply.
pub const MAX_CIDRS: usize = 64;

/// Where a sandbox may send traffic. `allow_out` wins over `deny_out` and over the default deny
/// list (private ranges); `internet: false` leaves only `allow_out`. The host, the sandbox
/// address pool, loopback, link-local (cloud metadata) and multicast stay closed whatever
/// `allow_out` says, and so does what the operator denies on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    #[serde(default = "yes")]
    pub internet: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

/// A refused field: (name, why).
pub type FieldError = (&'static str, String);

impl EgressPolicy {
    /// Every entry is a CIDR (or a bare address), at most [`MAX_CIDRS`] per list. Entries are
    /// rewritten to their canonical form (`10.0.0.7/8` → `10.0.0.0/8`).
    pub fn validate(&mut self) -> Result<(), FieldError> {
        for (field, list) in [
            ("network.allow_out", &mut self.allow_out),
            ("network.deny_out", &mut self.deny_out),
        ] {
            if list.len() > MAX_CIDRS {
                return Err((field, format!("at most {MAX_CIDRS} entries")));
            }
            for entry in list.iter_mut() {
                let c = Cidr::parse(entry).map_err(|why| (field, format!("{entry:?}: {why}")))?;
                *entry = c.to_string();
            }
        }
        Ok(())
    }
}

/// The `network` field of a sandbox create: `false` for no network device at all, `true` (the
/// default) for the default policy, or a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NetworkSetting {
    Enabled(bool),
    Policy(EgressPolicy),
}

impl NetworkSetting {
    /// None: no network device.
    pub fn policy(&self) -> Option<EgressPolicy> {
        match self {
            NetworkSetting::Enabled(false) => None,
            NetworkSetting::Enabled(true) => Some(EgressPolicy::default()),
            NetworkSetting::Policy(p) => Some(p.clone()),
        }
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `a.b.c.d` (a /32), `x::y/n` or `x::y` (a /128); host bits are cleared.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "not an IP address or CIDR".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_canonicalise() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::parse("fd00::1/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "1.2.3.4/x",
            "1.2.3/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.9.9".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
    }

    #[test]
    fn settings_and_policies() {
        let s: NetworkSetting = serde_json::from_str("false").unwrap();
        assert_eq!(s.policy(), None);
        let s: NetworkSetting = serde_json::from_str("true").unwrap();
        assert_eq!(s.policy(), Some(EgressPolicy::default()));
        let s: NetworkSetting =
            serde_json::from_str(r#"{"internet":false,"allow_out":["10.9.0.1/16"]}"#).unwrap();
        let mut p = s.policy().unwrap();
        assert!(!p.internet);
        p.validate().unwrap();
        assert_eq!(p.allow_out, vec!["10.9.0.0/16"]);
        assert!(serde_json::from_str::<NetworkSetting>(r#"{"internets":true}"#).is_err());
        let mut bad = EgressPolicy {
            deny_out: vec!["nope".into()],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "network.deny_out");
        let mut long = EgressPolicy {
            allow_out: vec!["1.1.1.1".into(); MAX_CIDRS + 1],
            ..Default::default()
        };
        assert_eq!(long.validate().unwrap_err().0, "network.allow_out");
    }
}
