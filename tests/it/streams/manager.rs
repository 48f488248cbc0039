//! Streaming exec, files and the console log on the VM manager directly: flow control,
//! cancellation, concurrency, guest restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sandboxctl::agent::vm::files::FileError;
use sandboxctl::agent::vm::stream::ExecEvent;
use sandboxctl::agent::vm::{CreateVmRequest, ExecRequest, VmError, VmManager};
use sandboxctl::proto::api::{FileKind, PtySize};
use sha2::{Digest, Sha256};

use super::{chunks, collect, hex, random_bytes, sh_start, start, stdout_until};
use crate::common::{step, vm_config, vm_permit, wait_until};

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

/// The command lines of the guest's processes, as one string.
async fn guest_ps(vms: &VmManager, id: &str) -> String {
    sh(
        vms,
        id,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
    )
    .await
}

/// Whether a guest process's command line contains `needle`.
async fn guest_runs(vms: &VmManager, id: &str, needle: &str) -> bool {
    guest_ps(vms, id).await.contains(needle)
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
        access_token: None,
    })
    .await
    .expect("create");

    step("stdin round trip, binary-safe", async {
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
    })
    .await;
    step(
        "stdout and stderr apart, exit codes, missing command, timeout",
        async {
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
        },
    )
    .await;
    step("signals go to the process group", async {
        // Signals go to the process group.
        let mut s = vms
            .exec_stream(id, start("sleep", &["1000"]))
            .await
            .unwrap();
        s.input.signal(libc::SIGINT).await.unwrap();
        let c = collect(&mut s).await;
        assert!(c.exit_code == 130 || c.signal == Some(2), "{c:?}");
    })
    .await;
    step("a PTY of the asked size, resized", async {
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
    })
    .await;
    step("^C on a PTY reaches the foreground job", async {
        // ^C on a PTY reaches the foreground job.
        let mut p = start("sh", &[]);
        p.pty = Some(PtySize { rows: 24, cols: 80 });
        let mut s = vms.exec_stream(id, p).await.unwrap();
        s.input
            .stdin(b"sleep 1000; echo after-sleep\n")
            .await
            .unwrap();
        wait_until("the PTY's sleep 1000 runs", Duration::from_secs(20), || {
            guest_runs(&vms, id, "sleep 1000")
        })
        .await;
        s.input.signal(libc::SIGINT).await.unwrap();
        stdout_until(&mut s, "after-sleep").await;
        s.input.stdin(b"exit 3\n").await.unwrap();
        assert_eq!(collect(&mut s).await.exit_code, 3);
    })
    .await;
    step(
        "flow control: 50 MB to a consumer that stops reading",
        async {
            // Flow control: 50 MB of output to a consumer that stops reading stays out of this
            // process's memory, and none of it is lost.
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
            // Not a wait for an event: the consumer stays away for a while to show that the agent
            // does not pile up the output meanwhile.
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
        },
    )
    .await;
    step("dropping a stream kills its process group only", async {
        // Dropping a stream kills its process group, leaving the others (and the channel) alone.
        let mut keep = vms.exec_stream(id, start("cat", &[])).await.unwrap();
        let dropped = vms
            .exec_stream(id, sh_start("sleep 1001 & sleep 1002"))
            .await
            .unwrap();
        wait_until(
            "sleep 1001 and 1002 run",
            Duration::from_secs(20),
            || async {
                let ps = guest_ps(&vms, id).await;
                ps.contains("sleep 1001") && ps.contains("sleep 1002")
            },
        )
        .await;
        drop(dropped);
        wait_until(
            "the dropped stream's processes end",
            Duration::from_secs(20),
            || async { !guest_runs(&vms, id, "sleep 100").await },
        )
        .await;
        keep.input.stdin(b"still here\n").await.unwrap();
        stdout_until(&mut keep, "still here").await;
        keep.input.eof().await.unwrap();
        assert_eq!(collect(&mut keep).await.exit_code, 0);
    })
    .await;
    step(
        "files: write, read, stat, list, mkdir, remove and the errors",
        async {
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
            let leftovers = || async {
                vms.file_list(id, "/root")
                    .await
                    .unwrap()
                    .entries
                    .into_iter()
                    .map(|e| e.name)
                    .filter(|n| n.contains("sbxtmp") || n == "big.bin")
                    .collect::<Vec<String>>()
            };
            wait_until(
                "the failed uploads' files are gone",
                Duration::from_secs(10),
                || async { leftovers().await.is_empty() },
            )
            .await;
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
        },
    )
    .await;
    step(
        "several streams and transfers at once on one channel",
        async {
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
        },
    )
    .await;
    step("the console log's tail, cut when flooded", async {
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
        wait_until("the console log to be cut", Duration::from_secs(20), || {
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
    })
    .await;
    step(
        "a crashed guest program fails its streams; the next ones work",
        async {
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
        },
    )
    .await;
    let vms = step(
        "a host reconnect ends the old streams in the guest",
        async {
            // A host reconnect (agent restart) ends the old streams in the guest.
            let mut orphan = vms
                .exec_stream(id, start("sleep", &["1004"]))
                .await
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(100), orphan.output.next()).await;
            std::mem::forget(orphan); // as if the agent died: no cancel is sent
            drop(vms);
            // Not a wait for an event: the agent stays away a moment, as a crashed one would.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let vms: Arc<VmManager> = VmManager::start(vm_config(tmp.path()))
                .await
                .expect("restart");
            let mut s = vms
                .exec_stream(id, start("echo", &["again"]))
                .await
                .unwrap();
            assert_eq!(collect(&mut s).await.stdout, b"again\n");
            wait_until(
                "the orphan sleep 1004 ends with its host connection",
                Duration::from_secs(20),
                || async { !guest_runs(&vms, id, "sleep 1004").await },
            )
            .await;
            vms
        },
    )
    .await;
    vms.destroy(id).await.unwrap();
}
