//! Prometheus metrics the server exports on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `lumie_contract_drift{object,field}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `serviceaccount/dev-workspace`, `service/dev-workspace`.
    pub object: String,
    /// What drifted (`exists`, `port/tilt`, `targetPort/tilt`, …).
    pub field: String,
}

/// `lumie_agents{connection,lifecycle}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// Connection status.
    pub connection: String,
    /// Lifecycle state.
    pub lifecycle: String,
}

/// `lumie_agent_apps{app,health}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppHealthLabels {
    /// App slug.
    pub app: String,
    /// Health.
    pub health: String,
}

/// `lumie_workspaces{status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Workspace status.
    pub status: String,
}

/// `lumie_builds_total{transition,status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Transition.
    pub transition: String,
    /// Final status.
    pub status: String,
}

/// `lumie_sessions_total{kind,outcome}`, `lumie_sessions_open{kind}` (outcome empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `ssh`, `tcp`, `terminal`.
    pub kind: String,
    /// `opened`, `refused` (the agent said no), `unavailable` (not running, agent not reachable).
    pub outcome: String,
}

/// `lumie_session_bytes_total{kind,direction}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionBytesLabels {
    /// `ssh`, `tcp`, `terminal`.
    pub kind: String,
    /// `to_workspace`, `from_workspace`.
    pub direction: String,
}

/// `lumie_leader{identity}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaderLabels {
    /// This replica's identity (pod name and a random suffix).
    pub identity: String,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// 1 for each drifted field of the `dev-workspace` objects, 0 once fixed.
    pub contract_drift: Family<DriftLabels, Gauge>,
    /// Agents by connection and lifecycle.
    pub agents: Family<AgentLabels, Gauge>,
    /// Heartbeat handling time, seconds.
    pub heartbeat_latency: Histogram,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// App entries dropped from heartbeats because the template has no app of that slug.
    pub heartbeat_unknown_apps: Counter,
    /// Apps by health, over every agent.
    pub app_health: Family<AppHealthLabels, Gauge>,
    /// Workspaces by status.
    pub workspaces: Family<StatusLabels, Gauge>,
    /// Builds finished.
    pub builds: Family<BuildLabels, Counter>,
    /// Workspace pods recreated after disappearing.
    pub pods_recreated: Counter,
    /// Objects with workspace labels but no workspace.
    pub orphans: Gauge,
    /// Sessions asked for, by kind and outcome.
    pub sessions: Family<SessionLabels, Counter>,
    /// Sessions open now, by kind (`outcome` empty).
    pub sessions_open: Family<SessionLabels, Gauge>,
    /// Bytes carried by sessions.
    pub session_bytes: Family<SessionBytesLabels, Counter>,
    /// 1 while this replica holds the leader Lease, else 0.
    pub leader: Family<LeaderLabels, Gauge>,
    /// Times this replica took the Lease over from another holder.
    pub leader_handovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        Self::new_with(|_| {})
    }

    /// Creates and registers every metric, plus those `extra` registers (full names, no prefix).
    pub fn new_with(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut root = Registry::default();
        extra(&mut root);
        let registry = root.sub_registry_with_prefix("lumie");
        let m = Metrics {
            contract_drift: Family::default(),
            agents: Family::default(),
            heartbeat_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            heartbeats: Counter::default(),
            heartbeat_unknown_apps: Counter::default(),
            app_health: Family::default(),
            workspaces: Family::default(),
            builds: Family::default(),
            pods_recreated: Counter::default(),
            orphans: Gauge::default(),
            sessions: Family::default(),
            sessions_open: Family::default(),
            session_bytes: Family::default(),
            leader: Family::default(),
            leader_handovers: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "contract_drift",
            "dev-workspace ServiceAccount/Service fields not matching the contract (1 = drifted)",
            m.contract_drift.clone(),
        );
        registry.register(
            "agents",
            "Workspace agents by connection status and lifecycle state",
            m.agents.clone(),
        );
        registry.register(
            "agent_heartbeat_duration_seconds",
            "Time to handle one agent heartbeat",
            m.heartbeat_latency.clone(),
        );
        registry.register(
            "agent_heartbeats",
            "Agent heartbeats received",
            m.heartbeats.clone(),
        );
        registry.register(
            "agent_heartbeat_unknown_apps",
            "App entries dropped from heartbeats: no app of that slug in the workspace template",
            m.heartbeat_unknown_apps.clone(),
        );
        registry.register(
            "agent_apps",
            "Workspace apps by health as reported by agents",
            m.app_health.clone(),
        );
        registry.register(
            "workspaces",
            "Live workspaces by status",
            m.workspaces.clone(),
        );
        registry.register(
            "builds",
            "Workspace builds finished, by transition and status",
            m.builds.clone(),
        );
        registry.register(
            "pods_recreated",
            "Workspace pods recreated after being deleted behind the control plane's back",
            m.pods_recreated.clone(),
        );
        registry.register(
            "orphaned_objects",
            "Objects with workspace labels but no workspace",
            m.orphans.clone(),
        );
        registry.register(
            "sessions",
            "Terminal, SSH and TCP sessions asked for, by kind and outcome",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_open",
            "Terminal, SSH and TCP sessions open now",
            m.sessions_open.clone(),
        );
        registry.register(
            "session_bytes",
            "Bytes carried by sessions, by kind and direction",
            m.session_bytes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (runs the reconciler's actions and the builds), else 0",
            m.leader.clone(),
        );
        registry.register(
            "leader_handovers",
            "Times this replica took the leader Lease over from another holder",
            m.leader_handovers.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
