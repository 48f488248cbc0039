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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_over_indistinguishable_sandboxes() {
    init_logs();
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
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
        },
    )
    .await;
}
