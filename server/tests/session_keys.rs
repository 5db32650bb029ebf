//! Session ticket keys on a real PostgreSQL (and SQLite): two replicas starting at once on an
//! empty database end up with one key, the same for both, so a ticket either mints verifies
//! with the keys either announces.

mod common;

use lumie_contract::sessions::{self, SessionKind};
use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use lumie_server::sessions::SessionKeys;

async fn two_replicas_share_one_key(a: Db, b: Db) {
    let (ka, kb) = tokio::join!(SessionKeys::load(&a), SessionKeys::load(&b));
    let (ka, kb) = (ka.unwrap(), kb.unwrap());
    assert_eq!(ka.public_keys().len(), 1, "one key made on first start");
    assert_eq!(
        ka.public_keys(),
        kb.public_keys(),
        "the same key on every replica"
    );
    let ticket = ka.mint("ws-1", SessionKind::Ssh, None);
    let (claims, sig) = sessions::split_ticket(&ticket).unwrap();
    let pk: [u8; 32] = hex::decode(&kb.public_keys()[0])
        .unwrap()
        .try_into()
        .unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&pk)
        .unwrap()
        .verify_strict(&claims, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("a ticket of one replica verifies with the other's key");
    // A restart keeps it.
    let again = SessionKeys::load(&a).await.unwrap();
    assert_eq!(again.public_keys(), ka.public_keys());
}

#[tokio::test]
async fn postgres_replicas_share_the_session_key() {
    let (a, url) = common::pg_db_with_url().await;
    let b = Db::connect(&DatabaseConfig::Postgres(url)).await.unwrap();
    two_replicas_share_one_key(a, b).await;
}

#[tokio::test]
async fn sqlite_keeps_the_session_key_across_restarts() {
    let (a, dir) = common::sqlite_db().await;
    let b = Db::connect(&DatabaseConfig::Sqlite(dir.path().join("lumie.db")))
        .await
        .unwrap();
    two_replicas_share_one_key(a, b).await;
}
