//! envd inside a real microVM, driven by the official E2B Python SDK (the scripts next to this
//! file, run by `/opt/sandboxctl/e2b-venv/bin/python`).
//!
//! How the SDK reaches the guest: until the server routes sandbox ports (the port tunnel), the
//! scripts run inside the sandbox's own network namespace (`ip netns exec`), where the guest
//! is `10.0.2.15`, and talk to envd on its real port 49983 over the VM's real network. The SDK
//! is set up exactly as `Sandbox.create()` sets it up from a control plane's answer: envd
//! version `proto::e2b::ENVD_VERSION` and the sandbox's access token, which the agent got in
//! `CreateVmRequest.access_token` and handed to the guest in `Init`.
//!
//! The namespace lets nothing from the guest in but DNS, so the test adds one rule there that
//! lets the answers to its own connections back in.
//!
//! The `minimal` template has neither bash nor a `user` account (E2B's `base` template has
//! both); the test adds them as root through the agent's exec first: `bash` is busybox's sh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use sandboxctl::agent::vm::{CreateVmRequest, ExecRequest, VmManager};

use crate::common::{step, vm_config, vm_permit};

const PYTHON: &str = "/opt/sandboxctl/e2b-venv/bin/python";
const GUEST_ENVD: &str = "http://10.0.2.15:49983";

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/e2b_envd")
}

/// The network namespace of the agent's only sandbox.
fn namespace(data_dir: &std::path::Path) -> String {
    let prefix = format!("sbx-{}-", sandboxctl::agent::net::agent_tag(data_dir));
    let names: Vec<String> = std::fs::read_dir(sandboxctl::agent::net::NETNS_DIR)
        .expect("list network namespaces")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(names.len(), 1, "namespaces {names:?}");
    names[0].clone()
}

struct Sdk {
    ns: String,
    token: String,
    id: String,
}

impl Sdk {
    /// Runs `script` with `args`; its output when it succeeds, a failed test otherwise.
    async fn run(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, PYTHON])
            .arg(scripts().join(script))
            .args(args)
            .current_dir(scripts())
            .env("ENVD_URL", GUEST_ENVD)
            .env("ENVD_TOKEN", &self.token)
            .env("SANDBOX_ID", &self.id)
            .env("ENVD_VERSION", sandboxctl::proto::e2b::ENVD_VERSION)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("E2B_DEBUG")
            .env_remove("E2B_SANDBOX_URL");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// A failed step must not leave the VM behind: its QEMU and namespace go with the test.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in crate::common::qemu_pids_under(&self.0) {
            crate::common::signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        sandboxctl::agent::net::remove_namespaces_of(&self.0);
    }
}

async fn root_sh(vms: &VmManager, id: &str, script: &str) -> String {
    let r = vms
        .exec(
            id,
            ExecRequest {
                cmd: "sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_sdk_drives_envd_in_a_vm() {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "the E2B Python SDK is expected in /opt/sandboxctl/e2b-venv (pip install e2b==2.63.0)"
    );
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(tmp.path().to_path_buf());
    let vms = VmManager::start(vm_config(tmp.path()))
        .await
        .expect("start the manager");
    let id = "sbx_it_envd";
    let token = sandboxctl::crypto::random_token("ea_");
    let sdk = step("a sandbox with an access token, a user and bash", async {
        let mut env = BTreeMap::new();
        env.insert(
            "SANDBOX_GREETING".to_string(),
            "hello from create".to_string(),
        );
        vms.create(CreateVmRequest {
            id: id.into(),
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 256,
            env,
            network: true,
            egress: None,
            cold_boot: false,
            access_token: Some(token.clone()),
        })
        .await
        .expect("create");
        root_sh(
            &vms,
            id,
            "echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd && \
             echo 'user:x:1000:' >> /etc/group && \
             mkdir -p /home/user && chown 1000:1000 /home/user && \
             printf '#!/bin/sh\\nexec /bin/sh \"$@\"\\n' > /bin/bash && chmod 755 /bin/bash && \
             for a in stat stty ln tty whoami; do command -v $a >/dev/null || echo missing $a; done",
        )
        .await;
        let ns = namespace(tmp.path());
        // The namespace takes nothing in from the guest but DNS; let the answers to our own
        // connections back in (what the port tunnel through the server will make unneeded).
        let added = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "insert", "rule", "inet", "sandbox", "input"])
            .args(["iifname", "tap0", "ct", "state", "established,related", "accept"])
            .status()
            .expect("nft");
        assert!(added.success());
        Sdk {
            ns,
            token: token.clone(),
            id: id.into(),
        }
    })
    .await;

    step(
        "commands: output, exit codes, env, users, stdin, list, connect, kill",
        async {
            assert!(sdk.run("commands.py", &[]).await.contains("commands ok"));
        },
    )
    .await;
    step(
        "streaming output of a background command, and a PTY with a resize",
        async {
            assert!(sdk.run("streaming.py", &[]).await.contains("streaming ok"));
        },
    )
    .await;
    step(
        "files: owners, modes, listing, watching, signed URLs, gzip, octet-stream",
        async {
            assert!(sdk.run("files.py", &[]).await.contains("files ok"));
            assert!(sdk.run("watch_async.py", &[]).await.contains("watch ok"));
            // What the SDK wrote as `user` belongs to `user` in the guest.
            let owners = root_sh(
                &vms,
                id,
                "stat -c '%U %a' /home/user/notes /tmp/multi/one.txt",
            )
            .await;
            assert_eq!(owners, "user 755\nuser 644\n");
        },
    )
    .await;
    step(
        "a process keeps running across pause and resume; the token still works",
        async {
            let pid = sdk.run("survivor.py", &["start"]).await;
            vms.pause(id).await.expect("pause");
            vms.resume(id).await.expect("resume");
            let out = sdk.run("survivor.py", &["check", pid.trim()]).await;
            assert!(out.contains("survivor ok"), "pid {pid}: {out}");
        },
    )
    .await;
    vms.destroy(id).await.expect("destroy");
}
