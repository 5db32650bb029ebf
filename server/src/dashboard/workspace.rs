//! `/@{owner}/{workspace}`: one workspace — status and reason (live), the agent's lifecycle,
//! connection and each app's health, buttons opening the apps through the app proxy (new tab),
//! start/stop/delete, the terminal ([`terminal_section`]), and the build history.
//! `/_dashboard/live/{id}` renders the live part alone for the page's SSE watch to swap in.
//!
//! Below them, each in its own module and section: the resource graphs over the last hour
//! ([`super::resources`]) and the pod's Kubernetes events ([`super::pod_events`]), each
//! refreshed in place, then the agent's startup log, followed live (`startup_log`).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{
    Nav, Viewer, duration, error_page, html_response, layout, pod_events, resources, status_badge,
    when,
};
use crate::api::{WorkspaceJson, full_workspace, visible_workspace};
use crate::caller::Principal;
use crate::error::Error;
use crate::model::{BuildRecord, WorkspaceStatus, now_ms};
use crate::state::AppState;

/// `GET /@{owner}/{workspace}`.
pub async fn page(
    State(state): State<AppState>,
    Viewer(p): Viewer,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    match render(&state, &p, &owner, &name).await {
        Ok(m) => terminal_csp(html_response(StatusCode::OK, m)),
        Err(e) => error_page(e.status(), Some(&p.user), &e.to_string()),
    }
}

async fn render(state: &AppState, p: &Principal, owner: &str, name: &str) -> crate::Result<Markup> {
    let not_found = || Error::NotFound(format!("workspace {owner}/{name} not found"));
    let owner_user = state.db.user_by_name(owner).await?.ok_or_else(not_found)?;
    if !p.may_act_for(&owner_user.id) {
        return Err(not_found());
    }
    let ws = state
        .db
        .workspace_by_owner_and_name(&owner_user.id, name)
        .await?
        .ok_or_else(not_found)?;
    let json = full_workspace(state, &ws).await?;
    let builds = state.db.list_builds(&ws.id).await?;
    let mut who: HashMap<String, String> = HashMap::new();
    for id in builds.iter().filter_map(|b| b.initiator_id.as_deref()) {
        if !who.contains_key(id) {
            let name = state
                .db
                .user_by_id(id)
                .await?
                .map(|u| u.username)
                .unwrap_or_else(|| id.to_string());
            who.insert(id.to_string(), name);
        }
    }
    let now = now_ms();
    let samples = resources::recent(state, &ws.id, now).await?;
    let events = pod_events::read(state, &ws.pod_name).await;
    Ok(layout(
        &format!("{owner}/{name}"),
        Some(&p.user),
        Nav::Workspaces,
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Workspaces" } " / " (owner) }
            div.page-head {
                h1 { (name) }
                span.live #live-state role="status" aria-live="polite" { "" }
            }
            div #live data-watch={ "/api/v2/workspaces/" (ws.id) "/watch" } data-fragment={ "/_dashboard/live/" (ws.id) } {
                (live(&json))
            }
            (terminal_section(&json))
            section.card aria-labelledby="builds-title" {
                h2 #builds-title { "Build history" }
                (build_table(&builds, &who))
            }
            (resources::section(&ws.id, &samples, now))
            (pod_events::section(&ws.id, &events))
            (startup_log(state, &ws.id).await?)
        },
    ))
}

/// The "Startup log" section: the latest start's script output as stored (escaped like all
/// text), then followed live by `dashboard.js` through `GET …/logs?follow` (lines after
/// `data-after` only).
async fn startup_log(state: &AppState, workspace_id: &str) -> crate::Result<Markup> {
    let starts = state.db.log_starts(workspace_id).await?;
    let mut lines = Vec::new();
    if let Some(start) = starts.first() {
        lines.extend(crate::startup_logs::marker_line(start).map(|l| (0, l)));
        for s in state
            .db
            .log_lines(
                workspace_id,
                &start.start_id,
                0,
                crate::startup_logs::READ_LIMIT,
            )
            .await?
        {
            lines.push((s.id, s.line));
        }
    }
    let after = lines.last().map(|(id, _)| *id).unwrap_or(0);
    Ok(html! {
        section.card aria-labelledby="startup-log-title" {
            h2 #startup-log-title { "Startup log" }
            p.muted #startup-log-empty hidden[!lines.is_empty()] {
                "No output yet: the agent sends its startup script's output once it has connected."
            }
            pre.startup-log #startup-log tabindex="0" aria-live="polite" hidden[lines.is_empty()]
                data-follow={ "/api/v2/workspaces/" (workspace_id) "/logs?follow" }
                data-after=(after) {
                @for (_, l) in &lines {
                    span class={ "log-line log-" (l.stream.as_str()) } {
                        span.log-at { (crate::model::rfc3339(l.at_ms).get(11..23).unwrap_or("")) } " " (l.text) "\n"
                    }
                }
            }
        }
    })
}

/// The live part: status, reason, agent, apps, actions.
pub fn live(ws: &WorkspaceJson) -> Markup {
    html! {
        section.card.status-card aria-labelledby="status-title" data-status=(ws.status.as_str()) {
            h2 #status-title { "Status" }
            dl.facts {
                dt { "Status" } dd { (status_badge(ws.status)) }
                dt { "Reason" } dd.reason #status-reason {
                    @if ws.status_reason.is_empty() { span.muted { "—" } } @else { (ws.status_reason) }
                }
                dt { "Since" } dd { (when(chrono::DateTime::parse_from_rfc3339(&ws.status_changed_at).ok().map(|d| d.timestamp_millis()))) }
                dt { "Pod" } dd { code { (ws.pod_name) } }
            }
            div.toolbar {
                (super::workspaces::action_buttons(ws))
            }
        }
        section.card aria-labelledby="agent-title" {
            h2 #agent-title { "Agent" }
            @match &ws.agent {
                Some(a) => {
                    dl.facts {
                        dt { "Lifecycle" } dd #agent-lifecycle { (a.lifecycle_state)
                            @if !a.lifecycle_reason.is_empty() { ": " (a.lifecycle_reason) } }
                        dt { "Connection" } dd #agent-connection { (a.status) }
                        dt { "Last contact" } dd { (when(a.last_connected_at.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|d| d.timestamp_millis()))) }
                        dt { "Version" } dd { @if a.version.is_empty() { span.muted { "—" } } @else { (a.version) } }
                    }
                }
                None => { p.muted #agent-lifecycle { "No agent has registered yet: it starts with the pod." } }
            }
        }
        section.card aria-labelledby="apps-title" {
            h2 #apps-title { "Apps" }
            ul.app-list {
                @for app in &ws.apps {
                    li {
                        @if ws.status == WorkspaceStatus::Running {
                            a.button href=(app.url) target="_blank" rel="noopener noreferrer"
                                data-app=(app.slug) { "Open " (app.display_name) }
                        } @else {
                            span.button.off aria-disabled="true" data-app=(app.slug) { "Open " (app.display_name) }
                        }
                        " "
                        span class={ "health health-" (app.health.as_str()) } { (app.health.as_str()) }
                    }
                }
            }
            @if ws.status != WorkspaceStatus::Running {
                p.hint { "Apps open once the workspace is running." }
            }
        }
    }
}

fn build_table(builds: &[BuildRecord], who: &HashMap<String, String>) -> Markup {
    html! {
        @if builds.is_empty() {
            p.muted { "No builds yet." }
        } @else {
            table.builds {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "Transition" } th scope="col" { "Who" }
                    th scope="col" { "When" } th scope="col" { "Result" } th scope="col" { "Duration" }
                } }
                tbody {
                    @for b in builds {
                        tr {
                            td data-label="#" { (b.number) }
                            td data-label="Transition" { (b.transition.as_str()) }
                            td data-label="Who" {
                                @match b.initiator_id.as_deref() {
                                    Some(id) => { (who.get(id).map(String::as_str).unwrap_or(id)) }
                                    None => { span.muted { "system" } }
                                }
                            }
                            td data-label="When" { (when(Some(b.created_at))) }
                            td data-label="Result" {
                                span class={ "result result-" (b.status.as_str()) } { (b.status.as_str()) }
                                @if let Some(e) = &b.error { " " span.reason { (e) } }
                            }
                            td data-label="Duration" {
                                @match (b.started_at, b.completed_at) {
                                    (Some(s), Some(c)) => { (duration(c - s)) }
                                    _ => { span.muted { "—" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /_dashboard/live/{id}`: the live part alone.
pub async fn live_fragment(
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
        Ok(ws) => html_response(StatusCode::OK, live(&ws)),
        Err(e) => e.into_response(),
    }
}

/// The terminal card: xterm.js over `GET /api/v2/workspaces/{id}/sessions/terminal` (same
/// origin, the page's session), opened by its button (`assets/terminal.js`).
pub fn terminal_section(ws: &WorkspaceJson) -> Markup {
    html! {
        section.card aria-labelledby="terminal-title" {
            h2 #terminal-title { "Terminal" }
            p.toolbar {
                button #terminal-open type="button" { "Open a terminal" }
                " "
                span.muted #terminal-state role="status" aria-live="polite" {
                    "A login shell in the workspace's dev container, through the control plane."
                }
            }
            link rel="stylesheet" href="/assets/xterm.css";
            div #terminal data-workspace=(ws.id) hidden style="background:#000;padding:8px;border-radius:6px" {}
            script src="/assets/xterm.js" defer {}
            script src="/assets/terminal.js" defer {}
        }
    }
}

/// The workspace page's policy with inline styles allowed: xterm.js sizes and colours its rows
/// through `<style>` elements it writes. Scripts stay `'self'` only.
fn terminal_csp(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    resp
}
