//! Sessions into a workspace through the control plane: WebSocket routes for the SSH stream, a
//! TCP tunnel to a port inside the pod, and an interactive terminal, each carried to the agent's
//! session port on the pod IP ([`workspace::SESSION_PORT`]) with a ticket the server signs.
//!
//! - `GET /api/v2/workspaces/{id}/sessions/ssh`: binary messages are the raw SSH stream;
//! - `GET /api/v2/workspaces/{id}/sessions/tcp/{port}`: binary messages are raw TCP bytes to
//!   `127.0.0.1:{port}` in the pod;
//! - `GET /api/v2/workspaces/{id}/sessions/terminal?rows=R&cols=C`: binary messages are terminal
//!   bytes; text messages are [`TerminalControl`] JSON (`resize` in, `exit` out, then close).
//!
//! Authentication is the API's (session cookie or token header) and the edge's Host and
//! WebSocket Origin rules apply as everywhere; only the owner or an admin gets a session, anyone
//! else a 404. Before upgrading, the workspace must be running and its agent connected and
//! willing (it verifies the ticket): otherwise a JSON error (409 stopped, 404, 503), never a hang.
//! Every session is audited (`session.start`, `session.end` with bytes and duration), counted in
//! metrics, and marks the workspace used ([`SessionHub::last_used`]).
//!
//! [`keys`] holds the signing keys (in the database, the same for every replica) and mints
//! tickets.

pub mod keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use lumie_contract::agent_api::ConnectionStatus;
use lumie_contract::sessions::{ANSWER_OK, Frame, SessionKind, SessionRequest, TerminalControl};
use lumie_contract::workspace;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::caller::Principal;
use crate::db::AuditEvent;
use crate::error::{Error, Result};
use crate::metrics::{SessionBytesLabels, SessionLabels};
use crate::model::{DesiredState, WorkspaceRecord, WorkspaceStatus, now_ms};
use crate::state::AppState;

pub use keys::SessionKeys;

/// How long dialing the agent may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent may take to answer the request line.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open session marks its workspace used.
pub const ACTIVITY_INTERVAL: Duration = Duration::from_secs(30);
/// After the client side of a stream ends, how long the workspace side may keep sending.
pub const LINGER: Duration = Duration::from_secs(30);
/// Largest binary message a raw session sends (one socket read).
pub const RAW_CHUNK: usize = 256 * 1024;

/// The session routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/workspaces/{id}/sessions/ssh", get(ssh))
        .route("/api/v2/workspaces/{id}/sessions/tcp/{port}", get(tcp))
        .route("/api/v2/workspaces/{id}/sessions/terminal", get(terminal))
}

/// The signing keys, and when each workspace was last used through a session.
pub struct SessionHub {
    /// Signing keys (refreshed from the database).
    pub keys: Arc<SessionKeys>,
    last_used: Mutex<HashMap<String, i64>>,
    /// Uses not written yet (batched by [`SessionHub::run_sync`]).
    unwritten: Mutex<HashMap<String, i64>>,
    /// The agent's session port (the contract's; tests may point elsewhere).
    pub agent_port: u16,
}

impl SessionHub {
    /// Loads (creating on first start) the signing keys.
    pub async fn load(db: &crate::db::Db) -> Result<SessionHub> {
        Ok(SessionHub {
            keys: Arc::new(SessionKeys::load(db).await?),
            last_used: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
            agent_port: workspace::SESSION_PORT,
        })
    }

    /// Marks a workspace used now (written to the database by the next sync).
    pub fn touch(&self, workspace_id: &str) {
        let now = now_ms();
        self.last_used
            .lock()
            .expect("last used lock")
            .insert(workspace_id.to_string(), now);
        self.unwritten
            .lock()
            .expect("last used lock")
            .insert(workspace_id.to_string(), now);
    }

    /// Writes the uses since the last sync (one statement) and, on a database several replicas
    /// share, takes in the later uses the others wrote since `since` (ms; `None`: all, on
    /// either database, as at start). A failed write is retried next time.
    pub async fn sync(&self, db: &crate::db::Db, since: Option<i64>) -> Result<()> {
        let uses: Vec<(String, i64)> =
            std::mem::take(&mut *self.unwritten.lock().expect("last used lock"))
                .into_iter()
                .collect();
        if !uses.is_empty()
            && let Err(e) = db.write_last_used(&uses).await
        {
            let mut g = self.unwritten.lock().expect("last used lock");
            for (id, t) in uses {
                let e = g.entry(id).or_insert(t);
                *e = (*e).max(t);
            }
            return Err(e);
        }
        if db.is_shared() || since.is_none() {
            let theirs = db.last_used_since(since.unwrap_or(i64::MIN)).await?;
            let mut g = self.last_used.lock().expect("last used lock");
            for (id, t) in theirs {
                let e = g.entry(id).or_insert(t);
                *e = (*e).max(t);
            }
        }
        Ok(())
    }

    /// Runs [`SessionHub::sync`] every second until the process ends.
    pub async fn run_sync(self: Arc<Self>, db: crate::db::Db) {
        let mut since: Option<i64> = None;
        loop {
            let started = now_ms();
            // Overlap: a use is written up to a sync after it happened, by any replica.
            match self.sync(&db, since.map(|s| s - 2_000)).await {
                Ok(()) => since = Some(started),
                Err(e) => {
                    tracing::warn!(error = %e, "writing or reading workspace session use failed; will retry")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// When a session last carried anything into the workspace (ms), on any replica (as of
    /// the last sync).
    pub fn last_used(&self, workspace_id: &str) -> Option<i64> {
        self.last_used
            .lock()
            .expect("last used lock")
            .get(workspace_id)
            .copied()
    }
}

/// Where the agent of a workspace is, if a session can be opened now; the error says why not
/// (409 stopped, 404 deleted, 503 no pod or agent).
pub fn reachable(
    ws: &WorkspaceRecord,
    pod_ip: Option<String>,
    agent: Option<ConnectionStatus>,
) -> Result<String> {
    let name = format!("{}/{}", ws.owner_name, ws.name);
    if ws.desired_state == DesiredState::Deleted
        || matches!(
            ws.status,
            WorkspaceStatus::Deleting | WorkspaceStatus::Deleted
        )
    {
        return Err(Error::NotFound(format!("workspace {} not found", ws.id)));
    }
    if ws.desired_state == DesiredState::Stopped
        || matches!(
            ws.status,
            WorkspaceStatus::Stopped | WorkspaceStatus::Stopping
        )
    {
        return Err(Error::Conflict(format!(
            "workspace {name} is {}: start it first",
            if ws.status == WorkspaceStatus::Stopping {
                "stopping"
            } else {
                "stopped"
            }
        )));
    }
    let Some(ip) = pod_ip else {
        return Err(Error::Unavailable(format!(
            "workspace {name} has no running pod yet (it is {}): wait until it is running",
            ws.status
        )));
    };
    match agent {
        Some(ConnectionStatus::Connected) => Ok(ip),
        other => Err(Error::Unavailable(format!(
            "the agent of workspace {name} is not connected ({}): wait until it reports in",
            other.map_or("no agent yet", |c| c.as_str())
        ))),
    }
}

/// A TCP port from the path: 1–65535.
pub fn parse_port(raw: &str) -> Result<u16> {
    raw.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::BadRequest(format!("port {raw:?} is not a TCP port (1-65535)")))
}

/// Terminal size from the query: 1–1000 each, 24×80 when absent.
pub fn terminal_size(rows: Option<u16>, cols: Option<u16>) -> Result<(u16, u16)> {
    let (rows, cols) = (rows.unwrap_or(24), cols.unwrap_or(80));
    if !(1..=1000).contains(&rows) || !(1..=1000).contains(&cols) {
        return Err(Error::BadRequest(format!(
            "terminal size {rows}x{cols}: rows and cols must be 1-1000"
        )));
    }
    Ok((rows, cols))
}

type Upgrade =
    std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

async fn ssh(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    upgrade: Upgrade,
) -> Response {
    open(state, p, id, SessionKind::Ssh, None, (0, 0), upgrade).await
}

async fn tcp(
    State(state): State<AppState>,
    p: Principal,
    Path((id, port)): Path<(String, String)>,
    upgrade: Upgrade,
) -> Response {
    let port = match parse_port(&port) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    open(state, p, id, SessionKind::Tcp, Some(port), (0, 0), upgrade).await
}

#[derive(Debug, Deserialize)]
struct SizeQuery {
    rows: Option<u16>,
    cols: Option<u16>,
}

async fn terminal(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    query: std::result::Result<Query<SizeQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Upgrade,
) -> Response {
    let size = match query {
        Ok(Query(q)) => terminal_size(q.rows, q.cols),
        Err(e) => Err(Error::BadRequest(format!(
            "rows and cols must be numbers 1-1000: {e}"
        ))),
    };
    match size {
        Ok(size) => open(state, p, id, SessionKind::Terminal, None, size, upgrade).await,
        Err(e) => e.into_response(),
    }
}

fn count(state: &AppState, kind: SessionKind, outcome: &str) {
    state
        .metrics
        .sessions
        .get_or_create(&SessionLabels {
            kind: kind.as_str().into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Everything before the upgrade: who, which workspace, whether it can be reached, and the
/// agent's acceptance of the ticket. Then the upgrade, and the pump.
async fn open(
    state: AppState,
    p: Principal,
    id: String,
    kind: SessionKind,
    port: Option<u16>,
    (rows, cols): (u16, u16),
    upgrade: Upgrade,
) -> Response {
    let ws = match crate::api::visible_workspace(&state, &p, &id).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let agent = state.agents.view(&ws.id).map(|a| a.connection);
    let ip = match reachable(&ws, state.cluster.pod_ip(&ws.id), agent) {
        Ok(ip) => ip,
        Err(e) => {
            count(&state, kind, "unavailable");
            return e.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return Error::BadRequest(
                "this route is a WebSocket: connect with an Upgrade: websocket request".into(),
            )
            .into_response();
        }
    };
    let request = SessionRequest {
        ticket: state.sessions.keys.mint(&ws.id, kind, port),
        kind,
        port,
        rows: (kind == SessionKind::Terminal).then_some(rows),
        cols: (kind == SessionKind::Terminal).then_some(cols),
    };
    let addr = format!("{ip}:{}", state.sessions.agent_port);
    let conn = match dial(&addr, &request).await {
        Ok(c) => c,
        Err(Dial::Refused(why)) => {
            count(&state, kind, "refused");
            tracing::warn!(workspace = %ws.id, %kind, reason = %why, "the agent refused a session");
            return Error::Unavailable(format!(
                "the agent of workspace {}/{} refused the session: {why}",
                ws.owner_name, ws.name
            ))
            .into_response();
        }
        Err(Dial::Unreachable(why)) => {
            count(&state, kind, "unavailable");
            return Error::Unavailable(format!(
                "the agent of workspace {}/{} cannot be reached at {addr}: {why}",
                ws.owner_name, ws.name
            ))
            .into_response();
        }
    };
    count(&state, kind, "opened");
    if p.user.id != ws.owner_id {
        tracing::warn!(admin = %p.user.username, workspace = %ws.id, %kind, "admin opened a session into another user's workspace");
    }
    let what = match port {
        Some(port) => format!("{kind} port {port}"),
        None => kind.to_string(),
    };
    if let Err(e) = state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "session.start",
            workspace_id: Some(&ws.id),
            detail: &what,
            ..AuditEvent::default()
        })
        .await
    {
        return e.into_response();
    }
    upgrade
        .max_message_size(1 << 24)
        .on_upgrade(move |socket| async move {
            run(state, p, ws, kind, port, what, socket, conn).await;
        })
        .into_response()
}

/// Why the agent could not be used.
enum Dial {
    /// It answered `error: …`.
    Refused(String),
    /// No connection or no answer.
    Unreachable(String),
}

/// Dials the agent's session port, sends the request line and reads the answer.
async fn dial(
    addr: &str,
    request: &SessionRequest,
) -> std::result::Result<BufReader<TcpStream>, Dial> {
    let stream = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Dial::Unreachable(e.to_string())),
        Err(_) => {
            return Err(Dial::Unreachable(format!(
                "no connection within {DIAL_TIMEOUT:?}"
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    let mut line = serde_json::to_vec(request).expect("a request serializes");
    line.push(b'\n');
    let answer = async {
        conn.get_mut().write_all(&line).await?;
        let mut answer = String::new();
        (&mut conn).take(1024).read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(Dial::Unreachable(e.to_string())),
        Err(_) => {
            return Err(Dial::Unreachable(format!(
                "no answer within {ANSWER_TIMEOUT:?}"
            )));
        }
    };
    let answer = answer.trim_end();
    if answer == ANSWER_OK {
        return Ok(conn);
    }
    match answer.strip_prefix("error: ") {
        Some(why) => Err(Dial::Refused(why.to_string())),
        None if answer.is_empty() => {
            Err(Dial::Unreachable("the agent closed the connection".into()))
        }
        None => Err(Dial::Unreachable(
            "the agent's answer is not the session protocol".into(),
        )),
    }
}

/// Byte counts of one session.
#[derive(Default)]
struct Bytes {
    to_workspace: AtomicU64,
    from_workspace: AtomicU64,
}

/// The open session: pumps, marks activity, and on the end audits and counts.
#[allow(clippy::too_many_arguments)]
async fn run(
    state: AppState,
    p: Principal,
    ws: WorkspaceRecord,
    kind: SessionKind,
    port: Option<u16>,
    what: String,
    socket: WebSocket,
    conn: BufReader<TcpStream>,
) {
    let started = Instant::now();
    let started_ms = now_ms();
    let open_gauge = state
        .metrics
        .sessions_open
        .get_or_create(&SessionLabels {
            kind: kind.as_str().into(),
            outcome: String::new(),
        })
        .clone();
    open_gauge.inc();
    state.sessions.touch(&ws.id);
    let bytes = Arc::new(Bytes::default());
    let pump = async {
        match kind {
            SessionKind::Terminal => pump_terminal(socket, conn, &bytes).await,
            _ => pump_raw(socket, conn, &bytes).await,
        }
    };
    tokio::pin!(pump);
    let mut tick = tokio::time::interval(ACTIVITY_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            () = &mut pump => break,
            _ = tick.tick() => state.sessions.touch(&ws.id),
        }
    }
    state.sessions.touch(&ws.id);
    open_gauge.dec();
    let to = bytes.to_workspace.load(Ordering::Relaxed);
    let from = bytes.from_workspace.load(Ordering::Relaxed);
    for (direction, n) in [("to_workspace", to), ("from_workspace", from)] {
        state
            .metrics
            .session_bytes
            .get_or_create(&SessionBytesLabels {
                kind: kind.as_str().into(),
                direction: direction.into(),
            })
            .inc_by(n);
    }
    let secs = started.elapsed().as_secs_f64();
    let detail = format!("{what}: {to} bytes to the workspace, {from} from it, {secs:.1}s");
    let after = serde_json::json!({
        "kind": kind,
        "port": port,
        "started_at": started_ms,
        "ended_at": now_ms(),
        "bytes_to_workspace": to,
        "bytes_from_workspace": from,
    })
    .to_string();
    tracing::info!(user = %p.user.username, workspace = %ws.id, %kind, port = ?port, to, from, "session ended");
    if let Err(e) = state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "session.end",
            workspace_id: Some(&ws.id),
            detail: &detail,
            after: Some(after),
            ..AuditEvent::default()
        })
        .await
    {
        tracing::warn!(error = %e, "recording the end of a session failed");
    }
}

/// SSH and TCP: binary messages one way, bytes the other; the client's close half-closes the
/// workspace side, which may still send for [`LINGER`].
async fn pump_raw<S: AsyncRead + AsyncWrite>(socket: WebSocket, conn: S, bytes: &Bytes) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let up = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                    bytes
                        .to_workspace
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        // Read straight into the message's buffer: no copy between the socket and the frame.
        let mut buf = bytes::BytesMut::new();
        loop {
            buf.reserve(RAW_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes.from_workspace.fetch_add(n as u64, Ordering::Relaxed);
                    if ws_tx
                        .send(Message::Binary(buf.split().freeze()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {
            // The workspace side is done; let the client's close arrive (or not).
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut up).await;
        }
        () = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
        }
    }
}

/// The terminal: binary messages ↔ data frames, a `resize` text message → a resize frame, and
/// the agent's exit frame → one `exit` text message, then close.
async fn pump_terminal<S: AsyncRead + AsyncWrite>(socket: WebSocket, conn: S, bytes: &Bytes) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let up = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let frame = match msg {
                Message::Binary(b) => {
                    bytes
                        .to_workspace
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    Frame::Data(b.to_vec())
                }
                Message::Text(t) => match serde_json::from_str::<TerminalControl>(t.as_str()) {
                    Ok(TerminalControl::Resize { rows, cols }) => Frame::Resize { rows, cols },
                    _ => continue,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&frame.encode()).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf: Vec<u8> = Vec::with_capacity(32 * 1024);
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match Frame::decode(&buf) {
                    Ok(Some((frame, used))) => {
                        buf.drain(..used);
                        let msg = match frame {
                            Frame::Data(d) => {
                                bytes
                                    .from_workspace
                                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                                Message::Binary(d.into())
                            }
                            Frame::Exit(code) => {
                                let text = serde_json::to_string(&TerminalControl::Exit { code })
                                    .expect("a control message serializes");
                                let _ = ws_tx.send(Message::Text(text.into())).await;
                                let _ = ws_tx.send(Message::Close(None)).await;
                                return;
                            }
                            Frame::Resize { .. } => continue,
                        };
                        if ws_tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad terminal frame from the agent");
                        let _ = ws_tx.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut up).await;
        }
        () = &mut up => {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut down).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(desired: DesiredState, status: WorkspaceStatus) -> WorkspaceRecord {
        WorkspaceRecord {
            id: "id-1".into(),
            owner_id: "u".into(),
            owner_name: "alice".into(),
            name: "dev".into(),
            pod_name: "coder-alice-dev".into(),
            desired_state: desired,
            status,
            status_reason: String::new(),
            created_at: 0,
            updated_at: 0,
            status_changed_at: 0,
            deleted_at: None,
        }
    }

    #[test]
    fn reachability_table() {
        use ConnectionStatus::*;
        use DesiredState as D;
        use WorkspaceStatus as S;
        let ip = Some("10.0.0.5".to_string());
        // (desired, status, pod ip, agent, expected status code or Ok)
        type Case = (
            D,
            S,
            Option<String>,
            Option<ConnectionStatus>,
            std::result::Result<&'static str, u16>,
        );
        let cases: Vec<Case> = vec![
            (
                D::Running,
                S::Running,
                ip.clone(),
                Some(Connected),
                Ok("10.0.0.5"),
            ),
            (
                D::Running,
                S::Starting,
                ip.clone(),
                Some(Connected),
                Ok("10.0.0.5"),
            ),
            (
                D::Running,
                S::Failed,
                ip.clone(),
                Some(Connected),
                Ok("10.0.0.5"),
            ),
            (D::Stopped, S::Stopped, None, None, Err(409)),
            (
                D::Stopped,
                S::Stopping,
                ip.clone(),
                Some(Connected),
                Err(409),
            ),
            (D::Running, S::Stopped, None, None, Err(409)),
            (
                D::Deleted,
                S::Deleting,
                ip.clone(),
                Some(Connected),
                Err(404),
            ),
            (D::Running, S::Pending, None, None, Err(503)),
            (
                D::Running,
                S::Running,
                ip.clone(),
                Some(Disconnected),
                Err(503),
            ),
            (D::Running, S::Starting, ip.clone(), None, Err(503)),
        ];
        for (i, (d, s, pod, agent, want)) in cases.into_iter().enumerate() {
            let got = reachable(&ws(d, s), pod, agent);
            match (got, want) {
                (Ok(ip), Ok(w)) => assert_eq!(ip, w, "case {i}"),
                (Err(e), Err(code)) => {
                    assert_eq!(e.status().as_u16(), code, "case {i}: {e}");
                    if code == 409 {
                        assert!(e.to_string().contains("start it first"), "{e}");
                        assert!(e.to_string().contains("alice/dev"), "{e}");
                    }
                }
                (got, want) => panic!("case {i}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn ports_and_sizes() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        for bad in ["0", "65536", "-1", "http", ""] {
            assert_eq!(parse_port(bad).unwrap_err().status().as_u16(), 400, "{bad}");
        }
        assert_eq!(terminal_size(None, None).unwrap(), (24, 80));
        assert_eq!(terminal_size(Some(50), Some(200)).unwrap(), (50, 200));
        assert!(terminal_size(Some(0), None).is_err());
        assert!(terminal_size(None, Some(1001)).is_err());
    }
}
