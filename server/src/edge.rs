//! Identity wired into the server: the OIDC login state built from [`Config`] over the database,
//! and the edge in front of every route (client address through the trusted proxy,
//! `Host`/WebSocket `Origin` checks, subdomain app hosts to the app proxy, and the cross-site
//! check of cookie-authenticated API writes).
//!
//! [`app`] is what `serve` listens with: [`crate::router`] plus the login routes when OIDC is
//! configured, wrapped in the edge middleware. Tests drive it like the real server.
//!
//! The cross-site check ([`cross_site_check`]) is middleware here rather than in
//! [`crate::caller`]: it must cover every state-changing route under `/api/`, including the
//! login routes' logout, which does not go through the [`crate::caller::Principal`] extractor,
//! and it refuses before any handler reads the body. Whether the credential is a cookie is read
//! from the same headers the authenticator reads ([`crate::caller::header_token`] first).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http::Method;
use openidconnect::url::Url;
use prometheus_client::registry::Registry;

use crate::caller::{SESSION_COOKIE, header_token};
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::identity::sessions::cookie_value;
use crate::identity::trusted_proxy::{
    AppHost, WildcardHost, client_ip_middleware, host_guard_middleware,
};
use crate::identity::{
    AccessUrl, HostGuard, IdentityOptions, IdentityState, OidcClient, TrustedProxy,
};
use crate::state::AppState;

/// Paths reached by pods at the in-cluster URL (agent API, agent download, init script) and by
/// probes and Prometheus: they are not browser-facing and arrive with another `Host`.
pub const HOST_EXEMPT_PREFIXES: &[&str] =
    &["/api/v2/workspaceagents/", "/bin/", "/api/v2/init-script/"];

/// The edge settings every request passes through.
#[derive(Clone)]
pub struct Edge {
    /// The access URL.
    pub access_url: AccessUrl,
    /// Subdomain app hosts (`CODER_WILDCARD_ACCESS_URL`), when configured.
    pub wildcard: Option<WildcardHost>,
    /// Whose forwarding headers to believe.
    pub proxy: Arc<TrustedProxy>,
    /// `Host` / WebSocket `Origin` check for browser-facing routes.
    pub host_guard: HostGuard,
    /// OIDC login, when configured.
    pub identity: Option<IdentityState>,
}

impl Edge {
    /// Builds the edge from the config; errors name the setting. Nothing is fetched here.
    pub fn new(config: &Config, db: &Db) -> Result<Edge> {
        let access_url = AccessUrl::parse(&config.access_url)?;
        let wildcard = config
            .wildcard_access_url
            .as_deref()
            .map(|w| WildcardHost::parse(w, &access_url))
            .transpose()?;
        let proxy =
            TrustedProxy::new(&config.proxy_trusted_headers, &config.proxy_trusted_origins)?;
        let host_guard = HostGuard::new(access_url.clone())
            .exempt(HOST_EXEMPT_PREFIXES)
            .with_wildcard(wildcard.clone());
        let identity = match &config.oidc {
            None => None,
            Some(oidc) => {
                let client = OidcClient::new(oidc.settings(&access_url)?)?;
                let mut options = IdentityOptions::new(access_url.clone());
                options.roles = oidc.roles();
                options.proxy = proxy.clone();
                Some(IdentityState::new(Arc::new(client), db.clone(), options))
            }
        };
        Ok(Edge {
            access_url,
            wildcard,
            proxy: Arc::new(proxy),
            host_guard,
            identity,
        })
    }

    /// Registers the login and Host-mismatch counters.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.host_guard.register_metrics(registry);
        if let Some(identity) = &self.identity {
            identity.register_metrics(registry);
        }
    }
}

/// What [`cross_site_check`] looks at, taken from the request.
#[derive(Clone, Copy, Debug)]
pub struct WriteRequest<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path.
    pub path: &'a str,
    /// A `Coder-Session-Token` or `Authorization: Bearer` header is present.
    pub token_header: bool,
    /// The session cookie is present.
    pub session_cookie: bool,
    /// `Origin`, when sent.
    pub origin: Option<&'a str>,
    /// `Referer`, when sent.
    pub referer: Option<&'a str>,
}

/// Whether a request may change state: GET/HEAD/OPTIONS, paths outside `/api/` (the app proxy's
/// requests to the app itself) and requests authenticated by a token header pass; a request
/// riding on the session cookie needs the access URL's `Origin`, or without one a `Referer` of
/// that origin. The refusal names the reason.
pub fn cross_site_check(
    access: &AccessUrl,
    r: &WriteRequest<'_>,
) -> std::result::Result<(), String> {
    if matches!(*r.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || !r.path.starts_with("/api/")
        || r.token_header
        || !r.session_cookie
    {
        return Ok(());
    }
    let expected = access.origin();
    let why = match (r.origin, r.referer) {
        (Some(o), _) if access.matches_origin(o) => return Ok(()),
        (Some(o), _) => format!("its Origin {o:?} is not {expected}"),
        (None, Some(referer)) => match Url::parse(referer) {
            Ok(u) if access.matches_origin(&u.origin().ascii_serialization()) => return Ok(()),
            _ => format!("it has no Origin and its Referer {referer:?} is not on {expected}"),
        },
        (None, None) => "it has neither an Origin nor a Referer header".to_string(),
    };
    Err(format!(
        "cross-site request refused: {} {} is authenticated by the session cookie, but {why}; \
         CLIs and scripts send the token in a Coder-Session-Token header instead",
        r.method, r.path
    ))
}

/// Middleware applying [`cross_site_check`]: a refusal is a 403 in the API's JSON error shape.
async fn cross_site_middleware(
    State(access): State<AccessUrl>,
    req: Request,
    next: Next,
) -> Response {
    let h = req.headers();
    let verdict = cross_site_check(
        &access,
        &WriteRequest {
            method: req.method(),
            path: req.uri().path(),
            token_header: header_token(h).is_some_and(|t| !t.is_empty()),
            session_cookie: cookie_value(h, SESSION_COOKIE).is_some(),
            origin: h
                .get(http::header::ORIGIN)
                .map(|v| v.to_str().unwrap_or("")),
            referer: h
                .get(http::header::REFERER)
                .map(|v| v.to_str().unwrap_or("")),
        },
    );
    match verdict {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::warn!(path = %req.uri().path(), reason = %why, "request refused at the edge");
            Error::Forbidden(why).into_response()
        }
    }
}

/// Middleware: a request the Host guard marked as a subdomain app host ([`AppHost`]) goes to
/// the app proxy and never to the API routes.
async fn app_host_middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match req.extensions().get::<AppHost>().cloned() {
        Some(AppHost(label)) => crate::app_proxy::subdomain(state, label, req).await,
        None => next.run(req).await,
    }
}

/// The server's whole HTTP surface as it listens: the API router, the OIDC login routes when
/// configured, the cross-site check of cookie-authenticated writes, subdomain app hosts to the
/// app proxy, the `Host`/`Origin` guard (probes, metrics and pod-facing paths exempt), and
/// outermost the client address resolution. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: AppState) -> Router {
    let edge = state.edge.clone();
    let mut router = crate::router(state.clone());
    if let Some(identity) = &edge.identity {
        router = router.merge(crate::identity::routes(identity.clone()));
    }
    router
        .layer(from_fn_with_state(
            edge.access_url.clone(),
            cross_site_middleware,
        ))
        .layer(from_fn_with_state(state, app_host_middleware))
        .layer(from_fn_with_state(
            edge.host_guard.clone(),
            host_guard_middleware,
        ))
        .layer(from_fn_with_state(edge.proxy.clone(), client_ip_middleware))
}

/// Serves [`app`] on a bound listener until the task is dropped. Connections get TCP_NODELAY:
/// a terminal's keystroke echo or an SSH packet must not wait for the previous one's ACK.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_until(listener, state, std::future::pending()).await
}

/// [`serve`] until `shutdown` completes: then no new connection is accepted and the call returns
/// once every open connection finished its requests.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Fetches the provider's discovery document and keys once at start, so a misconfigured
/// issuer shows in the log right away; logins retry on their own, so a failure only logs.
pub async fn discover_at_start(edge: &Edge) {
    let Some(identity) = &edge.identity else {
        return;
    };
    if let Err(e) = identity.oidc().discover().await {
        tracing::error!(kind = e.kind(), error = %e, "OIDC discovery at start failed; logins will retry it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_table() {
        let access = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let same = Some("https://coder.lumie-infra.com");
        let evil = Some("https://evil.example");
        let app = Some("https://tilt--dev--alice.apps.lumie-infra.com");
        let keys = "/api/v2/users/me/keys";
        /// (method, path, token header, session cookie, Origin, Referer, allowed)
        type Case<'a> = (
            Method,
            &'a str,
            bool,
            bool,
            Option<&'a str>,
            Option<&'a str>,
            bool,
        );
        let cases: &[Case] = &[
            // Cookie-authenticated writes: same origin only.
            (Method::POST, keys, false, true, same, None, true),
            (
                Method::POST,
                keys,
                false,
                true,
                Some("https://coder.lumie-infra.com:443"),
                None,
                true,
            ),
            (Method::POST, keys, false, true, evil, None, false),
            (Method::POST, keys, false, true, app, None, false),
            (Method::POST, keys, false, true, Some("null"), None, false),
            (
                Method::POST,
                keys,
                false,
                true,
                Some("http://coder.lumie-infra.com"),
                None,
                false,
            ),
            (
                Method::PUT,
                "/api/v2/policy",
                false,
                true,
                evil,
                same,
                false,
            ),
            (Method::DELETE, "/api/v2/x", false, true, evil, None, false),
            (Method::PATCH, "/api/v2/x", false, true, evil, None, false),
            (
                Method::POST,
                "/api/v2/users/logout",
                false,
                true,
                evil,
                None,
                false,
            ),
            // No Origin: the Referer decides; neither: refused.
            (
                Method::POST,
                keys,
                false,
                true,
                None,
                Some("https://coder.lumie-infra.com/workspaces"),
                true,
            ),
            (
                Method::POST,
                keys,
                false,
                true,
                None,
                Some("https://evil.example/coder.lumie-infra.com"),
                false,
            ),
            (
                Method::POST,
                keys,
                false,
                true,
                None,
                Some("https://coder.lumie-infra.com.evil.example/"),
                false,
            ),
            (
                Method::POST,
                keys,
                false,
                true,
                None,
                Some("not a url"),
                false,
            ),
            (Method::POST, keys, false, true, None, None, false),
            // Token headers (CLI, curl) are not ambient: unaffected, even with a cookie.
            (Method::POST, keys, true, false, None, None, true),
            (Method::POST, keys, true, true, evil, None, true),
            // No cookie: nothing to borrow (the handler answers 401 itself).
            (Method::POST, keys, false, false, evil, None, true),
            // Reads, and requests to the apps themselves, pass.
            (Method::GET, keys, false, true, evil, None, true),
            (Method::HEAD, keys, false, true, evil, None, true),
            (Method::OPTIONS, keys, false, true, evil, None, true),
            (
                Method::POST,
                "/@alice/dev/apps/tilt/api",
                false,
                true,
                evil,
                None,
                true,
            ),
        ];
        for (i, (method, path, token_header, session_cookie, origin, referer, ok)) in
            cases.iter().enumerate()
        {
            let got = cross_site_check(
                &access,
                &WriteRequest {
                    method,
                    path,
                    token_header: *token_header,
                    session_cookie: *session_cookie,
                    origin: *origin,
                    referer: *referer,
                },
            );
            assert_eq!(
                got.is_ok(),
                *ok,
                "case {i}: {method} {path} {origin:?} {referer:?}: {got:?}"
            );
            if let Err(why) = got {
                assert!(why.contains("cross-site request refused"), "{why}");
                assert!(why.contains("Coder-Session-Token"), "{why}");
                if let Some(o) = origin {
                    assert!(why.contains(o), "names the Origin: {why}");
                }
            }
        }
    }
}
