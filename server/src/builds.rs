//! The build executor: carries out pending builds (and, after a restart or a change of leader,
//! builds left `running`) one at a time per workspace. A build ends `succeeded` or `failed` with
//! the apiserver's (or webhook's) message; transient errors are retried with backoff within a
//! time limit.
//!
//! Only the leader runs it ([`crate::leader`]), and each build is carried out only under a claim
//! in the database ([`claimable`] is the rule): the claim is renewed while the build runs, the
//! build stops when the claim cannot be renewed in time (before it could expire for another
//! replica), and its outcome is recorded only by the claim's holder. So even two leaders for a
//! moment cannot run one build twice, and a build whose holder died is resumed by the next
//! leader once its claim expires. Pending builds are polled every [`POLL`] besides the wake, so
//! a build queued through another replica starts without a cross-replica signal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lumie_contract::naming::WorkspaceNames;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::events::Dirty;
use crate::metrics::{BuildLabels, Metrics};
use crate::model::{BuildRecord, BuildStatus, Transition, now_ms};
use crate::spawner::{Spawner, describe_kube_error, is_transient};

/// How long a build may retry transient errors before failing.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(180);
/// How often the executor looks for builds besides being woken.
pub const POLL: Duration = Duration::from_secs(1);
/// How many builds one poll claims at most.
const CLAIM_BATCH: i64 = 32;

/// Whether `me` may claim a build at `now`: it is active, and its claim is free or expired. A
/// live claim of `me`'s own is not claimable again (that build is in flight here, and counting
/// it would let in-flight builds fill every batch); a new executor run first releases its own
/// claims ([`crate::db::Db::release_build_claims`]), so a restarted single replica resumes at
/// once. [`crate::db::Db::claim_builds`] carries out the same rule in SQL.
pub fn claimable(
    status: BuildStatus,
    claimed_by: Option<&str>,
    claim_expires_at: Option<i64>,
    now_ms: i64,
) -> bool {
    status.is_active()
        && match (claimed_by, claim_expires_at) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(_), Some(expires)) => expires <= now_ms,
        }
}

/// How long a claim holder may keep working after sending a renewal that succeeded: the
/// claim's lifetime less one renew interval (a third of it), so a holder cut off from the
/// database stops before the claim expires for others.
pub fn claim_window(ttl: Duration) -> Duration {
    ttl - ttl / 3
}

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
    /// This replica's identity: the holder name on the claims it takes.
    pub identity: String,
    /// How long a claim lasts unless renewed (renewed every third of it).
    pub claim_ttl: Duration,
}

/// Why a claimed build stopped before its end.
#[derive(Debug)]
enum Lost {
    /// Another replica holds the claim now.
    Taken,
    /// The claim could not be renewed before it would expire.
    Unrenewed,
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

    /// Performs a build, retrying transient errors: its outcome.
    async fn perform_with_retries(&self, build: &BuildRecord) -> std::result::Result<(), String> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match self.perform(build).await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && started.elapsed() < BUILD_DEADLINE => {
                    tracing::warn!(build = %build.id, error = %e, "transient build error; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(one_line(&e)),
            }
        }
    }

    /// Keeps this replica's claim on `build` alive; returns when it is lost.
    async fn keep_claim(&self, build_id: &str, mut renewed_at: Instant) -> Lost {
        let window = claim_window(self.claim_ttl);
        let every = self.claim_ttl / 3;
        loop {
            let deadline = renewed_at + window;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Lost::Unrenewed,
                _ = tokio::time::sleep(every) => {}
            }
            let sent = Instant::now();
            let expires = now_ms() + self.claim_ttl.as_millis() as i64;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Lost::Unrenewed,
                r = self.db.renew_build_claim(build_id, &self.identity, expires) => match r {
                    Ok(true) => renewed_at = sent,
                    Ok(false) => return Lost::Taken,
                    Err(e) => tracing::warn!(build = %build_id, error = %e, "cannot renew the build's claim; retrying"),
                },
            }
        }
    }

    /// Carries out one build this replica has claimed (at `claimed_at`) to its end, unless the
    /// claim is lost first.
    pub async fn execute(&self, build: BuildRecord, claimed_at: Instant) {
        let ws_id = build.workspace_id.clone();
        match self.db.start_claimed_build(&build.id, &self.identity).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(build = %build.id, "build claimed elsewhere or ended; leaving it");
                return;
            }
            Err(e) => {
                tracing::warn!(build = %build.id, error = %e, "cannot mark build running; will retry");
                return;
            }
        }
        self.dirty.mark(&ws_id);
        let outcome = tokio::select! {
            outcome = self.perform_with_retries(&build) => outcome,
            lost = self.keep_claim(&build.id, claimed_at) => {
                tracing::warn!(build = %build.id, workspace = %ws_id, why = ?lost, "lost the build's claim: stopped carrying it out");
                return;
            }
        };
        let (status, error) = match &outcome {
            Ok(()) => (BuildStatus::Succeeded, None),
            Err(msg) => (BuildStatus::Failed, Some(msg.as_str())),
        };
        if let Some(msg) = error {
            tracing::warn!(build = %build.id, workspace = %ws_id, transition = %build.transition, error = %msg, "build failed");
        }
        match self
            .db
            .finish_claimed_build(&build.id, &self.identity, status, error)
            .await
        {
            Ok(true) => {
                self.metrics
                    .builds
                    .get_or_create(&BuildLabels {
                        transition: build.transition.as_str().into(),
                        status: status.as_str().into(),
                    })
                    .inc();
            }
            Ok(false) => {
                tracing::warn!(build = %build.id, "the build's claim passed to another replica; its outcome is theirs to record")
            }
            Err(e) => {
                tracing::warn!(build = %build.id, error = %e, "cannot record build outcome; it will be carried out again")
            }
        }
        self.dirty.mark(&ws_id);
    }

    /// Claims and runs builds as they come (woken by the API, and every [`POLL`]), one task per
    /// workspace at a time. At start this picks up builds a previous process or leader left
    /// behind, once their claims expire (at once for this identity's own). Every build task
    /// belongs to this future: aborting it (leadership lost) stops them all.
    pub async fn run(self) {
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        // Nothing runs here yet: claims under this identity are a previous run's (an earlier
        // term of this process, or a restarted single replica), to take up again now.
        if let Err(e) = self.db.release_build_claims(&self.identity).await {
            tracing::warn!(error = %e, "cannot release this replica's earlier build claims");
        }
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Ok(ws) = done {
                    in_flight.remove(&ws);
                }
            }
            let claimed_at = Instant::now();
            let now = now_ms();
            let expires = now + self.claim_ttl.as_millis() as i64;
            match self
                .db
                .claim_builds(&self.identity, now, expires, CLAIM_BATCH)
                .await
            {
                Ok(builds) => {
                    for b in builds {
                        if !in_flight.insert(b.workspace_id.clone()) {
                            continue;
                        }
                        let me = self.clone();
                        tasks.spawn(async move {
                            let ws = b.workspace_id.clone();
                            me.execute(b, claimed_at).await;
                            ws
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim pending builds"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                Some(done) = tasks.join_next() => {
                    if let Ok(ws) = done {
                        in_flight.remove(&ws);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_rule_table() {
        use BuildStatus::*;
        let now = 1_000;
        /// (what, status, holder, claim expiry, claimable).
        type Case<'a> = (&'a str, BuildStatus, Option<&'a str>, Option<i64>, bool);
        let cases: &[Case] = &[
            ("pending, unclaimed", Pending, None, None, true),
            (
                "running, unclaimed (left by an older version)",
                Running,
                None,
                None,
                true,
            ),
            (
                "pending, held live (in flight on its holder, this replica too)",
                Pending,
                Some("me"),
                Some(5_000),
                false,
            ),
            (
                "running, ours, expired",
                Running,
                Some("me"),
                Some(10),
                true,
            ),
            (
                "running, another's, live",
                Running,
                Some("b"),
                Some(1_001),
                false,
            ),
            (
                "running, another's, expires now",
                Running,
                Some("b"),
                Some(1_000),
                true,
            ),
            (
                "running, another's, expired",
                Running,
                Some("b"),
                Some(999),
                true,
            ),
            (
                "pending, another's without expiry",
                Pending,
                Some("b"),
                None,
                true,
            ),
            ("succeeded, unclaimed", Succeeded, None, None, false),
            ("failed, ours", Failed, Some("me"), Some(5_000), false),
            ("canceled, expired", Canceled, Some("b"), Some(0), false),
        ];
        for (what, status, holder, expires, want) in cases {
            assert_eq!(claimable(*status, *holder, *expires, now), *want, "{what}");
        }
    }

    #[test]
    fn a_holder_stops_before_its_claim_expires() {
        for secs in [3, 15, 30] {
            let ttl = Duration::from_secs(secs);
            assert!(claim_window(ttl) < ttl);
            assert!(claim_window(ttl) >= ttl / 3 * 2);
        }
    }
}
