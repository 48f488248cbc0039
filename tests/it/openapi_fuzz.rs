//! openapi.yaml against the real server: schemathesis (installed by `./install.sh --deps`)
//! generates requests from the spec, a bounded number per route, and checks that no answer is a
//! 5xx and every status is one the spec lists for the route. Skipped, saying so, where schemathesis
//! is not installed.

use std::process::Command;

use sandboxctl::proto::api::CreateSandboxRequest;

use crate::common::{TestAgent, TestServer, vm_permit};

/// Routes left out, and why: each would make the run about something other than the spec.
const EXCLUDED: &[&str] = &[
    // GET /v1/sandboxes/{id}/exec/stream, a WebSocket: an HTTP fuzzer cannot speak it
    // (tests/it/streams covers it).
    "execStream",
    // POST /v1/sandboxes: every generated create boots a VM (tens of seconds each under
    // emulation) and enough of them fill the host, which answers 503 no_host_available as
    // documented.
    "createSandbox",
    // POST /v1/templates builds a Debian template on every host: minutes of debootstrap.
    "buildTemplate",
    // POST /v1/auth/logout and DELETE /v1/auth/sessions/{id} end the run's own session (the one
    // id GET /v1/auth/sessions shows it): everything after them would be a 401.
    "logout",
    "endSession",
    // Would take the only host out of placement, or delete it, under the run.
    "drainHost",
    // E2B's creates boot a VM each, like createSandbox (the run carries no X-API-KEY: they
    // answer 401 anyway).
    "e2bCreateSandbox",
    "e2bCreateSandboxV2",
    "deleteHost",
];

fn schemathesis() -> Option<String> {
    let ok = Command::new("schemathesis")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then(|| "schemathesis".to_string())
}

#[tokio::test]
async fn the_server_answers_as_openapi_yaml_says() {
    let Some(bin) = schemathesis() else {
        eprintln!("schemathesis is not installed (./install.sh --deps installs it): skipped");
        return;
    };
    let _vm = vm_permit().await;
    let s = TestServer::start().await;
    let (auth, admin) = s.signup("admin@example.com", "Admin").await;
    let _agent = TestAgent::start(&s, &admin).await;
    // One running sandbox, so that the sandbox routes reach a real VM when an id from a list is used.
    admin
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let mut cmd = Command::new(bin);
    // Its cache (`.schemathesis/`) goes to the server's temp dir, not the checkout.
    cmd.current_dir(s.dir.path())
        .args(["run", spec, "--url", &s.url])
        .args(["--header", &format!("Authorization: Bearer {}", auth.token)])
        .args(["--checks", "not_a_server_error,status_code_conformance"])
        .args(["--phases", "examples,fuzzing"])
        .args(["--max-examples", "10", "--workers", "1"])
        .args(["--request-timeout", "120", "--no-color"])
        .args(["--seed", "20261205"]);
    for id in EXCLUDED {
        cmd.args(["--exclude-operation-id", id]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let tail: String = text
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{tail}");
    assert!(
        out.status.success(),
        "schemathesis found answers the spec does not allow:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
