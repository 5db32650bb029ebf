//! Sessions the control plane opens on the agent's session port
//! ([`lumie_contract::workspace::SESSION_PORT`] on the pod IP): a connection sends one JSON line
//! ([`SessionRequest`]) with a ticket, the agent answers `ok` or `error: …`, then carries raw
//! bytes (`ssh` to the built-in SSH server, `tcp` to a port inside the pod) or terminal frames
//! (`terminal`: the login shell on a PTY). See [`lumie_contract::sessions`] for the protocol.
//!
//! - [`ticket`]: ticket verification (pure);
//! - [`process`]: starting the shell (PTY or pipes);
//! - [`ssh`]: the SSH server; [`sftp`]: its `sftp` subsystem.

pub mod process;
pub mod sftp;
pub mod ssh;
pub mod ticket;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumie_contract::agent_api::HeartbeatResponse;
use lumie_contract::sessions::{ANSWER_OK, Frame, MAX_REQUEST_LINE, SessionKind, SessionRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use process::{ShellInfo, exit_code};
use ticket::Verifier;

/// How long a connection may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a port inside the pod may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sessions open at once; more are refused.
pub const MAX_SESSIONS: usize = 1024;
/// Terminal size when the request names none.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// The session endpoint's state: the ticket verifier (keys from heartbeat answers), the SSH
/// server settings (host key) and the shell sessions run.
pub struct Sessions {
    verifier: Mutex<Verifier>,
    ssh: Arc<russh::server::Config>,
    shell: Arc<ShellInfo>,
    app_host: IpAddr,
    open: AtomicUsize,
}

impl Sessions {
    /// Sessions to `app_host` ports (the pod's loopback), with a fresh SSH host key.
    pub fn new(app_host: IpAddr) -> Sessions {
        Sessions {
            verifier: Mutex::new(Verifier::default()),
            ssh: Arc::new(ssh::config()),
            shell: Arc::new(ShellInfo::detect()),
            app_host,
            open: AtomicUsize::new(0),
        }
    }

    /// Takes the keys and workspace id of a heartbeat answer.
    pub fn update(&self, answer: &HeartbeatResponse) {
        let mut v = self.verifier.lock().expect("verifier lock");
        let was_ready = v.ready();
        if v.update(&answer.session_keys, answer.workspace_id.as_deref()) {
            tracing::info!(
                keys = answer.session_keys.len(),
                "session keys {}",
                if was_ready { "rotated" } else { "received" }
            );
        }
    }

    /// Accepts session connections until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a session connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                if me.open.fetch_add(1, Ordering::Relaxed) >= MAX_SESSIONS {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"error: too many sessions open on this agent\n")
                        .await;
                } else if let Err(e) = me.clone().handle(stream, peer).await {
                    tracing::debug!(%peer, error = %e, "session ended with an error");
                }
                me.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut stream)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return refuse(&mut stream, peer, None, &e.to_string()).await,
            Err(_) => return refuse(&mut stream, peer, None, "no request within 10s").await,
        };
        let req: SessionRequest = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                return refuse(&mut stream, peer, None, &format!("malformed request: {e}")).await;
            }
        };
        let now = unix_now();
        let verdict = self
            .verifier
            .lock()
            .expect("verifier lock")
            .verify(&req, now);
        let claims = match verdict {
            Ok(c) => c,
            Err(refusal) => {
                return refuse(&mut stream, peer, Some(req.kind), &refusal.to_string()).await;
            }
        };
        tracing::info!(%peer, kind = %req.kind, port = ?req.port, ticket_id = %claims.id, "session opened");
        match req.kind {
            SessionKind::Tcp => {
                let port = req.port.unwrap_or_default();
                let target = SocketAddr::new(self.app_host, port);
                let mut upstream =
                    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            let msg = format!(
                                "error: nothing answers on port {port} in the workspace ({e})\n"
                            );
                            stream.write_all(msg.as_bytes()).await?;
                            return Ok(());
                        }
                        Err(_) => {
                            let msg = format!(
                                "error: connecting to port {port} in the workspace timed out\n"
                            );
                            stream.write_all(msg.as_bytes()).await?;
                            return Ok(());
                        }
                    };
                let _ = upstream.set_nodelay(true);
                stream
                    .write_all(format!("{ANSWER_OK}\n").as_bytes())
                    .await?;
                tokio::io::copy_bidirectional_with_sizes(
                    &mut stream,
                    &mut upstream,
                    256 * 1024,
                    256 * 1024,
                )
                .await?;
            }
            SessionKind::Ssh => {
                stream
                    .write_all(format!("{ANSWER_OK}\n").as_bytes())
                    .await?;
                let handler = ssh::Handler {
                    shell: self.shell.clone(),
                    app_host: self.app_host,
                };
                let running = russh::server::run_stream(self.ssh.clone(), stream, handler)
                    .await
                    .map_err(std::io::Error::other)?;
                running.await.map_err(std::io::Error::other)?;
            }
            SessionKind::Terminal => {
                let (rows, cols) = (
                    req.rows.unwrap_or(DEFAULT_SIZE.0),
                    req.cols.unwrap_or(DEFAULT_SIZE.1),
                );
                let spawned = self
                    .shell
                    .spawn_pty(None, "xterm-256color", rows, cols, &[]);
                let (pty, child) = match spawned {
                    Ok(x) => x,
                    Err(e) => {
                        let msg = format!("error: cannot start the shell: {e}\n");
                        stream.write_all(msg.as_bytes()).await?;
                        return Ok(());
                    }
                };
                stream
                    .write_all(format!("{ANSWER_OK}\n").as_bytes())
                    .await?;
                run_terminal(stream, pty, child).await?;
            }
        }
        tracing::info!(%peer, kind = %req.kind, ticket_id = %claims.id, "session closed");
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Refuses a connection: logged (without the ticket) and answered with the reason.
async fn refuse(
    stream: &mut TcpStream,
    peer: SocketAddr,
    kind: Option<SessionKind>,
    why: &str,
) -> std::io::Result<()> {
    tracing::warn!(%peer, kind = kind.map(|k| k.as_str()), reason = why, "session refused");
    stream
        .write_all(format!("error: {why}\n").as_bytes())
        .await?;
    stream.shutdown().await
}

/// Reads the request line. The server sends nothing more before the answer, so bytes after the
/// newline are a protocol error.
async fn read_line(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the request line",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            if i + 1 != buf.len() {
                return Err(std::io::Error::other(
                    "bytes after the request line before the answer",
                ));
            }
            buf.truncate(i);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST_LINE {
            return Err(std::io::Error::other("request line too long"));
        }
    }
}

/// A terminal session: PTY bytes out as data frames, data and resize frames in; when the shell
/// ends, an exit frame with its code.
pub async fn run_terminal<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    pty: pty_process::Pty,
    mut child: tokio::process::Child,
) -> std::io::Result<()> {
    let (mut net_r, mut net_w) = tokio::io::split(stream);
    let (mut pty_r, mut pty_w) = pty.into_split();
    let mut inbuf: Vec<u8> = Vec::new();
    let mut netbuf = vec![0u8; 16 * 1024];
    let mut ptybuf = vec![0u8; 16 * 1024];
    let mut status = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut net_open = true;
    loop {
        let drain = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = pty_r.read(&mut ptybuf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => net_w.write_all(&Frame::Data(ptybuf[..n].to_vec()).encode()).await?,
            },
            r = net_r.read(&mut netbuf), if net_open => match r {
                Ok(0) | Err(_) => {
                    net_open = false;
                    let _ = child.start_kill();
                }
                Ok(n) => {
                    inbuf.extend_from_slice(&netbuf[..n]);
                    loop {
                        match Frame::decode(&inbuf) {
                            Ok(Some((frame, used))) => {
                                inbuf.drain(..used);
                                match frame {
                                    Frame::Data(d) => pty_w.write_all(&d).await?,
                                    Frame::Resize { rows, cols } => {
                                        let _ = pty_w.resize(pty_process::Size::new(rows.max(1), cols.max(1)));
                                    }
                                    Frame::Exit(_) => {}
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let _ = child.start_kill();
                                return Err(std::io::Error::other(e));
                            }
                        }
                    }
                }
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map(exit_code).unwrap_or(255));
                drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
            () = drain => break,
        }
    }
    let code = match status {
        Some(c) => c,
        None => {
            if !net_open {
                let _ = child.start_kill();
            }
            child.wait().await.map(exit_code).unwrap_or(255)
        }
    };
    if net_open {
        net_w.write_all(&Frame::Exit(code).encode()).await?;
        net_w.flush().await?;
        let _ = net_w.shutdown().await;
    }
    Ok(())
}
