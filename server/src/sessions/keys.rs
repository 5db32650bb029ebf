//! The session ticket signing keys: Ed25519, kept in the database so every replica signs with
//! the same key (made on first start), re-read periodically so a rotation (a new row) reaches
//! every replica, and through heartbeat answers every agent, within minutes. Tickets are
//! [`TicketClaims`] signed with [`signing_index`]'s key.

use std::sync::RwLock;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use lumie_contract::sessions::{self, SessionKind, TICKET_TTL_SECS, TicketClaims};

use crate::db::{Db, SessionKeyRow};
use crate::error::{Error, Result};
use crate::model::now_ms;

/// Id of the key made on first start.
pub const FIRST_KEY_ID: &str = "primary";
/// A new key signs only once it is this old, so agents (one report interval) have heard of it.
pub const ANNOUNCE_BEFORE_USE: Duration = Duration::from_secs(120);
/// How often the keys are re-read from the database.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A loaded key.
#[derive(Clone)]
struct Key {
    signing: SigningKey,
    public_hex: String,
    created_at: i64,
}

/// The keys, newest first.
pub struct SessionKeys {
    keys: RwLock<Vec<Key>>,
}

fn parse(row: &SessionKeyRow) -> Result<Key> {
    let bytes: [u8; 32] = hex::decode(&row.secret_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Internal(format!("session key {} is not 32 bytes of hex", row.id)))?;
    let signing = SigningKey::from_bytes(&bytes);
    Ok(Key {
        public_hex: hex::encode(signing.verifying_key().to_bytes()),
        signing,
        created_at: row.created_at,
    })
}

/// Which key signs at `now_ms`, given the keys' creation times newest first: the newest that
/// has been announced for [`ANNOUNCE_BEFORE_USE`], else the oldest (nothing is announced yet on
/// a first start, and then there is only one).
pub fn signing_index(created_newest_first: &[i64], now_ms: i64) -> usize {
    let announced = ANNOUNCE_BEFORE_USE.as_millis() as i64;
    created_newest_first
        .iter()
        .position(|c| now_ms - c >= announced)
        .unwrap_or(created_newest_first.len().saturating_sub(1))
}

impl SessionKeys {
    /// Loads the keys, creating the first one when there is none.
    pub async fn load(db: &Db) -> Result<SessionKeys> {
        let keys = SessionKeys {
            keys: RwLock::new(vec![]),
        };
        if db.session_keys().await?.is_empty() {
            let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            db.insert_session_key_if_absent(
                FIRST_KEY_ID,
                &hex::encode(signing.to_bytes()),
                &hex::encode(signing.verifying_key().to_bytes()),
            )
            .await?;
        }
        keys.refresh(db).await?;
        Ok(keys)
    }

    /// Re-reads the keys.
    pub async fn refresh(&self, db: &Db) -> Result<()> {
        let rows = db.session_keys().await?;
        let loaded = rows.iter().map(parse).collect::<Result<Vec<_>>>()?;
        if loaded.is_empty() {
            return Err(Error::Internal(
                "no session signing key in the database".into(),
            ));
        }
        *self.keys.write().expect("session keys lock") = loaded;
        Ok(())
    }

    /// Re-reads the keys every [`REFRESH_INTERVAL`] until the task is dropped.
    pub async fn run_refresh(self: std::sync::Arc<Self>, db: Db) {
        loop {
            tokio::time::sleep(REFRESH_INTERVAL).await;
            if let Err(e) = self.refresh(&db).await {
                tracing::warn!(error = %e, "re-reading the session keys failed; keeping the ones loaded");
            }
        }
    }

    /// The public keys (hex), newest first, for heartbeat answers.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys
            .read()
            .expect("session keys lock")
            .iter()
            .map(|k| k.public_hex.clone())
            .collect()
    }

    /// A ticket for one `kind` session (to `port`) into `workspace_id`, valid for the contract's
    /// ticket lifetime.
    pub fn mint(&self, workspace_id: &str, kind: SessionKind, port: Option<u16>) -> String {
        self.mint_expiring(workspace_id, kind, port, now_ms() / 1000 + TICKET_TTL_SECS)
    }

    /// [`SessionKeys::mint`] with an explicit expiry (seconds since the epoch), for tests.
    pub fn mint_expiring(
        &self,
        workspace_id: &str,
        kind: SessionKind,
        port: Option<u16>,
        exp: i64,
    ) -> String {
        let claims = TicketClaims {
            id: hex::encode(rand::random::<[u8; 16]>()),
            workspace_id: workspace_id.into(),
            kind,
            port,
            exp,
        };
        let bytes = serde_json::to_vec(&claims).expect("claims serialize");
        let keys = self.keys.read().expect("session keys lock");
        let created: Vec<i64> = keys.iter().map(|k| k.created_at).collect();
        let key = &keys[signing_index(&created, now_ms())];
        sessions::ticket_string(&bytes, &key.signing.sign(&bytes).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_announced_key_signs() {
        let min = 60_000;
        let now = 100 * min;
        // (created, newest first) → index
        for (created, want) in [
            (vec![now - 10 * min], 0),
            (vec![now - 1000], 0),
            (vec![now - 1000, now - 10 * min], 1),
            (vec![now - 3 * min, now - 10 * min], 0),
            (vec![now - 1000, now - 2000], 1),
            (vec![], 0),
        ] {
            assert_eq!(signing_index(&created, now), want, "{created:?}");
        }
    }

    #[tokio::test]
    async fn first_start_creates_one_key_that_every_replica_shares() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::DatabaseConfig::Sqlite(dir.path().join("db.sqlite"));
        let db = Db::connect(&cfg).await.unwrap();
        let a = SessionKeys::load(&db).await.unwrap();
        let b = SessionKeys::load(&db).await.unwrap();
        assert_eq!(a.public_keys().len(), 1);
        assert_eq!(a.public_keys(), b.public_keys());
        // A ticket from one replica verifies with the key the other announces.
        let t = a.mint("ws", SessionKind::Tcp, Some(80));
        let (claims, sig) = sessions::split_ticket(&t).unwrap();
        let pk: [u8; 32] = hex::decode(&b.public_keys()[0])
            .unwrap()
            .try_into()
            .unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
        vk.verify_strict(&claims, &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap();
        let c: TicketClaims = serde_json::from_slice(&claims).unwrap();
        assert_eq!(
            (c.workspace_id.as_str(), c.kind, c.port),
            ("ws", SessionKind::Tcp, Some(80))
        );
        assert!(c.exp > now_ms() / 1000 && c.exp <= now_ms() / 1000 + TICKET_TTL_SECS);
    }
}
