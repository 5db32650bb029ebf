//! What several replicas share through the database beyond the other areas' rows: the
//! cross-replica signals ([`crate::bus`]), when sessions last used each workspace
//! ([`crate::sessions::SessionHub`]).

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
