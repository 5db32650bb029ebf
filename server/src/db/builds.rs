//! Builds: queueing one (at most one in flight per workspace), and its lifecycle.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::AuditEvent;
use super::{Backend, Db, bad_value, is_unique_violation, new_id};
use crate::error::{Error, Result};
use crate::model::*;

const BUILD_COLS: &str = "id, workspace_id, number, transition, status, error, initiator_id, \
    created_at, started_at, completed_at";

fn build_from(row: &AnyRow) -> Result<BuildRecord> {
    let transition: String = row.try_get("transition")?;
    let status: String = row.try_get("status")?;
    Ok(BuildRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        number: row.try_get("number")?,
        transition: Transition::parse(&transition)
            .ok_or_else(|| bad_value("transition", &transition))?,
        status: BuildStatus::parse(&status).ok_or_else(|| bad_value("build status", &status))?,
        error: row.try_get("error")?,
        initiator_id: row.try_get("initiator_id")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

impl Db {
    /// Queues a build and records the desired state it asks for, in one transaction. A build
    /// already in flight, or a deleted workspace, is a [`Error::Conflict`].
    pub async fn create_build(
        &self,
        workspace_id: &str,
        transition: Transition,
        initiator: Option<&User>,
    ) -> Result<BuildRecord> {
        self.create_build_from(workspace_id, transition, initiator, None)
            .await
    }

    /// [`Db::create_build`], recording the initiator's client address in the audit log.
    pub async fn create_build_from(
        &self,
        workspace_id: &str,
        transition: Transition,
        initiator: Option<&User>,
        client_ip: Option<IpAddr>,
    ) -> Result<BuildRecord> {
        let now = now_ms();
        let id = new_id();
        let before = self.workspace(workspace_id).await?.map(|w| w.desired_state);
        let mut tx = self.pool.begin().await?;
        // Write first: on SQLite this takes the write lock before any read.
        let updated = sqlx::query(
            "UPDATE workspaces SET desired_state = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL \
             AND desired_state <> 'deleted'",
        )
        .bind(workspace_id)
        .bind(transition.desired_state().as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::Conflict(
                "the workspace is deleted or being deleted".into(),
            ));
        }
        let number: i64 = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) + 1 AS n FROM builds WHERE workspace_id = $1",
        )
        .bind(workspace_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let inserted = sqlx::query(
            "INSERT INTO builds (id, workspace_id, number, transition, status, initiator_id, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
        )
        .bind(&id)
        .bind(workspace_id)
        .bind(number)
        .bind(transition.as_str())
        .bind(initiator.map(|u| u.id.clone()))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(
                    "a build is already in progress for this workspace; wait for it to finish"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Self::audit_in(
            &mut tx,
            &AuditEvent {
                actor: initiator,
                client_ip,
                action: &format!("build.{}", transition.as_str()),
                workspace_id: Some(workspace_id),
                detail: &format!("build #{number}"),
                before: before.map(|d| d.as_str().to_string()),
                after: Some(transition.desired_state().as_str().into()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(BuildRecord {
            id,
            workspace_id: workspace_id.into(),
            number,
            transition,
            status: BuildStatus::Pending,
            error: None,
            initiator_id: initiator.map(|u| u.id.clone()),
            created_at: now,
            started_at: None,
            completed_at: None,
        })
    }

    /// A build by id.
    pub async fn build(&self, id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(build_from).transpose()
    }

    /// The newest build of a workspace.
    pub async fn latest_build(&self, workspace_id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE workspace_id = $1 ORDER BY number DESC LIMIT 1"
        ))
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(build_from).transpose()
    }

    /// The newest build of every live workspace (of one owner, or all), by workspace id.
    pub async fn latest_builds(
        &self,
        owner_id: Option<&str>,
    ) -> Result<BTreeMap<String, BuildRecord>> {
        let rows = sqlx::query(
            "SELECT b.id, b.workspace_id, b.number, b.transition, b.status, b.error, b.initiator_id, \
             b.created_at, b.started_at, b.completed_at FROM builds b JOIN workspaces w ON w.id = b.workspace_id \
             JOIN (SELECT m.workspace_id, MAX(m.number) AS n FROM builds m GROUP BY m.workspace_id) latest \
             ON latest.workspace_id = b.workspace_id AND latest.n = b.number \
             WHERE w.deleted_at IS NULL AND ($1 = '' OR w.owner_id = $1)",
        )
        .bind(owner_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| build_from(r).map(|b| (b.workspace_id.clone(), b)))
            .collect()
    }

    /// Builds of a workspace, newest first.
    pub async fn list_builds(&self, workspace_id: &str) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE workspace_id = $1 ORDER BY number DESC"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(build_from).collect()
    }

    /// Builds still pending or running (after a restart: the ones to finish), oldest first.
    pub async fn active_builds(&self) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE status IN ('pending', 'running') ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(build_from).collect()
    }

    /// Moves a build to `running` (from `pending`, or again from `running` after a restart).
    pub async fn start_build(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET status = 'running', started_at = COALESCE(started_at, $2) \
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` active builds for `me` until `expires_at`, oldest first: those with
    /// no holder or whose claim expired by `now` (the rule
    /// [`crate::builds::claimable`] states). On PostgreSQL rows another transaction is claiming
    /// right now are skipped (`FOR UPDATE SKIP LOCKED`), and a row claimed and committed since
    /// this statement's snapshot is re-checked under its lock, so two replicas never both get
    /// one build; SQLite has one writer, so the conditional UPDATE is atomic as it stands.
    pub async fn claim_builds(
        &self,
        me: &str,
        now: i64,
        expires_at: i64,
        limit: i64,
    ) -> Result<Vec<BuildRecord>> {
        let rule = "status IN ('pending', 'running') AND (claimed_by IS NULL \
                    OR claim_expires_at IS NULL OR claim_expires_at <= $3)";
        let sql = match self.backend {
            // Materialized: an inlined subquery with LIMIT may be evaluated more than once in
            // one UPDATE and so claim more rows than asked for.
            Backend::Postgres => format!(
                "WITH picked AS MATERIALIZED (SELECT id FROM builds WHERE {rule} \
                 ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE builds SET claimed_by = $1, claim_expires_at = $2 \
                 WHERE id IN (SELECT id FROM picked) AND {rule} RETURNING {BUILD_COLS}"
            ),
            Backend::Sqlite => format!(
                "UPDATE builds SET claimed_by = $1, claim_expires_at = $2 WHERE id IN (\
                 SELECT id FROM builds WHERE {rule} ORDER BY created_at LIMIT $4) \
                 RETURNING {BUILD_COLS}"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(me)
            .bind(expires_at)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut builds = rows.iter().map(build_from).collect::<Result<Vec<_>>>()?;
        builds.sort_by_key(|b| b.created_at);
        Ok(builds)
    }

    /// Releases `me`'s claims on active builds (an executor starting, with nothing in flight).
    pub async fn release_build_claims(&self, me: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE builds SET claimed_by = NULL, claim_expires_at = NULL \
             WHERE claimed_by = $1 AND status IN ('pending', 'running')",
        )
        .bind(me)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Extends `me`'s claim on an active build to `expires_at`; `false` when the claim is no
    /// longer `me`'s (taken over after it expired) or the build ended.
    pub async fn renew_build_claim(&self, id: &str, me: &str, expires_at: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE builds SET claim_expires_at = $3 WHERE id = $1 AND claimed_by = $2 \
             AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(me)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// [`Db::start_build`] for the claim's holder only: `false` when `me` does not hold it.
    pub async fn start_claimed_build(&self, id: &str, me: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE builds SET status = 'running', started_at = COALESCE(started_at, $3) \
             WHERE id = $1 AND claimed_by = $2 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(me)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// [`Db::finish_build`] for the claim's holder only (the claim is cleared): `false` when
    /// `me` does not hold it, so a build ends once, by the replica that carried it out last.
    pub async fn finish_claimed_build(
        &self,
        id: &str,
        me: &str,
        status: BuildStatus,
        error: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE builds SET status = $3, error = $4, completed_at = $5, claim_expires_at = NULL \
             WHERE id = $1 AND claimed_by = $2 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(me)
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Who holds an active build's claim and until when (for tests and `doctor`).
    pub async fn build_claim(&self, id: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query(
            "SELECT claimed_by, claim_expires_at FROM builds WHERE id = $1 AND claimed_by IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((
                r.try_get("claimed_by")?,
                r.try_get::<Option<i64>, _>("claim_expires_at")?
                    .unwrap_or(0),
            ))),
        }
    }

    /// Ids and change times of live workspaces changed after `since` (ms), for the leader's
    /// fallback poll: a change made through another replica is seen within the poll interval
    /// even before a cross-replica signal arrives.
    pub async fn workspaces_changed_since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, updated_at FROM workspaces WHERE updated_at > $1 AND deleted_at IS NULL",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("updated_at")?)))
            .collect()
    }

    /// Finishes a build (succeeded, failed or canceled) with its error.
    pub async fn finish_build(
        &self,
        id: &str,
        status: BuildStatus,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET status = $2, error = $3, completed_at = $4 WHERE id = $1 \
             AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
