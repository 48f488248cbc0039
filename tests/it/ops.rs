//! Operations: backups taken while the server serves and writes, restores, shell completions and
//! JSON logs.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::BTreeSet;

use sandboxctl::proto::api::CreateSandboxRequest;
use sandboxctl::proto::vocab::SandboxStatus;

use crate::common::{BIN, TestAgent, TestServer, create_when_ready, step, vm_permit, wait_until};

/// Runs the real binary; the data dir always comes from the arguments.
fn sandboxctl(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SANDBOXCTL_DATA_DIR")
        .output()
        .expect("sandboxctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `server restore` of `file` into a new data dir (in the returned temp dir, as `data`) with the
/// keys of `data` copied beside it, as the README says; the restore must succeed.
fn restore_into_new_dir(data: &Path, file: &Path) -> (tempfile::TempDir, Output) {
    let fresh = tempfile::tempdir().unwrap();
    let new_data = fresh.path().join("data");
    std::fs::create_dir(&new_data).unwrap();
    for k in ["jwt.key", "agent-signing.key"] {
        std::fs::copy(data.join(k), new_data.join(k)).unwrap();
    }
    let restored = sandboxctl(&[
        "server",
        "restore",
        "--data-dir",
        s(&new_data),
        "--from",
        s(file),
    ]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    (fresh, restored)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn a_backup_taken_under_writes_restores_into_a_new_data_dir() {
    let mut server = TestServer::start().await;
    let data = server.data_dir();

    let (root_auth, root, before) =
        step("accounts, keys and teams made before the backup", async {
            // Accounts, keys and teams made before the backup.
            let (root_auth, root) = server.signup("root@example.com", "Root").await;
            let mut before = Vec::new();
            for i in 0..4 {
                let email = format!("user{i}@example.com");
                let (auth, c) = server.signup(&email, &format!("User {i}")).await;
                let key = c.create_key("ci").await.unwrap().key.unwrap();
                let team = c.create_team(&format!("Team {i}")).await.unwrap();
                before.push((email, auth.token, key, team.id));
            }
            (root_auth, root, before)
        })
        .await;
    let (out_dir, file, at_start, at_end) = step(
        "the backup runs under writes while the server answers",
        async {
            // The backup runs while a writer keeps creating keys and the server keeps answering.
            let stop = Arc::new(AtomicBool::new(false));
            let written = Arc::new(AtomicUsize::new(0));
            let writer = {
                let (stop, written, root) = (stop.clone(), written.clone(), root.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        root.create_key("busy")
                            .await
                            .expect("writes go on during the backup");
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            wait_until(
                "the writer is under way",
                Duration::from_secs(10),
                || async { written.load(Ordering::Relaxed) > 0 },
            )
            .await;
            let out_dir = tempfile::tempdir().unwrap();
            let file = out_dir.path().join("sandboxctl-backup.db");
            let args = ["server", "backup", "--data-dir", s(&data), "--to", s(&file)];
            let at_start = written.load(Ordering::Relaxed);
            let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let backup = tokio::task::spawn_blocking(move || {
                sandboxctl(&owned.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            let at_end = written.load(Ordering::Relaxed);
            assert!(backup.status.success(), "backup: {}", text(&backup.stderr));
            assert!(at_end > at_start, "writes went on while the backup ran");
            let said = text(&backup.stdout);
            assert!(said.contains("wrote ") && said.contains(" rows"), "{said}");
            assert!(
                said.contains("jwt.key") && said.contains("agent-signing.key"),
                "{said}"
            );
            assert!(
                server.anon().healthz().await,
                "the server serves during the backup"
            );
            wait_until(
                "writes go on after the backup",
                Duration::from_secs(10),
                || async { written.load(Ordering::Relaxed) > at_end },
            )
            .await;
            stop.store(true, Ordering::Relaxed);
            writer.await.unwrap();
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the backup is private");
            (out_dir, file, at_start, at_end)
        },
    )
    .await;
    step("an existing file is replaced only with --force", async {
        // An existing file is not replaced without --force; with it, it is.
        let existing = out_dir.path().join("existing.db");
        std::fs::write(&existing, "keep me").unwrap();
        let to_existing = [
            "server",
            "backup",
            "--data-dir",
            s(&data),
            "--to",
            s(&existing),
        ];
        let refused = sandboxctl(&to_existing);
        assert!(!refused.status.success());
        assert!(
            text(&refused.stderr).contains("--force"),
            "{}",
            text(&refused.stderr)
        );
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
        let forced = sandboxctl(&[&to_existing[..], &["--force"]].concat());
        assert!(forced.status.success(), "{}", text(&forced.stderr));
        assert!(
            std::fs::read(&existing)
                .unwrap()
                .starts_with(b"SQLite format 3\0")
        );
    })
    .await;
    step("restore refuses while the server runs", async {
        // Restore refuses while the server runs, and the database is untouched.
        let db_before = std::fs::metadata(data.join("sandboxctl.db")).unwrap().len();
        let busy = sandboxctl(&[
            "server",
            "restore",
            "--data-dir",
            s(&data),
            "--from",
            s(&file),
        ]);
        assert!(!busy.status.success());
        assert!(
            text(&busy.stderr).contains("server is running"),
            "{}",
            text(&busy.stderr)
        );
        assert!(
            !std::fs::read_dir(&data)
                .unwrap()
                .flatten()
                .any(|e| { e.file_name().to_string_lossy().contains("before-restore") })
        );
        assert!(std::fs::metadata(data.join("sandboxctl.db")).unwrap().len() >= db_before);
    })
    .await;
    let fresh = step("restore into a new data dir", async {
        // Stop the server; restore into a new data dir with the keys copied beside it.
        server.kill();
        let (fresh, restored) = restore_into_new_dir(&data, &file);
        assert!(
            !text(&restored.stdout).contains("warning"),
            "{}",
            text(&restored.stdout)
        );
        fresh
    })
    .await;
    step("a server on the restore knows everyone", async {
        // A server on it knows everyone: logins, old tokens, API keys and teams work.
        let server = TestServer::start_in(fresh, &[]).await;
        for (email, token, key, team_id) in &before {
            let auth = server
                .anon()
                .login(email, "correct horse battery")
                .await
                .expect("login after restore");
            assert_eq!(&auth.email, email);
            let me = server.anon().with_token(token).me().await;
            assert!(me.is_ok(), "a token from before the backup still works");
            server
                .anon()
                .with_token(key)
                .list_sandboxes(None)
                .await
                .expect("an API key from before the backup works");
            let teams = server
                .anon()
                .with_token(&auth.token)
                .list_teams()
                .await
                .unwrap();
            assert!(teams.iter().any(|t| &t.id == team_id));
        }
        // The copy is the database as of one commit while the writer ran: every key created before
        // the backup started, at most one created after it returned.
        let busy = server
            .anon()
            .with_token(&root_auth.token)
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.name == "busy")
            .count();
        assert!(
            (at_start..=at_end + 1).contains(&busy),
            "{at_start} <= {busy} <= {at_end} + 1"
        );
    })
    .await;
}

/// SQLite's own verdict on a file, from a connection of the test's.
fn integrity(path: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_backup_taken_during_10_creates_restores_the_sandboxes_of_its_moment() {
    let _vm = vm_permit().await;
    let mut server = TestServer::start().await;
    let data = server.data_dir();
    let (_, admin) = server.signup("root@example.com", "Root").await;
    let mut agent = TestAgent::start(&server, &admin).await;
    let first = step("a sandbox made before", async {
        create_when_ready(&admin, &agent).await
    })
    .await;

    let (file, answered_before, all, _out_dir) = step(
        "the backup runs while 10 creates are under way",
        async {
            let answered = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
            let creates: Vec<_> = (0..10)
                .map(|_| {
                    let (c, answered) = (admin.clone(), answered.clone());
                    tokio::spawn(async move {
                        let sb = c
                            .create_sandbox(&CreateSandboxRequest::default())
                            .await
                            .expect("create during the backup");
                        assert_eq!(sb.status, SandboxStatus::Running, "{sb:?}");
                        answered.lock().unwrap().insert(sb.id.clone());
                        sb.id
                    })
                })
                .collect();
            wait_until(
                "the creates are recorded",
                Duration::from_secs(60),
                || async { admin.list_sandboxes(None).await.unwrap().len() > 1 },
            )
            .await;
            let out_dir = tempfile::tempdir().unwrap();
            let file = out_dir.path().join("during-creates.db");
            let answered_before: BTreeSet<String> = answered.lock().unwrap().clone();
            let args: Vec<String> = ["server", "backup", "--data-dir", s(&data), "--to", s(&file)]
                .iter()
                .map(|a| a.to_string())
                .collect();
            let backup = tokio::task::spawn_blocking(move || {
                sandboxctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            assert!(backup.status.success(), "backup: {}", text(&backup.stderr));
            let answered_after = answered.lock().unwrap().len();
            assert!(
                answered_after < 10,
                "the backup ended while creates were still under way ({answered_after} of 10 answered)"
            );
            let mut all: BTreeSet<String> = BTreeSet::from([first.id.clone()]);
            for c in creates {
                all.insert(c.await.expect("create task"));
            }
            assert_eq!(all.len(), 11);
            (file, answered_before, all, out_dir)
        },
    )
    .await;

    step("the backup file passes SQLite's integrity check", async {
        assert_eq!(integrity(&file), "ok");
    })
    .await;

    let fresh = step(
        "stop everything; restore into a new data dir with the keys",
        async {
            server.kill();
            // The restored server must not reach this fleet: it would reconcile the VMs made after
            // the backup away.
            agent.kill();
            let (fresh, _) = restore_into_new_dir(&data, &file);
            fresh
        },
    )
    .await;
    drop(agent);

    step(
        "the restored server lists the sandboxes of the backup's moment",
        async {
            let server = TestServer::start_in(fresh, &[]).await;
            let auth = server
                .anon()
                .login("root@example.com", "correct horse battery")
                .await
                .expect("login on the restored server");
            let listed = server
                .anon()
                .with_token(&auth.token)
                .list_sandboxes(None)
                .await
                .unwrap();
            let ids: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
            // Every create answered before the backup began is there as running; nothing the
            // backup could not have seen is; what was in flight is there as it stood (starting or
            // running) or not yet.
            assert!(ids.is_subset(&all), "{ids:?} ⊄ {all:?}");
            assert!(ids.contains(&first.id), "{ids:?}");
            for sb in &listed {
                let done_before = sb.id == first.id || answered_before.contains(&sb.id);
                if done_before {
                    assert_eq!(sb.status, SandboxStatus::Running, "{sb:?}");
                } else {
                    assert!(
                        matches!(sb.status, SandboxStatus::Starting | SandboxStatus::Running),
                        "{sb:?}"
                    );
                }
            }
            for id in &answered_before {
                assert!(ids.contains(id), "{id} was created before the backup began");
            }
            eprintln!(
                "restored: {} sandboxes ({} answered before the backup, {} created in all)",
                ids.len(),
                answered_before.len() + 1,
                all.len()
            );
        },
    )
    .await;
}

#[tokio::test]
async fn a_restore_in_place_keeps_the_fleet_and_ends_what_the_backup_never_knew() {
    let _vm = vm_permit().await;
    let flags = ["--monitor-interval", "1s"];
    let mut server = TestServer::start_with(&flags).await;
    let data = server.data_dir();
    let (_, admin) = server.signup("root@example.com", "Root").await;
    let agent = TestAgent::start(&server, &admin).await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("in-place.db");

    let (known, unknown) = step("a sandbox, a backup, then a sandbox after it", async {
        let known = create_when_ready(&admin, &agent).await.id;
        let backup = sandboxctl(&["server", "backup", "--data-dir", s(&data), "--to", s(&file)]);
        assert!(backup.status.success(), "{}", text(&backup.stderr));
        let unknown = create_when_ready(&admin, &agent).await.id;
        assert_eq!(agent.qemu_pids().len(), 2);
        (known, unknown)
    })
    .await;

    step("stop the server, restore in place, start it again", async {
        server.kill();
        let restored = sandboxctl(&[
            "server",
            "restore",
            "--data-dir",
            s(&data),
            "--from",
            s(&file),
        ]);
        assert!(restored.status.success(), "{}", text(&restored.stderr));
        let said = text(&restored.stdout);
        assert!(said.contains("previous database is kept"), "{said}");
        assert!(!said.contains("warning"), "the keys are in place: {said}");
        // Same data dir (same keys), same address: the agent never has to know.
        server.crash_and_restart(&flags).await;
    })
    .await;

    step("the agent and the sandbox the backup knew go on", async {
        let auth = server
            .anon()
            .login("root@example.com", "correct horse battery")
            .await
            .unwrap();
        let admin = server.anon().with_token(&auth.token);
        let r = admin
            .exec(&known, &crate::common::exec("echo", &["still here"]))
            .await
            .expect("the restored server's calls reach the agent");
        assert_eq!(r.stdout, "still here\n");
        assert_eq!(
            admin.get_host(&agent.host_id).await.unwrap().status,
            sandboxctl::proto::vocab::HostStatus::Online
        );
        let ids: BTreeSet<String> = admin
            .list_sandboxes(None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, BTreeSet::from([known.clone()]));
        // The VM made after the backup is an orphan to the restored server: it goes.
        wait_until(
            "the monitor ends the VM the backup never knew",
            Duration::from_secs(60),
            || async { agent.qemu_pids().len() == 1 },
        )
        .await;
        assert!(
            server.log().contains(&unknown),
            "the server logs the orphan it destroyed"
        );
    })
    .await;
}

#[tokio::test]
async fn restore_refuses_a_file_that_is_not_a_sandboxctl_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a database at all").unwrap();
    let out = sandboxctl(&[
        "server",
        "restore",
        "--data-dir",
        s(&data),
        "--from",
        s(&junk),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a SQLite database"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !data.join("sandboxctl.db").exists(),
        "nothing was put in place"
    );
}

#[test]
fn backup_and_restore_name_what_is_wrong_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let file = dir.path().join("b.db");
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "server",
                "backup",
                "--data-dir",
                s(&missing),
                "--to",
                s(&file),
            ],
            format!("--data-dir {} is not a directory", missing.display()),
        ),
        (
            vec!["server", "backup", "--data-dir", s(&data), "--to", s(&file)],
            format!("no database at {}", data.join("sandboxctl.db").display()),
        ),
        (
            vec![
                "server",
                "restore",
                "--data-dir",
                s(&data),
                "--from",
                s(&file),
            ],
            format!("--from {}: no such file", file.display()),
        ),
        (
            vec![
                "server",
                "restore",
                "--data-dir",
                s(&missing),
                "--from",
                s(&file),
            ],
            format!("no data dir at {}", missing.display()),
        ),
    ];
    for (args, want) in &cases {
        let out = sandboxctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(want.as_str()),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // With a database in place, a target in a directory that does not exist is named.
    drop(sandboxctl::server::db::Db::open(&data.join("sandboxctl.db")).unwrap());
    let to = missing.join("b.db");
    let out = sandboxctl(&["server", "backup", "--data-dir", s(&data), "--to", s(&to)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "the directory {} does not exist",
            missing.display()
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(!file.exists() && !missing.exists(), "nothing was written");
}

#[test]
fn completion_scripts_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sandboxctl(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["sandbox", "template", "server", "backup"] {
            assert!(script.contains(word), "{shell} script names {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("sandboxctl.bash");
            std::fs::write(&f, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
        }
    }
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let server = TestServer::start_with(&["--log-format", "json"]).await;
    server.signup("root@example.com", "Root").await;
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged something");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "message", "target"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
    }
    assert!(
        lines.iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["message"] == "sandboxctl server listening" && v["level"] == "INFO"
        }),
        "{log}"
    );
}
