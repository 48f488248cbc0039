//! Isolation (docs/ARCHITECTURE.md#isolation), each attack performed for real against a real server, agent and QEMU.
//!
//! "The internet" is a network namespace this test makes, reached from the host over a veth
//! pair with host routes: a public web server at 203.0.113.10, a DNS server at 203.0.113.53,
//! and stand-ins for a link-local (169.254.77.1) and a private (10.99.0.1) service on the same
//! web server. A policy that fails still sends nothing off this machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::{CreateSandboxRequest, ExecRequest};
use sandboxctl::proto::net::{EgressPolicy, NetworkSetting};

use crate::common::{TestAgent, TestServer, step, vm_permit, wait_until};

const PUBLIC: &str = "203.0.113.10";
const DNS: &str = "203.0.113.53";
const LINK_LOCAL: &str = "169.254.77.1";
const PRIVATE: &str = "10.99.0.1";
const NAME: &str = "web.sandboxctl.test";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stand-in internet: its namespace, veth pair, host routes and servers, all removed on drop.
struct Internet {
    ns: String,
    host_if: String,
    servers: Vec<Child>,
    _www: tempfile::TempDir,
}

const DNS_SERVER: &str = r#"
import socket, struct, sys
name, addr, listen = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((listen, 53))
while True:
    q, peer = s.recvfrom(4096)
    qid, flags, qd = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    question = q[12:i + 5]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    hit = ".".join(labels).lower() == name and qtype == 1
    head = struct.pack(">HHHHHH", qid, 0x8180 if hit else 0x8183, 1, 1 if hit else 0, 0, 0)
    ans = struct.pack(">HHHLH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr) if hit else b""
    s.sendto(head + question + ans, peer)
"#;

impl Internet {
    fn start() -> Internet {
        let tag = format!("{:04x}", rand::random::<u16>());
        let ns = format!("sctest-{tag}");
        let host_if = format!("sct{tag}h");
        ip(&["netns", "add", &ns]);
        let mut me = Internet {
            ns: ns.clone(),
            host_if: host_if.clone(),
            servers: Vec::new(),
            _www: tempfile::tempdir().unwrap(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "v0", "netns", &ns,
        ]);
        ip(&["addr", "add", "198.51.100.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for a in [
            "198.51.100.2/30",
            &format!("{PUBLIC}/32"),
            &format!("{DNS}/32"),
            &format!("{LINK_LOCAL}/32"),
            &format!("{PRIVATE}/32"),
        ] {
            ip(&["-n", &ns, "addr", "add", a, "dev", "v0"]);
        }
        ip(&["-n", &ns, "link", "set", "v0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", "198.51.100.1"]);
        for dst in [PUBLIC, DNS, LINK_LOCAL, PRIVATE] {
            ip(&["route", "add", &format!("{dst}/32"), "dev", &host_if]);
        }
        std::fs::write(me._www.path().join("index.html"), "hello from outside\n").unwrap();
        let www = me._www.path().to_string_lossy().to_string();
        me.servers.push(
            Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-m", "http.server", "80"])
                .args(["--bind", "0.0.0.0", "--directory", &www])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        me.servers.push(
            Command::new("ip")
                .args([
                    "netns", "exec", &ns, "python3", "-c", DNS_SERVER, NAME, PUBLIC, DNS,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        me
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        // The host end goes with its peer; the routes with the interface.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout_sec: Some(30),
        ..Default::default()
    }
}

/// An HTTP GET of `http://{addr}/` from inside the sandbox (busybox nc: the static busybox's
/// wget needs glibc's NSS): Some(body) or None when nothing answered.
async fn fetch(c: &ApiClient, id: &str, addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "80"));
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 3 {host} {port} 2>&1"
    );
    let r = c.exec(id, &sh(&script)).await.expect("exec");
    let body = r.stdout.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (r.stdout.starts_with("HTTP/1.")).then(|| body.unwrap_or_default())
}

/// The host's own addresses (every interface but loopback), IPv4.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ifname = w.nth(1)?;
            let addr = w.nth(1)?.split('/').next()?.to_string();
            (ifname != "lo" && !ifname.starts_with("sct")).then_some(addr)
        })
        .collect()
}

fn namespaces_of(ids: &[&str]) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| ids.iter().any(|id| n.ends_with(id)))
                .collect()
        })
        .unwrap_or_default()
}

fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> EgressPolicy {
    EgressPolicy {
        internet,
        allow_out: allow.iter().map(|s| s.to_string()).collect(),
        deny_out: deny.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn sandbox_network_reaches_the_internet_and_nothing_else() {
    let _vm = vm_permit().await;
    let net = Internet::start();
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let mut agent = TestAgent::start_with(&s, &admin, &["--sandbox-dns", DNS]).await;

    // A web server on every address of the host, standing for the control plane and anything
    // else a host runs.
    let host_port = crate::common::free_port();
    let mut host_web = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &host_port.to_string(),
            "--bind",
            "0.0.0.0",
        ])
        .current_dir(net._www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill_host_web = scopeguard(move || {
        let _ = host_web.kill();
        let _ = host_web.wait();
    });

    let a = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let b = admin
        .create_sandbox(&CreateSandboxRequest {
            network: Some(NetworkSetting::Policy(policy(true, &[], &[PUBLIC]))),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.network, Some(EgressPolicy::default()));
    assert_eq!(
        b.network.as_ref().unwrap().deny_out,
        vec![format!("{PUBLIC}/32")]
    );

    step(
        "the internet answers, names resolve through the agent's DNS",
        async {
            // The internet answers, and names resolve through the agent's DNS.
            assert_eq!(
                fetch(&admin, &a.id, PUBLIC).await.as_deref(),
                Some("hello from outside\n")
            );
            let looked_up = admin
                .exec(&a.id, &sh(&format!("nslookup {NAME}")))
                .await
                .unwrap();
            assert!(looked_up.stdout.contains(PUBLIC), "nslookup: {looked_up:?}");
        },
    )
    .await;
    step(
        "the host, link-local and private addresses and the other sandbox are out of reach",
        async {
            // The host (every address, the gateway, the agent's and server's ports), link-local
            // and private stand-ins and the other sandbox are all out of reach.
            let mut closed: Vec<String> = host_addresses()
                .iter()
                .map(|h| format!("{h}:{host_port}"))
                .collect();
            assert!(!closed.is_empty(), "the host has an address");
            closed.push(format!("10.0.2.2:{host_port}"));
            closed.push(format!("10.213.0.1:{host_port}"));
            let agent_port = agent.addr.rsplit(':').next().unwrap().to_string();
            let server_port = s.url.rsplit(':').next().unwrap().to_string();
            for h in host_addresses() {
                closed.push(format!("{h}:{agent_port}"));
                closed.push(format!("{h}:{server_port}"));
            }
            closed.push(LINK_LOCAL.to_string());
            closed.push(PRIVATE.to_string());
            closed.push("10.213.0.6:8000".into());
            // The other sandbox listens (on its guest address, the same in every namespace).
            admin
                .exec(&b.id, &sh("(httpd -p 8000 -h /tmp &) ; echo started"))
                .await
                .unwrap();
            for url in &closed {
                assert_eq!(fetch(&admin, &a.id, url).await, None, "reached {url}");
            }
        },
    )
    .await;
    step("deny_out closes the public server for B only", async {
        // deny_out closes the public server for B only.
        assert_eq!(fetch(&admin, &b.id, PUBLIC).await, None);
    })
    .await;
    step(
        "allow_out opens a private address, never a link-local one",
        async {
            // allow_out opens a private address; a link-local one stays closed whatever it says.
            let updated = admin
                .set_network(&a.id, &policy(true, &[PRIVATE, LINK_LOCAL], &[]))
                .await
                .unwrap();
            assert_eq!(updated.network.unwrap().allow_out.len(), 2);
            assert!(fetch(&admin, &a.id, PRIVATE).await.is_some());
            assert_eq!(fetch(&admin, &a.id, LINK_LOCAL).await, None);
        },
    )
    .await;
    step("internet false leaves only allow_out", async {
        // Internet false leaves only allow_out.
        admin
            .set_network(&a.id, &policy(false, &[PRIVATE], &[]))
            .await
            .unwrap();
        assert_eq!(fetch(&admin, &a.id, PUBLIC).await, None);
        assert!(fetch(&admin, &a.id, PRIVATE).await.is_some());
    })
    .await;
    step("bad policies are refused with the field named", async {
        // Bad policies are refused with the field named, and change nothing.
        let err = admin
            .set_network(&a.id, &policy(true, &["not-a-cidr"], &[]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("network.allow_out"), "{err}");
        assert_eq!(fetch(&admin, &a.id, PUBLIC).await, None);
    })
    .await;
    step("the policy survives pause/resume", async {
        // The policy survives pause/resume.
        admin.pause_sandbox(&a.id).await.unwrap();
        admin.resume_sandbox(&a.id).await.unwrap();
        assert_eq!(fetch(&admin, &a.id, PUBLIC).await, None);
        assert!(fetch(&admin, &a.id, PRIVATE).await.is_some());
    })
    .await;
    let c = step("no network at all means no device", async {
        // No network at all means no device.
        let c = admin
            .create_sandbox(&CreateSandboxRequest {
                network: Some(NetworkSetting::Enabled(false)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(c.network, None);
        let links = admin.exec(&c.id, &sh("ls /sys/class/net")).await.unwrap();
        assert!(!links.stdout.contains("eth0"), "{links:?}");
        c
    })
    .await;
    let ids = [a.id.as_str(), b.id.as_str(), c.id.as_str()];
    step(
        "after kill -9 and a restart the agent takes its namespaces back",
        async {
            // Kill -9 of the agent, a restart: the namespaces are taken back, DNS works again.
            assert_eq!(
                namespaces_of(&ids).len(),
                2,
                "one namespace per sandbox with a network"
            );
            agent.kill();
            agent.spawn();
            agent.wait_ready(&admin).await;
            assert_eq!(namespaces_of(&ids).len(), 2);
            assert_eq!(
                fetch(&admin, &b.id, PUBLIC).await,
                None,
                "B still denies it"
            );
            let r = admin
                .exec(&b.id, &sh(&format!("nslookup {NAME}")))
                .await
                .unwrap();
            assert!(r.stdout.contains(PUBLIC), "DNS after restart: {r:?}");
            assert!(fetch(&admin, &a.id, PRIVATE).await.is_some());
        },
    )
    .await;
    step("deleting the sandboxes leaves no namespace behind", async {
        // Deleting the sandboxes leaves no namespace behind.
        for id in ids {
            admin.delete_sandbox(id).await.unwrap();
        }
        wait_until("namespaces removed", Duration::from_secs(20), || async {
            namespaces_of(&ids).is_empty()
        })
        .await;
    })
    .await;
    drop(agent);
    drop(net);
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}

/// The QEMU of a sandbox: not root, under seccomp with no_new_privs, in its own mount namespace
/// where the agent's data dir shows only its own folder, unable to read the keys.
#[tokio::test]
async fn qemu_runs_unprivileged_and_confined() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let a = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let pids = agent.qemu_pids();
    assert_eq!(pids.len(), 1, "one QEMU: {pids:?}");
    let pid = pids[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    let uids: Vec<u32> = field("Uid:")
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|u| *u != 0), "QEMU runs as root: {uids:?}");
    assert!(field("Seccomp:").ends_with('2'), "{}", field("Seccomp:"));
    assert!(
        field("NoNewPrivs:").ends_with('1'),
        "{}",
        field("NoNewPrivs:")
    );
    assert!(
        field("CapEff:").ends_with("0000000000000000"),
        "{}",
        field("CapEff:")
    );

    // Its view of the agent's data dir: its own folder and nothing else.
    let root = format!("/proc/{pid}/root");
    let seen = |p: &Path| std::fs::read_dir(format!("{root}{}", p.display()));
    let data = agent.dir.path();
    let top: Vec<String> = seen(data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, vec!["vms".to_string()], "QEMU sees {top:?}");
    let vms: Vec<String> = seen(&data.join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(vms, vec![a.id.clone()]);

    // Files of root's stay out of its reach: the agent's credentials and the server's keys,
    // read as QEMU's uid and gid.
    let uid = uids[0];
    for secret in [
        data.join("credentials.json"),
        s.data_dir().join("agent-signing.key"),
    ] {
        if !secret.exists() {
            continue;
        }
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "cat",
            ])
            .arg(&secret)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "QEMU's uid read {}",
            secret.display()
        );
    }
    // VM folders and records are private.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let vm_dir = data.join("vms").join(&a.id);
    let md = std::fs::metadata(&vm_dir).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    assert_eq!(md.uid(), uid);
    let rec = std::fs::metadata(vm_dir.join("vm.json")).unwrap();
    assert_eq!(rec.permissions().mode() & 0o077, 0, "vm.json is private");
    assert_eq!(
        std::fs::metadata(data).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Pause (state written through a descriptor the agent passes) and resume work confined.
    admin.pause_sandbox(&a.id).await.unwrap();
    let state = std::fs::metadata(vm_dir.join("state.bin")).unwrap();
    assert_eq!(state.permissions().mode() & 0o077, 0, "memory is private");
    admin.resume_sandbox(&a.id).await.unwrap();
    let r = admin.exec(&a.id, &sh("echo back")).await.unwrap();
    assert_eq!(r.stdout, "back\n");
    admin.delete_sandbox(&a.id).await.unwrap();
}

/// Fifty sandboxes at once on one host, each in a namespace of its own with its own address,
/// each reaching the stand-in internet; all of it gone after they are destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sandboxes_each_in_a_namespace_of_their_own() {
    use sandboxctl::agent::vm::{CreateVmRequest, VmManager};
    let _vm = vm_permit().await;
    let net = Internet::start();
    let data = tempfile::tempdir().unwrap();
    let vms = VmManager::start(crate::common::vm_config(data.path()))
        .await
        .expect("manager starts");
    let ids: Vec<String> = (0..50).map(|i| format!("sbx_it_many{i:02}")).collect();

    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    step(
        "create fifty, ten at a time, each in its namespace",
        async {
            // Create them, ten at a time (each restores the boot snapshot into its namespace).
            for chunk in ids.chunks(10) {
                let creates = chunk.iter().map(|id| {
                    vms.create(CreateVmRequest {
                        id: id.clone(),
                        template: "minimal".into(),
                        vcpus: 1,
                        memory_mb: 256,
                        env: Default::default(),
                        network: true,
                        egress: None,
                        cold_boot: false,
                        access_token: None,
                    })
                });
                for r in futures_util::future::join_all(creates).await {
                    r.expect("create");
                }
            }
            assert_eq!(namespaces_of(&id_refs).len(), 50, "one namespace each");
        },
    )
    .await;
    step(
        "every one reaches the internet through its own namespace",
        async {
            // Every one of them reaches the internet through its own namespace.
            let script =
                format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {PUBLIC} 80 | tail -n 1");
            for chunk in ids.chunks(10) {
                let execs = chunk.iter().map(|id| vms.exec(id, sh(&script)));
                for (id, r) in chunk
                    .iter()
                    .zip(futures_util::future::join_all(execs).await)
                {
                    let r = r.expect("exec");
                    assert_eq!(r.stdout, "hello from outside\n", "{id}: {r:?}");
                }
            }
        },
    )
    .await;
    step(
        "destroyed, they leave no namespace, interface or rule behind",
        async {
            // Destroyed, they leave no namespace, interface or rule behind.
            for chunk in ids.chunks(10) {
                for r in
                    futures_util::future::join_all(chunk.iter().map(|id| vms.destroy(id))).await
                {
                    r.expect("destroy");
                }
            }
            assert!(namespaces_of(&id_refs).is_empty(), "namespaces left");
        },
    )
    .await;
    drop(vms);
    drop(net);
}
