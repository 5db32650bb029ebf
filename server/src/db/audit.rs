//! The audit log: who (from which client address) did what, with the value before and after.

use std::net::IpAddr;

use sqlx::Row;

use super::Db;
use crate::error::Result;
use crate::model::{AuditEntry, User, now_ms};

/// One audit log line to write: who (and from which client address) did what, with the value
/// before and after when something changed.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent<'a> {
    /// Acting user (none for the system).
    pub actor: Option<&'a User>,
    /// Client address as honoured through the trusted proxy.
    pub client_ip: Option<IpAddr>,
    /// `workspace.create`, `build.stop`, `user.role`, `policy.update`, …
    pub action: &'a str,
    /// Which workspace, when one.
    pub workspace_id: Option<&'a str>,
    /// Free text.
    pub detail: &'a str,
    /// Value before the change.
    pub before: Option<String>,
    /// Value after the change.
    pub after: Option<String>,
}

/// Which audit lines to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only this actor (name or id).
    pub user: Option<String>,
    /// Only this action; a trailing `*` matches a prefix (`build.*`).
    pub action: Option<String>,
    /// From this time on, ms since the epoch.
    pub since: Option<i64>,
    /// Before this time, ms since the epoch.
    pub until: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl Db {
    pub(super) async fn audit_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        e: &AuditEvent<'_>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_id, actor_name, action, workspace_id, detail, \
             client_ip, before_value, after_value) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(now_ms())
        .bind(e.actor.map(|u| u.id.clone()))
        .bind(e.actor.map(|u| u.username.as_str()).unwrap_or("system"))
        .bind(e.action)
        .bind(e.workspace_id)
        .bind(e.detail)
        .bind(e.client_ip.map(|ip| ip.to_string()))
        .bind(e.before.as_deref())
        .bind(e.after.as_deref())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records an audit event (with client address and before/after).
    pub async fn record(&self, event: &AuditEvent<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::audit_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The audit log, newest first, filtered.
    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        // Text parameters first, then integers: each clause takes the next `$n`.
        let mut sql = String::from("SELECT * FROM audit_log WHERE 1 = 1");
        let mut text: Vec<String> = vec![];
        let mut ints: Vec<i64> = vec![];
        let next = |text: &Vec<String>, ints: &Vec<i64>| text.len() + ints.len() + 1;
        if let Some(ws) = &f.workspace_id {
            sql.push_str(&format!(" AND workspace_id = ${}", next(&text, &ints)));
            text.push(ws.clone());
        }
        if let Some(user) = &f.user {
            let n = next(&text, &ints);
            sql.push_str(&format!(
                " AND (actor_name = ${n} OR actor_id = ${})",
                n + 1
            ));
            text.push(user.clone());
            text.push(user.clone());
        }
        if let Some(action) = &f.action {
            let n = next(&text, &ints);
            match action.strip_suffix('*') {
                Some(prefix) => {
                    sql.push_str(&format!(" AND action LIKE ${n}"));
                    text.push(format!("{}%", prefix.replace('%', "")));
                }
                None => {
                    sql.push_str(&format!(" AND action = ${n}"));
                    text.push(action.clone());
                }
            }
        }
        if let Some(since) = f.since {
            sql.push_str(&format!(" AND at >= ${}", next(&text, &ints)));
            ints.push(since);
        }
        if let Some(until) = f.until {
            sql.push_str(&format!(" AND at < ${}", next(&text, &ints)));
            ints.push(until);
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next(&text, &ints)));
        ints.push(f.limit);
        let mut q = sqlx::query(&sql);
        for t in &text {
            q = q.bind(t.as_str());
        }
        for i in &ints {
            q = q.bind(*i);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor_id: r.try_get("actor_id")?,
                    actor_name: r.try_get("actor_name")?,
                    action: r.try_get("action")?,
                    workspace_id: r.try_get("workspace_id")?,
                    detail: r.try_get("detail")?,
                    client_ip: r.try_get("client_ip")?,
                    before: r.try_get("before_value")?,
                    after: r.try_get("after_value")?,
                })
            })
            .collect()
    }
}
