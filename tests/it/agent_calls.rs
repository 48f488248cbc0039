//! Between server and agent (docs/ARCHITECTURE.md#server-and-agent): a call the server makes is
//! good for one request on one host — a captured call replayed, or altered in method, path or body,
//! is refused; the server never follows an agent's redirect nor reads an unbounded answer; BYOC
//! hosts cannot point the server at private addresses.
//!
//! Calls are captured the honest way: the agent advertises a recording proxy (a man in the middle)
//! as its address, so the server's own signed requests pass through the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use sandboxctl::crypto::agent_call::{CallBinding, unix_now};
use sandboxctl::proto::api::CreateSandboxRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    TestAgent, TestServer, agent_call_token, call_signer, code, exec, facts, raw, regular, step,
    vm_permit,
};

// ---- a recording man in the middle ----

/// One HTTP/1.1 request as it came over the wire.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The exact bytes received.
    wire: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sends the request to `addr` with its authorization header, as given or altered.
    async fn send_as(
        &self,
        addr: &str,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{addr}{target}"),
        );
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("content-type") {
                req = req.header(k, v);
            }
        }
        let resp = req.body(body.to_vec()).send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Sends the request to `addr` exactly as captured.
    async fn replay(&self, addr: &str) -> (u16, serde_json::Value) {
        self.send_as(addr, &self.method, &self.target, &self.body)
            .await
    }

    /// Writes the captured bytes to `addr` verbatim; returns the answer's status code.
    async fn replay_verbatim(&self, addr: &str) -> u16 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&self.wire).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n") {
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let line = String::from_utf8_lossy(&head);
        line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0)
    }
}

/// Reads one request (head, then a body of Content-Length bytes) from `s`.
async fn read_request(s: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Captured {
        method,
        target,
        headers,
        body: buf[head_end..head_end + len].to_vec(),
        wire: buf[..head_end + len].to_vec(),
    })
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Records every request; forwards it to the agent, or (held) answers 503 itself so that the
/// request never reaches the agent.
#[derive(Clone)]
pub(crate) struct Proxy {
    pub(crate) addr: String,
    upstream: Arc<Mutex<Option<String>>>,
    hold: Arc<Mutex<bool>>,
    seen: Arc<Mutex<Vec<Captured>>>,
}

impl Proxy {
    /// A recorder that forwards nowhere (every request held) until given an upstream.
    pub(crate) async fn start() -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Proxy {
            addr: l.local_addr().unwrap().to_string(),
            upstream: Arc::default(),
            hold: Arc::default(),
            seen: Arc::default(),
        };
        let p2 = p.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(p2.clone().serve(s));
            }
        });
        p
    }

    async fn serve(self, mut s: TcpStream) {
        let Some(req) = read_request(&mut s).await else {
            return;
        };
        self.seen.lock().unwrap().push(req.clone());
        let upstream = self.upstream.lock().unwrap().clone();
        let held = *self.hold.lock().unwrap();
        let Some(up) = upstream.filter(|_| !held) else {
            let _ = s
                .write_all(&answer(
                    "503 Service Unavailable",
                    r#"{"error":{"code":"held","message":"held by the test"}}"#,
                ))
                .await;
            return;
        };
        // Forward with `connection: close`, so one connection carries one request.
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("connection") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("connection: close\r\n\r\n");
        let Ok(mut a) = TcpStream::connect(&up).await else {
            return;
        };
        let _ = a.write_all(head.as_bytes()).await;
        let _ = a.write_all(&req.body).await;
        let mut out = Vec::new();
        let _ = a.read_to_end(&mut out).await;
        let _ = s.write_all(&out).await;
    }

    fn set_upstream(&self, addr: &str) {
        *self.upstream.lock().unwrap() = Some(addr.to_string());
    }

    fn hold(&self, on: bool) {
        *self.hold.lock().unwrap() = on;
    }

    /// Every recorded request line, `METHOD target`.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.method, c.target))
            .collect()
    }

    /// The last recorded request with this method and path.
    fn last(&self, method: &str, target: &str) -> Captured {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.method == method && c.target == target)
            .cloned()
            .unwrap_or_else(|| panic!("no {method} {target} was recorded"))
    }
}

/// The attack of issue 9: calls captured between server and agent — one the agent already ran
/// and one it never saw — replayed and altered. Each call is good once, and only as signed.
#[tokio::test]
async fn captured_calls_cannot_be_replayed_or_altered() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let proxy = Proxy::start().await;
    let agent = TestAgent::start_advertising(&s, &admin, &regular(), &[], Some(&proxy.addr)).await;
    proxy.set_upstream(&agent.addr);

    let (sbx, create) = step("a sandbox created through the man in the middle", async {
        // A sandbox created through the man in the middle; the server's call went through.
        let sbx = admin
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .expect("create through the proxy");
        assert_eq!(sbx.status, "running");
        let create = proxy.last("POST", "/v1/vms");
        assert!(create.header("authorization").is_some());
        (sbx, create)
    })
    .await;
    step("the delivered create call, sent again, is refused", async {
        // The delivered create call, sent again, is refused.
        let (st, v) = create.replay(&agent.addr).await;
        assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    })
    .await;
    let (exec_path, call, body) = step("an exec the agent never sees", async {
        // An exec the agent never sees (the proxy holds it).
        proxy.hold(true);
        let exec_path = format!("/v1/vms/{}/exec", sbx.id);
        admin
            .exec(&sbx.id, &exec("echo", &["from the server"]))
            .await
            .expect_err("held");
        let call = proxy.last("POST", &exec_path);
        let body = String::from_utf8(call.body.clone()).unwrap();
        assert!(body.contains("from the server"), "{body}");
        (exec_path, call, body)
    })
    .await;
    step("altered copies of the unused call are refused", async {
        // Altered copies of the unused call are refused: body, method, path, query.
        let evil = body.replace("from the server", "from an attacker");
        for (method, target, b) in [
            ("POST", exec_path.clone(), evil.as_bytes()),
            ("PUT", exec_path.clone(), body.as_bytes()),
            (
                "POST",
                "/v1/vms/sbx_someoneelse/exec".into(),
                body.as_bytes(),
            ),
            ("POST", format!("{exec_path}?x=1"), body.as_bytes()),
            ("POST", "/v1/vms".into(), body.as_bytes()),
        ] {
            let (st, v) = call.send_as(&agent.addr, method, &target, b).await;
            assert_eq!(
                (st, code(&v)),
                (401, "unauthorized"),
                "{method} {target}: {v}"
            );
        }
    })
    .await;
    step("the untouched call works once, then never", async {
        // The untouched call works once (the refused copies did not use it up), then never.
        let (st, v) = call.replay(&agent.addr).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["stdout"], "from the server\n");
        let (st, v) = call.replay(&agent.addr).await;
        assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    })
    .await;
    step("a WebSocket upgrade is a signed GET: once", async {
        // A WebSocket upgrade (streaming exec) is a signed GET like any other: once.
        let ws_path = format!("/v1/vms/{}/exec/stream", sbx.id);
        let url = format!(
            "{}/v1/sandboxes/{}/exec/stream",
            s.url.replacen("http", "ws", 1),
            sbx.id
        );
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", admin.token().unwrap())
                .parse()
                .unwrap(),
        );
        assert!(tokio_tungstenite::connect_async(req).await.is_err(), "held");
        let upgrade = proxy.last("GET", &ws_path);
        assert!(
            upgrade
                .header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        );
        assert_eq!(upgrade.replay_verbatim(&agent.addr).await, 101);
        assert_eq!(upgrade.replay_verbatim(&agent.addr).await, 401);
    })
    .await;
    step(
        "a signed \"streamed\" body is refused on a JSON route",
        async {
            // A correctly signed token that calls its body "streamed" is refused on a JSON route;
            // the same request with its digest is fine.
            let payload = r#"{"cmd":"echo","args":["digested"]}"#;
            let url = format!("http://{}{exec_path}", agent.addr);
            let streamed = call_signer(&s)
                .sign(
                    &agent.host_id,
                    &CallBinding::streamed("POST", &exec_path),
                    unix_now(),
                )
                .unwrap();
            let (st, v) = raw(Method::POST, &url, Some(&streamed), Some(payload)).await;
            assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
            let t = agent_call_token(
                &s,
                &agent.host_id,
                "POST",
                &exec_path,
                payload.as_bytes(),
                0,
            );
            let (st, v) = raw(Method::POST, &url, Some(&t), Some(payload)).await;
            assert_eq!((st, v["stdout"].as_str()), (200, Some("digested\n")), "{v}");

            proxy.hold(false);
            admin.delete_sandbox(&sbx.id).await.expect("delete");
        },
    )
    .await;
}

// ---- agents that misbehave ----

/// A fake agent: answers every request with what `respond` writes, counting requests.
async fn fake_agent<F, Fut>(respond: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let respond = respond.clone();
            let h = h.clone();
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    h.fetch_add(1, Ordering::SeqCst);
                    respond(s).await;
                }
            });
        }
    });
    (addr, hits)
}

/// Registers a regular host by hand at `addr` and heartbeats it online with `minimal` ready.
async fn fake_host(s: &TestServer, admin: &sandboxctl::cli::client::ApiClient, addr: &str) {
    let created = admin.create_host(&regular()).await.unwrap();
    let body = serde_json::json!({ "token": created.registration_token, "facts": facts(addr) })
        .to_string();
    let (st, reg) = raw(
        Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{reg}");
    let hb = serde_json::json!({ "facts": facts(addr), "running_vms": 0, "used_memory_mb": 0,
        "used_vcpus": 0, "templates": ["minimal"] })
    .to_string();
    let (st, v) = raw(
        Method::POST,
        &format!("{}/v1/hosts/{}/heartbeat", s.url, created.host.id),
        reg["token"].as_str(),
        Some(&hb),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An agent that answers with a redirect is not followed; one that answers 100 MB (as a success
/// or as an error) makes the call fail without the server holding the 100 MB.
#[tokio::test]
async fn the_server_follows_no_redirect_and_reads_bounded_answers() {
    let s = TestServer::start_with(&["--monitor-interval", "1h"]).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;

    step("a redirect is never followed", async {
        // A redirect to another listener, which must never be asked.
        let (elsewhere, elsewhere_hits) = fake_agent(|mut s| async move {
            let _ = s.write_all(&answer("200 OK", "{}")).await;
        })
        .await;
        let location = format!("http://{elsewhere}/v1/vms");
        let (redirecting, hits) = fake_agent(move |mut s| {
            let location = location.clone();
            async move {
                let r = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(r.as_bytes()).await;
            }
        })
        .await;
        fake_host(&s, &admin, &redirecting).await;
        let err = admin
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .expect_err("a redirect is no sandbox");
        assert!(hits.load(Ordering::SeqCst) >= 1);
        // Not a wait for an event: the redirect target must get no call, even a little later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
        assert!(format!("{err}").contains("307"), "{err}");
        let (_, body) = raw(
            Method::GET,
            &format!("{}/v1/hosts", s.url),
            admin.token(),
            None,
        )
        .await;
        for h in body["hosts"].as_array().unwrap() {
            let id = h["id"].as_str().unwrap();
            admin.delete_host(id, true).await.unwrap();
        }
    })
    .await;
    step("100 MB answers are read bounded, as a success and as an error", async {
        // 100 MB answers, with no length announced (a success) and as an error.
        const HUGE: usize = 100 << 20;
        let huge = |status: &'static str| {
            move |mut s: TcpStream| async move {
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{{\"id\":\""
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'a'; 1 << 20];
                for _ in 0..HUGE >> 20 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
        };
        let pid = s.pid();
        let before = rss_kib(pid);
        for status in ["201 Created", "500 Internal Server Error"] {
            let (addr, hits) = fake_agent(huge(status)).await;
            fake_host(&s, &admin, &addr).await;
            // Freed buffers go back to the system at once (see main.rs), so the peak is what
            // counts: sampled while the call runs.
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let done = done.clone();
                tokio::spawn(async move {
                    let mut peak = 0;
                    while !done.load(Ordering::SeqCst) {
                        peak = peak.max(rss_kib(pid));
                        // A sampling interval, not a wait for a condition.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    peak
                })
            };
            let t = std::time::Instant::now();
            let err = admin
                .create_sandbox(&CreateSandboxRequest::default())
                .await
                .expect_err("100 MB is no answer");
            done.store(true, Ordering::SeqCst);
            let peak = sampler.await.unwrap();
            eprintln!(
                "{status} with 100 MB: {err} after {:?}; server RSS {before} KiB, peak {peak} KiB",
                t.elapsed()
            );
            assert!(hits.load(Ordering::SeqCst) >= 1);
            assert!(
                peak < before + 32 * 1024,
                "the server's memory grew from {before} KiB to {peak} KiB"
            );
            let (_, body) = raw(
                Method::GET,
                &format!("{}/v1/hosts", s.url),
                admin.token(),
                None,
            )
            .await;
            for h in body["hosts"].as_array().unwrap() {
                admin
                    .delete_host(h["id"].as_str().unwrap(), true)
                    .await
                    .unwrap();
            }
        }
    })
    .await;
}

/// A team's (BYOC) host must advertise a public IP address, at registration and in every
/// heartbeat, unless the server allows private ones; the regular hosts of the platform admin may
/// use any address.
#[tokio::test]
async fn byoc_hosts_on_private_addresses_are_refused_unless_allowed() {
    // No monitor pass runs during the test: the one host that registers with a public address is
    // never called (traffic stays on this machine).
    let s = TestServer::start_strict(&["--monitor-interval", "1h"]).await;
    let (_, admin) = s.signup("root@example.com", "Root").await;
    let (o, owner) = s.signup("owner@example.com", "Owner").await;
    let byoc = sandboxctl::proto::api::CreateHostRequest {
        host_type: "byoc".into(),
        team_id: o.team_id.clone(),
        name: None,
        provider: None,
        zone: None,
    };
    let created = owner.create_host(&byoc).await.unwrap();
    let register = |addr: &str| {
        serde_json::json!({ "token": created.registration_token, "facts": facts(addr) }).to_string()
    };
    let url = format!("{}/v1/hosts/register", s.url);
    for addr in [
        "10.1.2.3:9090",
        "127.0.0.1:9090",
        "169.254.1.1:9090",
        "172.20.0.5:9090",
        "192.168.0.10:9090",
        "100.64.1.1:9090",
        "0.0.0.0:9090",
        "224.0.0.1:9090",
        "[::1]:9090",
        "[fd00::1]:9090",
        "[fe80::1]:9090",
        "[::ffff:127.0.0.1]:9090",
        "localhost:9090",
        "agent.example.com:9090",
    ] {
        let (st, v) = raw(Method::POST, &url, None, Some(&register(addr))).await;
        assert_eq!(
            (st, code(&v), v["error"]["field"].as_str()),
            (400, "invalid_field", Some("facts.address")),
            "{addr}: {v}"
        );
    }
    let (_, v) = raw(Method::POST, &url, None, Some(&register("10.1.2.3:9090"))).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.0.0/8"),
        "{v}"
    );
    let (_, v) = raw(
        Method::POST,
        &url,
        None,
        Some(&register("agent.example.com:9090")),
    )
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("IP"),
        "{v}"
    );

    // A public address registers with the same token: the refusals used nothing up.
    let (st, reg) = raw(Method::POST, &url, None, Some(&register("192.0.2.10:9090"))).await;
    assert_eq!(st, 200, "{reg}");
    let host_id = created.host.id.clone();
    // A heartbeat cannot move the host to a private address.
    let hb = |addr: &str| {
        serde_json::json!({ "facts": facts(addr), "running_vms": 0, "used_memory_mb": 0, "used_vcpus": 0 })
            .to_string()
    };
    let hb_url = format!("{}/v1/hosts/{host_id}/heartbeat", s.url);
    let (st, v) = raw(
        Method::POST,
        &hb_url,
        reg["token"].as_str(),
        Some(&hb("10.0.0.7:9090")),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("facts.address")),
        "{v}"
    );
    assert_eq!(
        owner.get_host(&host_id).await.unwrap().address.as_deref(),
        Some("192.0.2.10:9090")
    );
    owner.delete_host(&host_id, false).await.unwrap();

    // The platform admin's regular hosts may live on a private network.
    let created = admin.create_host(&regular()).await.unwrap();
    let body =
        serde_json::json!({ "token": created.registration_token, "facts": facts("10.1.2.3:9090") })
            .to_string();
    let (st, v) = raw(Method::POST, &url, None, Some(&body)).await;
    assert_eq!(st, 200, "{v}");
    admin.delete_host(&created.host.id, false).await.unwrap();

    // With --allow-private-agent-addresses (tests, one machine), a BYOC host on loopback is fine.
    let s = TestServer::start_with(&["--monitor-interval", "1h"]).await;
    let (o, owner) = s.signup("owner@example.com", "Owner").await;
    let created = owner
        .create_host(&sandboxctl::proto::api::CreateHostRequest {
            team_id: o.team_id.clone(),
            ..byoc
        })
        .await
        .unwrap();
    let body =
        serde_json::json!({ "token": created.registration_token, "facts": facts("127.0.0.1:9") })
            .to_string();
    let (st, v) = raw(
        Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}
