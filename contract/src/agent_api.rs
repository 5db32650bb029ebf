//! Messages between the in-pod agent and the control plane (`/api/v2/workspaceagents/me/…`).
//!
//! State names follow Coder's agent API so operators moving over read the same words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the heartbeat endpoint, relative to the control plane URL.
pub const HEARTBEAT_PATH: &str = "/api/v2/workspaceagents/me/heartbeat";
/// Report interval the control plane hands out unless configured otherwise.
pub const DEFAULT_REPORT_INTERVAL_SECS: u64 = 15;
/// Header carrying the agent token (as in Coder).
pub const AGENT_TOKEN_HEADER: &str = "Coder-Session-Token";

crate::wire_enum!(
    /// Where the agent is in its life. Transitions are driven by the agent and reported to the server.
    #[derive(Default)]
    pub enum LifecycleState {
        /// Process started, nothing checked yet.
        #[default]
        Created = "created",
        /// Waiting for the required apps to become healthy.
        Starting = "starting",
        /// The apps did not become healthy within the start timeout.
        StartTimeout = "start_timeout",
        /// Start-up failed (reason given).
        StartError = "start_error",
        /// Every required app is healthy.
        Ready = "ready",
        /// SIGTERM received; shutting down.
        ShuttingDown = "shutting_down",
        /// Shutdown did not finish in time.
        ShutdownTimeout = "shutdown_timeout",
        /// Shutdown failed.
        ShutdownError = "shutdown_error",
        /// The agent has stopped.
        Off = "off",
    }
);

crate::wire_enum!(
    /// Whether the control plane hears from the agent. Computed by the server, never sent by the agent.
    #[derive(Default)]
    pub enum ConnectionStatus {
        /// No contact yet, still within the connection timeout.
        #[default]
        Connecting = "connecting",
        /// Heard from within 2 × the report interval.
        Connected = "connected",
        /// Was connected; silent for more than 2 × the report interval.
        Disconnected = "disconnected",
        /// Never connected within the connection timeout.
        Timeout = "timeout",
    }
);

crate::wire_enum!(
    /// Health of one workspace app as the agent sees it.
    #[derive(Default)]
    pub enum AppHealth {
        /// Not checked yet.
        #[default]
        Initializing = "initializing",
        /// Passing its check.
        Healthy = "healthy",
        /// Failed its check the threshold number of times in a row.
        Unhealthy = "unhealthy",
        /// Not checked (the app is not required).
        Disabled = "disabled",
    }
);

/// Resource usage reported with each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceStats {
    /// CPU used by the container, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Memory used, bytes (the container's cgroup where available, else the host).
    pub memory_used_bytes: u64,
    /// Memory limit or total, bytes.
    pub memory_total_bytes: u64,
    /// Bytes used on the home volume.
    pub disk_used_bytes: u64,
    /// Size of the home volume, bytes.
    pub disk_total_bytes: u64,
    /// Bytes received on all interfaces since the agent started.
    pub network_rx_bytes: u64,
    /// Bytes sent on all interfaces since the agent started.
    pub network_tx_bytes: u64,
    /// Forwarded connections open now.
    pub forwarded_connections_open: u64,
    /// Forwarded connections since the agent started.
    pub forwarded_connections_total: u64,
    /// Bytes copied by port forwarding since the agent started (both directions).
    pub forwarded_bytes: u64,
}

/// What the agent sends on each heartbeat (and at once when an app's health changes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The agent's lifecycle state.
    pub lifecycle: LifecycleState,
    /// Why the agent is in a failure state (`start_timeout`, `start_error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_reason: Option<String>,
    /// Health of each app, by slug (see [`crate::apps`]).
    #[serde(default)]
    pub apps: BTreeMap<String, AppHealth>,
    /// Resource usage, when collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ResourceStats>,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
}

/// What the control plane answers to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Seconds until the next heartbeat is due.
    pub report_interval_seconds: u64,
    /// The Ed25519 public keys (hex, 32 bytes) that session tickets are signed with, newest
    /// first: the agent accepts a ticket signed by any of them, so a rotation reaches it within
    /// one report interval ([`crate::sessions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_keys: Vec<String>,
    /// The workspace this agent belongs to (as the server authenticated it): tickets are bound
    /// to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for &l in LifecycleState::ALL {
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, format!("\"{}\"", l.as_str()));
            assert_eq!(LifecycleState::parse(l.as_str()), Some(l));
        }
        for &c in ConnectionStatus::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
            assert_eq!(ConnectionStatus::parse(c.as_str()), Some(c));
        }
        assert_eq!(LifecycleState::parse("Ready"), None);
    }

    #[test]
    fn heartbeat_parses_minimal_and_full_bodies() {
        let hb: HeartbeatRequest = serde_json::from_str(r#"{"lifecycle":"starting"}"#).unwrap();
        assert_eq!(hb.lifecycle, LifecycleState::Starting);
        assert!(hb.apps.is_empty());
        let full = HeartbeatRequest {
            lifecycle: LifecycleState::Ready,
            lifecycle_reason: None,
            apps: BTreeMap::from([("tilt".into(), AppHealth::Healthy)]),
            stats: Some(ResourceStats {
                cpu_cores: 0.5,
                ..Default::default()
            }),
            version: "0.1.0".into(),
        };
        let back: HeartbeatRequest =
            serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }
}
