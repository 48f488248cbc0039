//! Streaming exec, files and the console log against real QEMU: first on the VM manager directly
//! (flow control, cancellation, concurrency, guest restarts), then through the whole stack
//! (server WebSocket and file routes, agent, guest, CLI).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sandboxctl::agent::vm::files::FileError;
use sandboxctl::agent::vm::stream::{ExecEvent, ExecStream};
use sandboxctl::agent::vm::{CreateVmRequest, ExecRequest, VmError, VmManager};
use sandboxctl::proto::api::{
    CreateSandboxRequest, ExecClientMessage, ExecServerMessage, ExecStreamStart, FileKind, PtySize,
    STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::common::{TestAgent, TestServer, cli, vm_config, vm_permit, wait_until};

fn start(cmd: &str, args: &[&str]) -> ExecStreamStart {
    ExecStreamStart {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh_start(script: &str) -> ExecStreamStart {
    start("sh", &["-c", script])
}

/// What a finished stream produced.
#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: i32,
    signal: Option<i32>,
    timed_out: bool,
}

async fn collect(s: &mut ExecStream) -> Collected {
    let mut c = Collected::default();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.output.next())
            .await
            .expect("the stream ended in time")
            .expect("stream event");
        match ev {
            ExecEvent::Stdout(b) => c.stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => c.stderr.extend_from_slice(&b),
            ExecEvent::Exit(e) => {
                c.exit_code = e.exit_code;
                c.signal = e.signal;
                c.timed_out = e.timed_out;
                return c;
            }
        }
    }
}

/// Stdout until it contains `needle`.
async fn stdout_until(s: &mut ExecStream, needle: &str) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.output.next()).await {
            Ok(Ok(ExecEvent::Stdout(b))) => out.extend_from_slice(&b),
            Ok(Ok(ExecEvent::Stderr(_))) => {}
            other => panic!(
                "no {needle:?} in {:?}: {other:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

async fn sh(vms: &VmManager, id: &str, script: &str) -> String {
    let r = vms
        .exec(
            id,
            ExecRequest {
                cmd: "sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    r.stdout
}

fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngExt;
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

fn fs_code(e: FileError) -> String {
    match e {
        FileError::Fs { code, .. } => code.to_string(),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_exec_streams_and_files() {
    let _permit = vm_permit().await;
    let tmp = tempfile::tempdir().unwrap();
    let vms = VmManager::start(vm_config(tmp.path()))
        .await
        .expect("start the manager");
    let id = "sbx_it_streams";
    vms.create(CreateVmRequest {
        id: id.into(),
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 256,
        env: BTreeMap::new(),
        network: false,
        egress: None,
        cold_boot: false,
    })
    .await
    .expect("create");

    // Stdin round trip, binary-safe both ways.
    let mut s = vms.exec_stream(id, start("cat", &[])).await.unwrap();
    assert!(s.pid.is_some());
    let t = Instant::now();
    s.input.stdin(b"ping\n").await.unwrap();
    assert_eq!(stdout_until(&mut s, "ping\n").await, "ping\n");
    eprintln!(
        "stdin → cat → stdout round trip (VM manager): {:?}",
        t.elapsed()
    );
    s.input.stdin(&[0xff, 0x00, 0xfe, b'\n']).await.unwrap();
    s.input.eof().await.unwrap();
    let c = collect(&mut s).await;
    assert_eq!(
        (c.stdout.as_slice(), c.exit_code),
        (&[0xff, 0x00, 0xfe, b'\n'][..], 0)
    );

    // Stdout and stderr apart, the exit code, a command that does not exist.
    let mut s = vms
        .exec_stream(id, sh_start("echo out; echo err >&2; exit 5"))
        .await
        .unwrap();
    let c = collect(&mut s).await;
    assert_eq!(
        (&c.stdout[..], &c.stderr[..], c.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 5)
    );
    let mut s = vms
        .exec_stream(id, start("no-such-cmd", &[]))
        .await
        .unwrap();
    assert_eq!(s.pid, None);
    let c = collect(&mut s).await;
    assert_eq!(c.exit_code, 127);
    assert!(matches!(
        vms.exec_stream(id, start("", &[])).await,
        Err(VmError::BadRequest { field: "cmd", .. })
    ));
    let mut t = sh_start("sleep 30");
    t.timeout_sec = Some(1);
    let c = collect(&mut vms.exec_stream(id, t).await.unwrap()).await;
    assert!(c.timed_out && c.exit_code == 124, "{c:?}");

    // Signals go to the process group.
    let mut s = vms
        .exec_stream(id, start("sleep", &["1000"]))
        .await
        .unwrap();
    s.input.signal(libc::SIGINT).await.unwrap();
    let c = collect(&mut s).await;
    assert!(c.exit_code == 130 || c.signal == Some(2), "{c:?}");

    // A PTY: a terminal of the asked size, stdin echoed, resize seen by the program.
    let mut p = sh_start("tty; stty size; read line; stty size; echo got $line");
    p.pty = Some(PtySize {
        rows: 30,
        cols: 100,
    });
    let mut s = vms.exec_stream(id, p).await.unwrap();
    let out = stdout_until(&mut s, "30 100").await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    s.input.resize(50, 120).await.unwrap();
    s.input.stdin(b"hello\r").await.unwrap();
    let c = collect(&mut s).await;
    let rest = String::from_utf8_lossy(&c.stdout);
    assert!(
        rest.contains("50 120") && rest.contains("got hello"),
        "{rest:?}"
    );
    assert_eq!(c.exit_code, 0);
    // ^C on a PTY reaches the foreground job.
    let mut p = start("sh", &[]);
    p.pty = Some(PtySize { rows: 24, cols: 80 });
    let mut s = vms.exec_stream(id, p).await.unwrap();
    s.input
        .stdin(b"sleep 1000; echo after-sleep\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.input.signal(libc::SIGINT).await.unwrap();
    stdout_until(&mut s, "after-sleep").await;
    s.input.stdin(b"exit 3\n").await.unwrap();
    assert_eq!(collect(&mut s).await.exit_code, 3);

    // Flow control: 50 MB of output to a consumer that stops reading stays out of this process's
    // memory, and none of it is lost.
    let total = 50_000_000usize;
    let rss0 = rss_kb();
    let mut s = vms
        .exec_stream(id, sh_start(&format!("head -c {total} /dev/zero")))
        .await
        .unwrap();
    let mut got = 0usize;
    if let Ok(ExecEvent::Stdout(b)) = s.output.next().await {
        got += b.len();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_paused = rss_kb();
    let t = Instant::now();
    let c = collect(&mut s).await;
    got += c.stdout.len();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!((got, c.exit_code), (total, 0));
    eprintln!(
        "50 MB stream: {:.1} MB/s; RSS +{} kB while the consumer paused",
        total as f64 / 1e6 / secs,
        rss_paused.saturating_sub(rss0)
    );
    assert!(
        rss_paused.saturating_sub(rss0) < 20_000,
        "the agent buffered output: RSS grew {} kB",
        rss_paused.saturating_sub(rss0)
    );

    // Dropping a stream kills its process group, leaving the others (and the channel) alone.
    let mut keep = vms.exec_stream(id, start("cat", &[])).await.unwrap();
    let dropped = vms
        .exec_stream(id, sh_start("sleep 1001 & sleep 1002"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ps = sh(
        &vms,
        id,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
    )
    .await;
    assert!(!ps.contains("sleep 100"), "left running: {ps}");
    keep.input.stdin(b"still here\n").await.unwrap();
    stdout_until(&mut keep, "still here").await;
    keep.input.eof().await.unwrap();
    assert_eq!(collect(&mut keep).await.exit_code, 0);

    // Files: write (streamed), read back, stat, list, mkdir, remove, and the errors.
    let data = random_bytes(3 * 1024 * 1024 + 17);
    let e = vms
        .file_write(
            id,
            "/root/r.bin",
            Some(0o600),
            futures_util::stream::iter(chunks(&data, 100_000)),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(
        (e.size, e.mode, e.kind),
        (data.len() as u64, 0o600, FileKind::File)
    );
    let mut dl = vms.file_read(id, "/root/r.bin").await.unwrap();
    assert_eq!(dl.length, Some(data.len() as u64));
    let mut back = Vec::new();
    while let Some(c) = dl.next_chunk().await.unwrap() {
        back.extend_from_slice(&c);
    }
    assert!(back == data, "the file came back different");
    // /proc files have no length but do have content.
    let mut dl = vms.file_read(id, "/proc/version").await.unwrap();
    assert_eq!(dl.length, None);
    let mut v = Vec::new();
    while let Some(c) = dl.next_chunk().await.unwrap() {
        v.extend_from_slice(&c);
    }
    assert!(String::from_utf8_lossy(&v).starts_with("Linux version"));
    assert_eq!(
        fs_code(vms.file_read(id, "/root/nope").await.err().unwrap()),
        "file_not_found"
    );
    assert_eq!(
        fs_code(vms.file_read(id, "/root").await.err().unwrap()),
        "is_a_directory"
    );
    assert!(matches!(
        vms.file_read(id, "/root/../etc/passwd").await,
        Err(FileError::Vm(VmError::BadRequest { field: "path", .. }))
    ));

    assert_eq!(
        vms.file_mkdir(id, "/root/d/e", true).await.unwrap().kind,
        FileKind::Dir
    );
    assert_eq!(
        vms.file_mkdir(id, "/root/d/e", true).await.unwrap().kind,
        FileKind::Dir
    );
    assert_eq!(
        fs_code(vms.file_mkdir(id, "/root/d", false).await.unwrap_err()),
        "exists"
    );
    assert_eq!(
        fs_code(vms.file_mkdir(id, "/root/x/y", false).await.unwrap_err()),
        "file_not_found"
    );
    sh(&vms, id, "ln -s /root/r.bin /root/d/link").await;
    let st = vms.file_stat(id, "/root/d/link").await.unwrap();
    assert_eq!(
        (st.kind, st.link_target.as_deref()),
        (FileKind::Symlink, Some("/root/r.bin"))
    );
    let l = vms.file_list(id, "/root/d").await.unwrap();
    let names: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["e", "link"]);
    assert_eq!(
        fs_code(vms.file_list(id, "/root/r.bin").await.unwrap_err()),
        "not_a_directory"
    );
    assert_eq!(
        fs_code(vms.file_remove(id, "/root/d", false).await.unwrap_err()),
        "not_empty"
    );
    vms.file_remove(id, "/root/d", true).await.unwrap();
    assert_eq!(
        fs_code(vms.file_stat(id, "/root/d").await.unwrap_err()),
        "file_not_found"
    );
    let one = || futures_util::stream::iter(chunks(b"x", 1));
    assert_eq!(
        fs_code(
            vms.file_write(id, "/root/no/dir/f", None, one(), u64::MAX)
                .await
                .unwrap_err()
        ),
        "file_not_found"
    );
    assert_eq!(
        fs_code(
            vms.file_write(id, "/root", None, one(), u64::MAX)
                .await
                .unwrap_err()
        ),
        "is_a_directory"
    );
    // A broken or oversized upload leaves nothing, not even its temporary file; a replaced
    // file keeps its mode.
    let broken = futures_util::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 200_000])),
        Err(std::io::Error::other("client went away")),
    ]);
    assert!(matches!(
        vms.file_write(id, "/root/r.bin", None, broken, u64::MAX)
            .await,
        Err(FileError::Body(_))
    ));
    let big = futures_util::stream::iter(chunks(&data, 65536));
    assert!(matches!(
        vms.file_write(id, "/root/big.bin", None, big, 1_000_000)
            .await,
        Err(FileError::TooLarge(_))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = vms
        .file_list(id, "/root")
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("sbxtmp") || n == "big.bin"),
        "{names:?}"
    );
    let e = vms
        .file_write(
            id,
            "/root/r.bin",
            None,
            futures_util::stream::iter(chunks(b"new", 3)),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!((e.size, e.mode), (3, 0o600));

    // Several streams and transfers at once on one channel.
    let vms2 = vms.clone();
    let t = Instant::now();
    let up = tokio::spawn(async move {
        let d = random_bytes(4 * 1024 * 1024);
        let e = vms2
            .file_write(
                id,
                "/tmp/par.bin",
                None,
                futures_util::stream::iter(chunks(&d, 1 << 16)),
                u64::MAX,
            )
            .await
            .unwrap();
        (e.size, d)
    });
    let mut a = vms
        .exec_stream(id, sh_start("sleep 1; echo a"))
        .await
        .unwrap();
    let mut b = vms
        .exec_stream(id, sh_start("sleep 1; echo b"))
        .await
        .unwrap();
    let (ca, cb) = tokio::join!(collect(&mut a), collect(&mut b));
    assert_eq!((&ca.stdout[..], &cb.stdout[..]), (&b"a\n"[..], &b"b\n"[..]));
    let (size, d) = up.await.unwrap();
    assert_eq!(size, d.len() as u64);
    let sum = sh(&vms, id, "sha256sum /tmp/par.bin | cut -d' ' -f1").await;
    assert_eq!(sum.trim(), hex(&Sha256::digest(&d)));
    eprintln!("two execs + a 4 MB upload at once: {:?}", t.elapsed());

    // The console log's tail.
    sh(&vms, id, "echo console-marker > /dev/console").await;
    let log = vms.console_log(id, 200).await.unwrap();
    assert!(log.len() <= 200);
    assert!(
        String::from_utf8_lossy(&log).contains("console-marker"),
        "{log:?}"
    );
    assert!(matches!(
        vms.console_log("sbx_nope", 10).await,
        Err(VmError::NotFound(_))
    ));
    // A guest flooding its console does not fill the host's disk: the log is cut to its end.
    let t = Instant::now();
    sh(
        &vms,
        id,
        "l=$(head -c 1000 /dev/zero | tr '\\0' x); yes \"flood $l\" | head -n 2600 > /dev/console; echo flood-done > /dev/console",
    )
    .await;
    eprintln!("2.6 MB to the console: {:?}", t.elapsed());
    let console = tmp.path().join("vms").join(id).join("console.log");
    wait_until(20, "the console log to be cut", || {
        let console = console.clone();
        async move {
            std::fs::metadata(&console)
                .map(|m| m.len())
                .unwrap_or(u64::MAX)
                < 2 << 20
        }
    })
    .await;
    let log = String::from_utf8_lossy(&vms.console_log(id, 1 << 20).await.unwrap()).into_owned();
    assert!(log.contains("flood-done"), "the end is kept");
    let whole = std::fs::read_to_string(&console).unwrap();
    assert!(
        whole.starts_with("[sandboxctl: earlier console output was cut]"),
        "{}",
        &whole[..200.min(whole.len())]
    );

    // A crashed guest program fails the streams it served; the next ones work.
    let mut victim = vms
        .exec_stream(id, start("sleep", &["1003"]))
        .await
        .unwrap();
    let _ = vms
        .exec(
            id,
            ExecRequest {
                cmd: "sh".into(),
                args: vec!["-c".into(), "kill -9 $PPID".into()],
                ..Default::default()
            },
        )
        .await;
    let r = tokio::time::timeout(Duration::from_secs(20), victim.output.next())
        .await
        .expect("the stream noticed");
    assert!(matches!(r, Err(VmError::GuestUnavailable(_))), "{r:?}");
    let mut s = vms.exec_stream(id, start("echo", &["back"])).await.unwrap();
    assert_eq!(collect(&mut s).await.stdout, b"back\n");

    // A host reconnect (agent restart) ends the old streams in the guest.
    let mut orphan = vms
        .exec_stream(id, start("sleep", &["1004"]))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(100), orphan.output.next()).await;
    std::mem::forget(orphan); // as if the agent died: no cancel is sent
    drop(vms);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let vms: Arc<VmManager> = VmManager::start(vm_config(tmp.path()))
        .await
        .expect("restart");
    let mut s = vms
        .exec_stream(id, start("echo", &["again"]))
        .await
        .unwrap();
    assert_eq!(collect(&mut s).await.stdout, b"again\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = sh(
        &vms,
        id,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
    )
    .await;
    assert!(
        !ps.contains("sleep 1004"),
        "an orphan outlived its host connection: {ps}"
    );
    vms.destroy(id).await.unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- through the server ----

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
    // The agent may still be building its template when it first reports in.
    let deadline = Instant::now() + Duration::from_secs(120);
    let sb = loop {
        match admin.create_sandbox(&CreateSandboxRequest::default()).await {
            Ok(sb) => break sb,
            Err(e) if e.status() == Some(503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create: {e}\nagent log:\n{}", agent.log()),
        }
    };
    let id = sb.id.clone();
    let token = auth.token.as_str();

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

    // SIGINT to a sleeping command.
    let mut ws = ws_open(&s, token, &id, &start("sleep", &["1000"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws_send(
        &mut ws,
        &ExecClientMessage::Signal {
            signal: libc::SIGINT,
        },
    )
    .await;
    let (code, signal) = exit_of(ws_read(&mut ws, None).await.2);
    assert!(code == 130 || signal == Some(2), "{code} {signal:?}");

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

    // Closing the socket kills the command.
    let mut ws = ws_open(&s, token, &id, &start("sleep", &["1005"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = admin
        .exec(
            &id,
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
        .unwrap();
    assert!(
        !r.stdout.contains("sleep 1005"),
        "left running: {}",
        r.stdout
    );

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

    // A download link (what the dashboard uses): no credentials, streamed, named, bound to its
    // sandbox and file.
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

    admin.delete_sandbox(&id).await.unwrap();
}
