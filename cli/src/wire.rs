//! The few JSON shapes of lumie-server's `/api/v2` that the CLI reads, defined here rather than
//! taken from `lumie_server::api` so the CLI does not pull the server (kube, sqlx) into its
//! build. Statuses stay strings: a status the server adds later is shown, not a parse error.
//! Every field the CLI does not need is left out; unknown ones are ignored.

use serde::{Deserialize, Serialize};

/// `GET /api/v2/users/me`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: String,
    /// Name.
    pub username: String,
    /// Admin.
    #[serde(default)]
    pub is_admin: bool,
}

/// A build (`latest_build`, `POST …/builds`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Build {
    /// Id.
    pub id: String,
    /// 1, 2, …
    #[serde(default)]
    pub build_number: i64,
    /// `start`, `stop`, `delete`.
    pub transition: String,
    /// `pending`, `running`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The workspace agent.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Agent {
    /// `created`, `starting`, `ready`, …
    pub lifecycle_state: String,
    /// `connecting`, `connected`, `disconnected`, `timeout`.
    pub status: String,
}

/// A workspace app and where to open it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct App {
    /// Slug.
    pub slug: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Where the server says to open it.
    pub url: String,
    /// `initializing`, `healthy`, `unhealthy`, `disabled`.
    #[serde(default)]
    pub health: String,
}

/// A workspace.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Workspace {
    /// Id.
    pub id: String,
    /// Owner name.
    pub owner_name: String,
    /// Name.
    pub name: String,
    /// `running`, `stopped`, `deleted`.
    #[serde(default)]
    pub desired_state: String,
    /// `pending`, `starting`, `running`, `stopping`, `stopped`, `deleting`, `deleted`, `failed`.
    pub status: String,
    /// Why, when not running (the scheduler's words when pending).
    #[serde(default)]
    pub status_reason: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub status_changed_at: String,
    /// Newest build.
    #[serde(default)]
    pub latest_build: Option<Build>,
    /// The agent.
    #[serde(default)]
    pub agent: Option<Agent>,
    /// Apps.
    #[serde(default)]
    pub apps: Vec<App>,
}

/// `GET /api/v2/workspaces`.
#[derive(Clone, Debug, Deserialize)]
pub struct Workspaces {
    /// The workspaces.
    pub workspaces: Vec<Workspace>,
}

/// The error body every `/api/v2` route answers with.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The server's sentence.
    pub message: String,
    /// More, when any.
    #[serde(default)]
    pub detail: String,
}

/// The server's own sentence in an error answer: the JSON `message` (with `detail` after it),
/// else the body's first line, else the status's reason.
pub fn error_message(status: u16, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return if e.detail.is_empty() {
            e.message
        } else {
            format!("{} ({})", e.message, e.detail)
        };
    }
    let text = String::from_utf8_lossy(body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.chars().take(300).collect(),
        None => reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no reason given")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_json_or_the_body() {
        let cases: &[(u16, &str, &str)] = &[
            (
                404,
                r#"{"message":"workspace x not found"}"#,
                "workspace x not found",
            ),
            (
                500,
                r#"{"message":"internal error","detail":"boom"}"#,
                "internal error (boom)",
            ),
            (
                502,
                "bad gateway from proxy\nmore",
                "bad gateway from proxy",
            ),
            (503, "", "Service Unavailable"),
            (599, "", "no reason given"),
        ];
        for (status, body, want) in cases {
            assert_eq!(error_message(*status, body.as_bytes()), *want, "{body:?}");
        }
    }

    #[test]
    fn a_server_workspace_parses_with_fields_we_do_not_read() {
        let json = r#"{"id":"1","owner_id":"u","owner_name":"alice","name":"dev","pod_name":"p",
            "desired_state":"running","status":"pending","status_reason":"0/4 nodes are available",
            "created_at":"2026-01-01T00:00:00Z","updated_at":"x","status_changed_at":"2026-01-01T00:00:00Z",
            "latest_build":{"id":"b","workspace_id":"1","build_number":1,"transition":"start",
            "status":"running","created_at":"x"},"agent":null,
            "apps":[{"slug":"tilt","display_name":"Tilt","url":"http://h/@alice/dev/apps/tilt/","health":"initializing"}]}"#;
        let ws: Workspace = serde_json::from_str(json).unwrap();
        assert_eq!(ws.status, "pending");
        assert_eq!(ws.latest_build.unwrap().transition, "start");
        assert_eq!(ws.apps[0].slug, "tilt");
    }
}
