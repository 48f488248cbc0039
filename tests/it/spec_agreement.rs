//! Where openapi.yaml and the server used to disagree (schemathesis found each): the server now
//! applies the rule the spec states, and answers in the shape the spec documents.

use reqwest::Method;
use sandboxctl::proto::api::CreateSandboxRequest;
use serde_json::json;

use crate::common::{TestAgent, TestServer, code, raw, step, vm_permit};

#[tokio::test]
async fn the_server_applies_the_rules_openapi_yaml_states() {
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    let sb = admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let t = Some(auth.token.as_str());

    step(
        "tail_bytes above the int64 maximum is refused naming it",
        async {
            let url = format!("{}/v1/sandboxes/{}/logs", s.url, sb.id);
            let (st, v) = raw(
                Method::GET,
                &format!("{url}?tail_bytes=9223372036854775808"),
                t,
                None,
            )
            .await;
            assert_eq!((st, code(&v)), (400, "invalid_field"), "{v}");
            assert_eq!(v["error"]["field"], "tail_bytes", "{v}");
            // The largest the spec allows is read as 1 MiB.
            let r = reqwest::Client::new()
                .get(format!("{url}?tail_bytes=9223372036854775807"))
                .bearer_auth(&auth.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        },
    )
    .await;

    step(
        "a plain GET of exec/stream is the JSON 400 the spec lists",
        async {
            let url = format!("{}/v1/sandboxes/{}/exec/stream", s.url, sb.id);
            let (st, v) = raw(Method::GET, &url, t, None).await;
            assert_eq!((st, code(&v)), (400, "invalid_field"), "{v}");
            assert_eq!(v["error"]["field"], "upgrade", "{v}");
        },
    )
    .await;

    step(
        "an import that is not a tar is a 400 naming body, said once",
        async {
            let r = reqwest::Client::new()
                .post(format!("{}/v1/templates/import?name=notatar", s.url))
                .bearer_auth(&auth.token)
                .header("content-type", "application/x-tar")
                .body("hello, this is not a tar archive")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(code(&v), "invalid_field", "{v}");
            assert_eq!(v["error"]["field"], "body", "{v}");
            let m = v["error"]["message"].as_str().unwrap();
            assert!(m.starts_with("body: not a readable tar archive"), "{m}");
            assert!(!m.starts_with("body: body:"), "{m}");
            assert!(
                admin
                    .list_templates()
                    .await
                    .unwrap()
                    .iter()
                    .all(|t| t.name != "notatar")
            );
        },
    )
    .await;

    step(
        "hostile archives are refused by the real server, naming body",
        async {
            use crate::common::archives::Archive;
            let hostile = [
                (
                    "absolute member",
                    Archive::new()
                        .bootable()
                        .file("/tmp/sandboxctl-it-pwned", 0o644, b"x")
                        .finish(),
                    "absolute",
                ),
                (
                    "climbing member",
                    Archive::new()
                        .bootable()
                        .file("../../../../../../tmp/sandboxctl-it-pwned", 0o644, b"x")
                        .finish(),
                    "'..'",
                ),
                (
                    "hard link out",
                    Archive::new()
                        .bootable()
                        .hard_link("etc/hostname", "/etc/hostname")
                        .finish(),
                    "not an earlier file",
                ),
            ];
            for (what, archive, expect) in hostile {
                let r = reqwest::Client::new()
                    .post(format!("{}/v1/templates/import?name=hostile", s.url))
                    .bearer_auth(&auth.token)
                    .header("content-type", "application/x-tar")
                    .body(archive)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 400, "{what}");
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["error"]["field"], "body", "{what}: {v}");
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.contains(expect), "{what}: {m}");
            }
            assert!(!std::path::Path::new("/tmp/sandboxctl-it-pwned").exists());
            assert!(
                admin
                    .list_templates()
                    .await
                    .unwrap()
                    .iter()
                    .all(|t| t.name != "hostile")
            );
        },
    )
    .await;

    step(
        "facts.address takes the port the spec's pattern takes",
        async {
            let url = format!("{}/v1/hosts/register", s.url);
            for address in [
                "agent:+80",
                "agent:080",
                "agent:",
                ":80",
                "agent:65536",
                "agent 1:80",
            ] {
                let body = json!({"token": "hrt_nope", "facts": {
                "arch": "x86_64", "cpu_cores": 1, "memory_mb": 1024, "disk_gb": 1,
                "address": address, "accel": "tcg", "accel_reason": "", "version": "0"}});
                let (st, v) = raw(Method::POST, &url, None, Some(&body.to_string())).await;
                assert_eq!(st, 400, "{address}: {v}");
                assert_eq!(v["error"]["field"], "facts.address", "{address}: {v}");
            }
        },
    )
    .await;
}
