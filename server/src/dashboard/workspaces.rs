//! `/`: the signed-in user's workspaces (admins: everyone's, with an owner filter and a search
//! box), the create form, and `/_dashboard/rows/{id}`, one row as HTML for the live updates
//! (the JS replaces a row when the list watch reports a change, so rows are rendered in one
//! place only: here).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, Viewer, error_page, html_response, layout, status_badge};
use crate::api::{WorkspaceJson, full_workspace, visible_workspace, workspace_json};
use crate::caller::Principal;
use crate::model::WorkspaceStatus;
use crate::state::AppState;

/// `GET /` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Admins: only this owner's.
    pub owner: Option<String>,
    /// Search text (names and owners), applied as the user types too.
    pub q: Option<String>,
}

/// `GET /`.
pub async fn page(
    State(state): State<AppState>,
    Viewer(p): Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    match render(&state, &p, &q).await {
        Ok(m) => html_response(StatusCode::OK, m),
        Err(e) => error_page(e.status(), Some(&p.user), &e.to_string()),
    }
}

async fn render(state: &AppState, p: &Principal, q: &ListQuery) -> crate::Result<Markup> {
    let admin = p.user.is_admin;
    let owner_filter = q.owner.as_deref().filter(|o| admin && !o.is_empty());
    let owner_id = match (admin, owner_filter) {
        (false, _) => Some(p.user.id.clone()),
        (true, None) => None,
        (true, Some(name)) => match state.db.user_by_name(name).await? {
            Some(u) => Some(u.id),
            None => Some(String::new()),
        },
    };
    let list = state.db.list_workspaces(owner_id.as_deref()).await?;
    let builds = state.db.latest_builds(owner_id.as_deref()).await?;
    let rows: Vec<WorkspaceJson> = list
        .iter()
        .filter(|ws| ws.status != WorkspaceStatus::Deleted)
        .map(|ws| workspace_json(state, ws, builds.get(&ws.id)))
        .collect();
    let owners = if admin {
        state.db.list_users().await?
    } else {
        vec![]
    };
    let search = q.q.clone().unwrap_or_default();
    let title = if admin {
        "All workspaces"
    } else {
        "Your workspaces"
    };
    Ok(layout(
        "Workspaces",
        Some(&p.user),
        Nav::Workspaces,
        html! {
            div.page-head {
                h1 { (title) }
                span.live #live-state role="status" aria-live="polite" { "" }
            }
            section.card #create aria-labelledby="create-title" {
                h2 #create-title { "New workspace" }
                form #create-form data-owner=(p.user.username) novalidate {
                    div.field {
                        label for="ws-name" { "Name" }
                        input #ws-name name="name" type="text" required maxlength="63"
                            autocomplete="off" spellcheck="false" pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                            aria-describedby="ws-name-hint";
                        button.primary type="submit" #create-submit { "Create" }
                    }
                    p.hint #ws-name-hint aria-live="polite" {
                        "Lowercase letters, digits and '-', starting and ending with a letter or digit."
                    }
                }
            }
            @if admin {
                form.filters method="get" action="/" role="search" {
                    div.field {
                        label for="owner" { "Owner" }
                        select #owner name="owner" {
                            option value="" selected[owner_filter.is_none()] { "Everyone" }
                            @for u in &owners {
                                option value=(u.username) selected[owner_filter == Some(u.username.as_str())] { (u.username) }
                            }
                        }
                    }
                    div.field {
                        label for="search" { "Search" }
                        input #search name="q" type="search" value=(search) placeholder="Name or owner";
                    }
                    button type="submit" { "Filter" }
                }
            } @else {
                div.filters hidden[rows.is_empty()] {
                    div.field {
                        label for="search" { "Search" }
                        input #search name="q" type="search" value=(search) placeholder="Name";
                    }
                }
            }
            section #list data-watch="/api/v2/workspaces/watch" {
                p.empty #empty hidden[!rows.is_empty()] {
                    strong { "No workspaces yet." }
                    " Type a name above and press Create: you get a pod with Tilt, code-server \
                      and the agents UI, and a home volume that survives stops. From a shell: "
                    code { "curl -X POST -H 'Coder-Session-Token: …' -d '{\"name\":\"dev\"}' "
                        (state.config.access_url) "/api/v2/users/me/workspaces" }
                }
                table.workspaces #workspaces hidden[rows.is_empty()] {
                    caption.visually-hidden { (title) }
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Owner" }
                        th scope="col" { "Status" }
                        th scope="col" { "Reason" }
                        th scope="col" { "Agent" }
                        th scope="col" { "Last activity" }
                        th scope="col" { "Actions" }
                    } }
                    tbody #rows {
                        @for ws in &rows { (row(ws)) }
                    }
                }
            }
        },
    ))
}

/// What the agent column says.
pub fn agent_summary(ws: &WorkspaceJson) -> String {
    match &ws.agent {
        Some(a) => format!("{} · {}", a.lifecycle_state, a.status),
        None => "no agent yet".into(),
    }
}

/// The last thing that happened: the agent's last contact, a session's use, else the last
/// status change.
pub fn last_activity(ws: &WorkspaceJson) -> Option<i64> {
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis())
    };
    let agent = ws
        .agent
        .as_ref()
        .and_then(|a| a.last_connected_at.as_deref())
        .and_then(parse);
    let status = parse(&ws.status_changed_at);
    let used = ws.last_used_at.as_deref().and_then(parse);
    agent.max(status).max(used)
}

/// Which buttons a status allows: (start, stop, delete).
pub fn allowed_actions(status: WorkspaceStatus) -> (bool, bool, bool) {
    use WorkspaceStatus::*;
    match status {
        Stopped | Failed => (true, false, true),
        Pending | Starting | Running => (false, true, true),
        Stopping => (true, false, true),
        Deleting | Deleted => (false, false, false),
    }
}

/// The start/stop/delete buttons (the JS sends the builds; delete asks first).
pub fn action_buttons(ws: &WorkspaceJson) -> Markup {
    let (start, stop, delete) = allowed_actions(ws.status);
    html! {
        span.actions {
            button type="button" data-action="start" data-id=(ws.id) disabled[!start]
                aria-label={ "Start " (ws.name) } { "Start" }
            button type="button" data-action="stop" data-id=(ws.id) disabled[!stop]
                aria-label={ "Stop " (ws.name) } { "Stop" }
            button.danger type="button" data-action="delete" data-id=(ws.id) data-name=(ws.name)
                disabled[!delete] aria-label={ "Delete " (ws.name) } { "Delete" }
        }
    }
}

/// Links opening each app through the app proxy, in a new tab; greyed out unless running.
pub fn app_links(ws: &WorkspaceJson) -> Markup {
    let running = ws.status == WorkspaceStatus::Running;
    html! {
        span.apps {
            @for app in &ws.apps {
                @if running {
                    a.app href=(app.url) target="_blank" rel="noopener noreferrer"
                        data-health=(app.health.as_str()) { (app.display_name) }
                } @else {
                    span.app.off aria-disabled="true" title="Start the workspace to open its apps" { (app.display_name) }
                }
            }
        }
    }
}

/// One row of the list.
pub fn row(ws: &WorkspaceJson) -> Markup {
    let page = format!("/@{}/{}", ws.owner_name, ws.name);
    html! {
        tr #{ "ws-" (ws.id) } data-id=(ws.id) data-name=(ws.name) data-owner=(ws.owner_name)
            data-status=(ws.status.as_str()) {
            td data-label="Name" { a.ws-link href=(page) { (ws.name) } }
            td data-label="Owner" { (ws.owner_name) }
            td data-label="Status" { (status_badge(ws.status)) }
            td.reason data-label="Reason" {
                @if ws.status_reason.is_empty() { span.muted { "—" } } @else { (ws.status_reason) }
            }
            td data-label="Agent" { (agent_summary(ws)) }
            td data-label="Last activity" { (super::when(last_activity(ws))) }
            td data-label="Actions" { div.cell-actions { (action_buttons(ws)) (app_links(ws)) } }
        }
    }
}

/// `GET /_dashboard/rows/{id}`: one row, for the live updates; 404 once it is gone.
pub async fn row_fragment(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let ws = visible_workspace(&state, &p, &id).await?;
        full_workspace(&state, &ws).await
    }
    .await;
    match result {
        Ok(ws) if ws.status != WorkspaceStatus::Deleted => html_response(StatusCode::OK, row(&ws)),
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_by_status() {
        use WorkspaceStatus::*;
        let cases = [
            (Pending, (false, true, true)),
            (Starting, (false, true, true)),
            (Running, (false, true, true)),
            (Stopping, (true, false, true)),
            (Stopped, (true, false, true)),
            (Failed, (true, false, true)),
            (Deleting, (false, false, false)),
            (Deleted, (false, false, false)),
        ];
        for (s, want) in cases {
            assert_eq!(allowed_actions(s), want, "{s:?}");
        }
    }
}
