//! The fleet: several real agent processes, round-robin placement, BYOC isolation, staleness and
//! recovery, orphans, crashes and host deletion. Intervals are shrunk through the flags.

use reqwest::Method;
use sandboxctl::proto::api::{
    CreateHostRequest, CreateSandboxRequest, ExecRequest, SandboxResponse,
};
use std::time::Duration;

use crate::common::{
    TestAgent, TestServer, agent_call_token, code, raw, signal, step, vm_permit, wait_until,
};

async fn create(c: &sandboxctl::cli::client::ApiClient) -> SandboxResponse {
    c.create_sandbox(&CreateSandboxRequest::default())
        .await
        .expect("sandbox create")
}

async fn status(c: &sandboxctl::cli::client::ApiClient, id: &str) -> String {
    c.get_sandbox(id)
        .await
        .map(|s| s.status)
        .unwrap_or_default()
}

#[tokio::test]
async fn fleet_spreads_isolates_heals_and_deletes() {
    let _vm = vm_permit().await;
    let started = std::time::Instant::now();
    let s = TestServer::start_with(&["--monitor-interval", "1s", "--host-stale-after", "3s"]).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let mut a = TestAgent::start(&s, &admin).await;
    let b = TestAgent::start(&s, &admin).await;

    let (mut on_a, mut on_b) = step("round robin over the two shared hosts", async {
        // Round robin over the two shared hosts.
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        for _ in 0..4 {
            let sb = create(&admin).await;
            match sb.host_id.as_deref() {
                Some(h) if h == a.host_id => on_a.push(sb.id),
                Some(h) if h == b.host_id => on_b.push(sb.id),
                other => panic!("placed on {other:?}"),
            }
        }
        assert_eq!(
            (on_a.len(), on_b.len()),
            (2, 2),
            "round robin spreads 4 sandboxes 2/2"
        );
        (on_a, on_b)
    })
    .await;
    let (owner, c) = step("a BYOC host serves its team and nobody else", async {
        // A team with its own (BYOC) host gets it; nobody else does.
        let (o, owner) = s.signup("owner@example.com", "Owner").await;
        let byoc = CreateHostRequest {
            host_type: "byoc".into(),
            team_id: o.team_id.clone(),
            name: Some("my box".into()),
            provider: None,
            zone: None,
        };
        let c = TestAgent::start_host(&s, &owner, &byoc, &[]).await;
        for _ in 0..2 {
            assert_eq!(
                create(&owner).await.host_id.as_deref(),
                Some(c.host_id.as_str()),
                "the team is pinned to its own host"
            );
        }
        let other = create(&admin).await;
        assert_ne!(
            other.host_id.as_deref(),
            Some(c.host_id.as_str()),
            "a BYOC host never runs another team's sandbox"
        );
        if other.host_id.as_deref() == Some(a.host_id.as_str()) {
            on_a.push(other.id.clone());
        } else {
            on_b.push(other.id.clone());
        }
        // The owner sees their host, not the others.
        let visible: Vec<String> = owner
            .list_hosts()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(visible, vec![c.host_id.clone()]);
        (owner, c)
    })
    .await;
    step(
        "calls with expired or misdirected tokens are refused",
        async {
            // Calls to an agent with an expired (but correctly signed) token are refused.
            let expired = agent_call_token(&s, &c.host_id, "GET", "/v1/vms", b"", 120);
            let (st, _) = raw(
                Method::GET,
                &format!("http://{}/v1/vms", c.addr),
                Some(&expired),
                None,
            )
            .await;
            assert_eq!(st, 401);
            let for_other_host = agent_call_token(&s, &a.host_id, "GET", "/v1/vms", b"", 0);
            let (st, _) = raw(
                Method::GET,
                &format!("http://{}/v1/vms", c.addr),
                Some(&for_other_host),
                None,
            )
            .await;
            assert_eq!(st, 401, "a token for another host is refused");
        },
    )
    .await;
    step("the monitor destroys an orphan VM", async {
        // An orphan: a VM the database does not know is destroyed by the monitor.
        let orphan = r#"{"id":"sbx_orphan","template":"minimal","vcpus":1,"memory_mb":256}"#;
        let token = agent_call_token(&s, &b.host_id, "POST", "/v1/vms", orphan.as_bytes(), 0);
        let (st, v) = raw(
            Method::POST,
            &format!("http://{}/v1/vms", b.addr),
            Some(&token),
            Some(orphan),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let list_url = format!("http://{}/v1/vms", b.addr);
        wait_until(
            "the orphan VM to be destroyed",
            Duration::from_secs(30),
            || {
                let (url, s2) = (list_url.clone(), &s);
                let bid = b.host_id.clone();
                async move {
                    let t = agent_call_token(s2, &bid, "GET", "/v1/vms", b"", 0);
                    let (_, v) = raw(Method::GET, &url, Some(&t), None).await;
                    !v["vms"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|vm| vm["id"] == "sbx_orphan")
                }
            },
        )
        .await;
        assert!(!b.dir.path().join("vms/sbx_orphan").exists());
    })
    .await;
    step("a frozen agent: unreachable, missing, then healed", async {
        // Agent A stops answering: host unreachable, its sandboxes missing; back again: both heal.
        let t0 = std::time::Instant::now();
        signal(a.pid().unwrap(), libc::SIGSTOP);
        wait_until("host A unreachable", Duration::from_secs(30), || async {
            admin.get_host(&a.host_id).await.unwrap().status == "unreachable"
        })
        .await;
        for id in &on_a {
            wait_until("sandbox missing", Duration::from_secs(10), || async {
                status(&admin, id).await == "missing"
            })
            .await;
        }
        let stale_secs = t0.elapsed().as_secs_f64();
        signal(a.pid().unwrap(), libc::SIGCONT);
        wait_until("host A online again", Duration::from_secs(30), || async {
            admin.get_host(&a.host_id).await.unwrap().status == "online"
        })
        .await;
        for id in &on_a {
            wait_until("sandbox running again", Duration::from_secs(30), || async {
                status(&admin, id).await == "running"
            })
            .await;
        }
        let heal_secs = t0.elapsed().as_secs_f64() - stale_secs;
        let r = admin
            .exec(
                &on_a[0],
                &ExecRequest {
                    cmd: "echo".into(),
                    args: vec!["still here".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.stdout, "still here\n");
        eprintln!(
            "failover: unreachable+missing after {stale_secs:.1} s, healed {heal_secs:.1} s after SIGCONT"
        );
    })
    .await;
    step("an agent killed and restarted finds its VMs", async {
        // Agent A is killed (-9) and started again: its VMs kept running and it finds them again.
        a.kill();
        a.spawn();
        a.wait_ready(&admin).await;
        let r = admin
            .exec(
                &on_a[1],
                &ExecRequest {
                    cmd: "cat".into(),
                    args: vec!["/proc/uptime".into()],
                    ..Default::default()
                },
            )
            .await
            .expect("exec after an agent restart");
        assert_eq!(r.exit_code, 0);
        assert_eq!(status(&admin, &on_a[1]).await, "running");
    })
    .await;
    step(
        "an agent that died with its VMs: sandboxes stopped",
        async {
            // Agent A dies with its VMs; when it comes back, their sandboxes are stopped.
            a.kill();
            for pid in a.qemu_pids() {
                signal(pid, libc::SIGKILL);
            }
            a.spawn();
            for id in &on_a {
                wait_until(
                    "sandbox stopped after its VM vanished",
                    Duration::from_secs(60),
                    || async { status(&admin, id).await == "stopped" },
                )
                .await;
            }
            let gone = admin.get_sandbox(&on_a[0]).await.unwrap();
            assert!(gone.error.unwrap_or_default().contains("gone"));
        },
    )
    .await;
    step("deleting a host with sandboxes: 409, then force", async {
        // Deleting host B: 409 with its sandboxes, then force.
        let e = admin.delete_host(&b.host_id, false).await.unwrap_err();
        assert_eq!(e.code(), Some("host_has_sandboxes"));
        let (st, v) = raw(
            Method::DELETE,
            &format!("{}/v1/hosts/{}", s.url, b.host_id),
            Some(&login(&s).await),
            None,
        )
        .await;
        assert_eq!((st, code(&v)), (409, "host_has_sandboxes"));
        let mut ids: Vec<String> = v["error"]["sandbox_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        on_b.sort();
        assert_eq!(ids, on_b);
        admin.delete_host(&b.host_id, true).await.unwrap();
        assert_eq!(
            admin.get_host(&b.host_id).await.unwrap_err().status(),
            Some(404)
        );
        for id in &on_b {
            assert_eq!(status(&admin, id).await, "stopped");
        }
        wait_until("host B's VMs gone", Duration::from_secs(20), || async {
            b.qemu_pids().is_empty()
        })
        .await;
    })
    .await;
    step("the BYOC sandboxes deleted through the API", async {
        // Clean up the BYOC sandboxes through the API.
        for sb in owner.list_sandboxes(Some("running")).await.unwrap() {
            owner.delete_sandbox(&sb.id).await.unwrap();
        }
        wait_until("host C's VMs gone", Duration::from_secs(20), || async {
            c.qemu_pids().is_empty()
        })
        .await;
    })
    .await;
    eprintln!(
        "fleet test: 3 agents, 8 VMs, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

async fn login(s: &TestServer) -> String {
    s.anon()
        .login("root@example.com", "correct horse battery")
        .await
        .unwrap()
        .token
}
