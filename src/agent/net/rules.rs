//! The nftables rules, as text for `nft -f -`: pure, so they are unit-tested without a kernel.
//!
//! Two tables. The host's `inet sandboxctl` (one per host, shared by every agent with the same
//! pool): nothing that comes from a sandbox's veth reaches the host itself (every address of
//! every interface, whatever it is), sandboxes never reach each other, replies find their way
//! back, and the pool is masqueraded behind the host's uplink. Each sandbox's namespace holds
//! `inet sandbox`: its egress policy on the path from the guest's tap to its veth, DNS to the
//! agent's resolver at the guest's DNS address, and masquerade to the namespace's pool address.
//! A namespace's table goes away with the namespace.

use std::fmt::Write;

use crate::proto::net::{Cidr, EgressPolicy};

/// Interface names. Host side: `sbx<slot>`; inside a namespace: the uplink and the guest's tap.
pub const HOST_IFACE_PREFIX: &str = "sbx";
pub const NS_UPLINK: &str = "up0";
pub const NS_TAP: &str = "tap0";

/// What every guest sees (the template's init configures it; snapshots restore it unchanged).
pub const GUEST_NET: &str = "10.0.2.0/24";
pub const GUEST_GATEWAY: &str = "10.0.2.2";
pub const GUEST_DNS: &str = "10.0.2.3";

/// Denied by default, but `allow_out` may open them (an internal mirror, a private service).
pub const DEFAULT_DENY_V4: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
];
/// Never reachable from a sandbox, whatever its policy says: "this network", loopback,
/// link-local (cloud metadata), multicast and reserved.
pub const ALWAYS_DENY_V4: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Operator-wide additions (agent flags `--egress-allow` / `--egress-deny`). What the operator
/// denies no sandbox policy opens.
#[derive(Debug, Clone, Default)]
pub struct OperatorPolicy {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// The host table's name: one per pool, so agents (and checks) with other pools on the same
/// host never replace each other's.
pub fn host_table_name(pool: &Cidr) -> String {
    let p: String = pool
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("sandboxctl_{p}")
}

/// The host's table. Idempotent: `table` is created if missing, then flushed and refilled.
pub fn host_table(pool: &Cidr) -> String {
    let p = HOST_IFACE_PREFIX;
    let t = host_table_name(pool);
    format!(
        "table inet {t}\n\
         flush table inet {t}\n\
         table inet {t} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -5; policy accept;\n\
         \t\tiifname \"{p}*\" drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority -5; policy accept;\n\
         \t\tiifname \"{p}*\" oifname \"{p}*\" drop\n\
         \t\tiifname \"{p}*\" meta nfproto ipv4 accept\n\
         \t\tiifname \"{p}*\" drop\n\
         \t\toifname \"{p}*\" ct state established,related accept\n\
         \t\toifname \"{p}*\" drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tip saddr {pool} oifname != \"{p}*\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

fn set(out: &mut String, name: &str, cidrs: &[String]) {
    let _ = writeln!(
        out,
        "\tset {name} {{\n\t\ttype ipv4_addr; flags interval; auto-merge;"
    );
    if !cidrs.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", cidrs.join(", "));
    }
    out.push_str("\t}\n");
}

fn v4(list: &[String]) -> Vec<String> {
    list.iter()
        .filter_map(|s| Cidr::parse(s).ok())
        .filter(Cidr::is_ipv4)
        .map(|c| c.to_string())
        .collect()
}

/// A sandbox namespace's table for `policy` (already validated). IPv6 is not routed out of a
/// namespace: guests get IPv4 only, so every IPv6 packet is dropped.
pub fn sandbox_table(policy: &EgressPolicy, pool: &Cidr, operator: &OperatorPolicy) -> String {
    let mut closed: Vec<String> = ALWAYS_DENY_V4.iter().map(|s| s.to_string()).collect();
    closed.push(pool.to_string());
    closed.extend(
        operator
            .deny
            .iter()
            .filter(|c| c.is_ipv4())
            .map(Cidr::to_string),
    );
    let mut allow = v4(&policy.allow_out);
    allow.extend(
        operator
            .allow
            .iter()
            .filter(|c| c.is_ipv4())
            .map(Cidr::to_string),
    );
    let mut deny: Vec<String> = DEFAULT_DENY_V4.iter().map(|s| s.to_string()).collect();
    deny.extend(v4(&policy.deny_out));

    let mut s =
        String::from("table inet sandbox\nflush table inet sandbox\ntable inet sandbox {\n");
    set(&mut s, "closed", &closed);
    set(&mut s, "allow", &allow);
    set(&mut s, "deny", &deny);
    let (tap, up) = (NS_TAP, NS_UPLINK);
    let _ = write!(
        s,
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tmeta nfproto ipv6 drop\n\
         \t\tiifname \"{up}\" oifname \"{tap}\" ct state established,related accept\n\
         \t\tiifname != \"{tap}\" drop\n\
         \t\toifname != \"{up}\" drop\n\
         \t\tip daddr @closed drop\n\
         \t\tip daddr @allow accept\n"
    );
    if policy.internet {
        s.push_str("\t\tip daddr @deny drop\n\t\taccept\n");
    }
    let _ = write!(
        s,
        "\t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy drop;\n\
         \t\tiif \"lo\" accept\n\
         \t\tiifname \"{tap}\" ip daddr {GUEST_DNS} udp dport 53 accept\n\
         \t\tiifname \"{tap}\" ip daddr {GUEST_DNS} tcp dport 53 accept\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\toifname \"{up}\" masquerade\n\
         \t}}\n\
         }}\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Cidr {
        Cidr::parse("10.213.0.0/16").unwrap()
    }

    #[test]
    fn default_policy_closes_private_and_metadata_ranges() {
        let t = sandbox_table(
            &EgressPolicy::default(),
            &pool(),
            &OperatorPolicy::default(),
        );
        assert!(t.contains("169.254.0.0/16"));
        assert!(t.contains("127.0.0.0/8"));
        assert!(t.contains("10.213.0.0/16"), "the pool is closed");
        assert!(t.contains("elements = { 10.0.0.0/8, 100.64.0.0/10"));
        assert!(t.contains("ip daddr @deny drop\n\t\taccept"));
        assert!(t.contains("meta nfproto ipv6 drop"));
        // closed comes before allow, allow before deny.
        let (c, a, d) = (
            t.find("@closed drop").unwrap(),
            t.find("@allow accept").unwrap(),
            t.find("@deny drop").unwrap(),
        );
        assert!(c < a && a < d);
    }

    #[test]
    fn policy_lists_and_operator_lists_land_in_their_sets() {
        let p = EgressPolicy {
            internet: false,
            allow_out: vec!["10.99.0.1/32".into(), "fd00::/8".into()],
            deny_out: vec!["203.0.113.0/24".into()],
        };
        let op = OperatorPolicy {
            allow: vec![Cidr::parse("192.168.7.0/24").unwrap()],
            deny: vec![Cidr::parse("198.51.100.9").unwrap()],
        };
        let t = sandbox_table(&p, &pool(), &op);
        assert!(t.contains("elements = { 10.99.0.1/32, 192.168.7.0/24 }"));
        assert!(t.contains("198.51.100.9/32"));
        assert!(t.contains("203.0.113.0/24"));
        assert!(!t.contains("fd00"), "IPv6 entries are not routed");
        assert!(
            !t.contains("\t\taccept\n\t}"),
            "no internet: nothing but allow_out is accepted"
        );
    }

    #[test]
    fn host_table_masquerades_the_pool_and_shuts_the_host() {
        let t = host_table(&pool());
        assert!(t.contains("iifname \"sbx*\" drop"));
        assert!(t.contains("ip saddr 10.213.0.0/16 oifname != \"sbx*\" masquerade"));
        assert!(t.starts_with("table inet sandboxctl_10_213_0_0_16\n"));
    }
}
