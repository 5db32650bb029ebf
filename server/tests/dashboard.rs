//! The dashboard in-process (`router(state)` + `oneshot`, real SQLite): signed-out redirects
//! with a safe return path, the token sign-in form (same origin only), HTML escaping of
//! user-supplied text, the workspace-name check, the token API (list, revoke, who may,
//! audit, expiry, last use), the admin pages (not found for members), and the resource samples
//! behind the workspace page's graphs (one per bucket on SQLite and PostgreSQL, from heartbeats).

mod common;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use lumie_server::api::{KeyJson, NameCheckJson, TokenJson, UserJson};
use lumie_server::config::{Config, OidcConfig};
use lumie_server::model::AuditEntry;
use lumie_server::state::AppState;
use lumie_server::template::Template;
use tower::ServiceExt;

const ORIGIN: &str = "http://127.0.0.1";

struct Dash {
    state: AppState,
    admin: String,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn dash() -> Dash {
    dash_with(|_| {}).await
}

async fn dash_with(edit: impl FnOnce(&mut Config)) -> Dash {
    let (db, dir) = common::sqlite_db().await;
    let mut config = Config::for_tests(dir.path().to_path_buf());
    edit(&mut config);
    let (_, admin) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    Dash {
        state,
        admin,
        _dir: dir,
    }
}

impl Dash {
    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = lumie_server::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header("Coder-Session-Token", token);
        self.send(match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        })
        .await
    }

    async fn page(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut b = Request::builder().uri(path);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn sign_in(&self, token: &str, redirect: &str, origin: Option<&str>) -> Answer {
        let form = format!(
            "token={}&redirect={}",
            urlencode(token),
            urlencode(redirect)
        );
        let mut b = Request::builder()
            .method("POST")
            .uri("/login")
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        self.send(b.body(Body::from(form)).unwrap()).await
    }

    async fn member(&self, name: &str) -> String {
        let a = self
            .api(
                "POST",
                "/api/v2/users",
                &self.admin,
                Some(serde_json::json!({ "username": name })),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let u: UserJson = a.json();
        let k = self
            .api(
                "POST",
                &format!("/api/v2/users/{}/keys", u.id),
                &self.admin,
                None,
            )
            .await;
        k.json::<KeyJson>().key
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn session_cookie(a: &Answer) -> String {
    let set = a
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("coder_session_token="))
        .unwrap_or_else(|| panic!("no session cookie: {:?}", a.headers))
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn signed_out_pages_redirect_to_login_and_back_safely() {
    let d = dash().await;
    let cases = [
        ("/", "/login"),
        ("/settings/tokens", "/login?redirect=%2Fsettings%2Ftokens"),
        (
            "/@alice/dev?tab=builds",
            "/login?redirect=%2F%40alice%2Fdev%3Ftab%3Dbuilds",
        ),
    ];
    for (page, want) in cases {
        let a = d.page(page, None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(a.location(), want, "{page}");
    }
    // A stale cookie is "signed out" too.
    let a = d.page("/", Some("coder_session_token=nope")).await;
    assert_eq!(a.location(), "/login");

    // The login page: no OIDC configured, so no Keycloak button; the token form keeps only a
    // local return path.
    let a = d.page("/login?redirect=%2F%40admin%2Fdev", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.body.contains("Sign in with Keycloak"), "{}", a.body);
    assert!(
        a.body.contains(r#"name="redirect" value="/@admin/dev""#),
        "{}",
        a.body
    );
    for evil in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
    ] {
        let a = d
            .page(&format!("/login?redirect={}", urlencode(evil)), None)
            .await;
        assert!(
            a.body.contains(r#"name="redirect" value="/""#),
            "{evil}: {}",
            a.body
        );
        assert!(!a.body.contains("evil.example"), "{evil}");
    }

    // Sign-in: a foreign redirect is refused (goes to `/`), a local one is kept.
    let a = d
        .sign_in(&d.admin, "https://evil.example/", Some(ORIGIN))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/");
    let a = d.sign_in(&d.admin, "/settings/tokens", Some(ORIGIN)).await;
    assert_eq!(a.location(), "/settings/tokens");
    let cookie = session_cookie(&a);
    assert!(
        !cookie.contains(&d.admin),
        "the token itself is not the cookie"
    );
    let page = d.page("/settings/tokens", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("API tokens"));
    // Signed in, /login goes straight on.
    let a = d
        .page("/login?redirect=%2Fsettings%2Ftokens", Some(&cookie))
        .await;
    assert_eq!(a.location(), "/settings/tokens");
}

#[tokio::test]
async fn the_keycloak_button_shows_when_oidc_is_configured_and_keeps_the_return_path() {
    // Nothing is fetched from the issuer until a login starts.
    let d = dash_with(|c| {
        c.oidc = Some(OidcConfig::new(
            "http://127.0.0.1:9/realms/test",
            "coder",
            "secret",
        ))
    })
    .await;
    let a = d.page("/login?redirect=%2F%40bob%2Fdev", None).await;
    assert!(a.body.contains("Sign in with Keycloak"), "{}", a.body);
    assert!(
        a.body
            .contains(r#"href="/api/v2/users/oidc/login?redirect=%2F%40bob%2Fdev""#),
        "{}",
        a.body
    );
    let a = d
        .page("/login?redirect=https%3A%2F%2Fevil.example", None)
        .await;
    assert!(
        a.body
            .contains(r#"href="/api/v2/users/oidc/login?redirect=%2F""#),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn token_sign_in_needs_same_origin_and_a_valid_token() {
    let d = dash().await;
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let a = d.sign_in(&d.admin, "/", origin).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin:?}");
        assert!(a.headers.get("set-cookie").is_none(), "{origin:?}");
        assert!(a.body.contains("sign in from the dashboard"), "{}", a.body);
    }
    let a = d.sign_in("not-a-token", "/", Some(ORIGIN)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("That token is not valid"), "{}", a.body);
    assert!(a.headers.get("set-cookie").is_none());

    // Sign-out revokes the session: the old cookie no longer works.
    let a = d.sign_in(&d.admin, "/", Some(ORIGIN)).await;
    let cookie = session_cookie(&a);
    let out = d
        .send(
            Request::builder()
                .method("POST")
                .uri("/logout")
                .header("cookie", &cookie)
                .header("origin", ORIGIN)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(out.location(), "/login");
    assert_eq!(d.page("/", Some(&cookie)).await.location(), "/login");
}

#[tokio::test]
async fn user_supplied_text_is_escaped() {
    let d = dash().await;
    let evil = "<script>alert(1)</script>\"'&";
    let a = d
        .api(
            "POST",
            "/api/v2/users/me/keys",
            &d.admin,
            Some(serde_json::json!({ "token_name": evil, "lifetime_seconds": 3600 })),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let cookie = session_cookie(&d.sign_in(&d.admin, "/", Some(ORIGIN)).await);
    let page = d.page("/settings/tokens", Some(&cookie)).await;
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"),
        "{}",
        page.body
    );
    let csp = page.headers.get("content-security-policy").unwrap();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));
}

#[tokio::test]
async fn workspace_pages_and_the_name_check() {
    let d = dash().await;
    let bob = d.member("bob").await;
    let a = d
        .api(
            "POST",
            "/api/v2/users/me/workspaces",
            &d.admin,
            Some(serde_json::json!({ "name": "secret-ws" })),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let admin_cookie = session_cookie(&d.sign_in(&d.admin, "/", Some(ORIGIN)).await);
    let bob_cookie = session_cookie(&d.sign_in(&bob, "/", Some(ORIGIN)).await);

    let list = d.page("/", Some(&admin_cookie)).await;
    assert!(list.body.contains("secret-ws"), "{}", list.body);
    assert!(list.body.contains("coder-admin-secret-ws") || list.body.contains("/@admin/secret-ws"));
    let bobs = d.page("/", Some(&bob_cookie)).await;
    assert!(
        !bobs.body.contains("secret-ws"),
        "a member sees only their own"
    );
    assert!(bobs.body.contains("No workspaces yet"), "{}", bobs.body);
    let page = d.page("/@admin/secret-ws", Some(&admin_cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Build history") && page.body.contains("start"));
    let hidden = d.page("/@admin/secret-ws", Some(&bob_cookie)).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert!(hidden.body.contains("workspace admin/secret-ws not found"));

    let check = |name: &str| format!("/api/v2/workspacenames?name={}", urlencode(name));
    let ok: NameCheckJson = d.api("GET", &check("dev"), &bob, None).await.json();
    assert!(ok.valid);
    assert_eq!(ok.pod.as_deref(), Some("coder-bob-dev"));
    assert_eq!(ok.home_volume.as_deref(), Some("coder-bob-dev-home"));
    for bad in ["Dev", "-dev", "dev-", "de_v", "", &"a".repeat(64)] {
        let r: NameCheckJson = d.api("GET", &check(bad), &bob, None).await.json();
        assert!(!r.valid && r.error.is_some(), "{bad:?}");
        // The same sentence the create call answers with.
        let created = d
            .api(
                "POST",
                "/api/v2/users/me/workspaces",
                &bob,
                Some(serde_json::json!({ "name": bad })),
            )
            .await;
        assert_eq!(created.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            created
                .body
                .contains(&r.error.clone().unwrap().replace('"', "\\\"")),
            "{bad:?}: {}",
            created.body
        );
    }
}

#[tokio::test]
async fn token_api_list_revoke_permissions_and_audit() {
    let d = dash().await;
    let bob = d.member("bob").await;
    let carol = d.member("carol").await;
    let a = d
        .api(
            "POST",
            "/api/v2/users/me/keys",
            &bob,
            Some(serde_json::json!({ "token_name": "laptop", "lifetime_seconds": 86400 })),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let laptop: KeyJson = a.json();
    assert_eq!(laptop.name, "laptop");
    assert!(laptop.expires_at.is_some());
    assert!(laptop.key.starts_with(&format!("{}-", laptop.id)));
    // Bad requests are named.
    for (body, want) in [
        (serde_json::json!({ "token_name": " " }), "needs a name"),
        (
            serde_json::json!({ "token_name": "x", "lifetime_seconds": 0 }),
            "out of range",
        ),
        (
            serde_json::json!({ "token_name": "oidc-session" }),
            "reserved",
        ),
    ] {
        let a = d
            .api("POST", "/api/v2/users/me/keys", &bob, Some(body))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.body.contains(want), "{}", a.body);
    }
    // A session (sign-in) is not a listed token.
    d.sign_in(&bob, "/", Some(ORIGIN)).await;

    let list: Vec<TokenJson> = d
        .api("GET", "/api/v2/users/me/keys", &bob, None)
        .await
        .json();
    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"laptop") && names.contains(&"api"),
        "{names:?}"
    );
    // Using `bob`'s first token stamped its last use.
    assert!(
        list.iter()
            .find(|t| t.name == "api")
            .unwrap()
            .last_used_at
            .is_some()
    );
    assert!(
        list.iter()
            .find(|t| t.name == "laptop")
            .unwrap()
            .last_used_at
            .is_none()
    );

    // Others' tokens: members may not; admins may.
    let a = d.api("GET", "/api/v2/users/bob/keys", &carol, None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = d
        .api(
            "DELETE",
            &format!("/api/v2/users/bob/keys/{}", laptop.id),
            &carol,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = d.api("GET", "/api/v2/users/bob/keys", &d.admin, None).await;
    assert_eq!(a.status, StatusCode::OK);
    // Someone else's token id under my name is not found.
    let a = d
        .api(
            "DELETE",
            &format!("/api/v2/users/me/keys/{}", laptop.id),
            &carol,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // The owner revokes: it stops working; twice is not found.
    let a = d
        .api(
            "DELETE",
            &format!("/api/v2/users/me/keys/{}", laptop.id),
            &bob,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    let a = d.api("GET", "/api/v2/users/me", &laptop.key, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = d
        .api(
            "DELETE",
            &format!("/api/v2/users/me/keys/{}", laptop.id),
            &bob,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // An admin revokes bob's other token.
    let api_id = list.iter().find(|t| t.name == "api").unwrap().id.clone();
    let a = d
        .api(
            "DELETE",
            &format!("/api/v2/users/bob/keys/{api_id}"),
            &d.admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        d.api("GET", "/api/v2/users/me", &bob, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let audit: Vec<AuditEntry> = d
        .api("GET", "/api/v2/audit?action=token.*", &d.admin, None)
        .await
        .json();
    let revokes: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "token.revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{audit:?}");
    assert!(revokes.iter().any(|e| e.actor_name == "bob"), "{revokes:?}");
    assert!(
        revokes.iter().any(|e| e.actor_name == "admin"),
        "{revokes:?}"
    );
    assert!(audit.iter().any(|e| e.action == "token.create"
        && e.after.as_deref().is_some_and(|a| a.ends_with(" laptop"))));
}

#[tokio::test]
async fn admin_pages_are_not_found_for_members_and_shown_to_admins() {
    let d = dash().await;
    let bob = d.member("bob").await;
    let member = session_cookie(&d.sign_in(&bob, "/", Some(ORIGIN)).await);
    let admin = session_cookie(&d.sign_in(&d.admin, "/", Some(ORIGIN)).await);
    let pages = [
        "/admin/users",
        "/admin/policy",
        "/admin/audit",
        "/admin/health",
    ];
    // A member: the not-found page, exactly as for a path that does not exist, and no link.
    for page in pages {
        let a = d.page(page, Some(&member)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{page}");
        assert!(
            a.body.contains(&format!("There is no page at {page}.")),
            "{page}: {}",
            a.body
        );
        assert!(!a.body.contains("Users and roles"), "{page}");
    }
    let home = d.page("/", Some(&member)).await;
    assert!(!home.body.contains("/admin/"), "{}", home.body);
    let home = d.page("/", Some(&admin)).await;
    assert!(
        home.body.contains(r#"href="/admin/users""#),
        "{}",
        home.body
    );
    // Signed out: the sign-in page, returning to the admin page.
    let a = d.page("/admin/audit?action=policy.*", None).await;
    assert_eq!(
        a.location(),
        "/login?redirect=%2Fadmin%2Faudit%3Faction%3Dpolicy.*"
    );

    // An admin: users with roles, read-only.
    let a = d.page("/admin/users", Some(&admin)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body.contains(r#"<tr data-user="bob">"#) && a.body.contains("member"),
        "{}",
        a.body
    );
    // No kube client here: the policy and health pages say so instead of failing.
    let a = d.page("/admin/policy", Some(&admin)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("no Kubernetes API client"), "{}", a.body);
    let a = d.page("/admin/health", Some(&admin)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body
            .contains(r#"data-check="kube-api" data-status="failure""#),
        "{}",
        a.body
    );
    // The audit log with its filters: the sign-ins above are there; a bad time is named.
    let a = d
        .page("/admin/audit?action=session.*&user=bob", Some(&admin))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("session.token_login"), "{}", a.body);
    assert!(!a.body.contains(">admin</td>"), "{}", a.body);
    let a = d.page("/admin/audit?since=yesterday", Some(&admin)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.body.contains("From: &quot;yesterday&quot; is not a time"),
        "{}",
        a.body
    );
}

async fn samples_on(db: &lumie_server::db::Db) {
    use lumie_contract::agent_api::ResourceStats;
    use lumie_server::db::SAMPLE_BUCKET_MS;
    let stats = |cpu: f64| ResourceStats {
        cpu_cores: cpu,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 4 << 30,
        disk_used_bytes: u64::MAX,
        disk_total_bytes: 10 << 30,
        ..Default::default()
    };
    let t0 = 1_000 * SAMPLE_BUCKET_MS;
    // Two replicas offering the same bucket: one sample.
    assert!(
        db.record_sample("ws-1", 1000, t0, &stats(0.5))
            .await
            .unwrap()
    );
    assert!(
        !db.record_sample("ws-1", 1000, t0 + 5, &stats(0.9))
            .await
            .unwrap()
    );
    assert!(
        db.record_sample("ws-1", 1001, t0 + SAMPLE_BUCKET_MS, &stats(0.25))
            .await
            .unwrap()
    );
    assert!(
        db.record_sample("ws-2", 1000, t0, &stats(1.0))
            .await
            .unwrap()
    );
    let s = db.samples_since("ws-1", 0).await.unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].cpu_cores, 0.5);
    assert_eq!(s[0].disk_used_bytes, i64::MAX, "clamped, not wrapped");
    assert_eq!(s[1].cpu_cores, 0.25);
    assert_eq!(db.samples_since("ws-1", t0 + 1).await.unwrap().len(), 1);
    assert_eq!(db.prune_samples(t0 + 1).await.unwrap(), 2);
    assert_eq!(db.samples_since("ws-1", 0).await.unwrap().len(), 1);
    assert!(db.samples_since("ws-2", 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn resource_samples_are_one_per_bucket_and_pruned_on_both_databases() {
    let (sqlite, _dir) = common::sqlite_db().await;
    samples_on(&sqlite).await;
    samples_on(&common::pg_db().await).await;
}

#[tokio::test]
async fn heartbeat_stats_become_the_workspace_pages_graphs() {
    let (db, dir) = common::sqlite_db().await;
    let (admin, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let ws = db
        .create_workspace(&admin, "dev", "coder-admin-dev", None)
        .await
        .unwrap()
        .workspace;
    let state = AppState::new(
        Config::for_tests(dir.path().to_path_buf()),
        db.clone(),
        Template::default(),
        None,
    )
    .await
    .unwrap();
    let fixed = std::sync::Arc::new(lumie_server::agent_api::FixedAgents::new(
        state.agent_auth.expected_username(),
    ));
    fixed.add("agent-token", &ws.id);
    state.agent_auth.install(fixed.clone(), fixed);
    let d = Dash {
        state,
        admin: token,
        _dir: dir,
    };
    let hb = serde_json::json!({
        "lifecycle": "ready",
        "apps": {},
        "version": "test",
        "stats": {
            "cpu_cores": 0.5, "memory_used_bytes": 1073741824u64, "memory_total_bytes": 4294967296u64,
            "disk_used_bytes": 1073741824u64, "disk_total_bytes": 10737418240u64,
            "network_rx_bytes": 0, "network_tx_bytes": 0, "forwarded_connections_open": 0,
            "forwarded_connections_total": 0, "forwarded_bytes": 0
        }
    });
    for _ in 0..3 {
        let a = d
            .api(
                "POST",
                lumie_contract::agent_api::HEARTBEAT_PATH,
                "agent-token",
                Some(hb.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    // The sample is written off the heartbeat's path: wait for the row (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let samples = loop {
        let s = db.samples_since(&ws.id, 0).await.unwrap();
        if !s.is_empty() || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        samples.len(),
        1,
        "three heartbeats in one bucket: one sample"
    );
    let cookie = session_cookie(&d.sign_in(&d.admin, "/", Some(ORIGIN)).await);
    let page = d.page("/@admin/dev", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("0.50 cores"), "{}", page.body);
    assert!(
        page.body.contains("1.0 GiB of 4.0 GiB (25 %)"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("no Kubernetes API client"),
        "{}",
        page.body
    );
    let frag = d
        .page(&format!("/_dashboard/resources/{}", ws.id), Some(&cookie))
        .await;
    assert_eq!(frag.status, StatusCode::OK);
    assert!(frag.body.contains(r#"id="graph-disk""#), "{}", frag.body);
    // Someone else's workspace: not found, like the page.
    let bob = d.member("bob").await;
    let a = d
        .api(
            "GET",
            &format!("/_dashboard/resources/{}", ws.id),
            &bob,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = d
        .api("GET", &format!("/_dashboard/events/{}", ws.id), &bob, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_list_comes_a_page_at_a_time_and_searches_every_workspace() {
    use lumie_server::dashboard::workspaces::PAGE_SIZE;
    let d = dash().await;
    let owner = d.state.db.create_user("ann", "", false).await.unwrap();
    for i in 0..120 {
        d.state
            .db
            .create_workspace(
                &owner,
                &format!("ws{i:03}"),
                &format!("coder-ann-ws{i:03}"),
                None,
            )
            .await
            .unwrap();
    }
    let admin = session_cookie(&d.sign_in(&d.admin, "/", Some(ORIGIN)).await);
    let rows = |a: &Answer| a.body.matches("<tr id=\"ws-").count();
    let a = d.page("/", Some(&admin)).await;
    assert_eq!(rows(&a), PAGE_SIZE);
    assert!(a.body.contains("1–50 of 120"), "{}", a.body);
    assert!(
        a.body.contains(r#"href="/?page=2" rel="next""#),
        "{}",
        a.body
    );
    let a = d.page("/?page=3", Some(&admin)).await;
    assert_eq!(rows(&a), 20);
    assert!(a.body.contains("101–120 of 120"), "{}", a.body);
    assert!(!a.body.contains(r#"rel="next""#));
    // The search covers every page; the filters stay in the page links.
    let a = d.page("/?q=WS11&owner=ann", Some(&admin)).await;
    assert_eq!(rows(&a), 10, "ws110 … ws119");
    assert!(
        a.body.contains("1–10 of 10 matching <q>WS11</q>"),
        "{}",
        a.body
    );
    let a = d.page("/?q=nothing-like-it", Some(&admin)).await;
    assert_eq!(rows(&a), 0);
    assert!(
        a.body
            .contains("No workspace matches <q>nothing-like-it</q>."),
        "{}",
        a.body
    );
    assert!(
        a.body.contains(r#"<p class="empty" id="empty" hidden>"#),
        "{}",
        a.body
    );
}

/// (owner id, search, offset, limit, the page's owner/name, how many match).
type PageCase<'a> = (Option<&'a str>, &'a str, usize, usize, &'a [&'a str], usize);

async fn pages_on(db: &lumie_server::db::Db) {
    let ann = db.create_user("ann", "", false).await.unwrap();
    let bo = db.create_user("bo", "", false).await.unwrap();
    for (owner, name) in [
        (&ann, "web"),
        (&ann, "a-b"),
        (&ann, "axb"),
        (&bo, "web"),
        (&bo, "db"),
    ] {
        db.create_workspace(
            owner,
            name,
            &format!("coder-{}-{name}", owner.username),
            None,
        )
        .await
        .unwrap();
    }
    let names = |page: &[lumie_server::model::WorkspaceRecord]| {
        page.iter()
            .map(|w| format!("{}/{}", w.owner_name, w.name))
            .collect::<Vec<_>>()
    };
    let cases: &[PageCase] = &[
        (
            None,
            "",
            0,
            10,
            &["ann/a-b", "ann/axb", "ann/web", "bo/db", "bo/web"],
            5,
        ),
        (None, "", 1, 2, &["ann/axb", "ann/web"], 5),
        (Some(&bo.id), "", 0, 10, &["bo/db", "bo/web"], 2),
        (None, "WEB", 0, 10, &["ann/web", "bo/web"], 2),
        (None, "bo", 0, 10, &["bo/db", "bo/web"], 2),
        (None, "a_b", 0, 10, &[], 0),
        (None, "%", 0, 10, &[], 0),
        (Some(&ann.id), "-b", 0, 10, &["ann/a-b"], 1),
    ];
    for (owner, search, offset, limit, want, total) in cases {
        let (page, n) = db
            .workspace_page(*owner, search, *offset, *limit)
            .await
            .unwrap();
        assert_eq!(names(&page), *want, "{owner:?} {search:?} {offset}");
        assert_eq!(n, *total, "{owner:?} {search:?}");
    }
}

#[tokio::test]
async fn workspace_pages_filter_and_page_in_sql_on_both_databases() {
    let (sqlite, _dir) = common::sqlite_db().await;
    pages_on(&sqlite).await;
    pages_on(&common::pg_db().await).await;
}
