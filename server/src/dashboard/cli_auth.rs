//! `/cli-auth`: where `lumie login URL` sends a developer (as `coder login` does). Signed in (a
//! signed-out visit goes through `/login` and comes back), the page offers one button; its POST
//! creates an API token for the signed-in user, named for the CLI and expiring after
//! [`LIFETIME_DAYS`], and shows it once to paste into the terminal.
//!
//! The token is made by a POST form, never on GET (a link or an image cannot mint one), and the
//! POST must come from the access URL's own page ([`super::same_origin_form`]), like sign-in.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{Nav, Viewer, error_page, html_response, layout, same_origin_form};
use crate::caller::Principal;
use crate::db::AuditEvent;
use crate::identity::ClientIp;
use crate::state::AppState;

/// The page's path (the CLI prints and opens it).
pub const PATH: &str = "/cli-auth";
/// How long a CLI token works.
pub const LIFETIME_DAYS: i64 = 30;

/// The name a CLI token gets: recognisable in the token list, with when it was made.
pub fn token_name(now: DateTime<Utc>) -> String {
    format!("lumie CLI {}", now.format("%Y-%m-%d %H:%M UTC"))
}

/// `GET /cli-auth`.
pub async fn page(State(state): State<AppState>, Viewer(p): Viewer) -> Response {
    html_response(StatusCode::OK, markup(&state, &p, None))
}

/// `POST /cli-auth`: creates the token and shows it.
pub async fn create(
    State(state): State<AppState>,
    Viewer(p): Viewer,
    headers: HeaderMap,
    client_ip: Option<axum::Extension<ClientIp>>,
) -> Response {
    if let Err(why) = same_origin_form(&state.edge.access_url, &headers) {
        return error_page(StatusCode::FORBIDDEN, Some(&p.user), &why);
    }
    let now = Utc::now();
    let name = token_name(now);
    let expires = now.timestamp_millis() + LIFETIME_DAYS * 24 * 3600 * 1000;
    let (id, key) = match state
        .db
        .create_api_token_until(&p.user.id, &name, Some(expires))
        .await
    {
        Ok(t) => t,
        Err(e) => return error_page(e.status(), Some(&p.user), &e.to_string()),
    };
    if let Err(e) = state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: client_ip.map(|c| c.0.0).or(p.client_ip),
            action: "token.create",
            detail: &p.user.username,
            after: Some(format!("{id} {name}")),
            ..AuditEvent::default()
        })
        .await
    {
        return error_page(e.status(), Some(&p.user), &e.to_string());
    }
    html_response(StatusCode::OK, markup(&state, &p, Some(&key)))
}

fn markup(state: &AppState, p: &Principal, token: Option<&str>) -> Markup {
    let url = state.edge.access_url.origin();
    layout(
        "Sign in the lumie CLI",
        Some(&p.user),
        Nav::None,
        html! {
            section.card.narrow {
                h1 { "Sign in the lumie CLI" }
                @match token {
                    None => {
                        p { "This makes an API token for " strong { (p.user.username) }
                            " that the " code { "lumie" } " command line uses. It works for "
                            (LIFETIME_DAYS) " days; you can revoke it on the "
                            a href="/settings/tokens" { "API tokens" } " page." }
                        form method="post" action=(PATH) #cli-auth-form {
                            button.primary type="submit" { "Create a token for the CLI" }
                        }
                    }
                    Some(t) => {
                        div.new-token #new-token {
                            p { strong { "Paste it into your terminal now: " }
                                "it is shown once and stored only as a hash." }
                            label for="cli-token" { "Your CLI token" }
                            input #cli-token type="text" readonly spellcheck="false" value=(t);
                        }
                        p.hint { "Or sign in without the prompt: " code { "lumie login " (url) " --token <token>" } }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_fit_the_token_rules() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T12:34:56Z")
            .unwrap()
            .with_timezone(&Utc);
        let name = token_name(t);
        assert_eq!(name, "lumie CLI 2026-12-01 12:34 UTC");
        let req = crate::api::CreateKeyRequest {
            token_name: Some(name.clone()),
            lifetime_seconds: Some(LIFETIME_DAYS * 24 * 3600),
        };
        let (checked, _) = crate::api::token_request(&req, 0).expect("a valid token request");
        assert_eq!(checked, name);
    }
}
