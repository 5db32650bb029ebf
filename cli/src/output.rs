//! What `list` and `show` print: rows built once from the server's answer, then either laid out
//! as an aligned table or written as JSON, so the two formats cannot disagree.

use serde::Serialize;

use crate::wire::Workspace;

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (the same rows).
    Json,
}

/// One row of `lumie list`: every field is a column, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkspaceRow {
    /// `owner/name`.
    pub workspace: String,
    /// The workspace status.
    pub status: String,
    /// Agent lifecycle and connection (`ready/connected`), `-` without one.
    pub agent: String,
    /// Healthy apps out of all (`2/3`).
    pub healthy_apps: String,
    /// When the status last changed (RFC 3339, as the server says it).
    pub since: String,
    /// Why, when not running (the scheduler's words when pending).
    pub reason: String,
}

impl WorkspaceRow {
    /// The table's header, one per field.
    pub const HEADERS: [&'static str; 6] = [
        "WORKSPACE",
        "STATUS",
        "AGENT",
        "HEALTHY APPS",
        "SINCE",
        "REASON",
    ];

    /// The row of a workspace.
    pub fn of(ws: &Workspace) -> WorkspaceRow {
        let healthy = ws.apps.iter().filter(|a| a.health == "healthy").count();
        WorkspaceRow {
            workspace: format!("{}/{}", ws.owner_name, ws.name),
            status: ws.status.clone(),
            agent: agent_cell(ws),
            healthy_apps: format!("{healthy}/{}", ws.apps.len()),
            since: ws.status_changed_at.clone(),
            reason: ws.status_reason.clone(),
        }
    }

    /// The cells, in [`Self::HEADERS`] order.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.workspace.clone(),
            self.status.clone(),
            self.agent.clone(),
            self.healthy_apps.clone(),
            self.since.clone(),
            self.reason.clone(),
        ]
    }
}

fn agent_cell(ws: &Workspace) -> String {
    match &ws.agent {
        Some(a) => format!("{}/{}", a.lifecycle_state, a.status),
        None => "-".into(),
    }
}

/// What `lumie show` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkspaceDetail {
    /// `owner/name`.
    pub workspace: String,
    /// Id.
    pub id: String,
    /// Status.
    pub status: String,
    /// Why.
    pub reason: String,
    /// Since (RFC 3339).
    pub since: String,
    /// Agent lifecycle/connection.
    pub agent: String,
    /// `#3 start succeeded`, `-` without one.
    pub latest_build: String,
    /// The apps.
    pub apps: Vec<AppDetail>,
}

/// One app in [`WorkspaceDetail`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppDetail {
    /// Slug.
    pub slug: String,
    /// Health.
    pub health: String,
    /// Where to open it.
    pub url: String,
}

impl WorkspaceDetail {
    /// The detail of a workspace.
    pub fn of(ws: &Workspace) -> WorkspaceDetail {
        WorkspaceDetail {
            workspace: format!("{}/{}", ws.owner_name, ws.name),
            id: ws.id.clone(),
            status: ws.status.clone(),
            reason: ws.status_reason.clone(),
            since: ws.status_changed_at.clone(),
            agent: agent_cell(ws),
            latest_build: match &ws.latest_build {
                Some(b) => {
                    let mut s = format!("#{} {} {}", b.build_number, b.transition, b.status);
                    if let Some(e) = b.error.as_deref().filter(|e| !e.is_empty()) {
                        s.push_str(": ");
                        s.push_str(e);
                    }
                    s
                }
                None => "-".into(),
            },
            apps: ws
                .apps
                .iter()
                .map(|a| AppDetail {
                    slug: a.slug.clone(),
                    health: a.health.clone(),
                    url: a.url.clone(),
                })
                .collect(),
        }
    }

    /// Label/value lines (the table form).
    pub fn lines(&self) -> Vec<Vec<String>> {
        let mut rows = vec![
            vec!["Workspace".into(), self.workspace.clone()],
            vec!["Id".into(), self.id.clone()],
            vec!["Status".into(), self.status.clone()],
            vec!["Reason".into(), self.reason.clone()],
            vec!["Since".into(), self.since.clone()],
            vec!["Agent".into(), self.agent.clone()],
            vec!["Latest build".into(), self.latest_build.clone()],
        ];
        for a in &self.apps {
            rows.push(vec![
                format!("App {}", a.slug),
                format!("{} {}", a.health, a.url),
            ]);
        }
        rows
    }
}

/// Lays out rows under headers (when any) in columns two spaces apart; the last column is not
/// padded, so nothing trails.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers
        .len()
        .max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0usize; columns];
    let all = std::iter::once(headers.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .filter(|h| !h.is_empty())
        .chain(rows.iter().cloned())
        .collect::<Vec<_>>();
    for row in &all {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The list in a format.
pub fn render_list(rows: &[WorkspaceRow], format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(rows).expect("rows serialize");
            s.push('\n');
            s
        }
        Format::Table if rows.is_empty() => {
            "No workspaces yet: `lumie create NAME` makes one.\n".into()
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(WorkspaceRow::cells).collect();
            table(&WorkspaceRow::HEADERS, &cells)
        }
    }
}

/// A workspace's detail in a format.
pub fn render_detail(d: &WorkspaceDetail, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(d).expect("detail serializes");
            s.push('\n');
            s
        }
        Format::Table => table(&[], &d.lines()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Agent, App};

    fn ws(name: &str, status: &str, reason: &str, agent: Option<(&str, &str)>) -> Workspace {
        Workspace {
            id: format!("id-{name}"),
            owner_name: "alice".into(),
            name: name.into(),
            desired_state: "running".into(),
            status: status.into(),
            status_reason: reason.into(),
            created_at: "2026-12-01T10:00:00Z".into(),
            status_changed_at: "2026-12-01T10:05:00Z".into(),
            latest_build: None,
            agent: agent.map(|(l, s)| Agent {
                lifecycle_state: l.into(),
                status: s.into(),
            }),
            apps: vec![
                App {
                    slug: "tilt".into(),
                    display_name: "Tilt".into(),
                    url: "u".into(),
                    health: "healthy".into(),
                },
                App {
                    slug: "agents".into(),
                    display_name: "Agents".into(),
                    url: "u".into(),
                    health: "initializing".into(),
                },
            ],
        }
    }

    #[test]
    fn rows_carry_what_the_table_shows() {
        let cases = [
            (
                ws("dev", "running", "", Some(("ready", "connected"))),
                [
                    "alice/dev",
                    "running",
                    "ready/connected",
                    "1/2",
                    "2026-12-01T10:05:00Z",
                    "",
                ],
            ),
            (
                ws("big", "pending", "0/4 nodes are available", None),
                [
                    "alice/big",
                    "pending",
                    "-",
                    "1/2",
                    "2026-12-01T10:05:00Z",
                    "0/4 nodes are available",
                ],
            ),
        ];
        for (w, want) in cases {
            let row = WorkspaceRow::of(&w);
            assert_eq!(row.cells(), want.map(String::from).to_vec(), "{}", w.name);
            // JSON has the same values under the same (lower-case) names.
            let json = serde_json::to_value(&row).unwrap();
            let obj = json.as_object().unwrap();
            assert_eq!(obj.len(), WorkspaceRow::HEADERS.len());
            for (h, cell) in WorkspaceRow::HEADERS.iter().zip(row.cells()) {
                let key = h.to_lowercase().replace(' ', "_");
                assert_eq!(obj[&key], cell, "{key}");
            }
        }
    }

    #[test]
    fn tables_align_and_do_not_trail() {
        let t = table(
            &["A", "LONGER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "z z".into()],
                vec!["x".into(), "".into(), "".into()],
            ],
        );
        assert_eq!(t, "A     LONGER  C\nxxxx  y       z z\nx\n");
        let kv = table(
            &[],
            &[
                vec!["Id".into(), "1".into()],
                vec!["Status".into(), "ok".into()],
            ],
        );
        assert_eq!(kv, "Id      1\nStatus  ok\n");
        assert!(render_list(&[], Format::Table).contains("lumie create"));
        assert_eq!(render_list(&[], Format::Json), "[]\n");
    }

    #[test]
    fn detail_names_build_and_apps() {
        let mut w = ws(
            "dev",
            "failed",
            "pod evicted",
            Some(("ready", "disconnected")),
        );
        w.latest_build = Some(crate::wire::Build {
            id: "b".into(),
            build_number: 3,
            transition: "start".into(),
            status: "failed".into(),
            error: Some("quota".into()),
        });
        let d = WorkspaceDetail::of(&w);
        assert_eq!(d.latest_build, "#3 start failed: quota");
        let t = render_detail(&d, Format::Table);
        assert!(t.contains("App tilt      healthy u"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&render_detail(&d, Format::Json)).unwrap();
        assert_eq!(j["apps"][1]["health"], "initializing");
    }
}
