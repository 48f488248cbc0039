//! Upgrades: a database made by the first release's schema opened by today's server, and an agent
//! process replaced under a running and a paused sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use sandboxctl::crypto::{hash_password, sha256_hex};
use sandboxctl::proto::vocab::{HostStatus, SandboxStatus};

use crate::common::{TestAgent, TestServer, create_when_ready, exec, step, vm_permit, wait_until};

/// The migrations as shipped, replayed here only up to the first release's.
mod shipped {
    refinery::embed_migrations!("migrations");
}

/// The first release's schema version.
const FIRST_RELEASE: i32 = 1;

const PASSWORD: &str = "correct horse battery";
const API_KEY: &str = "sk_firstreleasekey0123456789abcdefghijklmnop";

/// What the first release would have written for a small installation: an admin and a member
/// with their personal teams and a shared team, an API key, two hosts (one draining, with tags and
/// a refresh token), sandboxes in each state that release knew, a base template and a snapshot.
fn first_release_database(path: &Path, now: i64) {
    let mut c = Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    let report = shipped::migrations::runner()
        .set_target(refinery::Target::Version(FIRST_RELEASE))
        .run(&mut c)
        .unwrap();
    assert_eq!(
        report
            .applied_migrations()
            .iter()
            .map(|m| m.version())
            .max(),
        Some(FIRST_RELEASE)
    );
    let hash = hash_password(PASSWORD).unwrap();
    let t = now - 86_400;
    let tx = c.transaction().unwrap();
    for (id, email, name, admin) in [
        (
            "usr_firstadmin00000001",
            "admin@example.com",
            "Ada Admin",
            1,
        ),
        (
            "usr_firstmember0000002",
            "member@example.com",
            "Max Member",
            0,
        ),
    ] {
        tx.execute(
            "INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![id, email, name, hash, admin, t],
        )
        .unwrap();
    }
    for (id, name, slug) in [
        ("team_adminpersonal0001", "Ada's team", "ada"),
        ("team_memberpersonal002", "Max's team", "max"),
        ("team_shared00000000003", "Research", "research"),
    ] {
        tx.execute(
            "INSERT INTO teams (id, name, slug, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, slug, t],
        )
        .unwrap();
    }
    for (team, user, role, default) in [
        (
            "team_adminpersonal0001",
            "usr_firstadmin00000001",
            "owner",
            1,
        ),
        (
            "team_memberpersonal002",
            "usr_firstmember0000002",
            "owner",
            0,
        ),
        (
            "team_shared00000000003",
            "usr_firstadmin00000001",
            "owner",
            0,
        ),
        (
            "team_shared00000000003",
            "usr_firstmember0000002",
            "member",
            1,
        ),
    ] {
        tx.execute(
            "INSERT INTO memberships (team_id, user_id, role, is_default, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![team, user, role, default, t],
        )
        .unwrap();
    }
    tx.execute(
        "INSERT INTO api_keys (id, team_id, name, prefix, key_hash, created_by, created_at)
         VALUES ('key_firstrelease00001', 'team_shared00000000003', 'ci', ?1, ?2,
                 'usr_firstmember0000002', ?3)",
        params![&API_KEY[..10], sha256_hex(API_KEY.as_bytes()), t],
    )
    .unwrap();
    // Hosts: their agents are not here (the address refuses), their last heartbeat is now.
    for (id, name, status) in [
        ("host_firstonline00001", "kvm-1", "online"),
        ("host_firstdraining002", "kvm-2", "draining"),
    ] {
        tx.execute(
            "INSERT INTO hosts (id, type, name, provider, zone, arch, cpu_cores, memory_mb,
                 disk_gb, address, accel, accel_reason, status, last_heartbeat_at, running_vms,
                 used_memory_mb, used_vcpus, created_by, created_at, updated_at)
             VALUES (?1, 'regular', ?2, 'hetzner', 'fsn1', 'x86_64', 8, 32768, 200,
                 '127.0.0.1:1', 'kvm', 'vmx and a probe boot', ?3, ?4, 2, 512, 2,
                 'usr_firstadmin00000001', ?5, ?4)",
            params![id, name, status, now, t],
        )
        .unwrap();
    }
    tx.execute(
        "INSERT INTO host_tags (host_id, tag) VALUES ('host_firstonline00001', 'gpu'),
             ('host_firstonline00001', 'eu')",
        [],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO host_registration_tokens (id, host_id, token_hash, expires_at, used_at,
             created_by, created_at)
         VALUES ('hrt_first0000000001', 'host_firstonline00001', ?1, ?2, ?2,
             'usr_firstadmin00000001', ?3)",
        params![sha256_hex(b"hrt_used"), t + 3600, t],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO host_refresh_tokens (id, host_id, family_id, token_hash, expires_at,
             created_at)
         VALUES ('hrf_first0000000001', 'host_firstonline00001', 'fam_first0000000001', ?1, ?2,
             ?3)",
        params![sha256_hex(b"refresh"), now + 50 * 86_400, t],
    )
    .unwrap();
    for (id, team, status, ended) in [
        (
            "sbx_firstrunning00001",
            "team_shared00000000003",
            "running",
            None,
        ),
        (
            "sbx_firstpaused000002",
            "team_shared00000000003",
            "paused",
            None,
        ),
        (
            "sbx_firststopped00003",
            "team_shared00000000003",
            "stopped",
            Some(t + 60),
        ),
        (
            "sbx_adminrunning00004",
            "team_adminpersonal0001",
            "running",
            None,
        ),
    ] {
        tx.execute(
            "INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb,
                 timeout_sec, network, metadata, env, boot_ms, created_by, created_at,
                 started_at, last_active_at, ended_at)
             VALUES (?1, ?2, 'host_firstonline00001', 'minimal', ?3, 1, 256, 0, 1,
                 '{\"purpose\":\"upgrade\"}', '{\"GREETING\":\"hi\"}', 4200,
                 'usr_firstmember0000002', ?4, ?4, ?4, ?5)",
            params![id, team, status, t, ended],
        )
        .unwrap();
    }
    tx.execute(
        "INSERT INTO templates (id, team_id, name, kind, host_id, vcpus, memory_mb, size_bytes,
             created_at)
         VALUES ('tpl_firstbase00000001', NULL, 'minimal', 'base', 'host_firstonline00001',
             NULL, NULL, 8388608, ?1),
             ('tpl_firstsnapshot0002', 'team_shared00000000003', 'warm-python', 'snapshot',
             'host_firstonline00001', 1, 256, 268435456, ?1)",
        params![t],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO audit_events (actor, action, target, detail, created_at)
         VALUES ('usr_firstadmin00000001', 'host.create', 'host_firstonline00001', NULL, ?1)",
        params![t],
    )
    .unwrap();
    tx.commit().unwrap();
}

#[tokio::test]
async fn a_first_release_database_upgrades_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let db = dir.path().join("data").join("sandboxctl.db");
    first_release_database(&db, sandboxctl::time::unix_now());

    let server = step("today's server starts on it and migrates it", async {
        let server = TestServer::start_in(dir, &[]).await;
        let versions: Vec<i64> = server
            .sqlite()
            .prepare("SELECT version FROM refinery_schema_history ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions.first(), Some(&1));
        assert_eq!(
            versions.last().copied(),
            Some(sandboxctl::server::db::newest_schema_version()),
            "every newer migration was applied: {versions:?}"
        );
        server
    })
    .await;

    let member = step("people log in with their passwords", async {
        let auth = server
            .anon()
            .login("member@example.com", PASSWORD)
            .await
            .expect("the member logs in");
        let member = server.anon().with_token(&auth.token);
        let me = member.me().await.unwrap();
        assert_eq!(
            (me.name.as_str(), me.team_id.as_deref(), me.is_admin),
            ("Max Member", Some("team_shared00000000003"), false)
        );
        let teams: BTreeSet<String> = member
            .list_teams()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(
            teams,
            BTreeSet::from(["Max's team".to_string(), "Research".to_string()])
        );
        member
    })
    .await;

    step(
        "the team's sandboxes and templates are listed as they were",
        async {
            let listed: BTreeMap<String, SandboxStatus> = member
                .list_sandboxes(None)
                .await
                .unwrap()
                .into_iter()
                .map(|s| (s.id, s.status))
                .collect();
            assert_eq!(
                listed.get("sbx_firstrunning00001"),
                Some(&SandboxStatus::Running)
            );
            assert_eq!(
                listed.get("sbx_firstpaused000002"),
                Some(&SandboxStatus::Paused)
            );
            assert!(
                !listed.contains_key("sbx_adminrunning00004"),
                "another team's sandbox"
            );
            let sb = member.get_sandbox("sbx_firststopped00003").await.unwrap();
            assert_eq!(sb.status, SandboxStatus::Stopped);
            assert_eq!(
                sb.metadata.get("purpose").map(String::as_str),
                Some("upgrade")
            );
            let running = member.get_sandbox("sbx_firstrunning00001").await.unwrap();
            assert_eq!((running.vcpus, running.memory_mb), (1, 256));
            assert_eq!(running.host_id.as_deref(), Some("host_firstonline00001"));
            let templates = member.list_templates().await.unwrap();
            assert!(
                templates
                    .iter()
                    .any(|t| t.id == "tpl_firstsnapshot0002" && t.name == "warm-python"),
                "{templates:?}"
            );
        },
    )
    .await;

    step("the API key of the first release still works", async {
        let key = server.anon().with_token(API_KEY);
        let ids: BTreeSet<String> = key
            .list_sandboxes(None)
            .await
            .expect("the old API key authenticates")
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert!(ids.contains("sbx_firstpaused000002"), "{ids:?}");
        let keys = member.list_keys().await.unwrap();
        assert!(keys.iter().any(|k| k.name == "ci"), "{keys:?}");
    })
    .await;

    step(
        "the admin sees the hosts; the server writes to the upgraded database",
        async {
            let auth = server
                .anon()
                .login("admin@example.com", PASSWORD)
                .await
                .expect("the admin logs in");
            let admin = server.anon().with_token(&auth.token);
            assert!(admin.me().await.unwrap().is_admin);
            let hosts = admin.list_hosts().await.unwrap();
            let online = hosts
                .iter()
                .find(|h| h.id == "host_firstonline00001")
                .expect("the online host");
            assert_eq!(online.status, HostStatus::Online);
            let tags: BTreeSet<&str> = online.tags.iter().map(String::as_str).collect();
            assert_eq!(tags, BTreeSet::from(["eu", "gpu"]));
            let draining = hosts
                .iter()
                .find(|h| h.id == "host_firstdraining002")
                .expect("the draining host");
            assert_eq!(draining.status, HostStatus::Draining);
            // New rows in old and new tables alike.
            let key = member.create_key("after-upgrade").await.unwrap();
            server
                .anon()
                .with_token(&key.key.unwrap())
                .list_sandboxes(None)
                .await
                .expect("a key made after the upgrade works");
            member
                .create_team("Made after the upgrade")
                .await
                .expect("a team made after the upgrade");
            let sessions: i64 = server
                .sqlite()
                .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sessions, 2, "each login started a session");
        },
    )
    .await;
}

/// Statuses a poller saw, per sandbox, while an agent was replaced.
type Seen = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

#[tokio::test]
async fn an_agent_replaced_under_running_and_paused_sandboxes_loses_nothing() {
    let _vm = vm_permit().await;
    let server = TestServer::start_with(&["--monitor-interval", "1s"]).await;
    let (_, admin) = server.signup("root@example.com", "Root").await;
    let mut agent = TestAgent::start(&server, &admin).await;

    let (running, paused, sleeper) = step(
        "a running sandbox with a file and a process, a paused one with its memory",
        async {
            let running = create_when_ready(&admin, &agent).await.id;
            let r = admin
                .exec(
                    &running,
                    &exec(
                        "sh",
                        &[
                            "-c",
                            "echo kept > /root/mark; sleep 1000 >/dev/null 2>&1 & echo $!",
                        ],
                    ),
                )
                .await
                .unwrap();
            let sleeper: u32 = r.stdout.trim().parse().expect("a pid");
            let paused = create_when_ready(&admin, &agent).await.id;
            let r = admin
                .exec(
                    &paused,
                    &exec(
                        "sh",
                        &[
                            "-c",
                            "echo in-memory > /tmp/state; \
                             (i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 & \
                             sleep 1; cat /tmp/counter",
                        ],
                    ),
                )
                .await
                .unwrap();
            assert!(r.stdout.trim().parse::<u32>().is_ok(), "{r:?}");
            let p = admin.pause_sandbox(&paused).await.unwrap();
            assert_eq!(p.status, SandboxStatus::Paused);
            (running, paused, sleeper)
        },
    )
    .await;

    // Everything the server says about them and their host from here on.
    let seen: Seen = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (seen, stop, c) = (seen.clone(), stop.clone(), admin.clone());
        let (ids, host) = (vec![running.clone(), paused.clone()], agent.host_id.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for id in &ids {
                    if let Ok(s) = c.get_sandbox(id).await {
                        let mut seen = seen.lock().unwrap();
                        seen.entry(id.clone())
                            .or_default()
                            .insert(s.status.to_string());
                    }
                }
                if let Ok(h) = c.get_host(&host).await {
                    let mut seen = seen.lock().unwrap();
                    seen.entry(host.clone())
                        .or_default()
                        .insert(h.status.to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    step("SIGTERM ends the agent; its running VM goes on", async {
        // A long command in flight when the agent is told to stop: the agent does not wait for it.
        let long = {
            let (c, id) = (admin.clone(), running.clone());
            tokio::spawn(async move {
                let req = sandboxctl::proto::api::ExecRequest {
                    timeout_sec: Some(600),
                    ..exec("sh", &["-c", "sleep 599; echo finished > /root/long"])
                };
                c.exec(&id, &req).await
            })
        };
        wait_until("the long command runs", Duration::from_secs(30), || {
            let (c, id) = (admin.clone(), running.clone());
            async move {
                let r = c.exec(&id, &exec("ps", &[])).await.unwrap();
                r.stdout.contains("sleep 599")
            }
        })
        .await;
        let status = agent.terminate();
        let cut = long.await.unwrap();
        assert!(
            cut.is_err(),
            "the call in flight is cut, not answered: {cut:?}"
        );
        assert!(
            status.success(),
            "the agent exits cleanly on SIGTERM: {status:?}"
        );
        assert_eq!(
            agent.qemu_pids().len(),
            1,
            "the running sandbox's QEMU outlives its agent (the paused one has none)"
        );
    })
    .await;

    step(
        "a new agent process on the same data dir takes both back",
        async {
            agent.spawn();
            agent.wait_ready(&admin).await;
            let vms_line = |log: &str| {
                log.lines()
                    .filter(|l| l.contains("found a VM of a previous agent"))
                    .count()
            };
            assert_eq!(vms_line(&agent.log()), 2, "{}", agent.log());
        },
    )
    .await;

    step(
        "the running sandbox still runs its process and has its files",
        async {
            let r = admin
                .exec(
                    &running,
                    &exec(
                        "sh",
                        &[
                            "-c",
                            &format!("cat /root/mark; kill -0 {sleeper} && echo alive"),
                        ],
                    ),
                )
                .await
                .expect("exec after the agent was replaced");
            assert_eq!(r.stdout, "kept\nalive\n", "{r:?}");
            // The command whose caller was cut is ended once the next agent connects: nobody
            // could read its output any more. What an earlier command started in the background
            // (above) is not.
            let r = admin
                .exec(
                    &running,
                    &exec(
                        "sh",
                        &["-c", "ps | grep -c '[s]leep 599'; test -e /root/long"],
                    ),
                )
                .await
                .unwrap();
            assert_eq!((r.stdout.as_str(), r.exit_code), ("0\n", 1), "{r:?}");
        },
    )
    .await;

    step("the paused sandbox resumes with its memory", async {
        assert_eq!(
            admin.get_sandbox(&paused).await.unwrap().status,
            SandboxStatus::Paused
        );
        let before: u32 = {
            // The counter as the pause left it, read after resuming before it moves much.
            let r = admin.resume_sandbox(&paused).await.expect("resume");
            assert_eq!(r.status, SandboxStatus::Running);
            let r = admin
                .exec(&paused, &exec("cat", &["/tmp/state", "/tmp/counter"]))
                .await
                .unwrap();
            let mut lines = r.stdout.lines();
            assert_eq!(lines.next(), Some("in-memory"), "{r:?}");
            lines.next().unwrap().parse().unwrap()
        };
        wait_until(
            "the counter loop runs again",
            Duration::from_secs(30),
            || {
                let (c, id) = (admin.clone(), paused.clone());
                async move {
                    let r = c.exec(&id, &exec("cat", &["/tmp/counter"])).await.unwrap();
                    r.stdout.trim().parse::<u32>().unwrap() > before
                }
            },
        )
        .await;
    })
    .await;

    step("the server never counted them lost", async {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        poller.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen[&running],
            BTreeSet::from(["running".to_string()]),
            "{seen:?}"
        );
        assert_eq!(
            seen[&paused],
            BTreeSet::from(["paused".to_string(), "running".to_string()]),
            "{seen:?}"
        );
        assert_eq!(
            seen[&agent.host_id],
            BTreeSet::from(["online".to_string()]),
            "{seen:?}"
        );
        let log = server.log();
        for bad in ["missed its heartbeats", "destroying an orphan VM"] {
            assert!(!log.contains(bad), "server log says {bad:?}:\n{log}");
        }
        assert!(
            !log.lines()
                .any(|l| l.contains("reconciled")
                    && (l.contains("stopped") || l.contains("missing"))),
            "{log}"
        );
    })
    .await;
}
