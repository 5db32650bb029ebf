//! Workspace status, derived: a pure function of the desired state, the latest build, what the
//! cluster shows (pod, PVC, scheduler events) and what the agent reports. Always with a human
//! reason when not `running`.

use k8s_openapi::api::core::v1::Pod;
use lumie_contract::agent_api::{AppHealth, ConnectionStatus, LifecycleState};
use lumie_contract::{labels, workspace};

use crate::model::{
    AgentView, BuildRecord, BuildStatus, DesiredState, Transition, WorkspaceStatus,
};

/// Container waiting reasons that mean the workspace cannot start without help.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// What matters about the workspace pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObservation {
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// Bound to a node.
    pub node: Option<String>,
    /// The pod IP.
    pub pod_ip: Option<String>,
    /// The `PodScheduled=False` message (the scheduler's FailedScheduling text).
    pub unschedulable: Option<String>,
    /// The first container problem, `container dev: ImagePullBackOff: …`.
    pub container_problem: Option<String>,
    /// Pod-level failure message.
    pub failure: Option<String>,
}

/// The webhook's created-by stamp on a pod ([`labels::CREATED_BY`]), when it has one.
pub fn created_by(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(labels::CREATED_BY)
        .map(String::as_str)
}

/// Whether a pod with the workspace labels is one the control plane created: the webhook
/// stamps [`labels::CREATED_BY`] with the creator's username and lets nobody else set it, so
/// a pod without the control plane's name there was made by someone else, labels or not.
pub fn created_by_control_plane(created_by: Option<&str>, control_plane: &str) -> bool {
    created_by == Some(control_plane)
}

/// Reads a pod into a [`PodObservation`].
pub fn observe_pod(pod: &Pod) -> PodObservation {
    let status = pod.status.clone().unwrap_or_default();
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "not scheduled yet".into())
        });
    let container_problem = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|cs| {
            let st = cs.state.as_ref()?;
            if let Some(w) = &st.waiting {
                let reason = w.reason.clone().unwrap_or_default();
                if FATAL_WAITING.contains(&reason.as_str()) {
                    let msg = w.message.clone().unwrap_or_default();
                    return Some(if msg.is_empty() {
                        format!("container {}: {reason}", cs.name)
                    } else {
                        format!("container {}: {reason}: {msg}", cs.name)
                    });
                }
            }
            None
        });
    let failure = match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => Some(format!(
            "pod {}: {}",
            status.phase.clone().unwrap_or_default().to_lowercase(),
            status
                .message
                .clone()
                .or_else(|| status.reason.clone())
                .unwrap_or_else(|| "containers exited".into())
        )),
        _ => None,
    };
    PodObservation {
        terminating: pod.metadata.deletion_timestamp.is_some(),
        phase: status.phase.unwrap_or_else(|| "Pending".into()),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        pod_ip: status.pod_ip,
        unschedulable,
        container_problem,
        failure,
    }
}

/// What the cluster shows for one workspace (its pod only when the control plane created it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The pod, when it exists.
    pub pod: Option<PodObservation>,
    /// The home PVC exists.
    pub pvc_exists: bool,
    /// An agent Secret exists (older versions created one; it is deleted with the workspace).
    pub secret_exists: bool,
    /// Latest FailedScheduling event message for the pod (used when the condition lacks one).
    pub scheduling_event: Option<String>,
}

fn pending_apps(agent: &AgentView) -> String {
    let waiting: Vec<_> = agent
        .apps
        .iter()
        .filter(|(_, h)| !matches!(h, AppHealth::Healthy | AppHealth::Disabled))
        .map(|(slug, h)| format!("{slug} ({h})"))
        .collect();
    if waiting.is_empty() {
        "agent starting".into()
    } else {
        format!("agent starting: waiting for {}", waiting.join(", "))
    }
}

/// The one sentence a failed start shows: the agent's own reason as it is (`startup script
/// exited 127: code-server: not found`, `apps not healthy in time: tilt`), which names what
/// went wrong and where the full output is, rather than a command developers cannot run.
pub fn start_failure(lifecycle: LifecycleState, reason: &str) -> String {
    let reason = reason.trim();
    match (lifecycle, reason.is_empty()) {
        (_, false) => reason.to_string(),
        (LifecycleState::StartTimeout, true) => {
            "the workspace did not become ready within its start timeout; its startup log may say why"
                .into()
        }
        (_, true) => "the workspace could not start; its startup log may say why".into(),
    }
}

/// How long after a start build created the pod its absence from the pod watch is lag, not a
/// deletion (the watch reports a new pod within milliseconds; seconds under load).
pub const POD_REPORT_GRACE_MS: i64 = 5_000;

/// Whether the latest build is a start that created the pod so recently (at `now_ms`) that the
/// pod watch may not have reported it yet: the pod is on its way, not missing.
pub fn pod_just_created(build: Option<&BuildRecord>, now_ms: i64) -> bool {
    build.is_some_and(|b| {
        b.transition == Transition::Start
            && b.status == BuildStatus::Succeeded
            && b.completed_at
                .is_some_and(|t| now_ms.saturating_sub(t) < POD_REPORT_GRACE_MS)
    })
}

/// What besides the pod a running workspace lacks (its home volume), when a recreated pod
/// alone could not start: the reconciler does not recreate it then, and the status says so.
/// One rule for both. (No agent Secret is needed: the agent uses its pod's projected token.)
pub fn missing_home_parts(cluster: &ClusterView) -> Option<&'static str> {
    (!cluster.pvc_exists).then_some("its home volume")
}

/// The status and reason of a workspace at `now_ms`.
pub fn derive(
    desired: DesiredState,
    build: Option<&BuildRecord>,
    cluster: &ClusterView,
    agent: Option<&AgentView>,
    connection_timeout_secs: u64,
    pod_name: &str,
    now_ms: i64,
) -> (WorkspaceStatus, String) {
    use WorkspaceStatus as S;
    if let Some(b) = build {
        match (b.status, b.transition) {
            (BuildStatus::Pending, _) => {
                return (
                    S::Pending,
                    format!("build #{} ({}) queued", b.number, b.transition),
                );
            }
            (BuildStatus::Running, Transition::Start) => {
                return (S::Starting, "creating the home volume and pod".into());
            }
            (BuildStatus::Running, Transition::Stop) => {
                return (S::Stopping, "deleting the pod".into());
            }
            (BuildStatus::Running, Transition::Delete) => {
                return (S::Deleting, "deleting the pod and home volume".into());
            }
            (BuildStatus::Failed, t) => {
                return (
                    S::Failed,
                    format!(
                        "build #{} ({t}) failed: {}",
                        b.number,
                        b.error.as_deref().unwrap_or("unknown error")
                    ),
                );
            }
            _ => {}
        }
    }
    match desired {
        DesiredState::Deleted => {
            if cluster.pod.is_some() || cluster.pvc_exists || cluster.secret_exists {
                (
                    S::Deleting,
                    "waiting for the pod and home volume (and any agent Secret an older version left) to be removed".into(),
                )
            } else {
                (S::Deleted, String::new())
            }
        }
        DesiredState::Stopped => match &cluster.pod {
            Some(_) => (
                S::Stopping,
                format!("waiting for pod {pod_name} to terminate"),
            ),
            None => (S::Stopped, "stopped; the home volume is kept".into()),
        },
        DesiredState::Running => {
            let Some(pod) = &cluster.pod else {
                if pod_just_created(build, now_ms) {
                    return (
                        S::Starting,
                        format!("pod {pod_name} created; waiting for the cluster to report it"),
                    );
                }
                if let Some(missing) = missing_home_parts(cluster) {
                    return (
                        S::Failed,
                        format!(
                            "pod {pod_name} is missing and so is {missing}; start the workspace again to apply them"
                        ),
                    );
                }
                return (
                    S::Starting,
                    format!("pod {pod_name} is missing; recreating it"),
                );
            };
            if pod.terminating {
                return (
                    S::Starting,
                    format!("pod {pod_name} is terminating; it will be recreated"),
                );
            }
            if let Some(f) = &pod.failure {
                return (S::Failed, f.clone());
            }
            if pod.node.is_none() {
                let why = pod
                    .unschedulable
                    .clone()
                    .or_else(|| cluster.scheduling_event.clone())
                    .unwrap_or_else(|| "waiting for the scheduler".into());
                return (S::Pending, why);
            }
            if let Some(p) = &pod.container_problem {
                return (S::Failed, p.clone());
            }
            if pod.phase != "Running" {
                return (
                    S::Starting,
                    format!(
                        "pod {} on {}: containers starting",
                        pod.phase,
                        pod.node.as_deref().unwrap_or("?")
                    ),
                );
            }
            let Some(agent) = agent else {
                return (S::Starting, "waiting for the agent to connect".into());
            };
            match (agent.connection, agent.lifecycle) {
                (ConnectionStatus::Timeout, _) => (
                    S::Failed,
                    format!(
                        "the agent did not connect within {connection_timeout_secs}s; check the {} container's log (kubectl -n {} logs {pod_name} -c {})",
                        workspace::CONTAINER_DEV,
                        workspace::NAMESPACE,
                        workspace::CONTAINER_DEV
                    ),
                ),
                (ConnectionStatus::Connecting, _) => {
                    (S::Starting, "waiting for the agent to connect".into())
                }
                (ConnectionStatus::Disconnected, _) => (
                    S::Starting,
                    "the agent stopped reporting (disconnected); waiting for it to reconnect"
                        .into(),
                ),
                (ConnectionStatus::Connected, LifecycleState::Ready) => (S::Running, String::new()),
                (
                    ConnectionStatus::Connected,
                    l @ (LifecycleState::StartError | LifecycleState::StartTimeout),
                ) => (S::Failed, start_failure(l, &agent.lifecycle_reason)),
                (
                    ConnectionStatus::Connected,
                    l @ (LifecycleState::ShuttingDown
                    | LifecycleState::ShutdownTimeout
                    | LifecycleState::ShutdownError
                    | LifecycleState::Off),
                ) => (S::Starting, format!("agent is {}", l.as_str())),
                (ConnectionStatus::Connected, _) => (S::Starting, pending_apps(agent)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// "Now" for the table: a fixed instant, so build ages are exact.
    const NOW: i64 = 1_700_000_000_000;

    fn build(status: BuildStatus, transition: Transition) -> BuildRecord {
        BuildRecord {
            id: "b".into(),
            workspace_id: "w".into(),
            number: 3,
            transition,
            status,
            error: Some("pods \"x\" is forbidden: denied by lumie-webhook".into()),
            initiator_id: None,
            created_at: 0,
            started_at: None,
            completed_at: None,
        }
    }

    fn running_pod() -> PodObservation {
        PodObservation {
            phase: "Running".into(),
            node: Some("worker-1".into()),
            pod_ip: Some("127.0.1.2".into()),
            ..Default::default()
        }
    }

    fn agent(connection: ConnectionStatus, lifecycle: LifecycleState) -> AgentView {
        AgentView {
            id: "a".into(),
            lifecycle,
            lifecycle_reason: String::new(),
            connection,
            last_contact_at: None,
            first_connected_at: None,
            apps: BTreeMap::from([
                ("tilt".into(), AppHealth::Healthy),
                ("code-server".into(), AppHealth::Initializing),
            ]),
            stats: None,
            version: String::new(),
        }
    }

    #[test]
    fn start_failure_table() {
        use LifecycleState as L;
        for (l, reason, want) in [
            (
                L::StartError,
                "startup script exited 127: code-server: not found",
                "startup script exited 127: code-server: not found",
            ),
            (
                L::StartTimeout,
                "apps not healthy in time: tilt",
                "apps not healthy in time: tilt",
            ),
            (
                L::StartTimeout,
                " ",
                "did not become ready within its start timeout",
            ),
            (L::StartError, "", "could not start"),
        ] {
            let got = start_failure(l, reason);
            assert!(got.contains(want), "{l}: {got}");
            assert!(!got.contains("kubectl"), "{l}: {got}");
        }
    }

    #[test]
    fn status_table() {
        use DesiredState as D;
        use WorkspaceStatus as S;
        let ok_start = build(BuildStatus::Succeeded, Transition::Start);
        let completed = |ago_ms: i64| BuildRecord {
            completed_at: Some(NOW - ago_ms),
            ..ok_start.clone()
        };
        let (fresh_start, old_start) = (completed(500), completed(60_000));
        let unsched = ClusterView {
            pod: Some(PodObservation {
                phase: "Pending".into(),
                unschedulable: Some("0/4 nodes are available: 1 node(s) had taint {node-role.kubernetes.io/control-plane: }, that the pod didn't tolerate, 3 node(s) were unschedulable.".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let running = ClusterView {
            pod: Some(running_pod()),
            pvc_exists: true,
            secret_exists: true,
            ..Default::default()
        };
        let pull = ClusterView {
            pod: Some(PodObservation {
                phase: "Pending".into(),
                container_problem: Some(
                    "container dev: ImagePullBackOff: Back-off pulling image \"x\"".into(),
                ),
                ..running_pod()
            }),
            ..Default::default()
        };
        let ready = agent(ConnectionStatus::Connected, LifecycleState::Ready);
        let starting = agent(ConnectionStatus::Connected, LifecycleState::Starting);
        let timeout = agent(ConnectionStatus::Timeout, LifecycleState::Created);
        let mut err = agent(ConnectionStatus::Connected, LifecycleState::StartError);
        err.lifecycle_reason = "code-server exited".into();
        let pending = build(BuildStatus::Pending, Transition::Start);
        let running_build = build(BuildStatus::Running, Transition::Start);
        let failed = build(BuildStatus::Failed, Transition::Start);
        let stop_ok = build(BuildStatus::Succeeded, Transition::Stop);
        let none = ClusterView::default();
        let pvc_only = ClusterView {
            pvc_exists: true,
            ..Default::default()
        };
        let pvc_and_secret = ClusterView {
            pvc_exists: true,
            secret_exists: true,
            ..Default::default()
        };
        let secret_only = ClusterView {
            secret_exists: true,
            ..Default::default()
        };
        type Case<'a> = (
            &'a str,
            D,
            Option<&'a BuildRecord>,
            &'a ClusterView,
            Option<&'a AgentView>,
            S,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "queued",
                D::Running,
                Some(&pending),
                &none,
                None,
                S::Pending,
                "build #3 (start) queued",
            ),
            (
                "building",
                D::Running,
                Some(&running_build),
                &none,
                None,
                S::Starting,
                "creating",
            ),
            (
                "build failed",
                D::Running,
                Some(&failed),
                &running,
                Some(&ready),
                S::Failed,
                "build #3 (start) failed: pods \"x\" is forbidden",
            ),
            (
                "unschedulable verbatim",
                D::Running,
                Some(&ok_start),
                &unsched,
                None,
                S::Pending,
                "0/4 nodes are available: 1 node(s) had taint",
            ),
            (
                "image pull",
                D::Running,
                Some(&ok_start),
                &pull,
                None,
                S::Failed,
                "ImagePullBackOff",
            ),
            (
                "no agent yet",
                D::Running,
                Some(&ok_start),
                &running,
                None,
                S::Starting,
                "waiting for the agent",
            ),
            (
                "agent starting",
                D::Running,
                Some(&ok_start),
                &running,
                Some(&starting),
                S::Starting,
                "waiting for code-server (initializing)",
            ),
            (
                "agent ready",
                D::Running,
                Some(&ok_start),
                &running,
                Some(&ready),
                S::Running,
                "",
            ),
            (
                "agent timeout",
                D::Running,
                Some(&ok_start),
                &running,
                Some(&timeout),
                S::Failed,
                "did not connect within 120s",
            ),
            (
                "agent start error",
                D::Running,
                Some(&ok_start),
                &running,
                Some(&err),
                S::Failed,
                "code-server exited",
            ),
            (
                "pod gone",
                D::Running,
                Some(&ok_start),
                &pvc_and_secret,
                None,
                S::Starting,
                "missing; recreating",
            ),
            (
                "pod gone a minute after the start",
                D::Running,
                Some(&old_start),
                &pvc_and_secret,
                None,
                S::Starting,
                "missing; recreating",
            ),
            (
                "pod gone with its home volume",
                D::Running,
                Some(&old_start),
                &secret_only,
                None,
                S::Failed,
                "is missing and so is its home volume; start the workspace again",
            ),
            (
                "pod gone, no agent Secret (none is needed): recreated",
                D::Running,
                Some(&old_start),
                &pvc_only,
                None,
                S::Starting,
                "missing; recreating",
            ),
            (
                "pod gone with its home volume, no Secret",
                D::Running,
                Some(&old_start),
                &none,
                None,
                S::Failed,
                "is missing and so is its home volume; start the workspace again",
            ),
            (
                "deleted, only an old version's agent Secret left",
                D::Deleted,
                None,
                &secret_only,
                None,
                S::Deleting,
                "agent Secret an older version left",
            ),
            (
                "pod created, not reported by the watch yet",
                D::Running,
                Some(&fresh_start),
                &pvc_only,
                None,
                S::Starting,
                "pod coder-alice-dev created; waiting for the cluster to report it",
            ),
            (
                "stopping",
                D::Stopped,
                Some(&stop_ok),
                &running,
                Some(&ready),
                S::Stopping,
                "to terminate",
            ),
            (
                "stopped",
                D::Stopped,
                Some(&stop_ok),
                &pvc_only,
                None,
                S::Stopped,
                "home volume is kept",
            ),
            (
                "deleting",
                D::Deleted,
                None,
                &pvc_only,
                None,
                S::Deleting,
                "to be removed",
            ),
            ("deleted", D::Deleted, None, &none, None, S::Deleted, ""),
        ];
        for (name, desired, b, cluster, a, want, reason) in cases {
            let (got, why) = derive(desired, b, cluster, a, 120, "coder-alice-dev", NOW);
            assert_eq!(got, want, "{name}: {why}");
            assert!(why.contains(reason), "{name}: {why:?} lacks {reason:?}");
            assert_eq!(
                why.is_empty(),
                got == S::Running || got == S::Deleted,
                "{name}: reason when not running"
            );
        }
    }

    #[test]
    fn observe_reads_conditions_and_container_states() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [], "nodeName": "worker-2"},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{
                    "name": "dev", "ready": false, "restartCount": 4, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
                }]
            }
        }))
        .unwrap();
        let o = observe_pod(&pod);
        assert!(o.terminating);
        assert_eq!(o.node.as_deref(), Some("worker-2"));
        assert_eq!(o.unschedulable, None);
        assert_eq!(
            o.container_problem.as_deref(),
            Some("container dev: CrashLoopBackOff: back-off 40s restarting failed container")
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available"}]}
        }))
        .unwrap();
        assert_eq!(
            observe_pod(&pod).unschedulable.as_deref(),
            Some("0/4 nodes are available")
        );
    }
}
