//! The cross-replica signal carrier: the signals of [`crate::events`] (status changes, dirty
//! marks, build wake-ups) and [`crate::startup_logs::LogEvents`] reach every other replica over
//! PostgreSQL `LISTEN/NOTIFY`, behind the same APIs (callers do not know there is a bus).
//!
//! Local delivery stays immediate (the in-process channels); each signal is also queued on a
//! [`Remote`], and a publisher task sends the queue as `NOTIFY` payloads (small JSON, one per
//! batch, well under PostgreSQL's 8000-byte limit). A listener task turns other replicas'
//! payloads back into local deliveries and skips its own (every payload names its replica).
//!
//! `NOTIFY` is fire-and-forget: a signal sent while a replica's listener is disconnected is lost
//! to it. So after the listener reconnects, and whenever a payload could not be sent, every
//! workspace is treated as changed ([`Sinks::resync`]): marked dirty, and an event published
//! for each so SSE watchers re-read the database. On SQLite there is one replica and no bus.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::db::Db;
use crate::events::{Dirty, Events, WorkspaceEvent};
use crate::model::WorkspaceStatus;
use crate::startup_logs::LogEvents;

/// The `LISTEN/NOTIFY` channel every replica of one database shares.
pub const CHANNEL: &str = "lumie_signals";
/// Largest payload sent (PostgreSQL refuses 8000 bytes and more).
pub const MAX_PAYLOAD: usize = 7000;
/// Signals queued for sending at most; beyond it they are dropped and a resync is sent instead.
pub const QUEUE: usize = 8192;
/// Longest status reason carried (the receiver re-reads the row anyway; this keeps payloads small).
pub const MAX_REASON: usize = 200;
/// First and longest wait before reconnecting the listener.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// One cross-replica signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Signal {
    /// A workspace's status changed (→ SSE watchers).
    #[serde(rename = "s")]
    Status {
        /// Workspace id.
        w: String,
        /// New status.
        s: WorkspaceStatus,
        /// Why (cut to [`MAX_REASON`]).
        r: String,
    },
    /// A workspace needs re-deriving (→ the reconciler).
    #[serde(rename = "d")]
    Dirty {
        /// Workspace id.
        w: String,
    },
    /// A build was queued (→ the build executor).
    #[serde(rename = "b")]
    BuildWake,
    /// Startup-script lines were stored (→ log followers).
    #[serde(rename = "l")]
    Logs {
        /// Workspace id.
        w: String,
    },
    /// Signals were lost: treat every workspace as changed.
    #[serde(rename = "r")]
    Resync,
}

/// A payload: who sent it and what.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Payload {
    r: String,
    s: Vec<Signal>,
}

/// Drops repeated signals of one batch, keeping the first of each in order (a burst of marks of
/// one workspace is one mark; a status change keeps its latest value by coming last).
pub fn dedupe(signals: Vec<Signal>) -> Vec<Signal> {
    let mut seen = HashSet::new();
    let mut out: Vec<Signal> = Vec::with_capacity(signals.len());
    // Latest status per workspace wins; other kinds keep their first occurrence.
    let mut last_status = std::collections::HashMap::new();
    for (i, s) in signals.iter().enumerate() {
        if let Signal::Status { w, .. } = s {
            last_status.insert(w.clone(), i);
        }
    }
    for (i, s) in signals.into_iter().enumerate() {
        let keep = match &s {
            Signal::Status { w, .. } => last_status.get(w) == Some(&i),
            _ => seen.insert(s.clone()),
        };
        if keep {
            out.push(s);
        }
    }
    out
}

/// The payloads carrying `signals` from `replica`, each at most `max` bytes (a signal too big
/// for a payload of its own, which ids and cut reasons never are, is dropped).
pub fn encode(replica: &str, signals: &[Signal], max: usize) -> Vec<String> {
    let mut out = vec![];
    let mut current: Vec<Signal> = vec![];
    let mut current_len = 0;
    // `{"r":"…","s":[…]}` around the signals, plus a comma between two.
    let overhead = replica.len() + 14;
    for s in signals {
        let Ok(one) = serde_json::to_string(s) else {
            continue;
        };
        if overhead + one.len() > max {
            continue;
        }
        if !current.is_empty() && overhead + current_len + 1 + one.len() > max {
            out.push(payload(replica, std::mem::take(&mut current)));
            current_len = 0;
        }
        current_len += one.len() + usize::from(!current.is_empty());
        current.push(s.clone());
    }
    if !current.is_empty() {
        out.push(payload(replica, current));
    }
    out
}

fn payload(replica: &str, s: Vec<Signal>) -> String {
    serde_json::to_string(&Payload {
        r: replica.to_string(),
        s,
    })
    .unwrap_or_default()
}

/// What a payload asks of replica `me`: nothing for its own or a malformed one (logged by the
/// caller), else its signals.
pub fn decode(payload: &str, me: &str) -> Result<Vec<Signal>, serde_json::Error> {
    let p: Payload = serde_json::from_str(payload)?;
    Ok(if p.r == me { vec![] } else { p.s })
}

/// Where a replica queues signals for the others. Empty (local delivery only) until a bus is
/// started, which is never on SQLite. Cheap to clone; every clone shares the queue.
#[derive(Clone, Default)]
pub struct Remote(Arc<RemoteInner>);

#[derive(Default)]
struct RemoteInner {
    tx: OnceLock<mpsc::Sender<Signal>>,
    /// A signal was dropped (queue full) or not sent: the next payload carries a resync.
    lost: AtomicBool,
}

impl Remote {
    /// Queues a signal for the other replicas; never waits.
    pub fn send(&self, signal: Signal) {
        if let Some(tx) = self.0.tx.get()
            && tx.try_send(signal).is_err()
        {
            self.0.lost.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a bus carries the signals (PostgreSQL).
    pub fn is_active(&self) -> bool {
        self.0.tx.get().is_some()
    }
}

/// The build executor's wake-up: local at once, and on every other replica through the bus.
#[derive(Default)]
pub struct Wake {
    local: Arc<Notify>,
    remote: Remote,
}

impl Wake {
    /// A wake-up sending through `remote`.
    pub fn new(remote: Remote) -> Self {
        Wake {
            local: Arc::default(),
            remote,
        }
    }

    /// Wakes the executor here and on the other replicas.
    pub fn notify_one(&self) {
        self.local.notify_one();
        self.remote.send(Signal::BuildWake);
    }

    /// What the executor waits on (woken by local and remote wake-ups alike).
    pub fn notifier(&self) -> Arc<Notify> {
        self.local.clone()
    }
}

/// Where received signals are delivered (this replica's channels).
#[derive(Clone)]
pub struct Sinks {
    /// Status changes.
    pub events: Events,
    /// Dirty marks.
    pub dirty: Arc<Dirty>,
    /// The executor's wake-up.
    pub wake: Arc<Notify>,
    /// Log followers.
    pub logs: LogEvents,
}

impl Sinks {
    fn deliver(&self, signal: Signal, db: &Db) {
        match signal {
            Signal::Status { w, s, r } => self.events.publish_local(WorkspaceEvent {
                workspace_id: w,
                status: s,
                reason: r,
            }),
            Signal::Dirty { w } => self.dirty.mark_local(&w),
            Signal::BuildWake => self.wake.notify_one(),
            Signal::Logs { w } => self.logs.publish_local(&w),
            Signal::Resync => {
                let (me, db) = (self.clone(), db.clone());
                tokio::spawn(async move { me.resync(&db, "another replica lost signals").await });
            }
        }
    }

    /// Treats every workspace as changed: marks it dirty, publishes its current status (SSE
    /// watchers re-read the row) and wakes log followers and the executor.
    pub async fn resync(&self, db: &Db, why: &str) {
        match db.list_workspaces(None).await {
            Ok(all) => {
                tracing::info!(
                    workspaces = all.len(),
                    why,
                    "cross-replica resync: every workspace marked dirty, watchers told to re-read"
                );
                for ws in all {
                    self.dirty.mark_local(&ws.id);
                    self.logs.publish_local(&ws.id);
                    self.events.publish_local(WorkspaceEvent {
                        workspace_id: ws.id,
                        status: ws.status,
                        reason: ws.status_reason,
                    });
                }
                self.wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, why, "cross-replica resync: listing workspaces from PostgreSQL failed; watchers may lag until the next change");
            }
        }
    }
}

/// This replica on the bus.
#[derive(Clone)]
pub struct Bus {
    /// Names this replica in its payloads (to skip its own).
    pub replica: String,
    /// Where this replica's signals are queued.
    pub remote: Remote,
    /// Whether the listener is listening now.
    listening: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Bus {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let replica = match host.as_str() {
            "" => id[..12].to_string(),
            host => format!("{host}-{}", &id[..12]),
        };
        Bus {
            replica,
            remote: Remote::default(),
            listening: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Bus {
    /// Waits until the listener listens (signals other replicas send from then on arrive).
    pub async fn listening(&self) {
        let _ = self.listening.subscribe().wait_for(|l| *l).await;
    }

    /// Starts the publisher and the listener on PostgreSQL at `url`; the signals queued on
    /// [`Bus::remote`] are sent from now on. Call once.
    pub fn start(&self, url: String, db: Db, sinks: Sinks) -> Vec<JoinHandle<()>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        if self.remote.0.tx.set(tx).is_err() {
            return vec![];
        }
        vec![
            tokio::spawn(publish(
                rx,
                self.replica.clone(),
                self.remote.clone(),
                db.clone(),
            )),
            tokio::spawn(listen(
                url,
                self.replica.clone(),
                db,
                sinks,
                self.listening.clone(),
            )),
        ]
    }
}

/// Starts `state`'s bus when its database is PostgreSQL (nothing on SQLite: one replica).
pub fn start_for(state: &crate::state::AppState) -> Vec<JoinHandle<()>> {
    let crate::config::DatabaseConfig::Postgres(url) = &state.config.database else {
        return vec![];
    };
    tracing::info!(replica = %state.bus.replica, channel = CHANNEL, "cross-replica signals over PostgreSQL LISTEN/NOTIFY");
    state.bus.start(
        url.clone(),
        state.db.clone(),
        Sinks {
            events: state.events.clone(),
            dirty: state.dirty.clone(),
            wake: state.build_wake.notifier(),
            logs: state.log_events.clone(),
        },
    )
}

async fn publish(mut rx: mpsc::Receiver<Signal>, replica: String, remote: Remote, db: Db) {
    let mut failing_since: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 4096
            && let Ok(s) = rx.try_recv()
        {
            batch.push(s);
        }
        if remote.0.lost.swap(false, Ordering::Relaxed) {
            batch.push(Signal::Resync);
        }
        for p in encode(&replica, &dedupe(batch), MAX_PAYLOAD) {
            match db.notify(CHANNEL, &p).await {
                Ok(()) => {
                    if let Some(t) = failing_since.take() {
                        tracing::info!(after = ?t.elapsed(), "cross-replica signals: NOTIFY on PostgreSQL works again; other replicas are told to resync");
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(error = %e, "cross-replica signals: NOTIFY on PostgreSQL failed; signals dropped, a resync follows once it works again");
                    }
                    remote.0.lost.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn listen(
    url: String,
    replica: String,
    db: Db,
    sinks: Sinks,
    listening: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut backoff = BACKOFF.0;
    let mut lost_at: Option<Instant> = None;
    let mut attempts = 0u32;
    loop {
        let connected = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                attempts += 1;
                tracing::warn!(error = %e, attempt = attempts, retry_in = ?backoff, "cross-replica signals: cannot LISTEN on PostgreSQL; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        listening.send_replace(true);
        if let Some(t) = lost_at.take() {
            tracing::info!(down_for = ?t.elapsed(), attempts, "cross-replica signals: LISTEN on PostgreSQL re-established; resyncing");
            sinks
                .resync(&db, "the PostgreSQL LISTEN connection was re-established")
                .await;
        } else {
            tracing::debug!(channel = CHANNEL, replica = %replica, "cross-replica signals: listening on PostgreSQL");
        }
        attempts = 0;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match decode(n.payload(), &replica) {
                    Ok(signals) => {
                        for s in signals {
                            sinks.deliver(s, &db);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cross-replica signals: malformed payload ignored");
                    }
                },
                Ok(None) => {
                    tracing::warn!(
                        "cross-replica signals: the PostgreSQL LISTEN connection was lost; reconnecting (signals sent meanwhile are missed, a resync follows)"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cross-replica signals: the PostgreSQL LISTEN connection was lost (an error); reconnecting (signals sent meanwhile are missed, a resync follows)");
                    break;
                }
            }
        }
        listening.send_replace(false);
        lost_at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(w: &str) -> Signal {
        Signal::Dirty { w: w.into() }
    }
    fn st(w: &str, s: WorkspaceStatus) -> Signal {
        Signal::Status {
            w: w.into(),
            s,
            r: String::new(),
        }
    }

    #[test]
    fn dedupe_table() {
        use WorkspaceStatus::*;
        let cases: Vec<(&str, Vec<Signal>, Vec<Signal>)> = vec![
            ("empty", vec![], vec![]),
            ("one", vec![d("a")], vec![d("a")]),
            (
                "repeated marks coalesce, order kept",
                vec![d("a"), d("b"), d("a")],
                vec![d("a"), d("b")],
            ),
            (
                "latest status per workspace wins",
                vec![st("a", Pending), d("a"), st("a", Running), st("b", Stopped)],
                vec![d("a"), st("a", Running), st("b", Stopped)],
            ),
            (
                "wake-ups and resyncs coalesce",
                vec![
                    Signal::BuildWake,
                    Signal::Resync,
                    Signal::BuildWake,
                    Signal::Resync,
                ],
                vec![Signal::BuildWake, Signal::Resync],
            ),
            (
                "logs of two workspaces both kept",
                vec![
                    Signal::Logs { w: "a".into() },
                    Signal::Logs { w: "b".into() },
                ],
                vec![
                    Signal::Logs { w: "a".into() },
                    Signal::Logs { w: "b".into() },
                ],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(dedupe(input), want, "{name}");
        }
    }

    #[test]
    fn encode_decode_table() {
        let many: Vec<Signal> = (0..500).map(|i| d(&format!("{i:036}"))).collect();
        let huge = Signal::Status {
            w: "x".repeat(MAX_PAYLOAD),
            s: WorkspaceStatus::Running,
            r: String::new(),
        };
        // (name, signals, max, payloads wanted)
        let cases: Vec<(&str, Vec<Signal>, usize, usize)> = vec![
            ("nothing", vec![], MAX_PAYLOAD, 0),
            ("one", vec![d("a")], MAX_PAYLOAD, 1),
            (
                "every kind in one",
                vec![
                    d("a"),
                    st("a", WorkspaceStatus::Failed),
                    Signal::BuildWake,
                    Signal::Logs { w: "a".into() },
                    Signal::Resync,
                ],
                MAX_PAYLOAD,
                1,
            ),
            (
                "500 ids split under the limit",
                many.clone(),
                MAX_PAYLOAD,
                4,
            ),
            ("too big alone: dropped", vec![huge, d("a")], MAX_PAYLOAD, 1),
        ];
        for (name, signals, max, want) in cases {
            let payloads = encode("r1", &signals, max);
            assert_eq!(payloads.len(), want, "{name}");
            let mut back = vec![];
            for p in &payloads {
                assert!(p.len() <= max, "{name}: {} bytes", p.len());
                assert_eq!(
                    decode(p, "r1").unwrap(),
                    vec![],
                    "{name}: own payload skipped"
                );
                back.extend(decode(p, "r2").unwrap());
            }
            let kept: Vec<Signal> = signals
                .into_iter()
                .filter(|s| serde_json::to_string(s).unwrap().len() < max)
                .collect();
            assert_eq!(back, kept, "{name}: what another replica receives");
        }
    }

    #[test]
    fn decode_refuses_malformed() {
        for bad in [
            "",
            "{",
            "{\"r\":\"x\"}",
            "{\"r\":\"x\",\"s\":[{\"k\":\"?\"}]}",
            "[]",
        ] {
            assert!(decode(bad, "me").is_err(), "{bad:?}");
        }
        assert_eq!(
            decode(r#"{"r":"x","s":[{"k":"d","w":"a"},{"k":"b"}]}"#, "me").unwrap(),
            vec![d("a"), Signal::BuildWake]
        );
    }

    #[tokio::test]
    async fn without_a_bus_signals_stay_local() {
        let remote = Remote::default();
        assert!(!remote.is_active());
        remote.send(d("a"));
        let wake = Wake::new(remote);
        let n = wake.notifier();
        wake.notify_one();
        tokio::time::timeout(Duration::from_secs(1), n.notified())
            .await
            .expect("local wake-up");
    }
}
