//! The server against slow and abusive clients: slow headers, stalled bodies, connection floods,
//! login floods and lockouts, exec stream caps and idle streams, and SIGTERM with work in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandboxctl::proto::api::{ExecClientMessage, ExecStreamStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::common::{
    TestAgent, TestServer, code, create_when_ready, signal, step, vm_permit, wait_until,
};

const PASSWORD: &str = "correct horse battery";

fn addr(s: &TestServer) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// A line from `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Client sockets the server process holds (its listener included).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count()
}

/// Gone, or a zombie waiting for the harness to reap it.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Whether the server closed `tcp` (EOF or reset), reading and discarding what it sent.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

async fn login_from(s: &TestServer, ip: &str, email: &str, password: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", s.url))
        .header("x-forwarded-for", ip)
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login sent");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, retry)
}

#[tokio::test]
async fn slow_header_connections_do_not_stop_health() {
    let s = TestServer::start_with(&["--header-read-timeout", "5s"]).await;
    // 500 clients that start a request and then trickle header lines without ever ending them.
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let t = Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", s.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/healthz answers while 500 slow clients hold connections");
    assert_eq!(health.status(), 200);
    eprintln!(
        "figure: /healthz answered in {:?} with 500 slow-header connections open",
        t.elapsed()
    );
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for mut tcp in slow {
        let closed = closed.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    c = closed_by_server(&mut tcp) => {
                        if c { closed.fetch_add(1, Ordering::SeqCst); }
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        }));
    }
    wait_until(
        "the server closes all 500 slow-header connections",
        Duration::from_secs(60),
        || async { closed.load(Ordering::SeqCst) == 500 },
    )
    .await;
    assert!(s.anon().healthz().await, "still healthy afterwards");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_their_turn() {
    let s =
        TestServer::start_with(&["--max-connections", "50", "--header-read-timeout", "3s"]).await;
    let before = open_sockets(s.pid());
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    wait_until(
        "the server takes connections up to its cap",
        Duration::from_secs(10),
        || async { open_sockets(s.pid()) >= 50 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `before`: the listener and whatever else the server had open (at most that many more).
    let held = open_sockets(s.pid());
    assert!(
        held <= before + 50,
        "the server holds {held} sockets with 100 clients waiting, over its cap of 50 (+{before})"
    );
    // Idle connections are closed at the header-read timeout, so the queue moves on.
    wait_until(
        "/healthz answers once idle connections are closed",
        Duration::from_secs(60),
        || async { s.anon().healthz().await },
    )
    .await;
}

#[tokio::test]
async fn a_stalled_request_body_times_out() {
    let s = TestServer::start_with(&["--request-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    tcp.write_all(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn parallel_logins_keep_memory_bounded() {
    // Each argon2 check takes 19 MiB; unbounded, 200 at once would take about 3.8 GiB.
    const BOUND_KIB: u64 = 160 * 1024;
    let s = TestServer::start_with(&["--trusted-proxy", "127.0.0.1"]).await;
    s.signup("flood@example.com", "Flood").await;
    let before = status_kib(s.pid(), "VmHWM");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let (url, ip) = (
            format!("{}/v1/auth/login", s.url),
            format!("10.9.{}.{}", i / 250, i % 250 + 1),
        );
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", ip)
                .json(&serde_json::json!({"email": "flood@example.com", "password": PASSWORD}))
                .send()
                .await
                .expect("login sent");
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").is_some();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (status, retry, code(&body).to_string())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _, _) => ok += 1,
            (503, true, c) if c == "busy" => busy += 1,
            other => panic!("a login answered {other:?}"),
        }
    }
    let peak = status_kib(s.pid(), "VmHWM");
    eprintln!(
        "figure: 200 parallel logins: {ok} ok, {busy} busy (503); server VmHWM {} MiB before, {} MiB after (bound {} MiB)",
        before / 1024,
        peak / 1024,
        BOUND_KIB / 1024
    );
    assert!(ok > 0, "some logins went through");
    assert!(
        peak < BOUND_KIB,
        "peak memory {} MiB over the bound",
        peak / 1024
    );
    let (status, _) = login_from(&s, "10.8.0.1", "flood@example.com", PASSWORD).await;
    assert_eq!(status, 200, "logins work again after the flood");
}

#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out() {
    let s = TestServer::start_with(&["--trusted-proxy", "127.0.0.1/32"]).await;
    let email = "owner@example.com";
    s.signup(email, "Owner").await;
    let home = "198.51.100.7";
    step("the owner logs in from home", async {
        assert_eq!(login_from(&s, home, email, PASSWORD).await.0, 200);
    })
    .await;
    step("one address that keeps failing is locked out", async {
        for i in 0..10 {
            let (status, _) = login_from(&s, "203.0.113.1", email, &format!("guess-{i}")).await;
            assert_eq!(status, 401);
        }
        let (status, retry) = login_from(&s, "203.0.113.1", email, "guess-x").await;
        assert_eq!(status, 429);
        assert!(retry.parse::<u64>().unwrap() >= 1);
        let (status, _) = login_from(&s, "203.0.113.1", email, PASSWORD).await;
        assert_eq!(
            status, 429,
            "even with the right password, from that address"
        );
    })
    .await;
    step("the owner still logs in from another address", async {
        assert_eq!(login_from(&s, "198.51.100.8", email, PASSWORD).await.0, 200);
    })
    .await;
    step(
        "failures from many addresses put the account on the slow path",
        async {
            for i in 0..120 {
                let ip = format!("203.0.{}.{}", 114 + i / 200, i % 200 + 10);
                let (status, _) = login_from(&s, &ip, email, "guess").await;
                assert_eq!(status, 401, "from {ip}");
            }
            // A new address now gets one attempt, then has to wait.
            assert_eq!(login_from(&s, "192.0.2.66", email, "guess").await.0, 401);
            assert_eq!(login_from(&s, "192.0.2.66", email, "guess").await.0, 429);
        },
    )
    .await;
    step(
        "while attacked, the owner logs in from home and from a new address",
        async {
            assert_eq!(login_from(&s, home, email, PASSWORD).await.0, 200);
            assert_eq!(login_from(&s, home, email, PASSWORD).await.0, 200);
            assert_eq!(login_from(&s, "192.0.2.50", email, PASSWORD).await.0, 200);
        },
    )
    .await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // No --trusted-proxy: a client cannot dodge its lockout by naming other addresses.
    let s = TestServer::start().await;
    let email = "victim@example.com";
    s.signup(email, "Victim").await;
    for i in 0..10 {
        let (status, _) = login_from(&s, &format!("203.0.113.{i}"), email, "guess").await;
        assert_eq!(status, 401);
    }
    let (status, _) = login_from(&s, "203.0.113.99", email, "guess").await;
    assert_eq!(status, 429);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(s: &TestServer, token: &str, id: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn ws_run(s: &TestServer, token: &str, id: &str, script: &str) -> Ws {
    let mut ws = ws_connect(s, token, id).await.expect("stream opens");
    let start = ExecStreamStart {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let m = serde_json::to_string(&ExecClientMessage::Start(start)).unwrap();
    ws.send(Message::Text(m.into())).await.unwrap();
    ws
}

/// Opens a stream once one of the caller's slots is free (closed streams free theirs shortly).
async fn ws_run_when_free(s: &TestServer, token: &str, id: &str, script: &str) -> Ws {
    let opened = std::cell::RefCell::new(None);
    wait_until("a stream slot is free", Duration::from_secs(30), || async {
        match ws_connect(s, token, id).await {
            Ok(ws) => {
                *opened.borrow_mut() = Some(ws);
                true
            }
            Err(tungstenite::Error::Http(r)) if r.status() == 429 => false,
            Err(e) => panic!("stream: {e}"),
        }
    })
    .await;
    let mut ws = opened.into_inner().expect("opened");
    let start = ExecStreamStart {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let m = serde_json::to_string(&ExecClientMessage::Start(start)).unwrap();
    ws.send(Message::Text(m.into())).await.unwrap();
    ws
}

/// Reads until the server's close frame; returns its code and reason.
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("the server closes the stream")
            .expect("a close frame before the end")
            .expect("stream message");
        if let Message::Close(frame) = m {
            let frame = frame.expect("the close frame carries a reason");
            return (u16::from(frame.code), frame.reason.to_string());
        }
    }
}

#[tokio::test]
async fn streams_are_capped_closed_when_idle_and_on_shutdown() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&[
        "--max-streams-per-user",
        "2",
        "--stream-idle-timeout",
        "4s",
        "--shutdown-timeout",
        "5s",
        "--request-timeout",
        "3s",
    ])
    .await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let id = create_when_ready(&admin, &agent).await.id;
    let token = auth.token.as_str();
    let ticking = "while true; do echo tick; sleep 1; done";

    step("a user's streams are capped", async {
        let mut first = ws_run(&s, token, &id, ticking).await;
        let _second = ws_run(&s, token, &id, ticking).await;
        match ws_connect(&s, token, &id).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .unwrap_or_default();
                assert_eq!(code(&body), "too_many_streams", "{body}");
            }
            Err(e) => panic!("a third stream: {e}"),
            Ok(_) => panic!("a third stream opened over the cap of 2"),
        }
        first.close(None).await.unwrap();
        drop(ws_run_when_free(&s, token, &id, ticking).await);
    })
    .await;

    step("an idle stream is closed with the reason", async {
        let mut ws = ws_run_when_free(&s, token, &id, "sleep 600").await;
        let (code, reason) = close_frame(&mut ws).await;
        assert_eq!(code, 1000);
        assert!(reason.contains("without input or output"), "{reason}");
    })
    .await;

    step("an upload that stalls is cut with 408", async {
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![b'x'; 1024])])
            .chain(futures_util::stream::pending());
        let resp = reqwest::Client::new()
            .put(format!(
                "{}/v1/sandboxes/{id}/files?path=/tmp/stalled.bin",
                s.url
            ))
            .bearer_auth(token)
            .body(reqwest::Body::wrap_stream(body))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the server answers a stalled upload");
        assert_eq!(resp.status(), 408);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(code(&body), "request_timeout", "{body}");
        let r = admin
            .exec(
                &id,
                &crate::common::exec(
                    "sh",
                    &["-c", "test -e /tmp/stalled.bin && echo left || echo gone"],
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.stdout, "gone\n", "nothing half-written");
    })
    .await;

    step(
        "SIGTERM: health says so, the stream gets a reason, a slow upload is cut at the deadline",
        async {
            let mut ws = ws_run_when_free(&s, token, &id, ticking).await;
            let pulled = Arc::new(AtomicUsize::new(0));
            let body = {
                let pulled = pulled.clone();
                futures_util::stream::unfold((), move |()| {
                    let pulled = pulled.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        pulled.fetch_add(1, Ordering::SeqCst);
                        Some((Ok::<_, std::io::Error>(vec![b'x'; 1024]), ()))
                    }
                })
            };
            let upload = tokio::spawn({
                let url = format!("{}/v1/sandboxes/{id}/files?path=/tmp/slow.bin", s.url);
                let token = token.to_string();
                async move {
                    reqwest::Client::new()
                        .put(url)
                        .bearer_auth(token)
                        .body(reqwest::Body::wrap_stream(body))
                        .send()
                        .await
                }
            });
            wait_until(
                "the upload is under way",
                Duration::from_secs(10),
                || async { pulled.load(Ordering::SeqCst) >= 3 },
            )
            .await;
            signal(s.pid(), libc::SIGTERM);
            wait_until(
                "/healthz says the server is shutting down",
                Duration::from_secs(5),
                || async {
                    match reqwest::get(format!("{}/healthz", s.url)).await {
                        Ok(r) => {
                            r.status() == 503
                                && r.text().await.unwrap_or_default() == "shutting down"
                        }
                        Err(_) => false,
                    }
                },
            )
            .await;
            let (status, body) = crate::common::raw(
                reqwest::Method::GET,
                &format!("{}/v1/me", s.url),
                Some(token),
                None,
            )
            .await;
            assert_eq!((status, code(&body)), (503, "shutting_down"), "{body}");
            let (code, reason) = close_frame(&mut ws).await;
            assert_eq!(code, 1001);
            assert_eq!(reason, "the server is shutting down");
            let cut = tokio::time::timeout(Duration::from_secs(30), upload)
                .await
                .expect("the upload ends")
                .unwrap();
            assert!(
                cut.as_ref()
                    .map(|r| !r.status().is_success())
                    .unwrap_or(true),
                "the slow upload was cut, not completed: {cut:?}"
            );
            wait_until(
                "the server exits by its shutdown deadline",
                Duration::from_secs(15),
                || async { exited(s.pid()) },
            )
            .await;
            assert!(
                s.log().contains("shutdown deadline reached"),
                "the deadline cut the upload"
            );
        },
    )
    .await;
}
