//! The reconciler's decisions, as pure functions: from what is known about one workspace (desired
//! state, latest build, what the cluster shows, what is in flight, the clock) to a [`Plan`], and
//! from what is known about a labelled object without a live workspace to an orphan plan, and
//! from a labelled pod's created-by stamp to whether it is an impostor. The executor in
//! [`super`] only carries plans out, so every case is a row in a table below.

use std::time::Duration;

use crate::model::{BuildRecord, BuildStatus, DesiredState, Transition};
use crate::status::{ClusterView, created_by_control_plane, missing_home_parts, pod_just_created};

/// Longest wait between pod recreation attempts.
pub const MAX_RECREATE_BACKOFF: Duration = Duration::from_secs(60);

/// What the reconciler should do about one workspace now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Desired and actual agree: forget any recreation backoff.
    Settled,
    /// Nothing the reconciler can do; the reason says what would help.
    Nothing,
    /// Something is in flight (a build, an earlier action, the watch, a backoff): look again later.
    Wait,
    /// Create the workspace's pod again (it was deleted behind the control plane's back).
    RecreatePod,
    /// Delete the pod (the workspace should not run).
    DeletePod,
    /// Delete the pod, home volume and Secret (the workspace was deleted).
    DeleteAll,
    /// Every object is gone: mark the workspace deleted.
    MarkDeleted,
    /// Delete an object that belongs to no live workspace.
    DeleteOrphan,
    /// Delete a pod that carries a workspace's labels but was not created by the control plane.
    DeleteImpostor,
}

/// An action and why, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub action: Action,
    /// Why, in one sentence.
    pub reason: String,
}

impl Plan {
    fn new(action: Action, reason: impl Into<String>) -> Self {
        Plan {
            action,
            reason: reason.into(),
        }
    }
}

/// What the reconciler knows about one workspace when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// What the owner asked for.
    pub desired: DesiredState,
    /// The latest build.
    pub build: Option<&'a BuildRecord>,
    /// What the cluster shows.
    pub cluster: &'a ClusterView,
    /// Every watch has had its first complete list (before that, absence proves nothing).
    pub stores_ready: bool,
    /// An earlier action for this workspace is still being carried out.
    pub acting: bool,
    /// No recreation before this time (ms), after earlier attempts.
    pub recreate_not_before: Option<i64>,
    /// Now, ms.
    pub now_ms: i64,
}

/// The plan for one workspace.
pub fn plan(f: &Facts<'_>) -> Plan {
    use Action::*;
    if !f.stores_ready {
        return Plan::new(
            Wait,
            "waiting for the first complete list of pods, PVCs and Secrets",
        );
    }
    if let Some(b) = f.build.filter(|b| b.status.is_active()) {
        return Plan::new(
            Wait,
            format!("build #{} ({}) is {}", b.number, b.transition, b.status),
        );
    }
    if f.acting {
        return Plan::new(Wait, "an earlier action is still being carried out");
    }
    let pod = f.cluster.pod.as_ref();
    match f.desired {
        DesiredState::Running => match pod {
            Some(p) if p.terminating => Plan::new(
                Wait,
                "the pod is terminating; it is recreated once it is gone",
            ),
            Some(p) if p.phase == "Running" => Plan::new(Settled, "the pod is running"),
            Some(p) => Plan::new(
                Nothing,
                format!("the pod is {}; the cluster is starting it", p.phase),
            ),
            None => {
                let started = f.build.is_some_and(|b| {
                    b.transition == Transition::Start && b.status == BuildStatus::Succeeded
                });
                if !started {
                    return Plan::new(
                        Nothing,
                        "no successful start build; the workspace must be started again",
                    );
                }
                if pod_just_created(f.build, f.now_ms) {
                    return Plan::new(
                        Wait,
                        "the pod was created moments ago; waiting for the watch to report it",
                    );
                }
                if let Some(missing) = missing_home_parts(f.cluster) {
                    return Plan::new(
                        Nothing,
                        format!(
                            "the pod is missing and so is {missing}; a pod alone cannot start, the workspace must be started again"
                        ),
                    );
                }
                if let Some(t) = f.recreate_not_before.filter(|t| f.now_ms < *t) {
                    return Plan::new(
                        Wait,
                        format!(
                            "the pod is missing; the next recreation attempt is in {} ms",
                            t - f.now_ms
                        ),
                    );
                }
                Plan::new(
                    RecreatePod,
                    "the pod was deleted behind the control plane's back",
                )
            }
        },
        DesiredState::Stopped => match pod {
            Some(p) if p.terminating => Plan::new(Wait, "the pod is terminating"),
            Some(_) => Plan::new(DeletePod, "a pod exists for a stopped workspace"),
            None => Plan::new(Settled, "stopped; the home volume is kept"),
        },
        DesiredState::Deleted => {
            let live_pod = pod.is_some_and(|p| !p.terminating);
            let anything = pod.is_some() || f.cluster.pvc_exists || f.cluster.secret_exists;
            if !anything {
                return Plan::new(MarkDeleted, "the pod, home volume and Secret are gone");
            }
            if !live_pod && !f.cluster.pvc_exists && !f.cluster.secret_exists {
                return Plan::new(Wait, "the pod is terminating");
            }
            if f.build.is_some_and(|b| b.transition == Transition::Delete) {
                Plan::new(
                    DeleteAll,
                    "objects remain after the delete build; deleting them again",
                )
            } else {
                Plan::new(
                    Nothing,
                    "deleted without a delete build; nothing is removed until one runs",
                )
            }
        }
    }
}

/// Who a labelled object's `workspace-id` label points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A workspace that is not deleted.
    Live,
    /// A workspace already marked deleted.
    Deleted,
    /// No workspace with that id.
    Unknown,
}

/// The plan for an object carrying workspace labels, `age_ms` old.
pub fn plan_orphan(owner: Owner, age_ms: i64, grace: Duration) -> Plan {
    let grace_ms = grace.as_millis() as i64;
    match owner {
        Owner::Live => Plan::new(Action::Nothing, "it belongs to a live workspace"),
        _ if age_ms > grace_ms => Plan::new(
            Action::DeleteOrphan,
            format!(
                "orphaned object (no live workspace), {} s old, past the {} s grace period",
                age_ms / 1000,
                grace_ms / 1000
            ),
        ),
        _ => Plan::new(
            Action::Wait,
            format!(
                "orphaned object (no live workspace), {} s old; deleted once older than {} s",
                age_ms / 1000,
                grace_ms / 1000
            ),
        ),
    }
}

/// The plan for a pod carrying a workspace's labels, by the webhook's created-by stamp: one the
/// control plane did not create is an impostor (someone with the shared `dev-workspace` account
/// posing as another workspace), deleted at once whatever its age or workspace. `None`: the
/// control plane's own pod, judged by [`plan`] and [`plan_orphan`].
pub fn plan_impostor(created_by: Option<&str>, control_plane: &str) -> Option<Plan> {
    if created_by_control_plane(created_by, control_plane) {
        return None;
    }
    Some(Plan::new(
        Action::DeleteImpostor,
        match created_by {
            None => format!(
                "a pod with workspace labels but without the {} stamp: not created by the control plane ({control_plane})",
                lumie_contract::labels::CREATED_BY
            ),
            Some(who) => format!(
                "a pod with workspace labels created by {who:?}, not by the control plane ({control_plane})"
            ),
        },
    ))
}

/// How long to wait after the `attempts`-th recreation before the next: 1 s doubling, capped.
pub fn recreate_delay(attempts: u32) -> Duration {
    Duration::from_secs(1 << attempts.min(6)).min(MAX_RECREATE_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{POD_REPORT_GRACE_MS, PodObservation};

    const NOW: i64 = 10_000_000;

    fn build(t: Transition, s: BuildStatus, completed: Option<i64>) -> BuildRecord {
        BuildRecord {
            id: "b".into(),
            workspace_id: "w".into(),
            number: 3,
            transition: t,
            status: s,
            error: None,
            initiator_id: None,
            created_at: NOW - 60_000,
            started_at: Some(NOW - 59_000),
            completed_at: completed,
        }
    }

    fn pod(phase: &str, terminating: bool) -> PodObservation {
        PodObservation {
            terminating,
            phase: phase.into(),
            node: Some("worker-1".into()),
            pod_ip: Some("127.0.1.2".into()),
            ..Default::default()
        }
    }

    fn view(pod: Option<PodObservation>, pvc: bool, secret: bool) -> ClusterView {
        ClusterView {
            pod,
            pvc_exists: pvc,
            secret_exists: secret,
            scheduling_event: None,
        }
    }

    #[test]
    fn workspace_plan_table() {
        use Action::*;
        use BuildStatus as B;
        use DesiredState as D;
        use Transition as T;
        let long_ago = Some(NOW - 60_000);
        let started = build(T::Start, B::Succeeded, long_ago);
        let just_started = build(T::Start, B::Succeeded, Some(NOW - 1_000));
        let start_at_grace = build(T::Start, B::Succeeded, Some(NOW - POD_REPORT_GRACE_MS));
        let start_failed = build(T::Start, B::Failed, long_ago);
        let start_pending = build(T::Start, B::Pending, None);
        let start_running = build(T::Start, B::Running, None);
        let stop_running = build(T::Stop, B::Running, None);
        let stopped = build(T::Stop, B::Succeeded, long_ago);
        let deleted = build(T::Delete, B::Succeeded, long_ago);
        let delete_failed = build(T::Delete, B::Failed, long_ago);
        let delete_running = build(T::Delete, B::Running, None);
        let running = || Some(pod("Running", false));
        let pending = || Some(pod("Pending", false));
        let terminating = || Some(pod("Running", true));
        let all = |p| view(p, true, true);

        /// (name, desired, build, cluster, stores ready, acting, backoff until, want)
        type Case<'a> = (
            &'a str,
            D,
            Option<&'a BuildRecord>,
            ClusterView,
            bool,
            bool,
            Option<i64>,
            Action,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("stores not listed yet: absence proves nothing", D::Running, Some(&started), view(None, false, false), false, false, None, Wait),
            ("stores not listed yet, stopped with a pod", D::Stopped, Some(&stopped), all(running()), false, false, None, Wait),
            ("start build queued", D::Running, Some(&start_pending), view(None, false, false), true, false, None, Wait),
            ("start build in flight", D::Running, Some(&start_running), all(None), true, false, None, Wait),
            ("stop build in flight, pod still there", D::Stopped, Some(&stop_running), all(running()), true, false, None, Wait),
            ("delete build in flight", D::Deleted, Some(&delete_running), all(running()), true, false, None, Wait),
            ("earlier action still running", D::Stopped, Some(&stopped), all(running()), true, true, None, Wait),
            ("running: pod running", D::Running, Some(&started), all(running()), true, false, None, Settled),
            ("running: pod pending on the scheduler", D::Running, Some(&started), all(pending()), true, false, None, Nothing),
            ("running: pod terminating", D::Running, Some(&started), all(terminating()), true, false, None, Wait),
            ("running: pod deleted behind our back", D::Running, Some(&started), all(None), true, false, None, RecreatePod),
            ("running: pod just created, watch lags", D::Running, Some(&just_started), all(None), true, false, None, Wait),
            ("running: pod missing exactly at the grace", D::Running, Some(&start_at_grace), all(None), true, false, None, RecreatePod),
            ("running: pod missing, backoff not over", D::Running, Some(&started), all(None), true, false, Some(NOW + 4_000), Wait),
            ("running: pod missing, backoff over", D::Running, Some(&started), all(None), true, false, Some(NOW - 1), RecreatePod),
            ("running: pod missing, backoff ends now", D::Running, Some(&started), all(None), true, false, Some(NOW), RecreatePod),
            ("running: pod and PVC lost", D::Running, Some(&started), view(None, false, true), true, false, None, Nothing),
            ("running: pod missing, no Secret (none is needed): recreated", D::Running, Some(&started), view(None, true, false), true, false, None, RecreatePod),
            ("running: pod, PVC and Secret all missing", D::Running, Some(&started), view(None, false, false), true, false, None, Nothing),
            ("running: PVC lost under a running pod", D::Running, Some(&started), view(running(), false, true), true, false, None, Settled),
            ("running: last start failed, no pod", D::Running, Some(&start_failed), all(None), true, false, None, Nothing),
            ("running: no build at all", D::Running, None, view(None, false, false), true, false, None, Nothing),
            ("stopped: pod still live", D::Stopped, Some(&stopped), all(running()), true, false, None, DeletePod),
            ("stopped: pending pod left over", D::Stopped, Some(&stopped), all(pending()), true, false, None, DeletePod),
            ("stopped: pod terminating", D::Stopped, Some(&stopped), all(terminating()), true, false, None, Wait),
            ("stopped: no pod", D::Stopped, Some(&stopped), all(None), true, false, None, Settled),
            ("stopped: no pod, PVC lost", D::Stopped, Some(&stopped), view(None, false, true), true, false, None, Settled),
            ("deleted: everything gone", D::Deleted, Some(&deleted), view(None, false, false), true, false, None, MarkDeleted),
            ("deleted: only a terminating pod left", D::Deleted, Some(&deleted), view(terminating(), false, false), true, false, None, Wait),
            ("deleted: PVC left after the build", D::Deleted, Some(&deleted), view(None, true, false), true, false, None, DeleteAll),
            ("deleted: Secret left after the build", D::Deleted, Some(&deleted), view(None, false, true), true, false, None, DeleteAll),
            ("deleted: pod recreated by someone", D::Deleted, Some(&deleted), view(running(), false, false), true, false, None, DeleteAll),
            ("deleted: terminating pod and PVC", D::Deleted, Some(&deleted), view(terminating(), true, false), true, false, None, DeleteAll),
            ("deleted: delete build failed, objects remain", D::Deleted, Some(&delete_failed), all(running()), true, false, None, DeleteAll),
            ("deleted: no delete build, objects remain", D::Deleted, Some(&stopped), all(None), true, false, None, Nothing),
            ("deleted: nothing left even while acting", D::Deleted, Some(&deleted), view(None, false, false), true, true, None, Wait),
        ];
        assert!(cases.len() >= 25);
        for (name, desired, build, cluster, stores_ready, acting, recreate_not_before, want) in
            &cases
        {
            let p = plan(&Facts {
                desired: *desired,
                build: *build,
                cluster,
                stores_ready: *stores_ready,
                acting: *acting,
                recreate_not_before: *recreate_not_before,
                now_ms: NOW,
            });
            assert_eq!(p.action, *want, "{name}: {}", p.reason);
            assert!(!p.reason.is_empty(), "{name}: a plan always says why");
        }
    }

    #[test]
    fn reasons_name_what_is_missing_and_what_is_in_flight() {
        let started = build(
            Transition::Start,
            BuildStatus::Succeeded,
            Some(NOW - 60_000),
        );
        let cluster = view(None, false, true);
        let p = plan(&Facts {
            desired: DesiredState::Running,
            build: Some(&started),
            cluster: &cluster,
            stores_ready: true,
            acting: false,
            recreate_not_before: None,
            now_ms: NOW,
        });
        assert!(p.reason.contains("home volume"), "{}", p.reason);
        let queued = build(Transition::Stop, BuildStatus::Pending, None);
        let p = plan(&Facts {
            desired: DesiredState::Stopped,
            build: Some(&queued),
            cluster: &cluster,
            stores_ready: true,
            acting: false,
            recreate_not_before: None,
            now_ms: NOW,
        });
        assert_eq!(p.reason, "build #3 (stop) is pending");
    }

    #[test]
    fn orphan_plan_table() {
        let grace = Duration::from_secs(300);
        #[rustfmt::skip]
        let cases = [
            ("live workspace, old object", Owner::Live, 10_000_000, Action::Nothing),
            ("live workspace, new object", Owner::Live, 0, Action::Nothing),
            ("unknown workspace, young", Owner::Unknown, 1_000, Action::Wait),
            ("unknown workspace, exactly the grace", Owner::Unknown, 300_000, Action::Wait),
            ("unknown workspace, past the grace", Owner::Unknown, 300_001, Action::DeleteOrphan),
            ("deleted workspace, young", Owner::Deleted, 299_999, Action::Wait),
            ("deleted workspace, past the grace", Owner::Deleted, 301_000, Action::DeleteOrphan),
            ("clock skew: created in the future", Owner::Unknown, -5_000, Action::Wait),
        ];
        for (name, owner, age, want) in cases {
            let p = plan_orphan(owner, age, grace);
            assert_eq!(p.action, want, "{name}: {}", p.reason);
        }
    }

    #[test]
    fn impostor_plan_table() {
        let cp = "system:serviceaccount:coder:coder";
        #[rustfmt::skip]
        let cases = [
            ("the control plane's pod", Some(cp), None),
            ("no created-by stamp (admitted without the webhook)", None, Some("without the coder.lumie-infra.com/created-by stamp")),
            ("created by the developer identity", Some("system:serviceaccount:lumie-dev:dev-workspace"), Some("created by \"system:serviceaccount:lumie-dev:dev-workspace\"")),
            ("an empty stamp", Some(""), Some("not by the control plane")),
            ("a look-alike username", Some("system:serviceaccount:coder:coder2"), Some("coder2")),
        ];
        for (name, created_by, want) in cases {
            let p = plan_impostor(created_by, cp);
            match (p, want) {
                (None, None) => {}
                (Some(p), Some(w)) => {
                    assert_eq!(p.action, Action::DeleteImpostor, "{name}");
                    assert!(p.reason.contains(w), "{name}: {}", p.reason);
                }
                (p, w) => panic!("{name}: got {p:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn recreate_backoff_doubles_to_its_cap() {
        let secs: Vec<u64> = (0..9).map(|a| recreate_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(recreate_delay(u32::MAX), MAX_RECREATE_BACKOFF);
    }
}
