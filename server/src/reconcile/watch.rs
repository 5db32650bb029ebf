//! The reconciler's eyes: reflectors over the workspace namespace's pods, PVCs and Secrets (by
//! the managed-by label) and its FailedScheduling events. Every change marks the workspace it
//! belongs to as dirty; [`Stores::views`] turns the stores into one [`ClusterView`] per workspace.
//!
//! Only pods the control plane created count as a workspace's pod (the webhook's
//! [`labels::CREATED_BY`] stamp names it): any other pod with workspace labels is left out of
//! the views, listed by [`Stores::impostors`], and never found by [`Stores`]'s
//! [`PodDirectory`] lookup that authenticates agents.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use lumie_contract::labels;

use crate::agent_api::{PodDirectory, TrustedPod};
use crate::events::Dirty;
use crate::model::now_ms;
use crate::status::{ClusterView, created_by, created_by_control_plane, observe_pod};

/// The reflector stores.
#[derive(Clone)]
pub struct Stores {
    namespace: String,
    control_plane: String,
    pods: Store<Pod>,
    pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    scheduling: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

fn ws_label(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(labels::WORKSPACE_ID).cloned()
}

/// A pod with workspace labels that the control plane did not create.
#[derive(Clone, Debug)]
pub struct Impostor {
    /// Pod name.
    pub name: String,
    /// The workspace it poses as (its `workspace-id` label).
    pub workspace_id: String,
    /// Its created-by stamp, if any.
    pub created_by: Option<String>,
}

/// A labelled object, for the orphan check.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// `Pod`, `PersistentVolumeClaim` or `Secret`.
    pub kind: &'static str,
    /// Object name.
    pub name: String,
    /// Its `workspace-id` label.
    pub workspace_id: String,
    /// Its creation time, ms.
    pub created_ms: i64,
}

impl Stores {
    /// Whether every store has had its initial list.
    pub fn ready(&self) -> bool {
        // A store is ready after its first complete list.
        futures::FutureExt::now_or_never(async {
            self.pods.wait_until_ready().await.is_ok()
                && self.pvcs.wait_until_ready().await.is_ok()
                && self.secrets.wait_until_ready().await.is_ok()
        })
        .unwrap_or(false)
    }

    /// Waits for every store's first complete list.
    pub async fn wait_ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.pvcs.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// Whether the control plane created this pod.
    fn trusted(&self, pod: &Pod) -> bool {
        created_by_control_plane(created_by(pod), &self.control_plane)
    }

    /// The pods with workspace labels that the control plane did not create (not terminating).
    pub fn impostors(&self) -> Vec<Impostor> {
        self.pods
            .state()
            .iter()
            .filter(|p| !self.trusted(p) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                Some(Impostor {
                    name: p.name_any(),
                    workspace_id: ws_label(&p.metadata)?,
                    created_by: created_by(p).map(String::from),
                })
            })
            .collect()
    }

    /// The cluster view of every workspace that has objects (pods only when the control plane
    /// created them).
    pub fn views(&self) -> HashMap<String, ClusterView> {
        let mut out: HashMap<String, ClusterView> = HashMap::new();
        let sched = self.scheduling.lock().expect("scheduling lock").clone();
        for p in self.pods.state() {
            if !self.trusted(&p) {
                continue;
            }
            if let Some(id) = ws_label(&p.metadata) {
                let v = out.entry(id).or_default();
                v.scheduling_event = sched.get(&p.name_any()).cloned();
                v.pod = Some(observe_pod(&p));
            }
        }
        for p in self.pvcs.state() {
            if let Some(id) = ws_label(&p.metadata) {
                out.entry(id).or_default().pvc_exists = true;
            }
        }
        for s in self.secrets.state() {
            if let Some(id) = ws_label(&s.metadata) {
                out.entry(id).or_default().secret_exists = true;
            }
        }
        out
    }

    /// Every object carrying the workspace labels, for the orphan check (impostor pods are
    /// [`Stores::impostors`]).
    pub fn labelled(&self) -> Vec<Labelled> {
        let created = |m: &kube::api::ObjectMeta| {
            m.creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or_else(now_ms)
        };
        let mut v = vec![];
        for p in self.pods.state() {
            if !self.trusted(&p) {
                continue;
            }
            if let Some(id) = ws_label(&p.metadata) {
                v.push(Labelled {
                    kind: "Pod",
                    name: p.name_any(),
                    workspace_id: id,
                    created_ms: created(&p.metadata),
                });
            }
        }
        for p in self.pvcs.state() {
            if let Some(id) = ws_label(&p.metadata) {
                v.push(Labelled {
                    kind: "PersistentVolumeClaim",
                    name: p.name_any(),
                    workspace_id: id,
                    created_ms: created(&p.metadata),
                });
            }
        }
        for s in self.secrets.state() {
            if let Some(id) = ws_label(&s.metadata) {
                v.push(Labelled {
                    kind: "Secret",
                    name: s.name_any(),
                    workspace_id: id,
                    created_ms: created(&s.metadata),
                });
            }
        }
        v
    }
}

impl PodDirectory for Stores {
    fn trusted_pod(&self, name: &str) -> Option<TrustedPod> {
        let pod = self
            .pods
            .get(&ObjectRef::new(name).within(&self.namespace))?;
        // A terminating pod still counts: its agent reports `shutting_down` and `off` then.
        if !self.trusted(&pod) {
            return None;
        }
        Some(TrustedPod {
            uid: pod.uid()?,
            workspace_id: ws_label(&pod.metadata)?,
        })
    }

    fn ready(&self) -> bool {
        futures::FutureExt::now_or_never(self.pods.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

/// Drives one reflector; every touched object marks its workspace.
fn spawn_watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: reflector::store::Writer<K>,
    dirty: &Arc<Dirty>,
    what: &'static str,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let dirty = dirty.clone();
    let stream = watcher(api, cfg)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(obj)) => {
                    if let Some(id) = ws_label(obj.meta()) {
                        dirty.mark(&id);
                    }
                }
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "{what} watch error"),
            }
        }
    });
}

/// Starts the watchers (tasks that run until the process ends) and returns their stores.
/// Each change marks the workspace it belongs to. `control_plane` is the username the webhook
/// stamps on the pods this server creates.
pub fn start_watchers(
    client: &Client,
    ns: &str,
    control_plane: &str,
    dirty: &Arc<Dirty>,
) -> Stores {
    let cfg = watcher::Config::default().labels(&labels::managed_selector());

    let (pods, writer) = reflector::store::<Pod>();
    spawn_watch(
        Api::namespaced(client.clone(), ns),
        cfg.clone(),
        writer,
        dirty,
        "pod",
    );
    let (pvcs, writer) = reflector::store::<PartialObjectMeta<PersistentVolumeClaim>>();
    spawn_watch(
        Api::namespaced(client.clone(), ns),
        cfg.clone(),
        writer,
        dirty,
        "PVC",
    );
    let (secrets, writer) = reflector::store::<PartialObjectMeta<Secret>>();
    spawn_watch(
        Api::namespaced(client.clone(), ns),
        cfg,
        writer,
        dirty,
        "Secret",
    );

    // FailedScheduling events carry no workspace labels: keyed by pod name.
    let scheduling: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let sched = scheduling.clone();
    let pods_for_events = pods.clone();
    let dirty = dirty.clone();
    let stream = watcher(
        api,
        watcher::Config::default().fields("involvedObject.kind=Pod,reason=FailedScheduling"),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    let pod = ev.involved_object.name.clone().unwrap_or_default();
                    if let Some(msg) = ev.message.clone() {
                        sched
                            .lock()
                            .expect("scheduling lock")
                            .insert(pod.clone(), msg);
                    }
                    if let Some(p) = pods_for_events.state().iter().find(|p| p.name_any() == pod)
                        && let Some(id) = ws_label(&p.metadata)
                    {
                        dirty.mark(&id);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "event watch error"),
                None => return,
            }
        }
    });

    Stores {
        namespace: ns.to_string(),
        control_plane: control_plane.to_string(),
        pods,
        pvcs,
        secrets,
        scheduling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: &str = "system:serviceaccount:coder:coder";

    fn pod(name: &str, uid: &str, ws: &str, created_by: Option<&str>, ip: &str) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(c) = created_by {
            annotations.insert(labels::CREATED_BY.into(), c.into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "lumie-dev", "uid": uid,
                "labels": {labels::MANAGED_BY: labels::MANAGED_BY_LUMIE, labels::WORKSPACE_ID: ws},
                "annotations": annotations},
            "spec": {"containers": []},
            "status": {"phase": "Running", "podIP": ip}
        }))
        .unwrap()
    }

    /// Stores over fixed pods (no PVCs, Secrets or events).
    fn stores(pods: Vec<Pod>) -> Stores {
        let (store, mut writer) = reflector::store::<Pod>();
        for p in pods {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let (pvcs, _) = reflector::store();
        let (secrets, _) = reflector::store();
        Stores {
            namespace: "lumie-dev".into(),
            control_plane: CP.into(),
            pods: store,
            pvcs,
            secrets,
            scheduling: Arc::default(),
        }
    }

    #[test]
    fn only_pods_the_control_plane_created_are_a_workspaces() {
        let s = stores(vec![
            pod("coder-a-dev", "u1", "ws-1", Some(CP), "127.1.0.2"),
            // Posing as ws-1 and ws-2: no stamp, and the developer's stamp.
            pod("posing-1", "u2", "ws-1", None, "127.1.0.3"),
            pod(
                "posing-2",
                "u3",
                "ws-2",
                Some("system:serviceaccount:lumie-dev:dev-workspace"),
                "127.1.0.4",
            ),
        ]);
        let views = s.views();
        assert_eq!(views.len(), 1, "{views:?}");
        let v = &views["ws-1"];
        assert_eq!(
            v.pod.as_ref().unwrap().pod_ip.as_deref(),
            Some("127.1.0.2"),
            "the workspace's view (and so the proxy) has the real pod"
        );
        let mut impostors: Vec<_> = s
            .impostors()
            .into_iter()
            .map(|i| (i.name, i.workspace_id, i.created_by))
            .collect();
        impostors.sort();
        assert_eq!(
            impostors,
            [
                ("posing-1".to_string(), "ws-1".to_string(), None),
                (
                    "posing-2".to_string(),
                    "ws-2".to_string(),
                    Some("system:serviceaccount:lumie-dev:dev-workspace".to_string())
                ),
            ]
        );
        let labelled: Vec<_> = s.labelled().into_iter().map(|l| l.name).collect();
        assert_eq!(labelled, ["coder-a-dev"], "impostors are not orphans");
        assert_eq!(
            s.trusted_pod("coder-a-dev"),
            Some(TrustedPod {
                uid: "u1".into(),
                workspace_id: "ws-1".into()
            })
        );
        assert_eq!(s.trusted_pod("posing-1"), None);
        assert_eq!(s.trusted_pod("posing-2"), None);
        assert_eq!(s.trusted_pod("missing"), None);
    }
}
