//! The `api_tokens` table: API tokens and the browser sessions of OIDC logins, both stored as
//! the hash of the token, so one lookup ([`Db::token_owner`]) authenticates either.

use sqlx::Row;

use super::users::user_from;
use super::{Db, hash_token, random_secret};
use crate::error::Result;
use crate::identity::SessionRecord;
use crate::model::{User, now_ms};

/// `api_tokens.name` of browser sessions created by an OIDC login.
pub const OIDC_SESSION_TOKEN_NAME: &str = "oidc-session";

impl Db {
    /// Issues an API token for a user; returns the token (shown once) — only its hash is stored.
    pub async fn create_api_token(&self, user_id: &str, name: &str) -> Result<String> {
        let id = random_secret(10);
        let token = format!("{id}-{}", random_secret(22));
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(hash_token(&token))
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// The user a token (API token or browser session) belongs to and the token's name
    /// ([`OIDC_SESSION_TOKEN_NAME`] for sessions), when it is known and not expired.
    pub async fn token_owner(&self, token: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query(
            "SELECT u.*, t.name AS token_name FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(hash_token(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|r| Ok((user_from(r)?, r.try_get("token_name")?)))
            .transpose()
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
