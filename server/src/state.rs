//! The composition root: the state handed to every HTTP handler. Background tasks take only
//! the parts they use (see `serve`); nothing below the handlers imports this module.

use std::sync::{Arc, RwLock};

use crate::agent_api::AgentAuth;
use crate::agents::AgentHub;
use crate::caller::AuthChain;
use crate::config::Config;
use crate::db::{Db, SampleGate};
use crate::drift::ReadinessState;
use crate::edge::Edge;
use crate::events::{Dirty, Events};
use crate::metrics::Metrics;
use crate::reconcile::ClusterViews;
use crate::sessions::SessionHub;
use crate::template::Template;

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
    pub events: Events,
    /// Workspaces to re-derive.
    pub dirty: Arc<Dirty>,
    /// Wakes the build executor (here and, through the bus, on every replica).
    pub build_wake: Arc<crate::bus::Wake>,
    /// This replica on the cross-replica signal carrier (started by `serve` on PostgreSQL).
    pub bus: crate::bus::Bus,
    /// Readiness details.
    pub readiness: Arc<RwLock<ReadinessState>>,
    /// Agents, in memory.
    pub agents: Arc<AgentHub>,
    /// Who an agent is (TokenReview of its pod's projected token); installed by `serve`.
    pub agent_auth: Arc<AgentAuth>,
    /// The workspace pod template.
    pub template: Arc<Template>,
    /// Kube client (absent in API-only tests).
    pub kube: Option<kube::Client>,
    /// What the cluster shows per workspace id (kept by the reconciler).
    pub cluster: ClusterViews,
    /// Access URL, trusted proxy, Host guard and OIDC login.
    pub edge: Edge,
    /// "New startup-script output", for log followers.
    pub log_events: crate::startup_logs::LogEvents,
    /// Which heartbeats become resource samples (the dashboard's graphs).
    pub samples: Arc<SampleGate>,
    /// Session ticket keys and workspace use through sessions.
    pub sessions: Arc<SessionHub>,
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
        let bus = crate::bus::Bus::default();
        let dirty = Arc::new(Dirty::with_remote(bus.remote.clone()));
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
        let agent_auth = Arc::new(AgentAuth::new(
            &config.namespace,
            &template.service_account_name,
        ));
        let sessions = Arc::new(SessionHub::load(&db).await?);
        Ok(AppState {
            sessions,
            agent_auth,
            auth: Arc::new(AuthChain::api_tokens(db.clone())),
            config: Arc::new(config),
            db,
            metrics,
            events: Events::with_remote(bus.remote.clone()),
            dirty,
            build_wake: Arc::new(crate::bus::Wake::new(bus.remote.clone())),
            readiness: Arc::new(RwLock::new(ReadinessState::default())),
            agents,
            template: Arc::new(template),
            kube,
            cluster: ClusterViews::default(),
            edge,
            log_events: crate::startup_logs::LogEvents::with_remote(bus.remote.clone()),
            bus,
            samples: Arc::default(),
        })
    }
}
