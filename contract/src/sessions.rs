//! Sessions into a workspace (terminal, SSH, TCP) between the control plane and the agent's
//! session port ([`crate::workspace::SESSION_PORT`] on the pod IP).
//!
//! The server dials the agent and sends one JSON line, a [`SessionRequest`] carrying a ticket
//! it signed (Ed25519) for that workspace, kind and port; the agent answers `ok\n` or
//! `error: <reason>\n`, then the bytes flow: raw for `ssh` and `tcp`, [`Frame`]s for `terminal`.
//!
//! A ticket is `hex(claims JSON) "." hex(signature over the claims JSON bytes)`; the claims are
//! [`TicketClaims`]. The agent learns the verification keys (hex, 32 bytes each) from the
//! heartbeat response ([`crate::agent_api::HeartbeatResponse::session_keys`]).
//!
//! Between the browser/CLI and the server, a terminal's WebSocket carries binary messages as
//! terminal bytes and text messages as [`TerminalControl`] JSON.

use serde::{Deserialize, Serialize};

/// Longest a ticket is valid after it is minted, seconds.
pub const TICKET_TTL_SECS: i64 = 60;
/// Longest request line the agent reads (ticket included).
pub const MAX_REQUEST_LINE: usize = 4096;
/// The agent's answer when it accepts a session.
pub const ANSWER_OK: &str = "ok";
/// Longest terminal frame payload.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

crate::wire_enum!(
    /// What a session carries.
    pub enum SessionKind {
        /// The raw SSH byte stream to the agent's SSH server.
        Ssh = "ssh",
        /// Raw TCP bytes to a port inside the pod.
        Tcp = "tcp",
        /// An interactive PTY running the login shell.
        Terminal = "terminal",
    }
);

/// The first line the server sends on a session connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The signed ticket.
    pub ticket: String,
    /// What to open.
    pub kind: SessionKind,
    /// The port inside the pod (`tcp` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Terminal rows (`terminal` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Terminal columns (`terminal` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

/// What a ticket grants: one session of `kind` (to `port`) into `workspace_id`, until `exp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Random id, remembered by the agent until `exp` so the ticket is used once.
    pub id: String,
    /// The workspace the ticket opens.
    pub workspace_id: String,
    /// The session kind.
    pub kind: SessionKind,
    /// The port (`tcp` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// Joins the signed claims bytes and their signature into a ticket.
pub fn ticket_string(claims_json: &[u8], signature: &[u8]) -> String {
    format!("{}.{}", hex::encode(claims_json), hex::encode(signature))
}

/// Splits a ticket into the claims bytes and the signature; `None` when it is not shaped as one.
pub fn split_ticket(ticket: &str) -> Option<(Vec<u8>, [u8; 64])> {
    let (claims, sig) = ticket.split_once('.')?;
    let claims = hex::decode(claims).ok()?;
    let sig: [u8; 64] = hex::decode(sig).ok()?.try_into().ok()?;
    Some((claims, sig))
}

/// A terminal's control message on the WebSocket (text messages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TerminalControl {
    /// Client → server: the window size changed.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Server → client, once: the shell ended with this code; the server closes next.
    Exit {
        /// Exit code (128 + signal when killed by one).
        code: i32,
    },
}

/// One frame of a terminal session between the server and the agent:
/// `[type: u8][length: u32 big-endian][payload]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Terminal bytes (type 0), either way.
    Data(Vec<u8>),
    /// Server → agent: the window size (type 1, rows then cols, u16 big-endian each).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Agent → server: the shell ended (type 2, i32 big-endian).
    Exit(i32),
}

/// A frame that cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown type byte.
    #[error("unknown terminal frame type {0}")]
    UnknownType(u8),
    /// Payload too long, or of the wrong length for its type.
    #[error("terminal frame of type {kind} with a bad length {len}")]
    BadLength {
        /// Type byte.
        kind: u8,
        /// Announced length.
        len: usize,
    },
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Data(d) => (0, d.clone()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (1, p)
            }
            Frame::Exit(code) => (2, code.to_be_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Reads one frame from the start of `buf`: the frame and how many bytes it took, or
    /// `None` when `buf` does not hold a whole frame yet.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let want = match kind {
            0 if len <= MAX_FRAME_PAYLOAD => len,
            1 if len == 4 => 4,
            2 if len == 4 => 4,
            0..=2 => return Err(FrameError::BadLength { kind, len }),
            other => return Err(FrameError::UnknownType(other)),
        };
        if buf.len() < 5 + want {
            return Ok(None);
        }
        let p = &buf[5..5 + want];
        let frame = match kind {
            0 => Frame::Data(p.to_vec()),
            1 => Frame::Resize {
                rows: u16::from_be_bytes([p[0], p[1]]),
                cols: u16::from_be_bytes([p[2], p[3]]),
            },
            _ => Frame::Exit(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
        };
        Ok(Some((frame, 5 + want)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        for f in [
            Frame::Data(b"hello".to_vec()),
            Frame::Data(vec![]),
            Frame::Resize {
                rows: 40,
                cols: 120,
            },
            Frame::Exit(-1),
            Frame::Exit(3),
        ] {
            let mut bytes = f.encode();
            bytes.extend_from_slice(b"next");
            let (back, used) = Frame::decode(&bytes).unwrap().unwrap();
            assert_eq!(back, f);
            assert_eq!(used, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[..used - 1]).unwrap(), None);
        }
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnknownType(9))
        );
        assert!(Frame::decode(&[1, 0, 0, 0, 3, 1, 2, 3]).is_err());
        assert!(Frame::decode(&[0, 0xff, 0, 0, 0]).is_err());
    }

    #[test]
    fn tickets_split_and_control_messages_parse() {
        let t = ticket_string(b"{}", &[7; 64]);
        assert_eq!(split_ticket(&t), Some((b"{}".to_vec(), [7; 64])));
        for bad in ["", "abc", "zz.zz", "7b7d.0707"] {
            assert_eq!(split_ticket(bad), None, "{bad}");
        }
        let r: TerminalControl =
            serde_json::from_str(r#"{"type":"resize","rows":30,"cols":100}"#).unwrap();
        assert_eq!(
            r,
            TerminalControl::Resize {
                rows: 30,
                cols: 100
            }
        );
        assert_eq!(
            serde_json::to_string(&TerminalControl::Exit { code: 3 }).unwrap(),
            r#"{"type":"exit","code":3}"#
        );
        let req: SessionRequest =
            serde_json::from_str(r#"{"ticket":"t","kind":"tcp","port":8080}"#).unwrap();
        assert_eq!(req.kind, SessionKind::Tcp);
        assert_eq!(req.port, Some(8080));
    }
}
