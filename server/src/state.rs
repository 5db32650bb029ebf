//! The shared state handed to every handler and background task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, broadcast};

use crate::access::Edge;
use crate::agents::AgentHub;
use crate::auth::AuthChain;
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::model::WorkspaceStatus;
use crate::status::ClusterView;
use crate::template::Template;

/// A workspace status change, as streamed by `GET /api/v2/workspaces/{id}/watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceEvent {
    /// Which workspace.
    pub workspace_id: String,
    /// New status.
    pub status: WorkspaceStatus,
    /// Why.
    pub reason: String,
}

/// Workspaces whose status needs recomputing, and a wake-up for whoever recomputes it.
/// Marking is cheap and coalescing: many marks of one workspace give one recomputation.
#[derive(Default)]
pub struct Dirty {
    set: Mutex<HashSet<String>>,
    notify: Notify,
}

impl Dirty {
    /// Marks a workspace.
    pub fn mark(&self, workspace_id: &str) {
        self.set
            .lock()
            .expect("dirty set lock")
            .insert(workspace_id.to_string());
        self.notify.notify_one();
    }

    /// Takes every marked workspace.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.set.lock().expect("dirty set lock"))
    }

    /// Waits until something is marked.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// What `/readyz` reports beyond the database.
#[derive(Debug, Default, Clone)]
pub struct ReadinessState {
    /// The kube API answered the last check.
    pub kube_reachable: bool,
    /// Contract drift and other non-fatal warnings.
    pub warnings: Vec<String>,
}

/// Everything handlers and tasks share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// Repository.
    pub db: Db,
    /// Authenticators.
    pub auth: Arc<AuthChain>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Status changes, for watchers.
    pub events: broadcast::Sender<WorkspaceEvent>,
    /// Workspaces to re-derive.
    pub dirty: Arc<Dirty>,
    /// Wakes the build executor.
    pub build_wake: Arc<Notify>,
    /// Readiness details.
    pub readiness: Arc<RwLock<ReadinessState>>,
    /// Agents, in memory.
    pub agents: Arc<AgentHub>,
    /// The workspace pod template.
    pub template: Arc<Template>,
    /// Kube client (absent in API-only tests).
    pub kube: Option<kube::Client>,
    /// What the cluster shows per workspace id (kept by the reconciler).
    pub cluster: Arc<RwLock<HashMap<String, ClusterView>>>,
    /// Access URL, trusted proxy, Host guard and OIDC login.
    pub edge: Edge,
}

impl AppState {
    /// State over a repository, with API-token authentication and no kube client.
    pub async fn new(
        config: Config,
        db: Db,
        template: Template,
        kube: Option<kube::Client>,
    ) -> crate::Result<Self> {
        let edge = Edge::new(&config, &db)?;
        let metrics = Arc::new(Metrics::new_with(|r| edge.register_metrics(r)));
        let dirty = Arc::new(Dirty::default());
        let agents = Arc::new(
            AgentHub::load(
                db.clone(),
                metrics.clone(),
                dirty.clone(),
                config.agent_report_interval,
                config.agent_connection_timeout,
            )
            .await?,
        );
        let (events, _) = broadcast::channel(1024);
        Ok(AppState {
            auth: Arc::new(AuthChain::api_tokens(db.clone())),
            config: Arc::new(config),
            db,
            metrics,
            events,
            dirty,
            build_wake: Arc::new(Notify::new()),
            readiness: Arc::new(RwLock::new(ReadinessState::default())),
            agents,
            template: Arc::new(template),
            kube,
            cluster: Arc::new(RwLock::new(HashMap::new())),
            edge,
        })
    }

    /// The IP of a workspace's pod, when it has one and is not terminating.
    pub fn pod_ip(&self, workspace_id: &str) -> Option<String> {
        let c = self.cluster.read().expect("cluster lock");
        let pod = c.get(workspace_id)?.pod.as_ref()?;
        if pod.terminating {
            return None;
        }
        pod.pod_ip.clone()
    }

    /// Publishes a status change to watchers.
    pub fn publish(&self, event: WorkspaceEvent) {
        // No receivers is fine.
        let _ = self.events.send(event);
    }
}
