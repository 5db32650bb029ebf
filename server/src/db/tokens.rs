//! The `api_tokens` table: API tokens and the browser sessions of OIDC logins, both stored as
//! the hash of the token, so one lookup ([`Db::token_owner`]) authenticates either.
//! Listing and revoking ([`Db::list_api_tokens`], [`Db::revoke_api_token`]) see API tokens
//! only: sessions are revoked by logging out.

use sqlx::Row;

use super::users::user_from;
use super::{Db, hash_token, random_secret};
use crate::error::Result;
use crate::identity::SessionRecord;
use crate::model::{User, now_ms};

/// `api_tokens.name` of browser sessions created by an OIDC login (and by the dashboard's
/// token sign-in, which mints a session rather than putting the token in a cookie).
pub const OIDC_SESSION_TOKEN_NAME: &str = "oidc-session";

/// How stale `last_used_at` may get before a use writes it again: one write a minute per token
/// at most, not one per request.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// An API token as its owner sees it (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenInfo {
    /// Id: the token's prefix before the first `-`.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, to the minute.
    pub last_used_at: Option<i64>,
    /// Unix ms; none: does not expire.
    pub expires_at: Option<i64>,
}

impl Db {
    /// Issues an API token for a user; returns the token (shown once) — only its hash is stored.
    pub async fn create_api_token(&self, user_id: &str, name: &str) -> Result<String> {
        Ok(self.create_api_token_until(user_id, name, None).await?.1)
    }

    /// Issues a named API token that stops working at `expires_at` (Unix ms; none: never);
    /// returns its id and the token (shown once).
    pub async fn create_api_token_until(
        &self,
        user_id: &str,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<(String, String)> {
        let id = random_secret(10);
        let token = format!("{id}-{}", random_secret(22));
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(hash_token(&token))
        .bind(name)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    /// A user's API tokens, newest first (browser sessions left out).
    pub async fn list_api_tokens(&self, user_id: &str) -> Result<Vec<ApiTokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, last_used_at, expires_at FROM api_tokens \
             WHERE user_id = $1 AND name <> $2 ORDER BY created_at DESC, id",
        )
        .bind(user_id)
        .bind(OIDC_SESSION_TOKEN_NAME)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiTokenInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Revokes (deletes) one of a user's API tokens by id; `true` when there was one. Browser
    /// sessions are not revoked this way.
    pub async fn revoke_api_token(&self, user_id: &str, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE user_id = $1 AND id = $2 AND name <> $3")
            .bind(user_id)
            .bind(id)
            .bind(OIDC_SESSION_TOKEN_NAME)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The user a token (API token or browser session) belongs to and the token's name
    /// ([`OIDC_SESSION_TOKEN_NAME`] for sessions), when it is known and not expired.
    pub async fn token_owner(&self, token: &str) -> Result<Option<(User, String)>> {
        let hash = hash_token(token);
        let now = now_ms();
        let row = sqlx::query(
            "SELECT u.*, t.name AS token_name, t.last_used_at AS token_last_used_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(&hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let last_used: Option<i64> = r.try_get("token_last_used_at")?;
        if last_used.is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2")
                .bind(now)
                .bind(&hash)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some((user_from(&r)?, r.try_get("token_name")?)))
    }

    /// Stores a browser session in `api_tokens` (hash only, named [`OIDC_SESSION_TOKEN_NAME`]),
    /// so the API-token authenticator recognises its cookie until it expires.
    pub async fn create_session(&self, s: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at, client_ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(random_secret(10))
        .bind(&s.user_id)
        .bind(&s.token_hash)
        .bind(OIDC_SESSION_TOKEN_NAME)
        .bind(s.created_at.timestamp_millis())
        .bind(s.expires_at.timestamp_millis())
        .bind(s.client_ip.map(|ip| ip.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes (deletes) a browser session; `true` when there was one.
    pub async fn revoke_session(&self, token_hash: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1 AND name = $2")
            .bind(token_hash)
            .bind(OIDC_SESSION_TOKEN_NAME)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
