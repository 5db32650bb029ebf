//! `lumie ssh`: an SSH client (russh) over the server's SSH tunnel.
//!
//! The tunnel is the trust boundary: the server authenticated the user (session token over the
//! server's TLS) and authorised the workspace, and the workspace's SSH server accepts whoever
//! the tunnel brings. So the client takes the workspace's host key as it comes (it is new at
//! each start) and authenticates with `none`, falling back to an empty password.
//!
//! - a command with standard input not a terminal: `exec` without a PTY, stdout and stderr kept
//!   apart, the remote exit status returned;
//! - otherwise a PTY (`TERM`, the window size, raw mode locally, `window-change` on SIGWINCH)
//!   with the command, or the login shell without one;
//! - `--stdio`: the raw SSH byte stream on stdin/stdout, for OpenSSH's `ProxyCommand`.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, Handle};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::terminal;
use crate::tunnel::{self, Tunnel};

/// The client side's view of the server key: any (see the module docs).
pub struct TrustTheTunnel;

impl client::Handler for TrustTheTunnel {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// The remote command line for `lumie ssh WS -- ARGS…`: one argument is a shell command line as
/// typed (`'ls | wc -l'`), as OpenSSH passes it; several are quoted word by word so the remote
/// shell sees the same argv (`sh -c 'echo $((6*7))'` stays three words).
pub fn command_line(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        many => many
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// One word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `exec` without a PTY.
    Exec(String),
    /// `exec` in a PTY.
    ExecPty(String),
    /// The login shell in a PTY.
    Shell,
    /// The login shell without a PTY (input from a pipe or file).
    ShellNoPty,
}

/// The mode for a command (maybe none) and whether standard input is a terminal.
pub fn mode(command: &[String], stdin_tty: bool) -> Mode {
    match (command.is_empty(), stdin_tty) {
        (false, false) => Mode::Exec(command_line(command)),
        (false, true) => Mode::ExecPty(command_line(command)),
        (true, true) => Mode::Shell,
        (true, false) => Mode::ShellNoPty,
    }
}

/// Connects SSH over an open tunnel and authenticates as `user`.
pub async fn connect(tunnel: Tunnel, name: &str, user: &str) -> Result<Handle<TrustTheTunnel>> {
    let ssh_err = |cause: String| Error::Ssh {
        name: name.to_string(),
        cause,
    };
    // russh wants one byte stream: an in-memory pipe, its far end pumped to the tunnel.
    let (near, far) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (r, w) = tokio::io::split(far);
        let _ = tunnel::pump(tunnel, r, w).await;
    });
    let config = client::Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        window_size: 8 << 20,
        ..Default::default()
    };
    let mut handle = client::connect_stream(Arc::new(config), near, TrustTheTunnel)
        .await
        .map_err(|e| ssh_err(format!("the SSH handshake failed: {e}")))?;
    let auth = handle
        .authenticate_none(user)
        .await
        .map_err(|e| ssh_err(format!("authenticating: {e}")))?;
    if !auth.success() {
        let auth = handle
            .authenticate_password(user, "")
            .await
            .map_err(|e| ssh_err(format!("authenticating: {e}")))?;
        if !auth.success() {
            return Err(ssh_err(
                "the workspace's SSH server refused the session (it should accept any client \
                 the server's tunnel brings: is the agent current?)"
                    .into(),
            ));
        }
    }
    Ok(handle)
}

/// Runs a session in `mode`; the remote exit status (255 when there is none, as OpenSSH).
pub async fn run(handle: Handle<TrustTheTunnel>, name: &str, mode: Mode) -> Result<u8> {
    let ssh_err = |cause: String| Error::Ssh {
        name: name.to_string(),
        cause,
    };
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| ssh_err(format!("opening a session: {e}")))?;
    let pty = matches!(mode, Mode::Shell | Mode::ExecPty(_));
    if pty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        let (cols, rows) = terminal::window_size().unwrap_or((80, 24));
        channel
            .request_pty(false, &term, cols, rows, 0, 0, &[])
            .await
            .map_err(|e| ssh_err(format!("asking for a terminal: {e}")))?;
    }
    if let Ok(lang) = std::env::var("LANG") {
        let _ = channel.set_env(false, "LANG", lang).await;
    }
    match &mode {
        Mode::Exec(c) | Mode::ExecPty(c) => channel.exec(true, c.as_bytes()).await,
        Mode::Shell | Mode::ShellNoPty => channel.request_shell(true).await,
    }
    .map_err(|e| ssh_err(format!("starting the command: {e}")))?;

    let raw = if pty && terminal::stdin_is_tty() {
        Some(terminal::RawMode::enable()?)
    } else {
        None
    };
    let (mut reader, writer) = channel.split();
    let writer = Arc::new(writer);

    // Standard input to the channel; its end is the remote's end of input.
    let input = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = bytes::BytesMut::with_capacity(32 * 1024);
            loop {
                buf.clear();
                match tokio::io::AsyncReadExt::read_buf(&mut stdin, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if writer.data_bytes(buf.split().freeze()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = writer.eof().await;
        })
    };
    // Window changes.
    let resize = pty.then(|| {
        let writer = writer.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = terminal::window_size()
                    && writer.window_change(cols, rows, 0, 0).await.is_err()
                {
                    return;
                }
            }
        })
    });

    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut status: Option<u8> = None;
    let mut signal: Option<String> = None;
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if stdout.write_all(&data).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                let _ = stderr.write_all(&data).await;
                let _ = stderr.flush().await;
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some((exit_status & 0xff) as u8),
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                signal = Some(
                    format!("{signal_name:?} {error_message}")
                        .trim()
                        .to_string(),
                );
            }
            ChannelMsg::Failure => {
                drop(raw);
                return Err(ssh_err(
                    "the workspace's SSH server refused the request".into(),
                ));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = stdout.flush().await;
    drop(raw);
    input.abort();
    if let Some(r) = resize {
        r.abort();
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    match (status, signal) {
        (Some(s), _) => Ok(s),
        (None, Some(sig)) => {
            eprintln!("lumie: the remote command was killed by signal {sig}");
            Ok(255)
        }
        (None, None) => {
            eprintln!("lumie: the session to {name} ended without an exit status");
            Ok(255)
        }
    }
}

/// `--stdio`: the tunnel's bytes on standard input and output, nothing else on stdout.
pub async fn stdio(tunnel: Tunnel) -> Result<()> {
    tunnel::pump(tunnel, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map(|_| ())
        .map_err(Error::io("carrying the SSH stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_lines_keep_argv() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["sh", "-c", "echo $((6*7)); exit 3"],
                "sh -c 'echo $((6*7)); exit 3'",
            ),
            (&["ls | wc -l"], "ls | wc -l"),
            (&["echo", "it's"], r"echo 'it'\''s'"),
            (&["printf", ""], "printf ''"),
            (&["cat", "/etc/os-release"], "cat /etc/os-release"),
        ];
        for (args, want) in cases {
            assert_eq!(command_line(&v(args)), *want, "{args:?}");
        }
    }

    #[test]
    fn modes_follow_the_command_and_the_terminal() {
        let cmd = v(&["true"]);
        assert_eq!(mode(&cmd, false), Mode::Exec("true".into()));
        assert_eq!(mode(&cmd, true), Mode::ExecPty("true".into()));
        assert_eq!(mode(&[], true), Mode::Shell);
        assert_eq!(mode(&[], false), Mode::ShellNoPty);
    }
}
