//! Browser sessions: an opaque random token in a cookie, only its SHA-256 kept in the database
//! (a leaked database row does not log anyone in), an expiry, and revocation at logout.
//!
//! The database stores them ([`crate::db::Db::create_session`], hashed in `api_tokens`) and the
//! server's one authenticator ([`crate::caller`]) recognises the cookie, expiry included. The
//! cookie is built here: `HttpOnly`, `SameSite=Lax` (sent on the top-level redirect back from the
//! provider, not on cross-site posts), `Secure` when the access URL is https, and host-only (no
//! `Domain`), so it is never sent to workspace app subdomains.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use rand::RngCore;

use super::trusted_proxy::AccessUrl;
use crate::caller::SESSION_COOKIE;

/// How long a browser session lasts (Coder's default).
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Random bytes in a session token.
const TOKEN_BYTES: usize = 32;

/// A session token as handed to the browser. Never logged; only [`SessionToken::hash`] is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A new token: 32 bytes from the OS-seeded CSPRNG, hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SessionToken(hex::encode(bytes))
    }

    /// A token presented by a client (cookie value).
    pub fn presented(value: &str) -> Self {
        SessionToken(value.trim().to_string())
    }

    /// What the database keeps and looks the session up by: [`crate::db::hash_token`], as
    /// for API tokens.
    pub fn hash(&self) -> String {
        crate::db::hash_token(&self.0)
    }

    /// The token itself, for the `Set-Cookie` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A stored session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The user's id in the user store.
    pub user_id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Client address at login (as resolved through the trusted proxy), for the audit log.
    pub client_ip: Option<IpAddr>,
}

/// A fresh token and the record to store for it.
pub fn new_session(
    user_id: &str,
    lifetime: Duration,
    now: DateTime<Utc>,
    client_ip: Option<IpAddr>,
) -> (SessionToken, SessionRecord) {
    let token = SessionToken::generate();
    let record = SessionRecord {
        token_hash: token.hash(),
        user_id: user_id.to_string(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX),
        client_ip,
    };
    (token, record)
}

/// How the session cookie ([`SESSION_COOKIE`]) is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieSettings {
    /// `Secure` attribute (access URL is https).
    pub secure: bool,
}

impl CookieSettings {
    /// Settings for an access URL: `Secure` exactly when it is https.
    pub fn for_access_url(access: &AccessUrl) -> Self {
        CookieSettings {
            secure: access.is_https(),
        }
    }

    /// `Set-Cookie` value carrying a session token for `max_age`.
    pub fn set_session(&self, token: &SessionToken, max_age: Duration) -> String {
        set_cookie(SESSION_COOKIE, token.expose(), "/", max_age, self.secure)
    }

    /// `Set-Cookie` value removing the session cookie (logout).
    pub fn clear_session(&self) -> String {
        set_cookie(SESSION_COOKIE, "", "/", Duration::ZERO, self.secure)
    }

    /// The session token the request presents in its cookie, if any.
    pub fn session_token(&self, headers: &HeaderMap) -> Option<SessionToken> {
        cookie_value(headers, SESSION_COOKIE)
            .filter(|v| !v.is_empty())
            .map(SessionToken::presented)
    }
}

/// A `Set-Cookie` value: host-only (no `Domain`), `HttpOnly`, `SameSite=Lax`, `Secure` on https.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration, secure: bool) -> String {
    let mut out = format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax",
        max_age.as_secs()
    );
    if secure {
        out.push_str("; Secure");
    }
    out
}

/// The value of cookie `name` in the request's `Cookie` headers (the first, when repeated).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert_eq!(a.hash().len(), 64);
        assert_ne!(a.hash(), a.expose());
        assert_eq!(a.hash(), SessionToken::presented(a.expose()).hash());
        assert!(!format!("{a:?}").contains(a.expose()), "Debug redacts");
        let now = Utc::now();
        let (token, record) = new_session("u1", Duration::from_secs(60), now, None);
        assert_eq!(record.token_hash, token.hash());
        assert_eq!(record.expires_at - now, chrono::Duration::seconds(60));
    }

    #[test]
    fn set_cookie_attributes_table() {
        let http = AccessUrl::parse("http://127.0.0.1:3000").unwrap();
        let https = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let token = SessionToken::presented("abc123");
        let day = Duration::from_secs(86400);
        let cases = [
            (
                CookieSettings::for_access_url(&https).set_session(&token, day),
                "coder_session_token=abc123; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax; Secure",
            ),
            (
                CookieSettings::for_access_url(&http).set_session(&token, day),
                "coder_session_token=abc123; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax",
            ),
            (
                CookieSettings::for_access_url(&https).clear_session(),
                "coder_session_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
            assert!(!got.to_ascii_lowercase().contains("domain="), "host-only");
        }
    }

    #[test]
    fn cookie_header_parsing() {
        let mut headers = HeaderMap::new();
        headers.append(
            "cookie",
            "a=1; coder_session_token=tok; b=2".parse().unwrap(),
        );
        headers.append("cookie", "coder_session_token=second".parse().unwrap());
        assert_eq!(cookie_value(&headers, "coder_session_token"), Some("tok"));
        assert_eq!(cookie_value(&headers, "b"), Some("2"));
        assert_eq!(cookie_value(&headers, "session"), None);
        let settings = CookieSettings { secure: false };
        assert_eq!(
            settings.session_token(&headers).map(|t| t.hash()),
            Some(SessionToken::presented("tok").hash())
        );
        let mut empty = HeaderMap::new();
        empty.append("cookie", "coder_session_token=".parse().unwrap());
        assert!(settings.session_token(&empty).is_none());
    }
}
