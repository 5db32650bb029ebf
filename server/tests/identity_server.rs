//! Identity through the real server: `edge::app` (the API router, the OIDC login routes and
//! the edge middleware) listening on 127.0.0.1 with OIDC configured against the real provider
//! (`tests/oidc/provider.js`) and SQLite, driven by browsers that keep cookies.
//!
//! Alice is in `platform-admins` (admin), Bob is not (member). Every API route is called by
//! both with their session cookie: who is allowed and who gets 403 (or 404 where another user's
//! workspace must not even be confirmed to exist), the app proxy included. Then the edge: the
//! trusted proxy's client address in the audit log, a wrong `Host` explained and counted while
//! `/readyz` answers as before, a cross-origin WebSocket refused, logout and expiry.

use std::net::SocketAddr;

use lumie_server::api::{BuildJson, UserJson, WorkspaceJson, WorkspacesJson};
use lumie_server::config::{Config, DatabaseConfig, OidcConfig};
use lumie_server::db::Db;
use lumie_server::identity::SessionRecord;
use lumie_server::model::{AuditEntry, BuildStatus};
use lumie_server::state::AppState;
use lumie_server::template::Template;
use reqwest::header::LOCATION;
use reqwest::redirect::Policy;
use reqwest::{StatusCode, Url};
use serde_json::json;

#[path = "common/oidc_provider.rs"]
mod oidc_provider;
use oidc_provider::{Provider, SECRET, submit_login_form};

struct Server {
    base: String,
    state: AppState,
    _provider: Provider,
    _dir: tempfile::TempDir,
}

/// The whole server app with OIDC, trusting `X-Forwarded-For` from 127.0.0.1 (the "proxy").
async fn start_server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let provider = Provider::start(&format!("{base}/api/v2/users/oidc/callback"), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.database = DatabaseConfig::Sqlite(dir.path().join("lumie.db"));
    config.access_url = base.clone();
    config.oidc = Some(OidcConfig::new(&provider.issuer, "coder", SECRET));
    config.proxy_trusted_headers = vec!["X-Forwarded-For".into()];
    config.proxy_trusted_origins = vec!["127.0.0.1/32".into()];
    let db = Db::connect(&config.database).await.unwrap();
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    lumie_server::edge::discover_at_start(&state.edge).await;
    let serving = state.clone();
    tokio::spawn(async move { lumie_server::edge::serve(listener, serving).await });
    Server {
        base,
        state,
        _provider: provider,
        _dir: dir,
    }
}

/// A browser: keeps cookies, follows no redirect by itself; its requests reach the server
/// through the trusted "proxy" with `X-Forwarded-For: <ip>`.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(server: &Server, forwarded_for: &str) -> Browser {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded_for.parse().unwrap());
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .default_headers(headers)
                .build()
                .unwrap(),
            base: server.base.clone(),
        }
    }

    async fn follow(&self, url: &Url) -> (StatusCode, Url) {
        let r = self.http.get(url.clone()).send().await.unwrap();
        let status = r.status();
        let loc = r
            .headers()
            .get(LOCATION)
            .map(|l| url.join(l.to_str().unwrap()).unwrap());
        match loc {
            Some(l) => (status, l),
            None => panic!(
                "{url}: {status} without Location: {}",
                r.text().await.unwrap()
            ),
        }
    }

    /// The browser-style login: server → provider → login form → provider → callback → `/`.
    async fn login(&self, user: &str, password: &str) {
        let start = Url::parse(&format!("{}/api/v2/users/oidc/login", self.base)).unwrap();
        let (_, authorize) = self.follow(&start).await;
        let (_, form_page) = self.follow(&authorize).await;
        let html = self
            .http
            .get(form_page.clone())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (action, r) = submit_login_form(&self.http, &form_page, &html, user, password).await;
        let resume = action
            .join(r.headers()[LOCATION].to_str().unwrap())
            .unwrap();
        let (_, callback) = self.follow(&resume).await;
        assert!(callback.as_str().starts_with(&self.base), "{callback}");
        let (status, home) = self.follow(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(home.path(), "/");
    }

    async fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if method != "GET" {
            // As a browser does: the cookie-authenticated write names the page's origin.
            req = req.header("origin", self.base.as_str());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let is_sse = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
        // An SSE stream never ends: its status is the answer.
        let body = if is_sse {
            String::new()
        } else {
            r.text().await.unwrap()
        };
        Reply { status, body }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        want: StatusCode,
    ) -> T {
        let r = self.call(method, path, body).await;
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }
}

struct Reply {
    status: StatusCode,
    body: String,
}

/// A workspace owned by `owner`, its start build finished (so further builds may be queued).
async fn workspace(server: &Server, b: &Browser, owner: &str, name: &str) -> WorkspaceJson {
    let ws: WorkspaceJson = b
        .json(
            "POST",
            &format!("/api/v2/users/{owner}/workspaces"),
            Some(json!({ "name": name })),
            StatusCode::CREATED,
        )
        .await;
    let build = ws.latest_build.as_ref().unwrap();
    server.state.db.start_build(&build.id).await.unwrap();
    server
        .state
        .db
        .finish_build(&build.id, BuildStatus::Succeeded, None)
        .await
        .unwrap();
    ws
}

#[tokio::test]
async fn oidc_sessions_roles_on_every_route_edge_checks_and_logout() {
    let server = start_server().await;
    let alice = Browser::new(&server, "203.0.113.10");
    let bob = Browser::new(&server, "198.51.100.20");
    alice.login("alice", "alice-password").await;
    bob.login("bob", "bob-password").await;

    let me: UserJson = alice
        .json("GET", "/api/v2/users/me", None, StatusCode::OK)
        .await;
    assert!(me.is_admin, "alice is in platform-admins: {me:?}");
    assert_eq!(me.login_type, "oidc");
    assert_eq!(me.email, "alice@lumie-edu.com");
    let me: UserJson = bob
        .json("GET", "/api/v2/users/me", None, StatusCode::OK)
        .await;
    assert!(!me.is_admin, "bob is a member: {me:?}");

    let aw = workspace(&server, &alice, "me", "aw").await;
    let bw = workspace(&server, &bob, "me", "bw").await;

    // Workspaces: the member sees only his own, the admin everyone's.
    let list: WorkspacesJson = bob
        .json("GET", "/api/v2/workspaces", None, StatusCode::OK)
        .await;
    let names: Vec<_> = list.workspaces.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["bw"]);
    let list: WorkspacesJson = alice
        .json("GET", "/api/v2/workspaces", None, StatusCode::OK)
        .await;
    let mut names: Vec<_> = list.workspaces.iter().map(|w| w.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["aw", "bw"]);

    // Every route: (method, path, body, member's status, admin's status). The member tries the
    // admin's things; the admin tries the member's.
    let a = &aw.id;
    let b = &bw.id;
    let stop = || Some(json!({"transition": "stop"}));
    type Row = (
        &'static str,
        String,
        Option<serde_json::Value>,
        StatusCode,
        String,
        StatusCode,
    );
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/api/v2/buildinfo".into(),
            None,
            StatusCode::OK,
            "/api/v2/buildinfo".into(),
            StatusCode::OK,
        ),
        (
            "GET",
            "/api/v2/users".into(),
            None,
            StatusCode::FORBIDDEN,
            "/api/v2/users".into(),
            StatusCode::OK,
        ),
        (
            "POST",
            "/api/v2/users".into(),
            Some(json!({"username": "carol"})),
            StatusCode::FORBIDDEN,
            "/api/v2/users".into(),
            StatusCode::CREATED,
        ),
        (
            "GET",
            "/api/v2/users/alice".into(),
            None,
            StatusCode::NOT_FOUND,
            "/api/v2/users/bob".into(),
            StatusCode::OK,
        ),
        (
            "POST",
            "/api/v2/users/alice/keys".into(),
            None,
            StatusCode::FORBIDDEN,
            "/api/v2/users/bob/keys".into(),
            StatusCode::CREATED,
        ),
        (
            "POST",
            "/api/v2/users/alice/workspaces".into(),
            Some(json!({"name": "x"})),
            StatusCode::FORBIDDEN,
            "/api/v2/users/bob/workspaces".into(),
            StatusCode::CREATED,
        ),
        (
            "GET",
            "/api/v2/users/alice/workspace/aw".into(),
            None,
            StatusCode::NOT_FOUND,
            "/api/v2/users/bob/workspace/bw".into(),
            StatusCode::OK,
        ),
        (
            "GET",
            format!("/api/v2/workspaces/{a}"),
            None,
            StatusCode::NOT_FOUND,
            format!("/api/v2/workspaces/{b}"),
            StatusCode::OK,
        ),
        (
            "GET",
            format!("/api/v2/workspaces/{a}/builds"),
            None,
            StatusCode::NOT_FOUND,
            format!("/api/v2/workspaces/{b}/builds"),
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v2/workspaces/{a}/builds"),
            stop(),
            StatusCode::NOT_FOUND,
            format!("/api/v2/workspaces/{b}/builds"),
            StatusCode::CREATED,
        ),
        (
            "GET",
            format!("/api/v2/workspaces/{a}/watch"),
            None,
            StatusCode::NOT_FOUND,
            format!("/api/v2/workspaces/{b}/watch"),
            StatusCode::OK,
        ),
        (
            "GET",
            "/api/v2/audit".into(),
            None,
            StatusCode::FORBIDDEN,
            "/api/v2/audit".into(),
            StatusCode::OK,
        ),
        // The app proxy: path-based apps are their owner's only, so another's workspace is
        // "not found" to a member and (without the dangerous setting) to an admin too.
        (
            "GET",
            "/@alice/aw/apps/tilt/".into(),
            None,
            StatusCode::NOT_FOUND,
            "/@bob/bw/apps/tilt/".into(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, member_path, body, member_want, admin_path, admin_want) in rows {
        let r = bob.call(method, &member_path, body.clone()).await;
        assert_eq!(
            r.status, member_want,
            "member {method} {member_path}: {}",
            r.body
        );
        let r = alice.call(method, &admin_path, body).await;
        assert_eq!(
            r.status, admin_want,
            "admin {method} {admin_path}: {}",
            r.body
        );
    }
    // The member's own: allowed (app proxy past authorization to "not running").
    let r = bob.call("GET", "/@bob/bw/apps/tilt/", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let builds: Vec<BuildJson> = bob
        .json(
            "GET",
            &format!("/api/v2/workspaces/{b}/builds"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        builds.len(),
        2,
        "the admin's stop build is on bob's workspace"
    );
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(format!("{}/api/v2/workspaces", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The audit log: the honoured client address (X-Forwarded-For from the trusted proxy),
    // before/after, and the filters.
    let entries: Vec<AuditEntry> = alice
        .json(
            "GET",
            "/api/v2/audit?user=alice&action=build.*",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.action, "build.stop");
    assert_eq!(e.workspace_id.as_deref(), Some(b.as_str()));
    assert_eq!(e.client_ip.as_deref(), Some("203.0.113.10"));
    assert_eq!(e.before.as_deref(), Some("running"));
    assert_eq!(e.after.as_deref(), Some("stopped"));
    let created: Vec<AuditEntry> = alice
        .json(
            "GET",
            "/api/v2/audit?user=bob&action=user.create",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].client_ip.as_deref(), Some("198.51.100.20"));
    assert_eq!(created[0].after.as_deref(), Some("member"));
    let later: Vec<AuditEntry> = alice
        .json(
            "GET",
            "/api/v2/audit?since=2999-01-01T00:00:00Z",
            None,
            StatusCode::OK,
        )
        .await;
    assert!(later.is_empty());
    let r = alice
        .call("GET", "/api/v2/audit?since=yesterday", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Wrong Host: explained (expected and received), counted; probes and pod-facing paths
    // answer as usual.
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let direct = reqwest::Client::builder()
        .resolve("coder.internal", addr)
        .build()
        .unwrap();
    let wrong = |path: &str| format!("http://coder.internal:{}{path}", addr.port());
    let r = direct
        .get(wrong("/api/v2/workspaces"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(&format!("coder.internal:{}", addr.port())),
        "{text}"
    );
    assert!(text.contains(addr.to_string().as_str()), "{text}");
    assert_eq!(server.state.edge.host_guard.mismatches(), 1);
    let metrics = anonymous
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lumie_host_mismatch_requests_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lumie_oidc_logins_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    let ready_right = anonymous
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap()
        .status();
    let ready_wrong = direct.get(wrong("/readyz")).send().await.unwrap().status();
    assert_eq!(ready_wrong, ready_right, "/readyz ignores the Host");
    for path in ["/healthz", "/api/v2/init-script/linux/amd64"] {
        let r = direct.get(wrong(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }

    // A WebSocket to the app proxy from a page of another origin: refused, naming it.
    let r = bob
        .http
        .get(format!("{}/@bob/bw/apps/tilt/ws", server.base))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("evil.example"));
    let r = bob
        .http
        .get(format!("{}/@bob/bw/apps/tilt/ws", server.base))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("origin", &server.base)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "same origin passes the edge (then: not running)"
    );

    // Logout revokes the session: the cookie no longer works even when replayed.
    let r = bob.call("POST", "/api/v2/users/logout", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = bob.call("GET", "/api/v2/workspaces", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = alice.call("GET", "/api/v2/workspaces", None).await;
    assert_eq!(r.status, StatusCode::OK, "alice's session is untouched");

    // An expired session is refused.
    let token = "expired-session-token";
    let alice_id = server
        .state
        .db
        .user_by_name("alice")
        .await
        .unwrap()
        .unwrap()
        .id;
    let now = chrono::Utc::now();
    server
        .state
        .db
        .create_session(&SessionRecord {
            token_hash: lumie_server::db::hash_token(token),
            user_id: alice_id,
            created_at: now - chrono::Duration::hours(25),
            expires_at: now - chrono::Duration::hours(1),
            client_ip: None,
        })
        .await
        .unwrap();
    let r = anonymous
        .get(format!("{}/api/v2/workspaces", server.base))
        .header("cookie", format!("coder_session_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
