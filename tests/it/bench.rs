//! The benchmarks through the real binary at a tiny scale: `bench server` (the server as a child
//! process against simulated hosts) and `bench --density` (real sandboxes on a real agent). No
//! timing asserts: the tables have their rows, nothing failed, nothing is left behind.

use crate::common::{TestAgent, TestServer, cli, cli_login, vm_permit};

/// The rows of the markdown table between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section(md: &str, name: &str) -> String {
    let (b, e) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let start = md.find(&b).unwrap_or_else(|| panic!("no {b} in:\n{md}")) + b.len();
    let end = md.find(&e).unwrap_or_else(|| panic!("no {e} in:\n{md}"));
    md[start..end].to_string()
}

/// The cells of the table row starting with `| first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {first}")))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[tokio::test]
async fn bench_server_runs_the_real_server_against_a_simulated_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("BENCH.md");
    std::fs::write(&out, "# Kept\n\nText around the section stays.\n").unwrap();
    let (rc, stdout, stderr) = cli(
        &dir.path().join("cli.toml"),
        &[
            "bench",
            "server",
            "--hosts",
            "5",
            "--sandboxes",
            "40",
            "--teams",
            "2",
            "--rate",
            "50",
            "--duration",
            "2",
            "--heartbeat-interval",
            "1s",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(rc, 0, "bench server failed:\n{stderr}\n{stdout}");
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.starts_with("# Kept\n\nText around the section stays."),
        "{md}"
    );
    let t = section(&md, "bench-server");
    assert!(t.contains("5 simulated hosts"), "{t}");
    assert!(t.contains("2 teams with 40 sandboxes"), "{t}");
    for what in [
        "sandbox GET (API key)",
        "sandbox list (API key",
        "host heartbeat",
        "host credential refresh",
    ] {
        let cells = row(&t, what);
        assert_eq!(cells.len(), 7, "{cells:?}");
        let n: u64 = cells[1].parse().unwrap();
        assert!(n > 0, "no {what} answered: {t}");
        assert_eq!(cells[5], "0", "{what} had errors: {t}\n{stderr}");
        assert!(
            cells[2].ends_with(" ms") && cells[3].ends_with(" ms"),
            "{cells:?}"
        );
    }
    // GETs and lists together are what was scheduled: 50 a second for 2 s.
    let sent: u64 = ["sandbox GET (API key)", "sandbox list (API key"]
        .iter()
        .map(|w| row(&t, w)[1].parse::<u64>().unwrap())
        .sum();
    assert_eq!(sent, 100, "{t}");
    let calls = row(&t, "signed calls to hosts");
    assert!(calls[1].ends_with("(0 refused)"), "{calls:?}");
    assert!(row(&t, "peak resident memory")[1].ends_with(" MB"), "{t}");
}

#[tokio::test]
async fn bench_server_refuses_bad_arguments_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.toml");
    for (args, field) in [
        (vec!["--rate", "0"], "--rate"),
        (vec!["--list-share", "1.5"], "--list-share"),
        (vec!["--hosts", "0"], "--hosts"),
    ] {
        let mut all = vec!["bench", "server"];
        all.extend(args.iter());
        let (rc, _, err) = cli(&cfg, &all, None);
        assert_ne!(rc, 0, "{all:?} was accepted");
        assert!(err.contains(field), "{all:?}: {err}");
    }
}

#[tokio::test]
async fn bench_density_starts_measures_and_removes_idle_sandboxes() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    let cfg = cli_login(&s, "admin@example.com");
    let out = s.dir.path().join("BENCH.md");
    let (rc, stdout, stderr) = cli(
        &cfg,
        &[
            "bench",
            "--density",
            "2",
            "--density-quiet",
            "1s",
            "--density-execs",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        rc,
        0,
        "bench --density failed:\n{stderr}\n{stdout}\nagent log:\n{}",
        agent.log()
    );
    let t = section(&std::fs::read_to_string(&out).unwrap(), "bench-density");
    assert!(t.contains("reached 2"), "{t}");
    for count in ["1", "2"] {
        let cells = row(&t, &format!("{count} |"));
        assert_eq!(cells[0], count, "{cells:?}");
        assert_eq!(cells[1], count, "one QEMU process per sandbox: {cells:?}");
        let pss: f64 = cells[2].trim_end_matches(" MB").parse().unwrap();
        assert!(pss > 0.0, "{cells:?}");
        assert!(cells[7].ends_with(" ms"), "{cells:?}");
    }
    // Every sandbox it made is gone again (a fresh client: the bench ran for a while and the
    // first one's pooled connection may have been closed by the server meanwhile).
    let admin = sandboxctl::cli::client::ApiClient::new(&s.url, Some(auth.token.clone()));
    let left = admin.list_sandboxes(None).await.unwrap();
    assert!(
        left.iter().all(|x| x.status.as_str() == "stopped"),
        "{:?}",
        left.iter().map(|x| (&x.id, &x.status)).collect::<Vec<_>>()
    );
    assert_eq!(left.len(), 2, "two sandboxes made and ended");
}
