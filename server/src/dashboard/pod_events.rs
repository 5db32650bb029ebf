//! The workspace page's Kubernetes events: what the cluster said about the workspace's pod
//! (scheduling, image pulls, kills), read with the server's own kube client from the workspace
//! namespace (field selector on the pod), so a developer sees why it failed without kubectl.
//! Every message is shown as text (maud escapes it).
//!
//! `/_dashboard/events/{id}` renders the panel alone for the page to refresh.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use maud::{Markup, html};

use super::{html_response, when};
use crate::api::visible_workspace;
use crate::caller::Principal;
use crate::state::AppState;

/// Most events shown (newest first).
pub const MAX_EVENTS: usize = 20;
/// How long the page waits for the apiserver before saying it could not read them.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the page refreshes the panel.
pub const REFRESH_MS: i64 = 10_000;

/// One event as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    /// Last seen, ms since the epoch.
    pub at: Option<i64>,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// `Scheduled`, `FailedScheduling`, `Pulling`, `Killing`, …
    pub reason: String,
    /// The message, verbatim.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// Who reported it (`default-scheduler`, `kubelet`, …).
    pub source: String,
}

fn last_seen(e: &Event) -> Option<i64> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_millisecond())
}

/// The events to show: newest first, at most [`MAX_EVENTS`].
pub fn lines(events: Vec<Event>) -> Vec<EventLine> {
    let mut out: Vec<EventLine> = events
        .into_iter()
        .map(|e| EventLine {
            at: last_seen(&e),
            kind: e.type_.clone().unwrap_or_else(|| "Normal".into()),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default().trim().to_string(),
            count: e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
                .max(1),
            source: e
                .reporting_component
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.at));
    out.truncate(MAX_EVENTS);
    out
}

/// Reads the pod's events; `Err` is the sentence the page shows instead.
pub async fn read(state: &AppState, pod_name: &str) -> Result<Vec<EventLine>, String> {
    let Some(client) = state.kube.clone() else {
        return Err(
            "This server has no Kubernetes API client, so it cannot show the pod's events.".into(),
        );
    };
    let api: Api<Event> = Api::namespaced(client, &state.config.namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={pod_name}"
    ));
    match tokio::time::timeout(READ_TIMEOUT, api.list(&params)).await {
        Ok(Ok(list)) => Ok(lines(list.items)),
        Ok(Err(kube::Error::Api(s))) if s.code == 403 => Err(format!(
            "The server may not read events in namespace {}: {} (the chart's Role grants get/list on events).",
            state.config.namespace, s.message
        )),
        Ok(Err(e)) => Err(format!("Reading the pod's events failed: {e}")),
        Err(_) => Err(format!(
            "The Kubernetes API did not answer within {} s; the events are not shown.",
            READ_TIMEOUT.as_secs()
        )),
    }
}

/// The panel alone.
pub fn panel(events: &Result<Vec<EventLine>, String>) -> Markup {
    html! {
        @match events {
            Err(why) => { p.muted #events-error { (why) } }
            Ok(list) if list.is_empty() => {
                p.muted { "No events for this pod (the cluster keeps them for about an hour)." }
            }
            Ok(list) => {
                table.events #events {
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Type" } th scope="col" { "Reason" }
                        th scope="col" { "Message" } th scope="col" { "From" }
                    } }
                    tbody {
                        @for e in list {
                            tr data-reason=(e.reason) {
                                td data-label="When" { (when(e.at)) @if e.count > 1 { " " span.muted { "×" (e.count) } } }
                                td data-label="Type" { span class={ "event-" (e.kind.to_ascii_lowercase()) } { (e.kind) } }
                                td data-label="Reason" { (e.reason) }
                                td.reason data-label="Message" { (e.message) }
                                td data-label="From" { (e.source) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The page's section.
pub fn section(workspace_id: &str, events: &Result<Vec<EventLine>, String>) -> Markup {
    html! {
        section.card aria-labelledby="events-title" {
            h2 #events-title { "Kubernetes events" }
            div #pod-events data-refresh={ "/_dashboard/events/" (workspace_id) } data-every=(REFRESH_MS) {
                (panel(events))
            }
        }
    }
}

/// `GET /_dashboard/events/{id}`: the panel alone.
pub async fn fragment(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Response {
    match visible_workspace(&state, &p, &id).await {
        Ok(ws) => html_response(StatusCode::OK, panel(&read(&state, &ws.pod_name).await)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn event(reason: &str, message: &str, at_secs: Option<i64>) -> Event {
        Event {
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                if reason.starts_with("Failed") {
                    "Warning"
                } else {
                    "Normal"
                }
                .into(),
            ),
            last_timestamp: at_secs
                .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())),
            source: Some(EventSource {
                component: Some("default-scheduler".into()),
                ..Default::default()
            }),
            involved_object: ObjectReference::default(),
            ..Default::default()
        }
    }

    #[test]
    fn newest_first_bounded_and_escaped() {
        let mut evs = vec![
            event("Scheduled", "assigned", Some(100)),
            event("FailedScheduling", "0/3 nodes <b>available</b>", Some(200)),
            event("Pulling", "no time", None),
        ];
        for i in 0..30 {
            evs.push(event("Killing", "old", Some(i)));
        }
        let l = lines(evs);
        assert_eq!(l.len(), MAX_EVENTS);
        assert_eq!(l[0].reason, "FailedScheduling");
        assert_eq!(l[0].kind, "Warning");
        assert_eq!(l[0].source, "default-scheduler");
        assert_eq!(l[1].reason, "Scheduled");
        let page = panel(&Ok(l)).into_string();
        assert!(
            page.contains("0/3 nodes &lt;b&gt;available&lt;/b&gt;"),
            "{page}"
        );
        let err = panel(&Err("<i>no</i>".into())).into_string();
        assert!(err.contains("&lt;i&gt;no&lt;/i&gt;"), "{err}");
    }
}
