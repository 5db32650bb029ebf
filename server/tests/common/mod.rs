//! Shared by the server's integration tests: a real PostgreSQL server per test binary
//! (`scripts/start-postgres.sh`, stopped by its watchdog when the test process exits) and fresh
//! databases on it and on SQLite.
#![allow(dead_code)]

use std::sync::OnceLock;

use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use sqlx::Executor;

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
    Db::connect(&DatabaseConfig::Postgres(url))
        .await
        .expect("connect")
}

/// A fresh SQLite database in a temp dir (kept alive by the returned guard).
pub async fn sqlite_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&DatabaseConfig::Sqlite(dir.path().join("lumie.db")))
        .await
        .expect("open sqlite");
    (db, dir)
}
