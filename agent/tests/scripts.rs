//! The startup and shutdown scripts end to end in-process: a stand-in control plane hands out a
//! manifest and records heartbeats and log batches (storing each (start, seq) once, as the real
//! server does); the agent runs the scripts for real (`sh -c`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{Recorder, StandIn, free_port};
use lumie_agent::Config;
use lumie_agent::config::HealthCheck;
use lumie_contract::agent_api::{
    LOGS_PATH, LifecycleState as S, LogBatch, LogBatchResponse, LogStream, MANIFEST_PATH, Manifest,
    StartupBehavior,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the stand-in saw of the logs: every attempt, and the batches kept (once per seq).
#[derive(Clone, Default)]
struct Logs {
    attempts: Arc<Mutex<Vec<LogBatch>>>,
    kept: Arc<Mutex<BTreeMap<(String, u64), LogBatch>>>,
    /// Answer this status to the next N batches (after storing them: a lost answer).
    fail_answers: Arc<AtomicUsize>,
    /// Refuse batches with this status (without storing them); 0 accepts.
    refuse: Arc<AtomicU16>,
}

impl Logs {
    /// The kept lines' (stream, text), in (start, seq) order.
    fn lines(&self) -> Vec<(LogStream, String)> {
        self.kept
            .lock()
            .unwrap()
            .values()
            .flat_map(|b| b.lines.iter().map(|l| (l.stream, l.text.clone())))
            .collect()
    }

    fn text(&self) -> String {
        self.lines()
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !self.lines().iter().any(|(_, t)| pred(t)) {
            if start.elapsed() >= WAIT {
                let lines = self.lines();
                let tail: Vec<_> = lines.iter().rev().take(3).collect();
                panic!(
                    "no log line {what} within {WAIT:?}; got {} lines, the last {tail:?}",
                    lines.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone)]
struct Plane {
    manifest: Manifest,
    logs: Logs,
}

async fn manifest(State(p): State<Plane>) -> Json<Manifest> {
    Json(p.manifest.clone())
}

async fn logs(State(p): State<Plane>, Json(batch): Json<LogBatch>) -> Response {
    p.logs.attempts.lock().unwrap().push(batch.clone());
    let refuse = p.logs.refuse.load(Ordering::SeqCst);
    if refuse != 0 {
        return (StatusCode::from_u16(refuse).unwrap(), "down").into_response();
    }
    let key = (batch.start_id.clone(), batch.seq);
    let duplicate = {
        let mut kept = p.logs.kept.lock().unwrap();
        match kept.get(&key) {
            Some(old) => {
                assert_eq!(old, &batch, "a retried batch is the same batch");
                true
            }
            None => {
                kept.insert(key, batch.clone());
                false
            }
        }
    };
    if p.logs
        .fail_answers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::BAD_GATEWAY, "answer lost").into_response();
    }
    Json(LogBatchResponse {
        stored: if duplicate {
            0
        } else {
            batch.lines.len() as u64
        },
        duplicate,
    })
    .into_response()
}

async fn start_plane(addr: SocketAddr, rec: Recorder, plane: Plane) -> StandIn {
    let app = common::router(rec.clone()).merge(
        axum::Router::new()
            .route(MANIFEST_PATH, axum::routing::get(manifest))
            .route(LOGS_PATH, axum::routing::post(logs))
            .with_state(plane),
    );
    StandIn::serve(tokio::net::TcpListener::bind(addr).await.unwrap(), app, rec)
}

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "token-very-secret-123456";

fn config(url: reqwest::Url, home: &std::path::Path) -> Config {
    let mut c = Config::new(url, TOKEN);
    for app in c.apps.iter_mut() {
        app.port = free_port();
        app.health = HealthCheck::Disabled;
    }
    c.report_interval = Some(Duration::from_millis(200));
    c.shutdown_timeout = Duration::from_secs(4);
    c.home_dir = home.to_path_buf();
    c
}

fn spawn_agent(c: Config) -> (oneshot::Sender<()>, JoinHandle<S>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        lumie_agent::run(c, async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    (tx, task)
}

fn script(startup: &str) -> Manifest {
    Manifest {
        startup_script: startup.into(),
        ..Manifest::default()
    }
}

async fn plane(m: Manifest) -> (StandIn, Plane, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let p = Plane {
        manifest: m,
        logs: Logs::default(),
    };
    let cp = start_plane(addr, Recorder::new(1), p.clone()).await;
    (cp, p, addr)
}

#[tokio::test]
async fn a_failing_script_is_a_start_error_with_its_last_lines() {
    let home = tempfile::tempdir().unwrap();
    let (cp, p, _) = plane(script(
        "echo preparing; code-server-not-installed --auth none",
    ))
    .await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    let beat = cp.rec.wait_for_state(S::StartError, WAIT).await;
    let reason = beat.body.lifecycle_reason.unwrap();
    assert!(
        reason.starts_with("startup script exited 127: "),
        "{reason}"
    );
    assert!(reason.contains("code-server-not-installed"), "{reason}");
    assert!(reason.contains("not found"), "{reason}");
    assert!(
        !cp.rec.states().contains(&S::Ready),
        "{:?}",
        cp.rec.states()
    );
    p.logs
        .wait_for_line("saying how it ended", |t| t == "startup script exited 127")
        .await;
    assert!(
        p.logs
            .lines()
            .contains(&(LogStream::Stdout, "preparing".into()))
    );
    drop(stop);
    assert_eq!(agent.await.unwrap(), S::Off);
    cp.stop().await;
}

#[tokio::test]
async fn a_blocking_script_gates_ready_and_a_hanging_one_is_a_start_timeout() {
    let home = tempfile::tempdir().unwrap();
    // Blocking and quick: ready only after it exits 0.
    let (cp, p, _) = plane(script("sleep 0.5; echo done")).await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    cp.rec.wait_for_state(S::Ready, WAIT).await;
    assert!(
        p.logs.lines().contains(&(LogStream::Stdout, "done".into())) || {
            p.logs.wait_for_line("done", |t| t == "done").await;
            true
        }
    );
    drop(stop);
    assert_eq!(agent.await.unwrap(), S::Off);
    cp.stop().await;

    // Blocking and hanging: start_timeout naming the script; the apps are all disabled.
    let (cp, _p, _) = plane(Manifest {
        startup_script: "echo waiting forever; sleep 600".into(),
        start_timeout_seconds: Some(1),
        ..Manifest::default()
    })
    .await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    let beat = cp.rec.wait_for_state(S::StartTimeout, WAIT).await;
    assert_eq!(
        beat.body.lifecycle_reason.as_deref(),
        Some("startup script still running after 1s (startup behavior blocking)")
    );
    drop(stop);
    assert_eq!(agent.await.unwrap(), S::Off);
    cp.stop().await;

    // Non-blocking and hanging: the apps alone decide, so ready at once.
    let (cp, _p, _) = plane(Manifest {
        startup_script: "sleep 600".into(),
        startup_behavior: StartupBehavior::NonBlocking,
        start_timeout_seconds: Some(1),
        ..Manifest::default()
    })
    .await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    cp.rec.wait_for_state(S::Ready, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!cp.rec.states().contains(&S::StartTimeout));
    drop(stop);
    assert_eq!(agent.await.unwrap(), S::Off);
    cp.stop().await;
}

#[tokio::test]
async fn shutdown_runs_the_shutdown_script_then_stops_the_startup_scripts_group() {
    let home = tempfile::tempdir().unwrap();
    let pid_file = home.path().join("bg.pid");
    let (cp, p, _) = plane(Manifest {
        startup_script: format!(
            "sleep 600 & echo $! > {}; echo started; exit 0",
            pid_file.display()
        ),
        shutdown_script: "echo saving work; echo bye >&2".into(),
        ..Manifest::default()
    })
    .await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    cp.rec.wait_for_state(S::Ready, WAIT).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(stop);
    assert_eq!(agent.await.unwrap(), S::Off);
    let lines = p.logs.lines();
    let pos = |want: (LogStream, &str)| {
        lines
            .iter()
            .position(|(s, t)| *s == want.0 && t == want.1)
            .unwrap_or_else(|| panic!("{want:?} missing from {lines:?}"))
    };
    assert!(pos((LogStream::Stdout, "started")) < pos((LogStream::Stdout, "saving work")));
    pos((LogStream::Stderr, "bye"));
    pos((LogStream::Agent, "shutdown script exited 0"));
    // The startup script's background process went with its group.
    let gone = (0..100).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = stat.is_empty() || stat.contains(") Z ");
        if !gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        gone
    });
    assert!(gone, "the startup script's child survived shutdown");
    assert_eq!(cp.rec.beats().last().unwrap().body.lifecycle, S::Off);
    cp.stop().await;
}

#[tokio::test]
async fn the_token_never_reaches_the_scripts_or_their_output() {
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (cp, p, _) = plane(script(&format!(
        "env; echo \"file says $(cat {})\"; echo end-of-env",
        token_file.display()
    )))
    .await;
    let mut c = config(cp.url(), home.path());
    c.token = lumie_agent::config::TokenSource::File(token_file.clone());
    let (stop, agent) = spawn_agent(c);
    p.logs.wait_for_line("end", |t| t == "end-of-env").await;
    let text = p.logs.text();
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("CODER_AGENT_TOKEN"), "{text}");
    assert!(text.contains("file says [agent token redacted]"), "{text}");
    // Every batch sent, not only the kept ones.
    for b in p.logs.attempts.lock().unwrap().iter() {
        assert!(b.lines.iter().all(|l| !l.text.contains(TOKEN)));
    }
    drop(stop);
    agent.await.unwrap();
    cp.stop().await;
}

#[tokio::test]
async fn output_during_an_outage_arrives_afterwards_in_order_once() {
    let home = tempfile::tempdir().unwrap();
    let (cp, p, addr) = plane(script(
        "i=0; while [ $i -lt 60 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done",
    ))
    .await;
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    p.logs.wait_for_line("line 3", |t| t == "line 3").await;
    // The control plane goes away while the script prints…
    cp.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // …and comes back, first losing an answer (the batch is stored, the agent does not know).
    p.logs.fail_answers.store(1, Ordering::SeqCst);
    let cp = start_plane(addr, Recorder::new(1), p.clone()).await;
    p.logs.wait_for_line("line 59", |t| t == "line 59").await;
    let stdout: Vec<String> = p
        .logs
        .lines()
        .into_iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, t)| t)
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout, want, "every line, in order, once");
    let attempts = p.logs.attempts.lock().unwrap().len();
    let kept = p.logs.kept.lock().unwrap().len();
    assert!(
        attempts > kept,
        "the lost answer made the agent retry a stored batch"
    );
    let seqs: Vec<u64> = p.logs.kept.lock().unwrap().keys().map(|k| k.1).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    drop(stop);
    agent.await.unwrap();
    cp.stop().await;
}

#[tokio::test]
async fn a_flood_of_output_is_bounded_and_what_was_dropped_counted() {
    let home = tempfile::tempdir().unwrap();
    // The control plane refuses logs while ~8 MiB is printed: the agent holds at most its
    // buffer and counts what it dropped.
    let (cp, p, _) = plane(script(
        "head -c 8000000 /dev/zero | tr '\\0' 'x' | fold -w 200; echo; echo flood-done",
    ))
    .await;
    p.logs.refuse.store(503, Ordering::SeqCst);
    let (stop, agent) = spawn_agent(config(cp.url(), home.path()));
    cp.rec.wait_for_state(S::Ready, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.logs.refuse.store(0, Ordering::SeqCst);
    p.logs
        .wait_for_line("flood-done", |t| t == "flood-done")
        .await;
    let lines = p.logs.lines();
    let dropped: u64 = p
        .logs
        .kept
        .lock()
        .unwrap()
        .values()
        .map(|b| b.dropped_lines)
        .sum();
    assert!(dropped > 30_000, "{dropped} lines counted as dropped");
    assert!(
        lines.iter().all(|(_, t)| !t.contains("were dropped")),
        "no marker lines: the count travels with the batch"
    );
    let bytes: usize = lines.iter().map(|(_, t)| t.len()).sum();
    assert!(
        bytes <= 2 * lumie_contract::agent_api::MAX_LOG_BYTES_PER_START,
        "{bytes} bytes delivered"
    );
    drop(stop);
    agent.await.unwrap();
    cp.stop().await;
}
