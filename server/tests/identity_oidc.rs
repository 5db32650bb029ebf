//! OIDC login end to end against a real OpenID provider (`tests/oidc/provider.js`, the npm package
//! `oidc-provider` set up like the Keycloak realm `infra`), driven like a browser: an HTTP client
//! that keeps cookies and follows each redirect by hand, so a test can tamper with the request
//! to the provider or with the response coming back.
//!
//! Each test starts its own provider process and serves `identity::routes` on 127.0.0.1:0 over
//! a fresh SQLite database, plus `/whoami`: the server's authenticator ([`AuthChain`], what every
//! API route asks) on the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::get;
use lumie_server::api::UserJson;
use lumie_server::caller::AuthChain;
use lumie_server::db::Db;
use lumie_server::identity::trusted_proxy::{client_ip_middleware, host_guard_middleware};
use lumie_server::identity::{
    AccessUrl, HostGuard, IdentityOptions, IdentityState, OidcClient, OidcSettings, Role,
    SessionToken, TrustedProxy, routes,
};
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

mod common;
#[path = "common/oidc_provider.rs"]
mod oidc_provider;
use common::StoredSession;
use oidc_provider::{Provider, SECRET, submit_login_form};

/// How a test wants the server set up.
struct Setup {
    server_secret: &'static str,
    provider_env: Vec<(&'static str, &'static str)>,
    allowed_clock_skew: Option<Duration>,
    /// Issuer to configure instead of the provider's (an unreachable one).
    issuer_override: Option<String>,
    proxy: TrustedProxy,
    host_guard: bool,
    /// Bound on logins in progress, instead of the default.
    max_pending_logins: Option<usize>,
    /// A PostgreSQL database (which replicas can share) instead of SQLite.
    postgres: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            server_secret: SECRET,
            provider_env: vec![],
            allowed_clock_skew: None,
            issuer_override: None,
            proxy: TrustedProxy::default(),
            host_guard: false,
            max_pending_logins: None,
            postgres: false,
        }
    }
}

struct Server {
    base: String,
    /// What a replica needs to serve the same login routes (see [`Server::replica`]).
    oidc: Arc<OidcClient>,
    access: AccessUrl,
    state: IdentityState,
    db: Db,
    db_url: String,
    guard: HostGuard,
    provider: Provider,
    _task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A signed-in user: what the server's authenticator makes of the session cookie (`/whoami`),
/// with the OIDC login and display name the login stored.
#[derive(Debug)]
struct Me {
    id: String,
    owner_name: String,
    email: String,
    role: Role,
    /// How the authenticator says the caller proved who they are.
    method: String,
    login: String,
    name: String,
}

impl Server {
    async fn start(setup: Setup) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let access = AccessUrl::parse(&base).unwrap();
        let provider = Provider::start(
            &access.join("/api/v2/users/oidc/callback"),
            &setup.provider_env,
        )
        .await;
        let issuer = setup
            .issuer_override
            .clone()
            .unwrap_or_else(|| provider.issuer.clone());
        let mut settings =
            OidcSettings::new(&issuer, "coder", Some(setup.server_secret), &access).unwrap();
        if let Some(skew) = setup.allowed_clock_skew {
            settings.allowed_clock_skew = skew;
        }
        let oidc = Arc::new(OidcClient::new(settings).unwrap());
        let (db, dir, db_url) = if setup.postgres {
            let (db, url) = common::pg_db_with_url().await;
            (db, tempfile::tempdir().unwrap(), url)
        } else {
            let (db, dir) = common::sqlite_db().await;
            let url = common::sqlite_url(&dir);
            (db, dir, url)
        };
        let mut options = IdentityOptions::new(access.clone());
        options.proxy = setup.proxy.clone();
        if let Some(max) = setup.max_pending_logins {
            options.max_pending_logins = max;
        }
        let state = IdentityState::new(oidc.clone(), db.clone(), options);
        let guard = HostGuard::new(access.clone());

        let auth = AuthChain::api_tokens(db.clone());
        let mut app = Router::new()
            .route("/", get(|| async { "home" }))
            .route(
                "/whoami",
                get(move |req: Request| {
                    let auth = auth.clone();
                    async move {
                        let (parts, _) = req.into_parts();
                        match auth.authenticate(&parts).await {
                            Ok(p) => axum::Json(serde_json::json!({
                                "user": UserJson::from(&p.user),
                                "method": format!("{:?}", p.method),
                            }))
                            .into_response(),
                            Err(e) => e.into_response(),
                        }
                    }
                }),
            )
            .merge(routes(state.clone()));
        if setup.host_guard {
            app = app.layer(axum::middleware::from_fn_with_state(
                guard.clone(),
                host_guard_middleware,
            ));
        }
        let app = app.layer(axum::middleware::from_fn_with_state(
            Arc::new(setup.proxy),
            client_ip_middleware,
        ));
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Server {
            base,
            oidc,
            access,
            state,
            db_url,
            db,
            guard,
            provider,
            _task: task,
            _dir: dir,
        }
    }

    /// Another replica of this server: the same access URL, provider client and database, its
    /// own process state (login store), serving the login routes on its own port.
    async fn replica(&self) -> (String, IdentityState, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let db = Db::connect(&lumie_server::config::DatabaseConfig::Postgres(
            self.db_url.clone(),
        ))
        .await
        .unwrap();
        let state = IdentityState::new(
            self.oidc.clone(),
            db,
            IdentityOptions::new(self.access.clone()),
        );
        let app = routes(state.clone()).layer(axum::middleware::from_fn_with_state(
            Arc::new(TrustedProxy::default()),
            client_ip_middleware,
        ));
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        (base, state, task)
    }

    /// The browser sessions stored, oldest first.
    async fn sessions(&self) -> Vec<StoredSession> {
        common::stored_sessions(&self.db_url).await
    }

    /// How many users exist.
    async fn user_count(&self) -> usize {
        self.db.list_users().await.unwrap().len()
    }

    /// Who the browser is signed in as; panics unless it is.
    async fn me(&self, browser: &Browser) -> Me {
        let (status, me) = browser.whoami(self).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        let user: UserJson = serde_json::from_value(me["user"].clone()).unwrap();
        let (login, name) = common::stored_oidc_names(&self.db_url, &user.id).await;
        Me {
            role: if user.is_admin {
                Role::Admin
            } else {
                Role::Member
            },
            method: me["method"].as_str().unwrap().to_string(),
            id: user.id,
            owner_name: user.username,
            email: user.email,
            login,
            name,
        }
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.base)).unwrap()
    }
}

/// A browser: keeps cookies (for the server and the provider alike), follows nothing by itself.
struct Browser {
    http: reqwest::Client,
}

impl Browser {
    fn new() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, url: &Url) -> reqwest::Response {
        self.http
            .get(url.clone())
            .header("accept", "text/html")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Starts a login at the server: the provider's authorization URL it redirects to.
    async fn start_login(&self, server: &Server, path: &str) -> Url {
        let url = server.url(path);
        let r = self.get(&url).await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "{url}: {}",
            r.text().await.unwrap()
        );
        location(&url, &r)
    }

    /// At the provider: authorization request, login form, resume; returns the callback URL the
    /// provider sends the browser to (not yet followed).
    async fn sign_in_at_provider(&self, authorize: Url, user: &str, password: &str) -> Url {
        let r = self.get(&authorize).await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "authorize: {}",
            r.text().await.unwrap()
        );
        let form_page = location(&authorize, &r);
        let r = self.get(&form_page).await;
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        let (action, r) = submit_login_form(&self.http, &form_page, &html, user, password).await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "login form: {}",
            r.text().await.unwrap()
        );
        let resume = location(&action, &r);
        let r = self.get(&resume).await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "resume: {}",
            r.text().await.unwrap()
        );
        location(&resume, &r)
    }

    /// A whole login up to the callback URL.
    async fn login_until_callback(&self, server: &Server, user: &str, password: &str) -> Url {
        let authorize = self.start_login(server, "/api/v2/users/oidc/login").await;
        self.sign_in_at_provider(authorize, user, password).await
    }

    async fn whoami(&self, server: &Server) -> (StatusCode, serde_json::Value) {
        let r = self.get(&server.url("/whoami")).await;
        (r.status(), r.json().await.unwrap())
    }
}

fn location(base: &Url, r: &reqwest::Response) -> Url {
    let loc = r
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location from {base}"))
        .to_str()
        .unwrap();
    base.join(loc).unwrap()
}

fn with_query_param(url: &Url, name: &str, value: &str) -> Url {
    let mut out = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

fn query_param(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// Follows the callback; asserts it refused with `status` and a page naming `kind` and `words`.
async fn assert_refused(
    browser: &Browser,
    callback: &Url,
    status: StatusCode,
    kind: &str,
    words: &[&str],
) {
    let r = browser.get(callback).await;
    let got = r.status();
    let set_cookies: Vec<String> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let page = r.text().await.unwrap();
    assert_eq!(got, status, "{page}");
    assert!(
        page.contains(&format!("<code id=\"kind\">{kind}</code>")),
        "{kind}: {page}"
    );
    for w in words {
        assert!(page.contains(w), "{w:?} not in {page}");
    }
    assert!(
        !set_cookies
            .iter()
            .any(|c| c.starts_with("coder_session_token=")),
        "no session cookie on a refusal: {set_cookies:?}"
    );
}

/// Signs a user in completely; returns who the server then takes the browser for.
async fn login(server: &Server, browser: &Browser, user: &str, password: &str) -> Me {
    let callback = browser.login_until_callback(server, user, password).await;
    let r = browser.get(&callback).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(location(&callback, &r).path(), "/");
    server.me(browser).await
}

#[tokio::test]
async fn admin_and_member_login_with_session_cookie_and_logout() {
    let server = Server::start(Setup::default()).await;

    // Alice: platform-admins -> admin. Look at the callback answer in detail.
    let alice = Browser::new();
    let callback = alice
        .login_until_callback(&server, "alice", "alice-password")
        .await;
    assert!(callback.as_str().starts_with(&server.base), "{callback}");
    assert_eq!(query_param(&callback, "iss"), server.provider.issuer);
    let r = alice.get(&callback).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&callback, &r).as_str(), server.url("/").as_str());
    let cookies: Vec<String> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("coder_session_token="))
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=86400"] {
        assert!(session_cookie.contains(attr), "{attr} in {session_cookie}");
    }
    assert!(
        !session_cookie.contains("Secure"),
        "http access URL: no Secure"
    );
    assert!(!session_cookie.contains("Domain"), "host-only");
    assert!(
        cookies.iter().any(|c| c.starts_with("lumie_oidc_state=;")),
        "login cookie cleared: {cookies:?}"
    );
    let token = session_cookie
        .trim_start_matches("coder_session_token=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Only the hash is stored, with the client address of the login.
    let stored = server.sessions().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].token_hash, SessionToken::presented(&token).hash());
    assert_ne!(stored[0].token_hash, token);
    assert_eq!(stored[0].client_ip.as_deref(), Some("127.0.0.1"));

    let user = server.me(&alice).await;
    assert_eq!(user.method, "OidcSession");
    assert_eq!(user.login, "alice");
    assert_eq!(user.owner_name, "alice");
    assert_eq!(user.email, "alice@lumie-edu.com");
    assert_eq!(user.name, "Alice Admin");
    assert_eq!(user.role, Role::Admin);
    assert_eq!(stored[0].user_id, user.id);

    // Everyone else, each in their own browser.
    let cases = [
        ("bob", "bob-password", Role::Member, "bob"),
        ("dave", "dave-password", Role::Admin, "dave"),
        ("erin", "erin-password", Role::Member, "erin"),
    ];
    for (login_name, password, role, owner) in cases {
        let u = login(&server, &Browser::new(), login_name, password).await;
        assert_eq!(
            (u.role, u.owner_name.as_str()),
            (role, owner),
            "{login_name}"
        );
    }
    let jane = login(&server, &Browser::new(), "Jane.Doe", "jane-password").await;
    assert_eq!(jane.role, Role::Member);
    assert_eq!(
        jane.owner_name,
        lumie_contract::naming::owner_name_for_login("Jane.Doe")
    );
    assert!(
        jane.owner_name.starts_with("jane-doe-"),
        "{}",
        jane.owner_name
    );
    assert_eq!(server.user_count().await, 5);

    // A second login of the same account is the same user, with a second session.
    let again = login(&server, &Browser::new(), "alice", "alice-password").await;
    assert_eq!(again.id, user.id);
    assert_eq!(server.user_count().await, 5);
    assert_eq!(server.state.login_results("ok"), 6);

    // A wrong password stays at the provider's form; nothing reaches the server.
    let stranger = Browser::new();
    let authorize = stranger
        .start_login(&server, "/api/v2/users/oidc/login")
        .await;
    let page = stranger.get(&authorize).await;
    let form_page = location(&authorize, &page);
    let html = stranger.get(&form_page).await.text().await.unwrap();
    assert!(html.contains("<form"), "{html}");
    let (_, r) = submit_login_form(&stranger.http, &form_page, &html, "alice", "guess").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Invalid username or password")
    );

    // Logout revokes the session: the browser's cookie is cleared, and the old token is dead.
    let r = alice
        .http
        .post(server.url("/api/v2/users/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cleared = r
        .headers()
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cleared.starts_with("coder_session_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let (status, body) = alice.whoami(&server).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let replay = reqwest::Client::new()
        .get(server.url("/whoami"))
        .header("cookie", format!("coder_session_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(
        body["message"], "invalid or expired session token",
        "{body}"
    );
    // Revoked means gone.
    assert!(
        !server
            .sessions()
            .await
            .iter()
            .any(|s| s.token_hash == SessionToken::presented(&token).hash())
    );
}

#[tokio::test]
async fn login_returns_to_the_requested_local_page_only() {
    let server = Server::start(Setup::default()).await;
    for (path, want) in [
        ("/api/v2/users/oidc/login?redirect=/@bob/ws", "/@bob/ws"),
        (
            "/api/v2/users/oidc/login?redirect=https://evil.example/",
            "/",
        ),
        // The app proxy's sign-in links: back to the app page, query included, or to the
        // subdomain ticket route; a foreign or scheme-relative one is refused.
        (
            "/api/v2/users/oidc/login?redirect=%2F%40bob%2Fws%2Fapps%2Ftilt%2Fr%2Fx%3Fy%3D1%26z%3D2",
            "/@bob/ws/apps/tilt/r/x?y=1&z=2",
        ),
        (
            "/api/v2/users/oidc/login?redirect=%2Fapi%2Fv2%2Fapplications%2Fauth-redirect%3Fredirect_uri%3Dhttp%253A%252F%252Ftilt--ws--bob.apps.test%252F",
            "/api/v2/applications/auth-redirect?redirect_uri=http%3A%2F%2Ftilt--ws--bob.apps.test%2F",
        ),
        (
            "/api/v2/users/oidc/login?redirect=%2F%2Fevil.example%2F",
            "/",
        ),
    ] {
        let b = Browser::new();
        let authorize = b.start_login(&server, path).await;
        let callback = b
            .sign_in_at_provider(authorize, "bob", "bob-password")
            .await;
        let r = b.get(&callback).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let to = location(&callback, &r);
        assert_eq!(to.origin(), callback.origin(), "{path}: same origin");
        let got = match to.query() {
            Some(q) => format!("{}?{q}", to.path()),
            None => to.path().to_string(),
        };
        assert_eq!(got, want, "{path}");
    }
}

#[tokio::test]
async fn tampered_state_is_refused_and_the_real_one_still_works() {
    let server = Server::start(Setup::default()).await;
    let b = Browser::new();
    let callback = b.login_until_callback(&server, "bob", "bob-password").await;
    let tampered = with_query_param(&callback, "state", "attacker-chosen-state");
    assert_refused(
        &b,
        &tampered,
        StatusCode::BAD_REQUEST,
        "state_mismatch",
        &["tampered state"],
    )
    .await;
    // The same callback in a browser that did not start the login (login CSRF).
    let other = Browser::new();
    assert_refused(
        &other,
        &callback,
        StatusCode::BAD_REQUEST,
        "state_mismatch",
        &["another browser"],
    )
    .await;
    // Neither attempt used up the genuine login.
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(b.whoami(&server).await.0, StatusCode::OK);
    assert_eq!(server.state.login_results("state_mismatch"), 2);
}

#[tokio::test]
async fn replayed_code_is_refused() {
    let server = Server::start(Setup::default()).await;
    let b = Browser::new();
    let first = login(&server, &b, "alice", "alice-password").await;
    assert_eq!(first.role, Role::Admin);
    // The login response again, as is.
    let callback = Browser::new();
    let url = callback
        .login_until_callback(&server, "bob", "bob-password")
        .await;
    assert_eq!(callback.get(&url).await.status(), StatusCode::SEE_OTHER);
    assert_refused(
        &callback,
        &url,
        StatusCode::BAD_REQUEST,
        "replayed_callback",
        &["replayed authorization code"],
    )
    .await;
    // The used code under a fresh login's state: our checks pass, the provider refuses the code.
    let authorize = callback
        .start_login(&server, "/api/v2/users/oidc/login")
        .await;
    let fresh_state = query_param(&authorize, "state");
    let replay = with_query_param(&url, "state", &fresh_state);
    assert_refused(
        &callback,
        &replay,
        StatusCode::BAD_REQUEST,
        "code_rejected",
        &["invalid_grant", "already used (replayed code)"],
    )
    .await;
    assert_eq!(server.sessions().await.len(), 2);
}

/// Two replicas on one PostgreSQL: a login begun on one completes on the other (the callback
/// reaching the replica that did not start it), once: the same callback again, on either
/// replica, is a replayed callback.
#[tokio::test]
async fn a_login_begun_on_one_replica_completes_on_another_once() {
    let a = Server::start(Setup {
        postgres: true,
        ..Setup::default()
    })
    .await;
    let (b_base, b_state, _b) = a.replica().await;
    let browser = Browser::new();
    let callback = browser
        .login_until_callback(&a, "alice", "alice-password")
        .await;
    let on_b = Url::parse(&format!(
        "{b_base}{}?{}",
        callback.path(),
        callback.query().unwrap()
    ))
    .unwrap();
    let r = browser.get(&on_b).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "callback on the other replica: {}",
        r.text().await.unwrap()
    );
    assert_eq!(location(&on_b, &r).path(), "/");
    assert_eq!(b_state.pending_logins(), 0, "B never held the login itself");
    let me = a.me(&browser).await;
    assert_eq!(me.login, "alice");
    assert_eq!(b_state.login_results("ok"), 1);
    for (replica, url) in [("B", &on_b), ("A", &callback)] {
        let again = Browser::new();
        // The browser's login cookie came back with the first try; a replay carries it too.
        let state = query_param(url, "state");
        let cookie = format!("lumie_oidc_state={state}");
        let r = again
            .http
            .get(url.clone())
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "replay on {replica}");
        let page = r.text().await.unwrap();
        assert!(
            page.contains("<code id=\"kind\">replayed_callback</code>"),
            "replay on {replica}: {page}"
        );
    }
    assert_eq!(a.sessions().await.len(), 1, "one session from one login");
}

#[tokio::test]
async fn wrong_nonce_is_refused() {
    let server = Server::start(Setup::default()).await;
    let b = Browser::new();
    let authorize = b.start_login(&server, "/api/v2/users/oidc/login").await;
    let sent_nonce = query_param(&authorize, "nonce");
    assert!(sent_nonce.len() >= 16, "random nonce: {sent_nonce}");
    assert_eq!(query_param(&authorize, "code_challenge_method"), "S256");
    let injected = with_query_param(&authorize, "nonce", "nonce-of-another-login");
    let callback = b
        .sign_in_at_provider(injected, "alice", "alice-password")
        .await;
    assert_refused(
        &b,
        &callback,
        StatusCode::BAD_REQUEST,
        "wrong_nonce",
        &["wrong nonce"],
    )
    .await;
    assert!(server.sessions().await.is_empty());
    assert_eq!(server.user_count().await, 0);
}

#[tokio::test]
async fn clock_skew_makes_tokens_look_expired_or_not_yet_valid_and_says_so() {
    // The provider's clock is 15 minutes behind: its 5-minute ID tokens expired 10 minutes ago.
    let server = Server::start(Setup {
        provider_env: vec![("OIDC_CLOCK_SKEW_SECS", "-900")],
        ..Setup::default()
    })
    .await;
    let b = Browser::new();
    let callback = b
        .login_until_callback(&server, "alice", "alice-password")
        .await;
    assert_refused(
        &b,
        &callback,
        StatusCode::BAD_GATEWAY,
        "clock_skew_expired",
        &["looks expired", "allowed clock skew of 60s", "NTP"],
    )
    .await;

    // 15 minutes ahead: issued in the future.
    server.provider.admin("/clock-skew?seconds=900").await;
    let b = Browser::new();
    let callback = b
        .login_until_callback(&server, "alice", "alice-password")
        .await;
    assert_refused(
        &b,
        &callback,
        StatusCode::BAD_GATEWAY,
        "clock_skew_not_yet_valid",
        &["not yet valid", "allowed clock skew of 60s"],
    )
    .await;
    assert!(server.sessions().await.is_empty());
}

#[tokio::test]
async fn allowed_clock_skew_is_configurable() {
    let server = Server::start(Setup {
        provider_env: vec![("OIDC_CLOCK_SKEW_SECS", "-900")],
        allowed_clock_skew: Some(Duration::from_secs(1200)),
        ..Setup::default()
    })
    .await;
    let user = login(&server, &Browser::new(), "bob", "bob-password").await;
    assert_eq!(user.role, Role::Member);
}

#[tokio::test]
async fn rotated_signing_key_is_fetched_and_accepted() {
    let server = Server::start(Setup::default()).await;
    login(&server, &Browser::new(), "alice", "alice-password").await;
    let oidc = server.state.oidc();
    let before = oidc.key_ids().await;
    assert_eq!(before.len(), 1);
    assert_eq!(oidc.jwks_fetches(), 1);

    let rotated = server.provider.admin("/rotate-keys").await;
    let kids: Vec<String> = serde_json::from_value(rotated["kids"].clone()).unwrap();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], before[0], "old key still published");
    let new_kid = kids[0].clone();
    assert!(!before.contains(&new_kid));

    // The next token is signed with the new key: unknown to the cache, so the JWKS is fetched again.
    let bob = login(&server, &Browser::new(), "bob", "bob-password").await;
    assert_eq!(bob.role, Role::Member);
    assert!(oidc.key_ids().await.contains(&new_kid));
    assert_eq!(oidc.jwks_fetches(), 2);
    // And no more fetches while the key is known.
    login(&server, &Browser::new(), "dave", "dave-password").await;
    assert_eq!(oidc.jwks_fetches(), 2);
}

#[tokio::test]
async fn wrong_client_secret_is_named() {
    let server = Server::start(Setup {
        server_secret: "not-the-secret-the-realm-has",
        ..Setup::default()
    })
    .await;
    let b = Browser::new();
    let callback = b
        .login_until_callback(&server, "alice", "alice-password")
        .await;
    assert_refused(
        &b,
        &callback,
        StatusCode::BAD_GATEWAY,
        "wrong_client_secret",
        &[
            "invalid_client",
            "coder-oidc-secret",
            "CODER_OIDC_CLIENT_SECRET",
        ],
    )
    .await;
    assert_eq!(server.state.login_results("wrong_client_secret"), 1);
}

#[tokio::test]
async fn unreachable_issuer_is_named() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{dead_port}/realms/infra");
    let server = Server::start(Setup {
        issuer_override: Some(issuer.clone()),
        ..Setup::default()
    })
    .await;
    let r = Browser::new()
        .get(&server.url("/api/v2/users/oidc/login"))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let page = r.text().await.unwrap();
    assert!(page.contains("issuer_unreachable"), "{page}");
    assert!(page.contains("does not answer"), "{page}");
    assert!(page.contains(&issuer), "{page}");
}

/// The browser is signed in, and its one session was recorded with client address `ip`.
async fn server_signed_in_from(server: &Server, b: &Browser, ip: &str) {
    let me = server.me(b).await;
    let sessions = server.sessions().await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].user_id, me.id);
    assert_eq!(sessions[0].client_ip.as_deref(), Some(ip));
}

#[tokio::test]
async fn forwarded_client_ip_only_from_trusted_proxy_and_wrong_host_explained() {
    // The peer (127.0.0.1) is not a trusted proxy: a forged X-Forwarded-For is ignored.
    let untrusted = Server::start(Setup {
        proxy: TrustedProxy::new(&["X-Forwarded-For".into()], &["10.0.0.0/8".into()]).unwrap(),
        host_guard: true,
        ..Setup::default()
    })
    .await;
    let b = Browser::new();
    let callback = b
        .login_until_callback(&untrusted, "bob", "bob-password")
        .await;
    let r = b
        .http
        .get(callback)
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    server_signed_in_from(&untrusted, &b, "127.0.0.1").await;

    // A wrong Host is refused with both hosts named, counted, and probes are not affected.
    let expected = untrusted.base.trim_start_matches("http://").to_string();
    let r = reqwest::Client::new()
        .get(untrusted.url("/whoami"))
        .header("host", "coder.coder.svc.cluster.local")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("<h1>Request refused</h1>"), "{page}");
    assert!(page.contains("coder.coder.svc.cluster.local"), "{page}");
    assert!(page.contains(&expected), "{page}");
    assert_eq!(untrusted.guard.mismatches(), 1);

    // Loopback is the trusted proxy here: the header is believed.
    let trusted = Server::start(Setup {
        proxy: TrustedProxy::new(&["X-Forwarded-For".into()], &["127.0.0.0/8".into()]).unwrap(),
        ..Setup::default()
    })
    .await;
    let b = Browser::new();
    let callback = b
        .login_until_callback(&trusted, "bob", "bob-password")
        .await;
    let r = b
        .http
        .get(callback)
        .header("x-forwarded-for", "198.51.100.23")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    server_signed_in_from(&trusted, &b, "198.51.100.23").await;
}

#[tokio::test]
async fn provider_login_hint_signs_in_without_the_form() {
    // The test provider's non-interactive path (documented in tests/oidc/provider.js), which
    // other end-to-end tests use to log a user in without parsing the form.
    let server = Server::start(Setup::default()).await;
    let b = Browser::new();
    let authorize = b.start_login(&server, "/api/v2/users/oidc/login").await;
    let mut hinted = authorize.clone();
    hinted.query_pairs_mut().append_pair("login_hint", "dave");
    let mut url = hinted;
    let mut hops = 0;
    while !url.as_str().starts_with(&server.base) {
        let r = b.get(&url).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{url}: no form expected");
        url = location(&url, &r);
        hops += 1;
        assert!(hops < 10, "too many redirects");
    }
    let r = b.get(&url).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let me = server.me(&b).await;
    assert_eq!(me.login, "dave");
    assert_eq!(me.role, Role::Admin);
}

/// Starts `n` logins as fast as a few connections allow, each from the address `client(i)`
/// names (the server trusts loopback's X-Forwarded-For here); every one must be redirected to
/// the provider, i.e. no login is ever refused.
async fn flood_logins(server: &Server, n: usize, client: impl Fn(usize) -> String) {
    use futures::StreamExt;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let url = server.url("/api/v2/users/oidc/login");
    let statuses: Vec<StatusCode> = futures::stream::iter(0..n)
        .map(|i| {
            let request = http
                .get(url.clone())
                .header("x-forwarded-for", client(i))
                .send();
            async move { request.await.unwrap().status() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::SEE_OTHER),
        "every flooding login start is answered like a real one"
    );
}

#[tokio::test]
async fn login_flood_cannot_lock_real_users_out_and_memory_stays_bounded() {
    let server = Server::start(Setup {
        proxy: TrustedProxy::new(&["X-Forwarded-For".into()], &["127.0.0.0/8".into()]).unwrap(),
        ..Setup::default()
    })
    .await;
    // Alice starts signing in (from 127.0.0.1, no forwarding header) before the flood.
    let alice = Browser::new();
    let alice_authorize = alice.start_login(&server, "/api/v2/users/oidc/login").await;

    // 10,000 unauthenticated login starts from one address: only its own logins are displaced.
    flood_logins(&server, 10_000, |_| "203.0.113.7".into()).await;
    let kept = server.state.pending_logins();
    assert!(
        kept <= 1 + lumie_server::identity::routes::DEFAULT_MAX_PENDING_LOGINS_PER_CLIENT,
        "one address holds at most its own small share: {kept} kept"
    );

    // Alice's login, started before, finishes; Bob's, started after, too.
    let callback = alice
        .sign_in_at_provider(alice_authorize, "alice", "alice-password")
        .await;
    let r = alice.get(&callback).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(server.me(&alice).await.login, "alice");
    let bob = login(&server, &Browser::new(), "bob", "bob-password").await;
    assert_eq!(bob.login, "bob");
}

#[tokio::test]
async fn login_flood_from_many_addresses_evicts_the_oldest_and_new_logins_still_work() {
    let server = Server::start(Setup {
        proxy: TrustedProxy::new(&["X-Forwarded-For".into()], &["127.0.0.0/8".into()]).unwrap(),
        max_pending_logins: Some(500),
        ..Setup::default()
    })
    .await;
    // 2,000 starts, each from its own address: the store keeps the newest 500.
    flood_logins(&server, 2_000, |i| {
        format!("10.1.{}.{}", i / 250, i % 250 + 1)
    })
    .await;
    assert_eq!(server.state.pending_logins(), 500);
    // A real login started now is not refused and completes.
    let erin = login(&server, &Browser::new(), "erin", "erin-password").await;
    assert_eq!(erin.login, "erin");
    assert!(server.state.pending_logins() <= 500);
}
