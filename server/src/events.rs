//! The signals background tasks and handlers exchange: workspace status changes for watchers,
//! and the "re-derive this workspace" marks that wake the reconciler. Owned by nobody; the
//! composition root (`state`) hands the same instances to every task.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{Notify, broadcast};

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
pub struct Events(broadcast::Sender<WorkspaceEvent>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(1024).0)
    }
}

impl Events {
    /// Publishes a status change; no watcher is fine.
    pub fn publish(&self, event: WorkspaceEvent) {
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
}

impl Dirty {
    /// Marks a workspace.
    pub fn mark(&self, workspace_id: &str) {
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
