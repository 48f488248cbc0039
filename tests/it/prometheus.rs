//! `GET /metrics` on the server and the agent, read as Prometheus reads it (Python's
//! `prometheus_client` parser, which `install.sh --deps` installs), and the one log line of each
//! sandbox operation.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use reqwest::Method;

use crate::common::{
    BIN, TestAgent, TestServer, code, create_when_ready, free_port, raw, step, vm_permit,
};

#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The parser Prometheus' own Python client uses, over the exposition text.
const PARSER: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        v = s.value if math.isfinite(s.value) else 0.0
        out.append({"name": s.name, "labels": s.labels, "value": v})
json.dump(out, sys.stdout)
"#;

fn parse(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (install.sh --deps installs it with python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition ({}); install.sh --deps installs python3-prometheus-client\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// The value of the sample `name` whose labels include `labels` (0 when absent: a series appears
/// with its first event).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn present(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

/// A scrape with `token`: (status, content type, body).
async fn get(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape sent");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, resp.text().await.unwrap_or_default())
}

async fn scrape(url: &str, token: &str) -> Vec<Sample> {
    let (status, ctype, body) = get(url, Some(token)).await;
    assert_eq!(status, 200, "{url}: {body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    parse(&body)
}

/// The server's JSON log lines about sandbox `id`, at info and above.
fn sandbox_lines(server: &TestServer, id: &str) -> Vec<serde_json::Value> {
    server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["sandbox"] == id && v["level"] != "DEBUG" && v["level"] != "TRACE")
        .collect()
}

#[tokio::test]
async fn metrics_move_with_a_sandbox_and_each_operation_is_logged_once() {
    let _permit = vm_permit().await;
    let dir = tempfile::tempdir().unwrap();
    let (server_token, agent_token) = ("scrape-the-server-1234", "scrape-the-agent-5678");
    let server_token_file = dir.path().join("server-token");
    let agent_token_file = dir.path().join("agent-token");
    std::fs::write(&server_token_file, format!("{server_token}\n")).unwrap();
    std::fs::write(&agent_token_file, agent_token).unwrap();
    let server = TestServer::start_with(&[
        "--log-format",
        "json",
        "--metrics-token-file",
        server_token_file.to_str().unwrap(),
    ])
    .await;
    let (admin_auth, admin) = server.signup("root@example.com", "Root").await;
    let (member_auth, member) = server.signup("member@example.com", "Member").await;
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let agent = TestAgent::start_with(
        &server,
        &admin,
        &[
            "--metrics-listen",
            &agent_metrics,
            "--metrics-token-file",
            agent_token_file.to_str().unwrap(),
        ],
    )
    .await;
    let url = format!("{}/metrics", server.url);
    let agent_url = format!("http://{agent_metrics}/metrics");

    step(
        "only platform admins and the scrapers' token read the server's metrics",
        async {
            let (s, body) = raw(Method::GET, &url, None, None).await;
            assert_eq!(s, 401, "{body}");
            let (s, body) = raw(Method::GET, &url, Some("not-the-token"), None).await;
            assert_eq!(s, 401, "{body}");
            let (s, body) = raw(Method::GET, &url, Some(&member_auth.token), None).await;
            assert_eq!((s, code(&body)), (403, "admin_required"), "{body}");
            let key = admin.create_key("ci").await.unwrap();
            let (s, body) = raw(Method::GET, &url, key.key.as_deref(), None).await;
            assert_eq!(s, 403, "an API key is no platform admin: {body}");
            let (s, _, body) = get(&url, Some(agent_token)).await;
            assert_eq!(s, 401, "the agent's token is not the server's: {body}");
            scrape(&url, server_token).await;
            scrape(&url, &admin_auth.token).await;
        },
    )
    .await;

    step("the agent's metrics need its token", async {
        let (s, _, _) = get(&agent_url, None).await;
        assert_eq!(s, 401);
        let (s, _, _) = get(&agent_url, Some(server_token)).await;
        assert_eq!(s, 401);
        scrape(&agent_url, agent_token).await;
    })
    .await;

    let before = scrape(&url, server_token).await;
    let agent_before = scrape(&agent_url, agent_token).await;
    step("the named series are there before any sandbox", async {
        for name in [
            "sandboxctl_http_requests_total",
            "sandboxctl_http_request_duration_seconds_bucket",
            "sandboxctl_sandboxes",
            "sandboxctl_hosts",
            "sandboxctl_db_query_duration_seconds_count",
            "sandboxctl_db_wait_duration_seconds_count",
        ] {
            assert!(present(&before, name), "server: {name}");
        }
        assert_eq!(
            value(&before, "sandboxctl_hosts", &[("state", "online")]),
            1.0
        );
        assert!(value(&before, "sandboxctl_db_query_duration_seconds_count", &[]) > 0.0);
        for kind in ["snapshot", "cold"] {
            let boots = before
                .iter()
                .find(|s| s.name == "sandboxctl_sandbox_boots_total" && s.labels["kind"] == kind);
            assert_eq!(boots.map(|s| s.value), Some(0.0), "server boots {kind}");
        }
        for kind in [
            "timeout",
            "unresponsive",
            "protocol",
            "cut_off",
            "connection",
        ] {
            assert!(
                agent_before
                    .iter()
                    .any(|s| s.name == "sandboxctl_guest_channel_errors_total"
                        && s.labels["kind"] == kind),
                "guest-channel errors of kind {kind}"
            );
        }
        for kind in ["snapshot", "cold"] {
            assert!(
                agent_before
                    .iter()
                    .any(|s| s.name == "sandboxctl_vm_boots_total" && s.labels["kind"] == kind),
                "agent boots {kind}"
            );
        }
        for name in [
            "sandboxctl_vms",
            "sandboxctl_host_cpu_seconds_total",
            "sandboxctl_host_cpus",
            "sandboxctl_host_memory_used_bytes",
            "sandboxctl_host_memory_total_bytes",
            "sandboxctl_host_disk_used_bytes",
            "sandboxctl_host_disk_total_bytes",
        ] {
            assert!(present(&agent_before, name), "agent: {name}");
        }
        assert!(
            value(
                &agent_before,
                "sandboxctl_host_cpu_seconds_total",
                &[("mode", "busy")]
            ) > 0.0
        );
        assert!(value(&agent_before, "sandboxctl_host_memory_used_bytes", &[]) > 0.0);
        assert!(
            value(&agent_before, "sandboxctl_host_disk_used_bytes", &[])
                <= value(&agent_before, "sandboxctl_host_disk_total_bytes", &[])
        );
    })
    .await;

    let sbx = create_when_ready(&admin, &agent).await;
    let id = sbx.id.clone();
    let after = scrape(&url, server_token).await;
    let agent_after = scrape(&agent_url, agent_token).await;
    step("a create moves the server's series", async {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            value(&after, name, labels) - value(&before, name, labels)
        };
        assert_eq!(delta("sandboxctl_sandboxes", &[("state", "running")]), 1.0);
        assert_eq!(
            delta(
                "sandboxctl_sandbox_operation_duration_seconds_count",
                &[("operation", "create"), ("outcome", "ok")]
            ),
            1.0
        );
        assert_eq!(
            delta(
                "sandboxctl_http_requests_total",
                &[
                    ("method", "POST"),
                    ("route", "/v1/sandboxes"),
                    ("status", "201")
                ]
            ),
            1.0
        );
        assert_eq!(
            delta(
                "sandboxctl_http_request_duration_seconds_count",
                &[("method", "POST"), ("route", "/v1/sandboxes")]
            ),
            value(
                &after,
                "sandboxctl_http_requests_total",
                &[("method", "POST"), ("route", "/v1/sandboxes")]
            ) - value(
                &before,
                "sandboxctl_http_requests_total",
                &[("method", "POST"), ("route", "/v1/sandboxes")]
            )
        );
        let kind = sbx
            .boot_kind
            .clone()
            .expect("the sandbox says how it booted");
        assert_eq!(
            delta("sandboxctl_sandbox_boots_total", &[("kind", &kind)]),
            1.0
        );
        // Routes are templates: no sandbox id becomes a label.
        for s in &after {
            for v in s.labels.values() {
                assert!(!v.contains("sbx_"), "a raw path in {s:?}");
            }
        }
    })
    .await;

    step("a create moves the agent's series", async {
        assert!(value(&agent_after, "sandboxctl_vms", &[("state", "running")]) >= 1.0);
        assert!(value(&agent_after, "sandboxctl_vm_boots_total", &[]) >= 1.0);
        assert!(
            value(
                &agent_after,
                "sandboxctl_http_requests_total",
                &[("method", "POST"), ("route", "/v1/vms"), ("status", "201")]
            ) >= 1.0
        );
    })
    .await;

    step(
        "a guest that stops answering counts as a guest-channel error",
        async {
            let qemu = agent
                .qemu_pids()
                .into_iter()
                .find(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(id.as_str()))
                        .unwrap_or(false)
                })
                .expect("the sandbox's QEMU");
            let req = sandboxctl::proto::api::ExecRequest {
                timeout_sec: Some(20),
                ..crate::common::exec("true", &[])
            };
            // SAFETY: signals to a process this test's agent started.
            unsafe { libc::kill(qemu as i32, libc::SIGSTOP) };
            let frozen = admin.exec(&id, &req).await;
            unsafe { libc::kill(qemu as i32, libc::SIGCONT) };
            let e = frozen.expect_err("a frozen guest does not answer");
            assert_eq!(e.status(), Some(504), "{e}");
            let kind = [("kind", "unresponsive")];
            let now = scrape(&agent_url, agent_token).await;
            assert_eq!(
                value(&now, "sandboxctl_guest_channel_errors_total", &kind)
                    - value(&agent_after, "sandboxctl_guest_channel_errors_total", &kind),
                1.0
            );
            // Running again, it answers.
            admin.exec(&id, &req).await.unwrap();
        },
    )
    .await;

    step("pause, resume and delete are timed", async {
        admin.pause_sandbox(&id).await.unwrap();
        admin.resume_sandbox(&id).await.unwrap();
        admin.delete_sandbox(&id).await.unwrap();
        let end = scrape(&url, server_token).await;
        for op in ["pause", "resume", "delete"] {
            assert_eq!(
                value(
                    &end,
                    "sandboxctl_sandbox_operation_duration_seconds_count",
                    &[("operation", op), ("outcome", "ok")]
                ) - value(
                    &after,
                    "sandboxctl_sandbox_operation_duration_seconds_count",
                    &[("operation", op), ("outcome", "ok")]
                ),
                1.0,
                "{op}"
            );
        }
        assert_eq!(
            value(&end, "sandboxctl_sandboxes", &[("state", "stopped")])
                - value(&after, "sandboxctl_sandboxes", &[("state", "stopped")]),
            1.0
        );
        assert_eq!(
            value(
                &end,
                "sandboxctl_http_requests_total",
                &[
                    ("method", "POST"),
                    ("route", "/v1/sandboxes/{id}/pause"),
                    ("status", "200")
                ]
            ),
            1.0
        );
    })
    .await;

    step(
        "each operation is logged once, with sandbox, team, host and duration",
        async {
            let lines = sandbox_lines(&server, &id);
            for message in [
                "sandbox created",
                "sandbox paused",
                "sandbox resumed",
                "sandbox deleted",
            ] {
                let found: Vec<_> = lines.iter().filter(|l| l["message"] == message).collect();
                assert_eq!(found.len(), 1, "{message}: {lines:#?}");
                let l = found[0];
                assert_eq!(l["level"], "INFO", "{l}");
                assert_eq!(l["team"], admin_auth.team_id.as_deref().unwrap(), "{l}");
                assert_eq!(l["host"], agent.host_id.as_str(), "{l}");
                assert!(l["duration_ms"].is_u64(), "{l}");
                assert_eq!(l["by"], "request", "{l}");
            }
            // Nothing else at info or above speaks of the sandbox: no layer repeats them.
            assert_eq!(lines.len(), 4, "{lines:#?}");
            let created = lines
                .iter()
                .find(|l| l["message"] == "sandbox created")
                .unwrap();
            assert_eq!(created["boot_kind"], sbx.boot_kind.as_deref().unwrap());
        },
    )
    .await;
    drop(member);
}

#[test]
fn an_agent_refuses_open_metrics_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "agent",
            "run",
            "--metrics-listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("SANDBOXCTL_METRICS_TOKEN")
        .env_remove("SANDBOXCTL_METRICS_TOKEN_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--metrics-token-file"), "{err}");

    let out = Command::new(BIN)
        .args(["agent", "run", "--metrics-listen", "nowhere", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
}
