//! `/settings/tokens`: create a named API token with an expiry (shown once), list yours (name,
//! created, last used, expiry) and revoke one. The page's JS calls the token API
//! (`GET`/`POST /api/v2/users/me/keys`, `DELETE /api/v2/users/me/keys/{id}`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::{Nav, Viewer, error_page, html_response, layout, when};
use crate::db::ApiTokenInfo;
use crate::model::now_ms;
use crate::state::AppState;

/// Lifetimes the form offers, in days (the API takes any up to 366).
pub const LIFETIME_DAYS: &[(i64, &str)] = &[
    (1, "1 day"),
    (7, "7 days"),
    (30, "30 days"),
    (90, "90 days"),
    (365, "1 year"),
];

/// `GET /settings/tokens`.
pub async fn page(State(state): State<AppState>, Viewer(p): Viewer) -> Response {
    match state.db.list_api_tokens(&p.user.id).await {
        Ok(tokens) => html_response(
            StatusCode::OK,
            layout(
                "API tokens",
                Some(&p.user),
                Nav::Tokens,
                html! {
                    div.page-head { h1 { "API tokens" } }
                    section.card aria-labelledby="new-token-title" {
                        h2 #new-token-title { "New token" }
                        form #token-form novalidate {
                            div.field {
                                label for="token-name" { "Name" }
                                input #token-name name="token_name" type="text" required maxlength="64"
                                    autocomplete="off" placeholder="laptop CLI";
                            }
                            div.field {
                                label for="token-lifetime" { "Expires after" }
                                select #token-lifetime name="lifetime_days" {
                                    @for (days, label) in LIFETIME_DAYS {
                                        option value=(days) selected[*days == 30] { (label) }
                                    }
                                }
                            }
                            button.primary type="submit" { "Create token" }
                        }
                        p.alert #token-error role="alert" hidden {}
                        div.new-token #new-token hidden {
                            p { strong { "Copy it now: " } "it is shown once and stored only as a hash." }
                            label for="new-token-value" { "Your new token" }
                            input #new-token-value type="text" readonly spellcheck="false";
                        }
                    }
                    section.card aria-labelledby="tokens-title" {
                        h2 #tokens-title { "Your tokens" }
                        (token_table(&tokens, now_ms()))
                        p.hint { "Browser sessions are not listed: signing out ends this one." }
                    }
                },
            ),
        ),
        Err(e) => error_page(e.status(), Some(&p.user), &e.to_string()),
    }
}

fn token_table(tokens: &[ApiTokenInfo], now: i64) -> Markup {
    html! {
        p.empty #tokens-empty hidden[!tokens.is_empty()] { "No API tokens yet." }
        table.tokens #tokens hidden[tokens.is_empty()] {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Last used" }
                th scope="col" { "Expires" } th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for t in tokens {
                    tr #{ "token-" (t.id) } data-id=(t.id) {
                        td data-label="Name" { (t.name) }
                        td data-label="Created" { (when(Some(t.created_at))) }
                        td data-label="Last used" { (when(t.last_used_at)) }
                        td data-label="Expires" {
                            @match t.expires_at {
                                None => { "never" }
                                Some(e) if e <= now => { span.expired { "expired " } (when(Some(e))) }
                                Some(e) => { (when(Some(e))) }
                            }
                        }
                        td data-label="Actions" {
                            button.danger type="button" data-revoke=(t.id) data-name=(t.name)
                                aria-label={ "Revoke " (t.name) } { "Revoke" }
                        }
                    }
                }
            }
        }
    }
}
