//! Sandboxes worth using, through the public API with real VMs: idle timeouts, big and bounded
//! output, file size limits and large streamed files.

use std::time::Duration;

use reqwest::Method;
use sandboxctl::proto::api::{CreateSandboxRequest, ExecRequest};
use sha2::{Digest, Sha256};

use crate::common::{TestAgent, TestServer, raw, step, vm_permit, wait_until};

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// Peak resident memory of a process, in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[tokio::test]
async fn idle_timeouts_pause_kill_and_extend() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--monitor-interval", "1s"]).await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;

    let a = admin
        .create_sandbox(&CreateSandboxRequest {
            timeout_sec: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(a.timeout_at.is_some());
    let b = admin
        .create_sandbox(&CreateSandboxRequest {
            timeout_sec: Some(3),
            on_timeout: Some("kill".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Extending B's timeout keeps it alive past its first deadline.
    let extended = admin.set_timeout(&b.id, 60, None).await.unwrap();
    assert_eq!(extended.timeout_sec, 60);
    assert!(extended.timeout_at.unwrap() >= sandboxctl::server::db::now() + 55);
    wait_until("A auto-paused", Duration::from_secs(30), || async {
        admin.get_sandbox(&a.id).await.unwrap().status == "paused"
    })
    .await;
    assert_eq!(admin.get_sandbox(&b.id).await.unwrap().status, "running");
    // Resumed with no timeout, A stays up; B set to kill after 2 s goes away.
    admin.resume_sandbox(&a.id).await.unwrap();
    let never = admin.set_timeout(&a.id, 0, None).await.unwrap();
    assert_eq!(never.timeout_at, None);
    admin.set_timeout(&b.id, 2, Some("kill")).await.unwrap();
    wait_until("B killed", Duration::from_secs(30), || async {
        admin.get_sandbox(&b.id).await.unwrap().status == "stopped"
    })
    .await;
    // Not a wait for an event: A, with no timeout, must still be running a while later (B's
    // 2 s timeout passed meanwhile, so a wrongly kept timeout on A would have fired too).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(admin.get_sandbox(&a.id).await.unwrap().status, "running");
    let r = admin.exec(&a.id, &sh("echo alive")).await.unwrap();
    assert_eq!(r.stdout, "alive\n");
    let e = admin
        .set_timeout(&a.id, 999_999_999, None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    admin.delete_sandbox(&a.id).await.unwrap();
}

#[tokio::test]
async fn output_and_files_are_bounded_and_streamed() {
    let _vm = vm_permit().await;
    let s = TestServer::start_with(&["--max-file-bytes", "120000000"]).await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let sb = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let id = sb.id.clone();

    step(
        "output is cut at the cap; a command that never exits is killed",
        async {
            // A guest that prints 50 MB is cut at the cap; one that never exits is killed by its
            // timeout.
            let r = admin
                .exec(&id, &sh("head -c 50000000 /dev/zero"))
                .await
                .unwrap();
            assert!(r.truncated, "50 MB of output is truncated");
            assert!(r.stdout.len() <= 10 * 1024 * 1024);
            let mut forever = sh("sleep 1000");
            forever.timeout_sec = Some(2);
            let r = admin.exec(&id, &forever).await.unwrap();
            assert!(r.timed_out);
            assert_eq!(r.exit_code, 124);
            assert_eq!(
                admin
                    .exec(&id, &sh("echo still fine"))
                    .await
                    .unwrap()
                    .stdout,
                "still fine\n"
            );
        },
    )
    .await;
    let path = format!("/v1/sandboxes/{id}/files?path=/tmp/big.bin");
    step("an upload with a declared size over the limit is refused before its body", async {
        // Over the limit: 413 and nothing left behind. A declared size over the limit is refused
        // before any of the body is read (spoken raw: the server answers without reading the body).
        let status = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
                .await
                .unwrap();
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Length: 130000000\r\n\r\n",
                auth.token
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert!(status.contains(" 413 "), "{status}");
    })
    .await;
    step(
        "a chunked upload that grows past the limit is cut off",
        async {
            // A chunked upload (no Content-Length) that grows past the limit is cut off too; the
            // last chunk is the one that crosses it, so the client has sent everything when the
            // answer comes.
            let chunks = futures_util::stream::iter(
                (0..121).map(|_| Ok::<_, std::io::Error>(vec![1u8; 1_000_000])),
            );
            let resp = reqwest::Client::new()
                .put(format!("{}{path}", s.url))
                .bearer_auth(&auth.token)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 413);
            let listing = admin.list_files(&id, "/tmp").await.unwrap();
            assert!(
                listing.entries.iter().all(|e| !e.name.contains("big")),
                "nothing half-written: {listing:?}"
            );
            let (st, _) = raw(
                Method::GET,
                &format!("{}/v1/sandboxes/{id}/files/stat?path=/tmp/big.bin", s.url),
                Some(&auth.token),
                None,
            )
            .await;
            assert_eq!(st, 404);
        },
    )
    .await;
    step(
        "100 MB up and down, byte-exact, held by neither server nor agent",
        async {
            // 100 MB of random bytes up and down, byte-exact, without the server or agent holding
            // it. (The peak-memory marks are reset first: the 50 MB exec above legitimately used
            // memory.)
            for pid in [s.pid(), agent.pid().unwrap()] {
                std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
            }
            let size: usize = 100 * 1024 * 1024;
            let mut seed = 0x2545F4914F6CDD1Du64;
            let mut hasher = Sha256::new();
            let mut chunks = Vec::new();
            for _ in 0..(size / (1 << 20)) {
                let mut c = vec![0u8; 1 << 20];
                for b in c.chunks_mut(8) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b.copy_from_slice(&seed.to_le_bytes()[..b.len()]);
                }
                hasher.update(&c);
                chunks.push(Ok::<_, std::io::Error>(c));
            }
            let sent = hex(&hasher.finalize());
            let t = std::time::Instant::now();
            let up = admin
                .upload(
                    &id,
                    "/root/big.bin",
                    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
                )
                .await
                .unwrap();
            assert_eq!(up.size, size as u64);
            let up_s = t.elapsed().as_secs_f64();
            let r = admin
                .exec(&id, &sh("sha256sum /root/big.bin | cut -d' ' -f1"))
                .await
                .unwrap();
            assert_eq!(r.stdout.trim(), sent, "the guest has the exact bytes");
            let t = std::time::Instant::now();
            let resp = admin
                .raw(
                    Method::GET,
                    &format!("/v1/sandboxes/{id}/files?path=/root/big.bin"),
                    None,
                )
                .await
                .unwrap();
            let mut stream = resp.bytes_stream();
            let mut h = Sha256::new();
            let mut n = 0usize;
            use futures_util::StreamExt;
            while let Some(c) = stream.next().await {
                let c = c.unwrap();
                n += c.len();
                h.update(&c);
            }
            let down_s = t.elapsed().as_secs_f64();
            assert_eq!((n, hex(&h.finalize())), (size, sent));
            eprintln!(
                "100 MB file: up {:.1} MB/s, down {:.1} MB/s",
                100.0 / up_s,
                100.0 / down_s
            );
            let server_peak = peak_rss_mb(s.pid());
            let agent_peak = peak_rss_mb(agent.pid().unwrap());
            eprintln!("peak RSS: server {server_peak} MB, agent {agent_peak} MB");
            assert!(
                server_peak < 90,
                "the server held the file in memory ({server_peak} MB)"
            );
            assert!(
                agent_peak < 90,
                "the agent held the file in memory ({agent_peak} MB)"
            );
        },
    )
    .await;
    admin.delete_sandbox(&id).await.unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
