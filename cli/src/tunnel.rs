//! The WebSocket tunnels to a workspace through the server (`/api/v2/workspaces/{id}/sessions/
//! ssh` and `…/tcp/{port}`): opening one with the session token in `Coder-Session-Token` and no
//! `Origin` (so the server's browser Origin rule does not apply), turning an answer before the
//! upgrade into the CLI's error (404 no such workspace, 409 stopped, 503 agent not connected),
//! and pumping bytes between a tunnel and a local reader/writer: each binary message is raw
//! bytes of the stream, both ways.

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::TOKEN_HEADER;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::wire::error_message;

/// A connected tunnel.
pub type Tunnel = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How much one message carries at most (a read from the local side).
pub const CHUNK: usize = 64 * 1024;

/// Which session route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The workspace's SSH server.
    Ssh,
    /// A TCP port inside the workspace (127.0.0.1 there).
    Tcp(u16),
}

/// The `ws://`/`wss://` URL of a session route.
pub fn url(base: &str, workspace_id: &str, route: Route) -> String {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    match route {
        Route::Ssh => format!("{ws_base}/api/v2/workspaces/{workspace_id}/sessions/ssh"),
        Route::Tcp(port) => {
            format!("{ws_base}/api/v2/workspaces/{workspace_id}/sessions/tcp/{port}")
        }
    }
}

/// The error for an answer that was not an upgrade, by status.
pub fn refusal(name: &str, what: &str, status: u16, body: &[u8]) -> Error {
    let message = error_message(status, body);
    match status {
        401 => Error::Unauthorized {
            url: String::new(),
            message,
        },
        404 => Error::NoSuchWorkspace {
            name: name.into(),
            message,
        },
        409 => Error::WorkspaceStopped {
            name: name.into(),
            message,
        },
        503 => Error::AgentNotConnected {
            name: name.into(),
            message,
        },
        _ => Error::Api {
            what: what.into(),
            status,
            message,
        },
    }
}

/// Opens a tunnel to workspace `name` (id `id`) as `creds`.
pub async fn open(creds: &Credentials, name: &str, id: &str, route: Route) -> Result<Tunnel> {
    let target = url(&creds.url, id, route);
    let what = match route {
        Route::Ssh => format!("opening an SSH session to {name}"),
        Route::Tcp(p) => format!("opening a tunnel to port {p} of {name}"),
    };
    let mut request = target
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Usage(format!("{target}: {e}")))?;
    let token = HeaderValue::from_str(&creds.token).map_err(|_| {
        Error::Usage("the session token has characters a header cannot carry".into())
    })?;
    request.headers_mut().insert(TOKEN_HEADER, token);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(16 << 20);
    match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            Err(match refusal(name, &what, status, &body) {
                Error::Unauthorized { message, .. } => Error::Unauthorized {
                    url: creds.url.clone(),
                    message,
                },
                e => e,
            })
        }
        Err(tungstenite::Error::Io(e)) => Err(Error::Unreachable {
            url: creds.url.clone(),
            cause: e.to_string(),
        }),
        Err(tungstenite::Error::Tls(e)) => Err(Error::Unreachable {
            url: creds.url.clone(),
            cause: format!("TLS: {e}"),
        }),
        Err(e) => Err(Error::Protocol {
            what,
            cause: e.to_string(),
        }),
    }
}

/// Bytes carried by a pump: (local → workspace, workspace → local).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Sent.
    pub up: u64,
    /// Received.
    pub down: u64,
}

/// Carries bytes both ways until the workspace side ends. The local side's end of input closes
/// the tunnel (a WebSocket has no half-close), after which what is still in flight from the
/// workspace is delivered until the server's close.
pub async fn pump<S, R, W>(
    ws: WebSocketStream<S>,
    mut from: R,
    mut to: W,
) -> std::io::Result<Carried>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let io = |e: tungstenite::Error| match e {
        tungstenite::Error::Io(e) => e,
        e => std::io::Error::other(e),
    };
    let up = async {
        let mut sent = 0u64;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = from.read_buf(&mut buf).await?;
            if n == 0 {
                // Closing may race with the server's own close: either way we are done sending.
                let _ = sink.send(Message::Close(None)).await;
                return Ok::<u64, std::io::Error>(sent);
            }
            sent += n as u64;
            sink.send(Message::Binary(buf.freeze())).await.map_err(io)?;
        }
    };
    let down = async {
        let mut received = 0u64;
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    received += b.len() as u64;
                    to.write_all(&b).await?;
                    to.flush().await?;
                }
                Ok(Message::Text(t)) => {
                    received += t.len() as u64;
                    to.write_all(t.as_bytes()).await?;
                    to.flush().await?;
                }
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                // The server went away without a close handshake: the stream is over all the same.
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break;
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => break,
                Err(e) => return Err(io(e)),
            }
        }
        let _ = to.shutdown().await;
        Ok::<u64, std::io::Error>(received)
    };
    tokio::pin!(up, down);
    let mut carried = Carried::default();
    tokio::select! {
        r = &mut down => {
            carried.down = r?;
            return Ok(carried);
        }
        r = &mut up => {
            carried.up = r?;
        }
    }
    carried.down = down.await?;
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_urls() {
        let cases = [
            (
                "http://127.0.0.1:3000",
                Route::Ssh,
                "ws://127.0.0.1:3000/api/v2/workspaces/W/sessions/ssh",
            ),
            (
                "https://coder.example",
                Route::Tcp(8080),
                "wss://coder.example/api/v2/workspaces/W/sessions/tcp/8080",
            ),
            (
                "https://h/prefix",
                Route::Ssh,
                "wss://h/prefix/api/v2/workspaces/W/sessions/ssh",
            ),
        ];
        for (base, route, want) in cases {
            assert_eq!(url(base, "W", route), want);
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let body = br#"{"message":"workspace alice/dev is stopped"}"#;
        let cases: &[(u16, &str)] = &[
            (404, "no workspace dev"),
            (409, "run `lumie start dev`"),
            (503, "agent is not connected"),
            (500, "the server answered 500"),
        ];
        for (status, want) in cases {
            let e = refusal("dev", "opening", *status, body).to_string();
            assert!(e.contains(want), "{status}: {e}");
            assert!(
                e.contains("workspace alice/dev is stopped"),
                "{status}: {e}"
            );
        }
    }

    /// A real WebSocket server on loopback: every binary message echoed back, closed by the
    /// client's close. What goes in comes back, in order, across many messages.
    #[tokio::test]
    async fn pump_carries_both_ways_and_ends_on_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Binary(b) => ws.send(Message::Binary(b)).await.unwrap(),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut out_w, out_r) = tokio::io::duplex(1 << 16);
        let mut got = vec![];
        let reader = async {
            let mut r = out_r;
            r.read_to_end(&mut got).await.unwrap();
        };
        let (carried, ()) = tokio::join!(pump(ws, &data[..], &mut out_w), reader);
        let carried = carried.unwrap();
        assert_eq!(carried.up, data.len() as u64);
        assert_eq!(carried.down, data.len() as u64);
        assert_eq!(got, data);
        server.await.unwrap();
    }
}
