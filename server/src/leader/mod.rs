//! Leadership: which replica runs what must run once (the reconciler's acting part and the
//! build executor), elected over a `coordination.k8s.io/v1` Lease in the server's own
//! namespace.
//!
//! A small loop on kube's API rather than a crate: `kube-leader-election` is built on kube 4,
//! and `kube-lease-manager` (kube 5) keeps reporting the last state while the apiserver cannot
//! be reached, where this server must stop acting before its lease could expire for the
//! others. Every write is a `replace` carrying the `resourceVersion` read, so two replicas
//! racing for a free lease cannot both win; the decision itself is pure ([`decide`]).
//!
//! A holder keeps acting for [`decide::acting_window`] (lease duration less one renew interval)
//! after sending its last renewal that succeeded, then steps down on its own clock, whether or
//! not the apiserver answers. Tasks gated by [`Leadership::while_leading`] are aborted the
//! moment that happens.
//!
//! With SQLite (one replica: the chart refuses more) there is no Lease: the process leads from
//! the start, so a single-replica install needs no extra RBAC and no apiserver round trip
//! before its first build.

pub mod decide;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{LeaderLabels, Metrics};
use crate::model::now_ms;
use decide::{Decision, Observed, acting_window, decide};

/// What the election does with Leases in its namespace (checked at start-up).
pub const REQUIRED_ACCESS: &[&str] = &["get", "create", "update"];

/// Checks (SelfSubjectAccessReviews) that this server may read, create and update Leases in the
/// election's namespace, so a missing grant stops the start with one line instead of a replica
/// that never leads.
pub async fn check_access(
    client: &kube::Client,
    config: &LeaderConfig,
) -> crate::error::StartupResult<()> {
    use crate::error::StartupError;
    let wanted: Vec<_> = REQUIRED_ACCESS
        .iter()
        .map(|&verb| (verb, "leases", None))
        .collect();
    let denied: Vec<&str> =
        crate::preflight::denied_access(client, &config.namespace, "coordination.k8s.io", &wanted)
            .await?
            .into_iter()
            .map(|(verb, _)| verb)
            .collect();
    if denied.is_empty() {
        return Ok(());
    }
    Err(StartupError::Kube(format!(
        "the control plane may not {} leases (coordination.k8s.io) in namespace {}, which the leader election over PostgreSQL needs — grant them (chart: rbac.create, Role lumie-coder-leader) or fix LUMIE_LEASE_NAMESPACE",
        denied.join(", "),
        config.namespace
    )))
}

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "lumie-server-leader";

/// Election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the server's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// How long a renewal holds the lease.
    pub duration: Duration,
    /// How often the holder renews (and others retry).
    pub renew: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            namespace: lumie_contract::workspace::CONTROL_PLANE_NAMESPACE.into(),
            name: DEFAULT_LEASE_NAME.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

/// This replica's identity: the pod name (`POD_NAME`, else `HOSTNAME`) and a random suffix, so
/// a restarted pod of the same name is not mistaken for its predecessor.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "lumie-server".into());
    format!(
        "{}-{}",
        base.trim(),
        crate::db::random_secret(6).to_lowercase()
    )
}

/// Whether this replica leads now, and waits on changes. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    identity: Arc<str>,
    rx: watch::Receiver<bool>,
    /// Keeps the channel open when nothing else does ([`Leadership::always`]).
    _keep: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Leads from the start and never steps down (SQLite: the only replica).
    pub fn always(identity: impl Into<String>) -> Self {
        let (tx, rx) = watch::channel(true);
        Leadership {
            identity: identity.into().into(),
            rx,
            _keep: Some(Arc::new(tx)),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once this replica leads.
    pub async fn until_leader(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Returns once this replica does not lead (at once when it does not now). The election
    /// ending counts as losing.
    pub async fn until_lost(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|l| !*l).await;
    }

    /// A receiver of changes from now on (a loop keeps one, so a change while it is busy is
    /// not missed).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        let mut rx = self.rx.clone();
        rx.borrow_and_update();
        rx
    }

    /// Runs `make()`'s future while this replica leads: started on every term, dropped (with
    /// every task it owns) the moment leadership is lost, or when this future is. Runs until
    /// the process ends.
    pub async fn while_leading<F, Fut>(self, what: &'static str, make: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            self.until_leader().await;
            tracing::info!(identity = %self.identity, "leading: starting the {what}");
            tokio::select! {
                _ = self.until_lost() => {
                    tracing::warn!(identity = %self.identity, "not leading any more: stopped the {what}");
                }
                () = make() => {
                    tracing::error!(identity = %self.identity, "the {what} ended on its own; starting it again");
                }
            }
        }
    }
}

/// The Lease loop of one replica.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    identity: String,
    tx: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// Set by [`Elector::release`]: a replica on its way out never takes the lease again.
    resigned: std::sync::atomic::AtomicBool,
}

/// The Lease as read, reduced for [`decide`].
pub fn observe(lease: &Lease) -> Observed {
    let spec = lease.spec.as_ref();
    Observed {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renewed_ms: spec
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.as_millisecond()),
        duration_ms: spec
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| i64::from(s) * 1000),
    }
}

fn micro(ms: i64) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(MicroTime)
}

impl Elector {
    /// Starts the loop; the returned [`Leadership`] follows it.
    pub fn start(
        client: kube::Client,
        config: LeaderConfig,
        identity: String,
        metrics: Arc<Metrics>,
    ) -> (Leadership, Arc<Elector>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let elector = Arc::new(Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            identity: identity.clone(),
            tx,
            metrics,
            resigned: Default::default(),
        });
        elector.set_gauge(false);
        let task = tokio::spawn(elector.clone().run());
        (
            Leadership {
                identity: identity.into(),
                rx,
                _keep: None,
            },
            elector,
            task,
        )
    }

    fn set_gauge(&self, leading: bool) {
        self.metrics
            .leader
            .get_or_create(&LeaderLabels {
                identity: self.identity.clone(),
            })
            .set(i64::from(leading));
    }

    fn set(&self, leading: bool) {
        let was = self.tx.send_replace(leading);
        self.set_gauge(leading);
        if was != leading {
            if leading {
                tracing::info!(identity = %self.identity, lease = %self.config.name, "leading");
            } else {
                tracing::warn!(identity = %self.identity, lease = %self.config.name, "stepped down");
            }
        }
    }

    async fn run(self: Arc<Self>) {
        let window = acting_window(self.config.duration, self.config.renew);
        let mut leading_until: Option<Instant> = None;
        loop {
            if self.is_resigned() {
                return;
            }
            let sent = Instant::now();
            let attempt = tokio::time::timeout(self.config.renew, self.attempt(now_ms()));
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    _ = tokio::time::sleep_until(leading_until.unwrap_or(sent)), if leading_until.is_some() => {
                        tracing::warn!(identity = %self.identity, "could not renew the lease in time");
                        leading_until = None;
                        self.set(false);
                    }
                }
            };
            match result {
                // A renewal that landed after `release` began: the release that follows it
                // hands the lease back, and this replica must not act on it.
                Ok(Ok(true)) if self.is_resigned() => return,
                Ok(Ok(true)) => {
                    leading_until = Some(sent + window);
                    self.set(true);
                }
                Ok(Ok(false)) => {
                    leading_until = None;
                    self.set(false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(identity = %self.identity, error = %e, "lease request failed")
                }
                Err(_) => {
                    tracing::warn!(identity = %self.identity, "lease request timed out")
                }
            }
            let next = sent + self.config.renew;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = tokio::time::sleep_until(leading_until.unwrap_or(next)), if leading_until.is_some_and(|u| u < next) => {
                        tracing::warn!(identity = %self.identity, "could not renew the lease in time");
                        leading_until = None;
                        self.set(false);
                    }
                }
            }
        }
    }

    /// One read-decide-write round: whether this replica holds the lease after it.
    async fn attempt(&self, now: i64) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let observed = current.as_ref().map(observe);
        let duration_s = self.config.duration.as_secs().min(i32::MAX as u64) as i32;
        let write = match decide(observed.as_ref(), &self.identity, now, self.config.duration) {
            Decision::StandBy { .. } => return Ok(false),
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        acquire_time: micro(now),
                        renew_time: micro(now),
                        lease_duration_seconds: Some(duration_s),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Decision::Renew => {
                let mut lease = current.expect("renew implies a lease");
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = micro(now);
                spec.lease_duration_seconds = Some(duration_s);
                (lease, None)
            }
            Decision::Acquire { from } => {
                let mut lease = current.expect("acquire implies a lease");
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = micro(now);
                spec.renew_time = micro(now);
                spec.lease_duration_seconds = Some(duration_s);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                (lease, Some(from))
            }
        };
        let (lease, acquired_from) = write;
        // The resourceVersion read travels with the object: a write in between is a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if let Some(from) = acquired_from {
                    if from.is_some() {
                        self.metrics.leader_handovers.inc();
                    }
                    tracing::info!(identity = %self.identity, previous = ?from, "acquired the lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn is_resigned(&self) -> bool {
        self.resigned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops acting for good, then hands the lease back (holder cleared) so another replica
    /// takes over at its next retry instead of after the lease expires. For a graceful
    /// shutdown: called when draining starts, so the hand-over does not wait for the drain.
    /// Idempotent. A renewal still in flight may bump the lease's resourceVersion under the
    /// release, so a conflict is retried.
    pub async fn release(&self) {
        self.resigned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.set(false);
        for _ in 0..3 {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
                return;
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            spec.renew_time = micro(now_ms());
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(identity = %self.identity, "released the lease");
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    tracing::warn!(identity = %self.identity, error = %e, "cannot release the lease");
                    return;
                }
            }
        }
        tracing::warn!(identity = %self.identity, "cannot release the lease: it kept changing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the drops of what a term's future owns.
    struct Owned(Arc<AtomicUsize>);
    impl Drop for Owned {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !f() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn gated_work_starts_on_every_term_and_is_dropped_the_moment_leadership_is_lost() {
        let (tx, rx) = watch::channel(false);
        let leadership = Leadership {
            identity: "me".into(),
            rx,
            _keep: None,
        };
        assert!(!leadership.is_leader());
        let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, d) = (started.clone(), dropped.clone());
        let gate = tokio::spawn(leadership.clone().while_leading("test work", move || {
            let owned = Owned(d.clone());
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                let _owned = owned;
                std::future::pending::<()>().await;
            }
        }));
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "not before leading");
        tx.send_replace(true);
        until("started on the first term", || {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        tx.send_replace(false);
        until("dropped when lost", || dropped.load(Ordering::SeqCst) == 1).await;
        tx.send_replace(true);
        until("started again on the next term", || {
            started.load(Ordering::SeqCst) == 2
        })
        .await;
        // Aborting the gate (the server stopping) drops the term's work with it.
        gate.abort();
        until("dropped with the gate", || {
            dropped.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    #[tokio::test]
    async fn always_leads() {
        let l = Leadership::always("single");
        assert!(l.is_leader());
        assert_eq!(l.identity(), "single");
        tokio::time::timeout(Duration::from_secs(1), l.until_leader())
            .await
            .expect("at once");
    }
}
