//! Sandbox ports through the server (SPEC §13): a real server (plain HTTP, plus HTTPS with a
//! certificate from a CA made here), a real agent and a microVM without a network device, whose
//! busybox serves a page (`httpd`), a response that streams, and a WebSocket-style upgrade
//! that echoes (`nc -ll -e`). Reached by the `E2b-Sandbox-*` headers, by host name over TLS
//! (HTTP/1.1 and HTTP/2, connecting to 127.0.0.1 with the name in SNI and `Host`: no DNS), and
//! by `sandboxctl sandbox port-forward`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::{CreateSandboxRequest, SandboxResponse};
use sandboxctl::proto::net::NetworkSetting;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

pub(crate) const DOMAIN: &str = "sbx.example.test";

/// A CA and a wildcard certificate for `*.DOMAIN` signed by it, made with the openssl CLI.
pub(crate) fn make_certs(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &[
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=sandboxctl test CA",
        ][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    run(&[
        &["req", "-subj", &format!("/CN=*.{DOMAIN}")][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=DNS:*.{DOMAIN}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// What the guest serves: a page on 8000 (busybox httpd), on 8001 a response that sends its
/// first line, then its second only once /tmp/go exists, on 8002 an upgrade to WebSocket
/// that echoes every byte after the handshake, and on 8003 the request's head as it arrived.
const GUEST_SETUP: &str = r#"
set -e
mkdir -p /srv/www
echo 'hello from the sandbox' > /srv/www/index.html
cat > /srv/stream.sh <<'EOF'
#!/bin/sh
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
done
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n'
echo first
while [ ! -e /tmp/go ]; do usleep 50000; done
echo second
EOF
cat > /srv/ws.sh <<'EOF'
#!/bin/sh
key=
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in
    [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(printf '%s' "${line#*:}" | tr -d ' ') ;;
  esac
done
accept=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
exec cat
EOF
cat > /srv/headers.sh <<'EOF'
#!/bin/sh
head=
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  head="$head$line
"
done
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n%s' "$head"
EOF
chmod +x /srv/stream.sh /srv/ws.sh /srv/headers.sh
httpd -p 8000 -h /srv/www
setsid sh -c 'nc -ll -p 8001 -e /srv/stream.sh </dev/null >/dev/null 2>&1 &'
setsid sh -c 'nc -ll -p 8002 -e /srv/ws.sh </dev/null >/dev/null 2>&1 &'
setsid sh -c 'nc -ll -p 8003 -e /srv/headers.sh </dev/null >/dev/null 2>&1 &'
"#;

async fn sh(c: &ApiClient, id: &str, script: &str) -> String {
    let r = c
        .exec(id, &exec("sh", &["-c", script]))
        .await
        .expect("exec");
    assert_eq!(
        r.exit_code, 0,
        "{script}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// A request to `path` of the sandbox's `port` by the E2B headers, with `extra` headers.
async fn by_header(
    url: &str,
    id: &str,
    port: u16,
    path: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("E2B-Sandbox-Id", id)
        .header("e2b-sandbox-port", port.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request sent")
}

async fn status_and_json(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Reads an HTTP response head (up to the blank line) from `s`.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.expect("read"),
            1,
            "closed mid-head: {head:?}"
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A masked WebSocket text frame (a client's) carrying `text` (under 126 bytes).
fn masked_frame(text: &str) -> (Vec<u8>, [u8; 4]) {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    (f, mask)
}

/// A sandbox (with a network device or without), created once the agent can take one (a fresh
/// agent may still be building its template: those creates answer 503).
async fn create(c: &ApiClient, agent: &TestAgent, public: bool, network: bool) -> SandboxResponse {
    let req = CreateSandboxRequest {
        network: Some(NetworkSetting::Enabled(network)),
        public_ports: public.then_some(true),
        ..Default::default()
    };
    let created = std::cell::RefCell::new(None);
    wait_until(
        "a sandbox is created",
        std::time::Duration::from_secs(120),
        || async {
            match c.create_sandbox(&req).await {
                Ok(sb) => {
                    *created.borrow_mut() = Some(sb);
                    true
                }
                Err(e) if e.status() == Some(503) => false,
                Err(e) => panic!("create: {e}\nagent log:\n{}", agent.log()),
            }
        },
    )
    .await;
    created.into_inner().expect("created")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ports_through_the_server() {
    let _vm = vm_permit().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let tls_port = free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let s = TestServer::start_with(&[
        "--sandbox-domain",
        DOMAIN,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-listen",
        &tls_listen,
    ])
    .await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let agent = TestAgent::start(&s, &admin).await;
    // Ports work with a network device and without one. The first opens its ports to anyone.
    let public = create(&admin, &agent, true, true).await;
    let sb = create(&admin, &agent, false, false).await;
    let id = sb.id.as_str();
    let token = sb
        .access_token
        .clone()
        .expect("create answers the access token");

    step("ids are DNS labels and the token is the sandbox's", async {
        for i in [&sb.id, &public.id] {
            assert!(i.starts_with("sbx-"), "{i}");
            assert!(
                i.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
        assert!(!sb.public_ports && public.public_ports);
        let got = admin.get_sandbox(id).await.unwrap();
        assert_eq!(got.access_token.as_deref(), Some(token.as_str()));
        assert_ne!(public.access_token, sb.access_token);
        sh(&admin, id, GUEST_SETUP).await;
    })
    .await;

    step(
        "header routing: a private port needs the token or a team credential",
        async {
            let (st, body) = status_and_json(by_header(&s.url, id, 8000, "/", &[]).await).await;
            assert_eq!(st, 401, "{body}");
            assert_eq!(body["sandboxId"], id, "{body}");
            let r = by_header(&s.url, id, 8000, "/", &[("X-Access-Token", &token)]).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "hello from the sandbox\n");
            // The team's own user token and API key open it too.
            let bearer = format!("Bearer {}", admin.token().unwrap());
            let r = by_header(&s.url, id, 8000, "/", &[("Authorization", &bearer)]).await;
            assert_eq!(r.status(), 200);
            let k = admin.create_key("ports").await.unwrap().key.unwrap();
            let r = by_header(&s.url, id, 8000, "/", &[("X-API-Key", &k)]).await;
            assert_eq!(r.status(), 200);
            // The app sees the request, not our credentials or routing headers.
            let r = by_header(
                &s.url,
                id,
                8003,
                "/seen?x=1",
                &[
                    ("X-Access-Token", &token),
                    ("X-API-Key", &k),
                    ("Authorization", &bearer),
                    ("X-App", "kept"),
                ],
            )
            .await;
            let seen = r.text().await.unwrap().to_ascii_lowercase();
            assert!(seen.starts_with("get /seen?x=1 http/1.1"), "{seen}");
            assert!(seen.contains("x-app: kept"), "{seen}");
            for gone in [
                "e2b-sandbox",
                "x-api-key",
                "x-access-token",
                "authorization",
                "sk_",
                "sat_",
            ] {
                assert!(!seen.contains(gone), "{gone} reached the app:\n{seen}");
            }
            // Many requests over one client connection.
            let http = reqwest::Client::new();
            for _ in 0..3 {
                let r = http
                    .get(format!("{}/index.html", s.url))
                    .header("e2b-sandbox-id", id)
                    .header("e2b-sandbox-port", "8000")
                    .header("x-access-token", &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.text().await.unwrap(), "hello from the sandbox\n");
            }
        },
    )
    .await;

    step(
        "another team's credentials and another sandbox's token are refused",
        async {
            let (_, bob) = s.signup("bob@example.com", "Bob").await;
            let bearer = format!("Bearer {}", bob.token().unwrap());
            let (st, body) = status_and_json(
                by_header(&s.url, id, 8000, "/", &[("Authorization", &bearer)]).await,
            )
            .await;
            assert_eq!(st, 403, "{body}");
            let other = public.access_token.clone().unwrap();
            let (st, _) = status_and_json(
                by_header(&s.url, id, 8000, "/", &[("X-Access-Token", &other)]).await,
            )
            .await;
            assert_eq!(st, 403);
            // A public sandbox's ports answer anyone.
            let (st, body) =
                status_and_json(by_header(&s.url, &public.id, 8000, "/", &[]).await).await;
            assert_eq!(st, 502, "{body}");
            assert_eq!(
                body["message"],
                "The sandbox is running but port is not open"
            );
            sh(
                &admin,
                &public.id,
                "mkdir -p /w && echo public > /w/index.html && httpd -p 8000 -h /w",
            )
            .await;
            let r = by_header(&s.url, &public.id, 8000, "/", &[]).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "public\n");
        },
    )
    .await;

    step(
        "control-plane paths stay with the server whatever headers they carry",
        async {
            let (st, body) = status_and_json(
                by_header(
                    &s.url,
                    id,
                    8000,
                    "/v1/sandboxes",
                    &[(
                        "Authorization",
                        &format!("Bearer {}", admin.token().unwrap()),
                    )],
                )
                .await,
            )
            .await;
            assert_eq!(st, 200, "{body}");
            assert!(body["sandboxes"].is_array(), "{body}");
        },
    )
    .await;

    step("a closed port answers 502 with E2B's message", async {
        let (st, body) =
            status_and_json(by_header(&s.url, id, 9, "/", &[("X-Access-Token", &token)]).await)
                .await;
        assert_eq!(st, 502, "{body}");
        assert_eq!(
            body["message"],
            "The sandbox is running but port is not open"
        );
        assert_eq!(body["code"], 502);
        assert_eq!(body["sandboxId"], id);
    })
    .await;

    step(
        "a streamed response arrives in pieces before it ends",
        async {
            let mut r = by_header(&s.url, id, 8001, "/", &[("X-Access-Token", &token)]).await;
            assert_eq!(r.status(), 200);
            let first = r.chunk().await.unwrap().expect("a first piece");
            assert_eq!(&first[..], b"first\n");
            // The second line is written only once /tmp/go exists: the first came on its own.
            sh(&admin, id, "touch /tmp/go").await;
            let mut rest = Vec::new();
            while let Some(c) = r.chunk().await.unwrap() {
                rest.extend_from_slice(&c);
            }
            assert_eq!(rest, b"second\n");
        },
    )
    .await;

    step("a WebSocket upgrade is bridged both ways", async {
        let mut c = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let req = format!(
            "GET /echo HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             E2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: 8002\r\nX-Access-Token: {token}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455's example key and answer, computed by the guest's script.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        for text in ["hello", "and again"] {
            let (frame, mask) = masked_frame(text);
            c.write_all(&frame).await.unwrap();
            let mut back = vec![0u8; frame.len()];
            c.read_exact(&mut back).await.unwrap();
            let payload: Vec<u8> = back[6..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(payload, text.as_bytes());
        }
    })
    .await;

    step(
        "host-name routing over TLS, with the test CA and no DNS",
        async {
            let host = format!("8000-{id}.{DOMAIN}");
            let ca_path = ca.clone();
            let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
            let https = reqwest::Client::builder()
                .tls_certs_only([ca])
                .resolve(&host, SocketAddr::from(([127, 0, 0, 1], tls_port)))
                .build()
                .unwrap();
            let url = format!("https://{host}:{tls_port}/");
            let r = https.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 401);
            let r = https
                .get(&url)
                .header("x-access-token", &token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "hello from the sandbox\n");
            // Any path goes to the sandbox on its host name, even an API one.
            let r = https
                .get(format!("https://{host}:{tls_port}/v1/me"))
                .header("x-access-token", &token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "busybox httpd answers, not the API");
            // HTTP/2 where the client offers it (ALPN), through the same proxy.
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--http2", "--cacert", &ca_path, "--resolve"])
                .arg(format!("{host}:{tls_port}:127.0.0.1"))
                .args([
                    "-H",
                    &format!("x-access-token: {token}"),
                    "-w",
                    "%{http_version}",
                ])
                .arg(&url)
                .output()
                .await
                .expect("curl runs");
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                said,
                "hello from the sandbox\n2",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        },
    )
    .await;

    step(
        "port-forward carries local connections to the sandbox",
        async {
            let cfg = cli_login(&s, "admin@example.com");
            let mut child = Command::new(BIN)
                .args(["sandbox", "port-forward", id, "0:8000"])
                .env("SANDBOXCTL_CONFIG", &cfg)
                .env_remove("SANDBOXCTL_SERVER")
                .env_remove("SANDBOXCTL_TOKEN")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let addr = line
                .strip_prefix("forwarding ")
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_else(|| panic!("{line}"))
                .to_string();
            for _ in 0..2 {
                let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
                c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).await.unwrap();
                assert!(
                    out.starts_with("HTTP/1.") && out.ends_with("hello from the sandbox\n"),
                    "{out}"
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            // Nothing listens on 9: the route answers 409 port_closed before any upgrade.
            let e = admin.open_port(id, 9).await.expect_err("closed port");
            assert_eq!((e.status(), e.code()), (Some(409), Some("port_closed")));
        },
    )
    .await;

    step(
        "a paused and a killed sandbox answer 502 \"was not found\"",
        async {
            admin.pause_sandbox(id).await.unwrap();
            let (st, body) = status_and_json(
                by_header(&s.url, id, 8000, "/", &[("X-Access-Token", &token)]).await,
            )
            .await;
            assert_eq!(st, 502, "{body}");
            assert!(
                body["message"].as_str().unwrap().contains("was not found"),
                "{body}"
            );
            admin.delete_sandbox(&public.id).await.unwrap();
            let (st, body) =
                status_and_json(by_header(&s.url, &public.id, 8000, "/", &[]).await).await;
            assert_eq!(st, 502, "{body}");
            assert_eq!(body["message"], "The sandbox was not found");
            // An id nobody ever had, and a malformed one, read the same.
            for unknown in ["sbx-doesnotexist", "not-an-id"] {
                let (st, body) =
                    status_and_json(by_header(&s.url, unknown, 8000, "/", &[]).await).await;
                assert_eq!(st, 502, "{body}");
                assert!(body["message"].as_str().unwrap().contains("was not found"));
            }
            admin.delete_sandbox(id).await.unwrap();
        },
    )
    .await;
    drop(agent);
}
