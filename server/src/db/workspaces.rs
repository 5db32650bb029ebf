//! Workspaces: creation (with their agent row and first build, in one transaction), lookups,
//! derived status, deletion.

use std::net::IpAddr;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::AuditEvent;
use super::{Db, bad_value, is_unique_violation, new_id};
use crate::error::{Error, Result};
use crate::model::*;

pub(super) const WORKSPACE_COLS: &str = "w.id, w.owner_id, u.username AS owner_name, w.name, w.pod_name, \
    w.desired_state, w.status, w.status_reason, w.created_at, w.updated_at, w.status_changed_at, w.deleted_at";

pub(super) fn workspace_from(row: &AnyRow) -> Result<WorkspaceRecord> {
    let desired: String = row.try_get("desired_state")?;
    let status: String = row.try_get("status")?;
    Ok(WorkspaceRecord {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        owner_name: row.try_get("owner_name")?,
        name: row.try_get("name")?,
        pod_name: row.try_get("pod_name")?,
        desired_state: DesiredState::parse(&desired)
            .ok_or_else(|| bad_value("desired_state", &desired))?,
        status: WorkspaceStatus::parse(&status).ok_or_else(|| bad_value("status", &status))?,
        status_reason: row.try_get("status_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        status_changed_at: row.try_get("status_changed_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

/// What [`Db::create_workspace`] returns.
#[derive(Clone, Debug)]
pub struct CreatedWorkspace {
    /// The workspace.
    pub workspace: WorkspaceRecord,
    /// Its first build (start, pending).
    pub build: BuildRecord,
    /// Its agent row.
    pub agent_id: String,
}

impl Db {
    /// Creates a workspace, its agent row and its first (start) build in one transaction.
    /// A live workspace with the same owner and name, or the same pod name, is a
    /// [`Error::Conflict`] naming which.
    pub async fn create_workspace(
        &self,
        owner: &User,
        name: &str,
        pod_name: &str,
        initiator: Option<&User>,
    ) -> Result<CreatedWorkspace> {
        self.create_workspace_from(owner, name, pod_name, initiator, None)
            .await
    }

    /// [`Db::create_workspace`], recording the initiator's client address in the audit log.
    pub async fn create_workspace_from(
        &self,
        owner: &User,
        name: &str,
        pod_name: &str,
        initiator: Option<&User>,
        client_ip: Option<IpAddr>,
    ) -> Result<CreatedWorkspace> {
        let now = now_ms();
        let ws_id = new_id();
        let build_id = new_id();
        let agent_id = new_id();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO workspaces (id, owner_id, name, pod_name, desired_state, status, status_reason, \
             created_at, updated_at, status_changed_at) \
             VALUES ($1, $2, $3, $4, 'running', 'pending', 'build queued', $5, $5, $5)",
        )
        .bind(&ws_id)
        .bind(&owner.id)
        .bind(name)
        .bind(pod_name)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            drop(tx);
            if is_unique_violation(&e) {
                return Err(self.explain_workspace_conflict(owner, name, pod_name).await);
            }
            return Err(e.into());
        }
        // A placeholder hash: the build sets the real one when it writes the Secret.
        sqlx::query(
            "INSERT INTO agents (id, workspace_id, token_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(&agent_id)
        .bind(&ws_id)
        .bind(format!("unset-{agent_id}"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO builds (id, workspace_id, number, transition, status, initiator_id, created_at) \
             VALUES ($1, $2, 1, 'start', 'pending', $3, $4)",
        )
        .bind(&build_id)
        .bind(&ws_id)
        .bind(initiator.map(|u| u.id.clone()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::audit_in(
            &mut tx,
            &AuditEvent {
                actor: initiator,
                client_ip,
                action: "workspace.create",
                workspace_id: Some(&ws_id),
                detail: &format!("{}/{name}", owner.username),
                before: None,
                after: Some(DesiredState::Running.as_str().into()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedWorkspace {
            workspace: WorkspaceRecord {
                id: ws_id.clone(),
                owner_id: owner.id.clone(),
                owner_name: owner.username.clone(),
                name: name.into(),
                pod_name: pod_name.into(),
                desired_state: DesiredState::Running,
                status: WorkspaceStatus::Pending,
                status_reason: "build queued".into(),
                created_at: now,
                updated_at: now,
                status_changed_at: now,
                deleted_at: None,
            },
            build: BuildRecord {
                id: build_id,
                workspace_id: ws_id,
                number: 1,
                transition: Transition::Start,
                status: BuildStatus::Pending,
                error: None,
                initiator_id: initiator.map(|u| u.id.clone()),
                created_at: now,
                started_at: None,
                completed_at: None,
            },
            agent_id,
        })
    }

    async fn explain_workspace_conflict(&self, owner: &User, name: &str, pod_name: &str) -> Error {
        match self.workspace_by_owner_and_name(&owner.id, name).await {
            Ok(Some(_)) => Error::Conflict(format!(
                "workspace {}/{name} already exists",
                owner.username
            )),
            _ => Error::Conflict(format!(
                "workspace {}/{name} would use pod name {pod_name}, already used by another workspace; choose another name",
                owner.username
            )),
        }
    }

    /// A live workspace by id.
    pub async fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id WHERE w.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from).transpose()
    }

    /// A live workspace by owner id and name.
    pub async fn workspace_by_owner_and_name(
        &self,
        owner_id: &str,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
             WHERE w.owner_id = $1 AND w.name = $2 AND w.deleted_at IS NULL"
        ))
        .bind(owner_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from).transpose()
    }

    /// Live workspaces (not deleted), of one owner or all, by owner then name.
    pub async fn list_workspaces(&self, owner_id: Option<&str>) -> Result<Vec<WorkspaceRecord>> {
        let rows =
            match owner_id {
                Some(owner) => sqlx::query(&format!(
                    "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
                     WHERE w.deleted_at IS NULL AND w.owner_id = $1 ORDER BY u.username, w.name"
                ))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
                None => sqlx::query(&format!(
                    "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
                     WHERE w.deleted_at IS NULL ORDER BY u.username, w.name"
                ))
                .fetch_all(&self.pool)
                .await?,
            };
        rows.iter().map(workspace_from).collect()
    }

    /// Writes a derived status when it differs from the stored one; returns whether it changed.
    pub async fn set_workspace_status(
        &self,
        id: &str,
        status: WorkspaceStatus,
        reason: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4, \
             status_changed_at = CASE WHEN status = $2 THEN status_changed_at ELSE $4 END \
             WHERE id = $1 AND (status <> $2 OR status_reason <> $3)",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks a workspace deleted (its name becomes free again).
    pub async fn mark_workspace_deleted(&self, id: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE workspaces SET status = 'deleted', status_reason = '', deleted_at = $2, updated_at = $2, \
             status_changed_at = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
