//! Clients of the server's session routes (`/api/v2/workspaces/{id}/sessions/…`), as the CLI
//! uses them: a WebSocket with the `Coder-Session-Token` header and no `Origin`, turned into a
//! byte pipe (binary messages both ways), and an SSH client (russh) over such a pipe.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket to a session route.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `http://…` → `ws://…` (and https → wss).
pub fn ws_url(http_url: &str) -> String {
    http_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1)
}

/// Opens a session WebSocket at `url` (http or ws scheme) with `token`. A refusal before the
/// upgrade comes back as `tungstenite::Error::Http` with the JSON body.
pub async fn connect(url: &str, token: &str) -> Result<Socket, Box<tungstenite::Error>> {
    let mut req = ws_url(url).into_client_request().map_err(Box::new)?;
    req.headers_mut().insert(
        "Coder-Session-Token",
        token.parse().expect("a token is a header value"),
    );
    // Without Nagle, as the CLI should: keystrokes and small SSH packets go out at once.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .map_err(Box::new)?;
    Ok(socket)
}

/// The status and body of a refusal before the upgrade.
pub fn refusal(e: &tungstenite::Error) -> Option<(u16, String)> {
    match e {
        tungstenite::Error::Http(resp) => Some((
            resp.status().as_u16(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        _ => None,
    }
}

/// Pumps a socket against a reader and a writer until either side ends: binary messages to
/// `to`, bytes from `from` as binary messages. Returns when the socket closes (or `from`
/// reaches EOF, after which the socket is closed).
pub async fn pipe<R, W>(socket: Socket, mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let down = async {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(b) => {
                    if to.write_all(&b).await.is_err() {
                        break;
                    }
                    let _ = to.flush().await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to.shutdown().await;
    };
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// The socket as an in-memory byte stream (a pumping task runs until either end closes).
pub fn into_stream(socket: Socket) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (r, w) = tokio::io::split(theirs);
        pipe(socket, r, w).await;
    });
    ours
}

/// An SSH client that trusts any host key (the tunnel is the control plane's).
pub struct TrustingClient;

impl russh::client::Handler for TrustingClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An SSH connection over a session socket, authenticated with `none` as user `user`.
pub async fn ssh(
    socket: Socket,
    user: &str,
) -> Result<russh::client::Handle<TrustingClient>, russh::Error> {
    let config = Arc::new(russh::client::Config::default());
    let mut handle =
        russh::client::connect_stream(config, into_stream(socket), TrustingClient).await?;
    match handle.authenticate_none(user).await? {
        russh::client::AuthResult::Success => Ok(handle),
        other => panic!("the agent's SSH server refused `none` authentication: {other:?}"),
    }
}

/// What an `exec` printed and how it ended.
#[derive(Debug, Default)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit status.
    pub status: Option<u32>,
}

/// Runs `command` on a new channel of `handle`.
pub async fn exec(
    handle: &russh::client::Handle<TrustingClient>,
    command: &str,
) -> Result<ExecOutput, russh::Error> {
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    let mut out = ExecOutput::default();
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok(out)
}
