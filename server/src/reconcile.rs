//! Reconciliation: watches pods, PVCs, Secrets (by the managed-by label) and FailedScheduling
//! events in the workspace namespace, derives each workspace's status from them and writes
//! changes, and closes the gap between desired and actual:
//! - a pod deleted behind the control plane's back while the workspace should run is recreated,
//!   with backoff;
//! - a pod that exists for a stopped or deleted workspace is removed (and, for deleted ones, the
//!   PVC and Secret); a deleted workspace whose objects are all gone is marked deleted;
//! - an object with workspace labels but no workspace is reported, and removed only once older
//!   than the grace period.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use lumie_contract::labels;
use lumie_contract::naming::WorkspaceNames;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::StatusLabels;
use crate::model::{
    BuildRecord, BuildStatus, DesiredState, Transition, WorkspaceRecord, WorkspaceStatus, now_ms,
};
use crate::spawner::Spawner;
use crate::state::{AppState, WorkspaceEvent};
use crate::status::{ClusterView, derive, observe_pod, pod_just_created};
use crate::template::WorkspaceRef;

/// How often every workspace is re-derived even without a change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Longest wait between pod recreation attempts.
pub const MAX_RECREATE_BACKOFF: Duration = Duration::from_secs(60);

/// The reflector stores.
#[derive(Clone)]
pub struct Stores {
    pods: Store<Pod>,
    pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    scheduling: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

fn ws_label(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(labels::WORKSPACE_ID).cloned()
}

/// A labelled object, for the orphan check.
#[derive(Clone, Debug)]
struct Labelled {
    kind: &'static str,
    name: String,
    workspace_id: String,
    created_ms: i64,
}

impl Stores {
    /// Whether every store has had its initial list.
    pub fn ready(&self) -> bool {
        // A store is ready after its first complete list.
        futures::FutureExt::now_or_never(async {
            self.pods.wait_until_ready().await.is_ok()
                && self.pvcs.wait_until_ready().await.is_ok()
                && self.secrets.wait_until_ready().await.is_ok()
        })
        .unwrap_or(false)
    }

    /// Waits for every store's first complete list.
    pub async fn wait_ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.pvcs.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// The cluster view of every workspace that has objects.
    pub fn views(&self) -> HashMap<String, ClusterView> {
        let mut out: HashMap<String, ClusterView> = HashMap::new();
        let sched = self.scheduling.lock().expect("scheduling lock").clone();
        for p in self.pods.state() {
            if let Some(id) = ws_label(&p.metadata) {
                let v = out.entry(id).or_default();
                v.scheduling_event = sched.get(&p.name_any()).cloned();
                v.pod = Some(observe_pod(&p));
            }
        }
        for p in self.pvcs.state() {
            if let Some(id) = ws_label(&p.metadata) {
                out.entry(id).or_default().pvc_exists = true;
            }
        }
        for s in self.secrets.state() {
            if let Some(id) = ws_label(&s.metadata) {
                out.entry(id).or_default().secret_exists = true;
            }
        }
        out
    }

    fn labelled(&self) -> Vec<Labelled> {
        let created = |m: &kube::api::ObjectMeta| {
            m.creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or_else(now_ms)
        };
        let mut v = vec![];
        for p in self.pods.state() {
            if let Some(id) = ws_label(&p.metadata) {
                v.push(Labelled {
                    kind: "Pod",
                    name: p.name_any(),
                    workspace_id: id,
                    created_ms: created(&p.metadata),
                });
            }
        }
        for p in self.pvcs.state() {
            if let Some(id) = ws_label(&p.metadata) {
                v.push(Labelled {
                    kind: "PersistentVolumeClaim",
                    name: p.name_any(),
                    workspace_id: id,
                    created_ms: created(&p.metadata),
                });
            }
        }
        for s in self.secrets.state() {
            if let Some(id) = ws_label(&s.metadata) {
                v.push(Labelled {
                    kind: "Secret",
                    name: s.name_any(),
                    workspace_id: id,
                    created_ms: created(&s.metadata),
                });
            }
        }
        v
    }
}

/// Drives one reflector; every touched object marks its workspace.
fn spawn_watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: reflector::store::Writer<K>,
    state: &AppState,
    what: &'static str,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let dirty = state.dirty.clone();
    let stream = watcher(api, cfg)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(obj)) => {
                    if let Some(id) = ws_label(obj.meta()) {
                        dirty.mark(&id);
                    }
                }
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "{what} watch error"),
            }
        }
    });
}

/// Starts the watchers (tasks that run until the process ends) and returns their stores.
/// Each change marks the workspace it belongs to.
pub fn start_watchers(state: &AppState, client: &Client) -> Stores {
    let ns = state.config.namespace.clone();
    let cfg = watcher::Config::default().labels(&labels::managed_selector());

    let (pods, writer) = reflector::store::<Pod>();
    spawn_watch(
        Api::namespaced(client.clone(), &ns),
        cfg.clone(),
        writer,
        state,
        "pod",
    );
    let (pvcs, writer) = reflector::store::<PartialObjectMeta<PersistentVolumeClaim>>();
    spawn_watch(
        Api::namespaced(client.clone(), &ns),
        cfg.clone(),
        writer,
        state,
        "PVC",
    );
    let (secrets, writer) = reflector::store::<PartialObjectMeta<Secret>>();
    spawn_watch(
        Api::namespaced(client.clone(), &ns),
        cfg,
        writer,
        state,
        "Secret",
    );

    // FailedScheduling events carry no workspace labels: keyed by pod name.
    let scheduling: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let sched = scheduling.clone();
    let pods_for_events = pods.clone();
    let dirty = state.dirty.clone();
    let stream = watcher(
        api,
        watcher::Config::default().fields("involvedObject.kind=Pod,reason=FailedScheduling"),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    let pod = ev.involved_object.name.clone().unwrap_or_default();
                    if let Some(msg) = ev.message.clone() {
                        sched
                            .lock()
                            .expect("scheduling lock")
                            .insert(pod.clone(), msg);
                    }
                    if let Some(p) = pods_for_events.state().iter().find(|p| p.name_any() == pod)
                        && let Some(id) = ws_label(&p.metadata)
                    {
                        dirty.mark(&id);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "event watch error"),
                None => return,
            }
        }
    });

    Stores {
        pods,
        pvcs,
        secrets,
        scheduling,
    }
}

/// Per-workspace pod recreation backoff.
#[derive(Default)]
struct Backoff {
    attempts: u32,
    next: Option<Instant>,
}

/// The reconciler's memory between passes.
pub struct Reconciler {
    state: AppState,
    spawner: Spawner,
    stores: Stores,
    recreate: Mutex<HashMap<String, Backoff>>,
    acting: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Reconciler {
    /// Over started watchers.
    pub fn new(state: AppState, spawner: Spawner, stores: Stores) -> Self {
        Reconciler {
            state,
            spawner,
            stores,
            recreate: Mutex::default(),
            acting: Arc::default(),
        }
    }

    /// Re-derives and acts on the given workspaces (`None`: every workspace, plus orphans).
    pub async fn pass(&self, only: Option<HashSet<String>>) -> crate::Result<()> {
        let views = self.stores.views();
        *self.state.cluster.write().expect("cluster lock") = views.clone();
        let ready = self.stores.ready();
        let full = only.is_none();
        let (workspaces, builds): (Vec<WorkspaceRecord>, HashMap<String, BuildRecord>) = match only
        {
            None => {
                let list = self.state.db.list_workspaces(None).await?;
                let builds = self
                    .state
                    .db
                    .latest_builds(None)
                    .await?
                    .into_iter()
                    .collect();
                (list, builds)
            }
            Some(ids) => {
                let mut list = vec![];
                let mut builds = HashMap::new();
                for id in ids {
                    if let Some(ws) = self.state.db.workspace(&id).await? {
                        if ws.deleted_at.is_some() {
                            continue;
                        }
                        if let Some(b) = self.state.db.latest_build(&id).await? {
                            builds.insert(id.clone(), b);
                        }
                        list.push(ws);
                    }
                }
                (list, builds)
            }
        };
        let empty = ClusterView::default();
        let mut counts: HashMap<WorkspaceStatus, i64> = HashMap::new();
        for ws in &workspaces {
            let view = views.get(&ws.id).unwrap_or(&empty);
            let build = builds.get(&ws.id);
            let agent = self.state.agents.view(&ws.id);
            let (status, reason) = derive(
                ws.desired_state,
                build,
                view,
                agent.as_ref(),
                self.state.config.agent_connection_timeout.as_secs(),
                &ws.pod_name,
                now_ms(),
            );
            *counts.entry(status).or_default() += 1;
            if self
                .state
                .db
                .set_workspace_status(&ws.id, status, &reason)
                .await?
            {
                tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, status = %status, reason = %reason, "status");
                self.state.publish(WorkspaceEvent {
                    workspace_id: ws.id.clone(),
                    status,
                    reason: reason.clone(),
                });
            }
            if ready && !build.is_some_and(|b| b.status.is_active()) {
                self.act(ws, build, view).await;
            }
        }
        if full {
            for s in WorkspaceStatus::ALL {
                self.state
                    .metrics
                    .workspaces
                    .get_or_create(&StatusLabels {
                        status: s.as_str().into(),
                    })
                    .set(counts.get(s).copied().unwrap_or(0));
            }
            if ready {
                self.orphans(&workspaces).await;
            }
        }
        Ok(())
    }

    /// Closes the gap between desired and actual for one workspace (no build in flight).
    async fn act(&self, ws: &WorkspaceRecord, build: Option<&BuildRecord>, view: &ClusterView) {
        let pod_live = view.pod.as_ref().is_some_and(|p| !p.terminating);
        match ws.desired_state {
            DesiredState::Running => {
                let started = build.is_some_and(|b| {
                    b.transition == Transition::Start && b.status == BuildStatus::Succeeded
                });
                if view.pod.as_ref().is_some_and(|p| p.phase == "Running") {
                    self.recreate.lock().await.remove(&ws.id);
                }
                // Right after the start build the pod watch may not have reported the new pod.
                if started && view.pod.is_none() && !pod_just_created(build, now_ms()) {
                    self.recreate_pod(ws).await;
                }
            }
            DesiredState::Stopped if pod_live => {
                tracing::warn!(workspace = %ws.id, pod = %ws.pod_name, "pod exists for a stopped workspace; removing it");
                self.spawn_action(
                    ws,
                    |sp, ws| async move { sp.delete_pod(&ws.pod_name).await },
                );
            }
            DesiredState::Deleted => {
                let any = view.pod.is_some() || view.pvc_exists || view.secret_exists;
                if !any {
                    if let Err(e) = self.state.db.mark_workspace_deleted(&ws.id).await {
                        tracing::warn!(workspace = %ws.id, error = %e, "cannot mark workspace deleted");
                        return;
                    }
                    self.state.agents.remove_workspace(&ws.id);
                    self.recreate.lock().await.remove(&ws.id);
                    tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, "deleted");
                    self.state.publish(WorkspaceEvent {
                        workspace_id: ws.id.clone(),
                        status: WorkspaceStatus::Deleted,
                        reason: String::new(),
                    });
                } else if pod_live || view.pvc_exists || view.secret_exists {
                    let build_done = build.is_some_and(|b| b.transition == Transition::Delete);
                    if build_done {
                        self.spawn_action(ws, |sp, ws| async move {
                            let names = WorkspaceNames::new(&ws.owner_name, &ws.name)
                                .map_err(|e| crate::Error::BadRequest(e.to_string()))?;
                            sp.delete_all(&names).await
                        });
                    }
                }
            }
            _ => {}
        }
    }

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
        let (sp, ws, acting, dirty) = (
            self.spawner.clone(),
            ws.clone(),
            self.acting.clone(),
            self.state.dirty.clone(),
        );
        tokio::spawn(async move {
            let id = ws.id.clone();
            if let Err(e) = f(sp, ws).await {
                tracing::warn!(workspace = %id, error = %e, "reconcile action failed");
            }
            acting.lock().expect("acting lock").remove(&id);
            dirty.mark(&id);
        });
    }

    async fn recreate_pod(&self, ws: &WorkspaceRecord) {
        {
            let mut map = self.recreate.lock().await;
            let b = map.entry(ws.id.clone()).or_default();
            if b.next.is_some_and(|n| Instant::now() < n) {
                return;
            }
            let delay = Duration::from_secs(1 << b.attempts.min(6)).min(MAX_RECREATE_BACKOFF);
            b.attempts += 1;
            b.next = Some(Instant::now() + delay);
        }
        let state = self.state.clone();
        let metrics = self.state.metrics.clone();
        self.spawn_action(ws, move |sp, ws| async move {
            let names = WorkspaceNames::new(&ws.owner_name, &ws.name)
                .map_err(|e| crate::Error::BadRequest(e.to_string()))?;
            let wref = WorkspaceRef { id: &ws.id, names: &names };
            let agent_id = state.agents.view(&ws.id).map(|a| a.id);
            let db = state.db.clone();
            let created = sp
                .ensure_pod(&state.template, &wref, &state.config.agent_url, || async {
                    match &agent_id {
                        Some(id) => db.reset_agent(id, None).await,
                        None => Ok(()),
                    }
                })
                .await?;
            if created {
                metrics.pods_recreated.inc();
                tracing::warn!(workspace = %ws.id, pod = %names.pod, "pod was deleted behind the control plane's back; recreated it");
                if let Some(a) = state.db.agent_for_workspace(&ws.id).await? {
                    state.agents.reset(a);
                }
            }
            Ok(())
        });
    }

    async fn orphans(&self, live: &[WorkspaceRecord]) {
        let live: HashSet<&str> = live.iter().map(|w| w.id.as_str()).collect();
        let grace = self.state.config.orphan_grace.as_millis() as i64;
        let now = now_ms();
        let mut count = 0;
        for o in self.stores.labelled() {
            if live.contains(o.workspace_id.as_str()) {
                continue;
            }
            // Not live: unknown, or already marked deleted.
            match self.state.db.workspace(&o.workspace_id).await {
                Ok(Some(ws)) if ws.deleted_at.is_none() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "orphan check failed");
                    return;
                }
            }
            count += 1;
            let age = now - o.created_ms;
            if age > grace {
                tracing::warn!(kind = o.kind, name = %o.name, workspace_id = %o.workspace_id, age_s = age / 1000, "orphaned object (no workspace) older than the grace period; deleting it");
                if let Err(e) = self.spawner.delete_kind(o.kind, &o.name).await {
                    tracing::warn!(kind = o.kind, name = %o.name, error = %e, "cannot delete orphan");
                }
            } else {
                tracing::warn!(kind = o.kind, name = %o.name, workspace_id = %o.workspace_id, age_s = age / 1000, "orphaned object (no workspace); will delete it after the grace period");
            }
        }
        self.state.metrics.orphans.set(count);
    }

    /// Runs passes: on every marked change (debounced), and a full pass every [`RESYNC`].
    pub async fn run(self: Arc<Self>) {
        // Judge nothing before the first complete list: a store still filling would read as
        // "every pod is missing" and put a false reason on running workspaces after a restart.
        self.stores.wait_ready().await;
        let mut last_full = Instant::now() - RESYNC;
        loop {
            if last_full.elapsed() >= RESYNC {
                last_full = Instant::now();
                let _ = self.state.dirty.take();
                if let Err(e) = self.pass(None).await {
                    tracing::warn!(error = %e, "reconcile pass failed");
                }
            } else {
                let ids = self.state.dirty.take();
                if !ids.is_empty()
                    && let Err(e) = self.pass(Some(ids)).await
                {
                    tracing::warn!(error = %e, "reconcile pass failed");
                }
            }
            let wait = RESYNC.saturating_sub(last_full.elapsed());
            tokio::select! {
                _ = self.state.dirty.wait() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
