//! The `lumie` binary against a minimal peer of the session protocol, so the CLI's half of it is
//! checked on its own: a small axum app answering the two REST calls `ssh` and `port-forward`
//! make and the two WebSocket routes (`…/sessions/ssh` bridged to a russh SSH server that runs
//! `exec` requests with `sh -c`, `…/sessions/tcp/{port}` bridged to 127.0.0.1:{port}), with the
//! server's token and error rules (401 without the token, 409 JSON for a stopped workspace).
//!
//! The end-to-end tests with the real server and agent are `tests/tests/cli_sessions.rs`; this
//! peer only stands in for what the CLI expects of them.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

const TOKEN: &str = "peer-token";

fn workspace_json(name: &str) -> serde_json::Value {
    let status = if name == "parked" {
        "stopped"
    } else {
        "running"
    };
    serde_json::json!({
        "id": format!("id-{name}"), "owner_name": "alice", "name": name,
        "status": status, "status_reason": "", "apps": []
    })
}

/// The 401 the server answers without the right token, or `None` when it is there.
fn refused(h: &HeaderMap) -> Option<Response> {
    match h.get("coder-session-token").and_then(|v| v.to_str().ok()) {
        Some(TOKEN) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"message": "no session token"})),
            )
                .into_response(),
        ),
    }
}

async fn get_workspace(h: HeaderMap, Path((_, name)): Path<(String, String)>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    if name == "nope" {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": "workspace me/nope not found"})),
        )
            .into_response();
    }
    axum::Json(workspace_json(&name)).into_response()
}

async fn ssh_route(h: HeaderMap, Path(id): Path<String>, ws: WebSocketUpgrade) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    if h.contains_key("origin") {
        return StatusCode::FORBIDDEN.into_response();
    }
    if id == "id-stopped" {
        return (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"message": "workspace alice/stopped is stopped"})),
        )
            .into_response();
    }
    ws.on_upgrade(|socket| async move {
        let (near, far) = tokio::io::duplex(1 << 16);
        let config = Arc::new(server::Config {
            keys: vec![
                russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                    .unwrap(),
            ],
            ..Default::default()
        });
        tokio::spawn(async move {
            if let Ok(session) = server::run_stream(config, far, Sshd::default()).await {
                let _ = session.await;
            }
        });
        bridge(socket, near).await;
    })
}

async fn tcp_route(
    h: HeaderMap,
    Path((_, port)): Path<(String, u16)>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    ws.on_upgrade(move |socket| async move {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            bridge(socket, tcp).await;
        }
    })
}

/// Binary messages ↔ a byte stream, until either side ends.
async fn bridge<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut ws: WebSocket,
    stream: S,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() { break },
            },
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => if w.write_all(&b).await.is_err() { break },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

/// An SSH server that accepts anyone, runs `exec` requests with `sh -c`, and a shell
/// (`sh -i` as a session leader on a PTY) after a `pty-req`.
#[derive(Default, Clone)]
struct Sshd {
    stdin: Arc<Mutex<HashMap<ChannelId, tokio::process::ChildStdin>>>,
    /// A channel's PTY size before the shell starts, then its master (for input and resizes).
    ptys: Arc<Mutex<HashMap<ChannelId, Pty>>>,
}

struct Pty {
    size: rustix::termios::Winsize,
    master: Option<std::fs::File>,
}

fn winsize(cols: u32, rows: u32) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows as u16,
        ws_col: cols as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl server::Handler for Sshd {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(russh::Error::IO)?;
        self.stdin
            .lock()
            .await
            .insert(channel, child.stdin.take().unwrap());
        session.channel_success(channel)?;
        let handle = session.handle();
        tokio::spawn(async move {
            let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
            let h2 = handle.clone();
            let errs = tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n @ 1..) = err.read(&mut buf).await {
                    let _ = h2.extended_data(channel, 1, buf[..n].to_vec()).await;
                }
            });
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buf).await {
                let _ = handle.data(channel, buf[..n].to_vec()).await;
            }
            let _ = errs.await;
            let code = child
                .wait()
                .await
                .ok()
                .and_then(|s| s.code())
                .unwrap_or(255);
            let _ = handle.exit_status_request(channel, code as u32).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ptys.lock().await.insert(
            channel,
            Pty {
                size: winsize(cols, rows),
                master: None,
            },
        );
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let mut ptys = self.ptys.lock().await;
        let Some(pty) = ptys.get_mut(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let io = |e: rustix::io::Errno| russh::Error::IO(e.into());
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).map_err(io)?;
        grantpt(&master).map_err(io)?;
        unlockpt(&master).map_err(io)?;
        rustix::termios::tcsetwinsize(&master, pty.size).map_err(io)?;
        let name = ptsname(&master, Vec::new()).map_err(io)?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .map_err(russh::Error::IO)?;
        // `setsid -c`: a new session with the PTY as its controlling terminal, like sshd.
        let mut child = tokio::process::Command::new("setsid")
            .args(["-c", "sh", "-i"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PS1", "peer$ ")
            .env("TERM", "xterm")
            .stdin(slave.try_clone().map_err(russh::Error::IO)?)
            .stdout(slave.try_clone().map_err(russh::Error::IO)?)
            .stderr(slave)
            .spawn()
            .map_err(russh::Error::IO)?;
        let master = std::fs::File::from(master);
        pty.master = Some(master.try_clone().map_err(russh::Error::IO)?);
        session.channel_success(channel)?;
        let handle = session.handle();
        // A thread of its own reads the master (a blocking read a runtime must not wait for).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut master = master;
            let mut buf = vec![0u8; 8192];
            // EIO once the shell and everything it started have exited.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let _ = handle.data(channel, chunk).await;
            }
            let code = child
                .wait()
                .await
                .ok()
                .and_then(|s| s.code())
                .unwrap_or(255);
            let _ = handle.exit_status_request(channel, code as u32).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Pty {
            master: Some(m), ..
        }) = self.ptys.lock().await.get(&channel)
        {
            let _ = rustix::termios::tcsetwinsize(m, winsize(cols, rows));
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(stdin) = self.stdin.lock().await.get_mut(&channel) {
            let _ = stdin.write_all(data).await;
        } else if let Some(Pty {
            master: Some(m), ..
        }) = self.ptys.lock().await.get_mut(&channel)
        {
            use std::io::Write;
            let _ = m.write_all(data);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.stdin.lock().await.remove(&channel);
        Ok(())
    }
}

async fn peer() -> String {
    let app = Router::new()
        .route("/api/v2/users/{user}/workspace/{name}", get(get_workspace))
        .route("/api/v2/workspaces/{id}/sessions/ssh", get(ssh_route))
        .route(
            "/api/v2/workspaces/{id}/sessions/tcp/{port}",
            get(tcp_route),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn lumie(url: &str, token: &str, home: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_lumie"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LUMIE_URL", url)
        .env("LUMIE_SESSION_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn run(
    mut c: tokio::process::Command,
    input: Option<&[u8]>,
) -> (Option<i32>, String, String) {
    if input.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().unwrap();
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(bytes).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("lumie finishes")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_exec_streams_and_exit_status_through_the_tunnel() {
    let url = peer().await;
    let home = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = lumie(&url, TOKEN, home.path());
        c.args(args);
        c
    };
    let (code, out, err) = run(
        cmd(&["ssh", "dev", "--", "sh", "-c", "echo $((6*7)); exit 3"]),
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(3), "42\n"), "{err}");
    let (code, out, err) = run(
        cmd(&["ssh", "dev", "--", "sh", "-c", "echo out; echo err >&2"]),
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(0), "out\n"), "{err}");
    assert!(err.contains("err"), "{err}");
    let input = vec![b'x'; 300_000];
    let (code, out, err) = run(cmd(&["ssh", "dev", "--", "wc -c"]), Some(&input)).await;
    assert_eq!((code, out.trim()), (Some(0), "300000"), "{err}");

    // Refusals before the upgrade become the CLI's sentences.
    let (code, _, err) = run(cmd(&["ssh", "stopped", "--", "true"]), None).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("run `lumie start stopped`") && err.contains("is stopped"),
        "{err}"
    );
    let (_, _, err) = run(cmd(&["ssh", "nope", "--", "true"]), None).await;
    assert!(err.contains("no workspace nope"), "{err}");
    let (_, _, err) = run(cmd(&["ssh", "parked", "--", "true"]), None).await;
    assert!(err.contains("run `lumie start parked`"), "{err}");
    let mut bad = lumie(&url, "wrong", home.path());
    bad.args(["ssh", "dev", "--", "true"]);
    let (_, _, err) = run(bad, None).await;
    assert!(
        err.contains("refused the session token") && err.contains(&format!("lumie login {url}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_lumie_ssh_stdio() {
    let url = peer().await;
    let home = tempfile::tempdir().unwrap();
    let proxy = format!(
        "env LUMIE_URL={url} LUMIE_SESSION_TOKEN={TOKEN} HOME={} {} ssh --stdio dev",
        home.path().display(),
        env!("CARGO_BIN_EXE_lumie")
    );
    let out = tokio::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .args(["lumie.dev", "echo via-openssh; exit 4"])
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ssh (openssh-client) is installed: scripts/install-deps.sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-openssh\n",
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_bytes_both_ways_per_connection() {
    let url = peer().await;
    let home = tempfile::tempdir().unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = lumie(&url, TOKEN, home.path());
    c.args(["port-forward", "dev", "--tcp", &format!("{local}:{remote}")]);
    let mut child = c.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert_eq!(
        first,
        format!("Forwarding 127.0.0.1:{local} → dev:{remote}")
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        tasks.spawn(async move {
            let payload: Vec<u8> = (0..1_000_000u32).map(|j| (j as u8) ^ i).collect();
            let s = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .unwrap();
            let (mut r, mut w) = s.into_split();
            let p = payload.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&p).await.unwrap();
                w
            });
            let mut got = vec![0u8; payload.len()];
            r.read_exact(&mut got).await.unwrap();
            drop(writer.await.unwrap());
            assert!(got == payload, "connection {i}");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    child.kill().await.unwrap();
}

fn tmux(args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed: scripts/install-deps.sh");
    assert!(out.status.success(), "tmux {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until_pane(session: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pane = tmux(&["capture-pane", "-p", "-t", session]);
        if check(&pane) {
            return pane;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} in the pane:\n{pane}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// `lumie ssh dev` in a real terminal (tmux): raw mode, the PTY's size, a resize (SIGWINCH →
/// window-change), and the shell's exit status as lumie's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_in_a_terminal_with_resize_and_exit_status() {
    let url = peer().await;
    let home = tempfile::tempdir().unwrap();
    let status = home.path().join("status");
    let session = format!("lumie-peer-{}", std::process::id());
    let command = format!(
        "env -i PATH=\"$PATH\" HOME='{home}' TERM=xterm LUMIE_URL={url} LUMIE_SESSION_TOKEN={TOKEN} '{lumie}' ssh dev; echo \"exit=$?\" > '{status}'; sleep 30",
        home = home.path().display(),
        lumie = env!("CARGO_BIN_EXE_lumie"),
        status = status.display(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    let _cleanup = KillSession(session.clone());
    until_pane(&session, "prompt", |p| p.contains("peer$")).await;
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "stty size; echo hello-$((40+2))",
        "Enter",
    ]);
    until_pane(&session, "the size and output", |p| {
        p.contains("30 100") && p.contains("hello-42")
    })
    .await;
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "40"]);
    tmux(&["send-keys", "-t", &session, "stty size", "Enter"]);
    until_pane(&session, "the new size", |p| p.contains("40 120")).await;
    tmux(&["send-keys", "-t", &session, "exit 7", "Enter"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&status).unwrap_or_default().trim() != "exit=7" {
        assert!(
            std::time::Instant::now() < deadline,
            "lumie ssh did not end with the shell's status:\n{}",
            tmux(&["capture-pane", "-p", "-t", &session])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
