//! Fast start, pause/resume with memory, snapshots as templates, PauseAll and template builds,
//! through the whole stack: public API → server → agent → QEMU.

use std::time::{Duration, Instant};

use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::{CreateSandboxRequest, ExecRequest, SandboxResponse};

use crate::common::archives::{Archive, Canary, gzip_bomb};
use crate::common::{TestAgent, TestServer, step, vm_permit, wait_until};

async fn sh(c: &ApiClient, id: &str, script: &str) -> String {
    let r = c
        .exec(
            id,
            &ExecRequest {
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

/// Waits until the host's heartbeat reports `minimal` (registration marks the host online before
/// the agent's first heartbeat lists its templates).
async fn template_names(admin: &ApiClient) -> Vec<String> {
    admin
        .list_templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

async fn agent_ready(admin: &ApiClient) {
    wait_for_template(admin, "minimal", 120).await;
}

/// Waits until a host reports template `name`.
async fn wait_for_template(admin: &ApiClient, name: &str, secs: u64) {
    wait_until(
        &format!("the host reports template {name}"),
        Duration::from_secs(secs),
        || async { template_names(admin).await.iter().any(|n| n == name) },
    )
    .await;
}

async fn create(c: &ApiClient, template: Option<&str>, memory_mb: Option<u32>) -> SandboxResponse {
    let t = Instant::now();
    let s = c
        .create_sandbox(&CreateSandboxRequest {
            template: template.map(str::to_string),
            memory_mb,
            ..Default::default()
        })
        .await
        .expect("create sandbox");
    eprintln!(
        "create {:?} ({} MB): boot_ms {:?}, {:?} through the API",
        template.unwrap_or("minimal"),
        s.memory_mb,
        s.boot_ms,
        t.elapsed()
    );
    assert_eq!(s.status, "running");
    s
}

/// Two sandboxes from one template do not see each other's memory or disk; pause/resume keeps
/// processes and tmpfs; a snapshot becomes a template that restores files and processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_pause_resume_and_templates() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    // Imports may expand to 256 MiB here, so the gzip bomb below is refused early.
    let agent =
        TestAgent::start_with(&s, &admin, &["--max-image-expanded-bytes", "268435456"]).await;
    agent_ready(&admin).await;

    let (a, b) = step("fast start from the boot snapshot; sandboxes are isolated", async {
        // Fast start: both restore the minimal template's boot snapshot (the first may wait for the
        // agent's start-up build of it).
        let a = create(&admin, None, None).await;
        let b = create(&admin, None, None).await;
        sh(&admin, &a.id, "echo from-a > /root/mine; echo a > /tmp/t; head -c 50000000 /dev/zero | tr '\\0' a > /dev/shm/fill").await;
        let seen = sh(
            &admin,
            &b.id,
            "cat /root/mine /tmp/t 2>/dev/null; head -c 3 /dev/shm/fill 2>/dev/null; hostname",
        )
        .await;
        assert_eq!(seen, format!("{}\n", b.id), "b sees a's writes");
        assert_eq!(
            sh(&admin, &a.id, "hostname; head -c 3 /dev/shm/fill").await,
            format!("{}\naaa", a.id)
        );
            (a, b)
    })
    .await;
    let sleep_pid = step("pause and resume keep memory, processes and the console log", async {
        // Pause/resume with memory: a background process and a counter loop go on; tmpfs survives,
        // random bytes included (the paused state keeps only the pages that differ from the
        // template's RAM: a page wrongly left out would show here).
        let sum = sh(
            &admin,
            &a.id,
            "head -c 24000000 /dev/urandom > /dev/shm/random; md5sum < /dev/shm/random",
        )
        .await;
        let out = sh(
            &admin,
            &a.id,
            "sleep 1000 >/dev/null 2>&1 & echo $!; \
             (i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 & \
             sleep 1; cat /tmp/counter",
        )
        .await;
        let mut lines = out.lines();
        let sleep_pid: u32 = lines.next().unwrap().parse().unwrap();
        let before: u32 = lines.next().unwrap().parse().unwrap();
        // The console log starts with the boot the snapshot was taken from and goes on over pause
        // and resume.
        sh(&admin, &a.id, "echo before-pause > /dev/console").await;
        let log = admin.logs(&a.id).await.unwrap();
        assert!(
            log.contains("sandboxctl guest") && log.contains("before-pause"),
            "{log:?}"
        );
        let t = Instant::now();
        let p = admin.pause_sandbox(&a.id).await.expect("pause");
        eprintln!("pause through the API: {:?}", t.elapsed());
        assert_eq!(p.status, "paused");
        let e = admin.pause_sandbox(&a.id).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        // Not a wait for an event: the sandbox stays paused a while, and the guest clock checked
        // after the resume must not lag by that while.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        let r = admin.resume_sandbox(&a.id).await.expect("resume");
        eprintln!("resume through the API: {:?}", t.elapsed());
        assert_eq!(r.status, "running");
        let out = sh(
            &admin,
            &a.id,
            &format!(
                "kill -0 {sleep_pid} && echo alive; cat /tmp/t; sleep 1; cat /tmp/counter; date +%s"
            ),
        )
        .await;
        assert_eq!(
            sh(&admin, &a.id, "md5sum < /dev/shm/random; head -c 3 /dev/shm/fill").await,
            format!("{sum}aaa"),
            "memory written before the pause came back changed"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(&lines[..2], &["alive", "a"], "{out}");
        let after: u32 = lines[2].parse().unwrap();
        assert!(after > before, "the counter stopped: {before} -> {after}");
        sh(&admin, &a.id, "echo after-resume > /dev/console").await;
        let log = admin.logs(&a.id).await.unwrap();
        let (at_pause, at_resume) = (log.find("before-pause"), log.find("after-resume"));
        assert!(
            at_pause.is_some() && at_pause < at_resume,
            "the log did not go on over pause/resume: {log:?}"
        );
        let skew = lines[3].parse::<i64>().unwrap() - sandboxctl::server::db::now();
        assert!(skew.abs() <= 2, "guest clock off by {skew} s after resume");
            sleep_pid
    })
    .await;
    step(
        "snapshot to a template; the name is taken until overwritten",
        async {
            // Snapshot → template; the name is taken until overwritten.
            sh(&admin, &a.id, "echo saved > /root/state").await;
            let t = Instant::now();
            let tpl = admin
                .snapshot(&a.id, "snap-one", false)
                .await
                .expect("snapshot");
            eprintln!(
                "snapshot through the API: {:?} ({:?} bytes)",
                t.elapsed(),
                tpl.size_bytes
            );
            assert_eq!((tpl.kind.as_str(), tpl.memory_mb), ("snapshot", Some(256)));
            let e = admin.snapshot(&a.id, "snap-one", false).await.unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (Some(409), Some("already_exists")),
                "{e}"
            );
            sh(&admin, &a.id, "echo overwritten > /root/state").await;
            let tpl2 = admin
                .snapshot(&a.id, "snap-one", true)
                .await
                .expect("snapshot with overwrite");
            assert_eq!(tpl2.id, tpl.id);
            assert_eq!(admin.get_sandbox(&a.id).await.unwrap().status, "running");
        },
    )
    .await;
    let (c, d) = step(
        "sandboxes from the snapshot have its files and processes",
        async {
            // Sandboxes from the snapshot: the file and the process are there; they are isolated.
            let c = create(&admin, Some("snap-one"), None).await;
            let d = create(&admin, Some("snap-one"), None).await;
            let out = sh(
                &admin,
                &c.id,
                &format!("cat /root/state; kill -0 {sleep_pid} && echo alive; hostname"),
            )
            .await;
            assert_eq!(out, format!("overwritten\nalive\n{}\n", c.id));
            sh(&admin, &c.id, "echo c-only > /root/state").await;
            assert_eq!(sh(&admin, &d.id, "cat /root/state").await, "overwritten\n");
            assert_eq!(sh(&admin, &a.id, "cat /root/state").await, "overwritten\n");
            (c, d)
        },
    )
    .await;
    step(
        "a paused sandbox can be snapshotted; a deleted template leaves its sandboxes",
        async {
            // A paused sandbox can be snapshotted too, and stays paused; the template has the
            // memory it was paused with.
            sh(&admin, &d.id, "echo in-d-memory > /dev/shm/d").await;
            admin.pause_sandbox(&d.id).await.expect("pause d");
            admin
                .snapshot(&d.id, "snap-paused", false)
                .await
                .expect("snapshot of a paused sandbox");
            assert_eq!(admin.get_sandbox(&d.id).await.unwrap().status, "paused");
            let e = create(&admin, Some("snap-paused"), None).await;
            assert_eq!(
                sh(&admin, &e.id, "cat /dev/shm/d /root/state; hostname").await,
                format!("in-d-memory\noverwritten\n{}\n", e.id)
            );
            admin.delete_sandbox(&e.id).await.expect("delete e");

            let names = template_names(&admin).await;
            assert!(
                names.iter().any(|n| n == "snap-one") && names.iter().any(|n| n == "snap-paused"),
                "{names:?}"
            );
            // Deleting a template leaves its sandboxes working.
            admin
                .delete_template("snap-one")
                .await
                .expect("delete template");
            let names = template_names(&admin).await;
            assert!(!names.iter().any(|n| n == "snap-one"), "{names:?}");
            assert_eq!(sh(&admin, &c.id, "cat /root/state").await, "c-only\n");
            let e = admin
                .create_sandbox(&CreateSandboxRequest {
                    template: Some("snap-one".into()),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");
            admin.resume_sandbox(&d.id).await.expect("resume d");
            assert_eq!(sh(&admin, &d.id, "cat /root/state").await, "overwritten\n");
        },
    )
    .await;
    step("a cold boot for comparison", async {
        // Cold boot for comparison: no boot snapshot exists for 320 MB yet.
        let cold = create(&admin, None, Some(320)).await;
        eprintln!(
            "boot_ms: cold {:?} vs snapshot {:?} (minimal) / {:?} (sandbox snapshot)",
            cold.boot_ms, b.boot_ms, c.boot_ms
        );
        for sb in [&a, &b, &c, &d, &cold] {
            admin.delete_sandbox(&sb.id).await.expect("delete");
        }
    })
    .await;
    step(
        "an imported root filesystem boots",
        imported_rootfs(&s, &admin),
    )
    .await;
    drop(agent);
}

/// A team template from the team's own root filesystem: a directory sent by the CLI as a tar
/// stream becomes an image that boots, starts sandboxes of any size and shows its files.
async fn imported_rootfs(s: &TestServer, admin: &ApiClient) {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    for d in ["bin", "etc", "root"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "hostname", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.join("etc/os-release"), "ID=imported-test\n").unwrap();
    std::fs::write(root.join("root/hello.txt"), "hello from my rootfs\n").unwrap();

    let cfg = crate::common::cli_login(s, "admin@example.com");
    let t = Instant::now();
    let (rc, out, err) = crate::common::cli(
        &cfg,
        &[
            "template",
            "import",
            "mine",
            "--from",
            root.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert_eq!(rc, 0, "{err}");
    eprintln!(
        "import (pack, upload, build, first boot): {:?}",
        t.elapsed()
    );
    let tpl: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (tpl["name"].as_str(), tpl["kind"].as_str()),
        (Some("mine"), Some("image"))
    );
    let listed = admin.list_templates().await.unwrap();
    assert!(
        listed.iter().any(|t| t.name == "mine" && t.kind == "image"),
        "{listed:?}"
    );

    // Any size; the files are the tree's.
    let sb = create(admin, Some("mine"), Some(320)).await;
    assert_eq!(
        sh(
            admin,
            &sb.id,
            "cat /root/hello.txt /etc/os-release; hostname"
        )
        .await,
        format!("hello from my rootfs\nID=imported-test\n{}\n", sb.id)
    );

    // Taken names, junk and escapes are refused with the field named; nothing is kept.
    let e = admin
        .import_template("mine", false, reqwest::Body::from("x"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("already_exists")));
    let e = admin
        .import_template("junk", false, reqwest::Body::from(vec![7u8; 4096]))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_field")));
    assert!(e.to_string().contains("tar"), "{e}");
    let e = admin
        .import_template("minimal", false, reqwest::Body::from("x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let names = template_names(admin).await;
    assert!(!names.iter().any(|n| n == "junk"), "{names:?}");

    // Archives that reach for the host: refused naming the body, the canary folder untouched.
    let outside = tempfile::tempdir().unwrap();
    let canary = Canary::new(outside.path());
    let e = admin
        .import_template(
            "evil",
            false,
            reqwest::Body::from(
                Archive::new()
                    .bootable()
                    .hard_link("etc/hostname", &canary.path("hostname"))
                    .finish(),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_field")));
    assert!(e.to_string().contains("body"), "{e}");
    let e = admin
        .import_template("bomb", false, reqwest::Body::from(gzip_bomb(1_000_000_000)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(413), Some("payload_too_large")),
        "{e}"
    );
    assert!(e.to_string().contains("body: the archive expands"), "{e}");
    canary.assert_untouched("imports through the server");
    let names = template_names(admin).await;
    assert!(
        !names.iter().any(|n| n == "evil" || n == "bomb"),
        "{names:?}"
    );

    // Deleting the template leaves its sandbox running.
    admin.delete_template("mine").await.expect("delete mine");
    assert_eq!(
        sh(admin, &sb.id, "cat /root/hello.txt").await,
        "hello from my rootfs\n"
    );
    admin.delete_sandbox(&sb.id).await.unwrap();
}

/// An agent whose credentials the server refuses pauses its running VMs
/// (docs/ARCHITECTURE.md#server-and-agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_credentials_pauses_its_vms() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    agent_ready(&admin).await;
    let sb = create(&admin, None, None).await;
    // Revoke the host's token family: rotate its refresh token twice, then present the retired
    // one (reuse), which voids every token of the family, the agent's included.
    let creds = sandboxctl::agent::credentials::load(agent.dir.path())
        .unwrap()
        .unwrap();
    let url = format!("{}/v1/hosts/auth/refresh", s.url);
    let refresh = |t: String| {
        let url = url.clone();
        async move {
            let body = serde_json::json!({ "refresh_token": t }).to_string();
            crate::common::raw(reqwest::Method::POST, &url, None, Some(&body)).await
        }
    };
    let (st, r1) = refresh(creds.refresh_token.clone()).await;
    assert_eq!(st, 200, "{r1}");
    let (st, _) = refresh(r1["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(st, 200);
    assert_eq!(refresh(creds.refresh_token.clone()).await.0, 401);

    let vm_dir = agent.dir.path().join("vms").join(&sb.id);
    let pid: Option<u32> = std::fs::read_to_string(vm_dir.join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    assert!(pid.is_some(), "no pid file in {}", vm_dir.display());
    wait_until("the agent pauses its VM", Duration::from_secs(60), || {
        let state = vm_dir.join("state.bin");
        async move { state.is_file() }
    })
    .await;
    if let Some(pid) = pid {
        wait_until("QEMU ends", Duration::from_secs(20), || async move {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await;
    }
    assert!(
        agent.log().contains("paused every running VM"),
        "{}",
        agent.log()
    );
}

/// `POST /v1/templates {"name":"debian"}` starts a background build that reports progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_build_starts_and_reports_progress() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    agent_ready(&admin).await;
    let r = serde_json::to_value(admin.build_template("debian").await.expect("build")).unwrap();
    assert_eq!(r["hosts"][0]["status"], "building", "{r}");
    // Asking again while it builds reports the same build.
    let again =
        serde_json::to_value(admin.build_template("debian").await.expect("build again")).unwrap();
    assert_eq!(again["hosts"][0]["status"], "building", "{again}");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    wait_until("debootstrap progress", Duration::from_secs(60), || {
        let (admin, seen) = (admin.clone(), seen.clone());
        async move {
            let st =
                serde_json::to_value(admin.template_build_status("debian").await.unwrap()).unwrap();
            assert_ne!(st["hosts"][0]["status"], "failed", "{st}");
            let p = st["hosts"][0]["progress"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&p) {
                seen.push(p.clone());
            }
            p.starts_with("debootstrap: fetching")
        }
    })
    .await;
    eprintln!("debian build progress: {:?}", seen.lock().unwrap());
}

/// The whole debian build (debootstrap of bookworm with python3, image, boot snapshot) and a
/// sandbox from it. Minutes, and ~50 MB from the Debian mirror: run it by hand with
/// `cargo test --test it debian_full_build -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn debian_full_build() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    agent_ready(&admin).await;
    let t = Instant::now();
    admin.build_template("debian").await.expect("build");
    let mut last = String::new();
    loop {
        let st =
            serde_json::to_value(admin.template_build_status("debian").await.unwrap()).unwrap();
        let h = &st["hosts"][0];
        let p = h["progress"].as_str().unwrap_or("").to_string();
        if p != last {
            eprintln!("{:>4} s  {} {}", t.elapsed().as_secs(), h["status"], p);
            last = p;
        }
        assert_ne!(h["status"], "failed", "{st}");
        if h["status"] == "ready" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1200),
            "the build took over 20 minutes"
        );
        // The pace of a progress report printed each second, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("debian template ready in {:?}", t.elapsed());
    wait_for_template(&admin, "debian", 30).await;
    let sb = create(&admin, Some("debian"), None).await;
    let out = sh(&admin, &sb.id, "python3 -c 'import sys; print(sys.version_info[0])'; . /etc/os-release; echo $VERSION_CODENAME; hostname").await;
    assert_eq!(out, format!("3\nbookworm\n{}\n", sb.id));
}

/// A team's snapshots hold its guests' memory: deleting the team takes them off the host that
/// holds them, as deleting one template does; no other host is asked about them.
#[tokio::test]
async fn a_deleted_teams_snapshots_leave_their_host() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (a, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    // Another host, which only records what it is asked (a BYOC host of the admin's team, so no
    // sandbox of the tenant lands there).
    let other = crate::agent_calls::Proxy::start().await;
    let created = admin
        .create_host(&sandboxctl::proto::api::CreateHostRequest {
            host_type: "byoc".into(),
            team_id: a.team_id.clone(),
            name: None,
            provider: None,
            zone: None,
        })
        .await
        .unwrap();
    let body = serde_json::json!({ "token": created.registration_token,
        "facts": crate::common::facts(&other.addr) })
    .to_string();
    let (st, v) = crate::common::raw(
        reqwest::Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    let (_, tenant) = s.signup("tenant@example.com", "Tenant").await;
    let team = tenant.create_team("Doomed").await.unwrap();
    let auth = tenant.switch_team(&team.id).await.unwrap();
    let tenant = tenant.with_token(&auth.token);
    let sb = create(&tenant, None, None).await;
    assert_eq!(sb.host_id.as_deref(), Some(agent.host_id.as_str()));
    sh(&tenant, &sb.id, "echo secret > /tmp/memory-of-the-team").await;
    let templates = agent.dir.path().join("templates");

    // Step 1: one template deleted: its files go from its host.
    let gone = tenant.snapshot(&sb.id, "gone", false).await.unwrap();
    assert!(templates.join(&gone.id).exists());
    tenant.delete_template("gone").await.unwrap();
    assert!(!templates.join(&gone.id).exists(), "deleted template kept");

    // Step 2: the team deleted: its snapshot goes from the host too.
    let kept = tenant.snapshot(&sb.id, "kept", false).await.unwrap();
    assert!(templates.join(&kept.id).exists());
    tenant.delete_team(&team.id).await.unwrap();
    assert!(
        !templates.join(&kept.id).exists(),
        "a deleted team's snapshot stayed on the host"
    );
    let left: Vec<i64> = {
        let db = s.sqlite();
        let mut st = db
            .prepare("SELECT count(*) FROM templates WHERE team_id = ?1")
            .unwrap();
        st.query_map([&team.id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(left, vec![0]);

    // The other host was never asked about these templates.
    let asked = other.requests();
    assert!(
        !asked.iter().any(|r| r.contains("/v1/templates")),
        "{asked:?}"
    );
}

/// The whole `base` build (bookworm with bash, python3, pip, git, curl, sudo and the user
/// `user`), then a sandbox from it with E2B's default template through our API and through the
/// E2B Python SDK (`Sandbox.create()`, commands as `user`). Minutes, and
/// ~150 MB from the Debian mirror: run it by hand with
/// `cargo test --test it base_full_build -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn base_full_build() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    agent_ready(&admin).await;
    let t = Instant::now();
    admin.build_template("base").await.expect("build");
    loop {
        let st = serde_json::to_value(admin.template_build_status("base").await.unwrap()).unwrap();
        let h = &st["hosts"][0];
        assert_ne!(h["status"], "failed", "{st}");
        if h["status"] == "ready" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "the build took over 30 minutes"
        );
        // The pace of a poll, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("base template ready in {:?}", t.elapsed());
    wait_for_template(&admin, "base", 30).await;
    let sb = create(&admin, Some("base"), None).await;
    let out = sh(
        &admin,
        &sb.id,
        "id -u user; getent passwd user | cut -d: -f6; sudo -n -u user sudo -n true && echo sudo-ok; \
         for c in bash python3 pip3 git curl; do command -v $c >/dev/null && echo $c; done",
    )
    .await;
    assert_eq!(
        out,
        "1000\n/home/user\nsudo-ok\nbash\npython3\npip3\ngit\ncurl\n"
    );
    // E2B's SDK with its default template (`base`), its commands as `user` in `/home/user`.
    let Some(py) = crate::e2b::python() else {
        return;
    };
    let key = admin.create_key("e2b").await.unwrap().key.unwrap();
    let mut cmd = std::process::Command::new(py);
    cmd.args([
        "-c",
        "from e2b import Sandbox\n\
         sbx = Sandbox.create()\n\
         r = sbx.commands.run('whoami; pwd; python3 -c \"print(6*7)\"')\n\
         print(sbx.get_info().template_id, r.stdout.split(), sep='|')\n\
         sbx.kill()",
    ]);
    crate::e2b::sdk_env(&mut cmd, &s, &key);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "base|['user', '/home/user', '42']"
    );
}
