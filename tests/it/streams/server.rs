//! Streaming exec and files through the whole stack: the server's WebSocket and file routes,
//! the agent, the guest and the CLI.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandboxctl::agent::vm::ExecRequest;
use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::{
    CreateSandboxRequest, ExecClientMessage, ExecServerMessage, ExecStreamStart, FileKind, PtySize,
    STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use super::{chunks, random_bytes, sh_start, start};
use crate::common::{TestAgent, TestServer, cli, create_when_ready, step, vm_permit, wait_until};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_open(s: &TestServer, token: &str, id: &str, start: &ExecStreamStart) -> Ws {
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    let m = serde_json::to_string(&ExecClientMessage::Start(start.clone())).unwrap();
    ws.send(Message::Text(m.into())).await.unwrap();
    ws
}

async fn ws_send(ws: &mut Ws, m: &ExecClientMessage) {
    ws.send(Message::Text(serde_json::to_string(m).unwrap().into()))
        .await
        .unwrap();
}

async fn ws_stdin(ws: &mut Ws, bytes: &[u8]) {
    let mut m = vec![STREAM_STDIN];
    m.extend_from_slice(bytes);
    ws.send(Message::Binary(m.into())).await.unwrap();
}

/// Reads until stdout contains `needle` (or, with None, until the exit); returns (stdout,
/// stderr, the exit message if it came).
async fn ws_read(
    ws: &mut Ws,
    needle: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>, Option<ExecServerMessage>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        if let Some(n) = needle
            && out.windows(n.len()).any(|w| w == n)
        {
            return (out, err, None);
        }
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stream stalled; stdout so far {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .expect("stream open")
            .expect("stream message");
        match m {
            Message::Binary(b) if b.first() == Some(&STREAM_STDOUT) => {
                out.extend_from_slice(&b[1..])
            }
            Message::Binary(b) if b.first() == Some(&STREAM_STDERR) => {
                err.extend_from_slice(&b[1..])
            }
            Message::Text(t) => match serde_json::from_str::<ExecServerMessage>(&t).unwrap() {
                ExecServerMessage::Started { .. } => {}
                end @ (ExecServerMessage::Exit { .. } | ExecServerMessage::Error { .. }) => {
                    return (out, err, Some(end));
                }
            },
            Message::Close(_) => panic!("closed before the exit"),
            _ => {}
        }
    }
}

/// Whether a process in sandbox `id` has `needle` in its command line (asked through the API).
async fn api_runs(c: &ApiClient, id: &str, needle: &str) -> bool {
    let ps = c
        .exec(
            id,
            &ExecRequest {
                cmd: "sh".into(),
                args: vec![
                    "-c".into(),
                    "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    ps.stdout.contains(needle)
}

fn exit_of(m: Option<ExecServerMessage>) -> (i32, Option<i32>) {
    match m {
        Some(ExecServerMessage::Exit {
            exit_code, signal, ..
        }) => (exit_code, signal),
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_and_files_through_the_server() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let sb = create_when_ready(&admin, &agent).await;
    let id = sb.id.clone();
    let token = auth.token.as_str();

    step("stdin round trip through server, agent and guest", async {
        // Stdin round trip through server, agent and guest.
        let t = Instant::now();
        let mut ws = ws_open(&s, token, &id, &start("cat", &[])).await;
        ws_stdin(&mut ws, b"one\n").await;
        ws_read(&mut ws, Some(b"one\n")).await;
        let first = t.elapsed();
        let t = Instant::now();
        ws_stdin(&mut ws, b"two\n").await;
        ws_read(&mut ws, Some(b"two\n")).await;
        eprintln!(
            "exec stream: open + first echo {first:?}, next line round trip {:?}",
            t.elapsed()
        );
        ws_send(&mut ws, &ExecClientMessage::Eof).await;
        assert_eq!(exit_of(ws_read(&mut ws, None).await.2), (0, None));
    })
    .await;
    step("non-UTF-8 output arrives unchanged, stderr apart", async {
        // Non-UTF-8 output arrives unchanged, stderr apart.
        let mut ws = ws_open(
            &s,
            token,
            &id,
            &sh_start(r"printf 'a\377\376b'; printf 'e\200' >&2; exit 4"),
        )
        .await;
        ws_send(&mut ws, &ExecClientMessage::Eof).await;
        let (out, err, end) = ws_read(&mut ws, None).await;
        assert_eq!((&out[..], &err[..]), (&b"a\xff\xfeb"[..], &b"e\x80"[..]));
        assert_eq!(exit_of(end).0, 4);
    })
    .await;
    step("a PTY, resized", async {
        // A PTY, resized.
        let mut p = sh_start("tty; read x; stty size");
        p.pty = Some(PtySize { rows: 24, cols: 80 });
        let mut ws = ws_open(&s, token, &id, &p).await;
        let (out, _, _) = ws_read(&mut ws, Some(b"/dev/pts/")).await;
        assert!(String::from_utf8_lossy(&out).contains("/dev/pts/"));
        ws_send(
            &mut ws,
            &ExecClientMessage::Resize {
                rows: 40,
                cols: 132,
            },
        )
        .await;
        ws_stdin(&mut ws, b"\r").await;
        let (out, _, end) = ws_read(&mut ws, None).await;
        assert!(
            String::from_utf8_lossy(&out).contains("40 132"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(exit_of(end).0, 0);
    })
    .await;
    step("SIGINT to a sleeping command", async {
        // SIGINT to a sleeping command.
        let mut ws = ws_open(&s, token, &id, &start("sleep", &["1000"])).await;
        wait_until("sleep 1000 runs", Duration::from_secs(20), || {
            api_runs(&admin, &id, "sleep 1000")
        })
        .await;
        ws_send(
            &mut ws,
            &ExecClientMessage::Signal {
                signal: libc::SIGINT,
            },
        )
        .await;
        let (code, signal) = exit_of(ws_read(&mut ws, None).await.2);
        assert!(code == 130 || signal == Some(2), "{code} {signal:?}");
    })
    .await;
    step("a client that stops reading throttles the command", async {
        // A client that stops reading throttles the command: neither the server nor the agent piles
        // up its output, and nothing is lost.
        let total = 20_000_000usize;
        let rss = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let agent_pid = agent.pid().unwrap();
        let (agent0, server0) = (rss(agent_pid), rss(s.pid()));
        let mut ws = ws_open(
            &s,
            token,
            &id,
            &sh_start(&format!("head -c {total} /dev/zero")),
        )
        .await;
        ws_send(&mut ws, &ExecClientMessage::Eof).await;
        // Not a wait for an event: the client stays away for a while to show that neither the
        // server nor the agent piles up the output meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (agent1, server1) = (rss(agent_pid), rss(s.pid()));
        let t = Instant::now();
        let (out, _, end) = ws_read(&mut ws, None).await;
        assert_eq!((out.len(), exit_of(end).0), (total, 0));
        eprintln!(
            "20 MB to a paused WebSocket client: RSS growth agent {} kB, server {} kB; then {:.1} MB/s",
            agent1.saturating_sub(agent0),
            server1.saturating_sub(server0),
            total as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
        assert!(
            agent1.saturating_sub(agent0) < 16_000,
            "the agent buffered the output"
        );
        assert!(
            server1.saturating_sub(server0) < 16_000,
            "the server buffered the output"
        );
    })
    .await;
    step("closing the socket kills the command", async {
        // Closing the socket kills the command.
        let mut ws = ws_open(&s, token, &id, &start("sleep", &["1005"])).await;
        wait_until("sleep 1005 runs", Duration::from_secs(20), || {
            api_runs(&admin, &id, "sleep 1005")
        })
        .await;
        ws.close(None).await.unwrap();
        drop(ws);
        wait_until(
            "the closed socket's sleep 1005 ends",
            Duration::from_secs(20),
            || async { !api_runs(&admin, &id, "sleep 1005").await },
        )
        .await;
    })
    .await;
    let data = step("10 MB up and down, byte-exact", async {
        // 10 MB of random bytes up and down, byte-exact.
        let data = random_bytes(10 * 1024 * 1024);
        let t = Instant::now();
        let e = admin
            .upload(
                &id,
                "/root/ten.bin",
                reqwest::Body::wrap_stream(futures_util::stream::iter(chunks(&data, 256 * 1024))),
            )
            .await
            .unwrap();
        let up = t.elapsed().as_secs_f64();
        assert_eq!(e.size, data.len() as u64);
        let t = Instant::now();
        let mut back = Vec::new();
        let n = admin
            .download(&id, "/root/ten.bin", &mut back)
            .await
            .unwrap();
        let down = t.elapsed().as_secs_f64();
        assert_eq!(n, data.len() as u64);
        assert_eq!(
            Sha256::digest(&back),
            Sha256::digest(&data),
            "the file changed on the way"
        );
        eprintln!(
            "10 MB file through the server: up {:.1} MB/s, down {:.1} MB/s",
            10.0 / up,
            10.0 / down
        );
        data
    })
    .await;
    step("a download link", async {
        // A download link (what the dashboard uses): no credentials, streamed, named, bound to its
        // sandbox and file, good once.
        let link = admin.download_url(&id, "/root/ten.bin").await.unwrap();
        let now = sandboxctl::server::db::now();
        assert!(
            link.expires_at > now && link.expires_at <= now + 61,
            "{link:?}"
        );
        let url = format!("{}{}", s.url, link.url);
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-disposition"],
            "attachment; filename=\"ten.bin\"; filename*=UTF-8''ten.bin"
        );
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body = resp.bytes().await.unwrap();
        assert!(
            Sha256::digest(&body) == Sha256::digest(&data),
            "the file changed on the way"
        );
        // It works once.
        assert_eq!(
            reqwest::get(&url).await.unwrap().status(),
            401,
            "a used link"
        );
        let link = admin.download_url(&id, "/root/ten.bin").await.unwrap();
        let url = format!("{}{}", s.url, link.url);
        let other = admin
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap();
        for (bad, why) in [
            (url.replace("ticket=", "ticket=x"), "a tampered ticket"),
            (url.replace(&id, &other.id), "another sandbox"),
            (
                format!("{}/v1/sandboxes/{id}/files/download", s.url),
                "no ticket",
            ),
        ] {
            let resp = reqwest::get(&bad).await.unwrap();
            let want = if why == "no ticket" { 400 } else { 401 };
            assert_eq!(resp.status().as_u16(), want, "{why}");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert!(v["error"]["code"].is_string(), "{why}: {v}");
        }
        admin.delete_sandbox(&other.id).await.unwrap();
        let missing = admin.download_url(&id, "/root/nope").await.unwrap();
        let resp = reqwest::get(format!("{}{}", s.url, missing.url))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let e = admin.download_url(&id, "relative").await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_field")));
        assert!(e.to_string().contains("path"), "{e}");
    })
    .await;
    step("list, stat, mkdir, rm and a missing file", async {
        // list, stat, mkdir, rm and a missing file.
        let d = admin.mkdir(&id, "/root/dir/sub", true).await.unwrap();
        assert_eq!(d.kind, FileKind::Dir);
        let e = admin.mkdir(&id, "/root/dir", false).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(409), Some("exists")));
        let st = admin.stat_file(&id, "/root/ten.bin").await.unwrap();
        assert_eq!((st.size, st.kind), (data.len() as u64, FileKind::File));
        let l = admin.list_files(&id, "/root").await.unwrap();
        assert!(
            l.entries
                .iter()
                .any(|e| e.name == "ten.bin" && e.kind == FileKind::File),
            "{l:?}"
        );
        assert!(
            l.entries
                .iter()
                .any(|e| e.name == "dir" && e.kind == FileKind::Dir),
            "{l:?}"
        );
        let e = admin
            .remove_file(&id, "/root/dir", false)
            .await
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(409), Some("not_empty")));
        admin.remove_file(&id, "/root/dir", true).await.unwrap();
        admin
            .remove_file(&id, "/root/ten.bin", false)
            .await
            .unwrap();
        let e = admin.stat_file(&id, "/root/ten.bin").await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        let e = admin
            .upload(&id, "/root", reqwest::Body::from("x"))
            .await
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(409), Some("is_a_directory")));
        let mut sink = Vec::new();
        let e = admin
            .download(&id, "/root/missing", &mut sink)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404));
    })
    .await;
    step("the console log", async {
        // The console log (a VM restored from a snapshot may have printed nothing yet).
        admin
            .exec(
                &id,
                &ExecRequest {
                    cmd: "sh".into(),
                    args: vec!["-c".into(), "echo console-marker > /dev/console".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let log = admin.logs(&id).await.unwrap();
        assert!(log.contains("console-marker"), "{log:?}");
    })
    .await;
    step("the CLI's exec goes through the stream", async {
        // The CLI's exec goes through the stream.
        let cfg = crate::common::cli_login(&s, "admin@example.com");
        let (rc, out, err) = cli(
            &cfg,
            &["sandbox", "exec", &id, "--", "sh", "-c", "echo hi; exit 7"],
            None,
        );
        assert_eq!((rc, out.as_str()), (7, "hi\n"), "{err}");
        let (rc, out, _) = cli(
            &cfg,
            &["sandbox", "exec", &id, "--", "cat"],
            Some("piped in\n"),
        );
        assert_eq!((rc, out.as_str()), (0, "piped in\n"));
    })
    .await;
    admin.delete_sandbox(&id).await.unwrap();
}
