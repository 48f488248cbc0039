//! The warm pool against real QEMU: waiting VMs are counted but not listed, a create takes one
//! and it is indistinguishable from a fresh restore (identity, env, clock, entropy, nothing left
//! from the wait), the pool refills, and no waiting VM outlives its agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandboxctl::agent::vm::pool::{WarmPoolConfig, WarmPoolSpec};
use sandboxctl::agent::vm::{CreateVmRequest, VmManager};

use crate::common::{step, vm_config, vm_permit, wait_until};
use crate::vm::{create_request, init_logs, qemu_alive, sh};

const SPEC: &str = "minimal/256m-1c-net=2";

fn pool_config(data_dir: &std::path::Path) -> sandboxctl::agent::vm::VmConfig {
    sandboxctl::agent::vm::VmConfig {
        warm_pool: WarmPoolConfig {
            specs: vec![SPEC.parse::<WarmPoolSpec>().expect("spec")],
            // The test host has memory to spare; this only keeps the check in the loop.
            min_available_mb: 256,
        },
        ..vm_config(data_dir)
    }
}

fn request(id: &str) -> CreateVmRequest {
    CreateVmRequest {
        network: true,
        ..create_request(id)
    }
}

async fn ready(vms: &VmManager, n: usize) -> bool {
    vms.pool_vms().iter().filter(|p| p.ready).count() == n
}

/// What a user can see of the sandbox's own state, with its id written as ID: host name,
/// environment, files in the usual writable places, processes (kernel workers left out: their
/// numbering follows timing) and the pipeline's own.
async fn visible_state(vms: &VmManager, id: &str) -> String {
    let r = sh(
        vms,
        id,
        "hostname; env | grep -v -e '^PWD=' -e '^SHLVL=' | sort; ls -a / /tmp /root /run /var/tmp 2>&1; \
         for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -v -e '^kworker' -e '^cat$' -e '^sort$' -e '^grep$' | sort",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    r.stdout.replace(id, "ID")
}

async fn random_bytes(vms: &VmManager, id: &str) -> String {
    let r = sh(vms, id, "head -c16 /dev/urandom | od -An -tx1").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    r.stdout
}

/// The guest's clock minus the host's, in seconds.
async fn clock_skew(vms: &VmManager, id: &str) -> i64 {
    let r = sh(vms, id, "date +%s").await;
    let guest: i64 = r.stdout.trim().parse().expect("date +%s");
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    guest - host
}

/// Ends the QEMUs (by their pid files) and network namespaces a failed test left in `dir`.
struct Cleanup<'a>(&'a std::path::Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.0.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
            {
                // SAFETY: a plain signal to a QEMU this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        sandboxctl::agent::net::remove_namespaces_of(self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_over_indistinguishable_sandboxes() {
    init_logs();
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let _cleanup = Cleanup(data);
    let fresh = "sbx-itfresh";
    let (a, b) = ("sbx-itpoola", "sbx-itpoolb");

    // A fresh restore first, by an agent without a pool; it stays across the restart.
    let fresh_pid = step("a fresh sandbox from the boot snapshot", async {
        let vms = VmManager::start(vm_config(data)).await.expect("start");
        let info = vms.create(request(fresh)).await.expect("create");
        assert_ne!(info.boot_kind.as_deref(), Some("pool"));
        info.pid.expect("pid")
    })
    .await;

    let vms = VmManager::start(pool_config(data)).await.expect("restart");
    // Every place a pool VM had: none may keep a cgroup at the end.
    let mut places: Vec<String> = Vec::new();
    step("the pool fills; counted in capacity, never listed", async {
        wait_until("two VMs waiting", Duration::from_secs(300), || {
            ready(&vms, 2)
        })
        .await;
        let (n, mem, cpus) = vms.usage().await;
        assert_eq!(
            (n, mem, cpus),
            (1, 3 * 256, 3),
            "the fresh VM plus two waiting"
        );
        let listed: Vec<String> = vms.list().await.into_iter().map(|v| v.id).collect();
        assert_eq!(listed, vec![fresh.to_string()]);
    })
    .await;

    // Let the waiting VMs wait a while: their clock must still be right at the hand-over.
    tokio::time::sleep(Duration::from_secs(20)).await;

    step("two creates take the waiting VMs", async {
        for id in [a, b] {
            let info = vms.create(request(id)).await.expect("create from the pool");
            assert_eq!(info.boot_kind.as_deref(), Some("pool"), "{id}");
            assert!(info.pid.is_some_and(qemu_alive));
        }
        let mut listed: Vec<String> = vms.list().await.into_iter().map(|v| v.id).collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![fresh.to_string(), a.to_string(), b.to_string()]
        );
    })
    .await;

    step("a pool sandbox looks like a fresh one", async {
        let r = sh(&vms, a, "echo $SANDBOX_GREETING").await;
        assert_eq!(r.stdout, "hello from create\n");
        let seen_fresh = visible_state(&vms, fresh).await;
        let seen_pool = visible_state(&vms, a).await;
        assert_eq!(seen_pool, seen_fresh);
        let r = sh(&vms, a, "ip -4 addr show eth0; ip route").await;
        assert!(r.stdout.contains("10.0.2.15/24"), "{r:?}");
        assert!(r.stdout.contains("default via 10.0.2.2"), "{r:?}");
    })
    .await;

    step("clock and entropy are the sandbox's own", async {
        for id in [a, b] {
            let skew = clock_skew(&vms, id).await;
            assert!(skew.abs() <= 2, "{id}: guest clock off by {skew} s");
        }
        let (ra, rb) = (random_bytes(&vms, a).await, random_bytes(&vms, b).await);
        assert_ne!(ra, rb, "two pool sandboxes share their random bytes");
    })
    .await;

    step("the pool refills in the background", async {
        wait_until("two VMs waiting again", Duration::from_secs(120), || {
            ready(&vms, 2)
        })
        .await;
        let (n, mem, cpus) = vms.usage().await;
        assert_eq!((n, mem, cpus), (3, 5 * 256, 5));
    })
    .await;

    let waiting: Vec<u32> = vms.pool_vms().iter().filter_map(|p| p.pid).collect();
    places.extend(vms.pool_vms().into_iter().map(|p| p.place));
    assert_eq!(waiting.len(), 2);
    step(
        "the agent stopping ends the waiting VMs, not the sandboxes",
        async {
            vms.drain_pool().await;
            for pid in &waiting {
                assert!(!qemu_alive(*pid), "waiting QEMU {pid} outlived the drain");
            }
            assert!(vms.pool_vms().is_empty());
            assert_eq!(vms.usage().await, (3, 3 * 256, 3));
            let left: Vec<String> = std::fs::read_dir(data.join("vms"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pool-"))
                .collect();
            // The two handed-over sandboxes keep their pool- folders; nothing else is left.
            assert_eq!(left.len(), 2, "{left:?}");
            assert!(qemu_alive(fresh_pid));
        },
    )
    .await;
    drop(vms);

    let vms = VmManager::start(pool_config(data)).await.expect("restart");
    step(
        "a restarted agent takes back the handed-over sandboxes",
        async {
            for id in [a, b, fresh] {
                let r = sh(&vms, id, "echo $SANDBOX_GREETING").await;
                assert_eq!(r.stdout, "hello from create\n", "{id}");
            }
            wait_until("two VMs waiting", Duration::from_secs(120), || {
                ready(&vms, 2)
            })
            .await;
        },
    )
    .await;

    let waiting: Vec<u32> = vms.pool_vms().iter().filter_map(|p| p.pid).collect();
    places.extend(vms.pool_vms().into_iter().map(|p| p.place));
    step(
        "dropping the agent's manager leaves no waiting QEMU",
        async {
            drop(vms);
            for pid in &waiting {
                wait_until(
                    "the waiting QEMU is gone",
                    Duration::from_secs(10),
                    || async { !qemu_alive(*pid) },
                )
                .await;
            }
        },
    )
    .await;

    let vms = VmManager::start(vm_config(data))
        .await
        .expect("restart without a pool");
    step(
        "the next agent removes what the waiting VMs left; sandboxes are destroyed",
        async {
            let left = std::fs::read_dir(data.join("vms")).unwrap().count();
            assert_eq!(left, 3, "only the three sandboxes' folders are left");
            for id in [a, b, fresh] {
                vms.destroy(id).await.expect("destroy");
            }
            assert_eq!(std::fs::read_dir(data.join("vms")).unwrap().count(), 0);
            assert!(vms.namespaces().is_empty(), "{:?}", vms.namespaces());
            if let Some(root) = vms.cgroups().root() {
                for p in &places {
                    assert!(!root.join(p).exists(), "the cgroup of {p} is left");
                }
            }
        },
    )
    .await;
}

/// Through the server: the create's answer says `pool`, the host's capacity counts the waiting
/// VM, an agent killed with SIGKILL leaves it to the next agent, which ends it, and an agent
/// stopped with SIGTERM ends its waiting VMs itself; sandboxes survive both.
#[tokio::test]
async fn warm_pool_through_the_api_and_agent_restarts() {
    use crate::common::{TestAgent, TestServer, create_when_ready, exec};
    use sandboxctl::agent::vm::pool::waiting_pids;

    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let mut agent = TestAgent::start_with(
        &s,
        &admin,
        &[
            "--warm-pool",
            "minimal/256m-1c-net=1",
            "--warm-pool-min-available-mb",
            "256",
        ],
    )
    .await;
    let dir = agent.dir.path().to_path_buf();
    let one_waiting = || std::future::ready(waiting_pids(&dir).len() == 1);

    step("the waiting VM counts in the host's capacity", async {
        wait_until("a VM waits", Duration::from_secs(300), one_waiting).await;
        wait_until(
            "the heartbeat counts it",
            Duration::from_secs(30),
            || async {
                let h = admin.get_host(&agent.host_id).await.expect("host");
                h.used_memory_mb == Some(256) && h.used_vcpus == Some(1) && h.running_vms == Some(0)
            },
        )
        .await;
    })
    .await;

    let sb = step("a create takes it: boot_kind pool", async {
        let sb = create_when_ready(&admin, &agent).await;
        assert_eq!(sb.boot_kind.as_deref(), Some("pool"), "{sb:?}");
        let r = admin
            .exec(&sb.id, &exec("sh", &["-c", "echo $SANDBOX_ID"]))
            .await
            .expect("exec");
        assert_eq!(r.stdout, format!("{}\n", sb.id));
        sb
    })
    .await;

    let stale = step("SIGKILL: the next agent ends the waiting VM first", async {
        wait_until("the pool refills", Duration::from_secs(120), one_waiting).await;
        let stale = waiting_pids(&dir)[0];
        agent.kill();
        assert!(qemu_alive(stale), "a killed agent cannot end its VMs");
        agent.spawn();
        agent.wait_ready(&admin).await;
        assert!(
            !qemu_alive(stale),
            "the restarted agent left the old waiting VM"
        );
        let r = admin
            .exec(&sb.id, &exec("sh", &["-c", "echo $SANDBOX_ID"]))
            .await
            .expect("the sandbox survived");
        assert_eq!(r.stdout, format!("{}\n", sb.id));
        stale
    })
    .await;

    step(
        "SIGTERM: the agent ends its waiting VMs, not its sandboxes",
        async {
            wait_until("the pool refills", Duration::from_secs(120), one_waiting).await;
            let waiting = waiting_pids(&dir);
            assert!(!waiting.contains(&stale));
            let sandbox_qemus: Vec<u32> = agent
                .qemu_pids()
                .into_iter()
                .filter(|p| !waiting.contains(p))
                .collect();
            assert_eq!(sandbox_qemus.len(), 1, "{sandbox_qemus:?}");
            assert!(agent.terminate().success());
            for pid in waiting {
                assert!(!qemu_alive(pid), "waiting QEMU {pid} outlived its agent");
            }
            let folders = std::fs::read_dir(dir.join("vms")).unwrap().count();
            assert_eq!(folders, 1, "only the sandbox's folder is left");
            assert!(
                qemu_alive(sandbox_qemus[0]),
                "the sandbox must outlive the agent"
            );
        },
    )
    .await;
}
