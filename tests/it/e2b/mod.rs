//! The official E2B SDKs against a real server, agent and microVMs: the Python SDK (`e2b==2.63.0`
//! in the venv `./install.sh --deps` makes at /opt/sandboxctl/e2b-venv) runs the scripts beside
//! this file, step by step, and the JS SDK (`e2b@2.51.0` in tests/e2b-js) runs under
//! `node --test`. Both reach only the test's own server: E2B_API_URL and E2B_SANDBOX_URL are its
//! loopback URL and E2B_DOMAIN a test domain, never E2B's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use sandboxctl::cli::client::ApiClient;

use crate::common::{TestAgent, TestServer, step, vm_permit, wait_until};

/// A domain of our own for the SDK's host names (never resolved: every request goes to the URLs).
const TEST_DOMAIN: &str = "sbx.e2b.test";

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/e2b")
}

/// The venv's Python, if the SDK is installed.
pub(crate) fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("SANDBOXCTL_E2B_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sandboxctl/e2b-venv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import e2b"])
        .output()
        .is_ok_and(|o| o.status.success());
    missing_under_ci(ok, "the e2b venv (./install.sh --deps makes it)");
    ok.then_some(py)
}

/// Under CI (`CI=true`) a missing SDK fails the test instead of skipping it.
pub(crate) fn missing_under_ci(present: bool, what: &str) {
    if !present && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing, and CI must run the E2B tests");
    }
}

/// The SDK environment for `server` with `key`.
pub(crate) fn sdk_env(cmd: &mut Command, server: &TestServer, key: &str) {
    cmd.env("E2B_API_URL", &server.url)
        .env("E2B_SANDBOX_URL", &server.url)
        .env("E2B_API_KEY", key)
        .env("E2B_DOMAIN", TEST_DOMAIN)
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_ACCESS_TOKEN")
        .env("NO_PROXY", "*")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY");
}

/// Runs one step of `script` with the Python SDK and returns the JSON line it printed last.
async fn py(
    py: &Path,
    server: &TestServer,
    agent: &TestAgent,
    key: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(py);
    cmd.arg(here().join("control_plane.py")).args(args);
    sdk_env(&mut cmd, server, key);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{stdout}\n{}\n--- server log ---\n{}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&server.log()),
        tail(&agent.log()),
    );
    let last = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?} printed {stdout}: {e}"))
}

pub(crate) fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn e2b_call(
    server: &TestServer,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(k) = key {
        req = req.header("X-API-KEY", k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub(crate) async fn team_key(admin: &ApiClient) -> String {
    admin.create_key("e2b").await.unwrap().key.unwrap()
}

/// One call and what it must answer: method, path, key, body, status, words in the message.
type Case<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    &'a str,
);

/// Without a VM: E2B's error shape, 401s and the fields refused by name.
#[tokio::test]
async fn e2b_errors_name_the_field_in_e2b_shape() {
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let key = team_key(&admin).await;
    let k = Some(key.as_str());
    let cases: &[Case] = &[
        (Method::GET, "/v2/sandboxes", None, None, 401, ""),
        (
            Method::GET,
            "/v2/sandboxes",
            Some("sk_wrong"),
            None,
            401,
            "",
        ),
        (
            Method::GET,
            "/sandboxes/sbx_nothere",
            k,
            None,
            404,
            "not found",
        ),
        (
            Method::DELETE,
            "/sandboxes/sbx_nothere",
            k,
            None,
            404,
            "not found",
        ),
        (
            Method::POST,
            "/v2/sandboxes",
            k,
            Some("{}"),
            400,
            "templateID",
        ),
        (
            Method::POST,
            "/v2/sandboxes",
            k,
            Some(r#"{"templateID":"minimal","volumeMounts":[{"name":"v","path":"/m"}]}"#),
            400,
            "volumeMounts",
        ),
        (
            Method::POST,
            "/v2/sandboxes",
            k,
            Some(r#"{"templateID":"minimal","autoPauseMemory":false}"#),
            400,
            "autoPauseMemory",
        ),
        (
            Method::POST,
            "/sandboxes",
            k,
            Some(r#"{"templateID":"minimal","network":{"allowOut":["example.com"]}}"#),
            400,
            "network.allowOut",
        ),
        (
            Method::POST,
            "/sandboxes",
            k,
            Some(r#"{"templateID":"minimal","envVars":{"BAD=NAME":"x"}}"#),
            400,
            "envVars",
        ),
        (
            Method::POST,
            "/sandboxes",
            k,
            Some(r#"{"templateID":"minimal","timeout":0}"#),
            400,
            "timeout",
        ),
        (
            Method::POST,
            "/v2/sandboxes/sbx_nothere/connect",
            k,
            Some(r#"{"memory":false}"#),
            400,
            "memory",
        ),
        (Method::GET, "/v2/sandboxes?limit=0", k, None, 400, "limit"),
        (
            Method::GET,
            "/v2/sandboxes?state=dead",
            k,
            None,
            400,
            "state",
        ),
        (
            Method::GET,
            "/v2/sandboxes?nextToken=garbage",
            k,
            None,
            400,
            "nextToken",
        ),
        (Method::GET, "/snapshots?limit=101", k, None, 400, "limit"),
        (
            Method::DELETE,
            "/templates/nothing-here",
            k,
            None,
            404,
            "not found",
        ),
        // No host at all: E2B's "busy", which the SDK retries and then raises.
        (
            Method::POST,
            "/v2/sandboxes",
            k,
            Some(r#"{"templateID":"minimal"}"#),
            503,
            "no host",
        ),
    ];
    for (m, path, key, body, want, says) in cases {
        let (st, v) = e2b_call(&s, m.clone(), path, *key, *body).await;
        assert_eq!(st, *want, "{m} {path} {body:?}: {v}");
        assert_eq!(
            v["code"].as_u64(),
            Some(u64::from(*want)),
            "{m} {path}: {v}"
        );
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(says),
            "{m} {path}: {msg:?} should name {says:?}"
        );
    }
    // Empty lists are lists, with no next page.
    let r = reqwest::Client::new()
        .get(format!("{}/v2/sandboxes", s.url))
        .header("X-API-KEY", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-next-token").is_none());
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([])
    );
}

/// The Python SDK's control plane over two real sandboxes: create → get_info → list with
/// filters and paging → set_timeout shortening and connect extending → pause (twice) → connect
/// resumes → snapshots → the deadline, moved with the test clock, kills one and pauses the
/// other (autoPause) → connect resumes it → kill (twice).
#[tokio::test]
async fn python_sdk_control_plane() {
    let Some(py_bin) = python() else {
        eprintln!("the e2b venv is missing (./install.sh --deps makes it): skipped");
        return;
    };
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--monitor-interval", "1s"]).await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let key = team_key(&admin).await;
    // The agent may still be preparing its template: our own create waits for it.
    let warm = crate::common::create_when_ready(&admin, &agent).await;
    admin.delete_sandbox(&warm.id).await.unwrap();
    let p = |args: Vec<String>| {
        let (py_bin, s, agent, key) = (&py_bin, &s, &agent, &key);
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            py(py_bin, s, agent, key, &a).await
        }
    };

    let a = step("create a (kill at the deadline)", async {
        p(vec!["create".into(), "a".into()]).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .await;
    let b = step("create b (autoPause)", async {
        p(vec!["create".into(), "b".into(), "pause".into()]).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .await;
    step(
        "our API shows the E2B deadline and no idle timeout",
        async {
            let sa = admin.get_sandbox(&a).await.unwrap();
            assert_eq!(sa.timeout_sec, 0);
            assert_eq!(sa.on_timeout.to_string(), "kill");
            let end = sa.end_at.expect("an E2B sandbox has a deadline");
            let now = sandboxctl::server::db::now();
            assert!((now + 500..=now + 610).contains(&end), "{end} vs {now}");
            assert_eq!(
                sa.metadata.get("odd key").map(String::as_str),
                Some("a&b=c")
            );
            let sb = admin.get_sandbox(&b).await.unwrap();
            assert_eq!(sb.on_timeout.to_string(), "pause");
            // E2B's default: ports answer without the token.
            assert!(sa.public_ports && sb.public_ports);
        },
    )
    .await;
    step("list: metadata and state filters, pages of one", async {
        p(vec!["list_filters".into(), a.clone(), b.clone()]).await;
    })
    .await;
    step("set_timeout shortens, connect only extends", async {
        p(vec!["timeouts".into(), a.clone()]).await;
    })
    .await;
    step("pause, pause again (False), connect resumes", async {
        p(vec!["pause_resume".into(), a.clone()]).await;
        assert_eq!(admin.get_sandbox(&a).await.unwrap().status, "running");
    })
    .await;
    step("snapshots: create, list in pages, delete twice", async {
        p(vec!["snapshots".into(), a.clone()]).await;
        let names: Vec<String> = admin
            .list_templates()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(names.contains(&"e2b-named".to_string()), "{names:?}");
    })
    .await;
    step("the deadline kills a and pauses b (test clock)", async {
        p(vec!["deadline".into(), a.clone(), b.clone()]).await;
        // Past the 5 s deadline, and within the 30 s that signed calls to the agent allow
        // between the server's clock and the agent's.
        s.advance_clock(15);
        wait_until("a ended and b paused", Duration::from_secs(60), || async {
            let sa = admin.get_sandbox(&a).await.unwrap();
            let sb = admin.get_sandbox(&b).await.unwrap();
            sa.status == "stopped" && sb.status == "paused"
        })
        .await;
        let sa = admin.get_sandbox(&a).await.unwrap();
        assert_eq!(sa.error.as_deref(), Some("deadline reached"));
    })
    .await;
    step(
        "connect resumes the auto-paused one with a fresh deadline",
        async {
            // The server's clock runs 15 s ahead: the new deadline is its now + 300 s.
            let before = sandboxctl::server::db::now() + 15;
            let v = p(vec!["after_deadline".into(), a.clone(), b.clone()]).await;
            let after = sandboxctl::server::db::now() + 15;
            assert_eq!(v["id"].as_str(), Some(b.as_str()));
            let sb = admin.get_sandbox(&b).await.unwrap();
            assert_eq!(sb.status, "running");
            let end = sb.end_at.unwrap();
            assert!(
                (before + 300..=after + 300).contains(&end),
                "{end} not in {before}+300..={after}+300: sdk {v}"
            );
        },
    )
    .await;
    step("the README's example runs as written", async {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let section = readme
            .split("## Use the E2B SDK")
            .nth(1)
            .expect("README has a section 'Use the E2B SDK'");
        let example = section
            .split("```python\n")
            .nth(1)
            .and_then(|r| r.split("```").next())
            .expect("the section has a Python example");
        assert!(example.lines().count() <= 5, "{example}");
        let mut cmd = Command::new(&py_bin);
        cmd.args(["-c", example]);
        sdk_env(&mut cmd, &s, &key);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            stdout.contains(" running hello from sandboxctl"),
            "{stdout}"
        );
        assert_eq!(admin.get_sandbox(&id).await.unwrap().status, "stopped");
    })
    .await;
    step("unsupported settings are refused by name", async {
        p(vec!["refused".into(), b.clone()]).await;
    })
    .await;
    step("kill, and kill again is False", async {
        p(vec!["kill".into(), b.clone()]).await;
        assert_eq!(admin.get_sandbox(&b).await.unwrap().status, "stopped");
    })
    .await;
}

/// Our own API's deadline: set at create, moved either way, enforced whatever the activity
/// (pause, then kill), and removed on a resume after it passed.
#[tokio::test]
async fn our_deadline_pauses_then_kills_whatever_the_activity() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--monitor-interval", "1s"]).await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let warm = crate::common::create_when_ready(&admin, &agent).await;
    admin.delete_sandbox(&warm.id).await.unwrap();
    let sb = admin
        .create_sandbox(&sandboxctl::proto::api::CreateSandboxRequest {
            end_in_sec: Some(3600),
            timeout_sec: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let now = sandboxctl::server::db::now();
    let end = sb.end_at.expect("end_at shown");
    assert!((now + 3590..=now + 3601).contains(&end), "{end}");
    step("the deadline moves earlier and later", async {
        let later = admin.set_deadline(&sb.id, 7200).await.unwrap();
        assert!(later.end_at.unwrap() > end);
        let earlier = admin.set_deadline(&sb.id, 5).await.unwrap();
        assert!(earlier.end_at.unwrap() <= sandboxctl::server::db::now() + 6);
        let (st, v) = crate::common::raw(
            Method::POST,
            &format!("{}/v1/sandboxes/{}/deadline", s.url, sb.id),
            admin.token(),
            Some(r#"{"end_in_sec":604801}"#),
        )
        .await;
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some("end_in_sec")),
            "{v}"
        );
    })
    .await;
    step(
        "past it, an active sandbox is paused (on_timeout: pause)",
        async {
            // Past it on the server's clock, within the 30 s its signed calls to the agent allow.
            s.advance_clock(15);
            // Activity does not matter: the deadline is absolute.
            admin
                .exec(
                    &sb.id,
                    &sandboxctl::proto::api::ExecRequest {
                        cmd: "true".into(),
                        ..Default::default()
                    },
                )
                .await
                .ok();
            wait_until(
                "paused at the deadline",
                Duration::from_secs(60),
                || async { admin.get_sandbox(&sb.id).await.unwrap().status == "paused" },
            )
            .await;
        },
    )
    .await;
    step(
        "a resume removes the passed deadline; a new one kills",
        async {
            let r = admin.resume_sandbox(&sb.id).await.unwrap();
            assert_eq!(r.end_at, None);
            admin.set_timeout(&sb.id, 0, Some("kill")).await.unwrap();
            // A deadline of a few real seconds (the clock may not move further: see above).
            admin.set_deadline(&sb.id, 3).await.unwrap();
            wait_until(
                "killed at the deadline",
                Duration::from_secs(60),
                || async { admin.get_sandbox(&sb.id).await.unwrap().status == "stopped" },
            )
            .await;
            let ended = admin.get_sandbox(&sb.id).await.unwrap();
            assert_eq!(ended.error.as_deref(), Some("deadline reached"));
        },
    )
    .await;
}

/// The JS SDK (tests/e2b-js, `npm ci` by `./install.sh --deps`) under `node --test`: create, get,
/// list with filters and pages, kill; then commands and files through envd.
#[tokio::test]
async fn js_sdk_create_list_kill() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b-js");
    let installed = dir.join("node_modules/e2b/package.json").is_file();
    missing_under_ci(
        installed,
        "tests/e2b-js' node modules (./install.sh --deps installs them)",
    );
    if !installed {
        eprintln!("tests/e2b-js has no node_modules (./install.sh --deps installs them): skipped");
        return;
    }
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let key = team_key(&admin).await;
    let warm = crate::common::create_when_ready(&admin, &agent).await;
    admin.delete_sandbox(&warm.id).await.unwrap();
    let mut cmd = Command::new("node");
    cmd.args(["--test", "control_plane.test.mjs"])
        .current_dir(&dir);
    sdk_env(&mut cmd, &s, &key);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("node runs");
    assert!(
        out.status.success(),
        "node --test failed:\n{}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&s.log()),
    );
    let sandboxes = admin.list_sandboxes(None).await.unwrap();
    assert!(
        sandboxes.iter().all(|x| x.status != "running"),
        "the JS test left sandboxes running"
    );
    step("envd through the server: commands and files", async {
        // Ours, given what E2B's `base` has and the test needs (a `user`, bash), then
        // connected to by the SDK.
        let sb = crate::common::create_when_ready(&admin, &agent).await;
        let r = admin
            .exec(
                &sb.id,
                &crate::common::exec("sh", &["-c", crate::e2b_envd::SETUP]),
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        let mut cmd = Command::new("node");
        cmd.args(["--test", "envd.test.mjs"]).current_dir(&dir);
        sdk_env(&mut cmd, &s, &key);
        cmd.env("SANDBOX_ID", &sb.id);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("node runs");
        assert!(
            out.status.success(),
            "node --test envd failed:\n{}\n{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&s.log()),
        );
        admin.delete_sandbox(&sb.id).await.unwrap();
    })
    .await;
}
