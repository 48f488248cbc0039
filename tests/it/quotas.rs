//! Quotas, crash safety and draining hosts (SPEC §15, issue 11): a team's quota holds under
//! concurrent creates and resumes, a platform admin overrides it, a server killed in the middle
//! of 20 creates converges after its restart, and a draining host that dies goes unreachable with
//! its sandboxes deletable.

use std::time::{Duration, Instant};

use reqwest::Method;
use sandboxctl::cli::client::{ApiClient, ClientError};
use sandboxctl::proto::api::CreateSandboxRequest;
use sandboxctl::proto::quota::TeamQuota;
use sandboxctl::proto::vocab::{HostStatus, SandboxStatus};

use crate::common::{
    TestAgent, TestServer, agent_call_token, cli, cli_login, code, exec, raw, step, vm_permit,
    wait_until,
};

/// Starts `n` creates at once; answers each one's outcome.
async fn creates_at_once(c: &ApiClient, n: usize) -> Vec<Result<String, ClientError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.create_sandbox(&CreateSandboxRequest::default())
                    .await
                    .map(|s| {
                        assert_eq!(s.status, SandboxStatus::Running, "{s:?}");
                        s.id
                    })
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("create task"));
    }
    out
}

fn status_code(e: &ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, code, .. } => (*status, code.clone()),
        other => panic!("not an API answer: {other:?}"),
    }
}

#[tokio::test]
async fn quotas_hold_under_concurrent_creates_and_admins_override_them() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--team-quota", "sandboxes=5"]).await;
    let (root, admin) = s.signup("root@example.com", "Root").await;
    let a = TestAgent::start(&s, &admin).await;
    let (u, user) = s.signup("user@example.com", "User").await;
    let team = u.team_id.clone().expect("a personal team");

    let started = step(
        "20 concurrent creates against a quota of 5: exactly 5 start",
        async {
            let t = Instant::now();
            let results = creates_at_once(&user, 20).await;
            let started: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .cloned()
                .collect();
            let refused: Vec<(u16, String)> = results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(status_code)
                .collect();
            eprintln!(
                "20 concurrent creates (quota 5) answered in {:?}",
                t.elapsed()
            );
            assert_eq!(started.len(), 5, "exactly the quota starts: {refused:?}");
            assert_eq!(refused.len(), 15);
            assert!(
                refused
                    .iter()
                    .all(|(st, c)| *st == 429 && c == "quota_exceeded"),
                "the rest are refused with 429 quota_exceeded: {refused:?}"
            );
            let listed = user.list_sandboxes(None).await.unwrap();
            assert_eq!(listed.len(), 5, "a refused create leaves no row");
            assert_eq!(a.qemu_pids().len(), 5, "and starts no VM");
            let q = user.team_quota(&team).await.unwrap();
            assert_eq!(q.limits.sandboxes, Some(5));
            assert_eq!(q.usage.sandboxes, 5);
            assert_eq!(q.usage.memory_mb, 5 * 256);
            started
        },
    )
    .await;

    step(
        "a team cannot raise its own quota; a platform admin can",
        async {
            let err = user
                .set_team_quota(
                    &team,
                    &TeamQuota {
                        sandboxes: Some(50),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(status_code(&err), (403, "admin_required".into()));
            let q = admin
                .set_team_quota(
                    &team,
                    &TeamQuota {
                        sandboxes: Some(6),
                        memory_mb: Some(6 * 256),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                (q.limits.sandboxes, q.default.sandboxes),
                (Some(6), Some(5))
            );
            assert_eq!(q.overrides.memory_mb, Some(6 * 256));
            // The team sees the override too.
            assert_eq!(
                user.team_quota(&team).await.unwrap().limits.sandboxes,
                Some(6)
            );
            let sixth = user
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .expect("the sixth fits the override");
            assert_eq!(sixth.status, SandboxStatus::Running);
            let err = user
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .unwrap_err();
            assert_eq!(status_code(&err), (429, "quota_exceeded".into()));
            // Memory counts too: a bigger sandbox is over even with a free slot.
            user.delete_sandbox(&sixth.id).await.unwrap();
            let err = user
                .create_sandbox(&CreateSandboxRequest {
                    memory_mb: Some(512),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            let (st, c) = status_code(&err);
            assert_eq!((st, c.as_str()), (429, "quota_exceeded"));
            assert!(
                format!("{err}").contains("MB"),
                "the answer names the limit: {err}"
            );
        },
    )
    .await;

    step(
        "a paused sandbox frees its share; resuming it needs room again",
        async {
            let paused = &started[0];
            user.pause_sandbox(paused).await.unwrap();
            // The override allows 6: 4 running now, two more fill it.
            let filler = user
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .expect("the paused sandbox's share is free");
            let filler2 = user
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .expect("the sixth slot");
            let err = user.resume_sandbox(paused).await.unwrap_err();
            assert_eq!(status_code(&err), (429, "quota_exceeded".into()));
            assert_eq!(
                user.get_sandbox(paused).await.unwrap().status,
                SandboxStatus::Paused,
                "a refused resume leaves it paused"
            );
            user.delete_sandbox(&filler.id).await.unwrap();
            user.delete_sandbox(&filler2.id).await.unwrap();
            let back = user.resume_sandbox(paused).await.unwrap();
            assert_eq!(back.status, SandboxStatus::Running);
        },
    )
    .await;

    step(
        "bad quota input names the field; other teams' quotas are not found",
        async {
            let path = format!("{}/v1/teams/{team}/quota", s.url);
            let (st, body) =
                raw(Method::PUT, &path, Some(&root.token), Some(r#"{"cpus":4}"#)).await;
            assert_eq!(st, 400, "{body}");
            assert!(body.to_string().contains("cpus"), "{body}");
            let (st, body) = raw(
                Method::PUT,
                &path,
                Some(&root.token),
                Some(r#"{"vcpus":-1}"#),
            )
            .await;
            assert_eq!((st, code(&body)), (400, "invalid_field"), "{body}");
            assert_eq!(body["error"]["field"], "vcpus", "{body}");
            let (_, other) = s.signup("other@example.com", "Other").await;
            let err = other.team_quota(&team).await.unwrap_err();
            assert_eq!(status_code(&err).0, 404);
            // Back to the server's default.
            let q = admin
                .set_team_quota(&team, &TeamQuota::default())
                .await
                .unwrap();
            assert_eq!(q.limits.sandboxes, Some(5));
            assert_eq!(q.overrides, TeamQuota::default());
        },
    )
    .await;

    for id in started {
        user.delete_sandbox(&id).await.unwrap();
    }
}

/// Counts the sandbox rows by status, straight from the database.
fn rows_by_status(s: &TestServer) -> Vec<(String, String)> {
    let db = s.sqlite();
    let mut st = db
        .prepare("SELECT id, status FROM sandboxes ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn a_server_killed_during_20_creates_converges_after_restart() {
    let _vm = vm_permit().await;
    let flags = ["--monitor-interval", "2s"];
    let mut s = TestServer::start_with(&flags).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let a = TestAgent::start(&s, &admin).await;

    step(
        "kill -9 of the server 1 s into 20 concurrent creates",
        async {
            let c = admin.clone();
            let creates = tokio::spawn(async move { creates_at_once(&c, 20).await });
            wait_until("the creates are recorded", Duration::from_secs(30), || {
                let n = rows_by_status(&s).len();
                async move { n >= 20 }
            })
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.crash_and_restart(&flags).await;
            let outcomes = creates.await.unwrap();
            let lost = outcomes.iter().filter(|r| r.is_err()).count();
            let starting = rows_by_status(&s)
                .iter()
                .filter(|(_, st)| st == "starting")
                .count();
            eprintln!(
                "after the crash: {lost} creates lost their answer, {starting} rows starting"
            );
            assert!(starting > 0, "the crash caught creates in flight");
        },
    )
    .await;

    step("every row ends running with a live VM, or ended", async {
        let t = Instant::now();
        wait_until("no row is left starting", Duration::from_secs(240), || {
            let rows = rows_by_status(&s);
            async move {
                rows.iter()
                    .all(|(_, st)| st != "starting" && st != "pending")
            }
        })
        .await;
        eprintln!("rows settled {:?} after the restart", t.elapsed());
        // A VM the agent was rolling back may be seen running by one pass and gone by the next:
        // wait until the rows and the host agree.
        wait_until(
            "one QEMU per running row, none without",
            Duration::from_secs(120),
            || {
                let want = rows_by_status(&s)
                    .iter()
                    .filter(|(_, st)| st == "running")
                    .count();
                let n = a.qemu_pids().len();
                async move { n == want }
            },
        )
        .await;
        eprintln!("rows and QEMUs agree {:?} after the restart", t.elapsed());
        let rows = rows_by_status(&s);
        let running: Vec<&String> = rows
            .iter()
            .filter(|(_, st)| st == "running")
            .map(|(id, _)| id)
            .collect();
        assert_eq!(a.qemu_pids().len(), running.len(), "{rows:?}");
        assert!(
            rows.iter()
                .all(|(_, st)| ["running", "error", "stopped"].contains(&st.as_str())),
            "{rows:?}"
        );
        eprintln!(
            "{} running, {} ended: {rows:?}",
            running.len(),
            rows.len() - running.len()
        );
        let q = admin
            .team_quota(&admin.me().await.unwrap().team_id.unwrap())
            .await
            .unwrap();
        assert_eq!(
            q.usage.sandboxes as usize,
            running.len(),
            "ended rows hold no capacity"
        );
        for id in &running {
            let r = admin
                .exec(id, &exec("echo", &["alive"]))
                .await
                .expect("exec");
            assert_eq!(r.stdout.trim(), "alive", "{id} runs for real");
        }
        for (id, st) in &rows {
            if st != "running" {
                let e = admin
                    .get_sandbox(id)
                    .await
                    .unwrap()
                    .error
                    .unwrap_or_default();
                assert!(!e.is_empty(), "{id} ended with a reason");
            }
        }
        for id in running {
            admin.delete_sandbox(id).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_draining_host_that_dies_goes_unreachable_and_its_sandboxes_can_be_deleted() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--monitor-interval", "1s", "--host-stale-after", "3s"]).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let mut a = TestAgent::start(&s, &admin).await;
    let sb = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();

    step(
        "drained, then its agent stops: unreachable, the sandbox missing",
        async {
            assert_eq!(
                admin.drain_host(&a.host_id).await.unwrap().status,
                HostStatus::Draining
            );
            a.kill();
            wait_until("the host is unreachable", Duration::from_secs(30), || {
                let (c, h) = (admin.clone(), a.host_id.clone());
                async move { c.get_host(&h).await.unwrap().status == HostStatus::Unreachable }
            })
            .await;
            assert_eq!(
                admin.get_sandbox(&sb.id).await.unwrap().status,
                SandboxStatus::Missing
            );
        },
    )
    .await;

    step("its sandbox can be deleted", async {
        admin
            .delete_sandbox(&sb.id)
            .await
            .expect("delete on a dead draining host");
        assert_eq!(
            admin.get_sandbox(&sb.id).await.unwrap().status,
            SandboxStatus::Stopped
        );
    })
    .await;

    step(
        "the agent comes back draining and its orphan VM is destroyed",
        async {
            a.spawn();
            wait_until("the host is back", Duration::from_secs(60), || {
                let (c, h) = (admin.clone(), a.host_id.clone());
                async move { c.get_host(&h).await.unwrap().status != HostStatus::Unreachable }
            })
            .await;
            assert_eq!(
                admin.get_host(&a.host_id).await.unwrap().status,
                HostStatus::Draining,
                "the operator's drain outlives the outage"
            );
            wait_until("the orphan VM is gone", Duration::from_secs(60), || {
                let n = a.qemu_pids().len();
                async move { n == 0 }
            })
            .await;
            let err = admin
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .unwrap_err();
            assert_eq!(
                status_code(&err).0,
                503,
                "a draining host takes no new work"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn an_agent_rolls_back_a_create_whose_caller_hung_up() {
    let _vm = vm_permit().await;
    // The monitor would destroy the VM as an orphan too: keep it out of the way.
    let s = TestServer::start_with(&["--monitor-interval", "1h"]).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let a = TestAgent::start(&s, &admin).await;
    let id = "sbx_abandoned";
    let body = format!(r#"{{"id":"{id}","template":"minimal","vcpus":1,"memory_mb":256}}"#);
    let vm_url = format!("http://{}/v1/vms/{id}", a.addr);
    let vm_state = || async {
        let token = agent_call_token(&s, &a.host_id, "GET", &format!("/v1/vms/{id}"), b"", 0);
        raw(Method::GET, &vm_url, Some(&token), None).await.0
    };

    step("the server's create call hangs up after 300 ms", async {
        let token = agent_call_token(&s, &a.host_id, "POST", "/v1/vms", body.as_bytes(), 0);
        let r = reqwest::Client::new()
            .post(format!("http://{}/v1/vms", a.addr))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(r.is_err(), "the caller gave up before the answer: {r:?}");
    })
    .await;

    step("the agent finishes the create, then destroys it", async {
        wait_until("the VM exists", Duration::from_secs(30), || async {
            vm_state().await == 200
        })
        .await;
        wait_until(
            "the VM is rolled back",
            Duration::from_secs(120),
            || async { vm_state().await == 404 && a.qemu_pids().is_empty() },
        )
        .await;
        let dir = a.dir.path().join("vms").join(id);
        assert!(
            !dir.exists(),
            "nothing of it is left on disk: {:?}\n--- agent log ---\n{}",
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            a.log()
        );
    })
    .await;
}

#[tokio::test]
async fn cli_team_quota_shows_and_sets() {
    let s = TestServer::start_with(&["--team-quota", "sandboxes=3,vcpus=4"]).await;
    s.signup("root@example.com", "Root").await;
    let (u, _) = s.signup("user@example.com", "User").await;
    let team = u.team_id.unwrap();
    let root = cli_login(&s, "root@example.com");
    let user = cli_login(&s, "user@example.com");

    step("a member sees the server's default and the usage", async {
        let (rc, out, err) = cli(&user, &["team", "quota"], None);
        assert_eq!(rc, 0, "{err}");
        let line = |name: &str| -> Vec<String> {
            out.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in {out}"))
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        assert_eq!(line("sandboxes"), ["sandboxes", "0", "3"], "{out}");
        assert_eq!(line("vcpus"), ["vcpus", "0", "4"], "{out}");
        assert_eq!(line("memory_mb"), ["memory_mb", "0", "unlimited"], "{out}");
        let (rc, _, err) = cli(&user, &["team", "quota", "--set", "sandboxes=50"], None);
        assert_ne!(rc, 0);
        assert!(err.contains("platform admin"), "{err}");
    })
    .await;

    step(
        "a platform admin sets a team's own quota and drops it again",
        async {
            let (rc, out, err) = cli(
                &root,
                &[
                    "team",
                    "quota",
                    "--team",
                    &team,
                    "--set",
                    "sandboxes=7,memory_mb=2048",
                    "--json",
                ],
                None,
            );
            assert_eq!(rc, 0, "{err}");
            let q: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(q["limits"]["sandboxes"], 7, "{q}");
            assert_eq!(
                q["limits"]["vcpus"], 4,
                "the default where the team has none: {q}"
            );
            assert_eq!(q["limits"]["memory_mb"], 2048, "{q}");
            let (rc, out, _) = cli(&user, &["team", "quota"], None);
            assert_eq!(rc, 0);
            assert!(out.contains("7 (team's own)"), "{out}");
            let (rc, out, err) = cli(
                &root,
                &[
                    "team", "quota", "--team", &team, "--set", "default", "--json",
                ],
                None,
            );
            assert_eq!(rc, 0, "{err}");
            let q: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(q["limits"]["sandboxes"], 3, "{q}");
            let (rc, _, err) = cli(
                &root,
                &["team", "quota", "--team", &team, "--set", "cpus=2"],
                None,
            );
            assert_ne!(rc, 0);
            assert!(err.contains("cpus"), "a bad limit is named: {err}");
        },
    )
    .await;
}
