//! Who may sign up (SPEC §15): the first account of a fresh server and nobody racing for it,
//! `--signup invite|open|closed`, and team invites, the only way into a team.

use reqwest::Method;
use sandboxctl::cli::client::ClientError;
use sandboxctl::proto::api::{AuthResponse, SignupRequest};

use crate::common::{TestServer, code, raw, step};

const PASSWORD: &str = "correct horse battery";

fn request(email: &str, invite: Option<&str>, bootstrap: Option<&str>) -> SignupRequest {
    SignupRequest {
        email: email.into(),
        password: PASSWORD.into(),
        name: "Someone".into(),
        invite: invite.map(str::to_string),
        bootstrap_token: bootstrap.map(str::to_string),
    }
}

async fn signup(
    s: &TestServer,
    email: &str,
    invite: Option<&str>,
) -> Result<AuthResponse, ClientError> {
    s.anon().signup_with(&request(email, invite, None)).await
}

/// The refusal's (status, code).
fn refusal<T>(r: Result<T, ClientError>) -> (Option<u16>, String) {
    match r {
        Ok(_) => panic!("expected a refusal, got success"),
        Err(e) => (e.status(), e.code().unwrap_or("").to_string()),
    }
}

fn forbidden(code: &str) -> (Option<u16>, String) {
    (Some(403), code.to_string())
}

async fn providers(s: &TestServer) -> serde_json::Value {
    let (st, v) = raw(
        Method::GET,
        &format!("{}/v1/auth/providers", s.url),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test]
async fn a_default_server_takes_its_admin_then_only_people_with_an_invite() {
    let s = TestServer::start_signup(None, &[]).await;
    let (admin, admin_c) = step("the first signup (from loopback) is the admin", async {
        let p = providers(&s).await;
        assert_eq!(
            (p["signup"].as_str(), p["bootstrap"].as_bool()),
            (Some("invite"), Some(true))
        );
        let a = signup(&s, "admin@example.com", None).await.unwrap();
        assert!(a.is_admin);
        let p = providers(&s).await;
        assert_eq!(p["bootstrap"].as_bool(), Some(false));
        let c = s.anon().with_token(&a.token);
        (a, c)
    })
    .await;
    let team = admin.team_id.clone().unwrap();

    step("a second signup without an invite is refused", async {
        let (st, v) = raw(
            Method::POST,
            &format!("{}/v1/auth/signup", s.url),
            None,
            Some(
                r#"{"email":"walk-in@example.com","password":"correct horse battery","name":"W"}"#,
            ),
        )
        .await;
        assert_eq!((st, code(&v)), (403, "signup_closed"), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("invite"),
            "{v}"
        );
        let n: i64 = s
            .sqlite()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "nothing was written");
    })
    .await;

    let invite = step("a signup with a valid invite joins that team", async {
        let inv = admin_c.create_invite(&team, "admin").await.unwrap();
        assert!(
            inv.url.ends_with(&format!("/#invite={}", inv.token)),
            "{}",
            inv.url
        );
        assert_eq!(inv.invite.expires_at - inv.invite.created_at, 7 * 24 * 3600);
        let pending = admin_c.list_invites(&team).await.unwrap();
        assert_eq!(
            pending.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            [inv.invite.id.as_str()]
        );
        let u = signup(&s, "bea@example.com", Some(&inv.token))
            .await
            .unwrap();
        assert!(!u.is_admin);
        assert_eq!(
            u.team_id.as_deref(),
            Some(team.as_str()),
            "lands in the team"
        );
        let bea = s.anon().with_token(&u.token);
        let teams = bea.list_teams().await.unwrap();
        assert_eq!(
            teams
                .iter()
                .map(|t| (t.id.as_str(), t.role.as_str(), t.is_default))
                .collect::<Vec<_>>(),
            [(team.as_str(), "admin", true)],
            "the invite's team with its role is their only team"
        );
        let members = admin_c.get_team(&team).await.unwrap().members;
        assert!(
            members
                .iter()
                .any(|m| m.email == "bea@example.com" && m.role == "admin")
        );
        assert!(
            admin_c.list_invites(&team).await.unwrap().is_empty(),
            "used invites are not pending"
        );
        inv
    })
    .await;

    step(
        "a used, revoked or unknown invite is refused with its reason",
        async {
            let r = signup(&s, "cy@example.com", Some(&invite.token)).await;
            assert_eq!(refusal(r), forbidden("invite_used"));
            let inv = admin_c.create_invite(&team, "member").await.unwrap();
            admin_c.revoke_invite(&team, &inv.invite.id).await.unwrap();
            let r = signup(&s, "cy@example.com", Some(&inv.token)).await;
            assert_eq!(refusal(r), forbidden("invite_revoked"));
            let r = signup(&s, "cy@example.com", Some("sbi_made-up")).await;
            assert_eq!(refusal(r), forbidden("invite_invalid"));
            let r = signup(&s, "cy@example.com", Some("")).await;
            let e = r.unwrap_err();
            assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_field")));
            assert!(e.to_string().contains("invite"), "{e}");
            let n: i64 = s
                .sqlite()
                .query_row(
                    "SELECT count(*) FROM users WHERE email = 'cy@example.com'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0);
        },
    )
    .await;

    step(
        "an existing user accepts an invite to another team",
        async {
            let bea = s.anon().with_token(
                &s.anon()
                    .login("bea@example.com", PASSWORD)
                    .await
                    .unwrap()
                    .token,
            );
            let other = admin_c.create_team("Research").await.unwrap();
            let inv = admin_c.create_invite(&other.id, "member").await.unwrap();
            // The link works as well as the bare token.
            let joined = bea.accept_invite(&inv.url).await.unwrap();
            assert_eq!(
                (joined.id.as_str(), joined.role.as_str()),
                (other.id.as_str(), "member")
            );
            let mine = bea.list_teams().await.unwrap();
            assert_eq!(mine.len(), 2);
            bea.switch_team(&other.id).await.unwrap();
            let again = bea.accept_invite(&inv.token).await;
            assert_eq!(refusal(again), forbidden("invite_used"));
            // Already a member: refused, and the invite stays usable.
            let inv2 = admin_c.create_invite(&other.id, "member").await.unwrap();
            let dup = bea.accept_invite(&inv2.token).await.unwrap_err();
            assert_eq!(
                (dup.status(), dup.code()),
                (Some(409), Some("already_member"))
            );
            assert_eq!(admin_c.list_invites(&other.id).await.unwrap().len(), 1);
        },
    )
    .await;

    step("an expired invite is refused", async {
        let inv = admin_c.create_invite(&team, "member").await.unwrap();
        s.advance_clock(7 * 24 * 3600 + 60);
        let r = signup(&s, "late@example.com", Some(&inv.token)).await;
        assert_eq!(refusal(r), forbidden("invite_expired"));
        let n: i64 = s
            .sqlite()
            .query_row(
                "SELECT count(*) FROM users WHERE email = 'late@example.com'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    })
    .await;
}

#[tokio::test]
async fn a_closed_server_takes_its_admin_and_nobody_else() {
    let s = TestServer::start_signup(Some("closed"), &[]).await;
    let admin = signup(&s, "admin@example.com", None).await.unwrap();
    assert!(admin.is_admin, "the bootstrap works in every mode");
    let admin_c = s.anon().with_token(&admin.token);
    let team = admin.team_id.unwrap();
    let inv = admin_c.create_invite(&team, "member").await.unwrap();
    let r = signup(&s, "bea@example.com", Some(&inv.token)).await;
    assert_eq!(refusal(r), forbidden("signup_closed"));
    let r = signup(&s, "bea@example.com", None).await;
    assert_eq!(refusal(r), forbidden("signup_closed"));
    assert_eq!(providers(&s).await["signup"].as_str(), Some("closed"));
}

#[tokio::test]
async fn an_open_server_takes_anyone_with_a_team_of_their_own() {
    let s = TestServer::start_signup(Some("open"), &[]).await;
    let admin = signup(&s, "admin@example.com", None).await.unwrap();
    let walk_in = signup(&s, "walk-in@example.com", None).await.unwrap();
    assert!(!walk_in.is_admin);
    assert_ne!(
        walk_in.team_id, admin.team_id,
        "a personal team, not the admin's"
    );
    // An invite still joins its team there.
    let admin_c = s.anon().with_token(&admin.token);
    let team = admin.team_id.unwrap();
    let inv = admin_c.create_invite(&team, "member").await.unwrap();
    let invited = signup(&s, "bea@example.com", Some(&inv.token))
        .await
        .unwrap();
    assert_eq!(invited.team_id.as_deref(), Some(team.as_str()));
}

/// 20 signups at once, each with its own email.
async fn race(s: &TestServer, bootstrap: Option<&str>) -> Vec<Result<AuthResponse, ClientError>> {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, req) = (
            s.anon(),
            request(&format!("racer{i}@example.com"), None, bootstrap),
        );
        // A client that is told the server is busy hashing (503 `busy`) comes back, as a real one
        // would: the race is about who becomes admin, not about the hashing pool's size.
        tasks.push(tokio::spawn(async move {
            loop {
                match c.signup_with(&req).await {
                    Err(e) if e.code() == Some("busy") => {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await
                    }
                    other => break other,
                }
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn admins(s: &TestServer) -> (i64, i64) {
    s.sqlite()
        .query_row(
            "SELECT count(*), coalesce(sum(is_admin), 0) FROM users",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[tokio::test]
async fn twenty_concurrent_first_signups_make_exactly_one_admin() {
    step("default server: one admin, the others refused", async {
        let s = TestServer::start_signup(None, &[]).await;
        let results = race(&s, None).await;
        let winners: Vec<&AuthResponse> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1);
        assert!(winners[0].is_admin);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                (r.status(), r.code()),
                (Some(403), Some("signup_closed")),
                "{r}"
            );
        }
        assert_eq!(admins(&s), (1, 1));
    })
    .await;
    step("open server: everyone gets in, one of them admin", async {
        let s = TestServer::start_signup(Some("open"), &[]).await;
        let results = race(&s, None).await;
        let winners: Vec<&AuthResponse> = results.iter().map(|r| r.as_ref().unwrap()).collect();
        assert_eq!(winners.iter().filter(|w| w.is_admin).count(), 1);
        assert_eq!(admins(&s), (20, 1));
    })
    .await;
}

#[tokio::test]
async fn the_bootstrap_token_is_needed_where_loopback_is_not_trusted_and_works_once() {
    let s = TestServer::start_signup(None, &["--bootstrap-requires-token"]).await;
    let file = s.data_dir().join("bootstrap-token");
    let token = std::fs::read_to_string(&file).expect("the server wrote its bootstrap token");
    assert!(token.starts_with("sbb_"), "{token}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "only the server's user reads it");

    step(
        "without the token, or with a wrong one, nobody gets in",
        async {
            let results = race(&s, None).await;
            assert!(
                results
                    .iter()
                    .all(|r| r.as_ref().err().and_then(ClientError::code) == Some("signup_closed"))
            );
            let e = s
                .anon()
                .signup_with(&request("guess@example.com", None, Some("sbb_guess")))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Some("signup_closed"));
            assert!(
                e.to_string().contains("bootstrap token"),
                "the refusal says how: {e}"
            );
            assert_eq!(admins(&s), (0, 0));
        },
    )
    .await;
    step("twenty at once with the token: exactly one admin", async {
        let results = race(&s, Some(&token)).await;
        let winners: Vec<&AuthResponse> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1);
        assert!(winners[0].is_admin);
        assert_eq!(admins(&s), (1, 1));
    })
    .await;
    step("the token is spent", async {
        assert!(!file.exists(), "the token file is removed");
        let r = s
            .anon()
            .signup_with(&request("late@example.com", None, Some(&token)))
            .await;
        assert_eq!(refusal(r), forbidden("signup_closed"));
    })
    .await;
}

#[tokio::test]
async fn with_a_local_agent_the_admin_exists_before_anyone_can_sign_up() {
    // The local agent itself is not under test: it gets no kernel and stops, the server serves on.
    let kernel = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", crate::common::free_port());
    let kernel_dir = kernel.path().to_str().unwrap();
    let s = TestServer::start_signup(
        None,
        &[
            "--local-agent",
            "--local-agent-listen",
            &listen,
            "--kernel-dir",
            kernel_dir,
        ],
    )
    .await;
    // The very first request the server answers already finds the admin there.
    let r = signup(&s, "early@example.com", None).await;
    assert_eq!(refusal(r), forbidden("signup_closed"));
    let email: String = s
        .sqlite()
        .query_row("SELECT email FROM users WHERE is_admin = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(email, "admin@sandboxctl.local");
    assert_eq!(admins(&s), (1, 1));
    let password = std::fs::read_to_string(s.data_dir().join("admin-password")).unwrap();
    let admin = s
        .anon()
        .login("admin@sandboxctl.local", password.trim())
        .await
        .unwrap();
    assert!(admin.is_admin);
    assert!(
        !s.data_dir().join("bootstrap-token").exists(),
        "no bootstrap token is needed"
    );
}

#[tokio::test]
async fn the_cli_bootstraps_the_admin_and_invites_people() {
    use crate::common::cli;
    let s = TestServer::start_signup(None, &["--bootstrap-requires-token"]).await;
    let token_file = s.data_dir().join("bootstrap-token");
    let cfg = |who: &str| s.dir.path().join(format!("cli-{who}.toml"));
    let pw = Some("correct horse battery\n");
    let signup_args = |email: &'static str| {
        vec![
            "signup",
            "--server",
            &s.url,
            "--email",
            email,
            "--name",
            "Someone",
            "--password-stdin",
        ]
    };

    step("the admin signs up with the bootstrap token file", async {
        let (rc, _, err) = cli(&cfg("admin"), &signup_args("admin@example.com"), pw);
        assert_ne!(rc, 0);
        assert!(err.contains("bootstrap token"), "{err}");
        let mut args = signup_args("admin@example.com");
        args.extend(["--bootstrap-token-file", token_file.to_str().unwrap()]);
        let (rc, out, err) = cli(&cfg("admin"), &args, pw);
        assert_eq!(rc, 0, "{err}");
        assert!(out.contains("(platform admin)"), "{out}");
    })
    .await;

    let link = step(
        "the admin makes an invite link; a new user signs up with it",
        async {
            let (rc, out, err) = cli(&cfg("admin"), &["team", "invite", "--role", "admin"], None);
            assert_eq!(rc, 0, "{err}");
            let link = out.trim().to_string();
            assert!(
                link.starts_with(&format!("{}/#invite=sbi_", s.url)),
                "{link}"
            );
            let (rc, _, err) = cli(&cfg("bea"), &signup_args("bea@example.com"), pw);
            assert_ne!(rc, 0);
            assert!(err.contains("invite"), "{err}");
            let mut args = signup_args("bea@example.com");
            args.extend(["--invite", &link]);
            let (rc, _, err) = cli(&cfg("bea"), &args, pw);
            assert_eq!(rc, 0, "{err}");
            let (rc, out, _) = cli(&cfg("bea"), &["whoami"], None);
            assert_eq!(rc, 0);
            assert!(out.contains("(admin)"), "joined as admin: {out}");
            link
        },
    )
    .await;

    step(
        "invites are listed and revoked; an existing user joins with a link",
        async {
            let (rc, out, err) = cli(&cfg("bea"), &["team", "invite", "--json"], None);
            assert_eq!(rc, 0, "{err}");
            let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
            let id = inv["id"].as_str().unwrap();
            let (rc, out, _) = cli(&cfg("admin"), &["team", "invites"], None);
            assert_eq!(rc, 0);
            assert!(out.contains(id) && out.contains("member"), "{out}");
            let (rc, _, err) = cli(&cfg("admin"), &["team", "revoke-invite", id], None);
            assert_eq!(rc, 0, "{err}");
            let (rc, out, _) = cli(&cfg("admin"), &["team", "invites"], None);
            assert_eq!(rc, 0);
            assert!(!out.contains(id), "{out}");
            // Bea makes her own team and invites the admin, who joins with the link.
            let (rc, team, err) = cli(&cfg("bea"), &["team", "create", "Bea's lab"], None);
            assert_eq!(rc, 0, "{err}");
            let team = team.trim();
            let (rc, out, err) = cli(&cfg("bea"), &["team", "invite", "--team", team], None);
            assert_eq!(rc, 0, "{err}");
            let (rc, out, err) = cli(&cfg("admin"), &["team", "join", out.trim()], None);
            assert_eq!(rc, 0, "{err}");
            assert!(out.contains(team), "{out}");
            // A used link says why it no longer works.
            let (rc, _, err) = cli(&cfg("admin"), &["team", "join", &link], None);
            assert_ne!(rc, 0);
            assert!(err.contains("already used"), "{err}");
        },
    )
    .await;
}
