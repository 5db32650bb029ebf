//! Session tickets, verified without a network call: signed by one of the control plane's
//! session keys (learnt from heartbeat answers), for this workspace, kind and port, unexpired,
//! and not seen before. Used ticket ids are remembered until they expire (bounded).

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use lumie_contract::sessions::{self, SessionKind, SessionRequest, TICKET_TTL_SECS, TicketClaims};

/// Most used-ticket ids remembered at once (each for at most a minute): past this, new sessions
/// are refused until some expire, so memory stays bounded whatever the control plane sends.
pub const MAX_REMEMBERED: usize = 4096;
/// Clock skew tolerated between the control plane and the pod.
pub const CLOCK_SKEW_SECS: i64 = 5;

/// Why a session request is refused. The text is what the server is told; never the ticket.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No heartbeat answer has brought the keys (or the workspace id) yet.
    #[error("the agent has no session keys yet (no heartbeat answer from the control plane)")]
    NoKeys,
    /// Not a ticket at all.
    #[error("malformed ticket")]
    Malformed,
    /// Signed by no key the agent knows.
    #[error("bad ticket signature")]
    BadSignature,
    /// Past its expiry (or valid for longer than any ticket is minted for).
    #[error("expired ticket")]
    Expired,
    /// Already used.
    #[error("ticket already used")]
    Replayed,
    /// For another workspace.
    #[error("ticket for another workspace")]
    WrongWorkspace,
    /// For another kind of session.
    #[error("ticket for a {ticket} session, not {requested}")]
    WrongKind {
        /// What the ticket grants.
        ticket: SessionKind,
        /// What was asked for.
        requested: SessionKind,
    },
    /// For another port.
    #[error("ticket for another port")]
    WrongPort,
    /// Too many tickets used within a minute.
    #[error("too many sessions opened within a minute; retry shortly")]
    Busy,
}

/// The keys and the memory of used tickets.
#[derive(Debug)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    workspace_id: Option<String>,
    used: HashMap<String, i64>,
    capacity: usize,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::with_capacity(MAX_REMEMBERED)
    }
}

impl Verifier {
    /// A verifier remembering at most `capacity` used tickets.
    pub fn with_capacity(capacity: usize) -> Verifier {
        Verifier {
            keys: vec![],
            workspace_id: None,
            used: HashMap::new(),
            capacity,
        }
    }

    /// Sets the keys (hex, as the heartbeat answer carries them; bad ones are skipped) and the
    /// workspace id. Returns whether anything changed.
    pub fn update(&mut self, keys_hex: &[String], workspace_id: Option<&str>) -> bool {
        let keys: Vec<VerifyingKey> = keys_hex
            .iter()
            .filter_map(|k| {
                let bytes: [u8; 32] = hex::decode(k).ok()?.try_into().ok()?;
                VerifyingKey::from_bytes(&bytes).ok()
            })
            .collect();
        let ws = workspace_id
            .map(str::to_string)
            .or(self.workspace_id.take());
        let changed = keys != self.keys || ws != self.workspace_id;
        if !keys.is_empty() {
            self.keys = keys;
        }
        self.workspace_id = ws;
        changed
    }

    /// Whether sessions can be verified at all.
    pub fn ready(&self) -> bool {
        !self.keys.is_empty() && self.workspace_id.is_some()
    }

    /// Checks `req` at `now` (seconds since the epoch) and, when it passes, remembers its id.
    pub fn verify(&mut self, req: &SessionRequest, now: i64) -> Result<TicketClaims, Refusal> {
        let Some(workspace_id) = self
            .workspace_id
            .as_deref()
            .filter(|_| !self.keys.is_empty())
        else {
            return Err(Refusal::NoKeys);
        };
        let (claims_bytes, sig) = sessions::split_ticket(&req.ticket).ok_or(Refusal::Malformed)?;
        let sig = Signature::from_bytes(&sig);
        if !self
            .keys
            .iter()
            .any(|k| k.verify_strict(&claims_bytes, &sig).is_ok())
        {
            return Err(Refusal::BadSignature);
        }
        let claims: TicketClaims =
            serde_json::from_slice(&claims_bytes).map_err(|_| Refusal::Malformed)?;
        if claims.exp + CLOCK_SKEW_SECS < now
            || claims.exp > now + TICKET_TTL_SECS + CLOCK_SKEW_SECS
        {
            return Err(Refusal::Expired);
        }
        if claims.workspace_id != workspace_id {
            return Err(Refusal::WrongWorkspace);
        }
        if claims.kind != req.kind {
            return Err(Refusal::WrongKind {
                ticket: claims.kind,
                requested: req.kind,
            });
        }
        let port_ok = match req.kind {
            SessionKind::Tcp => claims.port.is_some() && claims.port == req.port,
            _ => claims.port.is_none(),
        };
        if !port_ok {
            return Err(Refusal::WrongPort);
        }
        self.used.retain(|_, exp| *exp + CLOCK_SKEW_SECS >= now);
        if self.used.contains_key(&claims.id) {
            return Err(Refusal::Replayed);
        }
        if self.used.len() >= self.capacity {
            return Err(Refusal::Busy);
        }
        self.used.insert(claims.id.clone(), claims.exp);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const NOW: i64 = 1_800_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn ticket(signer: &SigningKey, claims: &TicketClaims) -> String {
        let bytes = serde_json::to_vec(claims).unwrap();
        sessions::ticket_string(&bytes, &signer.sign(&bytes).to_bytes())
    }

    fn claims(id: &str, ws: &str, kind: SessionKind, port: Option<u16>, exp: i64) -> TicketClaims {
        TicketClaims {
            id: id.into(),
            workspace_id: ws.into(),
            kind,
            port,
            exp,
        }
    }

    fn request(ticket: String, kind: SessionKind, port: Option<u16>) -> SessionRequest {
        SessionRequest {
            ticket,
            kind,
            port,
            rows: None,
            cols: None,
        }
    }

    fn verifier() -> Verifier {
        let mut v = Verifier::default();
        assert!(!v.ready());
        v.update(
            &[hex::encode(key(2).verifying_key().to_bytes()), "zz".into()],
            Some("ws-1"),
        );
        assert!(v.ready());
        v
    }

    #[test]
    fn ticket_table() {
        use SessionKind::*;
        let good = key(2);
        let other = key(3);
        let exp = NOW + 30;
        /// (case, signer, claims, requested kind, requested port, expected)
        type Case<'a> = (
            &'a str,
            &'a SigningKey,
            TicketClaims,
            SessionKind,
            Option<u16>,
            Result<(), Refusal>,
        );
        let cases: Vec<Case> = vec![
            (
                "valid ssh",
                &good,
                claims("a", "ws-1", Ssh, None, exp),
                Ssh,
                None,
                Ok(()),
            ),
            (
                "valid tcp",
                &good,
                claims("b", "ws-1", Tcp, Some(8080), exp),
                Tcp,
                Some(8080),
                Ok(()),
            ),
            (
                "valid terminal",
                &good,
                claims("c", "ws-1", Terminal, None, exp),
                Terminal,
                None,
                Ok(()),
            ),
            (
                "replayed",
                &good,
                claims("a", "ws-1", Ssh, None, exp),
                Ssh,
                None,
                Err(Refusal::Replayed),
            ),
            (
                "expired",
                &good,
                claims("d", "ws-1", Ssh, None, NOW - 10),
                Ssh,
                None,
                Err(Refusal::Expired),
            ),
            (
                "valid too long",
                &good,
                claims("e", "ws-1", Ssh, None, NOW + 3600),
                Ssh,
                None,
                Err(Refusal::Expired),
            ),
            (
                "wrong workspace",
                &good,
                claims("f", "ws-2", Ssh, None, exp),
                Ssh,
                None,
                Err(Refusal::WrongWorkspace),
            ),
            (
                "wrong kind",
                &good,
                claims("g", "ws-1", Ssh, None, exp),
                Terminal,
                None,
                Err(Refusal::WrongKind {
                    ticket: Ssh,
                    requested: Terminal,
                }),
            ),
            (
                "wrong port",
                &good,
                claims("h", "ws-1", Tcp, Some(8080), exp),
                Tcp,
                Some(22),
                Err(Refusal::WrongPort),
            ),
            (
                "tcp without port",
                &good,
                claims("i", "ws-1", Tcp, None, exp),
                Tcp,
                None,
                Err(Refusal::WrongPort),
            ),
            (
                "port on ssh",
                &good,
                claims("j", "ws-1", Ssh, Some(22), exp),
                Ssh,
                Some(22),
                Err(Refusal::WrongPort),
            ),
            (
                "bad signature",
                &other,
                claims("k", "ws-1", Ssh, None, exp),
                Ssh,
                None,
                Err(Refusal::BadSignature),
            ),
        ];
        let mut v = verifier();
        for (case, signer, c, kind, port, want) in cases {
            let got = v
                .verify(&request(ticket(signer, &c), kind, port), NOW)
                .map(|_| ());
            assert_eq!(got, want, "{case}");
        }
        // A failed check does not burn the id: the right request with it still works once.
        let c = claims("h", "ws-1", Tcp, Some(8080), exp);
        assert!(
            v.verify(&request(ticket(&good, &c), Tcp, Some(8080)), NOW)
                .is_ok()
        );
        // Garbage and tampered tickets.
        for t in ["", "nothing", "00.00"] {
            assert_eq!(
                v.verify(&request(t.into(), Ssh, None), NOW),
                Err(Refusal::Malformed),
                "{t}"
            );
        }
        let t = ticket(&good, &claims("m", "ws-1", Ssh, None, exp));
        let tampered = t.replacen(
            "ws-1"
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .as_str(),
            "77732d32",
            1,
        );
        assert_eq!(
            v.verify(&request(tampered, Ssh, None), NOW),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn no_keys_refuses_and_memory_is_bounded() {
        let mut v = Verifier::default();
        let good = key(2);
        let t = ticket(
            &good,
            &claims("a", "ws-1", SessionKind::Ssh, None, NOW + 30),
        );
        assert_eq!(
            v.verify(&request(t, SessionKind::Ssh, None), NOW),
            Err(Refusal::NoKeys)
        );

        let mut v = Verifier::with_capacity(64);
        v.update(
            &[hex::encode(good.verifying_key().to_bytes())],
            Some("ws-1"),
        );
        for i in 0..64 {
            let t = ticket(
                &good,
                &claims(&i.to_string(), "ws-1", SessionKind::Ssh, None, NOW + 30),
            );
            assert!(v.verify(&request(t, SessionKind::Ssh, None), NOW).is_ok());
        }
        let t = ticket(
            &good,
            &claims("x", "ws-1", SessionKind::Ssh, None, NOW + 30),
        );
        assert_eq!(
            v.verify(&request(t.clone(), SessionKind::Ssh, None), NOW),
            Err(Refusal::Busy)
        );
        // Once they expire, they are forgotten.
        let t = ticket(
            &good,
            &claims("x", "ws-1", SessionKind::Ssh, None, NOW + 100),
        );
        assert!(
            v.verify(&request(t, SessionKind::Ssh, None), NOW + 60)
                .is_ok()
        );
        assert_eq!(v.used.len(), 1);
    }

    #[test]
    fn rotation_keeps_any_announced_key() {
        let mut v = verifier();
        let k3 = hex::encode(key(3).verifying_key().to_bytes());
        let k2 = hex::encode(key(2).verifying_key().to_bytes());
        assert!(v.update(&[k3, k2], None));
        for (i, signer) in [key(2), key(3)].iter().enumerate() {
            let t = ticket(
                signer,
                &claims(&i.to_string(), "ws-1", SessionKind::Ssh, None, NOW + 30),
            );
            assert!(v.verify(&request(t, SessionKind::Ssh, None), NOW).is_ok());
        }
        // An answer without keys keeps the ones known.
        v.update(&[], None);
        assert!(v.ready());
    }
}
