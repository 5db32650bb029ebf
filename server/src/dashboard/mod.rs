//! The developer's dashboard: server-rendered HTML pages on the server's own origin and port.
//!
//! Pages are [`maud`] templates: Rust macros checked at compile time that escape every
//! interpolated value unless wrapped in `PreEscaped` (used only for our own static markup), and
//! they need no template files or Node at build or run time. One CSS and one JS file
//! ([`ASSETS`]) are embedded in the binary; the JS does live updates (the SSE watches in
//! [`crate::api`]), inline name validation (`GET /api/v2/workspacenames`, the contract's own
//! rules) and the buttons, all through the JSON API with the session cookie (same origin, so the
//! edge's cross-site check passes them).
//!
//! - [`login`]: `/login` (OIDC button when configured, break-glass token form), `/logout`;
//! - [`workspaces`]: `/`, the workspace list and create form, and its row fragments;
//! - [`workspace`]: `/@{owner}/{workspace}`, one workspace, with [`resources`] (the resource
//!   graphs) and [`pod_events`] (the pod's Kubernetes events);
//! - [`tokens`]: the token settings page, `/settings/tokens`;
//! - [`admin`]: `/admin/…`, users, the policy editor, the audit log and operator health
//!   (admins only; members get the not-found page).
//!
//! A signed-out visit to a page redirects to `/login?redirect=<that page>` ([`Viewer`]); only a
//! local path is ever a return destination ([`safe_return_path`]).

pub mod admin;
pub mod cli_auth;
pub mod login;
pub mod pod_events;
pub mod resources;
pub mod tokens;
pub mod workspace;
pub mod workspaces;

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::request::Parts;
use maud::{DOCTYPE, Markup, html};

use crate::caller::Principal;
use crate::error::Error;
use crate::identity::AccessUrl;
use crate::model::{User, WorkspaceStatus};
use crate::state::AppState;

/// The dashboard's sign-in page.
pub const LOGIN_PAGE: &str = "/login";

/// Embedded static files: (path, content type, body).
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/assets/dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard.css"),
    ),
    (
        "/assets/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard.js"),
    ),
    // The workspace page's terminal: xterm.js (vendored, see assets/xterm/README.md) and its glue.
    (
        "/assets/xterm.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/xterm/xterm.js"),
    ),
    (
        "/assets/xterm.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/xterm/xterm.css"),
    ),
    (
        "/assets/terminal.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/terminal.js"),
    ),
];

/// The dashboard's routes (merged into [`crate::router`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(workspaces::page))
        .route(LOGIN_PAGE, get(login::page).post(login::sign_in))
        .route("/logout", axum::routing::post(login::sign_out))
        .route("/settings/tokens", get(tokens::page))
        .route(cli_auth::PATH, get(cli_auth::page).post(cli_auth::create))
        .route("/@{owner}/{workspace}", get(workspace::page))
        .route("/_dashboard/rows/{id}", get(workspaces::row_fragment))
        .route("/_dashboard/live/{id}", get(workspace::live_fragment))
        .route("/_dashboard/resources/{id}", get(resources::fragment))
        .route("/_dashboard/events/{id}", get(pod_events::fragment))
        .route("/admin/users", get(admin::users))
        .route("/admin/policy", get(admin::policy))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/health", get(admin::health))
        .route("/assets/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    let path = format!("/assets/{file}");
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => error_page(StatusCode::NOT_FOUND, None, "No such file."),
    }
}

/// Only a local absolute path may be where sign-in returns to (no open redirect): anything
/// else, scheme-relative (`//host`), backslash tricks or control characters, gives `/`.
pub fn safe_return_path(requested: Option<&str>) -> String {
    match requested {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(|c| c.is_control() || c == '\\') =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

/// `/login?redirect=<path>` for a page the visitor was not signed in for.
pub fn login_redirect(path_and_query: &str) -> String {
    let back = safe_return_path(Some(path_and_query));
    if back == "/" {
        return LOGIN_PAGE.to_string();
    }
    let encoded: String =
        openidconnect::url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    format!("{LOGIN_PAGE}?redirect={encoded}")
}

/// Whether a form POST came from a page of the access URL: its `Origin`, or without one its
/// `Referer`, must be that origin. Browsers send `Origin` on every form POST; refusing the rest
/// keeps another site from signing a browser in (or out) with its own token.
pub fn same_origin_form(access: &AccessUrl, headers: &HeaderMap) -> Result<(), String> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    match (get(header::ORIGIN), get(header::REFERER)) {
        (Some(o), _) if access.matches_origin(o) => Ok(()),
        (Some(o), _) => Err(format!(
            "This form was sent from {o}, not from {}: sign in from the dashboard's own page.",
            access.origin()
        )),
        (None, Some(r)) => match openidconnect::url::Url::parse(r) {
            Ok(u) if access.matches_origin(&u.origin().ascii_serialization()) => Ok(()),
            _ => Err(format!(
                "This form was sent from {r}, not from {}: sign in from the dashboard's own page.",
                access.origin()
            )),
        },
        (None, None) => Err(
            "This form arrived without an Origin or Referer header, so it cannot be told apart \
             from a cross-site post: sign in from the dashboard's own page."
                .into(),
        ),
    }
}

/// A signed-in visitor of a dashboard page. Signed out (or with a stale cookie), the page
/// answers a redirect to the sign-in page that returns here.
pub struct Viewer(pub Principal);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Principal::from_request_parts(parts, state).await {
            Ok(p) => Ok(Viewer(p)),
            Err(Error::Unauthorized(_)) => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                Err(Redirect::to(&login_redirect(here)).into_response())
            }
            Err(e) => Err(error_page(e.status(), None, &e.to_string())),
        }
    }
}

/// Which nav item is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The list.
    Workspaces,
    /// Tokens.
    Tokens,
    /// The admin pages (shown to admins only).
    Admin,
    /// None (sign-in, errors).
    None,
}

/// The page shell: head, header with navigation and the signed-in user, main.
pub fn layout(title: &str, user: Option<&User>, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · lumie" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "lumie" }
                    @if let Some(u) = user {
                        nav aria-label="Main" {
                            a href="/" aria-current=[(nav == Nav::Workspaces).then_some("page")] { "Workspaces" }
                            a href="/settings/tokens" aria-current=[(nav == Nav::Tokens).then_some("page")] { "API tokens" }
                            @if u.is_admin {
                                a href=(admin::PAGES[0].0) aria-current=[(nav == Nav::Admin).then_some("page")] { "Admin" }
                            }
                        }
                        div.who {
                            span.user { (u.username) }
                            @if u.is_admin { span.badge.admin { "admin" } }
                            form method="post" action="/logout" {
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// An HTML page (status code, `no-store`, `nosniff`, a frame ban).
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    r
}

/// A page that says what went wrong, in the server's own sentence.
pub fn error_page(status: StatusCode, user: Option<&User>, message: &str) -> Response {
    let title = if status == StatusCode::NOT_FOUND {
        "Not found"
    } else {
        "Something went wrong"
    };
    html_response(
        status,
        layout(
            title,
            user,
            Nav::None,
            html! {
                section.card.error role="alert" {
                    h1 { (title) }
                    p #error-message { (message) }
                    p { a href="/" { "Back to your workspaces" } }
                }
            },
        ),
    )
}

/// The status badge: a fixed-width pill, so a live change does not move the row.
pub fn status_badge(status: WorkspaceStatus) -> Markup {
    let s = status.as_str();
    html! { span class={ "status status-" (s) } data-status=(s) { (s) } }
}

/// A time for people (UTC, to the minute) in a `<time>` element carrying the exact value.
pub fn when(ms: Option<i64>) -> Markup {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
                (t.format("%Y-%m-%d %H:%M UTC"))
            }
        },
        None => html! { span.muted { "never" } },
    }
}

/// A duration for people: `42 s`, `3 min 5 s`, `2 h 10 min`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0 => "under 1 s".into(),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_are_local() {
        let cases = [
            (None, "/"),
            (Some("/"), "/"),
            (Some("/@alice/dev"), "/@alice/dev"),
            (Some("/settings/tokens?x=1"), "/settings/tokens?x=1"),
            (Some("https://evil.example/"), "/"),
            (Some("//evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("/a\\b"), "/"),
            (Some("/x\r\nSet-Cookie: a=b"), "/"),
            (Some("relative"), "/"),
            (Some("https:evil.example"), "/"),
            (Some("/\t/evil.example"), "/"),
            (Some(""), "/"),
        ];
        for (input, want) in cases {
            assert_eq!(safe_return_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn login_redirects_carry_the_page_encoded() {
        assert_eq!(login_redirect("/"), "/login");
        assert_eq!(
            login_redirect("/@alice/dev?tab=x&y=1"),
            "/login?redirect=%2F%40alice%2Fdev%3Ftab%3Dx%26y%3D1"
        );
        assert_eq!(login_redirect("//evil.example"), "/login");
    }

    #[test]
    fn form_origin_table() {
        let access = AccessUrl::parse("https://coder.example").unwrap();
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some("https://coder.example"), None, true),
            (
                Some("https://evil.example"),
                Some("https://coder.example/login"),
                false,
            ),
            (Some("null"), None, false),
            (None, Some("https://coder.example/login?redirect=%2F"), true),
            (None, Some("https://coder.example.evil.example/"), false),
            (None, None, false),
        ];
        for (origin, referer, ok) in cases {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            if let Some(r) = referer {
                h.insert(header::REFERER, r.parse().unwrap());
            }
            assert_eq!(
                same_origin_form(&access, &h).is_ok(),
                *ok,
                "{origin:?} {referer:?}"
            );
        }
    }

    #[test]
    fn durations_and_escaping() {
        assert_eq!(duration(420), "under 1 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        let page = layout("<b>x</b>", None, Nav::None, html! { p { ("<script>") } });
        let s = page.into_string();
        assert!(s.contains("&lt;b&gt;x&lt;/b&gt;"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
    }
}
