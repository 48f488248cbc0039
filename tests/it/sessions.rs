//! Sessions and credentials that can be taken back: logout, the sessions list, password change,
//! API keys that follow their creator's membership and role, one-time download tickets and
//! tokens that never travel in URLs.

use reqwest::Method;
use sandboxctl::cli::client::ApiClient;

use crate::common::{TestServer, add_member, cli, cli_login, code, raw, register_host, step};

const PASSWORD: &str = "correct horse battery";

/// `GET /v1/me` with `token`: the status a client sees.
async fn me_status(s: &TestServer, token: &str) -> u16 {
    raw(Method::GET, &format!("{}/v1/me", s.url), Some(token), None)
        .await
        .0
}

#[tokio::test]
async fn logout_and_password_change_end_sessions() {
    let s = TestServer::start().await;
    let (ann, _) = s.signup("ann@example.com", "Ann").await;
    let (_, bob) = s.signup("bob@example.com", "Bob").await;
    let login = || async { s.anon().login("ann@example.com", PASSWORD).await.unwrap() };
    let laptop = login().await;
    let phone = login().await;

    step(
        "the sessions list shows every sign-in, the caller's marked",
        async {
            let list = s.anon().with_token(&laptop.token).sessions().await.unwrap();
            assert_eq!(list.len(), 3, "{list:?}");
            assert_eq!(list.iter().filter(|x| x.current).count(), 1);
            let methods: Vec<&str> = list.iter().map(|x| x.method.as_str()).collect();
            assert_eq!(
                methods.iter().filter(|m| **m == "password").count(),
                2,
                "{methods:?}"
            );
            assert!(methods.contains(&"signup"), "{methods:?}");
            assert!(
                list.iter().all(|x| x.ip.as_deref() == Some("127.0.0.1")
                    && x.user_agent
                        .as_deref()
                        .is_some_and(|u| u.starts_with("sandboxctl/"))),
                "{list:?}"
            );
        },
    )
    .await;

    step(
        "logout ends the session: its token is refused at once",
        async {
            assert_eq!(me_status(&s, &laptop.token).await, 200);
            s.anon().with_token(&laptop.token).logout().await.unwrap();
            assert_eq!(me_status(&s, &laptop.token).await, 401);
            let e = s
                .anon()
                .with_token(&laptop.token)
                .logout()
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(401));
            // The other sessions live on.
            assert_eq!(me_status(&s, &phone.token).await, 200);
            assert_eq!(me_status(&s, &ann.token).await, 200);
        },
    )
    .await;

    step(
        "a token from switching team belongs to the same session",
        async {
            let t = s.anon().with_token(&phone.token);
            let other = t.create_team("Second").await.unwrap();
            let switched = t.switch_team(&other.id).await.unwrap();
            assert_eq!(me_status(&s, &switched.token).await, 200);
            s.anon().with_token(&switched.token).logout().await.unwrap();
            assert_eq!(me_status(&s, &switched.token).await, 401);
            assert_eq!(
                me_status(&s, &phone.token).await,
                401,
                "the session's first token outlived its logout"
            );
        },
    )
    .await;

    let tablet = login().await;
    let desk = login().await;
    step(
        "one session ends another from the list; nobody else's",
        async {
            let me = s.anon().with_token(&desk.token);
            let list = me.sessions().await.unwrap();
            let tablet_id = s
                .anon()
                .with_token(&tablet.token)
                .sessions()
                .await
                .unwrap()
                .into_iter()
                .find(|x| x.current)
                .unwrap()
                .id;
            assert!(list.iter().any(|x| x.id == tablet_id));
            // Bob cannot see or end Ann's session.
            let e = bob.end_session(&tablet_id).await.unwrap_err();
            assert_eq!(e.status(), Some(404));
            assert!(
                !bob.sessions()
                    .await
                    .unwrap()
                    .iter()
                    .any(|x| x.id == tablet_id)
            );
            for bad in ["not-a-session", "ses_doesnotexist"] {
                assert_eq!(me.end_session(bad).await.unwrap_err().status(), Some(404));
            }
            me.end_session(&tablet_id).await.unwrap();
            assert_eq!(me_status(&s, &tablet.token).await, 401);
            assert_eq!(
                me.end_session(&tablet_id).await.unwrap_err().status(),
                Some(404),
                "ended twice"
            );
        },
    )
    .await;

    let other = login().await;
    step(
        "a password change checks the old one and names bad fields",
        async {
            let me = s.anon().with_token(&desk.token);
            let e = me
                .change_password("not my password", "a brand new password")
                .await
                .unwrap_err();
            assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_field")));
            assert!(e.to_string().contains("current_password"), "{e}");
            let e = me.change_password(PASSWORD, "short").await.unwrap_err();
            assert_eq!(e.status(), Some(400));
            assert!(e.to_string().contains("new_password"), "{e}");
            let (st, v) = raw(
                Method::POST,
                &format!("{}/v1/auth/password", s.url),
                Some(&desk.token),
                Some(r#"{"new_password":"a brand new password"}"#),
            )
            .await;
            assert_eq!(
                (st, v["error"]["field"].as_str()),
                (400, Some("current_password"))
            );
            // Nothing changed: every session still works.
            assert_eq!(me_status(&s, &other.token).await, 200);
        },
    )
    .await;

    step(
        "a password change ends every other session, keeps the caller's",
        async {
            let r = s
                .anon()
                .with_token(&desk.token)
                .change_password(PASSWORD, "a brand new password")
                .await
                .unwrap();
            // The signup session and `other` (laptop, phone and tablet had ended already).
            assert_eq!(r.ended_sessions, 2);
            assert_eq!(me_status(&s, &other.token).await, 401);
            assert_eq!(me_status(&s, &ann.token).await, 401);
            assert_eq!(me_status(&s, &desk.token).await, 200);
            let e = s
                .anon()
                .login("ann@example.com", PASSWORD)
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(401), "the old password still works");
            s.anon()
                .login("ann@example.com", "a brand new password")
                .await
                .unwrap();
            let list = s.anon().with_token(&desk.token).sessions().await.unwrap();
            assert_eq!(list.len(), 2, "{list:?}");
        },
    )
    .await;

    step("sessions expire with their tokens", async {
        s.advance_clock(24 * 3600 + 60);
        assert_eq!(me_status(&s, &desk.token).await, 401);
    })
    .await;

    step(
        "API keys have no session: logout and password are for users",
        async {
            let fresh = s.anon().login("bob@example.com", PASSWORD).await.unwrap();
            let key = s
                .anon()
                .with_token(&fresh.token)
                .create_key("k")
                .await
                .unwrap()
                .key
                .unwrap();
            for path in ["/v1/auth/logout", "/v1/auth/password"] {
                let (st, v) = raw(
                    Method::POST,
                    &format!("{}{path}", s.url),
                    Some(&key),
                    Some("{}"),
                )
                .await;
                assert_eq!((st, code(&v)), (403, "user_token_required"), "{path}");
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_token_that_names_no_session_is_refused() {
    let s = TestServer::start().await;
    let (ann, _) = s.signup("ann@example.com", "Ann").await;
    // Signed with the server's real key, as tokens were before sessions: no `sid`.
    let secret = std::fs::read(s.data_dir().join("jwt.key")).unwrap();
    let now = sandboxctl::server::db::now();
    let mut claims = sandboxctl::server::auth::UserClaims {
        sub: ann.user_id.clone(),
        email: ann.email.clone(),
        name: ann.name.clone(),
        team: ann.team_id.clone(),
        sid: None,
        iss: "sandboxctl".into(),
        aud: "sandboxctl-user".into(),
        iat: now,
        exp: now + 3600,
    };
    let sign = |c: &sandboxctl::server::auth::UserClaims| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            c,
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(me_status(&s, &sign(&claims)).await, 401);
    // Nor one that names a session that does not exist, or another user's.
    claims.sid = Some("ses_madeupmadeupmade".into());
    assert_eq!(me_status(&s, &sign(&claims)).await, 401);
    let (_, bob) = s.signup("bob@example.com", "Bob").await;
    let bobs = bob.sessions().await.unwrap().remove(0).id;
    claims.sid = Some(bobs);
    assert_eq!(me_status(&s, &sign(&claims)).await, 401);
}

/// A team with an owner, an admin and a member (each with a token for the team).
struct Team {
    id: String,
    owner: ApiClient,
    admin: ApiClient,
    member: ApiClient,
    member_id: String,
}

async fn team(s: &TestServer) -> Team {
    let (o, owner) = s.signup("owner@example.com", "Owner").await;
    let (_, admin) = s.signup("admin@example.com", "Admin").await;
    let (m, member) = s.signup("member@example.com", "Member").await;
    let id = o.team_id.unwrap();
    add_member(&owner, &id, &admin, "admin").await;
    add_member(&owner, &id, &member, "member").await;
    let in_team = |email: &'static str| {
        let (s, id) = (s, id.clone());
        async move {
            let t = s.anon().login(email, PASSWORD).await.unwrap().token;
            let t = s
                .anon()
                .with_token(&t)
                .switch_team(&id)
                .await
                .unwrap()
                .token;
            s.anon().with_token(&t)
        }
    };
    Team {
        admin: in_team("admin@example.com").await,
        member: in_team("member@example.com").await,
        id,
        owner,
        member_id: m.user_id,
    }
}

/// `GET /v1/sandboxes` with an API key: the status its holder sees.
async fn key_status(s: &TestServer, key: &str) -> u16 {
    raw(
        Method::GET,
        &format!("{}/v1/sandboxes", s.url),
        Some(key),
        None,
    )
    .await
    .0
}

#[tokio::test]
async fn api_keys_follow_their_creators_role_and_membership() {
    let s = TestServer::start().await;
    let t = team(&s).await;
    let admin_key = t.admin.create_key("admin's").await.unwrap();
    let member_key = t.member.create_key("member's").await.unwrap();

    step(
        "members see their own keys; owners and admins see all",
        async {
            let names = |keys: Vec<sandboxctl::proto::keys::KeyResponse>| {
                let mut n: Vec<String> = keys.into_iter().map(|k| k.name).collect();
                n.sort();
                n
            };
            assert_eq!(names(t.member.list_keys().await.unwrap()), ["member's"]);
            assert_eq!(
                names(t.admin.list_keys().await.unwrap()),
                ["admin's", "member's"]
            );
            assert_eq!(
                names(t.owner.list_keys().await.unwrap()),
                ["admin's", "member's"]
            );
        },
    )
    .await;

    step(
        "a member revoking an admin's key is refused; the key still works",
        async {
            let e = t.member.revoke_key(&admin_key.id).await.unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (Some(403), Some("team_admin_required"))
            );
            assert_eq!(key_status(&s, admin_key.key.as_deref().unwrap()).await, 200);
        },
    )
    .await;

    step(
        "a member revokes their own key; an admin revokes anyone's",
        async {
            let spare = t.member.create_key("spare").await.unwrap();
            t.member.revoke_key(&spare.id).await.unwrap();
            assert_eq!(key_status(&s, spare.key.as_deref().unwrap()).await, 401);
            let another = t.member.create_key("another").await.unwrap();
            t.admin.revoke_key(&another.id).await.unwrap();
            assert_eq!(key_status(&s, another.key.as_deref().unwrap()).await, 401);
        },
    )
    .await;

    step(
        "a removed member's key stops working, and stays stopped",
        async {
            let key = member_key.key.as_deref().unwrap();
            assert_eq!(key_status(&s, key).await, 200);
            t.admin.remove_member(&t.id, &t.member_id).await.unwrap();
            assert_eq!(key_status(&s, key).await, 401);
            // Back in the team, the old key is still dead (it was revoked with the removal).
            add_member(&t.owner, &t.id, &t.member, "member").await;
            assert_eq!(key_status(&s, key).await, 401);
            assert!(
                !t.owner
                    .list_keys()
                    .await
                    .unwrap()
                    .iter()
                    .any(|k| k.id == member_key.id)
            );
        },
    )
    .await;

    step("a member who leaves takes their keys with them", async {
        let key = t.admin.create_key("leaving").await.unwrap();
        assert_eq!(key_status(&s, key.key.as_deref().unwrap()).await, 200);
        t.admin.leave_team(&t.id).await.unwrap();
        assert_eq!(key_status(&s, key.key.as_deref().unwrap()).await, 401);
    })
    .await;
}

/// A WebSocket upgrade request to the exec stream route, with `extra` headers and `query`.
async fn ws_upgrade(s: &TestServer, sandbox: &str, query: &str, extra: &[(&str, String)]) -> u16 {
    let mut req = reqwest::Client::new()
        .get(format!(
            "{}/v1/sandboxes/{sandbox}/exec/stream{query}",
            s.url
        ))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn tokens_in_urls_are_not_read() {
    let s = TestServer::start().await;
    let (ann, c) = s.signup("ann@example.com", "Ann").await;
    // A stopped sandbox of Ann's team: an authenticated upgrade gets as far as "not running".
    let sbx = "sbx_stoppedstopped";
    s.sqlite()
        .execute(
            "INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, timeout_sec, created_at)
             VALUES (?1, ?2, 'minimal', 'stopped', 1, 256, 0, 0)",
            [sbx, ann.team_id.as_deref().unwrap()],
        )
        .unwrap();
    let key = c.create_key("k").await.unwrap().key.unwrap();
    for (who, token) in [
        ("user token", ann.token.as_str()),
        ("API key", key.as_str()),
    ] {
        assert_eq!(
            ws_upgrade(&s, sbx, &format!("?access_token={token}"), &[]).await,
            401,
            "{who} in the URL"
        );
        assert_eq!(
            ws_upgrade(
                &s,
                sbx,
                "",
                &[(
                    "sec-websocket-protocol",
                    format!("sandboxctl.v1, bearer.{token}")
                )]
            )
            .await,
            409,
            "{who} as the subprotocol"
        );
        assert_eq!(
            ws_upgrade(&s, sbx, "", &[("authorization", format!("Bearer {token}"))]).await,
            409,
            "{who} in the header"
        );
    }
    // A plain request never reads the subprotocol.
    let (st, _) = raw(
        Method::GET,
        &format!(
            "{}/v1/sandboxes/{sbx}/exec/stream?access_token={}",
            s.url, ann.token
        ),
        None,
        None,
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn download_tickets_work_once_and_die_with_their_session() {
    let s = TestServer::start().await;
    let (ann, _) = s.signup("ann@example.com", "Ann").await;
    // A running sandbox on a host registered by hand: nothing answers at the host's address, so a
    // redeemed ticket gets as far as the host (502) — the ticket itself was good.
    // (Ann signed up first: she is the platform admin.)
    let (host, _) = register_host(&s, &s.anon().with_token(&ann.token)).await;
    let sbx = "sbx_runningrunning";
    s.sqlite()
        .execute(
            "INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec, created_at)
             VALUES (?1, ?2, ?3, 'minimal', 'running', 1, 256, 0, 0)",
            [sbx, ann.team_id.as_deref().unwrap(), host.as_str()],
        )
        .unwrap();
    let session = s.anon().login("ann@example.com", PASSWORD).await.unwrap();
    let c = s.anon().with_token(&session.token);
    let base = s.url.clone();
    let get = |url: String| {
        let full = format!("{base}{url}");
        async move { reqwest::get(full).await.unwrap().status().as_u16() }
    };

    step("a ticket works once", async {
        let link = c.download_url(sbx, "/etc/hostname").await.unwrap();
        assert!(link.url.contains("ticket=dl_"), "{}", link.url);
        let first = get(link.url.clone()).await;
        assert_ne!(first, 401, "the first use was refused");
        assert_eq!(get(link.url.clone()).await, 401, "the ticket worked twice");
        let stored: i64 = s
            .sqlite()
            .query_row(
                "SELECT count(*) FROM tickets WHERE used_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 1);
    })
    .await;

    step(
        "concurrent uses of one ticket: exactly one gets through",
        async {
            let link = c.download_url(sbx, "/etc/hostname").await.unwrap();
            let tries: Vec<_> = (0..10)
                .map(|_| tokio::spawn(reqwest::get(format!("{}{}", s.url, link.url))))
                .collect();
            let mut through = 0;
            for t in tries {
                if t.await.unwrap().unwrap().status() != 401 {
                    through += 1;
                }
            }
            assert_eq!(through, 1);
        },
    )
    .await;

    step(
        "a ticket for another sandbox, or a forged one, is refused",
        async {
            let link = c.download_url(sbx, "/etc/hostname").await.unwrap();
            assert_eq!(get(link.url.replace(sbx, "sbx_someotherone")).await, 401);
            let forged = format!("/v1/sandboxes/{sbx}/files/download?ticket=dl_forgedforgedforged");
            assert_eq!(get(forged).await, 401);
        },
    )
    .await;

    step("logging out voids the session's unused tickets", async {
        let link = c.download_url(sbx, "/etc/hostname").await.unwrap();
        c.logout().await.unwrap();
        assert_eq!(get(link.url).await, 401);
    })
    .await;
}

#[tokio::test]
async fn cli_logout_ends_the_server_session_and_password_reads_stdin() {
    let s = TestServer::start().await;
    s.signup("ann@example.com", "Ann").await;
    let cfg = cli_login(&s, "ann@example.com");
    let token = || {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        v.get("token").and_then(|t| t.as_str()).map(str::to_string)
    };
    // A second CLI, with its own config file.
    let other = s.dir.path().join("cli-other.toml");
    let (rc, _, err) = cli(
        &other,
        &[
            "login",
            "--server",
            &s.url,
            "--email",
            "ann@example.com",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(rc, 0, "{err}");

    step("sandboxctl password: current then new on stdin", async {
        let (rc, _, err) = cli(
            &cfg,
            &["password"],
            Some("wrong password\nnew password 123\n"),
        );
        assert_eq!(rc, 1);
        assert!(err.contains("current_password"), "{err}");
        let (rc, out, err) = cli(&cfg, &["password"], Some("correct horse battery\n"));
        assert_ne!(rc, 0, "{out}");
        assert!(err.contains("standard input ended"), "{err}");
        let (rc, out, err) = cli(
            &cfg,
            &["password"],
            Some("correct horse battery\nnew password 123\n"),
        );
        assert_eq!(rc, 0, "{err}");
        assert!(out.contains("2 other sessions signed out"), "{out}");
        // The other CLI's session and the signup's ended; this one lives.
        let (rc, _, err) = cli(&other, &["whoami"], None);
        assert_eq!(rc, 1);
        assert!(err.contains("401"), "{err}");
        let (rc, out, _) = cli(&cfg, &["whoami"], None);
        assert_eq!(rc, 0);
        assert!(out.contains("ann@example.com"), "{out}");
    })
    .await;

    step("sandboxctl logout ends the session on the server", async {
        let t = token().expect("a stored token");
        assert_eq!(me_status(&s, &t).await, 200);
        let (rc, out, err) = cli(&cfg, &["logout"], None);
        assert_eq!(rc, 0, "{err}");
        assert!(out.contains("logged out"), "{out}");
        assert_eq!(token(), None);
        assert_eq!(
            me_status(&s, &t).await,
            401,
            "the token outlived the logout"
        );
    })
    .await;
}
