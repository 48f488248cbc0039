//! The web dashboard in a real browser: the real server serving its embedded app, a real agent
//! booting a real microVM, and Chromium driven by `web/tests/dashboard.test.mjs` (node's test
//! runner with playwright-core). Screenshots of the main pages land in target/screenshots/.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::common::{TestAgent, TestServer, code, raw, vm_permit};

const ADMIN_EMAIL: &str = "admin@example.com";
/// The password `TestServer::signup` gives every account.
const PASSWORD: &str = "correct horse battery";
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(300);

fn web_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web")
        .join("tests")
}

fn chromium() -> PathBuf {
    std::env::var_os("SANDBOXCTL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    target.join("screenshots")
}

/// What the browser test needs beyond this crate, or a sentence saying what is missing.
fn browser_prerequisites() -> Result<(), String> {
    let browser = chromium();
    if !browser.is_file() {
        return Err(format!(
            "no Chromium at {} (the Debian package `chromium`; SANDBOXCTL_CHROMIUM names another binary)",
            browser.display()
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `node` ({e}); Node.js 20.19 or newer is needed"))?;
    let version = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    // playwright-core needs 20; importing ../format.js (ES module syntax, no package.json) 20.19.
    if (major, minor) < (20, 19) {
        return Err(format!(
            "node {version} is too old; Node.js 20.19 or newer is needed"
        ));
    }
    if !web_tests_dir()
        .join("node_modules")
        .join("playwright-core")
        .is_dir()
    {
        return Err(format!(
            "{}/node_modules is missing (run `npm ci` there)",
            web_tests_dir().display()
        ));
    }
    Ok(())
}

#[tokio::test]
async fn the_server_serves_the_app_and_keeps_api_errors_json() {
    let s = TestServer::start().await;
    let client = reqwest::Client::new();
    for path in ["/", "/sandboxes", "/sandboxes/sbx_whatever", "/team"] {
        let r = client.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"),
            "{path}"
        );
        assert!(
            r.text()
                .await
                .unwrap()
                .contains(r#"<script type="module" src="/app.js">"#),
            "{path}"
        );
    }
    let r = client
        .get(format!("{}/app.js", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = r.headers()["etag"].clone();
    // The terminal emulator is vendored (no CDN); its run-time <style> elements need inline
    // styles, and only styles: scripts stay 'self' only.
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("style-src 'self' 'unsafe-inline'"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    for (path, ty) in [
        ("/vendor/xterm/xterm.js", "text/javascript; charset=utf-8"),
        (
            "/vendor/xterm/addon-fit.js",
            "text/javascript; charset=utf-8",
        ),
        ("/vendor/xterm/xterm.css", "text/css; charset=utf-8"),
    ] {
        let v = client.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(v.status(), 200, "{path}");
        assert_eq!(v.headers()["content-type"], ty, "{path}");
    }
    let again = client
        .get(format!("{}/app.js", s.url))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    for missing in [
        "/nope.js",
        "/tests/dashboard.test.mjs",
        "/tests/package.json",
        "/.gitignore",
    ] {
        let r = client
            .get(format!("{}{missing}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    // The API's own answers are untouched: unknown /v1 routes and other methods are JSON 404s.
    for (method, path) in [
        (Method::GET, "/v1/nope"),
        (Method::GET, "/v1"),
        (Method::POST, "/team"),
        (Method::DELETE, "/"),
    ] {
        let (st, v) = raw(method.clone(), &format!("{}{path}", s.url), None, None).await;
        assert_eq!((st, code(&v)), (404, "not_found"), "{method} {path}");
    }
    let (st, v) = raw(Method::GET, &format!("{}/v1/me", s.url), None, None).await;
    assert_eq!((st, code(&v)), (401, "unauthorized"));
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    if let Err(why) = browser_prerequisites() {
        panic!(
            "the browser test cannot run: {why}. `./install.sh --deps` installs what it needs (the chromium package, and `npm ci` in web/tests)."
        );
    }
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup(ADMIN_EMAIL, "Admin").await;
    let agent = TestAgent::start_with(&s, &admin, &["--sample-interval", "1s"]).await;
    // A second, fresh server that takes no signups and wants the bootstrap token even from
    // loopback: the browser creates its admin with the token's link, then finds signups closed.
    let closed = TestServer::start_signup(Some("closed"), &["--bootstrap-requires-token"]).await;
    let bootstrap = std::fs::read_to_string(closed.data_dir().join("bootstrap-token")).unwrap();
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("node");
    cmd.args([
        "--test",
        "--test-reporter=spec",
        "dashboard.test.mjs",
        "format.test.mjs",
    ])
    .current_dir(web_tests_dir())
    .env("SANDBOXCTL_URL", &s.url)
    .env("SANDBOXCTL_ADMIN_EMAIL", ADMIN_EMAIL)
    .env("SANDBOXCTL_ADMIN_PASSWORD", PASSWORD)
    .env("SANDBOXCTL_AGENT_HOST", &agent.host_id)
    .env("SANDBOXCTL_CLOSED_URL", &closed.url)
    .env("SANDBOXCTL_CLOSED_BOOTSTRAP", bootstrap.trim())
    .env("SCREENSHOT_DIR", &shots)
    .env("CHROMIUM", chromium())
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a timeout ends node and the browser it started.
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("node starts");
    let pid = child.id();
    let out = match tokio::time::timeout(BROWSER_TEST_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("node ran"),
        Err(_) => {
            if let Some(pid) = pid {
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            panic!(
                "the browser test did not finish within {BROWSER_TEST_TIMEOUT:?}\n--- server log ---\n{}\n--- agent log ---\n{}",
                s.log(),
                agent.log()
            );
        }
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{report}\n--- server log ---\n{}\n--- agent log ---\n{}",
        shots.display(),
        s.log(),
        agent.log()
    );
    eprintln!(
        "{report}\nbrowser test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
