//! Several replicas on one PostgreSQL, in one process (each its own `AppState`, pool, bus and
//! agent table, as separate processes would have): status changes, dirty marks, build wake-ups
//! and log news reach the other replicas within a second; an agent whose heartbeats go round
//! the replicas is `connected` on all of them; session use is shared; a replica whose
//! PostgreSQL connections are cut (a real outage through [`Relay`]) reconnects on its own, says
//! so, and resyncs. The process-level tests (haproxy in front of real `lumie-server`
//! processes) are in `tests/tests/replicas.rs`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::relay::{Relay, host_port};
use lumie_contract::agent_api::{ConnectionStatus, HeartbeatRequest, LifecycleState};
use lumie_server::config::{Config, DatabaseConfig};
use lumie_server::db::Db;
use lumie_server::events::WorkspaceEvent;
use lumie_server::model::WorkspaceStatus;
use lumie_server::state::AppState;
use lumie_server::template::Template;
use tokio::task::JoinHandle;

/// Every log line of this test binary (the tests assert what the replicas say).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("lumie_server=info")
            .with_ansi(false)
            .with_writer(move || Tee(sink.clone()))
            .try_init();
        buf
    })
}

struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

struct Replica {
    state: AppState,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A replica on the database at `url`: its own pool, bus, agent table and session sync.
async fn replica(url: &str, report_interval: Duration) -> Replica {
    logs();
    let db = Db::connect_with_acquire_timeout(
        &DatabaseConfig::Postgres(url.to_string()),
        Some(Duration::from_secs(10)),
    )
    .await
    .expect("connect");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.database = DatabaseConfig::Postgres(url.to_string());
    config.agent_report_interval = report_interval;
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    let mut tasks = lumie_server::bus::start_for(&state);
    assert_eq!(tasks.len(), 2, "publisher and listener on PostgreSQL");
    tasks.push(tokio::spawn(state.agents.clone().run()));
    tasks.push(tokio::spawn(
        state.sessions.clone().run_sync(state.db.clone()),
    ));
    tokio::time::timeout(Duration::from_secs(10), state.bus.listening())
        .await
        .expect("the bus listens");
    Replica {
        state,
        tasks,
        _dir: dir,
    }
}

/// A workspace (and its agent row) owned by a fresh user.
async fn workspace(db: &Db, name: &str) -> String {
    let u = db.create_user(name, "", false).await.unwrap();
    db.create_workspace(&u, name, &format!("coder-{name}-ws"), None)
        .await
        .unwrap()
        .workspace
        .id
}

fn event(id: &str, status: WorkspaceStatus) -> WorkspaceEvent {
    WorkspaceEvent {
        workspace_id: id.into(),
        status,
        reason: "because".into(),
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 1 s"))
}

/// Waits until `dirty` holds `id` (marks of other workspaces are taken and dropped).
async fn marked(dirty: &lumie_server::events::Dirty, id: &str) {
    loop {
        if dirty.take().contains(id) {
            return;
        }
        dirty.wait().await;
    }
}

#[tokio::test]
async fn signals_reach_the_other_replica_within_a_second_and_never_echo() {
    let (_, url) = common::pg_db_with_url().await;
    let a = replica(&url, Duration::from_secs(15)).await;
    let b = replica(&url, Duration::from_secs(15)).await;
    let ws = workspace(&a.state.db, "sig").await;

    let mut on_a = a.state.events.subscribe();
    let mut on_b = b.state.events.subscribe();
    let mut latencies = vec![];
    for i in 0..20 {
        let status = if i % 2 == 0 {
            WorkspaceStatus::Running
        } else {
            WorkspaceStatus::Stopped
        };
        let sent = Instant::now();
        a.state.events.publish(event(&ws, status));
        let got = within("status change on B", on_b.recv()).await.unwrap();
        latencies.push(sent.elapsed());
        assert_eq!(got, event(&ws, status), "as published");
    }
    latencies.sort();
    eprintln!(
        "cross-replica status change latency over 20: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
    assert!(latencies[19] < Duration::from_secs(1));

    // A's own payloads come back to its listener too and must be skipped: B's marker, sent
    // after them, arrives after them, so by then A has received everything it ever will.
    b.state
        .events
        .publish(event("marker", WorkspaceStatus::Pending));
    let mut seen_on_a = vec![];
    loop {
        let ev = within("B's marker on A", on_a.recv()).await.unwrap();
        if ev.workspace_id == "marker" {
            break;
        }
        seen_on_a.push(ev);
    }
    assert_eq!(
        seen_on_a.len(),
        20,
        "A saw each of its changes once (local, no echo)"
    );

    // Dirty marks (→ the reconciler), build wake-ups (→ the executor), log news (→ followers).
    b.state.dirty.take();
    a.state.dirty.mark(&ws);
    within("dirty mark on B", marked(&b.state.dirty, &ws)).await;
    let wake = b.state.build_wake.notifier();
    let woken = wake.notified();
    a.state.build_wake.notify_one();
    within("build wake-up on B", woken).await;
    let mut logs_b = b.state.log_events.subscribe();
    a.state.log_events.publish(&ws);
    assert_eq!(within("log news on B", logs_b.recv()).await.unwrap(), ws);
}

/// One heartbeat a second (the report interval), sent to three replicas in turn: each replica
/// itself hears the agent only every 3 s, past its 2 s "connected" window, yet all three say
/// `connected` throughout, and the lifecycle the last heartbeat reported.
#[tokio::test]
async fn an_agent_whose_heartbeats_go_round_the_replicas_is_connected_on_all() {
    let (_, url) = common::pg_db_with_url().await;
    let interval = Duration::from_secs(1);
    let replicas = [
        replica(&url, interval).await,
        replica(&url, interval).await,
        replica(&url, interval).await,
    ];
    // Created after the replicas loaded their agents: they learn of it from the database.
    let ws = workspace(&replicas[0].state.db, "rr").await;
    replicas[0].state.agents.restart(&ws).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in &replicas {
        while r.state.agents.view(&ws).is_none() {
            assert!(
                Instant::now() < deadline,
                "every replica learns of the agent"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut tick = tokio::time::interval(interval);
    let mut not_connected = vec![];
    for i in 0..9 {
        tick.tick().await;
        let lifecycle = if i < 4 {
            LifecycleState::Starting
        } else {
            LifecycleState::Ready
        };
        let hb = HeartbeatRequest {
            lifecycle,
            version: format!("1.0.{i}"),
            ..Default::default()
        };
        replicas[i % 3]
            .state
            .agents
            .heartbeat(&ws, hb)
            .expect("answered from memory");
        if i >= 3 {
            for (n, r) in replicas.iter().enumerate() {
                let v = r.state.agents.view(&ws).unwrap();
                if v.connection != ConnectionStatus::Connected {
                    not_connected.push((i, n, v.connection));
                }
            }
        }
    }
    assert!(
        not_connected.is_empty(),
        "(heartbeat, replica, status) not connected: {not_connected:?}"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for (n, r) in replicas.iter().enumerate() {
        let v = r.state.agents.view(&ws).unwrap();
        assert_eq!(
            (v.lifecycle, v.connection),
            (LifecycleState::Ready, ConnectionStatus::Connected),
            "replica {n}"
        );
    }
    let row = replicas[0]
        .state
        .db
        .agent_for_workspace(&ws)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.version, "1.0.8", "the newest heartbeat is the row");

    // A workspace deleted through one replica: the others forget its agent and refuse it.
    replicas[1]
        .state
        .db
        .mark_workspace_deleted(&ws)
        .await
        .unwrap();
    replicas[1].state.agents.remove_workspace(&ws);
    let deadline = Instant::now() + Duration::from_secs(3);
    while replicas.iter().any(|r| r.state.agents.view(&ws).is_some()) {
        assert!(Instant::now() < deadline, "every replica forgets the agent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        replicas[2]
            .state
            .agents
            .heartbeat(&ws, HeartbeatRequest::default())
            .is_err()
    );

    // Session use through one replica is what every replica shows.
    let other = workspace(&replicas[0].state.db, "used").await;
    replicas[0].state.sessions.touch(&other);
    let used = replicas[0].state.sessions.last_used(&other).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    for r in &replicas[1..] {
        while r.state.sessions.last_used(&other) != Some(used) {
            assert!(
                Instant::now() < deadline,
                "session use reaches every replica"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// B's connections to PostgreSQL are cut (its pool and its listener, as when PostgreSQL
/// restarts) while A changes a workspace: B misses that NOTIFY, reconnects on its own, says what
/// happened, and resyncs: its watchers are told to re-read every workspace and every workspace
/// is marked dirty.
#[tokio::test]
async fn a_replica_cut_off_from_postgresql_reconnects_says_so_and_resyncs() {
    let (_, url) = common::pg_db_with_url().await;
    let relay = Relay::start(host_port(&url));
    let relayed = url.replace(&host_port(&url).to_string(), &relay.addr.to_string());
    let a = replica(&url, Duration::from_secs(15)).await;
    let b = replica(&relayed, Duration::from_secs(15)).await;
    let ws = workspace(&a.state.db, "cut").await;
    let mut on_b = b.state.events.subscribe();

    relay.stop().await;
    a.state.events.publish(event(&ws, WorkspaceStatus::Running));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), on_b.recv())
            .await
            .is_err(),
        "B is cut off: the change does not reach it"
    );
    b.state.dirty.take();
    relay.restart();
    let resynced = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let ev = on_b.recv().await.unwrap();
            if ev.workspace_id == ws {
                return ev;
            }
        }
    })
    .await
    .expect("B resyncs once PostgreSQL is back");
    assert_eq!(
        resynced.status,
        WorkspaceStatus::Pending,
        "the row as stored"
    );
    assert!(
        b.state.dirty.take().contains(&ws),
        "every workspace marked dirty"
    );
    let log = logged();
    for w in [
        "the PostgreSQL LISTEN connection was lost",
        "LISTEN on PostgreSQL re-established; resyncing",
        "cross-replica resync: every workspace marked dirty",
    ] {
        assert!(log.contains(w), "{w:?} in the log:\n{log}");
    }

    // And signals flow again.
    a.state.events.publish(event(&ws, WorkspaceStatus::Stopped));
    let ev = within("status change on B after the outage", async {
        loop {
            let ev = on_b.recv().await.unwrap();
            if ev.status == WorkspaceStatus::Stopped {
                return ev;
            }
        }
    })
    .await;
    assert_eq!(ev.workspace_id, ws);
}
