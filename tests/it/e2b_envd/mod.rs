//! envd inside a real microVM, driven by the official E2B Python SDK (the scripts next to this
//! file, run by the venv's Python) the way a user's code drives it: through the test's own
//! server, with E2B_API_URL and E2B_SANDBOX_URL its loopback URL and E2B_DOMAIN a test domain.
//! `Sandbox.create()` goes to the server's E2B control plane, which answers once envd answers
//! (`GET /health` through the port tunnel) with the sandbox's access token; every envd request
//! is routed by the SDK's `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, and the URLs the SDK
//! builds (`download_url()`, `get_host(port)`) go to the server's TLS listener (a test CA, the
//! name in SNI, 127.0.0.1: no DNS).
//!
//! One sandbox for every step (boots are slow under emulation). It is a `minimal` one: building
//! `base` (debootstrap) takes minutes and needs a Debian mirror, so the test gives `minimal`
//! what E2B's `base` has and the scripts need, as root through our own API first: a `user`
//! account with its home, and `bash` (busybox's sh).

mod latency;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{TestAgent, TestServer, exec, step, vm_permit};
use crate::e2b::{python, sdk_env, tail, team_key};

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/e2b_envd")
}

pub(crate) const SETUP: &str = "echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd && \
     echo 'user:x:1000:' >> /etc/group && \
     mkdir -p /home/user && chown 1000:1000 /home/user && \
     printf '#!/bin/sh\\nexec /bin/sh \"$@\"\\n' > /bin/bash && chmod 755 /bin/bash";

struct Sdk<'a> {
    py: PathBuf,
    server: &'a TestServer,
    agent: &'a TestAgent,
    key: String,
    tls_port: u16,
    ca: String,
    id: String,
}

impl Sdk<'_> {
    fn command(&self, script: &Path) -> Command {
        let mut cmd = Command::new(&self.py);
        cmd.arg(script).current_dir(scripts());
        sdk_env(&mut cmd, self.server, &self.key);
        cmd.env("E2B_DOMAIN", crate::ports::DOMAIN)
            .env("SANDBOX_ID", &self.id)
            .env("TLS_PORT", self.tls_port.to_string())
            .env("TEST_CA", &self.ca)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    }

    /// Runs `script` with `args`; its output when it succeeds, a failed test otherwise.
    async fn run(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = self.command(&scripts().join(script));
        cmd.args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} {args:?} failed ({}):\n{stdout}\n{}\n--- server log ---\n{}\n--- agent log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.server.log()),
            tail(&self.agent.log()),
        );
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_sdk_drives_envd_through_the_server() {
    let Some(py) = python() else {
        eprintln!("the e2b venv is missing (./install.sh --deps makes it): skipped");
        return;
    };
    let _vm = vm_permit().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::ports::make_certs(certs.path());
    let tls_port = crate::common::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let s = TestServer::start_with(&[
        "--sandbox-domain",
        crate::ports::DOMAIN,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-listen",
        &tls_listen,
    ])
    .await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let api_key = team_key(&admin).await;
    // The agent may still be preparing its template: our own create waits for it.
    let warm = crate::common::create_when_ready(&admin, &agent).await;
    admin.delete_sandbox(&warm.id).await.unwrap();

    let mut sdk = Sdk {
        py,
        server: &s,
        agent: &agent,
        key: api_key,
        tls_port,
        ca,
        id: String::new(),
    };
    sdk.id = step(
        "Sandbox.create() answers once envd does, with its token and domain",
        async {
            let out = sdk.run("create.py", &[]).await;
            out.lines().last().unwrap_or_default().trim().to_string()
        },
    )
    .await;
    let id = sdk.id.clone();
    let sb = admin.get_sandbox(&id).await.unwrap();
    assert!(
        !sb.public_ports,
        "allowPublicTraffic: false makes its ports private"
    );
    step("give minimal a user and bash (as root, our API)", async {
        let r = admin
            .exec(&id, &exec("sh", &["-c", SETUP]))
            .await
            .expect("exec");
        assert_eq!(r.exit_code, 0, "{r:?}");
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
        "files: owners, modes, listing, watching, signed URLs by host name, gzip, octet-stream",
        async {
            assert!(sdk.run("files.py", &[]).await.contains("files ok"));
            assert!(sdk.run("watch_async.py", &[]).await.contains("watch ok"));
            // What the SDK wrote as `user` belongs to `user` in the guest.
            let r = admin
                .exec(
                    &id,
                    &exec(
                        "stat",
                        &["-c", "%U %a", "/home/user/notes", "/tmp/multi/one.txt"],
                    ),
                )
                .await
                .expect("exec");
            assert_eq!(r.stdout, "user 755\nuser 644\n");
        },
    )
    .await;
    step(
        "ports: get_host over TLS with and without the token, a closed port, by headers",
        async {
            assert!(sdk.run("ports.py", &[]).await.contains("ports ok"));
        },
    )
    .await;
    step(
        "pause: is_running() False; connect resumes with the process and files",
        async {
            let pid = sdk.run("survivor.py", &["start"]).await;
            assert_eq!(admin.get_sandbox(&id).await.unwrap().status, "paused");
            let out = sdk.run("survivor.py", &["check", pid.trim()]).await;
            assert!(out.contains("survivor ok"), "pid {pid}: {out}");
        },
    )
    .await;
    step(
        "a command running while the sandbox is killed ends with SandboxNotRunningException",
        async {
            assert!(sdk.run("killed.py", &[]).await.contains("killed ok"));
            assert_eq!(admin.get_sandbox(&id).await.unwrap().status, "stopped");
        },
    )
    .await;
}
