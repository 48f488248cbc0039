//! The API without microVMs: accounts, host registration and its tokens, errors.

use reqwest::Method;

use sandboxctl::server::db::hosts::REGISTRATION_TTL_SECS;

use crate::common::{TestServer, code, facts, raw, register_host, regular};

#[tokio::test]
async fn signup_login_and_first_user_is_admin() {
    let s = TestServer::start().await;
    let (a, ac) = s.signup("Ann@Example.com", "Ann").await;
    assert!(a.is_admin);
    assert_eq!(a.email, "ann@example.com");
    assert!(a.team_id.is_some());
    let (b, _) = s.signup("bob@example.com", "Bob").await;
    assert!(!b.is_admin);
    let me = ac.me().await.unwrap();
    assert_eq!(me.name, "Ann");
    assert_eq!(me.role.as_deref(), Some("owner"));

    let l = s
        .anon()
        .login("ANN@example.com", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(l.user_id, a.user_id);
    assert_eq!(l.team_id, a.team_id);
    let bad = s
        .anon()
        .login("ann@example.com", "wrong password!")
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(401));
    let unknown = s
        .anon()
        .login("nobody@example.com", "wrong password!")
        .await
        .unwrap_err();
    assert_eq!(unknown.status(), Some(401));
    assert_eq!(
        bad.to_string(),
        unknown.to_string(),
        "unknown users are not told apart"
    );
    let dup = s
        .anon()
        .signup("ann@example.com", "another password", "Ann2")
        .await
        .unwrap_err();
    assert_eq!((dup.status(), dup.code()), (Some(409), Some("email_taken")));

    // Regular hosts are for platform admins only.
    let bc = s.anon().with_token(&b.token);
    let e = bc.create_host(&regular()).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let s = TestServer::start().await;
    let url = |p: &str| format!("{}{p}", s.url);
    let cases = [
        (r#"{"email":"a@b.co","password":"long enough"}"#, "name"),
        (r#"{"email":"a@b.co","name":"A"}"#, "password"),
        (
            r#"{"email":"not-an-email","password":"long enough","name":"A"}"#,
            "email",
        ),
        (
            r#"{"email":"a@b.co","password":"short","name":"A"}"#,
            "password",
        ),
        (
            r#"{"email":"a@b.co","password":"long enough","name":""}"#,
            "name",
        ),
        (
            r#"{"email":7,"password":"long enough","name":"A"}"#,
            "email",
        ),
    ];
    for (body, field) in cases {
        let (st, v) = raw(Method::POST, &url("/v1/auth/signup"), None, Some(body)).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    let (st, v) = raw(
        Method::POST,
        &url("/v1/auth/signup"),
        None,
        Some("{not json"),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "invalid_body"));
    let (st, _) = raw(Method::POST, &url("/v1/auth/signup"), None, Some("")).await;
    assert_eq!(st, 400);
    let n: i64 = s
        .sqlite()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "nothing was written");

    let (st, v) = raw(Method::GET, &url("/v1/nope"), None, None).await;
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (st, v) = raw(Method::PUT, &url("/v1/auth/login"), None, None).await;
    assert_eq!((st, code(&v)), (405, "method_not_allowed"));
    let big = format!(
        r#"{{"email":"a@b.co","password":"long enough","name":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let (st, _) = raw(Method::POST, &url("/v1/auth/signup"), None, Some(&big)).await;
    assert_eq!(st, 413);

    // Sandbox input is checked before anything is placed or written.
    let (auth, _) = s.signup("a@b.co", "A").await;
    let token = auth.token.as_str();
    for (body, field) in [
        (r#"{"vcpus":0}"#, "vcpus"),
        (r#"{"memory_mb":1}"#, "memory_mb"),
        (r#"{"template":"../etc"}"#, "template"),
        (r#"{"env":{"1BAD":"x"}}"#, "env.1BAD"),
        (r#"{"vcpus":"two"}"#, "vcpus"),
    ] {
        let (st, v) = raw(Method::POST, &url("/v1/sandboxes"), Some(token), Some(body)).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    // No host: 503 with a clear code, and no row.
    let (st, v) = raw(Method::POST, &url("/v1/sandboxes"), Some(token), Some("{}")).await;
    assert_eq!((st, code(&v)), (503, "no_host_available"), "{v}");
    let n: i64 = s
        .sqlite()
        .query_row("SELECT count(*) FROM sandboxes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn registration_token_is_single_use_under_concurrency() {
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let created = admin.create_host(&regular()).await.unwrap();
    assert_eq!(created.host.status, "pending");
    assert!(
        created
            .register_command
            .contains(&created.registration_token)
    );
    let stored: String = s
        .sqlite()
        .query_row(
            "SELECT token_hash FROM host_registration_tokens WHERE host_id = ?1",
            [&created.host.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(stored, created.registration_token, "only a hash is stored");

    let body =
        serde_json::json!({ "token": created.registration_token, "facts": facts("127.0.0.1:1") })
            .to_string();
    let url = format!("{}/v1/hosts/register", s.url);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (u, b) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            raw(Method::POST, &u, None, Some(&b)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (st, v) = t.await.unwrap();
        match st {
            200 => {
                ok += 1;
                assert_eq!(v["host_id"], created.host.id.as_str());
                assert!(v["refresh_token"].as_str().unwrap().len() > 20);
            }
            401 => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 1, "exactly one registration wins");
    let h = admin.get_host(&created.host.id).await.unwrap();
    assert_eq!(h.status, "online");
    // A new token is only for pending hosts.
    let e = admin.host_token(&created.host.id).await.unwrap_err();
    assert_eq!(e.status(), Some(409));

    // An expired token is refused: an hour and a bit later, the server's clock says.
    let c2 = admin.create_host(&regular()).await.unwrap();
    s.advance_clock(REGISTRATION_TTL_SECS + 1);
    let body = serde_json::json!({ "token": c2.registration_token, "facts": facts("127.0.0.1:1") })
        .to_string();
    let (st, _) = raw(Method::POST, &url, None, Some(&body)).await;
    assert_eq!(st, 401);
    // ... and a fresh one works, while the old one stays dead.
    let t = admin.host_token(&c2.host.id).await.unwrap();
    let body = serde_json::json!({ "token": t.registration_token, "facts": facts("127.0.0.1:1") })
        .to_string();
    let (st, _) = raw(Method::POST, &url, None, Some(&body)).await;
    assert_eq!(st, 200);
    // Bad facts name their field.
    let c3 = admin.create_host(&regular()).await.unwrap();
    let mut f = serde_json::to_value(facts("127.0.0.1:1")).unwrap();
    f["accel"] = "magic".into();
    let body = serde_json::json!({ "token": c3.registration_token, "facts": f }).to_string();
    let (st, v) = raw(Method::POST, &url, None, Some(&body)).await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("facts.accel"))
    );
}

#[tokio::test]
async fn host_tokens_are_checked() {
    let s = TestServer::start().await;
    let (a, admin) = s.signup("admin@example.com", "Admin").await;
    let created = admin.create_host(&regular()).await.unwrap();
    let body =
        serde_json::json!({ "token": created.registration_token, "facts": facts("127.0.0.1:1") })
            .to_string();
    let (_, reg) = raw(
        Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    let host_token = reg["token"].as_str().unwrap().to_string();
    let hb_url = format!("{}/v1/hosts/{}/heartbeat", s.url, created.host.id);
    let hb = serde_json::json!({ "facts": facts("127.0.0.1:1"), "running_vms": 0, "used_memory_mb": 0, "used_vcpus": 0 }).to_string();

    let (st, v) = raw(Method::POST, &hb_url, Some(&host_token), Some(&hb)).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("online")));
    for bad in ["", "garbage", a.token.as_str()] {
        let (st, v) = raw(Method::POST, &hb_url, Some(bad), Some(&hb)).await;
        assert_eq!((st, code(&v)), (401, "unauthorized"), "token {bad:?}");
    }
    // The host token is not a user token.
    let (st, _) = raw(
        Method::GET,
        &format!("{}/v1/me", s.url),
        Some(&host_token),
        None,
    )
    .await;
    assert_eq!(st, 401);
    // An expired host token (signed with the server's real key) is refused.
    let secret = std::fs::read(s.data_dir().join("jwt.key")).unwrap();
    let now = sandboxctl::server::db::now();
    let claims = sandboxctl::server::auth::HostClaims {
        sub: created.host.id.clone(),
        generation: 0,
        iss: "sandboxctl".into(),
        aud: "sandboxctl-host".into(),
        iat: now - 1000,
        exp: now - 100,
    };
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap();
    let (st, _) = raw(Method::POST, &hb_url, Some(&expired), Some(&hb)).await;
    assert_eq!(st, 401);
    // A host may heartbeat only for itself.
    let other = admin.create_host(&regular()).await.unwrap();
    let (st, _) = raw(
        Method::POST,
        &format!("{}/v1/hosts/{}/heartbeat", s.url, other.host.id),
        Some(&host_token),
        Some(&hb),
    )
    .await;
    assert_eq!(st, 403);
    // Refresh: a bad token is 401 (never 400/500), a good one rotates.
    let rurl = format!("{}/v1/hosts/auth/refresh", s.url);
    let (st, _) = raw(
        Method::POST,
        &rurl,
        None,
        Some(r#"{"refresh_token":"nope"}"#),
    )
    .await;
    assert_eq!(st, 401);
    let rt = reg["refresh_token"].as_str().unwrap();
    let (st, r1) = raw(
        Method::POST,
        &rurl,
        None,
        Some(&serde_json::json!({ "refresh_token": rt }).to_string()),
    )
    .await;
    assert_eq!(st, 200, "{r1}");
    assert_ne!(r1["refresh_token"], rt);
}

async fn refresh(s: &TestServer, token: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "refresh_token": token }).to_string();
    raw(
        Method::POST,
        &format!("{}/v1/hosts/auth/refresh", s.url),
        None,
        Some(&body),
    )
    .await
}

async fn heartbeat(s: &TestServer, host: &str, token: &str) -> u16 {
    let hb = serde_json::json!({ "facts": facts("127.0.0.1:1"), "running_vms": 0, "used_memory_mb": 0, "used_vcpus": 0 }).to_string();
    raw(
        Method::POST,
        &format!("{}/v1/hosts/{host}/heartbeat", s.url),
        Some(token),
        Some(&hb),
    )
    .await
    .0
}

#[tokio::test]
async fn refresh_rotation_survives_a_crash_and_reuse_revokes_the_family() {
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let (host, reg) = register_host(&s, &admin).await;
    let t0 = reg["refresh_token"].as_str().unwrap().to_string();

    // Rotation: t0 -> t1. The agent "crashes" before saving t1 and presents t0 again: still fine
    // (its successor was never used), and the unused t1 is dropped.
    let (st, r1) = refresh(&s, &t0).await;
    assert_eq!(st, 200);
    let t1 = r1["refresh_token"].as_str().unwrap().to_string();
    let (st, r1b) = refresh(&s, &t0).await;
    assert_eq!(
        st, 200,
        "a crash mid-rotation must not lock the host out: {r1b}"
    );
    let t1b = r1b["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        refresh(&s, &t1).await.0,
        401,
        "the dropped successor is dead"
    );
    // Using the successor retires t0 for good; presenting t0 now is reuse.
    let (st, r2) = refresh(&s, &t1b).await;
    assert_eq!(st, 200);
    let t2 = r2["refresh_token"].as_str().unwrap().to_string();
    let jwt = r2["token"].as_str().unwrap().to_string();
    assert_eq!(heartbeat(&s, &host, &jwt).await, 200);
    assert_eq!(refresh(&s, &t0).await.0, 401, "reuse of a retired token");
    // The whole family is revoked, host JWTs issued so far stop working, and it is audited.
    assert_eq!(refresh(&s, &t2).await.0, 401);
    assert_eq!(heartbeat(&s, &host, &jwt).await, 401);
    let n: i64 = s
        .sqlite()
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action = 'host.refresh_reuse' AND target = ?1",
            [&host],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    // The host must register again: a new registration token is allowed now, and works.
    let t = admin.host_token(&host).await.unwrap();
    let body = serde_json::json!({ "token": t.registration_token, "facts": facts("127.0.0.1:1") })
        .to_string();
    let (st, again) = raw(
        Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["host_id"], host.as_str());
    assert_eq!(
        heartbeat(&s, &host, again["token"].as_str().unwrap()).await,
        200
    );
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_leave_one_winner() {
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let (_, reg) = register_host(&s, &admin).await;
    let t0 = reg["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, t) = (s.url.clone(), t0.clone());
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({ "refresh_token": t }).to_string();
            raw(
                Method::POST,
                &format!("{url}/v1/hosts/auth/refresh"),
                None,
                Some(&body),
            )
            .await
        }));
    }
    let mut issued = Vec::new();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert!(st == 200 || st == 401, "{st}: {v}");
        if st == 200 {
            issued.push(v["refresh_token"].as_str().unwrap().to_string());
        }
    }
    assert!(!issued.is_empty());
    // Of all the successors handed out, exactly one still works.
    let mut alive = 0;
    for t in &issued {
        if refresh(&s, t).await.0 == 200 {
            alive += 1;
        }
    }
    assert_eq!(
        alive,
        1,
        "exactly one winner among {} answers",
        issued.len()
    );
}

#[tokio::test]
async fn drain_and_undrain() {
    let s = TestServer::start().await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let (host, _) = register_host(&s, &admin).await;
    let h = admin.drain_host(&host).await.unwrap();
    assert_eq!(h.status, "draining");
    assert_eq!(
        admin.drain_host(&host).await.unwrap_err().code(),
        Some("invalid_transition")
    );
    let h = admin.undrain_host(&host).await.unwrap();
    assert_eq!(h.status, "online");
    assert_eq!(
        admin.undrain_host(&host).await.unwrap_err().code(),
        Some("invalid_transition")
    );
    let actions: i64 = s
        .sqlite()
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action IN ('host.drain', 'host.undrain')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(actions, 2);
}
