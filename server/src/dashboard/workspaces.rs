//! `/`: the signed-in user's workspaces (admins: everyone's, with an owner filter and a search
//! box), [`PAGE_SIZE`] to a page, the create form, and `/_dashboard/rows/{id}`, one row as HTML for the live updates
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
    /// Search text (names and owners): applied here over every workspace, and as the user
    /// types over the rows shown.
    pub q: Option<String>,
    /// Which page of [`PAGE_SIZE`] rows (from 1).
    pub page: Option<usize>,
}

/// Rows per page: an admin with 1,000 workspaces gets them a page at a time, so the page stays
/// quick to render and light to load (the budgets in `benches/dashboard_render.rs`).
pub const PAGE_SIZE: usize = 50;

/// The rows of page `page` (from 1, clamped to the last) of `total`: (range, page, pages).
pub fn page_of(total: usize, page: usize) -> (std::ops::Range<usize>, usize, usize) {
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let start = (page - 1) * PAGE_SIZE;
    (start..(start + PAGE_SIZE).min(total), page, pages)
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
    let search = q.q.clone().unwrap_or_default();
    // The page asked for, clamped once the total is known (a second read only past the end).
    let asked = q.page.unwrap_or(1).max(1);
    let (mut found, mut total) = state
        .db
        .workspace_page(
            owner_id.as_deref(),
            &search,
            (asked - 1) * PAGE_SIZE,
            PAGE_SIZE,
        )
        .await?;
    let (range, page, pages) = page_of(total, asked);
    if page != asked {
        (found, total) = state
            .db
            .workspace_page(owner_id.as_deref(), &search, range.start, PAGE_SIZE)
            .await?;
    }
    // The rows show no build, so none is read.
    let rows: Vec<WorkspaceJson> = found
        .iter()
        .map(|ws| workspace_json(state, ws, None))
        .collect();
    let owners = if admin {
        state.db.list_users().await?
    } else {
        vec![]
    };
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
                form.filters data-hide-when-empty method="get" action="/" role="search"
                    hidden[rows.is_empty() && search.is_empty()] {
                    div.field {
                        label for="search" { "Search" }
                        input #search name="q" type="search" value=(search) placeholder="Name";
                    }
                    @if pages > 1 || !search.is_empty() { button type="submit" { "Filter" } }
                }
            }
            section #list data-watch="/api/v2/workspaces/watch" {
                p.empty #empty hidden[!rows.is_empty() || !search.is_empty()] {
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
                @if pages > 1 || !search.is_empty() {
                    (pager(owner_filter, &search, range.clone(), total, page, pages))
                }
            }
        },
    ))
}

/// "51–100 of 1,002" with the previous and next page's links (the filters kept).
fn pager(
    owner: Option<&str>,
    search: &str,
    range: std::ops::Range<usize>,
    total: usize,
    page: usize,
    pages: usize,
) -> Markup {
    let href = |to: usize| {
        let mut q = openidconnect::url::form_urlencoded::Serializer::new(String::new());
        if let Some(o) = owner {
            q.append_pair("owner", o);
        }
        if !search.is_empty() {
            q.append_pair("q", search);
        }
        q.append_pair("page", &to.to_string());
        format!("/?{}", q.finish())
    };
    html! {
        nav.pager aria-label="Pages" {
            span #page-count {
                @if total == 0 { "No workspace matches " q { (search) } "." }
                @else { (range.start + 1) "–" (range.end) " of " (total) }
                @if !search.is_empty() && total > 0 { " matching " q { (search) } }
            }
            @if page > 1 { a href=(href(page - 1)) rel="prev" { "← Previous" } }
            @if page < pages { a href=(href(page + 1)) rel="next" { "Next →" } }
        }
    }
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
    fn pages_of_the_list() {
        // (total, asked, range, page, pages)
        let cases = [
            (0, 1, 0..0, 1, 1),
            (3, 1, 0..3, 1, 1),
            (PAGE_SIZE, 2, 0..PAGE_SIZE, 1, 1),
            (1002, 1, 0..PAGE_SIZE, 1, 21),
            (1002, 21, 1000..1002, 21, 21),
            (1002, 99, 1000..1002, 21, 21),
            (1002, 0, 0..PAGE_SIZE, 1, 21),
        ];
        for (total, asked, range, page, pages) in cases {
            assert_eq!(
                page_of(total, asked),
                (range, page, pages),
                "{total} {asked}"
            );
        }
    }

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
