//! The agent's SSH server (russh) on a session connection the control plane opened with a
//! ticket: any client authentication is accepted (the tunnel is authorised already, as with
//! Coder's agent). Session channels offer `exec` (stdout and stderr apart, the exit status),
//! `shell` with `pty-req` and `window-change`, `env`, and the `sftp` subsystem; `direct-tcpip`
//! channels reach ports inside the pod (IDE remote development forwards through them).

use std::sync::Arc;
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::{ShellInfo, exit_code};
use super::sftp::Sftp;

/// How long output may still drain after the process exited (a background job holding the
/// terminal or a pipe open must not keep the session from ending).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// The SSH server settings: an Ed25519 host key made at agent start.
pub fn config() -> russh::server::Config {
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    russh::server::Config {
        keys: vec![russh::keys::PrivateKey::from(key)],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

/// One SSH connection.
pub struct Handler {
    /// The shell sessions run.
    pub shell: Arc<ShellInfo>,
    /// Address of `direct-tcpip` targets named `localhost`.
    pub app_host: std::net::IpAddr,
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(session_channel(
            channel,
            self.shell.clone(),
            session.handle(),
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let host = match host_to_connect {
            "localhost" | "127.0.0.1" | "::1" | "" => self.app_host.to_string(),
            other => other.to_string(),
        };
        let Ok(port) = u16::try_from(port_to_connect) else {
            return Ok(());
        };
        match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(mut tcp) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                });
            }
            Err(e) => {
                tracing::debug!(%host, port, error = %e, "direct-tcpip target refused");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The terminal a `pty-req` asked for.
struct PtyWanted {
    term: String,
    rows: u16,
    cols: u16,
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX).max(1)
}

/// A session channel: collects `pty-req` and `env`, then runs what `exec`, `shell` or the
/// `sftp` subsystem asks for. (The handler above has already answered each request.)
async fn session_channel(
    mut channel: Channel<Msg>,
    shell: Arc<ShellInfo>,
    session: russh::server::Handle,
) {
    let mut env: Vec<(String, String)> = vec![];
    let mut pty: Option<PtyWanted> = None;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                pty = Some(PtyWanted {
                    term,
                    rows: clamp(row_height),
                    cols: clamp(col_width),
                })
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => env.push((variable_name, variable_value)),
            Some(ChannelMsg::Exec { command, .. }) => {
                let command = String::from_utf8_lossy(&command).into_owned();
                return run(channel, &shell, Some(command), env, pty).await;
            }
            Some(ChannelMsg::RequestShell { .. }) => {
                return run(channel, &shell, None, env, pty).await;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                let sftp = Sftp::new(shell.home.clone());
                let id = channel.id();
                let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
                let stream = EofSignal {
                    inner: channel.into_stream(),
                    eof: Some(eof_tx),
                };
                russh_sftp::server::run(stream, sftp).await;
                // The client is done (EOF): end as OpenSSH's sftp-server does, with status 0,
                // which `scp` reports as its own.
                if eof_rx.await.is_ok() {
                    let _ = session.exit_status_request(id, 0).await;
                    let _ = session.eof(id).await;
                    let _ = session.close(id).await;
                }
                return;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

/// Runs a command (or the login shell) for a channel and reports its exit status.
async fn run(
    channel: Channel<Msg>,
    shell: &ShellInfo,
    command: Option<String>,
    env: Vec<(String, String)>,
    pty: Option<PtyWanted>,
) {
    let (mut rx, tx) = channel.split();
    let code = match pty {
        Some(p) => {
            let spawned = shell.spawn_pty(command.as_deref(), &p.term, p.rows, p.cols, &env);
            let (pty, mut child) = match spawned {
                Ok(x) => x,
                Err(e) => return fail(&tx, &e).await,
            };
            let (mut pty_r, mut pty_w) = pty.into_split();
            let mut out = tx.make_writer();
            let mut output = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = pty_r.read(&mut buf).await {
                    if n == 0 || out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = out.flush().await;
            });
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status.ok(),
                    msg = rx.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if pty_w.write_all(&data).await.is_err() {
                                break None;
                            }
                        }
                        Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                            let _ = pty_w.resize(pty_process::Size::new(clamp(row_height), clamp(col_width)));
                        }
                        Some(ChannelMsg::Close) | None => break None,
                        Some(_) => {}
                    },
                }
            };
            let status = match status {
                Some(s) => Some(s),
                None => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut output)
                .await
                .is_err()
            {
                output.abort();
            }
            status.map(exit_code).unwrap_or(255)
        }
        None => {
            let mut child = match shell.spawn_pipes(command.as_deref(), &env) {
                Ok(c) => c,
                Err(e) => return fail(&tx, &e).await,
            };
            let mut stdin = child.stdin.take();
            let copy =
                |from: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
                 mut to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>| {
                    tokio::spawn(async move {
                        if let Some(mut from) = from {
                            let _ = tokio::io::copy(&mut from, &mut to).await;
                        }
                        let _ = to.flush().await;
                    })
                };
            let mut out = copy(
                child.stdout.take().map(|s| Box::new(s) as _),
                Box::new(tx.make_writer()),
            );
            let mut err = copy(
                child.stderr.take().map(|s| Box::new(s) as _),
                Box::new(tx.make_writer_ext(Some(1))),
            );
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status.ok(),
                    msg = rx.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if let Some(s) = stdin.as_mut()
                                && s.write_all(&data).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        Some(ChannelMsg::Eof) => stdin = None,
                        Some(ChannelMsg::Close) | None => break None,
                        Some(_) => {}
                    },
                }
            };
            drop(stdin);
            let status = match status {
                Some(s) => Some(s),
                None => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            for task in [&mut out, &mut err] {
                if tokio::time::timeout(DRAIN_AFTER_EXIT * 4, &mut *task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
            status.map(exit_code).unwrap_or(255)
        }
    };
    let _ = tx.exit_status(code as u32).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

async fn fail(tx: &russh::ChannelWriteHalf<Msg>, e: &std::io::Error) {
    tracing::warn!(error = %e, "starting the session's shell failed");
    let _ = tx
        .extended_data_bytes(1, format!("lumie-agent: cannot start the shell: {e}\r\n"))
        .await;
    let _ = tx.exit_status(127).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// A stream that says when its reading side reached EOF (the SFTP server runs in a task of its
/// own and says nothing when it ends).
struct EofSignal<S> {
    inner: S,
    eof: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofSignal<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let at_eof = matches!(r, std::task::Poll::Ready(Ok(()))) && buf.filled().len() == before;
        if (at_eof && buf.remaining() > 0 || matches!(r, std::task::Poll::Ready(Err(_))))
            && let Some(tx) = self.eof.take()
        {
            let _ = tx.send(());
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EofSignal<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
