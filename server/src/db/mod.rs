//! The repository: every SQL statement the server runs, over PostgreSQL or SQLite.
//!
//! One code path serves both databases through sqlx's `Any` driver. The schema keeps to types
//! both understand the same way (TEXT ids, BIGINT millisecond times, BIGINT 0/1 flags, JSON as
//! TEXT) and the SQL to what both accept (`$n` parameters, partial unique indexes, row-value
//! `UPDATE`), so the same repository test suite runs against both. Only the migrations differ.
//!
//! One file per area, each adding its methods to [`Db`]: `users` (token and OIDC users),
//! `tokens` (API tokens and browser sessions), `app_tickets` (subdomain app tickets and
//! credentials), `workspaces`, `builds`, `agents`, `audit`, `logs` (startup-script output),
//! `samples` (the dashboard's resource graphs) and `dashboard` (the list page's query).
//! This file opens the database and holds what they share.

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Row};

use crate::config::{DB_SECRET, DatabaseConfig};
use crate::error::{Error, Result, StartupError, StartupResult};

mod agents;
mod app_tickets;
mod audit;
mod builds;
mod dashboard;
mod logs;
mod replicas;
mod samples;
mod session_keys;
mod tokens;
mod users;
mod workspaces;

pub use agents::{HEARTBEAT_BATCH_ROWS, HeartbeatWrite};
pub use audit::{AuditEvent, AuditFilter};
pub use dashboard::contains_pattern;
pub use logs::{KEEP_STARTS, LogStart, StoredLine, drop_cutoff};
pub use replicas::StoredLogin;
pub use samples::{Admission, ResourceSample, SAMPLE_BUCKET_MS, SAMPLE_RETENTION_MS, SampleGate};
pub use session_keys::SessionKeyRow;
pub use tokens::{ApiTokenInfo, OIDC_SESSION_TOKEN_NAME};
pub use workspaces::CreatedWorkspace;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a request waits for a PostgreSQL connection before it is answered 503: long enough
/// for a busy pool to hand one over, short enough that a database outage is reported at once
/// rather than after every client's own timeout.
pub const PG_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The same for SQLite: one connection, so a wait there is queueing behind a writer, not an
/// outage.
pub const SQLITE_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite (the embedded default).
    Sqlite,
}

/// The repository. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// sha256 hex of a secret token: what is stored in place of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A random URL-safe secret of `len` characters.
pub fn random_secret(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether an error is a unique-constraint violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// One-line explanation of a failure to open the database, naming the setting and the Secret.
fn explain_connect_error(cfg: &DatabaseConfig, e: &sqlx::Error) -> String {
    match cfg {
        DatabaseConfig::Sqlite(path) => format!(
            "cannot open the embedded SQLite database {}: {e} — check that LUMIE_DATA_DIR exists and is writable",
            path.display()
        ),
        DatabaseConfig::Postgres(_) => {
            let src = format!("CODER_PG_CONNECTION_URL (Secret {DB_SECRET})");
            match e {
                sqlx::Error::Database(d) => match d.code().as_deref() {
                    Some("28P01") | Some("28000") => format!(
                        "PostgreSQL rejected the credentials in {src}: {} — check the user and password in the Secret",
                        d.message()
                    ),
                    Some("3D000") => format!(
                        "the database named in {src} does not exist: {} — create it or fix the URL",
                        d.message()
                    ),
                    _ => format!(
                        "PostgreSQL refused the connection from {src}: {}",
                        d.message()
                    ),
                },
                sqlx::Error::Io(io) => format!(
                    "PostgreSQL unreachable at the host/port in {src}: {io} — check the host, port and that the server is running"
                ),
                sqlx::Error::PoolTimedOut => format!(
                    "PostgreSQL unreachable: no answer within 10s at the host/port in {src} — check the host, port and network policy"
                ),
                sqlx::Error::Tls(t) => {
                    format!("TLS to PostgreSQL failed ({src}): {t} — check sslmode in the URL")
                }
                sqlx::Error::Configuration(c) => {
                    format!("{src} is not a usable URL: {c} — check the value in the Secret")
                }
                other => format!("cannot use PostgreSQL from {src}: {other}"),
            }
        }
    }
}

fn bad_value(column: &str, value: &str) -> Error {
    Error::Database(sqlx::Error::Decode(
        format!("unexpected {column} {value:?}").into(),
    ))
}

impl Db {
    /// Whether this is PostgreSQL, where several replicas may share the database (on SQLite
    /// there is only ever one).
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Opens the database (creating the SQLite file when needed) and runs the migrations.
    /// Errors are one line naming the setting and Secret to check.
    pub async fn connect(cfg: &DatabaseConfig) -> StartupResult<Db> {
        Self::connect_with_acquire_timeout(cfg, None).await
    }

    /// [`Db::connect`] with another acquire timeout than the backend's default
    /// ([`PG_ACQUIRE_TIMEOUT`], [`SQLITE_ACQUIRE_TIMEOUT`]): for test suites on unoptimized
    /// builds, where opening many PostgreSQL connections at once (SCRAM key derivation) alone
    /// can take longer than a second.
    pub async fn connect_with_acquire_timeout(
        cfg: &DatabaseConfig,
        acquire_timeout: Option<std::time::Duration>,
    ) -> StartupResult<Db> {
        sqlx::any::install_default_drivers();
        let (url, backend, max, default_acquire_timeout) = match cfg {
            DatabaseConfig::Postgres(url) => {
                (url.clone(), Backend::Postgres, 16, PG_ACQUIRE_TIMEOUT)
            }
            DatabaseConfig::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StartupError::Database(format!(
                            "cannot create the data directory {}: {e} — check LUMIE_DATA_DIR and the volume mounted there",
                            dir.display()
                        ))
                    })?;
                }
                // One connection: SQLite has one writer anyway, and this rules out busy errors.
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Backend::Sqlite,
                    1,
                    SQLITE_ACQUIRE_TIMEOUT,
                )
            }
        };
        let opts: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StartupError::Database(explain_connect_error(cfg, &e)))?;
        // One direct connection first: the pool would turn "connection refused" into a timeout.
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sqlx::AnyConnection::connect_with(&opts),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        .map_err(|e| StartupError::Database(explain_connect_error(cfg, &e)))?;
        probe.close().await.ok();
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout.unwrap_or(default_acquire_timeout))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| StartupError::Database(explain_connect_error(cfg, &e)))?;
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// The embedded migrations of this backend: only they differ between the two databases.
    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Postgres => &PG_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        }
    }

    /// Runs the embedded migrations for this backend.
    pub async fn migrate(&self) -> StartupResult<()> {
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Whether every embedded migration is applied (for `/readyz`).
    pub async fn is_migrated(&self) -> Result<bool> {
        let latest = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM _sqlx_migrations WHERE version = $1 AND success = TRUE",
        )
        .bind(latest)
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok(r) => Ok(r.try_get::<i64, _>("n")? == 1),
            Err(_) => Ok(false),
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
