//! Messages between the in-pod agent and the control plane (`/api/v2/workspaceagents/me/…`).
//!
//! State names follow Coder's agent API so operators moving over read the same words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the heartbeat endpoint, relative to the control plane URL.
pub const HEARTBEAT_PATH: &str = "/api/v2/workspaceagents/me/heartbeat";
/// Path of the manifest endpoint (`GET`: the scripts the agent runs, [`Manifest`]).
pub const MANIFEST_PATH: &str = "/api/v2/workspaceagents/me/manifest";
/// Path of the log endpoint (`POST` a [`LogBatch`]).
pub const LOGS_PATH: &str = "/api/v2/workspaceagents/me/logs";
/// Longest log line kept, bytes; longer lines are cut ([`cut_line`]).
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Most lines in one [`LogBatch`].
pub const MAX_LOG_BATCH_LINES: usize = 1000;
/// Most bytes of line text in one [`LogBatch`].
pub const MAX_LOG_BATCH_BYTES: usize = 256 * 1024;
/// Log bytes kept per workspace start (one agent lifetime); the oldest lines go first.
pub const MAX_LOG_BYTES_PER_START: usize = 1024 * 1024;
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

crate::wire_enum!(
    /// Whether the workspace waits for its startup script.
    #[derive(Default)]
    pub enum StartupBehavior {
        /// The agent is `starting` until the script exits (successfully) and the apps are healthy.
        #[default]
        Blocking = "blocking",
        /// The apps' health alone decides `ready`; the script may keep running.
        NonBlocking = "non-blocking",
    }
);

/// What the agent runs, from the workspace template (`GET` [`MANIFEST_PATH`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Shell text run with `sh -c` in the home directory once the agent has connected; empty
    /// for none.
    #[serde(default)]
    pub startup_script: String,
    /// Shell text run on SIGTERM, within the shutdown timeout; empty for none.
    #[serde(default)]
    pub shutdown_script: String,
    /// The user the scripts run as; `None`: the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Whether `ready` waits for the startup script.
    #[serde(default)]
    pub startup_behavior: StartupBehavior,
    /// Start timeout, seconds, when the template sets one (else the agent's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_seconds: Option<u64>,
    /// Shutdown timeout, seconds, when the template sets one (else the agent's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_seconds: Option<u64>,
}

crate::wire_enum!(
    /// Where a log line came from.
    pub enum LogStream {
        /// A script's standard output.
        Stdout = "stdout",
        /// A script's standard error.
        Stderr = "stderr",
        /// The agent itself (script started, exited, lines dropped).
        Agent = "agent",
    }
);

/// One line of script output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the agent read it, milliseconds since the epoch.
    pub at_ms: i64,
    /// Which stream.
    pub stream: LogStream,
    /// The text, without its newline, at most [`MAX_LOG_LINE_BYTES`].
    pub text: String,
}

/// Lines sent together (`POST` [`LOGS_PATH`]). `(start_id, seq)` names the batch: a retried
/// batch is stored once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// Random id of this agent lifetime (one workspace start).
    pub start_id: String,
    /// 1, 2, 3, … within the start, in the order sent.
    pub seq: u64,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines the agent dropped before these (its buffer was full while the control plane was
    /// slow or away): counted into the start's one "dropped" marker, not sent as lines.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_lines: u64,
    /// Bytes of those lines.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The answer to a [`LogBatch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatchResponse {
    /// Lines stored now (0 for a batch seen before).
    pub stored: u64,
    /// The batch had been stored already (a retry).
    pub duplicate: bool,
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was cut.
pub fn cut_line(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let note_room = 40.min(max);
    let mut end = max - note_room;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_string();
    let note = format!(" [cut: {} bytes]", text.len() - end);
    if out.len() + note.len() <= max {
        out.push_str(&note);
    }
    out
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

    #[test]
    fn manifest_defaults_and_wire_names() {
        let m: Manifest = serde_json::from_str("{}").unwrap();
        assert_eq!(m, Manifest::default());
        assert_eq!(m.startup_behavior, StartupBehavior::Blocking);
        let m: Manifest = serde_json::from_str(
            r#"{"startup_script":"echo hi","startup_behavior":"non-blocking","run_as":"coder","start_timeout_seconds":60}"#,
        )
        .unwrap();
        assert_eq!(m.startup_behavior, StartupBehavior::NonBlocking);
        assert_eq!(m.run_as.as_deref(), Some("coder"));
        assert_eq!(m.start_timeout_seconds, Some(60));
        assert!(serde_json::from_str::<Manifest>(r#"{"startup_behavior":"later"}"#).is_err());
        let line = LogLine {
            at_ms: 1,
            stream: LogStream::Stderr,
            text: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"at_ms":1,"stream":"stderr","text":"x"}"#
        );
    }

    #[test]
    fn cut_line_table() {
        let long = "a".repeat(5000);
        let multi = "é".repeat(3000); // 6000 bytes
        for (name, text, max, want_len_at_most, keeps_all) in [
            ("short", "hello", 4096, 5, true),
            ("exactly max", &long[..4096], 4096, 4096, true),
            ("long", long.as_str(), 4096, 4096, false),
            ("multibyte", multi.as_str(), 4096, 4096, false),
            ("tiny max", long.as_str(), 10, 10, false),
        ] {
            let got = cut_line(text, max);
            assert!(got.len() <= want_len_at_most, "{name}: {}", got.len());
            assert_eq!(got == text, keeps_all, "{name}");
            if !keeps_all && max > 40 {
                assert!(
                    got.ends_with(" bytes]"),
                    "{name}: {}",
                    &got[got.len() - 20..]
                );
            }
        }
    }
}
