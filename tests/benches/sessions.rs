//! `make bench-sessions` (`cargo bench -p lumie-tests --bench sessions`): sessions through the
//! control plane on loopback, in one run.
//!
//! - port-forward throughput: bytes from a TCP server in the "pod" (127.0.0.1) to a WebSocket
//!   client of `GET /api/v2/workspaces/{id}/sessions/tcp/{port}`, through lumie-server and the
//!   agent's session endpoint on a pod IP, against a direct TCP connection to the same server;
//!   both directions, printed as MiB/s and the ratio (Coder measures 0.44×; the aim is ≥ 0.6×);
//! - the terminal's keystroke round trip: one byte typed into the terminal route's WebSocket
//!   until its echo (the PTY's line discipline, under `cat`) comes back, p50/p99.
//!
//! The server runs as it listens (`edge::serve`, SQLite) without a cluster: the workspace is
//! marked running with a pod IP and its agent connected by a heartbeat made in-process. The
//! agent's session endpoint is the real one (`lumie_agent::session`) on its own
//! single-threaded runtime, as the agent binary runs it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use lumie_contract::agent_api::{HeartbeatRequest, HeartbeatResponse, LifecycleState};
use lumie_contract::workspace::SESSION_PORT;
use lumie_server::api::WorkspaceJson;
use lumie_server::db::Db;
use lumie_server::model::WorkspaceStatus;
use lumie_server::state::AppState;
use lumie_server::status::{ClusterView, PodObservation};
use lumie_server::template::Template;
use lumie_tests::{control_plane, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const STREAM_BYTES: usize = 512 << 20;
const KEYSTROKES: usize = 2000;

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// A TCP server in the "pod": on each connection, the first byte says what to do: `d` sends
/// [`STREAM_BYTES`], `u` reads that many and answers one byte.
async fn pod_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut op = [0u8; 1];
                if s.read_exact(&mut op).await.is_err() {
                    return;
                }
                let mut buf = vec![7u8; 256 * 1024];
                let mut left = STREAM_BYTES;
                if op[0] == b'd' {
                    while left > 0 {
                        let n = left.min(buf.len());
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                } else {
                    while left > 0 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                    let _ = s.write_all(b"k").await;
                }
            });
        }
    });
    addr
}

async fn direct(addr: SocketAddr, op: u8) -> Duration {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let started = Instant::now();
    s.write_all(&[op]).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    if op == b'd' {
        let mut got = 0;
        while got < STREAM_BYTES {
            got += s.read(&mut buf).await.unwrap();
        }
    } else {
        let mut left = STREAM_BYTES;
        while left > 0 {
            let n = left.min(buf.len());
            s.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        s.read_exact(&mut buf[..1]).await.unwrap();
    }
    started.elapsed()
}

async fn through(url: &str, token: &str, op: u8) -> Duration {
    let mut socket = ws::connect(url, token).await.expect("tcp session");
    let started = Instant::now();
    socket.send(Message::Binary(vec![op].into())).await.unwrap();
    if op == b'd' {
        let mut got = 0;
        while got < STREAM_BYTES {
            match socket.next().await {
                Some(Ok(Message::Binary(b))) => got += b.len(),
                Some(Ok(_)) => {}
                other => panic!("stream ended after {got} bytes: {other:?}"),
            }
        }
    } else {
        let chunk = vec![7u8; 256 * 1024];
        let mut left = STREAM_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            socket
                .send(Message::Binary(chunk[..n].to_vec().into()))
                .await
                .unwrap();
            left -= n;
        }
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("no acknowledgement: {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = socket.close(None).await;
    elapsed
}

async fn keystrokes(url: &str, token: &str) -> Vec<Duration> {
    let mut socket = ws::connect(url, token).await.expect("terminal session");
    let mut seen = Vec::new();
    socket
        .send(Message::Binary(b"stty -icanon; exec cat\r".to_vec().into()))
        .await
        .unwrap();
    // Until `cat` runs: its echo of a marker comes back alone once the shell has exec'd it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(Duration::from_millis(200), socket.next()).await
    {}
    for i in 0..KEYSTROKES {
        let key = b'a' + (i % 26) as u8;
        let started = Instant::now();
        socket
            .send(Message::Binary(vec![key].into()))
            .await
            .unwrap();
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(b))) if b.contains(&key) => break,
                Some(Ok(_)) => {}
                other => panic!("terminal ended: {other:?}"),
            }
        }
        seen.push(started.elapsed());
    }
    let _ = socket.close(None).await;
    seen.sort();
    seen
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = control_plane::server_config(dir.path()).unwrap();
        let url = config.access_url.clone();
        let db = Db::connect(&config.database).await.unwrap();
        let (_, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let state = AppState::new(config, db, Template::default(), None)
            .await
            .unwrap();
        tokio::spawn(lumie_server::edge::serve(listener, state.clone()));

        let http = reqwest::Client::new();
        let created: WorkspaceJson = http
            .post(format!("{url}/api/v2/users/me/workspaces"))
            .header("Coder-Session-Token", &token)
            .json(&serde_json::json!({"name": "bench"}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created.id.clone();
        let pod_ip = IpAddr::V4(Ipv4Addr::new(127, 93, rand::random::<u8>() | 1, 7));
        state
            .db
            .set_workspace_status(&id, WorkspaceStatus::Running, "")
            .await
            .unwrap();
        state.cluster.replace(std::collections::HashMap::from([(
            id.clone(),
            ClusterView {
                pod: Some(PodObservation {
                    phase: "Running".into(),
                    node: Some("worker-1".into()),
                    pod_ip: Some(pod_ip.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )]));
        state.agents.restart(&id).await.unwrap();
        state
            .agents
            .heartbeat(
                &id,
                HeartbeatRequest {
                    lifecycle: LifecycleState::Ready,
                    ..Default::default()
                },
            )
            .unwrap();

        // The agent's session endpoint, on its own single-threaded runtime.
        let sessions = Arc::new(lumie_agent::session::Sessions::new(IpAddr::V4(
            Ipv4Addr::LOCALHOST,
        )));
        sessions.update(&HeartbeatResponse {
            report_interval_seconds: 15,
            session_keys: state.sessions.keys.public_keys(),
            workspace_id: Some(id.clone()),
        });
        let listener = std::net::TcpListener::bind((pod_ip, SESSION_PORT)).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                sessions.serve(listener).await;
            });
        });

        let target = pod_server().await;
        let tcp_url = format!(
            "{url}/api/v2/workspaces/{id}/sessions/tcp/{}",
            target.port()
        );
        // Warm up both paths once.
        direct(target, b'd').await;
        through(&tcp_url, &token, b'd').await;
        println!("sessions bench: {} MiB per transfer, best of 3", STREAM_BYTES >> 20);
        for (op, name) in [(b'd', "from the workspace"), (b'u', "to the workspace")] {
            let mut d = Duration::MAX;
            let mut t = Duration::MAX;
            for _ in 0..3 {
                d = d.min(direct(target, op).await);
                t = t.min(through(&tcp_url, &token, op).await);
            }
            println!(
                "port-forward {name}: direct {:.0} MiB/s, through server+agent {:.0} MiB/s, ratio {:.2}x",
                mib_s(STREAM_BYTES, d),
                mib_s(STREAM_BYTES, t),
                d.as_secs_f64() / t.as_secs_f64()
            );
        }

        let term_url = format!("{url}/api/v2/workspaces/{id}/sessions/terminal?rows=24&cols=80");
        let rtt = keystrokes(&term_url, &token).await;
        let pct = |p: f64| rtt[((rtt.len() as f64 * p) as usize).min(rtt.len() - 1)];
        println!(
            "terminal keystroke round trip ({} keys): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            rtt.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            rtt.last().unwrap().as_secs_f64() * 1e3
        );
    });
}
