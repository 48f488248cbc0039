//! The authorization matrix: every route × every kind of caller → the exact status. A route added
//! to the router without a row here fails `every_route_is_in_the_matrix`.

use std::collections::BTreeSet;

use reqwest::Method;
use sandboxctl::cli::client::ApiClient;
use sandboxctl::proto::api::CreateHostRequest;

use crate::common::{TestServer, add_member, raw};

/// Callers, in the order each row lists its statuses.
const ROLES: [&str; 9] = [
    "none",
    "expired",
    "host",
    "apikey",
    "other_team",
    "platform_admin",
    "member",
    "admin",
    "owner",
];

struct Row {
    method: Method,
    /// The route as the router spells it.
    route: &'static str,
    /// The concrete path, with placeholders: {T}, {fresh_team}, {fresh_byoc}, {fresh_key},
    /// {fresh_member}, {fresh_invite} (an invite to {T}), {fresh_team_invite} (an invite's token
    /// to a fresh team), {sbx}, {H}.
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 9],
    /// The call ends the caller's session: each user calls it with a token of a fresh login.
    fresh_login: bool,
}

fn r(
    method: Method,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 9],
) -> Row {
    Row {
        method,
        route,
        path,
        body,
        expect,
        fresh_login: false,
    }
}

/// A row whose call ends the caller's session (see [`Row::fresh_login`]).
fn r_fresh(
    method: Method,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 9],
) -> Row {
    Row {
        fresh_login: true,
        ..r(method, route, path, body, expect)
    }
}

fn rows() -> Vec<Row> {
    use Method as M;
    //            none exp  host key  other padm memb admn ownr
    vec![
        r(
            M::GET,
            "/healthz",
            "/healthz",
            None,
            [200, 200, 200, 200, 200, 200, 200, 200, 200],
        ),
        // Platform admins only (and a scrapers' token, in tests/it/prometheus.rs).
        r(
            M::GET,
            "/metrics",
            "/metrics",
            None,
            [401, 401, 401, 403, 403, 200, 403, 403, 403],
        ),
        r(
            M::POST,
            "/v1/auth/signup",
            "/v1/auth/signup",
            Some("{}"),
            [400; 9],
        ),
        r(
            M::POST,
            "/v1/auth/login",
            "/v1/auth/login",
            Some("{}"),
            [400; 9],
        ),
        r(
            M::GET,
            "/v1/auth/providers",
            "/v1/auth/providers",
            None,
            [200; 9],
        ),
        r(
            M::GET,
            "/v1/auth/github/start",
            "/v1/auth/github/start",
            None,
            [404; 9],
        ),
        r(
            M::GET,
            "/v1/auth/github/callback",
            "/v1/auth/github/callback?code=x&state=y",
            None,
            [404; 9],
        ),
        r(
            M::POST,
            "/v1/auth/switch-team",
            "/v1/auth/switch-team",
            Some(r#"{"team_id":"{T}"}"#),
            [401, 401, 401, 403, 404, 404, 200, 200, 200],
        ),
        r_fresh(
            M::POST,
            "/v1/auth/logout",
            "/v1/auth/logout",
            None,
            [401, 401, 401, 403, 204, 204, 204, 204, 204],
        ),
        r(
            M::GET,
            "/v1/auth/sessions",
            "/v1/auth/sessions",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        // Another login of the owner: only the owner can end it; to others it does not exist.
        r(
            M::DELETE,
            "/v1/auth/sessions/{id}",
            "/v1/auth/sessions/{fresh_owner_session}",
            None,
            [401, 401, 401, 403, 404, 404, 404, 404, 204],
        ),
        // A wrong current password: every user gets as far as the check.
        r(
            M::POST,
            "/v1/auth/password",
            "/v1/auth/password",
            Some(r#"{"current_password":"not the password","new_password":"a new long password"}"#),
            [401, 401, 401, 403, 400, 400, 400, 400, 400],
        ),
        r(
            M::POST,
            "/v1/auth/github/finish",
            "/v1/auth/github/finish",
            None,
            [404; 9],
        ),
        r(
            M::GET,
            "/v1/me",
            "/v1/me",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        r(
            M::GET,
            "/v1/users/search",
            "/v1/users/search?q=example",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        r(
            M::GET,
            "/v1/teams",
            "/v1/teams",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        r(
            M::POST,
            "/v1/teams",
            "/v1/teams",
            Some(r#"{"name":"new team"}"#),
            [401, 401, 401, 403, 201, 201, 201, 201, 201],
        ),
        r(
            M::GET,
            "/v1/teams/{id}",
            "/v1/teams/{T}",
            None,
            [401, 401, 401, 403, 404, 404, 200, 200, 200],
        ),
        r(
            M::PATCH,
            "/v1/teams/{id}",
            "/v1/teams/{T}",
            Some(r#"{"name":"renamed"}"#),
            [401, 401, 401, 403, 404, 404, 403, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/teams/{id}",
            "/v1/teams/{fresh_team}",
            None,
            [401, 401, 401, 403, 404, 404, 403, 403, 204],
        ),
        r(
            M::POST,
            "/v1/teams/{id}/invites",
            "/v1/teams/{T}/invites",
            Some(r#"{"role":"member"}"#),
            [401, 401, 401, 403, 404, 201, 403, 201, 201],
        ),
        r(
            M::GET,
            "/v1/teams/{id}/invites",
            "/v1/teams/{T}/invites",
            None,
            [401, 401, 401, 403, 404, 200, 403, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/teams/{id}/invites/{invite_id}",
            "/v1/teams/{T}/invites/{fresh_invite}",
            None,
            [401, 401, 401, 403, 404, 204, 403, 204, 204],
        ),
        // An invite to a fresh team of the owner's (with the admin and the member in it): anyone
        // signed in who is not in the team yet joins.
        r(
            M::POST,
            "/v1/invites/accept",
            "/v1/invites/accept",
            Some(r#"{"token":"{fresh_team_invite}"}"#),
            [401, 401, 401, 403, 200, 200, 409, 409, 409],
        ),
        r(
            M::PATCH,
            "/v1/teams/{id}/members/{user_id}",
            "/v1/teams/{T}/members/{fresh_member}",
            Some(r#"{"role":"admin"}"#),
            [401, 401, 401, 403, 404, 404, 403, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/teams/{id}/members/{user_id}",
            "/v1/teams/{T}/members/{fresh_member}",
            None,
            [401, 401, 401, 403, 404, 404, 403, 204, 204],
        ),
        r(
            M::POST,
            "/v1/teams/{id}/leave",
            "/v1/teams/{fresh_team}/leave",
            None,
            [401, 401, 401, 403, 404, 404, 204, 204, 409],
        ),
        // Quotas: the team's members see theirs, a platform admin sees and sets any team's.
        r(
            M::GET,
            "/v1/teams/{id}/quota",
            "/v1/teams/{T}/quota",
            None,
            [401, 401, 401, 403, 404, 200, 200, 200, 200],
        ),
        r(
            M::PUT,
            "/v1/teams/{id}/quota",
            "/v1/teams/{T}/quota",
            Some(r#"{"sandboxes":1000}"#),
            [401, 401, 401, 403, 404, 200, 403, 403, 403],
        ),
        r(
            M::POST,
            "/v1/api-keys",
            "/v1/api-keys",
            Some(r#"{"name":"k"}"#),
            [401, 401, 401, 403, 201, 201, 201, 201, 201],
        ),
        r(
            M::GET,
            "/v1/api-keys",
            "/v1/api-keys",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/api-keys/{id}",
            "/v1/api-keys/{fresh_key}",
            None,
            [401, 401, 401, 403, 404, 404, 403, 204, 204],
        ),
        r(
            M::POST,
            "/v1/hosts",
            "/v1/hosts",
            Some(r#"{"type":"regular"}"#),
            [401, 401, 401, 403, 403, 201, 403, 403, 403],
        ),
        r(
            M::GET,
            "/v1/hosts",
            "/v1/hosts",
            None,
            [401, 401, 401, 403, 200, 200, 200, 200, 200],
        ),
        r(
            M::GET,
            "/v1/hosts/{id}",
            "/v1/hosts/{fresh_byoc}",
            None,
            [401, 401, 401, 403, 404, 200, 404, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/hosts/{id}",
            "/v1/hosts/{fresh_byoc}",
            None,
            [401, 401, 401, 403, 404, 204, 404, 204, 204],
        ),
        r(
            M::GET,
            "/v1/hosts/{id}/delete-preview",
            "/v1/hosts/{fresh_byoc}/delete-preview",
            None,
            [401, 401, 401, 403, 404, 200, 404, 200, 200],
        ),
        r(
            M::POST,
            "/v1/hosts/{id}/token",
            "/v1/hosts/{fresh_byoc}/token",
            None,
            [401, 401, 401, 403, 404, 200, 404, 200, 200],
        ),
        r(
            M::PUT,
            "/v1/hosts/{id}/tags",
            "/v1/hosts/{fresh_byoc}/tags",
            Some(r#"{"tags":["gpu"]}"#),
            [401, 401, 401, 403, 404, 200, 404, 200, 200],
        ),
        r(
            M::POST,
            "/v1/hosts/{id}/drain",
            "/v1/hosts/{fresh_byoc}/drain",
            None,
            [401, 401, 401, 403, 404, 409, 404, 409, 409],
        ),
        r(
            M::DELETE,
            "/v1/hosts/{id}/drain",
            "/v1/hosts/{fresh_byoc}/drain",
            None,
            [401, 401, 401, 403, 404, 409, 404, 409, 409],
        ),
        r(
            M::POST,
            "/v1/hosts/register",
            "/v1/hosts/register",
            Some("{}"),
            [400; 9],
        ),
        r(
            M::POST,
            "/v1/hosts/auth/refresh",
            "/v1/hosts/auth/refresh",
            Some(r#"{"refresh_token":"hrf_nope"}"#),
            [401; 9],
        ),
        r(
            M::POST,
            "/v1/hosts/{id}/heartbeat",
            "/v1/hosts/{H}/heartbeat",
            Some(HEARTBEAT),
            [401, 401, 200, 401, 401, 401, 401, 401, 401],
        ),
        r(
            M::POST,
            "/v1/sandboxes",
            "/v1/sandboxes",
            Some("{}"),
            [401, 401, 401, 503, 503, 503, 503, 503, 503],
        ),
        r(
            M::GET,
            "/v1/sandboxes",
            "/v1/sandboxes",
            None,
            [401, 401, 401, 200, 200, 200, 200, 200, 200],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}",
            "/v1/sandboxes/{sbx}",
            None,
            [401, 401, 401, 200, 404, 404, 200, 200, 200],
        ),
        r(
            M::DELETE,
            "/v1/sandboxes/{id}",
            "/v1/sandboxes/{sbx}",
            None,
            [401, 401, 401, 204, 404, 404, 204, 204, 204],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/exec",
            "/v1/sandboxes/{sbx}/exec",
            Some(r#"{"cmd":"true"}"#),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/exec/stream",
            "/v1/sandboxes/{sbx}/exec/stream",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/ports/{port}",
            "/v1/sandboxes/{sbx}/ports/8000",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/pause",
            "/v1/sandboxes/{sbx}/pause",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/resume",
            "/v1/sandboxes/{sbx}/resume",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/timeout",
            "/v1/sandboxes/{sbx}/timeout",
            Some(r#"{"timeout_sec":60}"#),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/deadline",
            "/v1/sandboxes/{sbx}/deadline",
            Some(r#"{"end_in_sec":60}"#),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::PUT,
            "/v1/sandboxes/{id}/network",
            "/v1/sandboxes/{sbx}/network",
            Some(r#"{"internet":true}"#),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/logs",
            "/v1/sandboxes/{sbx}/logs",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/metrics",
            "/v1/sandboxes/{sbx}/metrics?start=0",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/files",
            "/v1/sandboxes/{sbx}/files?path=/etc/hostname",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::PUT,
            "/v1/sandboxes/{id}/files",
            "/v1/sandboxes/{sbx}/files?path=/tmp/x",
            Some("{}"),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::DELETE,
            "/v1/sandboxes/{id}/files",
            "/v1/sandboxes/{sbx}/files?path=/tmp/x",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/files/list",
            "/v1/sandboxes/{sbx}/files/list?path=/",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/sandboxes/{id}/files/stat",
            "/v1/sandboxes/{sbx}/files/stat?path=/",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/files/mkdir",
            "/v1/sandboxes/{sbx}/files/mkdir?path=/tmp/d",
            None,
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::POST,
            "/v1/sandboxes/{id}/files/download-url",
            "/v1/sandboxes/{sbx}/files/download-url?path=/etc/hostname",
            None,
            [401, 401, 401, 403, 404, 404, 409, 409, 409],
        ),
        // The link's ticket is the credential; headers do not matter.
        r(
            M::GET,
            "/v1/sandboxes/{id}/files/download",
            "/v1/sandboxes/{sbx}/files/download?ticket=forged.abc",
            None,
            [401; 9],
        ),
        r(
            M::POST,
            "/v1/templates/import",
            "/v1/templates/import?name=mine",
            Some("not a tar archive"),
            [401, 401, 401, 503, 503, 503, 503, 503, 503],
        ),
        r(
            M::POST,
            "/v1/snapshots",
            "/v1/snapshots",
            Some(r#"{"sandbox_id":"{sbx}","name":"snap"}"#),
            [401, 401, 401, 409, 404, 404, 409, 409, 409],
        ),
        r(
            M::GET,
            "/v1/templates",
            "/v1/templates",
            None,
            [401, 401, 401, 200, 200, 200, 200, 200, 200],
        ),
        r(
            M::POST,
            "/v1/templates",
            "/v1/templates",
            Some(r#"{"name":"debian"}"#),
            [401, 401, 401, 403, 403, 503, 403, 403, 403],
        ),
        r(
            M::DELETE,
            "/v1/templates/{id}",
            "/v1/templates/{fresh_tpl}",
            None,
            [401, 401, 401, 204, 404, 404, 204, 204, 204],
        ),
        r(
            M::GET,
            "/v1/templates/{id}/build",
            "/v1/templates/debian/build",
            None,
            [401, 401, 401, 403, 403, 200, 403, 403, 403],
        ),
    ]
}

const HEARTBEAT: &str = r#"{"facts":{"arch":"x86_64","cpu_cores":2,"memory_mb":2048,"disk_gb":10,"address":"127.0.0.1:1","accel":"tcg","accel_reason":"t","version":"t"},"running_vms":0,"used_memory_mb":0,"used_vcpus":0}"#;

struct Fixture {
    s: TestServer,
    tokens: Vec<Option<String>>,
    team: String,
    owner: ApiClient,
    /// The team admin's and member's clients (logged in to their own teams).
    admin: ApiClient,
    member: ApiClient,
    owner_email: String,
    host: String,
    sandbox: String,
    n: std::sync::atomic::AtomicUsize,
}

impl Fixture {
    async fn new() -> Fixture {
        let s = TestServer::start().await;
        let (padmin, _) = s.signup("root@example.com", "Root").await;
        let (owner, oc) = s.signup("owner@example.com", "Owner").await;
        let (_, ac) = s.signup("admin@example.com", "Team Admin").await;
        let (_, mc) = s.signup("member@example.com", "Member").await;
        let (other, _) = s.signup("other@example.com", "Other").await;
        let team = owner.team_id.clone().unwrap();
        add_member(&oc, &team, &ac, "admin").await;
        add_member(&oc, &team, &mc, "member").await;
        // Log the admin and member in to the shared team.
        let admin = s
            .anon()
            .login("admin@example.com", "correct horse battery")
            .await
            .unwrap();
        let admin = s
            .anon()
            .with_token(&admin.token)
            .switch_team(&team)
            .await
            .unwrap();
        let member = s
            .anon()
            .login("member@example.com", "correct horse battery")
            .await
            .unwrap();
        let member = s
            .anon()
            .with_token(&member.token)
            .switch_team(&team)
            .await
            .unwrap();
        let key = oc.create_key("matrix").await.unwrap().key.unwrap();

        // A registered host and its JWT.
        let root = s.anon().with_token(&padmin.token);
        let (host_id, reg) = crate::common::register_host(&s, &root).await;
        let host_token = reg["token"].as_str().unwrap().to_string();
        // Draining: it heartbeats but takes no sandboxes (nothing listens at its address).
        s.sqlite()
            .execute(
                "UPDATE hosts SET status = 'draining' WHERE id = ?1",
                [&host_id],
            )
            .unwrap();

        // An expired user token for the owner, signed with the server's real key.
        let secret = std::fs::read(s.data_dir().join("jwt.key")).unwrap();
        let now = sandboxctl::server::db::now();
        let claims = sandboxctl::server::auth::UserClaims {
            sub: owner.user_id.clone(),
            email: owner.email.clone(),
            name: owner.name.clone(),
            team: Some(team.clone()),
            sid: None,
            iss: "sandboxctl".into(),
            aud: "sandboxctl-user".into(),
            iat: now - 100_000,
            exp: now - 1000,
        };
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();

        // A (stopped) sandbox of the team, written straight into the real database file.
        let sandbox = "sbx_matrixfixture".to_string();
        s.sqlite()
            .execute(
                "INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, timeout_sec, created_at)
                 VALUES (?1, ?2, 'minimal', 'stopped', 1, 256, 0, 0)",
                [&sandbox, &team],
            )
            .unwrap();

        let tokens = vec![
            None,
            Some(expired),
            Some(host_token),
            Some(key),
            Some(other.token),
            Some(padmin.token),
            Some(member.token),
            Some(admin.token),
            Some(owner.token.clone()),
        ];
        Fixture {
            s,
            tokens,
            team,
            owner: oc,
            admin: ac,
            member: mc,
            owner_email: owner.email,
            host: host_id,
            sandbox,
            n: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Fills the placeholders of a path or body, creating fresh resources where asked.
    async fn fill(&self, text: &str) -> String {
        let mut out = text
            .replace("{T}", &self.team)
            .replace("{H}", &self.host)
            .replace("{sbx}", &self.sandbox);
        if out.contains("{fresh_team}") {
            let t = self
                .owner
                .create_team(&format!("fresh {}", self.next()))
                .await
                .unwrap();
            add_member(&self.owner, &t.id, &self.admin, "admin").await;
            add_member(&self.owner, &t.id, &self.member, "member").await;
            out = out.replace("{fresh_team}", &t.id);
        }
        if out.contains("{fresh_invite}") {
            let i = self
                .owner
                .create_invite(&self.team, "member")
                .await
                .unwrap();
            out = out.replace("{fresh_invite}", &i.invite.id);
        }
        if out.contains("{fresh_team_invite}") {
            let t = self
                .owner
                .create_team(&format!("fresh {}", self.next()))
                .await
                .unwrap();
            add_member(&self.owner, &t.id, &self.admin, "admin").await;
            add_member(&self.owner, &t.id, &self.member, "member").await;
            let i = self.owner.create_invite(&t.id, "member").await.unwrap();
            out = out.replace("{fresh_team_invite}", &i.token);
        }
        if out.contains("{fresh_byoc}") {
            let h = self
                .owner
                .create_host(&CreateHostRequest {
                    host_type: "byoc".into(),
                    team_id: Some(self.team.clone()),
                    name: None,
                    provider: None,
                    zone: None,
                })
                .await
                .unwrap();
            out = out.replace("{fresh_byoc}", &h.host.id);
        }
        if out.contains("{fresh_tpl}") {
            let id = format!("tpl_fresh{}", self.next());
            self.s
                .sqlite()
                .execute(
                    "INSERT INTO templates (id, team_id, name, kind, created_at) VALUES (?1, ?2, ?1, 'snapshot', 0)",
                    [&id, &self.team],
                )
                .unwrap();
            out = out.replace("{fresh_tpl}", &id);
        }
        if out.contains("{fresh_owner_session}") {
            let login = self
                .s
                .anon()
                .login(&self.owner_email, "correct horse battery")
                .await
                .unwrap();
            let sessions = self
                .s
                .anon()
                .with_token(&login.token)
                .sessions()
                .await
                .unwrap();
            let id = sessions.iter().find(|s| s.current).unwrap().id.clone();
            out = out.replace("{fresh_owner_session}", &id);
        }
        if out.contains("{fresh_key}") {
            let k = self.owner.create_key("fresh").await.unwrap();
            out = out.replace("{fresh_key}", &k.id);
        }
        if out.contains("{fresh_member}") || out.contains("{fresh_user_email}") {
            let email = format!("fresh{}@example.com", self.next());
            let (u, fresh) = self.s.signup(&email, "Fresh").await;
            if out.contains("{fresh_member}") {
                add_member(&self.owner, &self.team, &fresh, "member").await;
            }
            out = out
                .replace("{fresh_member}", &u.user_id)
                .replace("{fresh_user_email}", &email);
        }
        out
    }

    /// A token of a fresh login for caller `i` (the same kind of caller as `tokens[i]`); the
    /// callers that are not users keep theirs.
    async fn fresh_token(&self, i: usize) -> Option<String> {
        let email = match ROLES[i] {
            "other_team" => "other@example.com",
            "platform_admin" => "root@example.com",
            "member" => "member@example.com",
            "admin" => "admin@example.com",
            "owner" => &self.owner_email,
            _ => return self.tokens[i].clone(),
        };
        let auth = self
            .s
            .anon()
            .login(email, "correct horse battery")
            .await
            .unwrap();
        if matches!(ROLES[i], "member" | "admin") {
            let switched = self
                .s
                .anon()
                .with_token(&auth.token)
                .switch_team(&self.team)
                .await
                .unwrap();
            return Some(switched.token);
        }
        Some(auth.token)
    }
}

#[tokio::test]
async fn authorization_matrix() {
    let f = Fixture::new().await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in rows() {
        for (i, role) in ROLES.iter().enumerate() {
            let path = f.fill(row.path).await;
            let body = match row.body {
                Some(b) => Some(f.fill(b).await),
                None => None,
            };
            let token = if row.fresh_login {
                f.fresh_token(i).await
            } else {
                f.tokens[i].clone()
            };
            let (st, v) = raw(
                row.method.clone(),
                &format!("{}{path}", f.s.url),
                token.as_deref(),
                body.as_deref(),
            )
            .await;
            checked += 1;
            if st != row.expect[i] {
                failures.push(format!(
                    "{} {} as {role}: expected {}, got {st} {v}",
                    row.method, row.route, row.expect[i]
                ));
            }
            if st >= 400 {
                assert!(
                    v["error"]["code"].is_string(),
                    "{} {} as {role}: error without a code: {v}",
                    row.method,
                    row.route
                );
            }
        }
    }
    eprintln!(
        "authorization matrix: {} routes x {} callers = {checked} checks",
        rows().len(),
        ROLES.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every route the router serves has a row (and nothing else has one).
#[test]
fn every_route_is_in_the_matrix() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/server/api/mod.rs"
    ))
    .unwrap()
        + &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/server/api/e2b/mod.rs"
        ))
        .unwrap();
    let mut served = BTreeSet::new();
    served.insert(("GET".to_string(), "/healthz".to_string()));
    let routes = src.split(".route(").skip(1);
    for chunk in routes {
        let chunk = chunk.split(".fallback(").next().unwrap();
        let path = chunk.split('"').nth(1).unwrap().to_string();
        for m in ["get", "post", "patch", "put", "delete"] {
            if chunk.contains(&format!("{m}(")) {
                served.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    let in_matrix: BTreeSet<(String, String)> = rows()
        .iter()
        .chain(e2b_rows().iter())
        .map(|r| (r.method.to_string(), r.route.to_string()))
        .collect();
    assert_eq!(
        served, in_matrix,
        "the router and the authorization matrix disagree"
    );

    // And every route is described in openapi.yaml.
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let mut current = String::new();
    let mut documented = BTreeSet::new();
    for line in spec.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            current = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|m| m.strip_suffix(':'))
            && ["get", "post", "patch", "put", "delete"].contains(&m)
        {
            documented.insert((m.to_uppercase(), current.clone()));
        }
    }
    assert_eq!(served, documented, "the router and openapi.yaml disagree");
}

/// E2B's callers (`X-API-KEY`), in the order each E2B row lists its statuses: none, a key that
/// is not one, a user's JWT, a host's JWT, the team's API key, another team's API key.
const E2B_ROLES: [&str; 6] = ["none", "bad_key", "user_jwt", "host", "apikey", "other_key"];

fn e2b_rows() -> Vec<Row> {
    use Method as M;
    let r6 = |method: Method,
              route: &'static str,
              path: &'static str,
              body: Option<&'static str>,
              e: [u16; 6]| {
        // The six statuses, padded to the Row's shape (the E2B matrix reads the first six).
        r(
            method,
            route,
            path,
            body,
            [e[0], e[1], e[2], e[3], e[4], e[5], 0, 0, 0],
        )
    };
    //             none bad  jwt  host key  other
    vec![
        // The fixture's host is draining: a create finds no host (503, E2B's "busy").
        r6(
            M::POST,
            "/sandboxes",
            "/sandboxes",
            Some(r#"{"templateID":"minimal"}"#),
            [401, 401, 401, 401, 503, 503],
        ),
        // Without any credential, GET /sandboxes and /sandboxes/{id} are the dashboard's pages.
        r6(
            M::GET,
            "/sandboxes",
            "/sandboxes",
            None,
            [200, 401, 401, 401, 200, 200],
        ),
        r6(
            M::POST,
            "/v2/sandboxes",
            "/v2/sandboxes",
            Some(r#"{"templateID":"minimal"}"#),
            [401, 401, 401, 401, 503, 503],
        ),
        r6(
            M::GET,
            "/v2/sandboxes",
            "/v2/sandboxes",
            None,
            [401, 401, 401, 401, 200, 200],
        ),
        // The fixture's sandbox has ended: for E2B it does not exist, for its team as for others.
        r6(
            M::GET,
            "/sandboxes/{id}",
            "/sandboxes/{sbx}",
            None,
            [200, 401, 401, 401, 404, 404],
        ),
        r6(
            M::DELETE,
            "/sandboxes/{id}",
            "/sandboxes/{sbx}",
            None,
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/connect",
            "/sandboxes/{sbx}/connect",
            Some(r#"{"timeout":60}"#),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/v2/sandboxes/{id}/connect",
            "/v2/sandboxes/{sbx}/connect",
            Some("{}"),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/resume",
            "/sandboxes/{sbx}/resume",
            Some("{}"),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/timeout",
            "/sandboxes/{sbx}/timeout",
            Some(r#"{"timeout":60}"#),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/refreshes",
            "/sandboxes/{sbx}/refreshes",
            Some("{}"),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/pause",
            "/sandboxes/{sbx}/pause",
            Some("{}"),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::PUT,
            "/sandboxes/{id}/network",
            "/sandboxes/{sbx}/network",
            Some(r#"{"denyOut":["0.0.0.0/0"]}"#),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::POST,
            "/sandboxes/{id}/snapshots",
            "/sandboxes/{sbx}/snapshots",
            Some("{}"),
            [401, 401, 401, 401, 404, 404],
        ),
        r6(
            M::GET,
            "/snapshots",
            "/snapshots",
            None,
            [401, 401, 401, 401, 200, 200],
        ),
        r6(
            M::DELETE,
            "/templates/{id}",
            "/templates/{fresh_tpl}",
            None,
            [401, 401, 401, 401, 204, 404],
        ),
    ]
}

#[tokio::test]
async fn e2b_authorization_matrix() {
    let f = Fixture::new().await;
    // Another team's API key, made by the other team's owner.
    let (_, other_key) = raw(
        Method::POST,
        &format!("{}/v1/api-keys", f.s.url),
        f.tokens[4].as_deref(),
        Some(r#"{"name":"other"}"#),
    )
    .await;
    let keys: [Option<String>; 6] = [
        None,
        Some("sk_not_a_key".into()),
        f.tokens[8].clone(),
        f.tokens[2].clone(),
        f.tokens[3].clone(),
        other_key["key"].as_str().map(str::to_string),
    ];
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    for row in e2b_rows() {
        for (i, role) in E2B_ROLES.iter().enumerate() {
            let path = f.fill(row.path).await;
            let mut req = http.request(row.method.clone(), format!("{}{path}", f.s.url));
            if let Some(k) = &keys[i] {
                req = req.header("X-API-KEY", k);
            }
            if let Some(b) = row.body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            let st = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            if st != row.expect[i] {
                failures.push(format!(
                    "{} {} as {role}: expected {}, got {st} {v}",
                    row.method, row.route, row.expect[i]
                ));
            }
            if st >= 400 && !(v["code"].as_u64() == Some(u64::from(st)) && v["message"].is_string())
            {
                failures.push(format!(
                    "{} {} as {role}: an E2B error is {{code: {st}, message}}, got {v}",
                    row.method, row.route
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
