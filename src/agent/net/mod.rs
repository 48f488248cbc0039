//! Sandbox networking (docs/ARCHITECTURE.md#isolation): every sandbox with a network gets a
//! network namespace of its own on this host, with its QEMU inside it on a tap device.
//!
//! ```text
//!  guest 10.0.2.15 ── tap0 (10.0.2.2, 10.0.2.3) ─[namespace: policy, NAT]─ up0 (pool .2)
//!                                                                          │ veth
//!  host:  sbx<slot> (pool .1) ─[host table: no way into the host, masquerade]─ uplink
//! ```
//!
//! Every guest sees the same address, gateway and DNS server (a snapshot restores unchanged);
//! the namespace masquerades it to its own address from the agent's pool (a /30 per slot),
//! and the host masquerades the pool behind its uplink. The rules ([`rules`]) live in the
//! namespace, so they go away with it; the host's one table sends nothing from a sandbox into
//! the host itself. DNS: the agent binds a socket at the guest's DNS address inside each
//! namespace and forwards queries to its upstream ([`dns`]), so the host's resolvers may be on
//! loopback or private addresses that the sandbox itself never reaches.
//!
//! Slots are claimed through the kernel: the host-side interface is `sbx<slot>`, and creating
//! one whose name exists fails, so two agents on one host never share an address. A namespace
//! is called `sbx-<agent tag>-<vm id>`: an agent's reconcile touches only its own.

pub mod dns;
pub mod rules;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::proto::net::{Cidr, EgressPolicy};
pub use rules::OperatorPolicy;

/// Where named namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses the namespaces are masqueraded to, a /30 per sandbox.
    pub pool: Cidr,
    /// The resolver DNS queries go to (None: the first nameserver of /etc/resolv.conf).
    pub dns: Option<IpAddr>,
    pub operator: OperatorPolicy,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            pool: Cidr::parse(DEFAULT_POOL).expect("default pool parses"),
            dns: None,
            operator: OperatorPolicy::default(),
        }
    }
}

pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// A sandbox's place in the network: its slot (host interface `sbx<slot>`, addresses) and the
/// policy in force. Kept in the VM's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxNet {
    pub slot: u32,
    pub policy: EgressPolicy,
}

pub struct Network {
    cfg: NetConfig,
    /// Names this agent's namespaces.
    tag: String,
    upstream: Option<SocketAddr>,
    /// Slots this agent holds.
    slots: Mutex<BTreeSet<u32>>,
    dns: Mutex<HashMap<String, dns::Forwarder>>,
}

impl Network {
    /// Checks the tools, turns on forwarding and installs the host's table.
    pub async fn start(cfg: NetConfig, data_dir: &Path) -> anyhow::Result<Network> {
        let IpAddr::V4(_) = cfg.pool.addr else {
            bail!("--network-pool must be an IPv4 network");
        };
        if cfg.pool.prefix > 28 {
            bail!("--network-pool {} is too small (at most /28)", cfg.pool);
        }
        for tool in ["ip", "nft"] {
            if which(tool).is_none() {
                bail!(
                    "`{tool}` is not installed: sandbox networking needs iproute2 and nftables \
                     (apt-get install iproute2 nftables)"
                );
            }
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")?;
        nft(&rules::host_table(&cfg.pool), None)
            .await
            .context("install the host's nftables table")?;
        let upstream = match cfg.dns {
            Some(ip) => Some(SocketAddr::new(ip, 53)),
            None => dns::system_resolver(),
        };
        if upstream.is_none() {
            tracing::warn!(
                "no DNS resolver found in /etc/resolv.conf; sandboxes will not resolve names (set --sandbox-dns)"
            );
        }
        Ok(Network {
            cfg,
            tag: agent_tag(data_dir),
            upstream,
            slots: Mutex::new(BTreeSet::new()),
            dns: Mutex::new(HashMap::new()),
        })
    }

    pub fn netns_name(&self, vm_id: &str) -> String {
        format!("sbx-{}-{vm_id}", self.tag)
    }

    pub fn netns_path(&self, vm_id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(vm_id))
    }

    fn slot_count(&self) -> u32 {
        let bits = 32 - u32::from(self.cfg.pool.prefix);
        ((1u64 << bits) / 4).min(u64::from(u32::MAX)) as u32
    }

    /// (host side, namespace side) addresses of `slot`.
    fn addresses(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let IpAddr::V4(base) = self.cfg.pool.addr else {
            unreachable!("checked at start")
        };
        let b = u32::from(base) + slot * 4;
        (Ipv4Addr::from(b + 1), Ipv4Addr::from(b + 2))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the namespace of a new sandbox with `policy` in force. Returns its slot.
    pub async fn create(&self, vm_id: &str, policy: &EgressPolicy) -> anyhow::Result<SandboxNet> {
        let started = Instant::now();
        let name = self.netns_name(vm_id);
        // A namespace of the same name is left over from a create that did not finish.
        let _ = run("ip", &["netns", "del", &name], None).await;
        run("ip", &["netns", "add", &name], None).await?;
        let made = self.fill(vm_id, &name, policy).await;
        match made {
            Ok(slot) => {
                tracing::debug!(vm = %vm_id, slot, ms = started.elapsed().as_millis() as u64, "sandbox network ready");
                Ok(SandboxNet {
                    slot,
                    policy: policy.clone(),
                })
            }
            Err(e) => {
                self.destroy(vm_id, None).await;
                Err(e)
            }
        }
    }

    /// Claims a slot (veth pair into `name`), configures the namespace and its rules.
    async fn fill(&self, vm_id: &str, name: &str, policy: &EgressPolicy) -> anyhow::Result<u32> {
        let slot = self.claim_slot(name).await?;
        let configured = self.configure(vm_id, name, slot, policy).await;
        if configured.is_err() {
            // The interface goes with the namespace; the slot is free again.
            self.slots().remove(&slot);
        }
        configured.map(|()| slot)
    }

    /// Addresses, routes, the tap, the rules and the DNS socket of a namespace holding `slot`.
    async fn configure(
        &self,
        vm_id: &str,
        name: &str,
        slot: u32,
        policy: &EgressPolicy,
    ) -> anyhow::Result<()> {
        let (host_ip, ns_ip) = self.addresses(slot);
        let iface = format!("{}{slot}", rules::HOST_IFACE_PREFIX);
        let host = format!("addr add {host_ip}/30 dev {iface}\nlink set {iface} up\n");
        run("ip", &["-batch", "-"], Some(&host)).await?;
        let (tap, up) = (rules::NS_TAP, rules::NS_UPLINK);
        let inside = format!(
            "link set lo up\n\
             addr add {ns_ip}/30 dev {up}\n\
             link set {up} up\n\
             route add default via {host_ip}\n\
             tuntap add dev {tap} mode tap\n\
             addr add {gw}/24 dev {tap}\n\
             addr add {dnsip}/32 dev {tap}\n\
             link set {tap} up\n",
            gw = rules::GUEST_GATEWAY,
            dnsip = rules::GUEST_DNS,
        );
        run("ip", &["-n", name, "-batch", "-"], Some(&inside)).await?;
        let table = rules::sandbox_table(policy, &self.cfg.pool, &self.cfg.operator);
        let socket = in_netns(self.netns_path_of(name), move || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .context("turn on forwarding in the namespace")?;
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
            nft_blocking(&table)?;
            dns::bind_in_namespace()
        })
        .await?;
        self.start_dns(vm_id, socket)
    }

    fn netns_path_of(&self, name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// The lowest slot free on this host: `sbx<slot>` is created with its peer inside `name`;
    /// a name that exists belongs to another sandbox (of this agent or another).
    async fn claim_slot(&self, name: &str) -> anyhow::Result<u32> {
        let count = self.slot_count();
        let mut tried = 0;
        let mut candidate = 0u32;
        loop {
            let slot = {
                let mut held = self.slots();
                while held.contains(&candidate) {
                    candidate += 1;
                }
                if candidate >= count {
                    bail!(
                        "no free address in the sandbox network pool {}",
                        self.cfg.pool
                    );
                }
                held.insert(candidate);
                candidate
            };
            let iface = format!("{}{slot}", rules::HOST_IFACE_PREFIX);
            let made = run(
                "ip",
                &[
                    "link",
                    "add",
                    &iface,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    rules::NS_UPLINK,
                    "netns",
                    name,
                ],
                None,
            )
            .await;
            match made {
                Ok(()) => return Ok(slot),
                Err(e) => {
                    self.slots().remove(&slot);
                    tried += 1;
                    if !format!("{e:#}").contains("exists") || tried > 256 {
                        return Err(e);
                    }
                    candidate = slot + 1;
                }
            }
        }
    }

    /// Replaces the rules of a sandbox's namespace (policy updates). Atomic: `nft -f` applies
    /// the whole table or nothing.
    pub async fn apply(&self, vm_id: &str, policy: &EgressPolicy) -> anyhow::Result<()> {
        let table = rules::sandbox_table(policy, &self.cfg.pool, &self.cfg.operator);
        nft(&table, Some(&self.netns_name(vm_id))).await
    }

    /// Takes back a sandbox a previous agent left: its namespace must still be there (its slot
    /// interface with it); its DNS forwarder is started again.
    pub async fn reattach(&self, vm_id: &str, net: &SandboxNet) -> anyhow::Result<()> {
        let path = self.netns_path(vm_id);
        if !path.exists() {
            bail!("its network namespace is gone");
        }
        self.slots().insert(net.slot);
        let socket = in_netns(path, dns::bind_in_namespace).await?;
        self.start_dns(vm_id, socket)?;
        // The policy may have been changed while no agent ran: the record is what counts.
        self.apply(vm_id, &net.policy).await
    }

    fn start_dns(&self, vm_id: &str, socket: std::net::UdpSocket) -> anyhow::Result<()> {
        let fwd = dns::Forwarder::start(socket, self.upstream, vm_id.to_string())?;
        if let Some(old) = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm_id.to_string(), fwd)
        {
            old.stop();
        }
        Ok(())
    }

    /// Removes a sandbox's namespace (its veth pair, tap and rules go with it).
    pub async fn destroy(&self, vm_id: &str, net: Option<&SandboxNet>) {
        if let Some(f) = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id)
        {
            f.stop();
        }
        let name = self.netns_name(vm_id);
        if let Err(e) = run("ip", &["netns", "del", &name], None).await
            && self.netns_path(vm_id).exists()
        {
            tracing::warn!(vm = %vm_id, error = %format!("{e:#}"), "could not remove the network namespace");
        }
        if let Some(n) = net {
            self.slots().remove(&n.slot);
        }
    }

    /// Removes this agent's namespaces that belong to none of `known` (left by a crash).
    pub async fn reconcile(&self, known: &[String]) -> usize {
        let prefix = format!("sbx-{}-", self.tag);
        let mut removed = 0;
        for name in namespaces_with_prefix(&prefix) {
            let id = &name[prefix.len()..];
            if known.iter().any(|k| k == id) {
                continue;
            }
            tracing::info!(netns = %name, "removing a network namespace no VM owns");
            if run("ip", &["netns", "del", &name], None).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Names of this agent's namespaces (for checks and tests).
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&format!("sbx-{}-", self.tag))
    }
}

/// Named network namespaces whose names start with `prefix`, sorted.
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Times `runs` sandbox network setups and teardowns exactly as the agent makes them (default
/// policy), under a scratch agent identity: (setup, teardown) durations, for the bench.
pub async fn bench_setup(
    cfg: NetConfig,
    runs: usize,
) -> anyhow::Result<(Vec<std::time::Duration>, Vec<std::time::Duration>)> {
    let dir = std::env::temp_dir().join(format!("sandboxctl-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let net = Network::start(cfg, &dir).await?;
        let (mut setup, mut teardown) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let id = format!("sbx_benchnet{i}");
            let t = Instant::now();
            let place = net.create(&id, &EgressPolicy::default()).await?;
            setup.push(t.elapsed());
            let t = Instant::now();
            net.destroy(&id, Some(&place)).await;
            teardown.push(t.elapsed());
        }
        anyhow::Ok((setup, teardown))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What names an agent's namespaces: a digest of its data dir (`sbx-<tag>-<vm id>`).
pub fn agent_tag(data_dir: &Path) -> String {
    let canon = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    crate::crypto::sha256_hex(canon.to_string_lossy().as_bytes())[..6].to_string()
}

/// Removes every namespace of the agent whose data dir is `data_dir` (tests and `agent
/// cleanup`: its VMs must be gone already).
pub fn remove_namespaces_of(data_dir: &Path) -> usize {
    namespaces_with_prefix(&format!("sbx-{}-", agent_tag(data_dir)))
        .iter()
        .filter(|n| {
            std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status()
                .is_ok_and(|s| s.success())
        })
        .count()
}

/// Runs `f` on a fresh thread that has entered the namespace at `path` (a thread of its own:
/// the runtime's threads never change namespace). Processes `f` starts are in it too.
async fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let r = (|| {
                let ns = std::fs::File::open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                // SAFETY: setns on this thread only, with a namespace fd we hold.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("enter {}", path.display()));
                }
                f()
            })();
            let _ = tx.send(r);
        })
        .context("start a thread")?;
    rx.await.context("namespace thread died")?
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a tool with `stdin`, failing with its error output.
async fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run {tool}"))?;
    if let Some(input) = stdin {
        let mut s = child.stdin.take().context("stdin")?;
        s.write_all(input.as_bytes()).await?;
        drop(s);
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Applies an nft script, inside the named namespace when given.
async fn nft(script: &str, netns: Option<&str>) -> anyhow::Result<()> {
    match netns {
        None => run("nft", &["-f", "-"], Some(script)).await,
        Some(ns) => run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).await,
    }
}

fn nft_blocking(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
