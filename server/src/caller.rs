//! Who is calling: the [`Principal`] extractor and the chain of [`Authenticator`]s behind it.
//!
//! The chain holds [`ApiTokenAuthenticator`] (a token in `Coder-Session-Token`,
//! `Authorization: Bearer`, or the [`SESSION_COOKIE`] cookie). OIDC logins
//! ([`crate::identity`]) store their browser sessions hashed in the same `api_tokens` table
//! with an expiry and set the same cookie, so this one authenticator recognises both; handlers
//! only ever see a [`Principal`].

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use futures::future::BoxFuture;
use http::request::Parts;
use lumie_contract::agent_api::AGENT_TOKEN_HEADER;

use crate::db::{Db, OIDC_SESSION_TOKEN_NAME};
use crate::error::{Error, Result};
use crate::identity::ClientIp;
use crate::identity::sessions::cookie_value;
use crate::model::User;
use crate::state::AppState;

/// The session cookie's name, Coder's (scripts that read it keep working): set by an OIDC login
/// ([`crate::identity::sessions`]) only, `Path=/`, host-only; read here.
pub const SESSION_COOKIE: &str = "coder_session_token";

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API token (header or cookie).
    ApiToken,
    /// An OIDC login session.
    OidcSession,
    /// The app-scoped credential of one subdomain app (its app host's cookie); never accepted
    /// by the API.
    AppSession,
}

/// An authenticated user.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// How they authenticated.
    pub method: AuthMethod,
    /// The client address of the request (through the trusted proxy), for the audit log.
    pub client_ip: Option<IpAddr>,
}

impl Principal {
    /// Whether this principal may act on things owned by `owner_id`.
    pub fn may_act_for(&self, owner_id: &str) -> bool {
        self.user.is_admin || self.user.id == owner_id
    }

    /// Fails unless the principal is an admin.
    pub fn require_admin(&self) -> Result<()> {
        if self.user.is_admin {
            Ok(())
        } else {
            Err(Error::Forbidden("only admins may do this".into()))
        }
    }
}

/// One way of recognising a caller. `Ok(None)` means "not mine, ask the next one";
/// an `Err` stops the chain (credentials present but wrong).
pub trait Authenticator: Send + Sync {
    /// Short name, for logs.
    fn name(&self) -> &'static str;
    /// Looks at the request head.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Principal>>>;
}

/// The token a request carries in a header (`Coder-Session-Token` or `Authorization: Bearer`):
/// what a CLI or script sends. A browser never adds these on its own, so a request with one is
/// not riding on an ambient cookie.
pub fn header_token(headers: &http::HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.trim().to_string());
    }
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

/// How many [`SESSION_COOKIE`] cookies the request sends. More than one means a second cookie
/// of that name lives on a longer path or a parent domain (left over from an old app link, or
/// planted by a sibling site); which one the browser puts first is then the planter's choice.
pub fn session_cookie_count(headers: &http::HeaderMap) -> usize {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|kv| {
            kv.trim()
                .split_once('=')
                .is_some_and(|(k, _)| k == SESSION_COOKIE)
        })
        .count()
}

/// The session token in a request: `Coder-Session-Token`, `Authorization: Bearer`, or the cookie.
pub fn session_token(parts: &Parts) -> Option<String> {
    header_token(&parts.headers)
        .or_else(|| cookie_value(&parts.headers, SESSION_COOKIE).map(str::to_string))
}

/// API tokens stored hashed in the database.
pub struct ApiTokenAuthenticator {
    db: Db,
}

impl ApiTokenAuthenticator {
    /// Over this repository.
    pub fn new(db: Db) -> Self {
        ApiTokenAuthenticator { db }
    }
}

impl Authenticator for ApiTokenAuthenticator {
    fn name(&self) -> &'static str {
        "api-token"
    }

    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Option<Principal>>> {
        Box::pin(async move {
            let Some(token) = session_token(parts) else {
                return Ok(None);
            };
            if header_token(&parts.headers).is_none() && session_cookie_count(&parts.headers) > 1 {
                return Err(Error::Unauthorized(format!(
                    "several {SESSION_COOKIE} cookies were sent (one is left over from an old app \
                     link or was planted by another site): sign in again"
                )));
            }
            // Browser sessions of OIDC logins live in the same table, hashed the same way, and
            // arrive in the same cookie; expired ones are not found.
            match self.db.token_owner(&token).await? {
                Some((user, name)) => Ok(Some(Principal {
                    user,
                    method: if name == OIDC_SESSION_TOKEN_NAME {
                        AuthMethod::OidcSession
                    } else {
                        AuthMethod::ApiToken
                    },
                    client_ip: None,
                })),
                None => Err(Error::Unauthorized(
                    "invalid or expired session token".into(),
                )),
            }
        })
    }
}

/// The authenticators, asked in order.
#[derive(Clone, Default)]
pub struct AuthChain {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl AuthChain {
    /// A chain with API tokens only.
    pub fn api_tokens(db: Db) -> Self {
        AuthChain::default().with(Arc::new(ApiTokenAuthenticator::new(db)))
    }

    /// Appends an authenticator (e.g. OIDC sessions).
    pub fn with(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.authenticators.push(a);
        self
    }

    /// The first principal any authenticator recognises.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Principal> {
        for a in &self.authenticators {
            if let Some(p) = a.authenticate(parts).await? {
                tracing::trace!(authenticator = a.name(), user = %p.user.username, "authenticated");
                return Ok(p);
            }
        }
        Err(Error::Unauthorized(
            "authentication required: send a Coder-Session-Token header or Authorization: Bearer <token>"
                .into(),
        ))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let mut p = state.auth.authenticate(parts).await?;
        p.client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
        parts.extensions.insert(p.clone());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_sources_in_order() {
        assert_eq!(
            session_token(&parts(&[("Coder-Session-Token", "a")])),
            Some("a".into())
        );
        assert_eq!(
            session_token(&parts(&[("Authorization", "Bearer b")])),
            Some("b".into())
        );
        assert_eq!(
            session_token(&parts(&[("Cookie", "x=1; coder_session_token=c")])),
            Some("c".into())
        );
        assert_eq!(
            session_token(&parts(&[("Authorization", "Basic zzz")])),
            None
        );
        assert_eq!(session_token(&parts(&[])), None);
    }

    #[test]
    fn header_tokens_and_cookie_counts() {
        assert_eq!(
            header_token(&parts(&[("Cookie", "coder_session_token=c")]).headers),
            None
        );
        assert_eq!(
            header_token(&parts(&[("Authorization", "Bearer b")]).headers),
            Some("b".into())
        );
        let cases: &[(&[(&str, &str)], usize)] = &[
            (&[], 0),
            (&[("Cookie", "a=1")], 0),
            (&[("Cookie", "coder_session_token=c")], 1),
            (
                &[(
                    "Cookie",
                    "coder_session_token=x; a=1; coder_session_token=c",
                )],
                2,
            ),
            (
                &[
                    ("Cookie", "coder_session_token=x"),
                    ("Cookie", "coder_session_token=y"),
                ],
                2,
            ),
            (&[("Cookie", "xcoder_session_token=c")], 0),
        ];
        for (h, want) in cases {
            assert_eq!(session_cookie_count(&parts(h).headers), *want, "{h:?}");
        }
    }
}
