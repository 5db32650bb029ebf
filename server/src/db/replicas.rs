//! What several replicas share through the database beyond the other areas' rows: the
//! cross-replica signals ([`crate::bus`]), when sessions last used each workspace
//! ([`crate::sessions::SessionHub`]), and OIDC logins in progress (`identity::routes`), so a
//! login begun on one replica completes on another.

use sqlx::Row;

use super::Db;
use crate::error::Result;

impl Db {
    /// `NOTIFY channel, payload` (PostgreSQL only; the bus never runs on SQLite).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Db {
    /// Records when sessions last used workspaces (`(workspace id, ms)`), in one statement;
    /// never moves a time back (another replica may have written a later one).
    pub async fn write_last_used(&self, uses: &[(String, i64)]) -> Result<()> {
        for chunk in uses.chunks(500) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "WITH v (id, t) AS (VALUES {}) \
                 UPDATE workspaces SET last_used_at = (SELECT v.t FROM v WHERE v.id = workspaces.id) \
                 WHERE workspaces.id IN (SELECT id FROM v WHERE workspaces.last_used_at IS NULL \
                 OR v.t > workspaces.last_used_at)",
                values.join(",")
            );
            let mut q = sqlx::query(&sql);
            for (id, t) in chunk {
                q = q.bind(id).bind(*t);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Workspaces used through a session after `since` (ms), with the time.
    pub async fn last_used_since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, last_used_at FROM workspaces WHERE last_used_at > $1 AND deleted_at IS NULL",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("last_used_at")?)))
            .collect()
    }
}

/// An OIDC login in progress as stored: whether it was used, and the login (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLogin {
    /// Already completed once.
    pub used: bool,
    /// The pending login, as JSON.
    pub login: String,
}

impl Db {
    /// Stores a login in progress under the hash of its state, after dropping expired ones
    /// (`created_at` before `expired_before`), this client's oldest beyond `per_client - 1`, and
    /// anyone's oldest beyond `max - 1`: a new login is never refused (see `LoginStore`).
    pub async fn insert_oidc_login(
        &self,
        state_hash: &str,
        login: &str,
        client_key: &str,
        now: i64,
        expired_before: i64,
        (max, per_client): (usize, usize),
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM oidc_logins WHERE created_at < $1")
            .bind(expired_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM oidc_logins WHERE client_key = $1 AND state_hash NOT IN \
             (SELECT state_hash FROM oidc_logins WHERE client_key = $1 \
              ORDER BY created_at DESC, state_hash LIMIT $2)",
        )
        .bind(client_key)
        .bind(per_client.saturating_sub(1) as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM oidc_logins WHERE created_at < \
             (SELECT created_at FROM oidc_logins ORDER BY created_at DESC LIMIT 1 OFFSET $1)",
        )
        .bind(max.saturating_sub(1) as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO oidc_logins (state_hash, login, client_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (state_hash) DO NOTHING",
        )
        .bind(state_hash)
        .bind(login)
        .bind(client_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The login stored under `state_hash`, unless it expired (created before `expired_before`).
    pub async fn oidc_login(
        &self,
        state_hash: &str,
        expired_before: i64,
    ) -> Result<Option<StoredLogin>> {
        let row = sqlx::query(
            "SELECT login, used_at FROM oidc_logins WHERE state_hash = $1 AND created_at >= $2",
        )
        .bind(state_hash)
        .bind(expired_before)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let used: Option<i64> = r.try_get("used_at")?;
            Ok(StoredLogin {
                used: used.is_some(),
                login: r.try_get("login")?,
            })
        })
        .transpose()
    }

    /// Marks the login used; false when it already was (by this or another replica) or is
    /// gone: each login completes once, whichever replica the callback reaches.
    pub async fn use_oidc_login(&self, state_hash: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE oidc_logins SET used_at = $2 WHERE state_hash = $1 AND used_at IS NULL",
        )
        .bind(state_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
