//! The release as operators run it: the static binary (statically linked, stripped, alone in an
//! empty chroot, as an agent whose guests run the same file), `install.sh --binary/--service`
//! with its systemd units, and an agent that rides out a server outage and a reboot.
//!
//! The static binary is slow to build, so these tests take it ready-made: `./install.sh --test`
//! builds it before `cargo test` and names it in `SANDBOXCTL_STATIC_BINARY` (otherwise
//! `target/x86_64-unknown-linux-musl/release/sandboxctl`, what `cargo build --release --target
//! x86_64-unknown-linux-musl` makes). Missing, the tests that need it fail under CI (`CI=true`)
//! and are skipped, saying so, elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sandboxctl::proto::api::{CreateSandboxRequest, ExecRequest};

use crate::common::{
    BIN, TestAgent, TestServer, create_when_ready, signal, step, vm_permit, wait_until,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The static release binary, or None (skipped, said on stderr) outside CI.
fn static_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SANDBOXCTL_STATIC_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(REPO).join("target/x86_64-unknown-linux-musl/release/sandboxctl")
        });
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "no static release binary at {}: `./install.sh --test` builds it before `cargo test` \
         (or: cargo build --release --target x86_64-unknown-linux-musl)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What the ELF file says about linking: an interpreter (PT_INTERP), the libraries it needs
/// (DT_NEEDED), and whether symbols or debug info are left.
#[derive(Debug)]
struct Linking {
    interpreter: bool,
    needed: usize,
    sections: Vec<String>,
}

fn read_elf(b: &[u8]) -> Linking {
    assert_eq!(&b[..4], b"\x7fELF", "an ELF file");
    assert_eq!((b[4], b[5]), (2, 1), "64-bit little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (mut interpreter, mut needed) = (false, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            // PT_INTERP
            3 => interpreter = true,
            // PT_DYNAMIC: its entries, 16 bytes each, up to DT_NULL.
            2 => {
                let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
                for d in (off..off + size).step_by(16) {
                    match u64_at(d) {
                        0 => break,
                        1 => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3A), u16_at(0x3C), u16_at(0x3E));
    let names = u64_at(shoff + shstrndx * shentsize + 0x18);
    let sections = (0..shnum)
        .map(|i| {
            let start = names + u32_at(shoff + i * shentsize);
            let len = b[start..].iter().position(|c| *c == 0).unwrap();
            text(&b[start..start + len])
        })
        .collect();
    Linking {
        interpreter,
        needed,
        sections,
    }
}

#[test]
fn the_release_binary_is_static_and_stripped() {
    let Some(bin) = static_binary() else { return };
    let bytes = std::fs::read(&bin).unwrap();
    eprintln!(
        "static release binary: {} ({:.1} MB)",
        bin.display(),
        bytes.len() as f64 / 1e6
    );
    let elf = read_elf(&bytes);
    assert!(!elf.interpreter, "no program interpreter (ld.so): {elf:?}");
    assert_eq!(elf.needed, 0, "no shared libraries needed");
    for s in [".symtab", ".debug_info", ".debug_line"] {
        assert!(
            !elf.sections.iter().any(|n| n == s),
            "stripped: no {s} in {:?}",
            elf.sections
        );
    }
    // What an operator would run to check.
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd runs");
    let said = text(&ldd.stdout) + &text(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    if let Ok(file) = Command::new("file").arg(&bin).output() {
        let said = text(&file.stdout);
        assert!(
            said.contains("statically linked") || said.contains("static-pie linked"),
            "file: {said}"
        );
        assert!(!said.contains("not stripped"), "file: {said}");
    }
}

/// `bin` run as `/sandboxctl` inside `root` (chroot), with `env` and nothing else.
fn in_chroot(root: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    use std::io::Write;
    // Found here: the command runs with an empty environment (no PATH).
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chroot (coreutils) is installed");
    let mut child = Command::new(chroot)
        .arg(root)
        .arg("/sandboxctl")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chroot runs");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn the_release_binary_runs_alone_in_an_empty_chroot() {
    let Some(bin) = static_binary() else { return };
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, root.path().join("sandboxctl")).unwrap();

    step("--version with nothing but the binary in the root", async {
        let out = in_chroot(root.path(), &["--version"], &[], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("sandboxctl {}\n", env!("CARGO_PKG_VERSION"))
        );
        let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "the root holds only the binary");
    })
    .await;

    // A client on a bare machine: a server found by a name in /etc/hosts (no NSS libraries, no
    // resolver library: the binary reads the file itself), a login and an authenticated call.
    let server = TestServer::start().await;
    server.signup("root@example.com", "Root").await;
    step(
        "the CLI reaches a server by its /etc/hosts name and logs in",
        async {
            std::fs::create_dir(root.path().join("etc")).unwrap();
            std::fs::write(
                root.path().join("etc/hosts"),
                "127.0.0.1 localhost\n127.0.0.1 control.sandboxctl.test\n",
            )
            .unwrap();
            let port = server.url.rsplit(':').next().unwrap().trim_end_matches('/');
            let url = format!("http://control.sandboxctl.test:{port}");
            let env = [("HOME", "/"), ("SANDBOXCTL_CONFIG", "/cli.toml")];
            let out = in_chroot(
                root.path(),
                &[
                    "login",
                    "--server",
                    &url,
                    "--email",
                    "root@example.com",
                    "--password-stdin",
                ],
                &env,
                Some("correct horse battery\n"),
            );
            assert!(out.status.success(), "login: {}", text(&out.stderr));
            let out = in_chroot(root.path(), &["sandbox", "list", "--json"], &env, None);
            assert!(out.status.success(), "sandbox list: {}", text(&out.stderr));
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("JSON ({e}): {}", text(&out.stdout)));
            assert!(listed.is_array() || listed.is_object(), "{listed}");
        },
    )
    .await;
}

/// The state of sandbox `id` as its owner sees it.
async fn status(admin: &sandboxctl::cli::client::ApiClient, id: &str) -> String {
    admin.get_sandbox(id).await.unwrap().status.to_string()
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), cmd.into()],
        ..Default::default()
    }
}

/// Is `pid` (a child of ours) still running, not exited?
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// What the agent's systemd unit relies on, with the static binary as agent (and so as guest)
/// where it has been built (always under CI), the test build otherwise: the agent keeps running
/// through a server outage and is online again once the server is back; after a reboot (every
/// process gone, network namespaces gone, the data dir kept) a new agent process brings a paused
/// sandbox back paused, with its memory, and reports the running one's VM gone.
#[tokio::test]
async fn an_agent_rides_out_a_server_outage_and_a_reboot_keeps_paused_sandboxes_paused() {
    let _vm = vm_permit().await;
    let static_bin = static_binary();
    let bin = static_bin.clone().unwrap_or_else(|| PathBuf::from(BIN));
    let flags = ["--monitor-interval", "1s", "--host-stale-after", "3s"];
    let mut server = TestServer::start_with(&flags).await;
    let (_, admin) = server.signup("root@example.com", "Root").await;

    let mut agent = step("the agent registers and says how to start it", async {
        let a = TestAgent::start_binary(&server, &admin, &bin, &[]).await;
        let run = format!("sandboxctl agent run --data-dir {}", a.dir.path().display());
        assert!(a.registered.contains(&run), "{}", a.registered);
        assert!(a.registered.contains("--service agent"), "{}", a.registered);
        a
    })
    .await;

    let (running, paused, sleeper) = step(
        "a running and a paused sandbox; the guest runs the agent's own binary",
        async {
            let running = create_when_ready(&admin, &agent).await;
            if static_bin.is_some() {
                // The template holds the static binary alone: no libraries were copied beside it.
                let r = admin
                    .exec(
                        &running.id,
                        &sh("sandboxctl --version; find /lib /lib64 -mindepth 1"),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    r.stdout,
                    format!("sandboxctl {}\n", env!("CARGO_PKG_VERSION")),
                    "{r:?}"
                );
            }
            let paused = admin
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .unwrap();
            let r = admin
                .exec(&paused.id, &sh("sleep 100000 >/dev/null 2>&1 & echo $!"))
                .await
                .unwrap();
            let sleeper = r.stdout.trim().to_string();
            assert!(sleeper.parse::<u32>().is_ok(), "{r:?}");
            assert_eq!(
                admin
                    .pause_sandbox(&paused.id)
                    .await
                    .unwrap()
                    .status
                    .to_string(),
                "paused"
            );
            (running.id, paused.id, sleeper)
        },
    )
    .await;

    step(
        "the server goes away: the agent keeps running and is online again with it",
        async {
            server.kill();
            wait_until(
                "the agent's heartbeat fails",
                Duration::from_secs(60),
                || async { agent.log().contains("heartbeat failed") },
            )
            .await;
            let pid = agent.pid().unwrap();
            assert!(alive(pid), "the agent exited while the server was away");
            server.crash_and_restart(&flags).await;
            wait_until(
                "the host is online again",
                Duration::from_secs(60),
                || async {
                    admin
                        .get_host(&agent.host_id)
                        .await
                        .is_ok_and(|h| h.status == "online")
                },
            )
            .await;
            assert!(alive(pid), "the same agent process is still serving");
            let r = admin.exec(&running, &sh("echo back")).await.unwrap();
            assert_eq!(r.stdout, "back\n");
        },
    )
    .await;

    step(
        "a reboot: the paused sandbox comes back paused, with its memory",
        async {
            agent.kill();
            for pid in agent.qemu_pids() {
                signal(pid, libc::SIGKILL);
            }
            wait_until("every QEMU is gone", Duration::from_secs(30), || async {
                agent.qemu_pids().is_empty()
            })
            .await;
            sandboxctl::agent::net::remove_namespaces_of(agent.dir.path());
            agent.spawn();
            agent.wait_ready(&admin).await;
            wait_until(
                "the running sandbox, whose VM the reboot ended, is stopped",
                Duration::from_secs(60),
                || async { status(&admin, &running).await == "stopped" },
            )
            .await;
            assert_eq!(status(&admin, &paused).await, "paused");
            let resumed = admin.resume_sandbox(&paused).await.unwrap();
            assert_eq!(resumed.status.to_string(), "running");
            let r = admin
                .exec(&paused, &sh(&format!("kill -0 {sleeper} && echo alive")))
                .await
                .unwrap();
            assert_eq!(
                r.stdout, "alive\n",
                "the process from before the pause: {r:?}"
            );
        },
    )
    .await;
}

/// Runs install.sh with `args`, as an operator would.
fn install_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(Path::new(REPO).join("install.sh"))
        .args(args)
        .env_remove("SANDBOXCTL_DATA_DIR")
        .env_remove("SANDBOXCTL_KERNEL_DIR")
        .env_remove("PREFIX")
        .output()
        .expect("install.sh runs")
}

#[test]
fn install_sh_installs_a_given_binary_and_enabled_units_that_systemd_accepts() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = static_binary().unwrap_or_else(|| PathBuf::from(BIN));
    let root_arg = r.to_str().unwrap();
    let out = install_sh(&[
        "--binary",
        bin.to_str().unwrap(),
        "--service",
        "server",
        "--service",
        "agent",
        "--root",
        root_arg,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The binary, byte for byte, executable.
    let installed = r.join("usr/local/bin/sandboxctl");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&bin).unwrap()
    );
    let v = Command::new(&installed).arg("--version").output().unwrap();
    assert!(text(&v.stdout).starts_with("sandboxctl "));

    for role in ["server", "agent"] {
        let unit = std::fs::read_to_string(
            r.join(format!("etc/systemd/system/sandboxctl-{role}.service")),
        )
        .unwrap();
        let exec = if role == "agent" {
            "agent run"
        } else {
            "server"
        };
        for line in [
            &format!("ExecStart=/usr/local/bin/sandboxctl {exec}"),
            "Restart=on-failure",
            &format!("EnvironmentFile=/etc/sandboxctl/{role}.env"),
            "KillMode=process",
            "StandardError=journal",
            &format!("SyslogIdentifier=sandboxctl-{role}"),
            "WantedBy=multi-user.target",
            "After=network-online.target",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "{role} unit has {line}:\n{unit}"
            );
        }
        // Enabled: the link systemd follows at boot.
        let wants = r.join(format!(
            "etc/systemd/system/multi-user.target.wants/sandboxctl-{role}.service"
        ));
        assert_eq!(
            std::fs::read_link(&wants).unwrap(),
            Path::new(&format!("/etc/systemd/system/sandboxctl-{role}.service"))
        );
        let env = std::fs::read_to_string(r.join(format!("etc/sandboxctl/{role}.env"))).unwrap();
        let data = if role == "agent" {
            "/var/lib/sandboxctl/agent"
        } else {
            "/var/lib/sandboxctl"
        };
        assert!(
            env.lines()
                .any(|l| l == format!("SANDBOXCTL_DATA_DIR={data}")),
            "{env}"
        );
    }
    let agent =
        std::fs::read_to_string(r.join("etc/systemd/system/sandboxctl-agent.service")).unwrap();
    assert!(agent.contains("\nStartLimitIntervalSec=0\n"), "{agent}");
    assert!(
        agent.contains("\nConditionPathExists=/var/lib/sandboxctl/agent/credentials.json\n"),
        "{agent}"
    );

    // The operator's settings survive a second run.
    let env_file = r.join("etc/sandboxctl/server.env");
    std::fs::write(&env_file, "SANDBOXCTL_LISTEN=0.0.0.0:8080\n").unwrap();
    let again = install_sh(&[
        "--binary",
        bin.to_str().unwrap(),
        "--service",
        "server",
        "--root",
        root_arg,
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "SANDBOXCTL_LISTEN=0.0.0.0:8080\n"
    );

    // systemd's own check, offline, against the units a Debian host has.
    let Ok(units) = std::fs::read_dir("/usr/lib/systemd/system") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no /usr/lib/systemd/system to verify the units against");
        }
        eprintln!("skipped systemd-analyze verify: no systemd here");
        return;
    };
    drop(units);
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", &format!("--root={root_arg}")])
        .args(["sandboxctl-server.service", "sandboxctl-agent.service"])
        .output()
        .expect("systemd-analyze runs");
    let said = text(&verify.stdout) + &text(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("sandboxctl"),
        "systemd-analyze verify has something to say about our units: {said}"
    );
}

#[test]
fn install_sh_names_what_is_wrong_with_its_options() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--service", "web"],
            "--service takes server or agent, not 'web'",
        ),
        (&["--binary"], "--binary needs a value"),
        (
            &["--test", "--service", "agent"],
            "go with an install, not --test",
        ),
        (&["--frobnicate"], "unknown option '--frobnicate'"),
    ];
    for (args, says) in cases {
        let out = install_sh(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let root = tempfile::tempdir().unwrap();
    let out = install_sh(&[
        "--binary",
        "/nonexistent/sandboxctl",
        "--root",
        root.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--binary /nonexistent/sandboxctl: no such file"),
        "{}",
        text(&out.stderr)
    );
    // Something that is not sandboxctl is refused before anything is written.
    let out = install_sh(&[
        "--binary",
        "/bin/true",
        "--root",
        root.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!root.path().join("usr/local/bin/sandboxctl").exists());
}

/// What bash offers after `words` (the last one being completed), from the script
/// `sandboxctl completion bash` prints, loaded into a real bash.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n_sandboxctl sandboxctl \"${{COMP_WORDS[COMP_CWORD]}}\" \
         \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash").arg("-c").arg(prog).output().unwrap();
    assert!(out.status.success(), "bash: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_offers_commands_and_flags() {
    let out = Command::new(BIN)
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sandboxctl.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    assert_eq!(bash_completes(&script, &["sandboxctl", "sa"]), ["sandbox"]);
    let sandbox = bash_completes(&script, &["sandboxctl", "sandbox", ""]);
    for c in ["create", "exec", "pause", "resume", "files"] {
        assert!(sandbox.iter().any(|w| w == c), "sandbox {c}: {sandbox:?}");
    }
    let register = bash_completes(&script, &["sandboxctl", "agent", "register", "--"]);
    for f in ["--server", "--token", "--data-dir"] {
        assert!(register.iter().any(|w| w == f), "{f}: {register:?}");
    }
}
