//! The build executor: carries out pending builds (and, after a restart, builds left `running`)
//! one at a time per workspace. A build ends `succeeded` or `failed` with the apiserver's (or
//! webhook's) message; transient errors are retried with backoff within a time limit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumie_contract::naming::WorkspaceNames;
use tokio::sync::Notify;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::events::Dirty;
use crate::metrics::{BuildLabels, Metrics};
use crate::model::{BuildRecord, BuildStatus, Transition};
use crate::spawner::{Spawner, describe_kube_error, is_transient};

/// How long a build may retry transient errors before failing.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(180);

fn one_line(e: &Error) -> String {
    match e {
        Error::Kube(k) => describe_kube_error(k),
        other => other.to_string(),
    }
}

/// Carries out builds: what it needs, nothing more. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    /// The repository (builds and workspaces).
    pub db: Db,
    /// Kube actions.
    pub spawner: Spawner,
    /// Marks workspaces for the reconciler when a build starts and ends.
    pub dirty: Arc<Dirty>,
    /// Build counters.
    pub metrics: Arc<Metrics>,
    /// Woken by the API when a build is queued.
    pub wake: Arc<Notify>,
}

impl Executor {
    async fn perform(&self, build: &BuildRecord) -> Result<()> {
        let ws = self
            .db
            .workspace(&build.workspace_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("workspace {} is gone", build.workspace_id)))?;
        let names = WorkspaceNames::new(&ws.owner_name, &ws.name)
            .map_err(|e| Error::Internal(format!("workspace {} has invalid names: {e}", ws.id)))?;
        match build.transition {
            Transition::Start => {
                let out = self.spawner.ensure_started(&ws, &names).await?;
                tracing::info!(workspace = %ws.id, owner = %ws.owner_name, name = %ws.name, pod_created = out.pod_created, "start applied");
            }
            Transition::Stop => self.spawner.delete_pod(&ws.pod_name).await?,
            Transition::Delete => self.spawner.delete_all(&names).await?,
        }
        Ok(())
    }

    /// Carries out one build to its end.
    pub async fn execute(&self, build: BuildRecord) {
        let ws_id = build.workspace_id.clone();
        if let Err(e) = self.db.start_build(&build.id).await {
            tracing::warn!(build = %build.id, error = %e, "cannot mark build running; will retry");
            return;
        }
        self.dirty.mark(&ws_id);
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        let outcome = loop {
            match self.perform(&build).await {
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
        match self.db.finish_build(&build.id, status, error).await {
            Ok(()) => {
                self.metrics
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
        self.dirty.mark(&ws_id);
    }

    /// Runs pending builds as they come (woken by the API, and every few seconds), one task per
    /// workspace at a time. At start this picks up builds a previous process left behind.
    pub async fn run(self) {
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            match self.db.active_builds().await {
                Ok(builds) => {
                    for b in builds {
                        if !in_flight
                            .lock()
                            .expect("in-flight lock")
                            .insert(b.workspace_id.clone())
                        {
                            continue;
                        }
                        let (me, in_flight) = (self.clone(), in_flight.clone());
                        tokio::spawn(async move {
                            let ws = b.workspace_id.clone();
                            me.execute(b).await;
                            in_flight.lock().expect("in-flight lock").remove(&ws);
                            me.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list pending builds"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
