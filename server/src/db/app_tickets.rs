//! The `app_tickets` and `app_sessions` tables of subdomain apps: a ticket minted on the access
//! URL for one signed-in user and one app host, usable once within its lifetime, and the
//! app-scoped credential the app host exchanges it for (the app host's cookie). Both are kept as
//! the hash of the secret; neither authenticates anything but its own app, and an app
//! credential is never an API token (the API never looks in `app_sessions`).

use std::time::Duration;

use sqlx::Row;

use super::users::user_from;
use super::{Db, hash_token, random_secret};
use crate::error::Result;
use crate::model::{User, now_ms};

/// Used tickets and expired credentials are kept this long past their expiry, then removed.
const KEEP_EXPIRED_MS: i64 = 3600 * 1000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Db {
    /// Mints a ticket for `user_id` and `app` valid for `ttl`; returns the ticket (only its hash
    /// is stored). Old rows of both tables are swept here, so the tables stay small.
    pub async fn create_app_ticket(
        &self,
        user_id: &str,
        app: &str,
        ttl: Duration,
    ) -> Result<String> {
        let now = now_ms();
        sqlx::query("DELETE FROM app_tickets WHERE expires_at < $1")
            .bind(now - KEEP_EXPIRED_MS)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM app_sessions WHERE expires_at < $1")
            .bind(now - KEEP_EXPIRED_MS)
            .execute(&self.pool)
            .await?;
        let ticket = random_secret(43);
        sqlx::query(
            "INSERT INTO app_tickets (ticket_hash, user_id, app, created_at, expires_at, used) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(hash_token(&ticket))
        .bind(user_id)
        .bind(app)
        .bind(now)
        .bind(now.saturating_add(ms(ttl)))
        .execute(&self.pool)
        .await?;
        Ok(ticket)
    }

    /// Consumes a ticket presented on the host of `app`: the user it was minted for, when it is
    /// known, for this app, unexpired and unused. One `UPDATE … RETURNING` marks it used, so of
    /// two replicas presented the same ticket at once only one gets the user.
    pub async fn consume_app_ticket(&self, ticket: &str, app: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE app_tickets SET used = 1 \
             WHERE ticket_hash = $1 AND app = $2 AND used = 0 AND expires_at > $3 \
             RETURNING user_id",
        )
        .bind(hash_token(ticket))
        .bind(app)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("user_id"))
            .transpose()
            .map_err(Into::into)
    }

    /// Issues the app-scoped credential for `user_id` on `app` (the app host's cookie value),
    /// valid for `ttl`; only its hash is stored.
    pub async fn create_app_session(
        &self,
        user_id: &str,
        app: &str,
        ttl: Duration,
    ) -> Result<String> {
        let token = random_secret(43);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO app_sessions (token_hash, user_id, app, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash_token(&token))
        .bind(user_id)
        .bind(app)
        .bind(now)
        .bind(now.saturating_add(ms(ttl)))
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// The user an app credential belongs to, when it was issued for this `app` and has not
    /// expired.
    pub async fn app_session_user(&self, token: &str, app: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT u.* FROM app_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.app = $2 AND s.expires_at > $3",
        )
        .bind(hash_token(token))
        .bind(app)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }
}
