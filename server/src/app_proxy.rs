//! The app proxy: a workspace app (Tilt, code-server, agents) to the workspace pod's IP on the
//! app's port, HTTP and WebSocket (any `Upgrade`), bodies streamed both ways. Two ways in:
//!
//! - path-based, `/@{owner}/{workspace}/apps/{slug}/…` on the access URL, the prefix stripped or
//!   kept per [`lumie_contract::apps`]. The app shares the control plane's origin, so it is
//!   served only to its owner, authenticated by the owner's own session (the `Path=/` session
//!   cookie or a token header). Admins get other users' path apps only with
//!   `CODER_DANGEROUS_ALLOW_PATH_APP_SITE_OWNER_ACCESS`, each request audited (`app.admin_access`).
//! - subdomain, `<slug>--<workspace>--<owner>.<CODER_WILDCARD_ACCESS_URL suffix>`, each app its
//!   own origin (the isolated mode). A browser gets in through
//!   `GET /api/v2/applications/auth-redirect?redirect_uri=<app URL>` on the access URL, which
//!   mints a single-use ticket (60 s, stored hashed) for the signed-in user and that app and
//!   redirects to the app host with it; the app host exchanges it for an app-scoped credential
//!   in a cookie of its own (stored hashed, expiring, good for that app only). Owners and
//!   admins (each admin entry audited) get through.
//!
//! Either way, another user's or a missing workspace is "not found" (no hint that it exists); a
//! credential never comes from a query string into a cookie; the app never sees the proxy's
//! cookies or tokens; and the app's answers cannot plant cookies outside its own path prefix
//! (path mode) or its own host, nor widen a service worker's scope. A signed-out visit gets a
//! page with a sign-in link that returns to the app; a workspace that is not running answers
//! with a page that says so instead of a 502.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use lumie_contract::apps::{self, WorkspaceApp};
use openidconnect::url::{Url, form_urlencoded};
use serde::Deserialize;

use crate::caller::{AuthMethod, Principal, SESSION_COOKIE, header_token, session_cookie_count};
use crate::db::AuditEvent;
use crate::error::Error;
use crate::identity::ClientIp;
use crate::identity::routes::LOGIN_PATH;
use crate::identity::sessions::{DEFAULT_SESSION_LIFETIME, cookie_value, set_cookie};
use crate::model::{DesiredState, WorkspaceRecord, WorkspaceStatus};
use crate::state::AppState;

/// Where a browser on the access URL asks for a ticket into a subdomain app (Coder's path).
pub const AUTH_REDIRECT_PATH: &str = "/api/v2/applications/auth-redirect";
/// Query parameter carrying the ticket to the app host (Coder's name).
pub const APP_TICKET_QUERY: &str = "coder_application_connect_api_key";
/// The app host's cookie: the app-scoped credential the ticket was exchanged for.
pub const APP_SESSION_COOKIE: &str = "coder_subdomain_app_session_token";
/// How long a ticket may wait to be exchanged.
pub const APP_TICKET_TTL: Duration = Duration::from_secs(60);
/// How long an app credential lasts (a browser session's lifetime).
pub const APP_SESSION_LIFETIME: Duration = DEFAULT_SESSION_LIFETIME;

/// The routes of this module: the ticket route, and a fallback (app paths start with `/@`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(AUTH_REDIRECT_PATH, get(auth_redirect))
        .fallback(proxy)
}

/// A parsed app path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPath {
    /// Owner name.
    pub owner: String,
    /// Workspace name.
    pub workspace: String,
    /// The app.
    pub app: WorkspaceApp,
    /// `/@owner/ws/apps/slug`.
    pub prefix: String,
    /// What follows the prefix (`/…`), empty when nothing does.
    pub rest: String,
}

/// Parses `/@owner/workspace/apps/slug[/rest]`. `None` for any other path (or unknown app).
pub fn parse_app_path(path: &str) -> Option<AppPath> {
    let p = path.strip_prefix("/@")?;
    let mut it = p.splitn(4, '/');
    let owner = it.next().filter(|s| !s.is_empty())?;
    let workspace = it.next().filter(|s| !s.is_empty())?;
    if it.next()? != "apps" {
        return None;
    }
    let tail = it.next()?;
    let (slug, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, ""),
    };
    let app = apps::by_slug(slug)?;
    Some(AppPath {
        owner: owner.into(),
        workspace: workspace.into(),
        app,
        prefix: format!("/@{owner}/{workspace}/apps/{slug}"),
        rest: rest.into(),
    })
}

/// The path the app sees: the rest (at least `/`) when the app wants the prefix stripped,
/// the full path otherwise.
pub fn upstream_path(p: &AppPath) -> String {
    if p.app.strip_prefix {
        if p.rest.is_empty() {
            "/".into()
        } else {
            p.rest.clone()
        }
    } else {
        format!("{}{}", p.prefix, p.rest)
    }
}

/// A subdomain app host's label, parsed: `<slug>--<workspace>--<owner>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppLabel {
    /// The app.
    pub app: WorkspaceApp,
    /// Workspace name.
    pub workspace: String,
    /// Owner name.
    pub owner: String,
}

/// The host label of an app (Coder's shape without the agent name: one agent per workspace).
pub fn app_label(slug: &str, workspace: &str, owner: &str) -> String {
    format!("{slug}--{workspace}--{owner}")
}

/// Parses an app host label. Names with `--` in them are ambiguous here and not found (their
/// apps stay reachable path-based).
pub fn parse_app_label(label: &str) -> Option<AppLabel> {
    let parts: Vec<&str> = label.split("--").collect();
    let [slug, workspace, owner] = parts[..] else {
        return None;
    };
    if workspace.is_empty() || owner.is_empty() {
        return None;
    }
    Some(AppLabel {
        app: apps::by_slug(slug)?,
        workspace: workspace.into(),
        owner: owner.into(),
    })
}

/// How the app is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// On the access URL's origin.
    Path,
    /// On its own host.
    Subdomain,
}

/// Who gets an app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAccess {
    /// The workspace's owner.
    Owner,
    /// An admin who is not the owner: allowed, and audited.
    Admin,
    /// Anyone else: "not found", as if there were no such workspace.
    Hidden,
}

/// The access rule. A path-based app runs its JavaScript on the control plane's origin with the
/// visitor's session, so only its owner gets it unless the dangerous setting lets admins in; a
/// subdomain app is isolated on its own origin, so admins may open it (as in Coder).
pub fn decide_access(
    mode: AppMode,
    is_owner: bool,
    is_admin: bool,
    dangerous_allow_path_app_site_owner_access: bool,
) -> AppAccess {
    match (mode, is_owner, is_admin) {
        (_, true, _) => AppAccess::Owner,
        (AppMode::Subdomain, false, true) => AppAccess::Admin,
        (AppMode::Path, false, true) if dangerous_allow_path_app_site_owner_access => {
            AppAccess::Admin
        }
        _ => AppAccess::Hidden,
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && headers.contains_key(http::header::UPGRADE)
}

/// Cookies minus the proxy's own (the app must never see the user's token or app credential).
fn strip_proxy_cookies(v: &str) -> Option<String> {
    let kept: Vec<&str> = v
        .split(';')
        .map(str::trim)
        .filter(|kv| {
            let name = kv.split_once('=').map_or(*kv, |(k, _)| k).trim();
            name != SESSION_COOKIE && name != APP_SESSION_COOKIE
        })
        .filter(|kv| !kv.is_empty())
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Splits parameter `name` out of a query: its (raw) value, and the query without it.
fn take_query_param(query: Option<&str>, name: &str) -> (Option<String>, Option<String>) {
    let Some(q) = query else {
        return (None, None);
    };
    let mut value = None;
    let mut rest = vec![];
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some((k, v)) if k == name => value = Some(v.to_string()),
            None if kv == name => value = Some(String::new()),
            _ => rest.push(kv),
        }
    }
    (value, (!rest.is_empty()).then(|| rest.join("&")))
}

/// The query the app sees: without credentials a browser may have carried in the URL (an old
/// `?coder_session_token=` link, a ticket); they are never turned into anything, only dropped.
fn upstream_query(query: Option<&str>) -> Option<String> {
    let (_, q) = take_query_param(query, SESSION_COOKIE);
    take_query_param(q.as_deref(), APP_TICKET_QUERY).1
}

/// Where the app's cookies may live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CookieScope {
    /// Under this path prefix of the access URL; `strip_prefix` as the app was configured (a
    /// `Path=/x` from an app that sees stripped paths means `<prefix>/x`).
    Path {
        /// `/@owner/ws/apps/slug`.
        prefix: String,
        /// Whether the app sees paths without the prefix.
        strip_prefix: bool,
    },
    /// On the app's own host, nowhere else.
    Host,
}

/// An app's `Set-Cookie`, made safe: `Domain` dropped (host-only), `Path` kept within the app's
/// prefix in path mode, and cookies named like the proxy's own dropped (`None`).
pub fn rewrite_set_cookie(value: &str, scope: &CookieScope) -> Option<String> {
    let mut parts = value.split(';');
    let pair = parts.next()?.trim();
    let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
    if name.is_empty() || name == SESSION_COOKIE || name == APP_SESSION_COOKIE {
        return None;
    }
    let mut out = vec![pair.to_string()];
    let mut path = None;
    for attr in parts.map(str::trim).filter(|a| !a.is_empty()) {
        let key = attr.split_once('=').map_or(attr, |(k, _)| k).trim();
        if key.eq_ignore_ascii_case("domain") {
            continue;
        }
        if key.eq_ignore_ascii_case("path") {
            path = Some(
                attr.split_once('=')
                    .map_or("", |(_, v)| v)
                    .trim()
                    .to_string(),
            );
            continue;
        }
        out.push(attr.to_string());
    }
    match scope {
        CookieScope::Host => {
            if let Some(p) = path {
                out.insert(1, format!("Path={p}"));
            }
        }
        CookieScope::Path {
            prefix,
            strip_prefix,
        } => {
            let within = |p: &str| {
                p == prefix
                    || p.strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            };
            let p = match path {
                // Without a Path the browser scopes it to the request's directory, which is
                // under the prefix already; say so explicitly anyway.
                None => format!("{prefix}/"),
                Some(p) if p.contains("..") || p.contains('%') || !p.starts_with('/') => {
                    format!("{prefix}/")
                }
                Some(p) if within(&p) => p,
                Some(p) if *strip_prefix => format!("{prefix}{p}"),
                Some(_) => format!("{prefix}/"),
            };
            out.insert(1, format!("Path={p}"));
        }
    }
    Some(out.join("; "))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small HTML page with an optional link (`href` must be a safe, server-built URL).
fn page(status: StatusCode, title: &str, text: &str, link: Option<(&str, &str)>) -> Response {
    let link = link
        .map(|(href, label)| format!("<p><a href=\"{}\">{}</a></p>", esc(href), esc(label)))
        .unwrap_or_default();
    (
        status,
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{t}</h1><p>{b}</p>{link}</body></html>",
            t = esc(title),
            b = esc(text)
        ),
    )
        .into_response()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The sign-in link that comes back to `return_to` (a local path built by the server), or
/// `None` when no browser login (OIDC) is configured.
fn sign_in_link(state: &AppState, return_to: &str) -> Option<String> {
    state
        .edge
        .identity
        .as_ref()
        .map(|_| format!("{LOGIN_PATH}?redirect={}", encode(return_to)))
}

/// 401: the dashboard's sign-in card, with a button that comes back to `return_to` (a local
/// path on the access URL): "Sign in with Keycloak" when OIDC is configured (and the dashboard's
/// other ways to sign in), otherwise the dashboard's sign-in page (the token form).
fn signed_out_page(state: &AppState, why: &str, return_to: &str) -> Response {
    use crate::dashboard::{Nav, html_response, layout, login_redirect};
    let dashboard = login_redirect(return_to);
    let oidc = sign_in_link(state, return_to);
    let body = maud::html! {
        section.card.narrow {
            h1 { "Sign in required" }
            p { "Sign in to open this app; you will be brought back here." }
            p.hint #error-message { "(" (why) ")" }
            @match &oidc {
                Some(link) => {
                    p { a.button.primary #oidc-login href=(link) { "Sign in with Keycloak" } }
                    p { a #other-sign-in href=(dashboard) { "Other ways to sign in (API token)" } }
                }
                None => {
                    p { a.button.primary #sign-in href=(dashboard) { "Sign in" } }
                    p.hint { "No browser sign-in is configured on this server: sign in with an API \
                        token, or send it in a Coder-Session-Token header." }
                }
            }
        }
    };
    html_response(
        StatusCode::UNAUTHORIZED,
        layout("Sign in required", None, Nav::None, body),
    )
}

fn not_found_page(title: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Workspace not found",
        &format!("There is no workspace {title} that you may open."),
        None,
    )
}

fn redirect(location: &str) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(http::header::LOCATION, location)
        .header(http::header::CACHE_CONTROL, "no-store")
}

fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

/// What to open, and how it was reached.
struct Target {
    owner: String,
    workspace: String,
    app: WorkspaceApp,
    /// Path and query the app sees.
    upstream: String,
    /// `X-Forwarded-Prefix` (path mode).
    prefix: Option<String>,
    scope: CookieScope,
}

async fn find_workspace(
    state: &AppState,
    owner: &str,
    workspace: &str,
) -> crate::Result<Option<WorkspaceRecord>> {
    match state.db.user_by_name(owner).await? {
        Some(owner) => {
            state
                .db
                .workspace_by_owner_and_name(&owner.id, workspace)
                .await
        }
        None => Ok(None),
    }
}

/// The workspace behind `target` if `principal` may open its app (auditing an admin's entry
/// when `audit`), else the response to send.
async fn authorize(
    state: &AppState,
    principal: &Principal,
    owner: &str,
    workspace: &str,
    app: WorkspaceApp,
    mode: AppMode,
    audit: Option<&str>,
) -> Result<WorkspaceRecord, Response> {
    let title = format!("{owner}/{workspace}");
    let ws = find_workspace(state, owner, workspace)
        .await
        .map_err(IntoResponse::into_response)?;
    let Some(ws) = ws else {
        return Err(not_found_page(&title));
    };
    let access = decide_access(
        mode,
        principal.user.id == ws.owner_id,
        principal.user.is_admin,
        state.config.dangerous_allow_path_app_site_owner_access,
    );
    match access {
        AppAccess::Owner => {}
        AppAccess::Hidden => return Err(not_found_page(&title)),
        AppAccess::Admin => {
            if let Some(what) = audit {
                let detail = format!("{title} {} {what}", app.slug);
                tracing::warn!(admin = %principal.user.username, workspace = %title, app = app.slug, "admin opened another user's app");
                state
                    .db
                    .record(&AuditEvent {
                        actor: Some(&principal.user),
                        client_ip: principal.client_ip,
                        action: "app.admin_access",
                        workspace_id: Some(&ws.id),
                        detail: &detail,
                        ..AuditEvent::default()
                    })
                    .await
                    .map_err(IntoResponse::into_response)?;
            }
        }
    }
    Ok(ws)
}

/// What a path no route and no app matches answers: under `/@owner/ws/apps/` the slugs that
/// exist (the same for every workspace, so it confirms nothing about this one), else the path.
pub fn no_route_message(method: &http::Method, path: &str) -> String {
    let slug = path
        .strip_prefix("/@")
        .map(|p| p.splitn(4, '/').collect::<Vec<_>>())
        .filter(|parts| parts.len() == 4 && parts[2] == "apps")
        .map(|parts| parts[3].split('/').next().unwrap_or_default().to_string());
    match slug {
        Some(slug) => {
            let known: Vec<&str> = apps::ALL.iter().map(|a| a.slug).collect();
            format!(
                "no app {slug:?} in workspaces: the apps are {}",
                known.join(", ")
            )
        }
        None => format!("no route for {method} {path}"),
    }
}

/// Path-based apps on the access URL (the router's fallback).
async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    let Some(app_path) = parse_app_path(req.uri().path()) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(crate::error::ErrorBody {
                message: no_route_message(req.method(), req.uri().path()),
                detail: String::new(),
            }),
        )
            .into_response();
    };
    if app_path.rest.is_empty() {
        // Apps use relative URLs: `/apps/tilt` must become `/apps/tilt/`.
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        return Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(http::header::LOCATION, format!("{}/{q}", app_path.prefix))
            .body(Body::empty())
            .expect("static response");
    }
    let (parts, body) = req.into_parts();
    // Only the user's own session counts: a query-string token is never looked at.
    let return_to = path_and_query(
        parts.uri.path(),
        upstream_query(parts.uri.query()).as_deref(),
    );
    let mut principal = match state.auth.authenticate(&parts).await {
        Ok(p) => p,
        Err(e) => {
            let mut resp = signed_out_page(&state, &e.to_string(), &return_to);
            if session_cookie_count(&parts.headers) > 1 {
                // The old app links left a session cookie on `/@owner/ws/`: clear it.
                let stale = set_cookie(
                    SESSION_COOKIE,
                    "",
                    &format!("/@{}/{}/", app_path.owner, app_path.workspace),
                    Duration::ZERO,
                    state.edge.access_url.is_https(),
                );
                if let Ok(v) = HeaderValue::from_str(&stale) {
                    resp.headers_mut().append(http::header::SET_COOKIE, v);
                }
            }
            return resp;
        }
    };
    principal.client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
    let what = format!("{} {}", parts.method, parts.uri.path());
    let ws = match authorize(
        &state,
        &principal,
        &app_path.owner,
        &app_path.workspace,
        app_path.app,
        AppMode::Path,
        Some(&what),
    )
    .await
    {
        Ok(ws) => ws,
        Err(resp) => return resp,
    };
    let target = Target {
        owner: app_path.owner.clone(),
        workspace: app_path.workspace.clone(),
        app: app_path.app,
        upstream: path_and_query(
            &upstream_path(&app_path),
            upstream_query(parts.uri.query()).as_deref(),
        ),
        prefix: Some(app_path.prefix.clone()),
        scope: CookieScope::Path {
            prefix: app_path.prefix.clone(),
            strip_prefix: app_path.app.strip_prefix,
        },
    };
    open(&state, ws, target, parts, body).await
}

/// A request on a subdomain app host (`label` from the Host guard); nothing else is served there.
pub async fn subdomain(state: AppState, label: String, req: Request) -> Response {
    let Some(wildcard) = state.edge.wildcard.clone() else {
        return not_found_page(&label);
    };
    let Some(target) = parse_app_label(&label) else {
        return not_found_page(&label);
    };
    let (parts, body) = req.into_parts();
    let origin = wildcard.origin_of(&label);
    let clean = path_and_query(
        parts.uri.path(),
        upstream_query(parts.uri.query()).as_deref(),
    );
    let fresh_ticket = format!(
        "{}?redirect_uri={}",
        state.edge.access_url.join(AUTH_REDIRECT_PATH),
        encode(&format!("{origin}{clean}"))
    );
    // A ticket from the access URL: exchange it (once) for this app's own credential.
    if let (Some(ticket), _) = take_query_param(parts.uri.query(), APP_TICKET_QUERY) {
        let user_id = match state.db.consume_app_ticket(&ticket, &label).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        let Some(user_id) = user_id else {
            return page(
                StatusCode::UNAUTHORIZED,
                "This link has expired",
                "The sign-in ticket in this link is unknown, expired, already used, or for another app.",
                Some((&fresh_ticket, "Open the app again")),
            );
        };
        let token = match state
            .db
            .create_app_session(&user_id, &label, APP_SESSION_LIFETIME)
            .await
        {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let cookie = set_cookie(
            APP_SESSION_COOKIE,
            &token,
            "/",
            APP_SESSION_LIFETIME,
            wildcard.is_https(),
        );
        return redirect(&clean)
            .header(http::header::SET_COOKIE, cookie)
            .body(Body::empty())
            .expect("static response");
    }
    let principal = match app_host_principal(&state, &parts, &label).await {
        Ok(Some(p)) => p,
        Ok(None) if matches!(parts.method, http::Method::GET | http::Method::HEAD) => {
            return redirect(&fresh_ticket)
                .body(Body::empty())
                .expect("static response");
        }
        Ok(None) => {
            return page(
                StatusCode::UNAUTHORIZED,
                "Sign in required",
                "Open this app from the dashboard first.",
                Some((&fresh_ticket, "Open the app")),
            );
        }
        Err(e) => return e.into_response(),
    };
    let ws = match authorize(
        &state,
        &principal,
        &target.owner,
        &target.workspace,
        target.app,
        AppMode::Subdomain,
        // Admins' entries are audited when the ticket is minted.
        None,
    )
    .await
    {
        Ok(ws) => ws,
        Err(resp) => return resp,
    };
    let t = Target {
        owner: target.owner,
        workspace: target.workspace,
        app: target.app,
        upstream: clean,
        prefix: None,
        scope: CookieScope::Host,
    };
    open(&state, ws, t, parts, body).await
}

/// Who calls an app host: a token header (CLI), or this app's own credential in its cookie.
/// The user's session cookie is not looked at here (it is host-only to the access URL; one on
/// an app host was set by the app).
async fn app_host_principal(
    state: &AppState,
    parts: &http::request::Parts,
    label: &str,
) -> crate::Result<Option<Principal>> {
    let client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
    if let Some(token) = header_token(&parts.headers) {
        return match state.db.token_owner(&token).await? {
            Some((user, _)) => Ok(Some(Principal {
                user,
                method: AuthMethod::ApiToken,
                client_ip,
            })),
            None => Err(Error::Unauthorized(
                "invalid or expired session token".into(),
            )),
        };
    }
    let Some(token) = cookie_value(&parts.headers, APP_SESSION_COOKIE).filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    Ok(state
        .db
        .app_session_user(token, label)
        .await?
        .map(|user| Principal {
            user,
            method: AuthMethod::AppSession,
            client_ip,
        }))
}

#[derive(Debug, Deserialize)]
struct AuthRedirectQuery {
    redirect_uri: Option<String>,
}

/// `GET /api/v2/applications/auth-redirect?redirect_uri=<app URL>`: on the access URL, with the
/// user's session, mints a ticket for that user and that app and sends the browser to the app
/// host with it. Signed out: to the sign-in, which comes back here.
async fn auth_redirect(
    State(state): State<AppState>,
    Query(q): Query<AuthRedirectQuery>,
    req: Request,
) -> Response {
    let Some(wildcard) = state.edge.wildcard.clone() else {
        return Error::NotFound(
            "subdomain apps are not configured on this server (CODER_WILDCARD_ACCESS_URL)".into(),
        )
        .into_response();
    };
    let Some(raw) = q.redirect_uri.filter(|r| !r.is_empty()) else {
        return Error::BadRequest("redirect_uri is required: the app URL to open".into())
            .into_response();
    };
    let Ok(mut url) = Url::parse(&raw) else {
        return Error::BadRequest(format!("redirect_uri {raw:?} is not a URL")).into_response();
    };
    let Some((label, target)) = wildcard
        .label_of_url(&url)
        .and_then(|l| parse_app_label(&l).map(|t| (l, t)))
    else {
        return Error::BadRequest(format!(
            "redirect_uri {raw:?} is not a workspace app URL of this server ({})",
            wildcard.origin_of("<app>--<workspace>--<owner>")
        ))
        .into_response();
    };
    let (parts, _) = req.into_parts();
    let mut principal = match state.auth.authenticate(&parts).await {
        Ok(p) => p,
        Err(e) => {
            let here = path_and_query(parts.uri.path(), parts.uri.query());
            return match sign_in_link(&state, &here) {
                Some(link) => redirect(&link)
                    .body(Body::empty())
                    .expect("static response"),
                None => signed_out_page(&state, &e.to_string(), &here),
            };
        }
    };
    principal.client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
    let ws = match authorize(
        &state,
        &principal,
        &target.owner,
        &target.workspace,
        target.app,
        AppMode::Subdomain,
        Some("ticket"),
    )
    .await
    {
        Ok(ws) => ws,
        Err(resp) => return resp,
    };
    let ticket = match state
        .db
        .create_app_ticket(&principal.user.id, &label, APP_TICKET_TTL)
        .await
    {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    tracing::debug!(user = %principal.user.username, workspace = %ws.id, app = target.app.slug, "app ticket minted");
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != APP_TICKET_QUERY && k != SESSION_COOKIE)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(rest)
        .append_pair(APP_TICKET_QUERY, &ticket);
    url.set_fragment(None);
    redirect(url.as_str())
        .body(Body::empty())
        .expect("static response")
}

/// The app of an authorized workspace: a page when it is not running, else the forward.
async fn open(
    state: &AppState,
    ws: WorkspaceRecord,
    target: Target,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let title = format!("{}/{}", target.owner, target.workspace);
    let pod_ip = state.cluster.pod_ip(&ws.id);
    let not_running = ws.desired_state != DesiredState::Running
        || matches!(
            ws.status,
            WorkspaceStatus::Stopped
                | WorkspaceStatus::Stopping
                | WorkspaceStatus::Deleting
                | WorkspaceStatus::Deleted
        );
    let Some(pod_ip) = pod_ip.filter(|_| !not_running) else {
        let why = if ws.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", ws.status_reason)
        };
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Workspace {title} is {}", ws.status),
            &format!(
                "{} cannot be opened: the workspace is {}{why}. Start it from the dashboard or with POST /api/v2/workspaces/{}/builds {{\"transition\":\"start\"}}, then reload this page.",
                target.app.display_name, ws.status, ws.id
            ),
            None,
        );
    };
    let upgrade = is_upgrade(&parts.headers);
    forward(target, pod_ip, parts, body, upgrade).await
}

async fn forward(
    target: Target,
    pod_ip: String,
    parts: http::request::Parts,
    body: Body,
    upgrade: bool,
) -> Response {
    let mut req = Request::from_parts(parts, body);
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let addr = format!("{pod_ip}:{}", target.app.port);
    let bad_gateway = |why: String| {
        page(
            StatusCode::BAD_GATEWAY,
            &format!("{} is not answering", target.app.display_name),
            &format!(
                "The workspace {}/{} is running, but {} did not answer on {addr}: {why}. It may still be starting; reload in a moment.",
                target.owner, target.workspace, target.app.display_name
            ),
            None,
        )
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return bad_gateway(e.to_string()),
        Err(_) => return bad_gateway("connect timed out after 5s".into()),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return bad_gateway(e.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "app proxy upstream connection ended");
        }
    });
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(target.upstream.as_str())
        .version(http::Version::HTTP_11);
    let headers = out.headers_mut().expect("builder without errors");
    for (k, v) in parts.headers.iter() {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name)
            || name.eq_ignore_ascii_case(lumie_contract::agent_api::AGENT_TOKEN_HEADER)
            || k == http::header::AUTHORIZATION
            || k == http::header::HOST
        {
            continue;
        }
        if k == http::header::COOKIE {
            if let Some(v) = v
                .to_str()
                .ok()
                .and_then(strip_proxy_cookies)
                .and_then(|c| HeaderValue::from_str(&c).ok())
            {
                headers.append(k, v);
            }
            continue;
        }
        headers.append(k, v.clone());
    }
    if upgrade {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        if let Some(u) = parts.headers.get(http::header::UPGRADE) {
            headers.insert(http::header::UPGRADE, u.clone());
        }
    }
    if let Ok(h) = HeaderValue::from_str(&addr) {
        headers.insert(http::header::HOST, h);
    }
    if let Some(h) = parts.headers.get(http::header::HOST) {
        headers.insert("x-forwarded-host", h.clone());
    }
    if let Some(v) = target
        .prefix
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert("x-forwarded-prefix", v);
    }
    let out = match out.body(body) {
        Ok(r) => r,
        Err(e) => return Error::BadRequest(e.to_string()).into_response(),
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(e.to_string()),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = on_client_upgrade else {
            return bad_gateway("the app switched protocols unasked".into());
        };
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (client.await, upstream.await) {
                (Ok(c), Ok(u)) => {
                    let mut c = TokioIo::new(c);
                    let mut u = TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                (c, u) => tracing::debug!(
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "app proxy upgrade failed"
                ),
            }
        });
        let (mut rp, _) = resp.into_parts();
        confine_response_headers(&mut rp.headers, &target.scope);
        return Response::from_parts(rp, Body::empty());
    }
    let (mut rp, rb) = resp.into_parts();
    for h in HOP_BY_HOP {
        if *h != "transfer-encoding" {
            rp.headers.remove(*h);
        }
    }
    confine_response_headers(&mut rp.headers, &target.scope);
    Response::from_parts(rp, Body::new(rb))
}

/// The app's answer headers, confined: every `Set-Cookie` through [`rewrite_set_cookie`], no
/// `Service-Worker-Allowed` (a worker's scope stays within the path it was loaded from), and on
/// the shared origin no `Clear-Site-Data` (it would wipe the user's session cookie).
fn confine_response_headers(headers: &mut http::HeaderMap, scope: &CookieScope) {
    headers.remove("service-worker-allowed");
    if matches!(scope, CookieScope::Path { .. }) {
        headers.remove("clear-site-data");
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| rewrite_set_cookie(v, scope))
        .filter_map(|v| HeaderValue::from_str(&v).ok())
        .collect();
    headers.remove(http::header::SET_COOKIE);
    for c in cookies {
        headers.append(http::header::SET_COOKIE, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_app_slug_names_the_apps_that_exist() {
        let get = http::Method::GET;
        #[rustfmt::skip]
        let cases = [
            ("/@alice/dev/apps/8080/", "no app \"8080\" in workspaces: the apps are tilt, code-server, agents"),
            ("/@alice/dev/apps/8080", "no app \"8080\""),
            ("/@alice/dev/apps/", "no app \"\""),
            ("/@alice/dev/files/x", "no route for GET /@alice/dev/files/x"),
            ("/nothing", "no route for GET /nothing"),
        ];
        for (path, want) in cases {
            let got = no_route_message(&get, path);
            assert!(got.contains(want), "{path}: {got}");
        }
    }

    #[test]
    fn app_paths() {
        let p = parse_app_path("/@alice/dev/apps/tilt/r/x?y").unwrap();
        assert_eq!((p.owner.as_str(), p.workspace.as_str()), ("alice", "dev"));
        assert_eq!(p.app, apps::TILT);
        assert_eq!(p.prefix, "/@alice/dev/apps/tilt");
        assert_eq!(p.rest, "/r/x?y");
        let p = parse_app_path("/@alice/dev/apps/code-server").unwrap();
        assert_eq!(p.rest, "");
        assert_eq!(upstream_path(&p), "/");
        for bad in [
            "/@alice/dev/apps/nope/",
            "/alice/dev/apps/tilt/",
            "/@/dev/apps/tilt/",
            "/@alice/dev/app/tilt/",
            "/api/v2/x",
        ] {
            assert_eq!(parse_app_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefix_kept_when_the_app_wants_it() {
        let mut p = parse_app_path("/@a/w/apps/agents/ws").unwrap();
        assert_eq!(upstream_path(&p), "/ws");
        p.app.strip_prefix = false;
        assert_eq!(upstream_path(&p), "/@a/w/apps/agents/ws");
    }

    #[test]
    fn app_labels() {
        assert_eq!(
            app_label("code-server", "dev", "alice"),
            "code-server--dev--alice"
        );
        let l = parse_app_label("code-server--dev--alice").unwrap();
        assert_eq!(l.app, apps::CODE_SERVER);
        assert_eq!((l.workspace.as_str(), l.owner.as_str()), ("dev", "alice"));
        for bad in [
            "nope--dev--alice",
            "tilt--dev",
            "tilt--dev--alice--x",
            "tilt----alice",
            "tilt--dev--",
            "tilt",
            "",
        ] {
            assert_eq!(parse_app_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn access_table() {
        use AppAccess::*;
        use AppMode::*;
        // (mode, owner, admin, dangerous flag) → access
        let cases = [
            (Path, true, false, false, Owner),
            (Path, true, true, false, Owner),
            (Path, false, false, false, Hidden),
            (Path, false, false, true, Hidden),
            (Path, false, true, false, Hidden),
            (Path, false, true, true, Admin),
            (Subdomain, true, false, false, Owner),
            (Subdomain, false, false, false, Hidden),
            (Subdomain, false, false, true, Hidden),
            (Subdomain, false, true, false, Admin),
        ];
        for (mode, owner, admin, flag, want) in cases {
            assert_eq!(
                decide_access(mode, owner, admin, flag),
                want,
                "{mode:?} owner={owner} admin={admin} flag={flag}"
            );
        }
    }

    #[test]
    fn proxy_cookies_never_reach_the_app() {
        assert_eq!(
            strip_proxy_cookies("a=1; coder_session_token=secret; b=2").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip_proxy_cookies("coder_session_token=secret"), None);
        assert_eq!(
            strip_proxy_cookies("coder_subdomain_app_session_token=s; x=coder_session_token")
                .as_deref(),
            Some("x=coder_session_token")
        );
    }

    #[test]
    fn credentials_in_the_query_are_dropped_not_used() {
        let cases = [
            (None, None),
            (Some("x=1"), Some("x=1")),
            (Some("x=1&coder_session_token=abc"), Some("x=1")),
            (Some("coder_session_token=abc"), None),
            (
                Some("coder_application_connect_api_key=t&a=b&coder_session_token"),
                Some("a=b"),
            ),
            (
                Some("xcoder_session_token=1"),
                Some("xcoder_session_token=1"),
            ),
        ];
        for (q, want) in cases {
            assert_eq!(upstream_query(q).as_deref(), want, "{q:?}");
        }
        assert_eq!(
            take_query_param(
                Some("a=1&coder_application_connect_api_key=T"),
                APP_TICKET_QUERY
            ),
            (Some("T".into()), Some("a=1".into()))
        );
    }

    #[test]
    fn set_cookie_table() {
        let tilt = CookieScope::Path {
            prefix: "/@a/w/apps/tilt".into(),
            strip_prefix: true,
        };
        let kept = CookieScope::Path {
            prefix: "/@a/w/apps/agents".into(),
            strip_prefix: false,
        };
        let host = CookieScope::Host;
        let cases: &[(&str, &CookieScope, Option<&str>)] = &[
            ("s=1; Path=/", &tilt, Some("s=1; Path=/@a/w/apps/tilt/")),
            (
                "s=1; path=/api; HttpOnly",
                &tilt,
                Some("s=1; Path=/@a/w/apps/tilt/api; HttpOnly"),
            ),
            ("s=1", &tilt, Some("s=1; Path=/@a/w/apps/tilt/")),
            (
                "s=1; Domain=.lumie-infra.com; Path=/; Secure",
                &tilt,
                Some("s=1; Path=/@a/w/apps/tilt/; Secure"),
            ),
            (
                "s=1; Path=/@a/w/apps/tilt/x",
                &tilt,
                Some("s=1; Path=/@a/w/apps/tilt/x"),
            ),
            (
                "s=1; Path=/@a/w/apps/tiltx",
                &tilt,
                Some("s=1; Path=/@a/w/apps/tilt/@a/w/apps/tiltx"),
            ),
            (
                "s=1; Path=/../../",
                &tilt,
                Some("s=1; Path=/@a/w/apps/tilt/"),
            ),
            ("s=1; Path=%2F", &tilt, Some("s=1; Path=/@a/w/apps/tilt/")),
            ("s=1; Path=/", &kept, Some("s=1; Path=/@a/w/apps/agents/")),
            (
                "s=1; Path=/@a/w/apps/agents/ws",
                &kept,
                Some("s=1; Path=/@a/w/apps/agents/ws"),
            ),
            (
                "s=1; Path=/@b/w/apps/agents/",
                &kept,
                Some("s=1; Path=/@a/w/apps/agents/"),
            ),
            ("coder_session_token=evil; Path=/", &tilt, None),
            ("coder_subdomain_app_session_token=evil", &host, None),
            ("coder_session_token=evil; Path=/", &host, None),
            (
                "s=1; Domain=apps.lumie-infra.com; Path=/",
                &host,
                Some("s=1; Path=/"),
            ),
            ("s=1; Max-Age=5", &host, Some("s=1; Max-Age=5")),
            ("", &host, None),
        ];
        for (input, scope, want) in cases {
            assert_eq!(
                rewrite_set_cookie(input, scope).as_deref(),
                *want,
                "{input:?} {scope:?}"
            );
        }
        let mut h = http::HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1; Path=/"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("coder_session_token=x; Path=/"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("b=2; Domain=evil.example"),
        );
        h.insert("service-worker-allowed", HeaderValue::from_static("/"));
        h.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
        let mut on_host = h.clone();
        confine_response_headers(&mut h, &tilt);
        assert!(!h.contains_key("clear-site-data"));
        confine_response_headers(&mut on_host, &host);
        assert!(!on_host.contains_key("service-worker-allowed"));
        assert!(
            on_host.contains_key("clear-site-data"),
            "its own origin's business"
        );
        let got: Vec<&str> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            got,
            ["a=1; Path=/@a/w/apps/tilt/", "b=2; Path=/@a/w/apps/tilt/"]
        );
        assert!(!h.contains_key("service-worker-allowed"));
    }
}
