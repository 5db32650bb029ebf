//! [`IdentityError`]: every way a login, a session or an edge check can fail.
//!
//! Each message says which failure it is and what to check, because the person reading it (an
//! operator in a log line, a developer on the error page) has to act on it: a wrong client secret,
//! an issuer that does not answer and clocks that disagree look the same to a browser otherwise.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// The Kubernetes Secret the Helm chart takes the OIDC client secret from.
pub const OIDC_SECRET_NAME: &str = "coder-oidc-secret";
/// The environment variable holding the OIDC client secret.
pub const OIDC_SECRET_ENV: &str = "CODER_OIDC_CLIENT_SECRET";

/// Identity failures.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The client secret is missing or blank: the server must not start.
    #[error(
        "OIDC client secret is missing or empty: set {OIDC_SECRET_ENV} (the `client-secret` value of Secret {OIDC_SECRET_NAME})"
    )]
    MissingClientSecret,
    /// A setting cannot work.
    #[error("invalid setting {setting}: {message}")]
    InvalidSetting {
        /// Environment variable.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Discovery, JWKS or token endpoint could not be reached at all.
    #[error(
        "OIDC issuer {issuer} does not answer ({reason}): check CODER_OIDC_ISSUER_URL and that the provider is up and reachable from the server"
    )]
    IssuerUnreachable {
        /// Issuer URL.
        issuer: String,
        /// Connection error.
        reason: String,
    },
    /// The issuer answered, but not with usable metadata or keys.
    #[error("OIDC issuer {issuer} answered badly: {reason}")]
    IssuerBadResponse {
        /// Issuer URL.
        issuer: String,
        /// What was wrong.
        reason: String,
    },
    /// Token endpoint said `invalid_client`: the secret (or client id) is wrong.
    #[error(
        "OIDC provider rejected the credentials of client `{client_id}` (invalid_client): the client secret in {OIDC_SECRET_ENV} (Secret {OIDC_SECRET_NAME}) does not match the client's secret at the provider"
    )]
    WrongClientSecret {
        /// Client id.
        client_id: String,
    },
    /// Token endpoint said `invalid_grant`: the code was already used, expired, or is not ours.
    #[error(
        "OIDC provider refused the authorization code (invalid_grant: {description}): it was already used (replayed code), has expired, or belongs to another login; sign in again"
    )]
    CodeRejected {
        /// Provider's description.
        description: String,
    },
    /// Any other token endpoint error.
    #[error("OIDC token endpoint refused the request ({error}: {description})")]
    TokenEndpoint {
        /// OAuth error code.
        error: String,
        /// Provider's description.
        description: String,
    },
    /// The provider redirected back with an error instead of a code.
    #[error("OIDC provider returned an error instead of a login ({error}: {description})")]
    ProviderError {
        /// OAuth error code, e.g. `access_denied`.
        error: String,
        /// Provider's description.
        description: String,
    },
    /// The ID token's `exp` is in the past even with the allowed skew.
    #[error(
        "ID token looks expired ({detail}): the clocks of this server and the OIDC provider differ by more than the allowed clock skew of {}s; check NTP on both", skew.as_secs()
    )]
    TokenExpired {
        /// What the verifier saw.
        detail: String,
        /// Allowed skew.
        skew: Duration,
    },
    /// The ID token's `iat` is in the future even with the allowed skew.
    #[error(
        "ID token looks not yet valid ({detail}): the clocks of this server and the OIDC provider differ by more than the allowed clock skew of {}s; check NTP on both", skew.as_secs()
    )]
    TokenNotYetValid {
        /// What the verifier saw.
        detail: String,
        /// Allowed skew.
        skew: Duration,
    },
    /// The nonce in the ID token is not the one this login sent.
    #[error(
        "ID token has the wrong nonce ({detail}): it was not issued for this login (replayed or injected token); sign in again"
    )]
    WrongNonce {
        /// What the verifier saw.
        detail: String,
    },
    /// The ID token's signature does not verify, also after refreshing the provider's keys.
    #[error("ID token signature is not valid ({detail})")]
    BadSignature {
        /// What the verifier saw.
        detail: String,
    },
    /// Issuer, audience or another claim of the ID token is wrong.
    #[error("ID token is not valid for this client ({detail})")]
    InvalidIdToken {
        /// What the verifier saw.
        detail: String,
    },
    /// The token response carried no ID token.
    #[error("OIDC token response has no ID token: is the `openid` scope allowed for the client?")]
    NoIdToken,
    /// A claim the user record needs is absent.
    #[error(
        "ID token has no `{claim}` claim: add a mapper for it to the client at the OIDC provider"
    )]
    MissingClaim {
        /// Claim name.
        claim: &'static str,
    },
    /// The callback's `iss` parameter names another issuer (mix-up attack or misconfiguration).
    #[error("login response comes from issuer {received}, expected {expected}")]
    IssuerMismatch {
        /// Configured issuer.
        expected: String,
        /// `iss` parameter.
        received: String,
    },
    /// The callback's `state` is not the one this browser's login set.
    #[error(
        "login response's state does not match this browser's login (tampered state, or a login started in another browser); sign in again"
    )]
    StateMismatch,
    /// The browser has no login in progress (the short-lived login cookie is missing).
    #[error(
        "no login in progress in this browser (login cookie missing or expired after 10 minutes); sign in again"
    )]
    NoLoginInProgress,
    /// The `state` names no login this server started (or it expired).
    #[error("login response names no login in progress (unknown or expired state); sign in again")]
    UnknownState,
    /// This exact login response was already used.
    #[error("this login response was already used (replayed authorization code); sign in again")]
    ReplayedCallback,
    /// The callback lacks `code` or `state`.
    #[error("login response is incomplete: missing `{0}` parameter")]
    MissingParameter(&'static str),
    /// Too many logins are in progress (unauthenticated memory use is bounded).
    #[error("too many logins in progress; try again in a minute")]
    TooManyLogins,
    /// The request arrived with another `Host` than the access URL's (the proxy stopped rewriting it).
    #[error(
        "request arrived for host {received:?} but this server is reached at {expected:?} (CODER_ACCESS_URL): the proxy in front (Teleport) must pass the access URL's host"
    )]
    HostMismatch {
        /// Access URL host.
        expected: String,
        /// `Host` of the request.
        received: String,
    },
    /// A WebSocket upgrade from a page of another origin.
    #[error(
        "WebSocket from origin {received:?} refused: only pages of {expected:?} (CODER_ACCESS_URL) may open one"
    )]
    OriginMismatch {
        /// Access URL origin.
        expected: String,
        /// `Origin` of the request.
        received: String,
    },
    /// Writing the user or the session to the database failed (or the owner name is taken).
    #[error("identity store: {0}")]
    Store(String),
}

/// A database error during a login or logout, as the login routes report it.
impl From<crate::error::Error> for IdentityError {
    fn from(e: crate::error::Error) -> Self {
        match e {
            crate::error::Error::Identity(e) => e,
            other => IdentityError::Store(other.to_string()),
        }
    }
}

impl IdentityError {
    /// A short stable name of the failure for log fields and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::MissingClientSecret => "missing_client_secret",
            IdentityError::InvalidSetting { .. } => "invalid_setting",
            IdentityError::IssuerUnreachable { .. } => "issuer_unreachable",
            IdentityError::IssuerBadResponse { .. } => "issuer_bad_response",
            IdentityError::WrongClientSecret { .. } => "wrong_client_secret",
            IdentityError::CodeRejected { .. } => "code_rejected",
            IdentityError::TokenEndpoint { .. } => "token_endpoint",
            IdentityError::ProviderError { .. } => "provider_error",
            IdentityError::TokenExpired { .. } => "clock_skew_expired",
            IdentityError::TokenNotYetValid { .. } => "clock_skew_not_yet_valid",
            IdentityError::WrongNonce { .. } => "wrong_nonce",
            IdentityError::BadSignature { .. } => "bad_signature",
            IdentityError::InvalidIdToken { .. } => "invalid_id_token",
            IdentityError::NoIdToken => "no_id_token",
            IdentityError::MissingClaim { .. } => "missing_claim",
            IdentityError::IssuerMismatch { .. } => "issuer_mismatch",
            IdentityError::StateMismatch => "state_mismatch",
            IdentityError::NoLoginInProgress => "no_login_in_progress",
            IdentityError::UnknownState => "unknown_state",
            IdentityError::ReplayedCallback => "replayed_callback",
            IdentityError::MissingParameter(_) => "missing_parameter",
            IdentityError::TooManyLogins => "too_many_logins",
            IdentityError::HostMismatch { .. } => "host_mismatch",
            IdentityError::OriginMismatch { .. } => "origin_mismatch",
            IdentityError::Store(_) => "store",
        }
    }

    /// The HTTP status the failure answers with: 4xx when the request (or the browser's login)
    /// is at fault, 502 when the provider or the server's OIDC settings are, 500 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            IdentityError::StateMismatch
            | IdentityError::NoLoginInProgress
            | IdentityError::UnknownState
            | IdentityError::ReplayedCallback
            | IdentityError::MissingParameter(_)
            | IdentityError::WrongNonce { .. }
            | IdentityError::IssuerMismatch { .. }
            | IdentityError::CodeRejected { .. } => StatusCode::BAD_REQUEST,
            IdentityError::ProviderError { .. } => StatusCode::FORBIDDEN,
            IdentityError::OriginMismatch { .. } => StatusCode::FORBIDDEN,
            IdentityError::HostMismatch { .. } => StatusCode::MISDIRECTED_REQUEST,
            IdentityError::TooManyLogins => StatusCode::SERVICE_UNAVAILABLE,
            IdentityError::IssuerUnreachable { .. }
            | IdentityError::IssuerBadResponse { .. }
            | IdentityError::WrongClientSecret { .. }
            | IdentityError::TokenEndpoint { .. }
            | IdentityError::TokenExpired { .. }
            | IdentityError::TokenNotYetValid { .. }
            | IdentityError::BadSignature { .. }
            | IdentityError::InvalidIdToken { .. }
            | IdentityError::NoIdToken
            | IdentityError::MissingClaim { .. } => StatusCode::BAD_GATEWAY,
            IdentityError::MissingClientSecret
            | IdentityError::InvalidSetting { .. }
            | IdentityError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the operator (not the person at the browser) has to act: logged at `error`.
    pub fn is_operator_problem(&self) -> bool {
        self.status().is_server_error()
    }

    /// A small HTML page naming the failure, for browser routes.
    pub fn page(&self) -> Response {
        self.page_returning(None)
    }

    /// [`IdentityError::page`] whose "Sign in again" goes to the dashboard's sign-in page and
    /// from there back to `return_to` (a local path; anything else returns to `/`).
    pub fn page_returning(&self, return_to: Option<&str>) -> Response {
        let again = html_escape(&crate::dashboard::login_redirect(return_to.unwrap_or("/")));
        let message = html_escape(&self.to_string());
        let title = match self {
            IdentityError::HostMismatch { .. } | IdentityError::OriginMismatch { .. } => {
                "Request refused"
            }
            _ => "Sign-in failed",
        };
        let body = format!(
            "<!doctype html><html><head><title>{title}</title></head><body>\
             <h1>{title}</h1><p id=\"message\">{message}</p>\
             <p>Failure: <code id=\"kind\">{}</code></p>\
             <p><a href=\"{again}\">Sign in again</a></p></body></html>",
            self.kind()
        );
        (self.status(), Html(body)).into_response()
    }
}

/// JSON in Coder's error shape (`{"message": …, "detail": …}`), for API routes.
impl IntoResponse for IdentityError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.to_string(), "detail": self.kind() });
        (self.status(), axum::Json(body)).into_response()
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_failure_on_one_line() {
        let skew = Duration::from_secs(120);
        let cases: Vec<(IdentityError, &str)> = vec![
            (IdentityError::MissingClientSecret, "coder-oidc-secret"),
            (
                IdentityError::MissingClientSecret,
                "CODER_OIDC_CLIENT_SECRET",
            ),
            (
                IdentityError::WrongClientSecret {
                    client_id: "coder".into(),
                },
                "invalid_client",
            ),
            (
                IdentityError::IssuerUnreachable {
                    issuer: "http://kc/realms/infra".into(),
                    reason: "connection refused".into(),
                },
                "does not answer",
            ),
            (
                IdentityError::TokenExpired {
                    detail: "exp".into(),
                    skew,
                },
                "allowed clock skew of 120s",
            ),
            (
                IdentityError::TokenNotYetValid {
                    detail: "iat".into(),
                    skew,
                },
                "not yet valid",
            ),
            (IdentityError::StateMismatch, "tampered state"),
            (IdentityError::ReplayedCallback, "replayed"),
            (
                IdentityError::WrongNonce { detail: "x".into() },
                "wrong nonce",
            ),
            (
                IdentityError::HostMismatch {
                    expected: "coder.example.com".into(),
                    received: "10.0.0.5:8080".into(),
                },
                "\"10.0.0.5:8080\" but this server is reached at \"coder.example.com\"",
            ),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            assert!(text.contains(want), "{text:?} lacks {want:?}");
            assert!(!text.contains('\n'), "one line: {text:?}");
        }
    }

    #[test]
    fn statuses_blame_the_right_side() {
        assert_eq!(
            IdentityError::StateMismatch.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            IdentityError::WrongClientSecret {
                client_id: "c".into()
            }
            .status(),
            StatusCode::BAD_GATEWAY
        );
        assert!(IdentityError::MissingClientSecret.is_operator_problem());
        assert!(!IdentityError::ReplayedCallback.is_operator_problem());
    }

    #[test]
    fn sign_in_again_goes_to_the_dashboard_login_with_the_return_path() {
        let body = |r: Option<&str>| {
            let resp = IdentityError::ReplayedCallback.page_returning(r);
            let bytes =
                futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 16))
                    .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        assert!(body(None).contains(r#"<a href="/login">Sign in again</a>"#));
        assert!(
            body(Some("/@bob/dev?x=1&y=2"))
                .contains(r#"<a href="/login?redirect=%2F%40bob%2Fdev%3Fx%3D1%26y%3D2">"#),
            "{}",
            body(Some("/@bob/dev?x=1&y=2"))
        );
        assert!(body(Some("https://evil.example/")).contains(r#"<a href="/login">"#));
    }

    #[test]
    fn page_escapes_html() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
