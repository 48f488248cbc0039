//! The VM manager against real QEMU: boot, exec, destroy, and reattach after an agent restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxctl::agent::vm::{
    AccelChoice, CreateVmRequest, ExecRequest, ExecResponse, VmConfig, VmError, VmManager, VmState,
};

use crate::common::{BIN, kernel_dir, vm_permit};

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("TEST_LOG_FILTER").unwrap_or_else(|_| "sandboxctl=debug".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

fn config(data_dir: &Path) -> VmConfig {
    VmConfig {
        data_dir: data_dir.to_path_buf(),
        kernel_dir: kernel_dir(),
        accel: AccelChoice::Auto,
        guest_binary: Some(PathBuf::from(BIN)),
    }
}

fn create_request(id: &str) -> CreateVmRequest {
    let mut env = BTreeMap::new();
    env.insert(
        "SANDBOX_GREETING".to_string(),
        "hello from create".to_string(),
    );
    CreateVmRequest {
        id: id.to_string(),
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 256,
        env,
        network: false,
    }
}

fn cmd(cmd: &str, args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn sh(vms: &VmManager, id: &str, script: &str) -> ExecResponse {
    vms.exec(id, cmd("sh", &["-c", script]))
        .await
        .expect("exec")
}

fn qemu_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z")
        ),
        Err(_) => false,
    }
}

fn console(data_dir: &Path, id: &str) -> String {
    std::fs::read(data_dir.join("vms").join(id).join("console.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

async fn assert_gone(vms: &VmManager, data_dir: &Path, id: &str, pid: u32) {
    assert!(matches!(vms.get(id).await, Err(VmError::NotFound(_))));
    assert!(!qemu_alive(pid), "QEMU {pid} still running after destroy");
    assert!(
        !data_dir.join("vms").join(id).exists(),
        "files left after destroy"
    );
    assert!(matches!(vms.destroy(id).await, Err(VmError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boot_exec_destroy() {
    init_logs();
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let vms = VmManager::start(config(tmp.path()))
        .await
        .expect("start the manager");
    eprintln!(
        "manager up in {:?}, accel {} ({})",
        t0.elapsed(),
        vms.accel().kind,
        vms.accel().reason
    );
    assert_eq!(vms.templates().await, vec!["minimal".to_string()]);

    // Validation names the field.
    for (req, field) in [
        (
            CreateVmRequest {
                id: "../etc".into(),
                ..create_request("x")
            },
            "id",
        ),
        (
            CreateVmRequest {
                vcpus: 0,
                ..create_request("sbx_v")
            },
            "vcpus",
        ),
        (
            CreateVmRequest {
                memory_mb: 64,
                ..create_request("sbx_v")
            },
            "memory_mb",
        ),
        (
            CreateVmRequest {
                template: "nope".into(),
                ..create_request("sbx_v")
            },
            "template",
        ),
    ] {
        match vms.create(req).await {
            Err(VmError::BadRequest { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected BadRequest on {field}, got {other:?}"),
        }
    }

    let id = "sbx_it_vm1";
    let t = Instant::now();
    let info = vms.create(create_request(id)).await.expect("create");
    eprintln!("cold boot: {:?} (boot_ms {:?})", t.elapsed(), info.boot_ms);
    assert_eq!(info.state, VmState::Running);
    assert!(info.boot_ms.is_some());
    let pid = info.pid.expect("pid");
    assert!(matches!(
        vms.create(create_request(id)).await,
        Err(VmError::Conflict(_))
    ));
    assert_eq!(vms.list().await.len(), 1);
    assert_eq!(vms.usage().await, (1, 256, 1));

    let r = vms
        .exec(id, cmd("echo", &["hello", "world"]))
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_str(), r.exit_code, r.timed_out),
        ("hello world\n", 0, false)
    );

    let r = vms.exec(id, cmd("uname", &["-a"])).await.unwrap();
    assert!(r.stdout.starts_with("Linux "), "{r:?}");
    assert!(r.stdout.contains(id), "hostname is the sandbox id: {r:?}");

    let r = sh(&vms, id, "echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("out\n", "err\n", 3)
    );

    let mut req = cmd("sh", &["-c", "echo $SANDBOX_GREETING/$FOO/$(pwd)"]);
    req.env.insert("FOO".into(), "bar".into());
    req.cwd = Some("/tmp".into());
    let r = vms.exec(id, req).await.unwrap();
    assert_eq!(r.stdout, "hello from create/bar//tmp\n");

    let r = sh(&vms, id, r"printf 'a\377\376b'").await;
    assert_eq!(r.stdout, "a\u{FFFD}\u{FFFD}b");

    let r = vms.exec(id, cmd("no-such-binary", &[])).await.unwrap();
    assert_eq!(r.exit_code, 127);
    assert!(r.stderr.contains("not found"), "{r:?}");

    let mut req = cmd("pwd", &[]);
    req.cwd = Some("/does/not/exist".into());
    let r = vms.exec(id, req).await.unwrap();
    assert_eq!(r.exit_code, 126, "{r:?}");

    let r = sh(&vms, id, "kill -9 $$").await;
    assert_eq!(r.exit_code, 128 + 9);

    let mut req = cmd("sh", &["-c", "echo started; sleep 30"]);
    req.timeout_sec = Some(1);
    let t = Instant::now();
    let r = vms.exec(id, req).await.unwrap();
    assert!(r.timed_out && r.exit_code == 124, "{r:?}");
    assert_eq!(r.stdout, "started\n");
    assert!(t.elapsed() < Duration::from_secs(10));

    let mut req = cmd("true", &[]);
    req.timeout_sec = Some(3601);
    assert!(matches!(
        vms.exec(id, req).await,
        Err(VmError::BadRequest {
            field: "timeout_sec",
            ..
        })
    ));

    // Concurrent execs share the channel.
    let vms2 = vms.clone();
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let vms = vms2.clone();
            tokio::spawn(async move { sh(&vms, id, &format!("sleep 1; echo {i}")).await })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().stdout, format!("{i}\n"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "execs ran one after another: {:?}",
        t.elapsed()
    );

    // Output beyond the cap is dropped, the command still completes.
    let t = Instant::now();
    let r = sh(
        &vms,
        id,
        "head -c 11000000 /dev/zero | tr '\\0' x; echo done >&2",
    )
    .await;
    eprintln!("11 MB of output in {:?}", t.elapsed());
    assert!(r.truncated);
    assert_eq!(r.stdout.len(), 10 * 1024 * 1024);
    assert_eq!((r.stderr.as_str(), r.exit_code), ("done\n", 0));

    // A crashed guest program is respawned by init; the exec it was serving fails, the next one
    // works and the sandbox keeps its identity.
    let r = vms
        .exec(id, cmd("sh", &["-c", "kill -9 $PPID; sleep 5"]))
        .await;
    assert!(matches!(r, Err(VmError::GuestUnavailable(_))), "{r:?}");
    let r = sh(&vms, id, "echo $SANDBOX_GREETING; hostname").await;
    assert_eq!(r.stdout, format!("hello from create\n{id}\n"));

    // Destroy while an exec runs: the exec fails, the VM is gone.
    let vms3 = vms.clone();
    let exec = tokio::spawn(async move { vms3.exec(id, cmd("sleep", &["20"])).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    vms.destroy(id).await.expect("destroy");
    let r = tokio::time::timeout(Duration::from_secs(5), exec)
        .await
        .expect("exec ended")
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    assert_gone(&vms, tmp.path(), id, pid).await;
    assert_eq!(vms.usage().await, (0, 0, 0));
    drop(vms2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_survives_agent_restart() {
    init_logs();
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let id = "sbx_it_restart";
    let vms = VmManager::start(config(tmp.path())).await.expect("start");
    // Two vCPUs (multi-threaded TCG) and a NIC, which the first test does not cover.
    let req = CreateVmRequest {
        vcpus: 2,
        network: true,
        ..create_request(id)
    };
    let t = Instant::now();
    let info = vms.create(req).await.expect("create");
    eprintln!("cold boot, 2 vCPUs + network: {:?}", t.elapsed());
    let pid = info.pid.unwrap();
    let r = sh(
        &vms,
        id,
        "echo before > /root/mark; cat /root/mark; grep -c ^processor /proc/cpuinfo",
    )
    .await;
    assert_eq!(r.stdout, "before\n2\n");
    let r = sh(
        &vms,
        id,
        "ip -4 addr show eth0; ip route; cat /etc/resolv.conf",
    )
    .await;
    assert!(r.stdout.contains("10.0.2.15/24"), "{r:?}");
    assert!(r.stdout.contains("default via 10.0.2.2"), "{r:?}");
    assert!(r.stdout.contains("nameserver 10.0.2.3"), "{r:?}");
    // A command left running across the restart: its late output must not confuse the next agent.
    let vms_a = vms.clone();
    let left = tokio::spawn(async move { sh(&vms_a, id, "sleep 1; echo stale").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    left.abort();
    drop(vms); // the agent goes away; the VM keeps running

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(qemu_alive(pid));
    let vms = VmManager::start(config(tmp.path())).await.expect("restart");
    let info = vms.get(id).await.expect("reattached");
    assert_eq!((info.state, info.pid), (VmState::Running, Some(pid)));
    let r = sh(&vms, id, "cat /root/mark; echo $SANDBOX_GREETING").await;
    assert_eq!(r.stdout, "before\nhello from create\n");
    vms.destroy(id).await.unwrap();
    assert_gone(&vms, tmp.path(), id, pid).await;

    // A guest that powers off leaves a stopped VM; a later agent cleans it up.
    let info = vms.create(create_request(id)).await.expect("create again");
    let pid = info.pid.unwrap();
    let off = tokio::time::timeout(
        Duration::from_secs(20),
        vms.exec(id, cmd("poweroff", &["-f"])),
    )
    .await;
    assert!(
        off.is_ok(),
        "poweroff hung; console: {}",
        console(tmp.path(), id)
    );
    let t = Instant::now();
    while vms.get(id).await.unwrap().state != VmState::Stopped {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "VM still running after poweroff"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!qemu_alive(pid));
    assert_eq!(vms.usage().await, (0, 0, 0));
    assert!(matches!(
        vms.exec(id, cmd("true", &[])).await,
        Err(VmError::Conflict(_))
    ));
    drop(vms);
    let vms = VmManager::start(config(tmp.path())).await.expect("restart");
    assert!(vms.list().await.is_empty());
    assert!(!tmp.path().join("vms").join(id).exists());
}
