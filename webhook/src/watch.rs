//! Keeps the policies in force in step with the `WorkspacePolicy` objects in the cluster: a
//! kube-runtime reflector over the (cluster-scoped) resource, rebuilding the [`PolicySet`] on
//! every change, so an admin's `kubectl apply` is in force as soon as the watch event arrives.
//!
//! An object that fails validation is ignored (and logged, and said so in its status) without
//! weakening the guard: see [`PolicySet::from_objects`].

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use lumie_contract::policy::{WorkspacePolicy, WorkspacePolicyStatus};
use serde_json::json;

use crate::policy::{IgnoredPolicy, PolicySet};
use crate::server::AppState;

/// Field manager used for status writes.
const MANAGER: &str = "lumie-webhook";

/// Watches WorkspacePolicy objects forever, updating `state`. Watch errors are retried with
/// backoff; the policies in force stay as they were meanwhile.
pub async fn run(client: kube::Client, state: AppState) {
    let api: Api<WorkspacePolicy> = Api::all(client);
    let (reader, writer) = reflector::store::<WorkspacePolicy>();
    let stream = reflect(
        writer,
        watcher::watcher(api.clone(), watcher::Config::default()),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut last_ignored: Vec<IgnoredPolicy> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                if let Some(set) = rebuild(&reader, &state) {
                    if set.ignored() != last_ignored.as_slice() {
                        for i in set.ignored() {
                            tracing::warn!(
                                policy = %i.name,
                                problems = %i.problems.join("; "),
                                kept_previous = i.kept_previous,
                                "WorkspacePolicy ignored: it fails validation"
                            );
                        }
                        last_ignored = set.ignored().to_vec();
                    }
                    tracing::info!(
                        generation = set.generation(),
                        builtin = set.is_builtin(),
                        policies = %set.policies().map(|p| &*p.name).collect::<Vec<_>>().join(","),
                        "policies in force"
                    );
                }
                state.mark_synced();
                write_statuses(&api, &reader, &state.policies()).await;
            }
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(error = %e, "WorkspacePolicy watch error, retrying"),
        }
    }
}

/// Puts the objects in the store in force; `None` when nothing changed (e.g. a status write).
fn rebuild(reader: &Store<WorkspacePolicy>, state: &AppState) -> Option<Arc<PolicySet>> {
    let objects = reader.state();
    let previous = state.policies();
    let set = PolicySet::from_objects(
        objects
            .iter()
            .filter_map(|o| o.metadata.name.as_deref().map(|name| (name, &o.spec))),
        Some(&previous),
    );
    if state.is_ready() && set.same_policies(&previous) {
        return None;
    }
    state.set_policies(set);
    Some(state.policies())
}

/// Says in each object's status whether it is in force. Only writes when the status differs,
/// so the write's own watch event does not loop.
async fn write_statuses(
    api: &Api<WorkspacePolicy>,
    reader: &Store<WorkspacePolicy>,
    set: &PolicySet,
) {
    for obj in reader.state() {
        let Some(name) = obj.metadata.name.as_deref() else {
            continue;
        };
        let message = match set.ignored().iter().find(|i| i.name == name) {
            Some(i) if i.kept_previous => format!(
                "ignored, the previous valid version stays in force: {}",
                i.problems.join("; ")
            ),
            Some(i) => format!("ignored: {}", i.problems.join("; ")),
            None => "in force".to_string(),
        };
        let status = WorkspacePolicyStatus {
            observed_generation: obj.metadata.generation,
            message: Some(message),
        };
        if obj.status.as_ref() == Some(&status) {
            continue;
        }
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(e) = api
            .patch_status(name, &PatchParams::apply(MANAGER), &patch)
            .await
        {
            tracing::debug!(policy = name, error = %e, "could not write WorkspacePolicy status");
        }
    }
}
