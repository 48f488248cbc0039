//! Per-sandbox usage samples over the real thing: an agent sampling a real VM every second, the
//! server's `GET /v1/sandboxes/{id}/metrics` and `sandboxctl sandbox metrics [--watch]`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::{ExecRequest, SandboxMetric};

use crate::common::{
    BIN, TestAgent, TestServer, agent_call_token, cli, cli_login, code, create_when_ready, raw,
    step, vm_permit, wait_until,
};

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// The newest sample, once there is one taken after `after` (unix seconds).
async fn latest_after(c: &ApiClient, id: &str, after: i64) -> Option<SandboxMetric> {
    let all = c.sandbox_metrics(id, Some(after + 1), None).await.unwrap();
    all.last().copied()
}

#[tokio::test]
async fn sandbox_metrics_follow_the_guest() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start_with(&s, &admin, &["--sample-interval", "1s"]).await;
    let sb = create_when_ready(&admin, &agent).await;
    let id = sb.id.clone();
    let url = |q: &str| format!("{}/v1/sandboxes/{id}/metrics{q}", s.url);

    let first = step("samples arrive with plausible figures", async {
        let got = std::cell::Cell::new(None);
        wait_until(
            "a sample with the guest's figures",
            Duration::from_secs(60),
            || async {
                got.set(
                    latest_after(&admin, &id, 0)
                        .await
                        .filter(|m| m.mem_total > 0),
                );
                got.get().is_some()
            },
        )
        .await;
        let m = got.get().unwrap();
        assert_eq!(m.cpu_count, sb.vcpus);
        assert!((0.0..=100.0).contains(&m.cpu_used_pct), "{m:?}");
        // The guest's kernel has the sandbox's memory, less what it reserves for itself.
        let size = u64::from(sb.memory_mb) << 20;
        assert!(
            m.mem_total <= size && m.mem_total >= size / 10 * 7,
            "{m:?} for {size}"
        );
        assert!(m.mem_used > 0 && m.mem_used < m.mem_total, "{m:?}");
        assert!(m.mem_cache < m.mem_total, "{m:?}");
        // The disk is the guest's root filesystem, as its own df sees it.
        let df = admin.exec(&id, &sh("df -k / | tail -n 1")).await.unwrap();
        let blocks: u64 = df
            .stdout
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(m.disk_total, blocks * 1024, "df said {}", df.stdout);
        assert!(m.disk_used > 0 && m.disk_used < m.disk_total, "{m:?}");
        m
    })
    .await;

    step("disk use grows with a file written in the guest", async {
        let r = admin
            .exec(
                &id,
                &sh("dd if=/dev/zero of=/root/fill bs=1M count=20 2>/dev/null && sync"),
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{}", r.stderr);
        wait_until(
            "a sample with 20 MiB more disk used",
            Duration::from_secs(60),
            || async {
                latest_after(&admin, &id, first.timestamp)
                    .await
                    .is_some_and(|m| m.disk_used >= first.disk_used + (15 << 20))
            },
        )
        .await;
    })
    .await;

    let busy = step("CPU rises while the guest burns it", async {
        let r = admin
            .exec(&id, &sh("yes > /dev/null 2>&1 < /dev/null &"))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{}", r.stderr);
        let started = sandboxctl::time::unix_now();
        let got = std::cell::Cell::new(None);
        wait_until(
            "a sample with the vCPU mostly busy",
            Duration::from_secs(120),
            || async {
                got.set(
                    latest_after(&admin, &id, started)
                        .await
                        .filter(|m| m.cpu_used_pct >= 40.0),
                );
                got.get().is_some()
            },
        )
        .await;
        got.get().unwrap()
    })
    .await;

    step("CPU falls after the burner is killed", async {
        let r = admin.exec(&id, &sh("kill $(pidof yes)")).await.unwrap();
        assert_eq!(r.exit_code, 0, "{}", r.stderr);
        let killed = sandboxctl::time::unix_now();
        wait_until(
            "a sample with the vCPU mostly idle",
            Duration::from_secs(120),
            || async {
                latest_after(&admin, &id, killed)
                    .await
                    .is_some_and(|m| m.cpu_used_pct < 15.0 && m.cpu_used_pct < busy.cpu_used_pct)
            },
        )
        .await;
    })
    .await;

    step(
        "start and end choose samples; bad ones are refused naming the field",
        async {
            let all = admin.sandbox_metrics(&id, None, None).await.unwrap();
            assert!(all.len() >= 3);
            assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
            let t = all[all.len() / 2].timestamp;
            let some = admin.sandbox_metrics(&id, Some(t), Some(t)).await.unwrap();
            assert!(!some.is_empty() && some.iter().all(|m| m.timestamp == t));
            for (q, field) in [
                ("?start=yesterday", "start"),
                ("?start=-5", "start"),
                ("?end=1.5", "end"),
                ("?start=200&end=100", "end"),
            ] {
                let (st, body) = raw(Method::GET, &url(q), Some(&auth.token), None).await;
                assert_eq!(st, 400, "{q}: {body}");
                assert_eq!(code(&body), "invalid_field", "{q}: {body}");
                assert_eq!(body["error"]["field"], field, "{q}: {body}");
            }
        },
    )
    .await;

    step(
        "the agent gives samples only to the server's signed calls",
        async {
            let path = format!("/v1/vms/{id}/metrics?start=0");
            let agent_url = format!("http://{}{path}", agent.addr);
            let (st, _) = raw(Method::GET, &agent_url, None, None).await;
            assert_eq!(st, 401);
            let token = agent_call_token(&s, &agent.host_id, "GET", &path, b"", 0);
            let (st, body) = raw(Method::GET, &agent_url, Some(&token), None).await;
            assert_eq!(st, 200, "{body}");
            assert!(!body.as_array().unwrap().is_empty(), "{body}");
            // A token is bound to its path: the same one for another VM's samples is refused.
            let other = agent_url.replace(&id, "sbx_someoneelse");
            let (st, _) = raw(Method::GET, &other, Some(&token), None).await;
            assert_eq!(st, 401);
        },
    )
    .await;

    step("another team sees no such sandbox", async {
        let (other, _) = s.signup("other@example.com", "Other").await;
        let (st, body) = raw(Method::GET, &url(""), Some(&other.token), None).await;
        assert_eq!(st, 404, "{body}");
    })
    .await;

    step(
        "the CLI prints samples, and --watch new ones as they come",
        async {
            let cfg = cli_login(&s, "admin@example.com");
            let (rc, out, err) = cli(&cfg, &["sandbox", "metrics", &id], None);
            assert_eq!(rc, 0, "{err}");
            let mut lines = out.lines();
            let header = lines.next().unwrap();
            assert!(
                header.starts_with("TIME") && header.contains("CPU"),
                "{out}"
            );
            assert!(
                header.contains("MEM USED") && header.contains("DISK TOTAL"),
                "{out}"
            );
            let row = lines.next().expect("a sample row");
            assert!(row.contains(&format!("% of {}", sb.vcpus)), "{out}");

            // From a second ago: all but at most one row --watch prints came after it started.
            let mut child = Command::new(BIN)
                .args(["sandbox", "metrics", &id, "--watch", "--since", "1s"])
                .env("SANDBOXCTL_CONFIG", &cfg)
                .env_remove("SANDBOXCTL_SERVER")
                .env_remove("SANDBOXCTL_TOKEN")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let rows = tokio::task::spawn_blocking(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .skip(1)
                    .take(3)
                    .collect::<Vec<String>>()
            });
            let rows = tokio::time::timeout(Duration::from_secs(120), rows)
                .await
                .expect("--watch printed new rows")
                .unwrap();
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(rows.len(), 3, "{rows:?} {err}");
            let times: Vec<&str> = rows.iter().map(|r| &r[..8]).collect();
            assert!(times.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
        },
    )
    .await;

    step(
        "a paused sandbox keeps its samples and gets none while paused",
        async {
            admin.pause_sandbox(&id).await.unwrap();
            let paused_at = sandboxctl::time::unix_now();
            let before = admin.sandbox_metrics(&id, None, None).await.unwrap();
            assert!(!before.is_empty());
            // Time passes while it is paused (no assertion on how long).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let resumed_at = sandboxctl::time::unix_now();
            admin.resume_sandbox(&id).await.unwrap();
            wait_until(
                "a sample after the resume",
                Duration::from_secs(60),
                || async { latest_after(&admin, &id, resumed_at).await.is_some() },
            )
            .await;
            let all = admin.sandbox_metrics(&id, None, None).await.unwrap();
            let gap: Vec<_> = all
                .iter()
                .filter(|m| m.timestamp > paused_at && m.timestamp < resumed_at)
                .collect();
            assert!(gap.is_empty(), "samples while paused: {gap:?}");
        },
    )
    .await;

    step("an ended sandbox's samples went with it", async {
        admin.delete_sandbox(&id).await.unwrap();
        let (st, body) = raw(Method::GET, &url(""), Some(&auth.token), None).await;
        assert_eq!(st, 409, "{body}");
        assert_eq!(code(&body), "sandbox_not_running");
    })
    .await;
}
