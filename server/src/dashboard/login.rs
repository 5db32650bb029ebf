//! `/login`: "Sign in with Keycloak" (only when OIDC is configured; it starts the existing flow
//! at [`LOGIN_PATH`] with the return path) and the break-glass token form; `/logout`.
//!
//! The token form's POST checks the token, then mints a browser session exactly like an OIDC
//! login does (stored hashed, 24 h, the same cookie), so the long-lived token itself never sits
//! in a cookie and signing out revokes only the session. Both POSTs must come from the access
//! URL's own pages ([`super::same_origin_form`]): nobody else can sign a browser in with their
//! token (login CSRF) or out.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, html_response, layout, safe_return_path, same_origin_form};
use crate::caller::Principal;
use crate::db::AuditEvent;
use crate::identity::ClientIp;
use crate::identity::routes::LOGIN_PATH;
use crate::identity::sessions::{CookieSettings, DEFAULT_SESSION_LIFETIME, new_session};
use crate::state::AppState;

/// `GET /login` query.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    /// Where to go after signing in (a local path).
    pub redirect: Option<String>,
}

/// `GET /login`: already signed in, straight on to the destination.
pub async fn page(
    State(state): State<AppState>,
    Query(q): Query<LoginQuery>,
    req: axum::extract::Request,
) -> Response {
    let back = safe_return_path(q.redirect.as_deref());
    let (mut parts, _) = req.into_parts();
    if <Principal as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    .is_ok()
    {
        return Redirect::to(&back).into_response();
    }
    html_response(StatusCode::OK, login_markup(&state, &back, None))
}

fn login_markup(state: &AppState, back: &str, error: Option<&str>) -> Markup {
    let oidc = state.edge.identity.is_some();
    let oidc_href = format!(
        "{LOGIN_PATH}?redirect={}",
        openidconnect::url::form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
    );
    layout(
        "Sign in",
        None,
        Nav::None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                @if let Some(e) = error {
                    p.alert #login-error role="alert" { (e) }
                }
                @if oidc {
                    p { a.button.primary #oidc-login href=(oidc_href) { "Sign in with Keycloak" } }
                    hr;
                }
                details open[!oidc] {
                    summary { "Sign in with an API token (break-glass)" }
                    form method="post" action="/login" #token-login {
                        input type="hidden" name="redirect" value=(back);
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="off" required
                            spellcheck="false";
                        p.hint { "The first admin's token is printed in the server log at first start; "
                            "others come from " code { "POST /api/v2/users/{user}/keys" } "." }
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        },
    )
}

/// `POST /login` form.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    /// The API token.
    #[serde(default)]
    pub token: String,
    /// Where to go after.
    #[serde(default)]
    pub redirect: Option<String>,
}

/// `POST /login`: checks the token, mints a session, sets the cookie, goes back.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    client_ip: Option<axum::Extension<ClientIp>>,
    Form(form): Form<TokenForm>,
) -> Response {
    let back = safe_return_path(form.redirect.as_deref());
    let refuse = |status: StatusCode, why: &str| {
        html_response(status, login_markup(&state, &back, Some(why)))
    };
    if let Err(why) = same_origin_form(&state.edge.access_url, &headers) {
        return refuse(StatusCode::FORBIDDEN, &why);
    }
    let token = form.token.trim();
    if token.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Enter an API token.");
    }
    let user = match state.db.token_owner(token).await {
        Ok(Some((user, _))) => user,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "That token is not valid: it is unknown, revoked or expired.",
            );
        }
        Err(e) => return refuse(e.status(), &e.to_string()),
    };
    let ip = client_ip.map(|c| c.0.0);
    let (session, record) = new_session(&user.id, DEFAULT_SESSION_LIFETIME, Utc::now(), ip);
    if let Err(e) = state.db.create_session(&record).await {
        return refuse(e.status(), &e.to_string());
    }
    if let Err(e) = state
        .db
        .record(&AuditEvent {
            actor: Some(&user),
            client_ip: ip,
            action: "session.token_login",
            detail: &user.username,
            ..AuditEvent::default()
        })
        .await
    {
        return refuse(e.status(), &e.to_string());
    }
    let cookie = CookieSettings::for_access_url(&state.edge.access_url)
        .set_session(&session, DEFAULT_SESSION_LIFETIME);
    let mut r = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`: revokes the browser session (not API tokens) and clears the cookie.
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(why) = same_origin_form(&state.edge.access_url, &headers) {
        return super::error_page(StatusCode::FORBIDDEN, None, &why);
    }
    let cookies = CookieSettings::for_access_url(&state.edge.access_url);
    if let Some(token) = cookies.session_token(&headers)
        && let Err(e) = state.db.revoke_session(&token.hash()).await
    {
        return super::error_page(e.status(), None, &e.to_string());
    }
    let mut r = Redirect::to(super::LOGIN_PAGE).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookies.clear_session()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
