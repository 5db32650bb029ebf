//! The build executor: carries out pending builds (and, after a restart, builds left `running`)
//! one at a time per workspace. A build ends `succeeded` or `failed` with the apiserver's (or
//! webhook's) message; transient errors are retried with backoff within a time limit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumie_contract::naming::WorkspaceNames;

use crate::error::{Error, Result};
use crate::metrics::BuildLabels;
use crate::model::{BuildRecord, BuildStatus, Transition};
use crate::spawner::{Spawner, describe_kube_error, is_transient};
use crate::state::AppState;

/// How long a build may retry transient errors before failing.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(180);

fn one_line(e: &Error) -> String {
    match e {
        Error::Kube(k) => describe_kube_error(k),
        other => other.to_string(),
    }
}

async fn perform(state: &AppState, spawner: &Spawner, build: &BuildRecord) -> Result<()> {
    let ws = state
        .db
        .workspace(&build.workspace_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("workspace {} is gone", build.workspace_id)))?;
    match build.transition {
        Transition::Start => {
            let out = spawner.ensure_started(state, &ws).await?;
            tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, pod_created = out.pod_created, token_rotated = out.token_rotated, "start applied");
        }
        Transition::Stop => spawner.delete_pod(&ws.pod_name).await?,
        Transition::Delete => {
            let names = WorkspaceNames::new(&ws.owner_name, &ws.name)
                .map_err(|e| Error::BadRequest(e.to_string()))?;
            spawner.delete_all(&names).await?;
        }
    }
    Ok(())
}

/// Carries out one build to its end.
pub async fn execute(state: &AppState, spawner: &Spawner, build: BuildRecord) {
    let ws_id = build.workspace_id.clone();
    if let Err(e) = state.db.start_build(&build.id).await {
        tracing::warn!(build = %build.id, error = %e, "cannot mark build running; will retry");
        return;
    }
    state.dirty.mark(&ws_id);
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    let outcome = loop {
        match perform(state, spawner, &build).await {
            Ok(()) => break Ok(()),
            Err(e) if is_transient(&e) && started.elapsed() < BUILD_DEADLINE => {
                tracing::warn!(build = %build.id, error = %e, "transient build error; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => break Err(one_line(&e)),
        }
    };
    let (status, error) = match &outcome {
        Ok(()) => (BuildStatus::Succeeded, None),
        Err(msg) => (BuildStatus::Failed, Some(msg.as_str())),
    };
    if let Some(msg) = error {
        tracing::warn!(build = %build.id, workspace = %ws_id, transition = %build.transition, error = %msg, "build failed");
    }
    match state.db.finish_build(&build.id, status, error).await {
        Ok(()) => {
            state
                .metrics
                .builds
                .get_or_create(&BuildLabels {
                    transition: build.transition.as_str().into(),
                    status: status.as_str().into(),
                })
                .inc();
        }
        Err(e) => {
            tracing::warn!(build = %build.id, error = %e, "cannot record build outcome; it will be carried out again")
        }
    }
    state.dirty.mark(&ws_id);
}

/// Runs pending builds as they come (woken by the API, and every few seconds), one task per
/// workspace at a time. At start this picks up builds a previous process left behind.
pub async fn run_executor(state: AppState, spawner: Spawner) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        match state.db.active_builds().await {
            Ok(builds) => {
                for b in builds {
                    if !in_flight
                        .lock()
                        .expect("in-flight lock")
                        .insert(b.workspace_id.clone())
                    {
                        continue;
                    }
                    let (state, spawner, in_flight) =
                        (state.clone(), spawner.clone(), in_flight.clone());
                    tokio::spawn(async move {
                        let ws = b.workspace_id.clone();
                        execute(&state, &spawner, b).await;
                        in_flight.lock().expect("in-flight lock").remove(&ws);
                        state.build_wake.notify_one();
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list pending builds"),
        }
        tokio::select! {
            _ = state.build_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
