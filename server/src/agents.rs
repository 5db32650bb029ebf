//! The agent table: heartbeats, connection status and agent metrics, in memory and batched to
//! the database. The HTTP handler for heartbeats is in [`crate::api`].
//!
//! Heartbeats are cheap by construction: the caller is authenticated before it gets here (by
//! [`crate::agent_api::AgentAuth`], from memory for a token seen before), the heartbeat updates
//! memory, and a flusher writes every pending heartbeat in one batched statement per interval —
//! never more than one database write per heartbeat, no database read at all. A restarted
//! server answers every reconnecting agent from memory.
//!
//! With several replicas on one PostgreSQL, an agent's heartbeats land on any of them, so each
//! replica's memory is a cache: every flush interval it reads what the others wrote since the
//! last look (one indexed query, [`Db::agents_changed_since`]) and merges it newest-wins
//! ([`merge`]); the heartbeat write itself never lets an older contact overwrite a newer one.
//! No replica's view lags the database by more than about a second.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumie_contract::agent_api::{
    AppHealth, ConnectionStatus, HeartbeatRequest, HeartbeatResponse, LifecycleState,
};
use tokio::sync::Notify;

use crate::db::{Db, HEARTBEAT_BATCH_ROWS, HeartbeatWrite};
use crate::error::{Error, Result};
use crate::events::Dirty;
use crate::metrics::{AgentLabels, AppHealthLabels, Metrics};
use crate::model::{AgentRecord, AgentView, now_ms};

/// How often pending heartbeats are written (and, on PostgreSQL, other replicas' read).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How far before the previous refresh the next one looks: a row carries the time its
/// heartbeat arrived, is written up to a flush later, by a replica whose clock may differ a
/// little. Rows read twice merge to the same result.
pub const REFRESH_OVERLAP: Duration = Duration::from_secs(2);

/// What a refresh does with a row another replica may have written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Memory is as new or newer.
    Keep,
    /// The row is newer (a later contact, or a reset for a new pod): replace memory.
    Take,
    /// The workspace was deleted: forget the agent.
    Remove,
}

/// Newest wins: a row of a later (re)start replaces memory, and within one start the later
/// contact wins; a deleted workspace's agent goes.
pub fn merge(mem: Option<&AgentRecord>, row: &AgentRecord, deleted: bool) -> Merge {
    match mem {
        _ if deleted => Merge::Remove,
        None => Merge::Take,
        Some(m) if row.created_at != m.created_at => {
            if row.created_at > m.created_at {
                Merge::Take
            } else {
                Merge::Keep
            }
        }
        Some(m) if row.last_contact_at > m.last_contact_at => Merge::Take,
        Some(_) => Merge::Keep,
    }
}
/// Most app entries a heartbeat may carry (the template has a handful; each known slug becomes
/// a metric label, so the map is bounded before anything else looks at it).
pub const MAX_HEARTBEAT_APPS: usize = 16;
/// Longest app slug a heartbeat may name (a DNS label, like the Service port names).
pub const MAX_APP_SLUG_LEN: usize = 63;

/// The apps of a heartbeat the server keeps: more than [`MAX_HEARTBEAT_APPS`] entries or a slug
/// longer than [`MAX_APP_SLUG_LEN`] is a malformed request; a slug the workspace template has
/// no app for ([`lumie_contract::apps`]) is dropped. Returns the kept apps and the dropped slugs.
pub fn bound_heartbeat_apps(
    apps: BTreeMap<String, AppHealth>,
) -> Result<(BTreeMap<String, AppHealth>, Vec<String>)> {
    if apps.len() > MAX_HEARTBEAT_APPS {
        return Err(Error::BadRequest(format!(
            "heartbeat names {} apps; at most {MAX_HEARTBEAT_APPS} are accepted",
            apps.len()
        )));
    }
    if let Some(slug) = apps.keys().find(|s| s.len() > MAX_APP_SLUG_LEN) {
        return Err(Error::BadRequest(format!(
            "heartbeat app slug of {} bytes (starting {:?}); at most {MAX_APP_SLUG_LEN} are accepted",
            slug.len(),
            slug.chars().take(16).collect::<String>()
        )));
    }
    let (known, unknown): (BTreeMap<_, _>, BTreeMap<_, _>) = apps
        .into_iter()
        .partition(|(slug, _)| lumie_contract::apps::by_slug(slug).is_some());
    Ok((known, unknown.into_keys().collect()))
}

/// Connection status from the contact times: `connecting` until first contact, `timeout` when
/// none came within `timeout` of the agent's (re)start, `connected` while heard from within
/// 2 × `interval`, `disconnected` after.
pub fn connection_status(
    now_ms: i64,
    started_at_ms: i64,
    last_contact_ms: Option<i64>,
    interval: Duration,
    timeout: Duration,
) -> ConnectionStatus {
    match last_contact_ms {
        None if now_ms - started_at_ms > timeout.as_millis() as i64 => ConnectionStatus::Timeout,
        None => ConnectionStatus::Connecting,
        Some(t) if now_ms - t > 2 * interval.as_millis() as i64 => ConnectionStatus::Disconnected,
        Some(_) => ConnectionStatus::Connected,
    }
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, AgentRecord>,
    by_workspace: HashMap<String, String>,
    pending: HashMap<String, HeartbeatWrite>,
}

/// The agents of live workspaces, in memory.
pub struct AgentHub {
    db: Db,
    metrics: Arc<Metrics>,
    dirty: Arc<Dirty>,
    interval: Duration,
    timeout: Duration,
    inner: Mutex<Inner>,
    flush: Notify,
    /// When the last refresh read (ms); the next reads from a little before.
    refreshed_at: Mutex<i64>,
}

impl AgentHub {
    /// Loads the agents of every live workspace.
    pub async fn load(
        db: Db,
        metrics: Arc<Metrics>,
        dirty: Arc<Dirty>,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let mut inner = Inner::default();
        let loaded_at = now_ms();
        for a in db.live_agents().await? {
            inner
                .by_workspace
                .insert(a.workspace_id.clone(), a.id.clone());
            inner.agents.insert(a.id.clone(), a);
        }
        Ok(AgentHub {
            db,
            metrics,
            dirty,
            interval,
            timeout,
            inner: Mutex::new(inner),
            flush: Notify::new(),
            refreshed_at: Mutex::new(loaded_at),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("agent hub lock")
    }

    /// The report interval handed to agents.
    pub fn report_interval(&self) -> Duration {
        self.interval
    }

    /// The agent of a workspace.
    pub fn view(&self, workspace_id: &str) -> Option<AgentView> {
        let g = self.lock();
        let id = g.by_workspace.get(workspace_id)?;
        g.agents.get(id).map(AgentView::from)
    }

    /// Records a reset row in memory (see [`AgentHub::restart`]).
    fn reset(&self, record: AgentRecord) {
        let mut g = self.lock();
        g.pending.remove(&record.id);
        g.by_workspace
            .insert(record.workspace_id.clone(), record.id.clone());
        g.agents.insert(record.id.clone(), record);
    }

    /// A new pod means a fresh agent: resets its database row (lifecycle `created`, connection
    /// timeout counted from now), then memory. The one way to do it, so the two can never
    /// disagree about which pod an agent belongs to. (The row's token hash is no longer used:
    /// agents authenticate with their pod's projected token.)
    pub async fn restart(&self, workspace_id: &str) -> Result<()> {
        let known = self.lock().by_workspace.get(workspace_id).cloned();
        let agent_id = match known {
            Some(id) => id,
            None => {
                self.db
                    .agent_for_workspace(workspace_id)
                    .await?
                    .ok_or_else(|| missing_agent(workspace_id))?
                    .id
            }
        };
        self.db.reset_agent(&agent_id, None).await?;
        let fresh = self
            .db
            .agent_for_workspace(workspace_id)
            .await?
            .ok_or_else(|| missing_agent(workspace_id))?;
        self.reset(fresh);
        Ok(())
    }

    /// Forgets a deleted workspace's agent: its heartbeats are refused at once.
    pub fn remove_workspace(&self, workspace_id: &str) {
        let mut g = self.lock();
        if let Some(id) = g.by_workspace.remove(workspace_id) {
            g.agents.remove(&id);
            g.pending.remove(&id);
        }
    }

    /// Handles one heartbeat of the agent of `workspace_id` (already authenticated): bounds its
    /// apps, updates memory, queues the write.
    pub fn heartbeat(
        &self,
        workspace_id: &str,
        mut hb: HeartbeatRequest,
    ) -> Result<HeartbeatResponse> {
        let (apps, unknown) = bound_heartbeat_apps(std::mem::take(&mut hb.apps))?;
        hb.apps = apps;
        let now = now_ms();
        let apps_json = serde_json::to_string(&hb.apps).unwrap_or_else(|_| "{}".into());
        let stats_json = hb
            .stats
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok());
        let reason = hb.lifecycle_reason.unwrap_or_default();
        let (workspace_id, changed) = {
            let mut g = self.lock();
            let Some(agent_id) = g.by_workspace.get(workspace_id).cloned() else {
                return Err(Error::Unauthorized(
                    "no agent for this pod's workspace: the workspace was deleted".into(),
                ));
            };
            let rec = g
                .agents
                .get_mut(&agent_id)
                .expect("by_workspace and agents agree");
            let changed = rec.lifecycle != hb.lifecycle
                || rec.apps != hb.apps
                || rec.lifecycle_reason != reason
                || rec.connection != ConnectionStatus::Connected;
            let first = *rec.first_connected_at.get_or_insert(now);
            rec.lifecycle = hb.lifecycle;
            rec.lifecycle_reason = reason.clone();
            rec.connection = ConnectionStatus::Connected;
            rec.last_contact_at = Some(now);
            rec.apps = hb.apps;
            rec.stats = hb.stats;
            rec.version = hb.version.clone();
            rec.updated_at = now;
            let ws = rec.workspace_id.clone();
            g.pending.insert(
                agent_id.clone(),
                HeartbeatWrite {
                    agent_id,
                    lifecycle: hb.lifecycle,
                    lifecycle_reason: reason,
                    first_connected_at: first,
                    last_contact_at: now,
                    apps_json,
                    stats_json,
                    version: hb.version,
                },
            );
            (ws, changed)
        };
        self.metrics.heartbeats.inc();
        if !unknown.is_empty() {
            self.metrics
                .heartbeat_unknown_apps
                .inc_by(unknown.len() as u64);
            tracing::debug!(workspace = %workspace_id, apps = ?unknown, "heartbeat named apps the template does not have; dropped");
        }
        if changed {
            self.dirty.mark(&workspace_id);
            self.flush.notify_one();
        }
        Ok(HeartbeatResponse {
            report_interval_seconds: self.interval.as_secs(),
            ..Default::default()
        })
    }

    /// Writes every pending heartbeat (one statement per batch). Returns how many.
    ///
    /// When a batch fails (the database is down), it and the batches after it go back to the
    /// queue for the next flush, except where a newer heartbeat of that agent arrived meanwhile
    /// (it supersedes the old one) or the agent was reset or removed (its old heartbeat must not
    /// overwrite the reset row): a failed flush never loses the latest heartbeat.
    pub async fn flush(&self) -> Result<usize> {
        let writes: Vec<HeartbeatWrite> = {
            let mut g = self.lock();
            g.pending.drain().map(|(_, w)| w).collect()
        };
        let mut written = 0;
        for batch in writes.chunks(HEARTBEAT_BATCH_ROWS) {
            if let Err(e) = self.db.write_heartbeats(batch).await {
                let requeued = self.requeue(writes[written..].iter().cloned());
                tracing::debug!(requeued, "heartbeat flush failed; requeued");
                return Err(e);
            }
            written += batch.len();
        }
        Ok(written)
    }

    /// Puts unwritten heartbeats back in the queue (see [`AgentHub::flush`]). Returns how many.
    fn requeue(&self, unwritten: impl Iterator<Item = HeartbeatWrite>) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        for w in unwritten {
            // Still the agent's latest contact in memory: not reset (that clears the contact
            // time) nor removed since.
            let current = g
                .agents
                .get(&w.agent_id)
                .is_some_and(|a| a.last_contact_at == Some(w.last_contact_at));
            if current && !g.pending.contains_key(&w.agent_id) {
                g.pending.insert(w.agent_id.clone(), w);
                n += 1;
            }
        }
        n
    }

    /// Merges what other replicas wrote since the last refresh (see [`merge`]); marks the
    /// workspaces whose agent changed. Returns how many were marked.
    pub async fn refresh(&self) -> Result<usize> {
        let started = now_ms();
        let since =
            *self.refreshed_at.lock().expect("refresh lock") - REFRESH_OVERLAP.as_millis() as i64;
        let rows = self.db.agents_changed_since(since).await?;
        *self.refreshed_at.lock().expect("refresh lock") = started;
        let mut changed = vec![];
        {
            let mut g = self.lock();
            for (row, deleted) in rows {
                match merge(g.agents.get(&row.id), &row, deleted) {
                    Merge::Keep => {}
                    Merge::Remove => {
                        g.by_workspace.remove(&row.workspace_id);
                        g.agents.remove(&row.id);
                        g.pending.remove(&row.id);
                        changed.push(row.workspace_id);
                    }
                    Merge::Take => {
                        let old = g.agents.get(&row.id);
                        let differs = old.is_none_or(|o| {
                            o.lifecycle != row.lifecycle
                                || o.apps != row.apps
                                || o.lifecycle_reason != row.lifecycle_reason
                                || o.created_at != row.created_at
                        });
                        if old.is_some_and(|o| o.created_at != row.created_at) {
                            // A reset elsewhere: our queued heartbeat is of the old pod.
                            g.pending.remove(&row.id);
                        }
                        let mut row = row;
                        if let Some(o) = g.agents.get(&row.id) {
                            // The connection is this replica's to compute (the sweep does).
                            row.connection = o.connection;
                        }
                        g.by_workspace
                            .insert(row.workspace_id.clone(), row.id.clone());
                        if differs {
                            changed.push(row.workspace_id.clone());
                        }
                        g.agents.insert(row.id.clone(), row);
                    }
                }
            }
        }
        for ws in &changed {
            self.dirty.mark_local(ws);
        }
        Ok(changed.len())
    }

    /// Recomputes connection statuses at `now`, records changes (memory, database, dirty
    /// workspaces) and refreshes the agent metrics.
    pub async fn sweep(&self, now: i64) -> Result<()> {
        let mut changes = vec![];
        let mut by_labels: HashMap<(ConnectionStatus, LifecycleState), i64> = HashMap::new();
        let mut apps: HashMap<(String, AppHealth), i64> = HashMap::new();
        {
            let mut g = self.lock();
            for rec in g.agents.values_mut() {
                let c = connection_status(
                    now,
                    rec.created_at,
                    rec.last_contact_at,
                    self.interval,
                    self.timeout,
                );
                if c != rec.connection {
                    rec.connection = c;
                    changes.push((rec.id.clone(), rec.workspace_id.clone(), c));
                }
                *by_labels.entry((c, rec.lifecycle)).or_default() += 1;
                for (slug, h) in &rec.apps {
                    *apps.entry((slug.clone(), *h)).or_default() += 1;
                }
            }
        }
        self.metrics.agents.clear();
        for ((c, l), n) in by_labels {
            self.metrics
                .agents
                .get_or_create(&AgentLabels {
                    connection: c.as_str().into(),
                    lifecycle: l.as_str().into(),
                })
                .set(n);
        }
        self.metrics.app_health.clear();
        for ((slug, h), n) in apps {
            let health = h.as_str().to_string();
            self.metrics
                .app_health
                .get_or_create(&AppHealthLabels { app: slug, health })
                .set(n);
        }
        if !changes.is_empty() {
            for (_, ws, _) in &changes {
                self.dirty.mark(ws);
            }
            let rows: Vec<_> = changes.into_iter().map(|(id, _, c)| (id, c)).collect();
            self.db.set_agent_connections(&rows).await?;
        }
        Ok(())
    }

    /// Runs the flusher and the sweeper until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        let mut last_refresh = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
                _ = self.flush.notified() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "writing agent heartbeats failed; will retry");
            }
            if self.db.is_shared() && last_refresh.elapsed() >= FLUSH_INTERVAL {
                last_refresh = Instant::now();
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "reading other replicas' agent heartbeats from PostgreSQL failed; will retry");
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                if let Err(e) = self.sweep(now_ms()).await {
                    tracing::warn!(error = %e, "agent connection sweep failed");
                }
            }
        }
    }
}

/// Every live workspace has an agent row (created with it); its absence is a broken invariant.
fn missing_agent(workspace_id: &str) -> Error {
    Error::Internal(format!("no agent row for workspace {workspace_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_apps_bounds_table() {
        fn apps(slugs: &[&str]) -> BTreeMap<String, AppHealth> {
            slugs
                .iter()
                .map(|s| (s.to_string(), AppHealth::Healthy))
                .collect()
        }
        let long = "x".repeat(MAX_APP_SLUG_LEN + 1);
        let max_len = "y".repeat(MAX_APP_SLUG_LEN);
        let max_len_dropped = [max_len.as_str()];
        let many: Vec<String> = (0..=MAX_HEARTBEAT_APPS).map(|i| format!("a{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let at_most: Vec<&str> = many[..MAX_HEARTBEAT_APPS].to_vec();
        // (name, apps, Ok((kept, dropped)) or Err(words in the message))
        type Want<'a> = Result<(&'a [&'a str], &'a [&'a str]), &'a [&'a str]>;
        let cases: Vec<(&str, Vec<&str>, Want)> = vec![
            ("none", vec![], Ok((&[], &[]))),
            (
                "the template's apps",
                vec!["tilt", "code-server", "agents"],
                Ok((&["agents", "code-server", "tilt"], &[])),
            ),
            (
                "unknown slugs dropped",
                vec!["tilt", "grafana", "TILT"],
                Ok((&["tilt"], &["TILT", "grafana"])),
            ),
            (
                "a slug of the longest length is only unknown",
                vec![max_len.as_str()],
                Ok((&[], &max_len_dropped)),
            ),
            (
                "exactly the most entries",
                at_most.clone(),
                Ok((&[], &at_most[..])),
            ),
            (
                "one entry too many",
                many.clone(),
                Err(&["17 apps", "at most 16"]),
            ),
            (
                "slug too long",
                vec!["tilt", long.as_str()],
                Err(&["64 bytes", "at most 63"]),
            ),
        ];
        for (name, input, want) in cases {
            let got = bound_heartbeat_apps(apps(&input));
            match (got, want) {
                (Ok((kept, dropped)), Ok((want_kept, want_dropped))) => {
                    let kept: Vec<&str> = kept.keys().map(String::as_str).collect();
                    let mut dropped: Vec<&str> = dropped.iter().map(String::as_str).collect();
                    dropped.sort();
                    let mut want_dropped = want_dropped.to_vec();
                    want_dropped.sort();
                    assert_eq!(kept, want_kept, "{name}");
                    assert_eq!(dropped, want_dropped, "{name}");
                }
                (Err(e), Err(words)) => {
                    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{name}");
                    for w in words {
                        assert!(e.to_string().contains(w), "{name}: {w:?} in {e}");
                    }
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn merge_table() {
        fn rec(created: i64, contact: Option<i64>) -> AgentRecord {
            AgentRecord {
                id: "a".into(),
                workspace_id: "w".into(),
                token_hash: String::new(),
                lifecycle: LifecycleState::Ready,
                lifecycle_reason: String::new(),
                connection: ConnectionStatus::Connected,
                first_connected_at: contact,
                last_contact_at: contact,
                apps: BTreeMap::new(),
                stats: None,
                version: String::new(),
                created_at: created,
                updated_at: contact.unwrap_or(created),
            }
        }
        let cases = [
            ("unknown here", None, rec(1, Some(5)), false, Merge::Take),
            (
                "unknown and deleted",
                None,
                rec(1, Some(5)),
                true,
                Merge::Remove,
            ),
            (
                "deleted",
                Some(rec(1, Some(9))),
                rec(1, Some(5)),
                true,
                Merge::Remove,
            ),
            (
                "newer contact elsewhere",
                Some(rec(1, Some(5))),
                rec(1, Some(6)),
                false,
                Merge::Take,
            ),
            (
                "same contact",
                Some(rec(1, Some(5))),
                rec(1, Some(5)),
                false,
                Merge::Keep,
            ),
            (
                "older row",
                Some(rec(1, Some(6))),
                rec(1, Some(5)),
                false,
                Merge::Keep,
            ),
            (
                "first contact elsewhere",
                Some(rec(1, None)),
                rec(1, Some(5)),
                false,
                Merge::Take,
            ),
            (
                "reset elsewhere (new pod)",
                Some(rec(1, Some(9))),
                rec(8, None),
                false,
                Merge::Take,
            ),
            (
                "row of the pod before our reset",
                Some(rec(8, None)),
                rec(1, Some(9)),
                false,
                Merge::Keep,
            ),
        ];
        for (name, mem, row, deleted, want) in cases {
            assert_eq!(merge(mem.as_ref(), &row, deleted), want, "{name}");
        }
    }

    #[test]
    fn connection_status_table() {
        let i = Duration::from_secs(15);
        let t = Duration::from_secs(120);
        let s = 1_000_000;
        let cases = [
            ("just started", s, None, ConnectionStatus::Connecting),
            (
                "119 s, no contact",
                s + 119_000,
                None,
                ConnectionStatus::Connecting,
            ),
            (
                "120 s, no contact",
                s + 120_000,
                None,
                ConnectionStatus::Connecting,
            ),
            (
                "121 s, no contact",
                s + 121_000,
                None,
                ConnectionStatus::Timeout,
            ),
            (
                "fresh contact",
                s + 200_000,
                Some(s + 199_000),
                ConnectionStatus::Connected,
            ),
            (
                "exactly 2×interval",
                s + 230_000,
                Some(s + 200_000),
                ConnectionStatus::Connected,
            ),
            (
                "past 2×interval",
                s + 230_001,
                Some(s + 200_000),
                ConnectionStatus::Disconnected,
            ),
            (
                "contact after a timeout",
                s + 500_000,
                Some(s + 499_000),
                ConnectionStatus::Connected,
            ),
            (
                "long silent",
                s + 900_000,
                Some(s + 1),
                ConnectionStatus::Disconnected,
            ),
        ];
        for (name, now, last, want) in cases {
            assert_eq!(connection_status(now, s, last, i, t), want, "{name}");
        }
    }
}
