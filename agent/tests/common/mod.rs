//! Test helpers: a stand-in control plane that records heartbeats (axum on loopback), and
//! stand-in apps that answer on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lumie_contract::agent_api::{
    AGENT_TOKEN_HEADER, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse, LifecycleState,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One heartbeat as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Beat {
    pub token: Option<String>,
    pub body: HeartbeatRequest,
    pub at: Instant,
}

/// What the stand-in control plane saw; survives restarts of the server.
#[derive(Clone)]
pub struct Recorder {
    beats: Arc<Mutex<Vec<Beat>>>,
    attempts: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    interval_secs: u64,
}

impl Recorder {
    pub fn new(interval_secs: u64) -> Self {
        Self {
            beats: Arc::default(),
            attempts: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            interval_secs,
        }
    }

    /// Heartbeats accepted so far.
    pub fn beats(&self) -> Vec<Beat> {
        self.beats.lock().unwrap().clone()
    }

    /// Requests received so far, accepted or not.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Makes the server answer this status (200 accepts).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Waits for an accepted heartbeat matching `pred`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Beat) -> bool,
    ) -> Beat {
        let start = Instant::now();
        loop {
            if let Some(b) = self.beats().into_iter().find(|b| pred(b)) {
                return b;
            }
            if start.elapsed() > timeout {
                let seen: Vec<_> = self
                    .beats()
                    .iter()
                    .map(|b| (b.body.lifecycle, b.body.apps.clone()))
                    .collect();
                panic!("no heartbeat {what} within {timeout:?}; saw {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a heartbeat in `state`.
    pub async fn wait_for_state(&self, state: LifecycleState, timeout: Duration) -> Beat {
        self.wait_for(state.as_str(), timeout, |b| b.body.lifecycle == state)
            .await
    }

    /// The lifecycle states reported, consecutive repeats folded.
    pub fn states(&self) -> Vec<LifecycleState> {
        let mut out: Vec<LifecycleState> = Vec::new();
        for b in self.beats() {
            if out.last() != Some(&b.body.lifecycle) {
                out.push(b.body.lifecycle);
            }
        }
        out
    }
}

async fn heartbeat(
    State(rec): State<Recorder>,
    headers: HeaderMap,
    Json(body): Json<HeartbeatRequest>,
) -> Response {
    rec.attempts.fetch_add(1, Ordering::SeqCst);
    let status = rec.status.load(Ordering::SeqCst);
    if status != 200 {
        let code = StatusCode::from_u16(status).unwrap();
        return (code, "stand-in says no").into_response();
    }
    rec.beats.lock().unwrap().push(Beat {
        token: headers
            .get(AGENT_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        at: Instant::now(),
    });
    Json(HeartbeatResponse {
        report_interval_seconds: rec.interval_secs,
        ..Default::default()
    })
    .into_response()
}

/// The stand-in control plane's routes.
pub fn router(rec: Recorder) -> axum::Router {
    axum::Router::new()
        .route(HEARTBEAT_PATH, axum::routing::post(heartbeat))
        .with_state(rec)
}

/// A running stand-in control plane. Dropping it does not wait; call `stop` to close it.
pub struct StandIn {
    pub addr: SocketAddr,
    pub rec: Recorder,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StandIn {
    pub async fn start(rec: Recorder) -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), rec).await
    }

    pub async fn start_at(addr: SocketAddr, rec: Recorder) -> Self {
        Self::serve(
            TcpListener::bind(addr).await.unwrap(),
            router(rec.clone()),
            rec,
        )
    }

    /// Serves `app` (heartbeat routes and anything else a test adds).
    pub fn serve(listener: TcpListener, app: axum::Router, rec: Recorder) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            rec,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> reqwest::Url {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Closes the listener and every connection.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

/// A port on 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stand-in app on 127.0.0.1 that writes its name to every connection and closes it.
pub struct App {
    pub port: u16,
    task: JoinHandle<()>,
}

impl App {
    pub async fn start(name: &'static str) -> Self {
        Self::start_on(name, 0).await
    }

    pub async fn start_on(name: &'static str, port: u16) -> Self {
        let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = s.write_all(name.as_bytes()).await;
                });
            }
        });
        Self { port, task }
    }

    /// Kills the app: its port refuses connections from now on.
    pub fn kill(self) {}
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}
