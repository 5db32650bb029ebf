//! The control plane's vocabulary: desired states, build transitions and statuses, workspace
//! statuses, and the records the repository returns. Wire names are Coder's.

use std::collections::BTreeMap;

use lumie_contract::agent_api::{AppHealth, ConnectionStatus, LifecycleState, ResourceStats};
use serde::{Deserialize, Serialize};

lumie_contract::wire_enum!(
    /// What the owner asked the workspace to be.
    pub enum DesiredState {
        /// Pod running.
        Running = "running",
        /// Pod gone, home volume and Secret kept.
        Stopped = "stopped",
        /// Everything gone.
        Deleted = "deleted",
    }
);

lumie_contract::wire_enum!(
    /// What a build does.
    pub enum Transition {
        /// Apply Secret, PVC and pod.
        Start = "start",
        /// Delete the pod.
        Stop = "stop",
        /// Delete pod, PVC and Secret.
        Delete = "delete",
    }
);

impl Transition {
    /// The desired state a build of this transition asks for.
    pub fn desired_state(self) -> DesiredState {
        match self {
            Transition::Start => DesiredState::Running,
            Transition::Stop => DesiredState::Stopped,
            Transition::Delete => DesiredState::Deleted,
        }
    }
}

lumie_contract::wire_enum!(
    /// Where a build is.
    pub enum BuildStatus {
        /// Queued.
        Pending = "pending",
        /// Being carried out.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Gave up, with an error.
        Failed = "failed",
        /// Superseded before it ran.
        Canceled = "canceled",
    }
);

impl BuildStatus {
    /// Whether the build is still in flight.
    pub fn is_active(self) -> bool {
        matches!(self, BuildStatus::Pending | BuildStatus::Running)
    }
}

lumie_contract::wire_enum!(
    /// The workspace status shown to developers, derived from the build and the cluster.
    pub enum WorkspaceStatus {
        /// Build queued, or the pod waits for a node.
        Pending = "pending",
        /// Objects applied; pod or agent not ready yet.
        Starting = "starting",
        /// Pod running and agent ready.
        Running = "running",
        /// Pod being removed.
        Stopping = "stopping",
        /// No pod; home volume kept.
        Stopped = "stopped",
        /// Objects being removed.
        Deleting = "deleting",
        /// Gone.
        Deleted = "deleted",
        /// Something went wrong (reason says what).
        Failed = "failed",
    }
);

/// A user account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// UUID.
    pub id: String,
    /// DNS-1123 label, the owner name in workspace object names.
    pub username: String,
    /// E-mail, when known.
    pub email: String,
    /// May see and act on every workspace.
    pub is_admin: bool,
    /// `token` or `oidc`.
    pub login_type: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A workspace row with its owner's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRecord {
    /// UUID.
    pub id: String,
    /// Owner's user id.
    pub owner_id: String,
    /// Owner's username.
    pub owner_name: String,
    /// Workspace name.
    pub name: String,
    /// Name of its pod (unique among live workspaces).
    pub pod_name: String,
    /// What the owner asked for.
    pub desired_state: DesiredState,
    /// Last derived status.
    pub status: WorkspaceStatus,
    /// Why, when not running.
    pub status_reason: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
    /// When `status` last changed.
    pub status_changed_at: i64,
    /// When the delete finished.
    pub deleted_at: Option<i64>,
}

/// A build row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// UUID.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// 1, 2, … per workspace.
    pub number: i64,
    /// What it does.
    pub transition: Transition,
    /// Where it is.
    pub status: BuildStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Who asked (user id), if a user did.
    pub initiator_id: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it began running.
    pub started_at: Option<i64>,
    /// When it finished.
    pub completed_at: Option<i64>,
}

/// An agent row (one per workspace).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    /// UUID.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// sha256 (hex) of the token in the workspace Secret.
    pub token_hash: String,
    /// Lifecycle last reported.
    pub lifecycle: LifecycleState,
    /// Why, for failure states.
    pub lifecycle_reason: String,
    /// Connection status last computed.
    pub connection: ConnectionStatus,
    /// First heartbeat of the current pod, ms.
    pub first_connected_at: Option<i64>,
    /// Last heartbeat, ms.
    pub last_contact_at: Option<i64>,
    /// App health by slug.
    pub apps: BTreeMap<String, AppHealth>,
    /// Latest stats.
    pub stats: Option<ResourceStats>,
    /// Agent version.
    pub version: String,
    /// When the row was created (connection timeout counts from the latest start), ms.
    pub created_at: i64,
    /// Last write, ms.
    pub updated_at: i64,
}

/// What the status derivation and the API need to know about an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Lifecycle.
    pub lifecycle: LifecycleState,
    /// Why, for failure states.
    pub lifecycle_reason: String,
    /// Connection.
    pub connection: ConnectionStatus,
    /// Last contact, ms.
    pub last_contact_at: Option<i64>,
    /// First contact, ms.
    pub first_connected_at: Option<i64>,
    /// App health.
    pub apps: BTreeMap<String, AppHealth>,
    /// Stats.
    pub stats: Option<ResourceStats>,
    /// Agent version.
    pub version: String,
}

impl From<&AgentRecord> for AgentView {
    fn from(r: &AgentRecord) -> Self {
        AgentView {
            id: r.id.clone(),
            lifecycle: r.lifecycle,
            lifecycle_reason: r.lifecycle_reason.clone(),
            connection: r.connection,
            last_contact_at: r.last_contact_at,
            first_connected_at: r.first_connected_at,
            apps: r.apps.clone(),
            stats: r.stats.clone(),
            version: r.version.clone(),
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Milliseconds since the epoch; RFC 3339 on the wire, like every other time in the API.
    #[serde(with = "rfc3339_ms")]
    pub at: i64,
    /// Acting user id (none for the system).
    pub actor_id: Option<String>,
    /// Acting user name, or `system`.
    pub actor_name: String,
    /// What was done (`workspace.create`, `build.start`, …).
    pub action: String,
    /// Which workspace.
    pub workspace_id: Option<String>,
    /// Free text.
    pub detail: String,
    /// Client address (through the trusted proxy), when the change came from a request.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// Value before the change.
    #[serde(default)]
    pub before: Option<String>,
    /// Value after the change.
    #[serde(default)]
    pub after: Option<String>,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 form of a millisecond timestamp, for the API.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Serde for a time kept as epoch milliseconds and written as RFC 3339 ([`rfc3339`]).
pub mod rfc3339_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `ms` as RFC 3339.
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }

    /// Reads RFC 3339 back into milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_times_are_rfc3339_on_the_wire_and_round_trip() {
        let e = AuditEntry {
            id: 1,
            at: 1_764_582_300_123,
            actor_id: None,
            actor_name: "system".into(),
            action: "workspace.create".into(),
            workspace_id: None,
            detail: String::new(),
            client_ip: None,
            before: None,
            after: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["at"], "2025-12-01T09:45:00.123Z");
        let back: AuditEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn wire_names_round_trip() {
        for s in WorkspaceStatus::ALL {
            assert_eq!(WorkspaceStatus::parse(s.as_str()), Some(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for t in Transition::ALL {
            assert_eq!(Transition::parse(t.as_str()), Some(*t));
        }
        assert_eq!(Transition::parse("restart"), None);
        assert_eq!(Transition::Stop.desired_state(), DesiredState::Stopped);
        assert!(BuildStatus::Pending.is_active() && !BuildStatus::Failed.is_active());
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
    }
}
