//! create→first-command latency through the E2B Python SDK against our own CLI on the same
//! server and template, a few runs each, interleaved; prints the p50s. A measurement, not a
//! check of speed (no timing asserts): run it on purpose with
//! `cargo test --test it e2b_envd::latency -- --ignored --nocapture`.

use std::time::Instant;

use super::{SETUP, scripts};
use crate::common::{TestAgent, TestServer, cli, cli_login, exec, vm_permit};
use crate::e2b::{python, sdk_env, team_key};

const RUNS: usize = 5;

fn p50(mut v: Vec<u128>) -> u128 {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn latency() {
    let py = python().expect("the e2b venv (SANDBOXCTL_E2B_VENV)");
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let key = team_key(&admin).await;
    let cfg = cli_login(&s, "admin@example.com");
    // One template for both: `minimal` with what E2B's commands need (bash, `user`),
    // snapshotted as a team template.
    let sb = crate::common::create_when_ready(&admin, &agent).await;
    let r = admin
        .exec(&sb.id, &exec("sh", &["-c", SETUP]))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    admin.snapshot(&sb.id, "e2b-latency", false).await.unwrap();
    admin.delete_sandbox(&sb.id).await.unwrap();

    let ours = |cfg: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            let c = cfg.as_path();
            let t = Instant::now();
            let (rc, out, err) = cli(
                c,
                &["sandbox", "create", "--template", "e2b-latency", "--json"],
                None,
            );
            assert_eq!(rc, 0, "{err}");
            let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let (rc, out, err) = cli(c, &["sandbox", "exec", &id, "--", "echo", "hi"], None);
            let ms = t.elapsed().as_millis();
            assert_eq!((rc, out.as_str()), (0, "hi\n"), "{err}");
            let (rc, _, err) = cli(c, &["sandbox", "kill", &id], None);
            assert_eq!(rc, 0, "{err}");
            ms
        })
        .await
        .unwrap()
    };
    let sdk = || {
        let mut cmd = std::process::Command::new(&py);
        cmd.arg(scripts().join("latency.py")).arg("e2b-latency");
        sdk_env(&mut cmd, &s, &key);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ms: Vec<u128> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|w| w.parse().unwrap())
                .collect();
            assert_eq!(ms.len(), 3, "{ms:?}");
            (ms[0], ms[1], ms[2])
        }
    };
    // A first run of each, not counted (caches, the template's first use).
    ours(cfg.clone()).await;
    sdk().await;
    let (mut a, mut b, mut create, mut first) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        a.push(ours(cfg.clone()).await);
        let (total, c, f) = sdk().await;
        b.push(total);
        create.push(c);
        first.push(f);
    }
    println!("create→first command, ms, {RUNS} runs each");
    println!(
        "  sandboxctl CLI (sandbox create + sandbox exec): {a:?} p50 {}",
        p50(a.clone())
    );
    println!(
        "  E2B Python SDK (Sandbox.create + commands.run): {b:?} p50 {}",
        p50(b.clone())
    );
    println!(
        "    of which Sandbox.create p50 {}, commands.run p50 {}",
        p50(create),
        p50(first)
    );
}
