//! The repository: every SQL statement the server runs, over PostgreSQL or SQLite.
//!
//! One code path serves both databases through sqlx's `Any` driver. The schema keeps to types
//! both understand the same way (TEXT ids, BIGINT millisecond times, BIGINT 0/1 flags, JSON as
//! TEXT) and the SQL to what both accept (`$n` parameters, partial unique indexes, row-value
//! `UPDATE`), so the same repository test suite runs against both. Only the migrations differ.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lumie_contract::agent_api::{ConnectionStatus, LifecycleState};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Row};

use crate::config::{DB_SECRET, DatabaseConfig};
use crate::error::{Error, Result};
use crate::identity::{Role, SessionRecord, UserProfile, UserRecord};
use crate::model::*;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
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

/// `api_tokens.name` of browser sessions created by an OIDC login.
pub const OIDC_SESSION_TOKEN_NAME: &str = "oidc-session";

fn role_of(is_admin: bool) -> Role {
    if is_admin { Role::Admin } else { Role::Member }
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

const WORKSPACE_COLS: &str = "w.id, w.owner_id, u.username AS owner_name, w.name, w.pod_name, \
    w.desired_state, w.status, w.status_reason, w.created_at, w.updated_at, w.status_changed_at, w.deleted_at";
const BUILD_COLS: &str = "id, workspace_id, number, transition, status, error, initiator_id, \
    created_at, started_at, completed_at";
const AGENT_COLS: &str = "id, workspace_id, token_hash, lifecycle, lifecycle_reason, connection, \
    first_connected_at, last_contact_at, apps, stats, version, created_at, updated_at";

fn bad_value(column: &str, value: &str) -> Error {
    Error::Database(sqlx::Error::Decode(
        format!("unexpected {column} {value:?}").into(),
    ))
}

fn user_from(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        login_type: row.try_get("login_type")?,
        created_at: row.try_get("created_at")?,
    })
}

fn workspace_from(row: &AnyRow) -> Result<WorkspaceRecord> {
    let desired: String = row.try_get("desired_state")?;
    let status: String = row.try_get("status")?;
    Ok(WorkspaceRecord {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        owner_name: row.try_get("owner_name")?,
        name: row.try_get("name")?,
        pod_name: row.try_get("pod_name")?,
        desired_state: DesiredState::parse(&desired)
            .ok_or_else(|| bad_value("desired_state", &desired))?,
        status: WorkspaceStatus::parse(&status).ok_or_else(|| bad_value("status", &status))?,
        status_reason: row.try_get("status_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        status_changed_at: row.try_get("status_changed_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

fn build_from(row: &AnyRow) -> Result<BuildRecord> {
    let transition: String = row.try_get("transition")?;
    let status: String = row.try_get("status")?;
    Ok(BuildRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        number: row.try_get("number")?,
        transition: Transition::parse(&transition)
            .ok_or_else(|| bad_value("transition", &transition))?,
        status: BuildStatus::parse(&status).ok_or_else(|| bad_value("build status", &status))?,
        error: row.try_get("error")?,
        initiator_id: row.try_get("initiator_id")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

fn agent_from(row: &AnyRow) -> Result<AgentRecord> {
    let lifecycle: String = row.try_get("lifecycle")?;
    let connection: String = row.try_get("connection")?;
    let apps: String = row.try_get("apps")?;
    let stats: Option<String> = row.try_get("stats")?;
    Ok(AgentRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        token_hash: row.try_get("token_hash")?,
        lifecycle: LifecycleState::parse(&lifecycle)
            .ok_or_else(|| bad_value("lifecycle", &lifecycle))?,
        lifecycle_reason: row.try_get("lifecycle_reason")?,
        connection: ConnectionStatus::parse(&connection)
            .ok_or_else(|| bad_value("connection", &connection))?,
        first_connected_at: row.try_get("first_connected_at")?,
        last_contact_at: row.try_get("last_contact_at")?,
        apps: serde_json::from_str(&apps).unwrap_or_default(),
        stats: stats.and_then(|s| serde_json::from_str(&s).ok()),
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What one heartbeat changes in an agent row; many are written in one statement.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatWrite {
    /// Agent id.
    pub agent_id: String,
    /// Lifecycle reported.
    pub lifecycle: LifecycleState,
    /// Reason reported.
    pub lifecycle_reason: String,
    /// First contact of this pod, ms.
    pub first_connected_at: i64,
    /// This contact, ms.
    pub last_contact_at: i64,
    /// Apps as JSON.
    pub apps_json: String,
    /// Stats as JSON.
    pub stats_json: Option<String>,
    /// Agent version.
    pub version: String,
}

/// Rows per batched heartbeat statement (8 parameters each, below both databases' limits).
pub const HEARTBEAT_BATCH_ROWS: usize = 500;

/// One audit log line to write: who (and from which client address) did what, with the value
/// before and after when something changed.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent<'a> {
    /// Acting user (none for the system).
    pub actor: Option<&'a User>,
    /// Client address as honoured through the trusted proxy.
    pub client_ip: Option<IpAddr>,
    /// `workspace.create`, `build.stop`, `user.role`, `policy.update`, …
    pub action: &'a str,
    /// Which workspace, when one.
    pub workspace_id: Option<&'a str>,
    /// Free text.
    pub detail: &'a str,
    /// Value before the change.
    pub before: Option<String>,
    /// Value after the change.
    pub after: Option<String>,
}

/// Which audit lines to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only this actor (name or id).
    pub user: Option<String>,
    /// Only this action; a trailing `*` matches a prefix (`build.*`).
    pub action: Option<String>,
    /// From this time on, ms since the epoch.
    pub since: Option<i64>,
    /// Before this time, ms since the epoch.
    pub until: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// What [`Db::create_workspace`] returns.
#[derive(Clone, Debug)]
pub struct CreatedWorkspace {
    /// The workspace.
    pub workspace: WorkspaceRecord,
    /// Its first build (start, pending).
    pub build: BuildRecord,
    /// Its agent row.
    pub agent_id: String,
}

impl Db {
    /// Opens the database (creating the SQLite file when needed) and runs the migrations.
    /// Errors are one line naming the setting and Secret to check.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, backend, max) = match cfg {
            DatabaseConfig::Postgres(url) => (url.clone(), Backend::Postgres, 16),
            DatabaseConfig::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::DatabaseStartup(format!(
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
                )
            }
        };
        let opts: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| Error::DatabaseStartup(explain_connect_error(cfg, &e)))?;
        // One direct connection first: the pool would turn "connection refused" into a timeout.
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sqlx::AnyConnection::connect_with(&opts),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        .map_err(|e| Error::DatabaseStartup(explain_connect_error(cfg, &e)))?;
        probe.close().await.ok();
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
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
            .map_err(|e| Error::DatabaseStartup(explain_connect_error(cfg, &e)))?;
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// Runs the embedded migrations for this backend.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &PG_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether every embedded migration is applied (for `/readyz`).
    pub async fn is_migrated(&self) -> Result<bool> {
        let migrator = match self.backend {
            Backend::Postgres => &PG_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
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

    // ----- users and tokens -----

    /// Creates a user. A taken username is a [`Error::Conflict`].
    pub async fn create_user(&self, username: &str, email: &str, is_admin: bool) -> Result<User> {
        let now = now_ms();
        let id = new_id();
        let r = sqlx::query(
            "INSERT INTO users (id, username, email, is_admin, login_type, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'token', $5, $5)",
        )
        .bind(&id)
        .bind(username)
        .bind(email)
        .bind(i64::from(is_admin))
        .bind(now)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(User {
                id,
                username: username.into(),
                email: email.into(),
                is_admin,
                login_type: "token".into(),
                created_at: now,
            }),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("user {username:?} already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a user up by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from).collect()
    }

    /// How many users exist (zero on first start).
    pub async fn count_users(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Issues an API token for a user; returns the token (shown once) — only its hash is stored.
    pub async fn create_api_token(&self, user_id: &str, name: &str) -> Result<String> {
        let id = random_secret(10);
        let token = format!("{id}-{}", random_secret(22));
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(hash_token(&token))
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// The user an API token belongs to, when the token is known and not expired.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>> {
        Ok(self.token_owner(token).await?.map(|(u, _)| u))
    }

    /// The user a token (API token or browser session) belongs to and the token's name
    /// ([`OIDC_SESSION_TOKEN_NAME`] for sessions), when it is known and not expired.
    pub async fn token_owner(&self, token: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query(
            "SELECT u.*, t.name AS token_name FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(hash_token(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|r| Ok((user_from(r)?, r.try_get("token_name")?)))
            .transpose()
    }

    /// Creates the first admin and its token when no user exists yet; `None` otherwise.
    /// Racing servers cannot both succeed: the username is unique.
    pub async fn bootstrap_admin(&self, username: &str) -> Result<Option<(User, String)>> {
        if self.count_users().await? > 0 {
            return Ok(None);
        }
        let user = match self.create_user(username, "", true).await {
            Ok(u) => u,
            Err(Error::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let token = self.create_api_token(&user.id, "first admin").await?;
        Ok(Some((user, token)))
    }

    // ----- workspaces -----

    /// Creates a workspace, its agent row and its first (start) build in one transaction.
    /// A live workspace with the same owner and name, or the same pod name, is a
    /// [`Error::Conflict`] naming which.
    pub async fn create_workspace(
        &self,
        owner: &User,
        name: &str,
        pod_name: &str,
        initiator: Option<&User>,
    ) -> Result<CreatedWorkspace> {
        self.create_workspace_from(owner, name, pod_name, initiator, None)
            .await
    }

    /// [`Db::create_workspace`], recording the initiator's client address in the audit log.
    pub async fn create_workspace_from(
        &self,
        owner: &User,
        name: &str,
        pod_name: &str,
        initiator: Option<&User>,
        client_ip: Option<IpAddr>,
    ) -> Result<CreatedWorkspace> {
        let now = now_ms();
        let ws_id = new_id();
        let build_id = new_id();
        let agent_id = new_id();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO workspaces (id, owner_id, name, pod_name, desired_state, status, status_reason, \
             created_at, updated_at, status_changed_at) \
             VALUES ($1, $2, $3, $4, 'running', 'pending', 'build queued', $5, $5, $5)",
        )
        .bind(&ws_id)
        .bind(&owner.id)
        .bind(name)
        .bind(pod_name)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            drop(tx);
            if is_unique_violation(&e) {
                return Err(self.explain_workspace_conflict(owner, name, pod_name).await);
            }
            return Err(e.into());
        }
        // A placeholder hash: the build sets the real one when it writes the Secret.
        sqlx::query(
            "INSERT INTO agents (id, workspace_id, token_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(&agent_id)
        .bind(&ws_id)
        .bind(format!("unset-{agent_id}"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO builds (id, workspace_id, number, transition, status, initiator_id, created_at) \
             VALUES ($1, $2, 1, 'start', 'pending', $3, $4)",
        )
        .bind(&build_id)
        .bind(&ws_id)
        .bind(initiator.map(|u| u.id.clone()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::audit_in(
            &mut tx,
            &AuditEvent {
                actor: initiator,
                client_ip,
                action: "workspace.create",
                workspace_id: Some(&ws_id),
                detail: &format!("{}/{name}", owner.username),
                before: None,
                after: Some(DesiredState::Running.as_str().into()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedWorkspace {
            workspace: WorkspaceRecord {
                id: ws_id.clone(),
                owner_id: owner.id.clone(),
                owner_name: owner.username.clone(),
                name: name.into(),
                pod_name: pod_name.into(),
                desired_state: DesiredState::Running,
                status: WorkspaceStatus::Pending,
                status_reason: "build queued".into(),
                created_at: now,
                updated_at: now,
                status_changed_at: now,
                deleted_at: None,
            },
            build: BuildRecord {
                id: build_id,
                workspace_id: ws_id,
                number: 1,
                transition: Transition::Start,
                status: BuildStatus::Pending,
                error: None,
                initiator_id: initiator.map(|u| u.id.clone()),
                created_at: now,
                started_at: None,
                completed_at: None,
            },
            agent_id,
        })
    }

    async fn explain_workspace_conflict(&self, owner: &User, name: &str, pod_name: &str) -> Error {
        match self.workspace_by_owner_and_name(&owner.id, name).await {
            Ok(Some(_)) => Error::Conflict(format!(
                "workspace {}/{name} already exists",
                owner.username
            )),
            _ => Error::Conflict(format!(
                "workspace {}/{name} would use pod name {pod_name}, already used by another workspace; choose another name",
                owner.username
            )),
        }
    }

    /// A live workspace by id.
    pub async fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id WHERE w.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from).transpose()
    }

    /// A live workspace by owner id and name.
    pub async fn workspace_by_owner_and_name(
        &self,
        owner_id: &str,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
             WHERE w.owner_id = $1 AND w.name = $2 AND w.deleted_at IS NULL"
        ))
        .bind(owner_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from).transpose()
    }

    /// Live workspaces (not deleted), of one owner or all, by owner then name.
    pub async fn list_workspaces(&self, owner_id: Option<&str>) -> Result<Vec<WorkspaceRecord>> {
        let rows =
            match owner_id {
                Some(owner) => sqlx::query(&format!(
                    "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
                     WHERE w.deleted_at IS NULL AND w.owner_id = $1 ORDER BY u.username, w.name"
                ))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
                None => sqlx::query(&format!(
                    "SELECT {WORKSPACE_COLS} FROM workspaces w JOIN users u ON u.id = w.owner_id \
                     WHERE w.deleted_at IS NULL ORDER BY u.username, w.name"
                ))
                .fetch_all(&self.pool)
                .await?,
            };
        rows.iter().map(workspace_from).collect()
    }

    /// Writes a derived status when it differs from the stored one; returns whether it changed.
    pub async fn set_workspace_status(
        &self,
        id: &str,
        status: WorkspaceStatus,
        reason: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4, \
             status_changed_at = CASE WHEN status = $2 THEN status_changed_at ELSE $4 END \
             WHERE id = $1 AND (status <> $2 OR status_reason <> $3)",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks a workspace deleted (its name becomes free again).
    pub async fn mark_workspace_deleted(&self, id: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE workspaces SET status = 'deleted', status_reason = '', deleted_at = $2, updated_at = $2, \
             status_changed_at = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ----- builds -----

    /// Queues a build and records the desired state it asks for, in one transaction. A build
    /// already in flight, or a deleted workspace, is a [`Error::Conflict`].
    pub async fn create_build(
        &self,
        workspace_id: &str,
        transition: Transition,
        initiator: Option<&User>,
    ) -> Result<BuildRecord> {
        self.create_build_from(workspace_id, transition, initiator, None)
            .await
    }

    /// [`Db::create_build`], recording the initiator's client address in the audit log.
    pub async fn create_build_from(
        &self,
        workspace_id: &str,
        transition: Transition,
        initiator: Option<&User>,
        client_ip: Option<IpAddr>,
    ) -> Result<BuildRecord> {
        let now = now_ms();
        let id = new_id();
        let before = self.workspace(workspace_id).await?.map(|w| w.desired_state);
        let mut tx = self.pool.begin().await?;
        // Write first: on SQLite this takes the write lock before any read.
        let updated = sqlx::query(
            "UPDATE workspaces SET desired_state = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL \
             AND desired_state <> 'deleted'",
        )
        .bind(workspace_id)
        .bind(transition.desired_state().as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::Conflict(
                "the workspace is deleted or being deleted".into(),
            ));
        }
        let number: i64 = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) + 1 AS n FROM builds WHERE workspace_id = $1",
        )
        .bind(workspace_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let inserted = sqlx::query(
            "INSERT INTO builds (id, workspace_id, number, transition, status, initiator_id, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
        )
        .bind(&id)
        .bind(workspace_id)
        .bind(number)
        .bind(transition.as_str())
        .bind(initiator.map(|u| u.id.clone()))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(
                    "a build is already in progress for this workspace; wait for it to finish"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Self::audit_in(
            &mut tx,
            &AuditEvent {
                actor: initiator,
                client_ip,
                action: &format!("build.{}", transition.as_str()),
                workspace_id: Some(workspace_id),
                detail: &format!("build #{number}"),
                before: before.map(|d| d.as_str().to_string()),
                after: Some(transition.desired_state().as_str().into()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(BuildRecord {
            id,
            workspace_id: workspace_id.into(),
            number,
            transition,
            status: BuildStatus::Pending,
            error: None,
            initiator_id: initiator.map(|u| u.id.clone()),
            created_at: now,
            started_at: None,
            completed_at: None,
        })
    }

    /// A build by id.
    pub async fn build(&self, id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(build_from).transpose()
    }

    /// The newest build of a workspace.
    pub async fn latest_build(&self, workspace_id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE workspace_id = $1 ORDER BY number DESC LIMIT 1"
        ))
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(build_from).transpose()
    }

    /// The newest build of every live workspace (of one owner, or all), by workspace id.
    pub async fn latest_builds(
        &self,
        owner_id: Option<&str>,
    ) -> Result<BTreeMap<String, BuildRecord>> {
        let rows = sqlx::query(
            "SELECT b.id, b.workspace_id, b.number, b.transition, b.status, b.error, b.initiator_id, \
             b.created_at, b.started_at, b.completed_at FROM builds b JOIN workspaces w ON w.id = b.workspace_id \
             JOIN (SELECT m.workspace_id, MAX(m.number) AS n FROM builds m GROUP BY m.workspace_id) latest \
             ON latest.workspace_id = b.workspace_id AND latest.n = b.number \
             WHERE w.deleted_at IS NULL AND ($1 = '' OR w.owner_id = $1)",
        )
        .bind(owner_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| build_from(r).map(|b| (b.workspace_id.clone(), b)))
            .collect()
    }

    /// Builds of a workspace, newest first.
    pub async fn list_builds(&self, workspace_id: &str) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE workspace_id = $1 ORDER BY number DESC"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(build_from).collect()
    }

    /// Builds still pending or running (after a restart: the ones to finish), oldest first.
    pub async fn active_builds(&self) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {BUILD_COLS} FROM builds WHERE status IN ('pending', 'running') ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(build_from).collect()
    }

    /// Moves a build to `running` (from `pending`, or again from `running` after a restart).
    pub async fn start_build(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET status = 'running', started_at = COALESCE(started_at, $2) \
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finishes a build (succeeded, failed or canceled) with its error.
    pub async fn finish_build(
        &self,
        id: &str,
        status: BuildStatus,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET status = $2, error = $3, completed_at = $4 WHERE id = $1 \
             AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ----- agents -----

    /// The agent of a workspace.
    pub async fn agent_for_workspace(&self, workspace_id: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE workspace_id = $1"
        ))
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// The agent a token hash belongs to, if its workspace is live.
    pub async fn agent_by_token_hash(&self, token_hash: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(
            "SELECT a.id, a.workspace_id, a.token_hash, a.lifecycle, a.lifecycle_reason, a.connection, \
             a.first_connected_at, a.last_contact_at, a.apps, a.stats, a.version, a.created_at, a.updated_at \
             FROM agents a JOIN workspaces w ON w.id = a.workspace_id \
             WHERE a.token_hash = $1 AND w.deleted_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// Agents of every live workspace (loaded into memory at start).
    pub async fn live_agents(&self) -> Result<Vec<AgentRecord>> {
        let rows = sqlx::query(
            "SELECT a.id, a.workspace_id, a.token_hash, a.lifecycle, a.lifecycle_reason, a.connection, \
             a.first_connected_at, a.last_contact_at, a.apps, a.stats, a.version, a.created_at, a.updated_at \
             FROM agents a JOIN workspaces w ON w.id = a.workspace_id WHERE w.deleted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from).collect()
    }

    /// Sets a new token hash and resets the agent for a new pod (lifecycle `created`,
    /// `connecting`, connection timeout counted from now).
    pub async fn reset_agent(&self, agent_id: &str, token_hash: Option<&str>) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE agents SET token_hash = COALESCE($2, token_hash), lifecycle = 'created', lifecycle_reason = '', \
             connection = 'connecting', first_connected_at = NULL, last_contact_at = NULL, apps = '{}', \
             created_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(agent_id)
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes many heartbeats in as few statements as possible (one per
    /// [`HEARTBEAT_BATCH_ROWS`]). Rows of agents that no longer exist are skipped, never created.
    pub async fn write_heartbeats(&self, writes: &[HeartbeatWrite]) -> Result<()> {
        for chunk in writes.chunks(HEARTBEAT_BATCH_ROWS) {
            let mut values = String::with_capacity(chunk.len() * 48);
            for i in 0..chunk.len() {
                let b = i * 8;
                if i > 0 {
                    values.push(',');
                }
                values.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                ));
            }
            let sql = format!(
                "WITH v (id, lifecycle, lifecycle_reason, first_connected_at, last_contact_at, apps, stats, version) \
                 AS (VALUES {values}) \
                 UPDATE agents SET (lifecycle, lifecycle_reason, connection, first_connected_at, last_contact_at, \
                 apps, stats, version, updated_at) = \
                 (SELECT v.lifecycle, v.lifecycle_reason, 'connected', v.first_connected_at, v.last_contact_at, \
                 v.apps, v.stats, v.version, v.last_contact_at FROM v WHERE v.id = agents.id) \
                 WHERE agents.id IN (SELECT id FROM v)"
            );
            let mut q = sqlx::query(&sql);
            for w in chunk {
                q = q
                    .bind(&w.agent_id)
                    .bind(w.lifecycle.as_str())
                    .bind(&w.lifecycle_reason)
                    .bind(w.first_connected_at)
                    .bind(w.last_contact_at)
                    .bind(&w.apps_json)
                    .bind(w.stats_json.clone())
                    .bind(&w.version);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Records computed connection statuses that changed (by agent id).
    pub async fn set_agent_connections(
        &self,
        changes: &[(String, ConnectionStatus)],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, c) in changes {
            sqlx::query("UPDATE agents SET connection = $2 WHERE id = $1")
                .bind(id)
                .bind(c.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- OIDC users and browser sessions (identity::UserStore / SessionStore) -----

    /// Creates the user an OIDC login names, or updates it (users are keyed by issuer and
    /// subject): owner name, login, email, display name and role, re-evaluated at each login.
    /// A role change is audited with the client address. An owner name that belongs to another
    /// account is a [`Error::Conflict`].
    pub async fn upsert_oidc_user(
        &self,
        profile: &UserProfile,
        client_ip: Option<IpAddr>,
    ) -> Result<UserRecord> {
        // Two first logins of one account racing (PostgreSQL): the loser retries as an update.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upsert_oidc_user_once(profile, client_ip).await {
                Err(Error::Conflict(_))
                    if attempt == 1 && self.oidc_user_exists(profile).await? =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    async fn oidc_user_exists(&self, profile: &UserProfile) -> Result<bool> {
        Ok(
            sqlx::query("SELECT id FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2")
                .bind(&profile.issuer)
                .bind(&profile.subject)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn upsert_oidc_user_once(
        &self,
        profile: &UserProfile,
        client_ip: Option<IpAddr>,
    ) -> Result<UserRecord> {
        let now = now_ms();
        let is_admin = profile.role == Role::Admin;
        let taken = || {
            Error::Conflict(format!(
                "owner name {:?} (from login {:?}) already belongs to another account",
                profile.owner_name, profile.login
            ))
        };
        let mut tx = self.pool.begin().await?;
        let existing =
            sqlx::query("SELECT * FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2")
                .bind(&profile.issuer)
                .bind(&profile.subject)
                .fetch_optional(&mut *tx)
                .await?;
        let (id, before) = match existing {
            Some(row) => {
                let user = user_from(&row)?;
                let r = sqlx::query(
                    "UPDATE users SET username = $2, email = $3, display_name = $4, oidc_login = $5, \
                     is_admin = $6, login_type = 'oidc', updated_at = $7 WHERE id = $1",
                )
                .bind(&user.id)
                .bind(&profile.owner_name)
                .bind(profile.email.as_deref().unwrap_or(""))
                .bind(profile.name.as_deref().unwrap_or(""))
                .bind(&profile.login)
                .bind(i64::from(is_admin))
                .bind(now)
                .execute(&mut *tx)
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(taken()),
                    Err(e) => return Err(e.into()),
                }
                (user.id, Some(role_of(user.is_admin)))
            }
            None => {
                let id = new_id();
                let r = sqlx::query(
                    "INSERT INTO users (id, username, email, is_admin, login_type, oidc_subject, oidc_issuer, \
                     display_name, oidc_login, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'oidc', $5, $6, $7, $8, $9, $9)",
                )
                .bind(&id)
                .bind(&profile.owner_name)
                .bind(profile.email.as_deref().unwrap_or(""))
                .bind(i64::from(is_admin))
                .bind(&profile.subject)
                .bind(&profile.issuer)
                .bind(profile.name.as_deref().unwrap_or(""))
                .bind(&profile.login)
                .bind(now)
                .execute(&mut *tx)
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(taken()),
                    Err(e) => return Err(e.into()),
                }
                (id, None)
            }
        };
        let actor = User {
            id: id.clone(),
            username: profile.owner_name.clone(),
            email: profile.email.clone().unwrap_or_default(),
            is_admin,
            login_type: "oidc".into(),
            created_at: now,
        };
        let after = profile.role;
        if before != Some(after) {
            Self::audit_in(
                &mut tx,
                &AuditEvent {
                    actor: Some(&actor),
                    client_ip,
                    action: if before.is_none() {
                        "user.create"
                    } else {
                        "user.role"
                    },
                    workspace_id: None,
                    detail: &format!("OIDC login {:?}: role from the groups claim", profile.login),
                    before: before.map(|r| r.as_str().to_string()),
                    after: Some(after.as_str().to_string()),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(UserRecord {
            id,
            login: profile.login.clone(),
            owner_name: profile.owner_name.clone(),
            email: profile.email.clone(),
            name: profile.name.clone(),
            role: after,
        })
    }

    /// A user as the identity module sees it.
    pub async fn identity_user(&self, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user = user_from(&row)?;
        let login: String = row.try_get("oidc_login")?;
        let name: String = row.try_get("display_name")?;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Ok(Some(UserRecord {
            login: if login.is_empty() {
                user.username.clone()
            } else {
                login
            },
            owner_name: user.username,
            email: non_empty(user.email),
            name: non_empty(name),
            role: role_of(user.is_admin),
            id: user.id,
        }))
    }

    /// Stores a browser session in `api_tokens` (hash only, named [`OIDC_SESSION_TOKEN_NAME`]),
    /// so the API-token authenticator recognises its cookie until it expires.
    pub async fn create_session(&self, s: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at, client_ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(random_secret(10))
        .bind(&s.user_id)
        .bind(&s.token_hash)
        .bind(OIDC_SESSION_TOKEN_NAME)
        .bind(s.created_at.timestamp_millis())
        .bind(s.expires_at.timestamp_millis())
        .bind(s.client_ip.map(|ip| ip.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The browser session with this token hash (expired ones included; revoked ones are gone).
    pub async fn find_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT user_id, created_at, expires_at, client_ip FROM api_tokens \
             WHERE token_hash = $1 AND name = $2",
        )
        .bind(token_hash)
        .bind(OIDC_SESSION_TOKEN_NAME)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let expires: Option<i64> = row.try_get("expires_at")?;
        let ip: Option<String> = row.try_get("client_ip")?;
        Ok(Some(SessionRecord {
            token_hash: token_hash.to_string(),
            user_id: row.try_get("user_id")?,
            created_at: time(row.try_get("created_at")?),
            expires_at: time(expires.unwrap_or(0)),
            client_ip: ip.and_then(|s| s.parse().ok()),
        }))
    }

    /// Revokes (deletes) a browser session; `true` when there was one.
    pub async fn revoke_session(&self, token_hash: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1 AND name = $2")
            .bind(token_hash)
            .bind(OIDC_SESSION_TOKEN_NAME)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ----- audit -----

    async fn audit_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, e: &AuditEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_id, actor_name, action, workspace_id, detail, \
             client_ip, before_value, after_value) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(now_ms())
        .bind(e.actor.map(|u| u.id.clone()))
        .bind(e.actor.map(|u| u.username.as_str()).unwrap_or("system"))
        .bind(e.action)
        .bind(e.workspace_id)
        .bind(e.detail)
        .bind(e.client_ip.map(|ip| ip.to_string()))
        .bind(e.before.as_deref())
        .bind(e.after.as_deref())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records who did what to which workspace.
    pub async fn audit(
        &self,
        actor: Option<&User>,
        action: &str,
        workspace_id: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        self.record(&AuditEvent {
            actor,
            action,
            workspace_id,
            detail,
            ..AuditEvent::default()
        })
        .await
    }

    /// Records an audit event (with client address and before/after).
    pub async fn record(&self, event: &AuditEvent<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::audit_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The audit log, newest first, optionally for one workspace.
    pub async fn audit_log(
        &self,
        workspace_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        self.audit_query(&AuditFilter {
            workspace_id: workspace_id.map(String::from),
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// The audit log, newest first, filtered.
    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        // Text parameters first, then integers: each clause takes the next `$n`.
        let mut sql = String::from("SELECT * FROM audit_log WHERE 1 = 1");
        let mut text: Vec<String> = vec![];
        let mut ints: Vec<i64> = vec![];
        let next = |text: &Vec<String>, ints: &Vec<i64>| text.len() + ints.len() + 1;
        if let Some(ws) = &f.workspace_id {
            sql.push_str(&format!(" AND workspace_id = ${}", next(&text, &ints)));
            text.push(ws.clone());
        }
        if let Some(user) = &f.user {
            let n = next(&text, &ints);
            sql.push_str(&format!(
                " AND (actor_name = ${n} OR actor_id = ${})",
                n + 1
            ));
            text.push(user.clone());
            text.push(user.clone());
        }
        if let Some(action) = &f.action {
            let n = next(&text, &ints);
            match action.strip_suffix('*') {
                Some(prefix) => {
                    sql.push_str(&format!(" AND action LIKE ${n}"));
                    text.push(format!("{}%", prefix.replace('%', "")));
                }
                None => {
                    sql.push_str(&format!(" AND action = ${n}"));
                    text.push(action.clone());
                }
            }
        }
        if let Some(since) = f.since {
            sql.push_str(&format!(" AND at >= ${}", next(&text, &ints)));
            ints.push(since);
        }
        if let Some(until) = f.until {
            sql.push_str(&format!(" AND at < ${}", next(&text, &ints)));
            ints.push(until);
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next(&text, &ints)));
        ints.push(f.limit);
        let mut q = sqlx::query(&sql);
        for t in &text {
            q = q.bind(t.as_str());
        }
        for i in &ints {
            q = q.bind(*i);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor_id: r.try_get("actor_id")?,
                    actor_name: r.try_get("actor_name")?,
                    action: r.try_get("action")?,
                    workspace_id: r.try_get("workspace_id")?,
                    detail: r.try_get("detail")?,
                    client_ip: r.try_get("client_ip")?,
                    before: r.try_get("before_value")?,
                    after: r.try_get("after_value")?,
                })
            })
            .collect()
    }
}
