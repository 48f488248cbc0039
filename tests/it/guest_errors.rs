//! Errors that name the real cause, seen by a user of the real server, agent and VM: a guest's
//! hostile file names reach the terminal escaped, a full guest disk is a 507 and a guest frozen
//! by a fork bomb a quick 504, never the host's failure after a long wait.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use sandboxctl::proto::api::{
    CreateSandboxRequest, ExecClientMessage, ExecRequest, ExecServerMessage, ExecStreamStart,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::common::{TestAgent, TestServer, cli_login, code, raw, step, urlenc, vm_permit};

fn sh(script: &str, timeout_sec: u64) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout_sec: Some(timeout_sec),
        ..Default::default()
    }
}

#[tokio::test]
async fn guest_faults_are_named_and_guest_text_is_escaped() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    let cfg = cli_login(&s, "admin@example.com");
    let sb = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let id = sb.id.clone();
    let token = auth.token.clone();

    step("a file named with terminal escapes is listed escaped", async {
        // An OSC title change, a screen clear and a carriage return that would hide the rest.
        let r = admin
            .exec(
                &id,
                &sh(
                    r#"mkdir /root/d && touch "/root/d/$(printf 'evil\033]0;pwned\007\033[2Jname\rfake')" && ln -s "$(printf '/tmp/\033[31mred')" /root/d/link"#,
                    20,
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        let (rc, out, err) = crate::common::cli(&cfg, &["sandbox", "files", "ls", &id, "/root/d"], None);
        assert_eq!(rc, 0, "{err}");
        assert!(!out.contains('\x1b') && !out.contains('\x07') && !out.contains('\r'), "{out:?}");
        assert!(
            out.contains(r"evil\x1b]0;pwned\x07\x1b[2Jname\rfake"),
            "{out}"
        );
        // A link's target (the guest's words) is escaped like a name.
        assert!(out.contains(r"link -> /tmp/\x1b[31mred"), "{out}");
        // --raw: the exact name.
        let (rc, out, err) = crate::common::cli(
            &cfg,
            &["sandbox", "files", "ls", &id, "/root/d", "--raw"],
            None,
        );
        assert_eq!(rc, 0, "{err}");
        assert!(out.contains("evil\x1b]0;pwned\x07\x1b[2Jname\rfake"), "{out:?}");
        // An error message from the guest (it quotes the path it refused) is escaped too.
        let evil = "/root/d/evil\x1b]0;pwned\x07\x1b[2Jname\rfake";
        let (rc, _, err) = crate::common::cli(&cfg, &["sandbox", "files", "mkdir", &id, evil], None);
        assert_eq!(rc, 1, "{err}");
        assert!(err.contains("exists") && err.contains(r"\x1b[2J"), "{err:?}");
        assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
        // What the guest writes to its console reaches `sandbox logs` escaped (`--raw`: as is).
        let r = admin
            .exec(&id, &sh(r"printf 'LOGMARK\033]0;pwned\007\n' > /dev/console", 20))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        let logs = |raw: bool| {
            let mut args = vec!["sandbox", "logs", id.as_str()];
            args.extend(raw.then_some("--raw"));
            let (rc, out, err) = crate::common::cli(&cfg, &args, None);
            assert_eq!(rc, 0, "{err}");
            out
        };
        crate::common::wait_until("the mark in the log", Duration::from_secs(10), || async {
            logs(true).contains("LOGMARK\x1b]0;pwned\x07")
        })
        .await;
        let out = logs(false);
        assert!(out.contains(r"LOGMARK\x1b]0;pwned\x07"), "{out}");
        assert!(!out.contains("LOGMARK\x1b"), "{out:?}");
        // Its line breaks stay line breaks.
        let at = out.find(r"pwned\x07").unwrap() + r"pwned\x07".len();
        assert!(
            out[at..].starts_with('\n') || out[at..].starts_with("\r\n"),
            "{out:?}"
        );
    })
    .await;

    step(
        "an upload into a full guest disk answers 507 guest_disk_full",
        async {
            let r = admin
                .exec(
                    &id,
                    &sh(
                        "i=0; while fallocate -l 64M /fill$i 2>/dev/null; do i=$((i+1)); done; \
                     dd if=/dev/zero of=/fill-rest bs=4k 2>/dev/null; sync; df -k / | tail -1",
                        120,
                    ),
                )
                .await
                .unwrap();
            let avail: u64 = r
                .stdout
                .split_whitespace()
                .nth(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or(u64::MAX);
            assert_eq!(avail, 0, "the disk is full: {r:?}");
            let body = vec![7u8; 4 << 20];
            let resp = reqwest::Client::new()
                .put(format!(
                    "{}/v1/sandboxes/{id}/files?path={}",
                    s.url,
                    urlenc("/root/big.bin")
                ))
                .bearer_auth(&token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!((status, code(&v)), (507, "guest_disk_full"), "{v}");
            // The upload left nothing half-written, and freeing space makes it work.
            let r = admin
                .exec(&id, &sh("ls /root; rm -f /fill*; sync", 60))
                .await
                .unwrap();
            assert!(!r.stdout.contains("big.bin"), "{r:?}");
            let resp = reqwest::Client::new()
                .put(format!(
                    "{}/v1/sandboxes/{id}/files?path={}",
                    s.url,
                    urlenc("/root/big.bin")
                ))
                .bearer_auth(&token)
                .body(vec![7u8; 4 << 20])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
        },
    )
    .await;

    // An exec into a guest that does not answer at all: its QEMU is stopped (SIGSTOP), so the
    // guest program cannot run, which is what a guest frozen solid looks like from the host.
    let exec_echo = |timeout: u64| {
        let (url, token) = (format!("{}/v1/sandboxes/{id}/exec", s.url), token.clone());
        async move {
            let started = Instant::now();
            let (st, v) = raw(
                Method::POST,
                &url,
                Some(&token),
                Some(
                    &serde_json::json!({"cmd": "echo", "args": ["alive"], "timeout_sec": timeout})
                        .to_string(),
                ),
            )
            .await;
            (st, v, started.elapsed())
        }
    };
    let qemu = _agent
        .qemu_pids()
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(id.as_str()))
                .unwrap_or(false)
        })
        .expect("the sandbox's QEMU");
    step(
        "an exec in a guest that does not answer gets 504 within its deadline",
        async {
            // SAFETY: signals to a process this test's agent started.
            unsafe { libc::kill(qemu as i32, libc::SIGSTOP) };
            let timeout = 20;
            let (st, v, took) = exec_echo(timeout).await;
            unsafe { libc::kill(qemu as i32, libc::SIGCONT) };
            eprintln!("stopped guest: exec answered {st} after {took:?}");
            assert_eq!((st, code(&v)), (504, "guest_unresponsive"), "{v}");
            assert!(
                took < Duration::from_secs(timeout + 3),
                "answered after {took:?}, past the exec's own {timeout} s"
            );
        },
    )
    .await;

    step(
        "file calls into a guest that does not answer get 504 quickly, and work once it answers",
        async {
            let files = format!("{}/v1/sandboxes/{id}/files", s.url);
            let path = urlenc("/root/frozen.txt");
            let stat = || {
                file_call(
                    Method::GET,
                    format!("{files}/stat?path={path}"),
                    &token,
                    None,
                )
            };
            let download = || file_call(Method::GET, format!("{files}?path={path}"), &token, None);
            let upload = |body: &[u8]| {
                let body = body.to_vec();
                file_call(
                    Method::PUT,
                    format!("{files}?path={path}"),
                    &token,
                    Some(body),
                )
            };
            let (st, body, _) = upload(b"before").await;
            assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));

            // SAFETY: signals to a process this test's agent started.
            unsafe { libc::kill(qemu as i32, libc::SIGSTOP) };
            let (stat_r, up_r, down_r, stream_r) = tokio::join!(
                stat(),
                upload(b"while frozen"),
                download(),
                stream_start(&s.url, &id, &token)
            );
            unsafe { libc::kill(qemu as i32, libc::SIGCONT) };
            // A streaming exec's start says so on the socket, as quickly.
            let (msg, took) = stream_r;
            eprintln!("stopped guest: the exec stream's start answered {msg:?} after {took:?}");
            assert!(
                matches!(&msg, ExecServerMessage::Error { code, .. } if code == "guest_unresponsive"),
                "{msg:?}"
            );
            assert!(took < Duration::from_secs(15), "answered after {took:?}");
            for (what, (st, body, took)) in
                [("stat", stat_r), ("upload", up_r), ("download", down_r)]
            {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                eprintln!("stopped guest: {what} answered {st} after {took:?}");
                assert_eq!((st, code(&v)), (504, "guest_unresponsive"), "{what}: {v}");
                assert!(
                    took < Duration::from_secs(15),
                    "{what} answered after {took:?}"
                );
            }

            // Running again, the same calls work: nothing of the frozen upload was written.
            let (st, body, _) = stat().await;
            assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
            let (st, body, _) = download().await;
            assert_eq!((st, body.as_slice()), (200, &b"before"[..]));
            let (st, body, _) = upload(b"after").await;
            assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
            let (st, body, _) = download().await;
            assert_eq!((st, body.as_slice()), (200, &b"after"[..]));
            let (msg, _) = stream_start(&s.url, &id, &token).await;
            assert!(matches!(msg, ExecServerMessage::Started { .. }), "{msg:?}");

            // A guest that answers is never cut off, however long a call takes: an upload whose
            // client trickles its body for longer than an unanswered ping may last succeeds.
            let chunks = futures_util::stream::unfold(0u32, |i| async move {
                if i == 9 {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(vec![b'x'; 1000]), i + 1))
            });
            let started = Instant::now();
            let resp = reqwest::Client::new()
                .put(format!("{files}?path={}", urlenc("/root/slow.bin")))
                .bearer_auth(&token)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            let st = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            assert_eq!(st, 201, "{v}");
            assert_eq!(v["size"], 9000, "{v}");
            assert!(took >= Duration::from_secs(8), "{took:?}");
        },
    )
    .await;

    step(
        "a fork bomb in the guest never turns an exec into the host's failure",
        async {
            let r = admin.exec(&id, &sh("f(){ f|f& }; f", 20)).await.unwrap();
            assert_eq!(r.exit_code, 0, "{r:?}");
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Depending on how far the bomb got, the guest is frozen (504) or answers that it
            // cannot start the command (the guest's own error, 200): never a 502 after 90 s.
            let timeout = 20;
            let (st, v, took) = exec_echo(timeout).await;
            eprintln!("fork-bombed guest: exec answered {st} after {took:?}: {v}");
            assert!(
                st == 200 || (st, code(&v)) == (504, "guest_unresponsive"),
                "{st} {v}"
            );
            assert!(
                took < Duration::from_secs(timeout + 3),
                "answered after {took:?}, past the exec's own {timeout} s"
            );
            // The sandbox is still the user's to end.
            admin.delete_sandbox(&id).await.unwrap();
        },
    )
    .await;
}

/// A file call as a user makes it: (status, body, how long it took).
async fn file_call(
    method: Method,
    url: String,
    token: &str,
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.expect("the server answers");
    let st = resp.status().as_u16();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (st, body, started.elapsed())
}

/// Opens a streaming exec of `echo alive` and returns the server's first message on it, and how
/// long it took to come.
async fn stream_start(server: &str, id: &str, token: &str) -> (ExecServerMessage, Duration) {
    let started = Instant::now();
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        server.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the stream opens");
    let start = ExecClientMessage::Start(ExecStreamStart {
        cmd: "echo".into(),
        args: vec!["alive".into()],
        ..Default::default()
    });
    let text = serde_json::to_string(&start).unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let m = serde_json::from_str(&t).expect("a server message");
                return (m, started.elapsed());
            }
            Some(Ok(_)) => {}
            other => panic!("the stream ended without a message: {other:?}"),
        }
    }
}
