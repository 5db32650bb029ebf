//! The signals background tasks and handlers exchange: workspace status changes for watchers,
//! and the "re-derive this workspace" marks that wake the reconciler. Owned by nobody; the
//! composition root (`state`) hands the same instances to every task. With PostgreSQL, each
//! is also carried to the other replicas ([`crate::bus`]); callers see no difference.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{Notify, broadcast};

use crate::bus::{MAX_REASON, Remote, Signal};
use crate::model::WorkspaceStatus;

/// A workspace status change, as streamed by `GET /api/v2/workspaces/{id}/watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceEvent {
    /// Which workspace.
    pub workspace_id: String,
    /// New status.
    pub status: WorkspaceStatus,
    /// Why.
    pub reason: String,
}

/// Status changes, for watchers. Cheap to clone (one channel).
#[derive(Clone)]
pub struct Events(broadcast::Sender<WorkspaceEvent>, Remote);

impl Default for Events {
    fn default() -> Self {
        Events::with_remote(Remote::default())
    }
}

impl Events {
    /// Status changes also sent to the other replicas through `remote`.
    pub fn with_remote(remote: Remote) -> Self {
        Events(broadcast::channel(1024).0, remote)
    }

    /// Publishes a status change here and to the other replicas; no watcher is fine.
    pub fn publish(&self, event: WorkspaceEvent) {
        let mut reason = event.reason.clone();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        self.1.send(Signal::Status {
            w: event.workspace_id.clone(),
            s: event.status,
            r: reason,
        });
        self.publish_local(event);
    }

    /// Publishes a status change here only (one another replica sent).
    pub fn publish_local(&self, event: WorkspaceEvent) {
        let _ = self.0.send(event);
    }

    /// A new watcher, seeing changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkspaceEvent> {
        self.0.subscribe()
    }
}

/// Workspaces whose status needs recomputing, and a wake-up for whoever recomputes it.
/// Marking is cheap and coalescing: many marks of one workspace give one recomputation.
#[derive(Default)]
pub struct Dirty {
    set: Mutex<HashSet<String>>,
    notify: Notify,
    remote: Remote,
}

impl Dirty {
    /// Marks also sent to the other replicas through `remote`.
    pub fn with_remote(remote: Remote) -> Self {
        Dirty {
            remote,
            ..Dirty::default()
        }
    }

    /// Marks a workspace, here and on the other replicas.
    pub fn mark(&self, workspace_id: &str) {
        self.remote.send(Signal::Dirty {
            w: workspace_id.to_string(),
        });
        self.mark_local(workspace_id);
    }

    /// Marks a workspace here only (a mark another replica sent).
    pub fn mark_local(&self, workspace_id: &str) {
        self.set
            .lock()
            .expect("dirty set lock")
            .insert(workspace_id.to_string());
        self.notify.notify_one();
    }

    /// Takes every marked workspace.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.set.lock().expect("dirty set lock"))
    }

    /// Waits until something is marked.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_coalesce_and_take_empties() {
        let d = Dirty::default();
        d.mark("a");
        d.mark("a");
        d.mark("b");
        let mut got: Vec<_> = d.take().into_iter().collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert!(d.take().is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_sees_what_is_published_after_it_subscribed() {
        let e = Events::default();
        e.publish(WorkspaceEvent {
            workspace_id: "before".into(),
            status: WorkspaceStatus::Pending,
            reason: String::new(),
        });
        let mut rx = e.subscribe();
        e.publish(WorkspaceEvent {
            workspace_id: "after".into(),
            status: WorkspaceStatus::Running,
            reason: String::new(),
        });
        assert_eq!(rx.recv().await.unwrap().workspace_id, "after");
    }
}
