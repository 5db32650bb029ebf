//! The `session_keys` table: the Ed25519 keys session tickets are signed with (hex), shared by
//! every replica.

use sqlx::Row;

use super::Db;
use crate::error::Result;
use crate::model::now_ms;

/// One signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeyRow {
    /// Row id (`primary` for the one made on first start).
    pub id: String,
    /// The 32-byte secret, hex.
    pub secret_key: String,
    /// The 32-byte public key, hex.
    pub public_key: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl Db {
    /// Inserts the key `id` unless a row with that id exists (two replicas starting at once
    /// both keep the one that got in first).
    pub async fn insert_session_key_if_absent(
        &self,
        id: &str,
        secret_hex: &str,
        public_hex: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO session_keys (id, secret_key, public_key, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(secret_hex)
        .bind(public_hex)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The keys not retired, newest first.
    pub async fn session_keys(&self) -> Result<Vec<SessionKeyRow>> {
        let rows = sqlx::query(
            "SELECT id, secret_key, public_key, created_at FROM session_keys \
             WHERE retired_at IS NULL ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionKeyRow {
                    id: r.try_get("id")?,
                    secret_key: r.try_get("secret_key")?,
                    public_key: r.try_get("public_key")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
