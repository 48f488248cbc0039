//! A real sandbox end to end: server process, agent process registered through the token flow, a
//! QEMU microVM, the REST API and the CLI.

use reqwest::Method;
use sandboxctl::crypto::SigningKeyPair;
use sandboxctl::crypto::agent_call::{self, CallBinding, CallSigner};
use sandboxctl::proto::api::CreateSandboxRequest;

use crate::common::{TestAgent, TestServer, cli, code, exec, raw, step, vm_permit};

#[tokio::test]
async fn sandbox_end_to_end_through_server_agent_and_cli() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;

    let host = admin.get_host(&agent.host_id).await.unwrap();
    assert_eq!(host.status, "online");
    let accel = host.accel.clone().unwrap();
    assert!(accel == "kvm" || accel == "tcg", "{accel}");
    assert!(!host.accel_reason.clone().unwrap_or_default().is_empty());
    let cgroups = host.cgroups.clone().expect("the agent reports its cgroups");
    assert!(
        cgroups.starts_with("v2 /") || cgroups.starts_with("none: "),
        "{cgroups}"
    );
    eprintln!("agent cgroups: {cgroups}");
    eprintln!(
        "agent accel: {accel} ({})",
        host.accel_reason.unwrap_or_default()
    );

    let user_token = step("nobody but the server may call the agent", async {
        // Nobody but the server may call the agent.
        let vms = format!("http://{}/v1/vms", agent.addr);
        let user_token = s
            .anon()
            .login("admin@example.com", "correct horse battery")
            .await
            .unwrap()
            .token;
        let forged = CallSigner::new(&SigningKeyPair::generate())
            .sign(
                &agent.host_id,
                &CallBinding::new("GET", "/v1/vms", b""),
                agent_call::unix_now(),
            )
            .unwrap();
        for token in [
            None,
            Some("garbage"),
            Some(user_token.as_str()),
            Some(forged.as_str()),
        ] {
            let (st, v) = raw(Method::GET, &vms, token, None).await;
            assert_eq!((st, code(&v)), (401, "unauthorized"), "token {token:?}");
            let (st, _) = raw(
                Method::POST,
                &vms,
                token,
                Some(r#"{"id":"sbx_x","template":"minimal","vcpus":1,"memory_mb":256}"#),
            )
            .await;
            assert_eq!(st, 401);
        }
        user_token
    })
    .await;
    let (cfg, id) = step("the CLI logs in and creates a sandbox", async {
        // The CLI logs in and creates a sandbox.
        let cfg = crate::common::cli_login(&s, "admin@example.com");
        let (rc, out, err) = cli(&cfg, &["sandbox", "create", "--json"], None);
        assert_eq!(rc, 0, "create failed: {err}\nagent log:\n{}", agent.log());
        let sbx: serde_json::Value = serde_json::from_str(&out).unwrap();
        let id = sbx["id"].as_str().unwrap().to_string();
        assert_eq!(sbx["status"], "running");
        assert_eq!(sbx["host_id"], agent.host_id.as_str());
        eprintln!(
            "sandbox create (cold boot): {} ms on the agent",
            sbx["boot_ms"]
        );
        (cfg, id)
    })
    .await;
    step("commands through the API", async {
        // Commands through the API.
        let r = admin
            .exec(&id, &exec("echo", &["hello", "world"]))
            .await
            .unwrap();
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
            ("hello world\n", "", 0)
        );
        let r = admin.exec(&id, &exec("uname", &["-a"])).await.unwrap();
        assert!(r.stdout.starts_with("Linux "), "{r:?}");
        let r = admin
            .exec(&id, &exec("sh", &["-c", "exit 3"]))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 3);
        let r = admin
            .exec(&id, &exec("sh", &["-c", "echo oops >&2"]))
            .await
            .unwrap();
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
            ("", "oops\n", 0)
        );
        let mut with_env = exec("sh", &["-c", "echo $GREETING from $(pwd)"]);
        with_env.env.insert("GREETING".into(), "hi".into());
        with_env.cwd = Some("/tmp".into());
        let r = admin.exec(&id, &with_env).await.unwrap();
        assert_eq!(r.stdout, "hi from /tmp\n");
        let (st, v) = raw(
            Method::POST,
            &format!("{}/v1/sandboxes/{id}/exec", s.url),
            Some(&user_token),
            Some(r#"{"args":["x"]}"#),
        )
        .await;
        assert_eq!((st, v["error"]["field"].as_str()), (400, Some("cmd")));
    })
    .await;
    step(
        "commands through the CLI, which exits with their code",
        async {
            // ... and through the CLI, which exits with the command's code.
            let (rc, out, _) = cli(
                &cfg,
                &["sandbox", "exec", &id, "--", "sh", "-c", "echo hi; exit 7"],
                None,
            );
            assert_eq!((rc, out.as_str()), (7, "hi\n"));
            let (rc, out, _) = cli(&cfg, &["sandbox", "list"], None);
            assert_eq!(rc, 0);
            assert!(out.contains(&id) && out.contains("running"), "{out}");
            let (rc, out, _) = cli(&cfg, &["sandbox", "get", &id, "--json"], None);
            assert_eq!(rc, 0);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"],
                "running"
            );
        },
    )
    .await;
    step("an API key works; another team sees nothing", async {
        // An API key works for sandboxes; another team sees nothing.
        let key = admin.create_key("ci").await.unwrap();
        let by_key = s.anon().with_token(key.key.as_deref().unwrap());
        assert!(
            by_key
                .list_sandboxes(None)
                .await
                .unwrap()
                .iter()
                .any(|x| x.id == id)
        );
        let (_, other) = s.signup("eve@example.com", "Eve").await;
        assert_eq!(
            other.get_sandbox(&id).await.unwrap_err().status(),
            Some(404)
        );
        assert_eq!(
            other
                .exec(&id, &exec("true", &[]))
                .await
                .unwrap_err()
                .status(),
            Some(404)
        );
        assert_eq!(
            other.delete_sandbox(&id).await.unwrap_err().status(),
            Some(404)
        );
    })
    .await;
    step(
        "the host cannot be deleted from under a live sandbox",
        async {
            // The host cannot be deleted from under a live sandbox without force.
            let e = admin.delete_host(&agent.host_id, false).await.unwrap_err();
            assert_eq!(e.code(), Some("host_has_sandboxes"));
            let preview = admin.host_delete_preview(&agent.host_id).await.unwrap();
            assert_eq!(preview.sandbox_ids, vec![id.clone()]);
        },
    )
    .await;
    step("kill it; nothing is left behind", async {
        // Kill it; nothing is left behind.
        let (rc, _, err) = cli(&cfg, &["sandbox", "kill", &id], None);
        assert_eq!(rc, 0, "{err}");
        let got = admin.get_sandbox(&id).await.unwrap();
        assert_eq!(got.status, "stopped");
        assert!(got.ended_at.is_some());
        let e = admin.exec(&id, &exec("true", &[])).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(409), Some("sandbox_not_running"))
        );
        admin.delete_sandbox(&id).await.unwrap();
        assert!(
            agent.qemu_pids().is_empty(),
            "a QEMU process outlived its sandbox"
        );
        assert!(
            !agent.dir.path().join("vms").join(&id).exists(),
            "VM files left behind"
        );
        let e = admin.get_sandbox("sbx_doesnotexist").await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));
    })
    .await;
    step("a bad template is refused with the field named", async {
        // A bad template is refused by the agent with the field named, and recorded as an error.
        let e = admin
            .create_sandbox(&CreateSandboxRequest {
                template: Some("no-such-template".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        assert!(agent.qemu_pids().is_empty());
    })
    .await;
}
