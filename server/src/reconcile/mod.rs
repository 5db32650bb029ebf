//! Reconciliation: derives each workspace's status from what the watches show ([`watch`]) and
//! writes changes, then closes the gap between desired and actual by carrying out the pure
//! [`plan::plan`] for each workspace and [`plan::plan_orphan`] for each labelled object without a
//! live workspace. This module only performs plans: recreate a pod deleted behind the control
//! plane's back (with backoff), delete a pod that should not run, delete what a deleted
//! workspace left, mark it deleted, delete orphans past their grace period, and delete at once
//! any pod posing as a workspace's without the control plane having created it (an impostor:
//! see [`plan::plan_impostor`]).
//!
//! Every replica runs the watchers and publishes [`ClusterViews`] (the API, the app proxy and
//! agent authentication read them); only the leader ([`crate::leader`]) writes statuses and acts,
//! and it also polls the database every [`POLL`] for workspaces changed through another replica.

pub mod plan;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lumie_contract::naming::WorkspaceNames;
use tokio::time::Instant;

use crate::agents::AgentHub;
use crate::db::Db;
use crate::events::{Dirty, Events, WorkspaceEvent};
use crate::leader::Leadership;
use crate::metrics::{Metrics, StatusLabels};
use crate::model::{BuildRecord, WorkspaceRecord, WorkspaceStatus, now_ms};
use crate::spawner::Spawner;
use crate::status::{ClusterView, derive};
use plan::{Action, Facts, Owner, Plan, plan_impostor, recreate_delay};
pub use watch::{Stores, start_watchers};

/// How often every workspace is re-derived even without a change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How often the leader looks for workspaces changed through another replica.
pub const POLL: Duration = Duration::from_secs(1);

/// What the cluster shows per workspace id: written by the reconciler after every pass, read by
/// the API and the app proxy (which needs the pod IP). Cheap to clone.
#[derive(Clone, Default)]
pub struct ClusterViews(Arc<RwLock<HashMap<String, ClusterView>>>);

impl ClusterViews {
    /// Replaces every view.
    pub fn replace(&self, views: HashMap<String, ClusterView>) {
        *self.0.write().expect("cluster views lock") = views;
    }

    /// The IP of a workspace's pod, when it has one and is not terminating.
    pub fn pod_ip(&self, workspace_id: &str) -> Option<String> {
        let views = self.0.read().expect("cluster views lock");
        let pod = views.get(workspace_id)?.pod.as_ref()?;
        if pod.terminating {
            return None;
        }
        pod.pod_ip.clone()
    }
}

/// What the reconciler works with, handed over by the composition root.
pub struct Parts {
    /// The repository.
    pub db: Db,
    /// The agent table (read for the status, forgotten on delete).
    pub agents: Arc<AgentHub>,
    /// Kube actions.
    pub spawner: Spawner,
    /// Where the views are published for the API and proxy.
    pub views: ClusterViews,
    /// Status changes, for watchers.
    pub events: Events,
    /// Workspaces to re-derive.
    pub dirty: Arc<Dirty>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// An agent with no contact this long after its pod started is `timeout`.
    pub agent_connection_timeout: Duration,
    /// How long an orphaned object is kept before it is deleted.
    pub orphan_grace: Duration,
    /// The username the webhook stamps on the pods this server creates.
    pub control_plane: String,
    /// Whether this replica acts (writes statuses, creates and deletes objects).
    pub leadership: Leadership,
}

/// Per-workspace pod recreation backoff.
#[derive(Default)]
struct Backoff {
    attempts: u32,
    not_before_ms: Option<i64>,
}

/// The reconciler's memory between passes.
pub struct Reconciler {
    parts: Parts,
    stores: Stores,
    recreate: Mutex<HashMap<String, Backoff>>,
    acting: Arc<Mutex<HashSet<String>>>,
}

impl Reconciler {
    /// Over started watchers.
    pub fn new(parts: Parts, stores: Stores) -> Self {
        Reconciler {
            parts,
            stores,
            recreate: Mutex::default(),
            acting: Arc::default(),
        }
    }

    async fn load(
        &self,
        only: Option<HashSet<String>>,
    ) -> crate::Result<(Vec<WorkspaceRecord>, HashMap<String, BuildRecord>)> {
        let db = &self.parts.db;
        let Some(ids) = only else {
            let list = db.list_workspaces(None).await?;
            let builds = db.latest_builds(None).await?.into_iter().collect();
            return Ok((list, builds));
        };
        let mut list = vec![];
        let mut builds = HashMap::new();
        for id in ids {
            if let Some(ws) = db.workspace(&id).await? {
                if ws.deleted_at.is_some() {
                    continue;
                }
                if let Some(b) = db.latest_build(&id).await? {
                    builds.insert(id.clone(), b);
                }
                list.push(ws);
            }
        }
        Ok((list, builds))
    }

    /// Re-derives and acts on the given workspaces (`None`: every workspace, plus orphans).
    pub async fn pass(&self, only: Option<HashSet<String>>) -> crate::Result<()> {
        let p = &self.parts;
        let views = self.stores.views();
        p.views.replace(views.clone());
        // The views are every replica's; judging and acting is the leader's.
        if !p.leadership.is_leader() {
            return Ok(());
        }
        let stores_ready = self.stores.ready();
        if stores_ready {
            self.impostors().await;
        }
        let full = only.is_none();
        let (workspaces, builds) = self.load(only).await?;
        let empty = ClusterView::default();
        let mut counts: HashMap<WorkspaceStatus, i64> = HashMap::new();
        let now = now_ms();
        for ws in &workspaces {
            let cluster = views.get(&ws.id).unwrap_or(&empty);
            let build = builds.get(&ws.id);
            let agent = p.agents.view(&ws.id);
            let (status, reason) = derive(
                ws.desired_state,
                build,
                cluster,
                agent.as_ref(),
                p.agent_connection_timeout.as_secs(),
                &ws.pod_name,
                now,
            );
            *counts.entry(status).or_default() += 1;
            if p.db.set_workspace_status(&ws.id, status, &reason).await? {
                tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, status = %status, reason = %reason, "status");
                p.events.publish(WorkspaceEvent {
                    workspace_id: ws.id.clone(),
                    status,
                    reason,
                });
            }
            let plan = plan::plan(&Facts {
                desired: ws.desired_state,
                build,
                cluster,
                stores_ready,
                acting: self.is_acting(&ws.id),
                recreate_not_before: self.recreate_not_before(&ws.id),
                now_ms: now,
            });
            self.carry_out(ws, plan).await;
        }
        if full {
            for s in WorkspaceStatus::ALL {
                p.metrics
                    .workspaces
                    .get_or_create(&StatusLabels {
                        status: s.as_str().into(),
                    })
                    .set(counts.get(s).copied().unwrap_or(0));
            }
            if stores_ready {
                self.orphans(&workspaces).await;
            }
        }
        Ok(())
    }

    fn is_acting(&self, id: &str) -> bool {
        self.acting.lock().expect("acting lock").contains(id)
    }

    fn recreate_not_before(&self, id: &str) -> Option<i64> {
        let map = self.recreate.lock().expect("recreate lock");
        map.get(id).and_then(|b| b.not_before_ms)
    }

    /// Performs one workspace's plan.
    async fn carry_out(&self, ws: &WorkspaceRecord, plan: Plan) {
        let p = &self.parts;
        match plan.action {
            Action::Nothing | Action::Wait | Action::DeleteOrphan | Action::DeleteImpostor => {}
            Action::Settled => {
                self.recreate.lock().expect("recreate lock").remove(&ws.id);
            }
            Action::DeletePod => {
                tracing::warn!(workspace = %ws.id, pod = %ws.pod_name, reason = %plan.reason, "removing the pod");
                self.spawn_action(
                    ws,
                    |sp, ws| async move { sp.delete_pod(&ws.pod_name).await },
                );
            }
            Action::DeleteAll => {
                tracing::info!(workspace = %ws.id, reason = %plan.reason, "deleting the workspace's objects");
                self.spawn_action(
                    ws,
                    |sp, ws| async move { sp.delete_all(&names_of(&ws)?).await },
                );
            }
            Action::MarkDeleted => {
                if let Err(e) = p.db.mark_workspace_deleted(&ws.id).await {
                    tracing::warn!(workspace = %ws.id, error = %e, "cannot mark workspace deleted");
                    return;
                }
                p.agents.remove_workspace(&ws.id);
                self.recreate.lock().expect("recreate lock").remove(&ws.id);
                tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, "deleted");
                p.events.publish(WorkspaceEvent {
                    workspace_id: ws.id.clone(),
                    status: WorkspaceStatus::Deleted,
                    reason: String::new(),
                });
            }
            Action::RecreatePod => {
                {
                    let mut map = self.recreate.lock().expect("recreate lock");
                    let b = map.entry(ws.id.clone()).or_default();
                    b.not_before_ms =
                        Some(now_ms() + recreate_delay(b.attempts).as_millis() as i64);
                    b.attempts += 1;
                }
                let metrics = p.metrics.clone();
                self.spawn_action(ws, move |sp, ws| async move {
                    let names = names_of(&ws)?;
                    if sp.recreate_pod(&ws.id, &names).await? {
                        metrics.pods_recreated.inc();
                        tracing::warn!(workspace = %ws.id, pod = %names.pod, "pod was deleted behind the control plane's back; recreated it");
                    }
                    Ok(())
                });
            }
        }
    }

    /// Runs one action in the background, at most one per workspace; re-marks the workspace
    /// when it ends so its next plan sees the result.
    fn spawn_action<F, Fut>(&self, ws: &WorkspaceRecord, f: F)
    where
        F: FnOnce(Spawner, WorkspaceRecord) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = crate::Result<()>> + Send,
    {
        if !self
            .acting
            .lock()
            .expect("acting lock")
            .insert(ws.id.clone())
        {
            return;
        }
        let (sp, ws, acting, dirty, leadership) = (
            self.parts.spawner.clone(),
            ws.clone(),
            self.acting.clone(),
            self.parts.dirty.clone(),
            self.parts.leadership.clone(),
        );
        tokio::spawn(async move {
            let id = ws.id.clone();
            tokio::select! {
                r = f(sp, ws) => if let Err(e) = r {
                    tracing::warn!(workspace = %id, error = %e, "reconcile action failed");
                },
                _ = leadership.until_lost() => {
                    tracing::warn!(workspace = %id, "not leading any more: reconcile action stopped");
                }
            }
            acting.lock().expect("acting lock").remove(&id);
            dirty.mark(&id);
        });
    }

    /// Deletes every pod that poses as a workspace's without the control plane having created
    /// it, and says so as a warning naming it.
    async fn impostors(&self) {
        for i in self.stores.impostors() {
            let Some(plan) = plan_impostor(i.created_by.as_deref(), &self.parts.control_plane)
            else {
                continue;
            };
            tracing::warn!(pod = %i.name, workspace_id = %i.workspace_id, created_by = ?i.created_by, reason = %plan.reason, "deleting an impostor workspace pod");
            if let Err(e) = self.parts.spawner.delete_kind("Pod", &i.name).await {
                tracing::warn!(pod = %i.name, error = %e, "cannot delete the impostor pod");
            }
        }
    }

    async fn orphans(&self, live: &[WorkspaceRecord]) {
        let live: HashSet<&str> = live.iter().map(|w| w.id.as_str()).collect();
        let now = now_ms();
        let mut count = 0;
        for o in self.stores.labelled() {
            let owner = if live.contains(o.workspace_id.as_str()) {
                Owner::Live
            } else {
                match self.parts.db.workspace(&o.workspace_id).await {
                    Ok(Some(ws)) if ws.deleted_at.is_none() => Owner::Live,
                    Ok(Some(_)) => Owner::Deleted,
                    Ok(None) => Owner::Unknown,
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan check failed");
                        return;
                    }
                }
            };
            let plan = plan::plan_orphan(owner, now - o.created_ms, self.parts.orphan_grace);
            match plan.action {
                Action::DeleteOrphan => {
                    count += 1;
                    tracing::warn!(kind = o.kind, name = %o.name, workspace_id = %o.workspace_id, reason = %plan.reason, "deleting an orphaned object");
                    if let Err(e) = self.parts.spawner.delete_kind(o.kind, &o.name).await {
                        tracing::warn!(kind = o.kind, name = %o.name, error = %e, "cannot delete orphan");
                    }
                }
                Action::Wait => {
                    count += 1;
                    tracing::warn!(kind = o.kind, name = %o.name, workspace_id = %o.workspace_id, reason = %plan.reason, "orphaned object");
                }
                _ => {}
            }
        }
        self.parts.metrics.orphans.set(count);
    }

    /// Marks the workspaces changed after `since` (ms, the database's times), returning the
    /// newest change time seen.
    async fn poll_changes(&self, since: i64) -> i64 {
        match self.parts.db.workspaces_changed_since(since).await {
            Ok(changed) => {
                let mut newest = since;
                for (id, at) in changed {
                    self.parts.dirty.mark(&id);
                    newest = newest.max(at);
                }
                newest
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll for changed workspaces");
                since
            }
        }
    }

    /// Runs passes: on every marked change (debounced), a full pass every [`RESYNC`] and on
    /// becoming leader, and (leading) a poll for changes every [`POLL`].
    pub async fn run(self: Arc<Self>) {
        // Judge nothing before the first complete list: a store still filling would read as
        // "every pod is missing" and put a false reason on running workspaces after a restart.
        self.stores.wait_ready().await;
        let dirty = self.parts.dirty.clone();
        let leadership = self.parts.leadership.clone();
        let mut lead_changes = leadership.subscribe();
        let mut last_full = Instant::now() - RESYNC;
        let mut polled_until = now_ms();
        loop {
            let only = if last_full.elapsed() >= RESYNC {
                last_full = Instant::now();
                let _ = dirty.take();
                None
            } else {
                Some(dirty.take())
            };
            if only.as_ref().is_none_or(|ids| !ids.is_empty())
                && let Err(e) = self.pass(only).await
            {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            let wait = RESYNC.saturating_sub(last_full.elapsed());
            let leading = leadership.is_leader();
            tokio::select! {
                _ = dirty.wait() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::time::sleep(POLL), if leading => {
                    polled_until = self.poll_changes(polled_until).await;
                }
                Ok(()) = lead_changes.changed() => {
                    // A new term starts from a full pass.
                    last_full = Instant::now() - RESYNC;
                    polled_until = now_ms();
                }
            }
        }
    }
}

/// The object names of a workspace (validated when it was created, so an error here means a
/// corrupted row: named, not guessed).
fn names_of(ws: &WorkspaceRecord) -> crate::Result<WorkspaceNames> {
    WorkspaceNames::new(&ws.owner_name, &ws.name).map_err(|e| {
        crate::Error::Internal(format!(
            "workspace {} has invalid names ({}/{}): {e}",
            ws.id, ws.owner_name, ws.name
        ))
    })
}
