//! Shared by the server's integration tests: a real PostgreSQL server per test binary
//! (`scripts/start-postgres.sh`, stopped by its watchdog when the test process exits) and fresh
//! databases on it and on SQLite.
#![allow(dead_code)]

pub mod relay;

use std::sync::OnceLock;

use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use sqlx::{Executor, Row};

static PG_URL: OnceLock<String> = OnceLock::new();

/// URL of the `lumie` database on the test binary's PostgreSQL server (started on first use).
pub fn pg_base_url() -> &'static str {
    PG_URL.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/start-postgres.sh");
        let out = std::process::Command::new(script)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/start-postgres.sh");
        assert!(out.status.success(), "start-postgres.sh failed");
        let stdout = String::from_utf8(out.stdout).expect("utf-8 url");
        stdout
            .lines()
            .last()
            .expect("a url line")
            .trim()
            .to_string()
    })
}

/// A fresh, empty PostgreSQL database (migrated by `Db::connect`).
pub async fn pg_db() -> Db {
    pg_db_with_url().await.0
}

/// [`pg_db`] and its URL, for tests that read rows directly ([`stored_sessions`]).
pub async fn pg_db_with_url() -> (Db, String) {
    let base = pg_base_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(base)
        .await
        .expect("connect to test postgres");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    admin.close().await;
    let url = format!("{}/{name}", base.rsplit_once('/').expect("url with db").0);
    // The production acquire timeout (1 s) is about outages; tests that open many connections
    // at once on an unoptimized build and a busy machine need longer than that just to connect.
    // The outage tests (database_outage.rs) use the default.
    let db = Db::connect_with_acquire_timeout(
        &DatabaseConfig::Postgres(url.clone()),
        Some(std::time::Duration::from_secs(10)),
    )
    .await
    .expect("connect");
    (db, url)
}

/// A fresh SQLite database in a temp dir (kept alive by the returned guard).
pub async fn sqlite_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&DatabaseConfig::Sqlite(dir.path().join("lumie.db")))
        .await
        .expect("open sqlite");
    (db, dir)
}

/// The URL of the database [`sqlite_db`] opened in `dir`, for tests that read rows directly.
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("lumie.db").display())
}

/// A browser session as stored in `api_tokens`. Read directly: the server itself only finds a
/// session by presenting its token to the authenticator (`Db::token_owner`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Whose.
    pub user_id: String,
    /// Expiry, ms since the epoch.
    pub expires_at: i64,
    /// Client address at login.
    pub client_ip: Option<String>,
}

/// Every browser session stored in the database at `url`, oldest first.
pub async fn stored_sessions(url: &str) -> Vec<StoredSession> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect to read");
    let rows = sqlx::query(
        "SELECT token_hash, user_id, expires_at, client_ip FROM api_tokens WHERE name = $1 \
         ORDER BY created_at",
    )
    .bind(lumie_server::db::OIDC_SESSION_TOKEN_NAME)
    .fetch_all(&pool)
    .await
    .expect("read sessions");
    pool.close().await;
    rows.iter()
        .map(|r| StoredSession {
            token_hash: r.get("token_hash"),
            user_id: r.get("user_id"),
            expires_at: r.get("expires_at"),
            client_ip: r.get("client_ip"),
        })
        .collect()
}

/// The OIDC login (`preferred_username`) and display name a login stored for a user. Read
/// directly: nothing in the server reads them back.
pub async fn stored_oidc_names(url: &str, user_id: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect to read");
    let row = sqlx::query("SELECT oidc_login, display_name FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&pool)
        .await
        .expect("read the user");
    pool.close().await;
    (row.get("oidc_login"), row.get("display_name"))
}
