//! The app proxy's isolation, in-process through `edge::app` (the router as it listens, edge
//! middleware included) on a real SQLite database, with stand-in apps on loopback sockets; the
//! single-use ticket across two replicas on a real PostgreSQL.
//!
//! Each attack of issue 18 §1 is replayed here and must fail: a `?coder_session_token=` link
//! planting a cookie, another user's path app served on the control plane's origin, a
//! cross-origin or cookie-riding `POST /api/v2/users/me/keys`, app answers planting `Path=/`
//! cookies or a root service worker; and the subdomain mode's tickets and app cookies used
//! twice, late, on another app, or on the API.

mod common;

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use lumie_server::api::{KeyJson, UserJson, WorkspaceJson};
use lumie_server::app_proxy::{APP_SESSION_COOKIE, APP_TICKET_QUERY};
use lumie_server::config::{Config, DatabaseConfig, OidcConfig};
use lumie_server::db::{AuditFilter, Db};
use lumie_server::model::WorkspaceStatus;
use lumie_server::state::AppState;
use lumie_server::status::{ClusterView, PodObservation};
use lumie_server::template::Template;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1";
const ORIGIN: &str = "http://127.0.0.1";
const WILDCARD: &str = "*.apps.test";

struct Stack {
    state: AppState,
    admin: String,
    alice: String,
    alice_id: String,
    bob: String,
    ws: Option<WorkspaceJson>,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    fn location(&self) -> String {
        self.headers
            .get("location")
            .unwrap_or_else(|| panic!("no Location: {} {}", self.status, self.body))
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn rand_byte() -> u8 {
    use rand::Rng;
    rand::rng().random()
}

/// A stand-in app: answers every request with what it saw, and tries to plant cookies (one at
/// `Path=/`, one for a parent `Domain`, one named like the session cookie) and a root service
/// worker scope.
async fn stand_in(ip: &str, port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let cookie = text
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let lower = text.to_lowercase();
                let auth =
                    lower.contains("coder-session-token:") || lower.contains("authorization:");
                let body = format!("app:{port} path={path} cookie=[{cookie}] auth={auth}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nset-cookie: app=1; Path=/\r\nset-cookie: pref=2; Domain=apps.test; Path=/x\r\nset-cookie: coder_session_token=planted; Path=/\r\nservice-worker-allowed: /\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
}

async fn stack_with(edit: impl FnOnce(&mut Config)) -> Stack {
    let (db, dir) = common::sqlite_db().await;
    let mut config = Config::for_tests(dir.path().to_path_buf());
    // OIDC configured (nothing is fetched until a login starts): the sign-in links exist.
    config.oidc = Some(OidcConfig::new(
        "http://127.0.0.1:9/realms/test",
        "coder",
        "secret",
    ));
    edit(&mut config);
    let (_, admin) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    let mut s = Stack {
        state,
        admin,
        alice: String::new(),
        alice_id: String::new(),
        bob: String::new(),
        ws: None,
        _dir: dir,
    };
    let (alice_user, alice) = s.user("alice").await;
    let (_, bob) = s.user("bob").await;
    s.alice = alice;
    s.alice_id = alice_user.id;
    s.bob = bob;
    let r = s
        .send(
            s.req("POST", "/api/v2/users/me/workspaces")
                .header("coder-session-token", &s.alice)
                .header("content-type", "application/json")
                .body(Body::from(r#"{"name":"dev"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    s.ws = Some(serde_json::from_str(&r.body).unwrap());
    // Running, with stand-ins for Tilt and code-server on a pod IP nobody else uses.
    let ip = format!(
        "127.{}.{}.{}",
        100 + rand_byte() % 100,
        rand_byte(),
        1 + rand_byte() % 250
    );
    stand_in(&ip, lumie_contract::apps::TILT.port).await;
    stand_in(&ip, lumie_contract::apps::CODE_SERVER.port).await;
    s.state
        .db
        .set_workspace_status(&s.ws().id, WorkspaceStatus::Running, "")
        .await
        .unwrap();
    s.state.cluster.replace(std::collections::HashMap::from([(
        s.ws().id.clone(),
        ClusterView {
            pod: Some(PodObservation {
                phase: "Running".into(),
                node: Some("worker-1".into()),
                pod_ip: Some(ip),
                ..Default::default()
            }),
            ..Default::default()
        },
    )]));
    s
}

async fn stack() -> Stack {
    stack_with(|_| {}).await
}

impl Stack {
    fn ws(&self) -> &WorkspaceJson {
        self.ws.as_ref().expect("created in stack_with")
    }

    fn req(&self, method: &str, uri: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("host", HOST)
    }

    fn on_host(&self, host: &str, method: &str, uri: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host)
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = lumie_server::edge::app(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).to_string(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Reply {
        let mut b = self.req("GET", uri);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn user(&self, name: &str) -> (UserJson, String) {
        let r = self
            .send(
                self.req("POST", "/api/v2/users")
                    .header("coder-session-token", &self.admin)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        serde_json::json!({ "username": name }).to_string(),
                    ))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let u: UserJson = serde_json::from_str(&r.body).unwrap();
        let r = self
            .send(
                self.req("POST", &format!("/api/v2/users/{name}/keys"))
                    .header("coder-session-token", &self.admin)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let k: KeyJson = serde_json::from_str(&r.body).unwrap();
        (u, k.key)
    }

    async fn audit(&self, action: &str) -> Vec<lumie_server::model::AuditEntry> {
        self.state
            .db
            .audit_query(&AuditFilter {
                action: Some(action.into()),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .unwrap()
    }
}

fn session(token: &str) -> String {
    format!("coder_session_token={token}")
}

#[tokio::test]
async fn query_tokens_never_become_cookies() {
    let s = stack().await;
    for token in ["bogus", s.alice.as_str()] {
        // Signed out, token in the link: nothing set, nothing let through.
        let r = s
            .get(
                &format!("/@alice/dev/apps/tilt/?coder_session_token={token}"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token}: {}", r.body);
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        assert!(
            !r.body.contains("coder_session_token"),
            "no hint: {}",
            r.body
        );
        assert!(!r.body.contains(token), "{}", r.body);
        // The mallory link followed by a signed-in victim: the victim stays the victim.
        let r = s
            .get(
                &format!("/@alice/dev/apps/agents/?coder_session_token={token}"),
                Some(&session(&s.bob)),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    }
    // The owner's own request with a stray token in the query: served, the token not passed on.
    let r = s
        .get(
            &format!("/@alice/dev/apps/tilt/r?x=1&coder_session_token={}", s.bob),
            Some(&session(&s.alice)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("path=/r?x=1 "), "{}", r.body);
    assert!(!r.body.contains(&s.bob));
    assert!(
        r.set_cookies()
            .iter()
            .all(|c| !c.starts_with("coder_session_token")),
        "{:?}",
        r.set_cookies()
    );
}

#[tokio::test]
async fn path_apps_are_served_to_their_owner_only() {
    let s = stack().await;
    let r = s
        .get("/@alice/dev/apps/tilt/", Some(&session(&s.alice)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.starts_with("app:"), "{}", r.body);
    // With the header token (the CLI), too; the app never sees it.
    let r = s
        .send(
            s.req("GET", "/@alice/dev/apps/tilt/")
                .header("coder-session-token", &s.alice)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.ends_with("auth=false"), "{}", r.body);
    // Another member, and an admin, get "not found", exactly as for a missing workspace.
    for token in [&s.bob, &s.admin] {
        for path in [
            "/@alice/dev/apps/tilt/",
            "/@alice/nope/apps/tilt/",
            "/@nobody/dev/apps/tilt/",
        ] {
            let r = s.get(path, Some(&session(token))).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
            assert!(r.body.contains("Workspace not found"), "{}", r.body);
            assert!(!r.body.starts_with("app:"));
        }
    }
    assert!(s.audit("app.admin_access").await.is_empty());
}

#[tokio::test]
async fn the_dangerous_setting_lets_admins_in_and_audits_each_access() {
    let s = stack_with(|c| c.dangerous_allow_path_app_site_owner_access = true).await;
    let r = s
        .get("/@alice/dev/apps/tilt/a", Some(&session(&s.admin)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("path=/a "), "{}", r.body);
    let r = s
        .get("/@alice/dev/apps/tilt/b", Some(&session(&s.admin)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows = s.audit("app.admin_access").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].actor_name, "admin");
    assert_eq!(rows[0].workspace_id.as_deref(), Some(s.ws().id.as_str()));
    assert!(
        rows[0]
            .detail
            .contains("alice/dev tilt GET /@alice/dev/apps/tilt/b"),
        "{rows:?}"
    );
    // Members are still kept out; the owner is not audited.
    let r = s
        .get("/@alice/dev/apps/tilt/", Some(&session(&s.bob)))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    s.get("/@alice/dev/apps/tilt/", Some(&session(&s.alice)))
        .await;
    assert_eq!(s.audit("app.admin_access").await.len(), 2);
}

#[tokio::test]
async fn a_signed_out_visit_links_to_sign_in_and_back() {
    let s = stack().await;
    let r = s.get("/@alice/dev/apps/tilt/r/x?y=1&z=2", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body.contains(
            "href=\"/api/v2/users/oidc/login?redirect=%2F%40alice%2Fdev%2Fapps%2Ftilt%2Fr%2Fx%3Fy%3D1%26z%3D2\""
        ),
        "{}",
        r.body
    );
    // An unknown token in the cookie: the same page.
    let r = s
        .get("/@alice/dev/apps/tilt/", Some("coder_session_token=nope"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("Sign in"), "{}", r.body);
    // Without browser sign-in configured: the page says how else to get in.
    let plain = stack_with(|c| c.oidc = None).await;
    let r = plain.get("/@alice/dev/apps/tilt/", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("Coder-Session-Token header"), "{}", r.body);
    // … and offers the dashboard's sign-in (the token form), coming back to the app.
    assert!(
        r.body
            .contains(r#"href="/login?redirect=%2F%40alice%2Fdev%2Fapps%2Ftilt%2F""#),
        "{}",
        r.body
    );
    assert!(!r.body.contains("oidc/login"), "{}", r.body);
}

#[tokio::test]
async fn app_answers_cannot_plant_cookies_or_workers_outside_the_app() {
    let s = stack().await;
    let cookie = format!(
        "{}; theme=dark; {APP_SESSION_COOKIE}=zzz",
        session(&s.alice)
    );
    let r = s.get("/@alice/dev/apps/tilt/", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.set_cookies(),
        [
            "app=1; Path=/@alice/dev/apps/tilt/",
            "pref=2; Path=/@alice/dev/apps/tilt/x"
        ]
    );
    assert!(!r.headers.contains_key("service-worker-allowed"));
    // The proxy's own cookies never reach the app.
    assert!(r.body.contains("cookie=[theme=dark]"), "{}", r.body);
}

#[tokio::test]
async fn left_over_or_planted_session_cookies_are_refused_and_cleared() {
    let s = stack().await;
    // A victim of the old `?coder_session_token=` link: bob's cookie on `/@alice/dev/`, his own
    // at `/` (the browser sends the longer path first).
    let both = format!("{}; {}", session(&s.bob), session(&s.alice));
    let r = s.get("/@alice/dev/apps/tilt/", Some(&both)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(
        r.body.contains("several coder_session_token cookies"),
        "{}",
        r.body
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("coder_session_token=; Path=/@alice/dev/; Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    let r = s.get("/api/v2/users/me", Some(&both)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

async fn post_key(s: &Stack, headers: &[(&str, &str)]) -> Reply {
    let mut b = s.req("POST", "/api/v2/users/me/keys");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    s.send(b.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn cookie_authenticated_writes_need_the_access_urls_origin() {
    let s = stack().await;
    let cookie = session(&s.alice);
    let cookie = cookie.as_str();
    let cases: &[(&[(&str, &str)], StatusCode)] = &[
        (
            &[("cookie", cookie), ("origin", "https://evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            &[("cookie", cookie), ("origin", "null")],
            StatusCode::FORBIDDEN,
        ),
        (
            &[
                ("cookie", cookie),
                ("origin", "http://tilt--dev--alice.apps.test"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (&[("cookie", cookie)], StatusCode::FORBIDDEN),
        (
            &[("cookie", cookie), ("referer", "https://evil.example/x")],
            StatusCode::FORBIDDEN,
        ),
        (
            &[("cookie", cookie), ("origin", ORIGIN)],
            StatusCode::CREATED,
        ),
        (
            &[
                ("cookie", cookie),
                ("referer", "http://127.0.0.1/workspaces"),
            ],
            StatusCode::CREATED,
        ),
        (&[("coder-session-token", &s.alice)], StatusCode::CREATED),
        (
            &[
                ("coder-session-token", &s.alice),
                ("origin", "https://evil.example"),
            ],
            StatusCode::CREATED,
        ),
    ];
    for (headers, want) in cases {
        let r = post_key(&s, headers).await;
        assert_eq!(r.status, *want, "{headers:?}: {}", r.body);
        if *want == StatusCode::FORBIDDEN {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("cross-site request refused"), "{message}");
            if let Some((_, o)) = headers.iter().find(|(k, _)| *k == "origin") {
                assert!(message.contains(o), "names the Origin: {message}");
            }
        }
    }
    let bearer = format!("Bearer {}", s.alice);
    let r = post_key(&s, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // An admin made to change the policy, or anyone to log out, from another site: refused.
    let admin = session(&s.admin);
    for (method, path) in [("PUT", "/api/v2/policy"), ("POST", "/api/v2/users/logout")] {
        let r = s
            .send(
                s.req(method, path)
                    .header("cookie", &admin)
                    .header("origin", "https://evil.example")
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.body
        );
    }
    let keys = s.audit("token.create").await;
    assert_eq!(
        keys.iter().filter(|e| e.actor_name == "alice").count(),
        5,
        "exactly the allowed requests made keys: {keys:?}"
    );
    // Requests to the app itself are the app's business, not the API's.
    let r = s
        .send(
            s.req("POST", "/@alice/dev/apps/tilt/form")
                .header("cookie", cookie)
                .header("origin", "https://evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

fn app_host(slug: &str) -> String {
    format!("{slug}--dev--alice.apps.test")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let url = openidconnect::url::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Stack {
    /// `auth-redirect` as a signed-in browser: the URL it sends the browser to.
    async fn ticket_url(&self, token: &str, app_url: &str) -> Reply {
        let uri = format!(
            "/api/v2/applications/auth-redirect?redirect_uri={}",
            openidconnect::url::form_urlencoded::byte_serialize(app_url.as_bytes())
                .collect::<String>()
        );
        self.get(&uri, Some(&session(token))).await
    }

    async fn on_app(&self, slug: &str, uri: &str, cookie: Option<&str>) -> Reply {
        let mut b = self.on_host(&app_host(slug), "GET", uri);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }
}

#[tokio::test]
async fn subdomain_apps_enter_with_a_single_use_ticket_bound_to_user_and_app() {
    let s = stack_with(|c| c.wildcard_access_url = Some(WILDCARD.into())).await;
    assert_eq!(s.ws().apps[0].url, "http://tilt--dev--alice.apps.test/");

    // A signed-out browser on the app host goes to the access URL for a ticket…
    let r = s.on_app("tilt", "/r?x=1", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        r.location(),
        "http://127.0.0.1/api/v2/applications/auth-redirect?redirect_uri=http%3A%2F%2Ftilt--dev--alice.apps.test%2Fr%3Fx%3D1"
    );
    // …which, signed out there too, goes to the sign-in and back.
    let r = s
        .get(
            "/api/v2/applications/auth-redirect?redirect_uri=http%3A%2F%2Ftilt--dev--alice.apps.test%2Fr%3Fx%3D1",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        r.location(),
        "/api/v2/users/oidc/login?redirect=%2Fapi%2Fv2%2Fapplications%2Fauth-redirect%3Fredirect_uri%3Dhttp%253A%252F%252Ftilt--dev--alice.apps.test%252Fr%253Fx%253D1"
    );

    // Signed in: a ticket for alice and this app, to the app host.
    let r = s
        .ticket_url(&s.alice, "http://tilt--dev--alice.apps.test/r?x=1")
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let to = r.location();
    assert!(
        to.starts_with("http://tilt--dev--alice.apps.test/r?x=1&"),
        "{to}"
    );
    let ticket = query_param(&to, APP_TICKET_QUERY).unwrap();
    assert!(r.set_cookies().is_empty(), "nothing set on the access URL");

    // The app host exchanges it for its own cookie, and drops it from the URL.
    let uri = format!("/r?x=1&{APP_TICKET_QUERY}={ticket}");
    let r = s.on_app("tilt", &uri, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/r?x=1");
    let set = r.set_cookies();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(
        set[0].starts_with(&format!("{APP_SESSION_COOKIE}=")) && set[0].contains("; Path=/;"),
        "{set:?}"
    );
    assert!(
        set[0].contains("HttpOnly") && !set[0].to_lowercase().contains("domain="),
        "{set:?}"
    );
    let app_cookie = set[0].split(';').next().unwrap().to_string();
    let credential = app_cookie.split_once('=').unwrap().1.to_string();
    assert_ne!(
        credential, s.alice,
        "an app credential, not the session token"
    );
    assert_ne!(credential, ticket);

    // The cookie opens the app (and only the app: its own cookies never reach it).
    let r = s.on_app("tilt", "/r?x=1", Some(&app_cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("path=/r?x=1 cookie=[]"), "{}", r.body);
    // Cookies the app sets stay host-only.
    assert_eq!(r.set_cookies(), ["app=1; Path=/", "pref=2; Path=/x"]);
    assert!(!r.headers.contains_key("service-worker-allowed"));
    // Everything on the app host is the app's, `/api/…` included.
    let r = s
        .on_app("tilt", "/api/v2/users/me", Some(&app_cookie))
        .await;
    assert!(r.body.contains("path=/api/v2/users/me "), "{}", r.body);

    // The same ticket again: refused.
    let r = s.on_app("tilt", &uri, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.set_cookies().is_empty());
    // An expired ticket: refused.
    let late = s
        .state
        .db
        .create_app_ticket(
            &s.alice_id,
            &app_host("tilt").replace(".apps.test", ""),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let r = s
        .on_app("tilt", &format!("/?{APP_TICKET_QUERY}={late}"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.set_cookies().is_empty());
    // A ticket for Tilt on code-server's host: refused.
    let r = s
        .ticket_url(&s.alice, "http://tilt--dev--alice.apps.test/")
        .await;
    let other = query_param(&r.location(), APP_TICKET_QUERY).unwrap();
    let r = s
        .on_app(
            "code-server",
            &format!("/?{APP_TICKET_QUERY}={other}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.set_cookies().is_empty());
    // Tilt's cookie on code-server's host: not signed in there (off for a ticket of its own).
    let r = s.on_app("code-server", "/", Some(&app_cookie)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.location().contains("auth-redirect"), "{}", r.location());
    // The app credential on the access URL's API: worthless, in any form.
    for (name, value) in [
        ("cookie", app_cookie.clone()),
        ("cookie", session(&credential)),
        ("coder-session-token", credential.clone()),
    ] {
        let r = s
            .send(
                s.req("GET", "/api/v2/users/me")
                    .header(name, value.as_str())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.body);
    }
}

#[tokio::test]
async fn subdomain_tickets_only_for_apps_the_caller_may_open() {
    let s = stack_with(|c| c.wildcard_access_url = Some(WILDCARD.into())).await;
    // Bob asking for a ticket into Alice's app: "not found", no ticket.
    let r = s
        .ticket_url(&s.bob, "http://tilt--dev--alice.apps.test/")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.headers.get("location").is_none());
    // Bob's token header on Alice's app host: "not found" as well.
    let r = s
        .send(
            s.on_host(&app_host("tilt"), "GET", "/")
                .header("coder-session-token", &s.bob)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Not an app URL of this server: refused, naming the parameter.
    for bad in [
        "https://evil.example/",
        "http://127.0.0.1/",
        "http://tilt--dev--alice.apps.test.evil.example/",
        "https://tilt--dev--alice.apps.test/",
        "http://nope--dev--alice.apps.test/",
        "/relative",
    ] {
        let r = s.ticket_url(&s.alice, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.body.contains("redirect_uri"), "{}", r.body);
    }
    // Admins may open members' subdomain apps (isolated on their own origin); each entry is
    // audited when the ticket is minted.
    let r = s
        .ticket_url(&s.admin, "http://tilt--dev--alice.apps.test/")
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let rows = s.audit("app.admin_access").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].workspace_id.as_deref(), Some(s.ws().id.as_str()));
    let ticket = query_param(&r.location(), APP_TICKET_QUERY).unwrap();
    let r = s
        .on_app("tilt", &format!("/?{APP_TICKET_QUERY}={ticket}"), None)
        .await;
    let cookie = r.set_cookies()[0].split(';').next().unwrap().to_string();
    let r = s.on_app("tilt", "/", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Path-based apps stay the owner's only in this mode too.
    let r = s
        .get("/@alice/dev/apps/tilt/", Some(&session(&s.admin)))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Without a wildcard, the ticket route says subdomain apps are off.
    let plain = stack().await;
    let r = plain
        .ticket_url(&plain.alice, "http://tilt--dev--alice.apps.test/")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.body.contains("CODER_WILDCARD_ACCESS_URL"), "{}", r.body);
}

#[tokio::test]
async fn a_ticket_is_consumed_once_across_two_replicas_on_postgres() {
    let (db1, url) = common::pg_db_with_url().await;
    let db2 = Db::connect(&DatabaseConfig::Postgres(url)).await.unwrap();
    let user = db1.create_user("alice", "", false).await.unwrap();
    for _ in 0..20 {
        let ticket = db1
            .create_app_ticket(&user.id, "tilt--dev--alice", Duration::from_secs(60))
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            db1.consume_app_ticket(&ticket, "tilt--dev--alice"),
            db2.consume_app_ticket(&ticket, "tilt--dev--alice"),
        );
        let winners = [a.unwrap(), b.unwrap()];
        assert_eq!(
            winners
                .iter()
                .filter(|w| w.as_deref() == Some(user.id.as_str()))
                .count(),
            1,
            "{winners:?}"
        );
        assert_eq!(winners.iter().filter(|w| w.is_none()).count(), 1);
    }
    // App credentials: for their app only, and until they expire.
    let c = db1
        .create_app_session(&user.id, "tilt--dev--alice", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        db2.app_session_user(&c, "tilt--dev--alice")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(user.id.clone())
    );
    assert!(
        db2.app_session_user(&c, "code-server--dev--alice")
            .await
            .unwrap()
            .is_none()
    );
    let expired = db1
        .create_app_session(&user.id, "tilt--dev--alice", Duration::ZERO)
        .await
        .unwrap();
    assert!(
        db2.app_session_user(&expired, "tilt--dev--alice")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db2.token_owner(&c).await.unwrap().is_none(),
        "not an API token"
    );
}
