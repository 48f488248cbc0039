//! GitHub login against a local fake of GitHub's endpoints (the only mock in the suite: GitHub's
//! servers cannot be reached from here).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::common::{TestServer, step};

type Users = Arc<HashMap<&'static str, Value>>;

async fn fake_github() -> String {
    let users: Users = Arc::new(HashMap::from([
        (
            "code-octo",
            json!({"id": 101, "login": "octocat", "name": "Octo Cat", "email": null}),
        ),
        (
            "code-dup",
            json!({"id": 202, "login": "copycat", "name": "", "email": "taken@example.com"}),
        ),
    ]));
    async fn token(Form(f): Form<HashMap<String, String>>) -> Json<Value> {
        if f.get("client_secret").map(String::as_str) != Some("shh")
            || f.get("client_id").map(String::as_str) != Some("cid")
        {
            return Json(json!({"error": "incorrect_client_credentials"}));
        }
        match f.get("code").map(String::as_str) {
            Some(c @ ("code-octo" | "code-dup")) => {
                Json(json!({"access_token": format!("gho_{c}"), "token_type": "bearer"}))
            }
            _ => Json(json!({"error": "bad_verification_code"})),
        }
    }
    fn who(users: &Users, h: &HeaderMap) -> Option<Value> {
        let auth = h.get("authorization")?.to_str().ok()?;
        let code = auth.strip_prefix("Bearer gho_")?;
        users.get(code).cloned()
    }
    async fn user(
        State(u): State<Users>,
        h: HeaderMap,
    ) -> Result<Json<Value>, axum::http::StatusCode> {
        who(&u, &h)
            .map(Json)
            .ok_or(axum::http::StatusCode::UNAUTHORIZED)
    }
    async fn emails(
        State(u): State<Users>,
        h: HeaderMap,
    ) -> Result<Json<Value>, axum::http::StatusCode> {
        let u = who(&u, &h).ok_or(axum::http::StatusCode::UNAUTHORIZED)?;
        Ok(Json(match u["login"].as_str() {
            Some("octocat") => json!([
                {"email": "old@example.com", "primary": false, "verified": true},
                {"email": "Octo@Example.com", "primary": true, "verified": true}
            ]),
            _ => json!([]),
        }))
    }
    let app = Router::new()
        .route("/login/oauth/access_token", post(token))
        .route("/user", get(user))
        .route("/user/emails", get(emails))
        .with_state(users);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Flow {
    state: String,
    cookie: String,
}

async fn start(http: &reqwest::Client, s: &TestServer) -> Flow {
    let resp = http
        .get(format!("{}/v1/auth/github/start", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("/login/oauth/authorize?client_id=cid&"),
        "{location}"
    );
    assert!(
        location.contains(&crate::common::urlenc(&format!(
            "{}/v1/auth/github/callback",
            s.url
        ))),
        "{location}"
    );
    let state = location.split("state=").nth(1).unwrap().to_string();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("HttpOnly")
    );
    Flow { state, cookie }
}

async fn callback(
    http: &reqwest::Client,
    s: &TestServer,
    code: &str,
    state: &str,
    cookie: Option<&str>,
    json: bool,
) -> reqwest::Response {
    let mut req = http.get(format!(
        "{}/v1/auth/github/callback?code={code}&state={state}",
        s.url
    ));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if json {
        req = req.header("accept", "application/json");
    }
    req.send().await.unwrap()
}

async fn finish(http: &reqwest::Client, s: &TestServer, cookie: Option<&str>) -> reqwest::Response {
    let mut req = http.post(format!("{}/v1/auth/github/finish", s.url));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn github_login_against_a_fake_github() {
    let fake = fake_github().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("gh-secret");
    std::fs::write(&secret_file, "shh\n").unwrap();
    let s = TestServer::start_with(&[
        "--github-client-id",
        "cid",
        "--github-client-secret-file",
        secret_file.to_str().unwrap(),
        "--github-url",
        &fake,
        "--github-api-url",
        &fake,
    ])
    .await;
    s.signup("taken@example.com", "Has Password").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let p: Value = http
        .get(format!("{}/v1/auth/providers", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["github"], true);

    let first = step("a new identity gets a user and a personal team", async {
        // A new identity: user + personal team, named from GitHub, email from the primary verified
        // one.
        let f = start(&http, &s).await;
        let resp = callback(&http, &s, "code-octo", &f.state, Some(&f.cookie), true).await;
        assert_eq!(resp.status(), 200);
        let first: Value = resp.json().await.unwrap();
        assert_eq!(
            (first["name"].as_str(), first["email"].as_str()),
            (Some("Octo Cat"), Some("octo@example.com"))
        );
        assert!(first["team_id"].is_string());
        let me = s
            .anon()
            .with_token(first["token"].as_str().unwrap())
            .me()
            .await
            .unwrap();
        assert_eq!(me.name, "Octo Cat");
        first
    })
    .await;
    let handoff = step(
        "a browser gets a one-time hand-off in a cookie, never a token in the URL",
        async {
            // The same identity again is the same user; the browser goes back to the app with
            // nothing in the URL that signs anyone in.
            let f = start(&http, &s).await;
            let resp = callback(&http, &s, "code-octo", &f.state, Some(&f.cookie), false).await;
            assert_eq!(resp.status(), 302);
            assert_eq!(resp.headers()["location"], "/#oauth=done");
            let cookies: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            let handoff = cookies
                .iter()
                .find(|c| c.starts_with("sandboxctl_oauth_handoff=oh_"))
                .unwrap_or_else(|| panic!("no hand-off cookie in {cookies:?}"));
            for attr in [
                "HttpOnly",
                "Path=/v1/auth/github",
                "SameSite=Lax",
                "Max-Age=60",
            ] {
                assert!(handoff.contains(attr), "{handoff}");
            }
            let handoff = handoff.split(';').next().unwrap().to_string();
            // Redeemed by the browser that holds the cookie: a session of the same user.
            let resp = finish(&http, &s, Some(&handoff)).await;
            assert_eq!(resp.status(), 200);
            assert!(
                resp.headers()["set-cookie"]
                    .to_str()
                    .unwrap()
                    .starts_with("sandboxctl_oauth_handoff=;"),
                "the cookie is not cleared"
            );
            let auth: Value = resp.json().await.unwrap();
            let token = auth["token"].as_str().unwrap();
            assert_eq!(
                s.anon().with_token(token).me().await.unwrap().user_id,
                first["user_id"].as_str().unwrap()
            );
            let sessions = s.anon().with_token(token).sessions().await.unwrap();
            assert!(
                sessions.iter().any(|x| x.current && x.method == "github"),
                "{sessions:?}"
            );
            // No password login for an OAuth-only user.
            assert_eq!(
                s.anon()
                    .login("octo@example.com", "anything at all")
                    .await
                    .unwrap_err()
                    .status(),
                Some(401)
            );
            handoff
        },
    )
    .await;
    step("a replayed, forged or missing hand-off is refused", async {
        for (cookie, why) in [
            (Some(handoff.as_str()), "replayed"),
            (
                Some("sandboxctl_oauth_handoff=oh_forgedforgedforgedforgedforged"),
                "forged",
            ),
            (None, "missing"),
        ] {
            let resp = finish(&http, &s, cookie).await;
            assert_eq!(resp.status(), 401, "{why}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{why}");
        }
        // A hand-off left unredeemed goes stale within a minute.
        let f = start(&http, &s).await;
        let resp = callback(&http, &s, "code-octo", &f.state, Some(&f.cookie), false).await;
        let stale = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .find(|c| c.starts_with("sandboxctl_oauth_handoff=oh_"))
            .unwrap();
        s.advance_clock(61);
        assert_eq!(finish(&http, &s, Some(&stale)).await.status(), 401, "stale");
    })
    .await;
    step("an email that already has an account is refused", async {
        // An email that already has an account.
        let f = start(&http, &s).await;
        let resp = callback(&http, &s, "code-dup", &f.state, Some(&f.cookie), true).await;
        assert_eq!(resp.status(), 409);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "email_taken");
    })
    .await;
    step("state checks refuse and create nobody", async {
        // State checks: wrong state, no cookie, forged cookie, a code GitHub refuses.
        let f = start(&http, &s).await;
        for (state, cookie) in [
            ("not-the-state", Some(f.cookie.as_str())),
            (f.state.as_str(), None),
            (
                f.state.as_str(),
                Some("sandboxctl_oauth_state=forged.value"),
            ),
        ] {
            let resp = callback(&http, &s, "code-octo", state, cookie, true).await;
            assert_eq!(resp.status(), 403);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "oauth_state_mismatch");
        }
        let resp = callback(&http, &s, "bad-code", &f.state, Some(&f.cookie), true).await;
        assert_eq!(resp.status(), 403);
        let n: i64 = s
            .sqlite()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "failed sign-ins created nobody");
    })
    .await;
}

#[tokio::test]
async fn no_github_login_without_configuration() {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let plain = TestServer::start().await;
    let p: Value = http
        .get(format!("{}/v1/auth/providers", plain.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["github"], false);
    assert_eq!(
        http.get(format!("{}/v1/auth/github/start", plain.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn github_creates_no_account_where_signup_needs_an_invite() {
    let fake = fake_github().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("gh-secret");
    std::fs::write(&secret_file, "shh\n").unwrap();
    let s = TestServer::start_signup(
        None,
        &[
            "--github-client-id",
            "cid",
            "--github-client-secret-file",
            secret_file.to_str().unwrap(),
            "--github-url",
            &fake,
            "--github-api-url",
            &fake,
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    step(
        "not the first account of a fresh server (no admin from GitHub)",
        async {
            let f = start(&http, &s).await;
            let resp = callback(&http, &s, "code-octo", &f.state, Some(&f.cookie), true).await;
            assert_eq!(resp.status(), 403);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "signup_closed");
        },
    )
    .await;
    s.signup("admin@example.com", "Admin").await;
    step(
        "nor any account on an invite server; the browser is told why",
        async {
            let f = start(&http, &s).await;
            let resp = callback(&http, &s, "code-octo", &f.state, Some(&f.cookie), false).await;
            assert_eq!(resp.status(), 302);
            assert_eq!(
                resp.headers()["location"].to_str().unwrap(),
                "/#oauth_error=signup_closed"
            );
            let n: i64 = s
                .sqlite()
                .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1, "only the admin");
        },
    )
    .await;
}
