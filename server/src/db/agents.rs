//! Agent rows: one per workspace, reset for each new pod, written in batches by heartbeats.

use lumie_contract::agent_api::{ConnectionStatus, LifecycleState};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, bad_value};
use crate::error::Result;
use crate::model::{AgentRecord, now_ms};

const AGENT_COLS: &str = "id, workspace_id, token_hash, lifecycle, lifecycle_reason, connection, \
    first_connected_at, last_contact_at, apps, stats, version, created_at, updated_at";

fn agent_from(row: &AnyRow) -> Result<AgentRecord> {
    let lifecycle: String = row.try_get("lifecycle")?;
    let connection: String = row.try_get("connection")?;
    let apps: String = row.try_get("apps")?;
    let stats: Option<String> = row.try_get("stats")?;
    Ok(AgentRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        token_hash: row.try_get("token_hash")?,
        lifecycle: LifecycleState::parse(&lifecycle)
            .ok_or_else(|| bad_value("lifecycle", &lifecycle))?,
        lifecycle_reason: row.try_get("lifecycle_reason")?,
        connection: ConnectionStatus::parse(&connection)
            .ok_or_else(|| bad_value("connection", &connection))?,
        first_connected_at: row.try_get("first_connected_at")?,
        last_contact_at: row.try_get("last_contact_at")?,
        apps: serde_json::from_str(&apps).unwrap_or_default(),
        stats: stats.and_then(|s| serde_json::from_str(&s).ok()),
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What one heartbeat changes in an agent row; many are written in one statement.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatWrite {
    /// Agent id.
    pub agent_id: String,
    /// Lifecycle reported.
    pub lifecycle: LifecycleState,
    /// Reason reported.
    pub lifecycle_reason: String,
    /// First contact of this pod, ms.
    pub first_connected_at: i64,
    /// This contact, ms.
    pub last_contact_at: i64,
    /// Apps as JSON.
    pub apps_json: String,
    /// Stats as JSON.
    pub stats_json: Option<String>,
    /// Agent version.
    pub version: String,
}

/// Rows per batched heartbeat statement (8 parameters each, below both databases' limits).
pub const HEARTBEAT_BATCH_ROWS: usize = 500;

impl Db {
    /// The agent of a workspace.
    pub async fn agent_for_workspace(&self, workspace_id: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE workspace_id = $1"
        ))
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// Agents of every live workspace (loaded into memory at start).
    pub async fn live_agents(&self) -> Result<Vec<AgentRecord>> {
        let rows = sqlx::query(
            "SELECT a.id, a.workspace_id, a.token_hash, a.lifecycle, a.lifecycle_reason, a.connection, \
             a.first_connected_at, a.last_contact_at, a.apps, a.stats, a.version, a.created_at, a.updated_at \
             FROM agents a JOIN workspaces w ON w.id = a.workspace_id WHERE w.deleted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from).collect()
    }

    /// Agents of live workspaces written since `since` (ms, by `updated_at`), and the agents
    /// of workspaces deleted since then (flagged `true`): what another replica changed. One
    /// query on two indexes (`agents_updated_at`, `workspaces_deleted_at`).
    pub async fn agents_changed_since(&self, since: i64) -> Result<Vec<(AgentRecord, bool)>> {
        let cols = "a.id, a.workspace_id, a.token_hash, a.lifecycle, a.lifecycle_reason, a.connection, \
             a.first_connected_at, a.last_contact_at, a.apps, a.stats, a.version, a.created_at, a.updated_at";
        let rows = sqlx::query(&format!(
            "SELECT {cols}, CAST(0 AS BIGINT) AS deleted FROM agents a JOIN workspaces w ON w.id = a.workspace_id \
             WHERE a.updated_at > $1 AND w.deleted_at IS NULL \
             UNION ALL \
             SELECT {cols}, CAST(1 AS BIGINT) AS deleted FROM agents a JOIN workspaces w ON w.id = a.workspace_id \
             WHERE w.deleted_at > $1"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let deleted: i64 = r.try_get("deleted")?;
                Ok((agent_from(r)?, deleted != 0))
            })
            .collect()
    }

    /// Sets a new token hash and resets the agent for a new pod (lifecycle `created`,
    /// `connecting`, connection timeout counted from now).
    pub async fn reset_agent(&self, agent_id: &str, token_hash: Option<&str>) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE agents SET token_hash = COALESCE($2, token_hash), lifecycle = 'created', lifecycle_reason = '', \
             connection = 'connecting', first_connected_at = NULL, last_contact_at = NULL, apps = '{}', \
             created_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(agent_id)
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes many heartbeats in as few statements as possible (one per
    /// [`HEARTBEAT_BATCH_ROWS`]). Rows of agents that no longer exist are skipped, never created;
    /// a heartbeat older than the row's last contact (another replica wrote a newer one) too.
    pub async fn write_heartbeats(&self, writes: &[HeartbeatWrite]) -> Result<()> {
        for chunk in writes.chunks(HEARTBEAT_BATCH_ROWS) {
            let mut values = String::with_capacity(chunk.len() * 48);
            for i in 0..chunk.len() {
                let b = i * 8;
                if i > 0 {
                    values.push(',');
                }
                values.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                ));
            }
            let sql = format!(
                "WITH v (id, lifecycle, lifecycle_reason, first_connected_at, last_contact_at, apps, stats, version) \
                 AS (VALUES {values}) \
                 UPDATE agents SET (lifecycle, lifecycle_reason, connection, first_connected_at, last_contact_at, \
                 apps, stats, version, updated_at) = \
                 (SELECT v.lifecycle, v.lifecycle_reason, 'connected', v.first_connected_at, v.last_contact_at, \
                 v.apps, v.stats, v.version, v.last_contact_at FROM v WHERE v.id = agents.id) \
                 WHERE agents.id IN (SELECT id FROM v WHERE agents.last_contact_at IS NULL \
                 OR v.last_contact_at >= agents.last_contact_at)"
            );
            let mut q = sqlx::query(&sql);
            for w in chunk {
                q = q
                    .bind(&w.agent_id)
                    .bind(w.lifecycle.as_str())
                    .bind(&w.lifecycle_reason)
                    .bind(w.first_connected_at)
                    .bind(w.last_contact_at)
                    .bind(&w.apps_json)
                    .bind(w.stats_json.clone())
                    .bind(&w.version);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Records computed connection statuses that changed (by agent id).
    pub async fn set_agent_connections(
        &self,
        changes: &[(String, ConnectionStatus)],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, c) in changes {
            sqlx::query("UPDATE agents SET connection = $2 WHERE id = $1")
                .bind(id)
                .bind(c.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
