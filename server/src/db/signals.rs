//! What the cross-replica signal carrier ([`crate::bus`]) sends through the database.

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
