//! The HTTP surface: [`router`] wires the `/api/v2` workspace API (Coder-like JSON shapes),
//! the agent API, agent distribution, the app proxy, the browser dashboard
//! ([`crate::dashboard`]), and `/healthz`, `/readyz`, `/metrics`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt, stream};
use lumie_contract::agent_api::{AppHealth, ResourceStats};
use lumie_contract::apps;
use lumie_contract::naming::WorkspaceNames;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::caller::Principal;
use crate::db::{AuditEvent, AuditFilter};
use crate::error::{Error, Result};
use crate::model::*;
use crate::state::AppState;

/// The whole HTTP router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v2/buildinfo", get(buildinfo))
        .route("/api/v2/users", get(list_users).post(create_user))
        .route("/api/v2/users/{user}", get(get_user))
        .route("/api/v2/users/{user}/keys", get(list_keys).post(create_key))
        .route("/api/v2/users/{user}/keys/{id}", delete(revoke_key))
        .route("/api/v2/users/{user}/workspaces", post(create_workspace))
        .route(
            "/api/v2/users/{user}/workspace/{name}",
            get(get_workspace_by_name),
        )
        .route("/api/v2/workspaces", get(list_workspaces))
        .route("/api/v2/workspaces/watch", get(watch_workspaces))
        .route("/api/v2/workspacenames", get(check_workspace_name))
        .route("/api/v2/workspaces/{id}", get(get_workspace))
        .route(
            "/api/v2/workspaces/{id}/builds",
            get(list_builds).post(create_build),
        )
        .route("/api/v2/workspaces/{id}/watch", get(watch_workspace))
        .route(
            "/api/v2/workspaces/{id}/logs",
            get(crate::startup_logs::get_logs),
        )
        .route("/api/v2/audit", get(audit_log))
        .merge(crate::dashboard::routes())
        .merge(crate::policy_api::routes())
        .merge(crate::agent_api::routes())
        .merge(crate::sessions::routes())
        .merge(crate::distribution::routes())
        // The server's own routes answer errors as JSON; the app proxy (merged after this layer)
        // passes the apps' answers through untouched.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::rejections::BODY_LIMIT_BYTES,
        ))
        .layer(axum::middleware::from_fn(
            crate::rejections::json_rejections,
        ))
        .merge(crate::app_proxy::routes())
        .with_state(state)
}

// ----- JSON shapes -----

/// A user, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserJson {
    /// Id.
    pub id: String,
    /// Name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Admin.
    pub is_admin: bool,
    /// `token` or `oidc`.
    pub login_type: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&User> for UserJson {
    fn from(u: &User) -> Self {
        UserJson {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            is_admin: u.is_admin,
            login_type: u.login_type.clone(),
            created_at: rfc3339(u.created_at),
        }
    }
}

/// A build, as the API shows it (Coder's `WorkspaceBuild`, trimmed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildJson {
    /// Id.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// 1, 2, …
    pub build_number: i64,
    /// `start`, `stop`, `delete`.
    pub transition: Transition,
    /// `pending`, `running`, `succeeded`, `failed`, `canceled`.
    pub status: BuildStatus,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Who asked.
    #[serde(default)]
    pub initiator_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub completed_at: Option<String>,
}

impl From<&BuildRecord> for BuildJson {
    fn from(b: &BuildRecord) -> Self {
        BuildJson {
            id: b.id.clone(),
            workspace_id: b.workspace_id.clone(),
            build_number: b.number,
            transition: b.transition,
            status: b.status,
            error: b.error.clone(),
            initiator_id: b.initiator_id.clone(),
            created_at: rfc3339(b.created_at),
            started_at: b.started_at.map(rfc3339),
            completed_at: b.completed_at.map(rfc3339),
        }
    }
}

/// The workspace agent, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentJson {
    /// Id.
    pub id: String,
    /// Lifecycle (`created`, `starting`, `ready`, …).
    pub lifecycle_state: String,
    /// Why, for failure states.
    #[serde(default)]
    pub lifecycle_reason: String,
    /// Connection (`connecting`, `connected`, `disconnected`, `timeout`).
    pub status: String,
    /// RFC 3339.
    #[serde(default)]
    pub first_connected_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_connected_at: Option<String>,
    /// App health by slug.
    #[serde(default)]
    pub apps: BTreeMap<String, AppHealth>,
    /// Latest stats.
    #[serde(default)]
    pub stats: Option<ResourceStats>,
    /// Agent version.
    #[serde(default)]
    pub version: String,
}

impl From<&AgentView> for AgentJson {
    fn from(a: &AgentView) -> Self {
        AgentJson {
            id: a.id.clone(),
            lifecycle_state: a.lifecycle.as_str().into(),
            lifecycle_reason: a.lifecycle_reason.clone(),
            status: a.connection.as_str().into(),
            first_connected_at: a.first_connected_at.map(rfc3339),
            last_connected_at: a.last_contact_at.map(rfc3339),
            apps: a.apps.clone(),
            stats: a.stats.clone(),
            version: a.version.clone(),
        }
    }
}

/// A workspace app and where to open it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppJson {
    /// Slug.
    pub slug: String,
    /// Display name.
    pub display_name: String,
    /// Where to open it: the subdomain app URL when `CODER_WILDCARD_ACCESS_URL` is set, the
    /// path-based one otherwise.
    pub url: String,
    /// Health reported by the agent.
    pub health: AppHealth,
}

/// A workspace, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceJson {
    /// Id.
    pub id: String,
    /// Owner id.
    pub owner_id: String,
    /// Owner name.
    pub owner_name: String,
    /// Name.
    pub name: String,
    /// Pod name in the workspace namespace.
    pub pod_name: String,
    /// `running`, `stopped`, `deleted`.
    pub desired_state: DesiredState,
    /// Derived status.
    pub status: WorkspaceStatus,
    /// Why, when not running.
    pub status_reason: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339.
    pub status_changed_at: String,
    /// Newest build.
    #[serde(default)]
    pub latest_build: Option<BuildJson>,
    /// The agent.
    #[serde(default)]
    pub agent: Option<AgentJson>,
    /// Apps.
    #[serde(default)]
    pub apps: Vec<AppJson>,
    /// When a terminal, SSH or TCP session last carried anything into the workspace (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// `GET /api/v2/workspaces`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkspacesJson {
    /// The workspaces.
    pub workspaces: Vec<WorkspaceJson>,
    /// How many.
    pub count: usize,
}

pub(crate) fn workspace_json(
    state: &AppState,
    ws: &WorkspaceRecord,
    build: Option<&BuildRecord>,
) -> WorkspaceJson {
    let agent = state.agents.view(&ws.id);
    let base = &state.config.access_url;
    let apps = apps::ALL
        .iter()
        .map(|a| AppJson {
            slug: a.slug.into(),
            display_name: a.display_name.into(),
            // Subdomain mode: the app's own origin (its first visit goes through
            // `/api/v2/applications/auth-redirect`); path-based otherwise.
            url: match &state.edge.wildcard {
                Some(w) => format!(
                    "{}/",
                    w.origin_of(&crate::app_proxy::app_label(
                        a.slug,
                        &ws.name,
                        &ws.owner_name
                    ))
                ),
                None => format!("{base}/@{}/{}/apps/{}/", ws.owner_name, ws.name, a.slug),
            },
            health: agent
                .as_ref()
                .and_then(|ag| ag.apps.get(a.slug).copied())
                .unwrap_or_default(),
        })
        .collect();
    WorkspaceJson {
        id: ws.id.clone(),
        owner_id: ws.owner_id.clone(),
        owner_name: ws.owner_name.clone(),
        name: ws.name.clone(),
        pod_name: ws.pod_name.clone(),
        desired_state: ws.desired_state,
        status: ws.status,
        status_reason: ws.status_reason.clone(),
        created_at: rfc3339(ws.created_at),
        updated_at: rfc3339(ws.updated_at),
        status_changed_at: rfc3339(ws.status_changed_at),
        latest_build: build.map(BuildJson::from),
        agent: agent.as_ref().map(AgentJson::from),
        apps,
        last_used_at: state.sessions.last_used(&ws.id).map(rfc3339),
    }
}

pub(crate) async fn full_workspace(
    state: &AppState,
    ws: &WorkspaceRecord,
) -> Result<WorkspaceJson> {
    let build = state.db.latest_build(&ws.id).await?;
    Ok(workspace_json(state, ws, build.as_ref()))
}

// ----- helpers -----

async fn resolve_user(state: &AppState, p: &Principal, key: &str) -> Result<User> {
    if key == "me" {
        return Ok(p.user.clone());
    }
    let found = match state.db.user_by_name(key).await? {
        Some(u) => Some(u),
        None => state.db.user_by_id(key).await?,
    };
    found.ok_or_else(|| Error::NotFound(format!("user {key:?} not found")))
}

/// A workspace the principal may see; others' workspaces are "not found" to non-admins.
pub async fn visible_workspace(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<WorkspaceRecord> {
    match state.db.workspace(id).await? {
        Some(ws) if p.may_act_for(&ws.owner_id) => Ok(ws),
        _ => Err(Error::NotFound(format!("workspace {id} not found"))),
    }
}

// ----- handlers -----

/// `ok`, or 503 `draining` once a shutdown began (see `serve::run`): what load balancers check.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.read().expect("readiness lock").draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// `/readyz` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadyJson {
    /// Ready to serve.
    pub ready: bool,
    /// Database migrated.
    pub database: bool,
    /// Kube API reachable.
    pub kube: bool,
    /// Non-fatal problems (contract drift, no agent binary to serve).
    pub warnings: Vec<String>,
    /// The agent binaries the server serves (`LUMIE_AGENT_BINARY_DIR`).
    #[serde(default)]
    pub agent_binaries: Vec<String>,
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyJson>) {
    let database = state.db.is_migrated().await.unwrap_or(false);
    let r = state.readiness.read().expect("readiness lock").clone();
    let kube = state.kube.is_some() && r.kube_reachable;
    let ready = database && kube && !r.draining;
    // Not a readiness failure: the API and running workspaces work; new pods cannot start.
    let dir = &state.config.agent_binary_dir;
    let agent_binaries = crate::distribution::available(dir);
    let mut warnings = r.warnings;
    warnings.extend(crate::distribution::missing_binary_warning(
        dir,
        &agent_binaries,
    ));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(ReadyJson {
            ready,
            database,
            kube,
            warnings,
            agent_binaries,
        }),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// The version and the git revision the server was built from (as `--version` prints them).
async fn buildinfo() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": lumie_build_info::REVISION,
    }))
}

async fn list_users(State(state): State<AppState>, p: Principal) -> Result<Json<Vec<UserJson>>> {
    p.require_admin()?;
    Ok(Json(
        state
            .db
            .list_users()
            .await?
            .iter()
            .map(UserJson::from)
            .collect(),
    ))
}

/// `POST /api/v2/users`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateUserRequest {
    /// DNS-1123 label.
    pub username: String,
    /// E-mail.
    #[serde(default)]
    pub email: String,
    /// Make an admin.
    #[serde(default)]
    pub is_admin: bool,
}

async fn create_user(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserJson>)> {
    p.require_admin()?;
    lumie_contract::naming::validate_dns_label(&req.username)
        .map_err(|e| Error::BadRequest(format!("username {:?} {e}", req.username)))?;
    let u = state
        .db
        .create_user(&req.username, &req.email, req.is_admin)
        .await?;
    state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "user.create",
            detail: &u.username,
            after: Some(if u.is_admin { "admin" } else { "member" }.into()),
            ..AuditEvent::default()
        })
        .await?;
    Ok((StatusCode::CREATED, Json(UserJson::from(&u))))
}

async fn get_user(
    State(state): State<AppState>,
    p: Principal,
    Path(user): Path<String>,
) -> Result<Json<UserJson>> {
    let u = resolve_user(&state, &p, &user).await?;
    if !p.may_act_for(&u.id) {
        return Err(Error::NotFound(format!("user {user:?} not found")));
    }
    Ok(Json(UserJson::from(&u)))
}

/// `POST /api/v2/users/{user}/keys` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyJson {
    /// The token: shown once, stored hashed.
    pub key: String,
    /// Its id (for revoking it).
    #[serde(default)]
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// RFC 3339; none: does not expire.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /api/v2/users/{user}/keys` body (optional: without one the token is named `api` and
/// does not expire, as before).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateKeyRequest {
    /// A name to recognise it by in the list.
    #[serde(default)]
    pub token_name: Option<String>,
    /// Seconds until it stops working; none: never.
    #[serde(default)]
    pub lifetime_seconds: Option<i64>,
}

/// Longest token lifetime the API issues.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 366 * 24 * 3600;
/// Longest token name.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// A token's name and expiry from a create request, or the sentence saying what is wrong.
pub fn token_request(req: &CreateKeyRequest, now_ms: i64) -> Result<(String, Option<i64>)> {
    let name = req
        .token_name
        .as_deref()
        .unwrap_or("api")
        .trim()
        .to_string();
    if name.is_empty() {
        return Err(Error::BadRequest("a token needs a name".into()));
    }
    if name.chars().count() > MAX_TOKEN_NAME_CHARS {
        return Err(Error::BadRequest(format!(
            "a token name is at most {MAX_TOKEN_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "a token name cannot contain control characters".into(),
        ));
    }
    if name == crate::db::OIDC_SESSION_TOKEN_NAME {
        return Err(Error::BadRequest(format!(
            "{name:?} is reserved for browser sessions"
        )));
    }
    let expires_at = match req.lifetime_seconds {
        None => None,
        Some(s) if (1..=MAX_TOKEN_LIFETIME_SECONDS).contains(&s) => Some(now_ms + s * 1000),
        Some(s) => {
            return Err(Error::BadRequest(format!(
                "lifetime_seconds {s} is out of range: 1 to {MAX_TOKEN_LIFETIME_SECONDS} (366 days)"
            )));
        }
    };
    Ok((name, expires_at))
}

async fn create_key(
    State(state): State<AppState>,
    p: Principal,
    Path(user): Path<String>,
    body: Option<Json<CreateKeyRequest>>,
) -> Result<(StatusCode, Json<KeyJson>)> {
    let u = resolve_user(&state, &p, &user).await?;
    if !p.may_act_for(&u.id) {
        return Err(Error::Forbidden(
            "only the user or an admin may issue their tokens".into(),
        ));
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let (name, expires_at) = token_request(&req, now_ms())?;
    let (id, key) = state
        .db
        .create_api_token_until(&u.id, &name, expires_at)
        .await?;
    state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "token.create",
            detail: &u.username,
            after: Some(format!("{id} {name}")),
            ..AuditEvent::default()
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyJson {
            key,
            id,
            name,
            expires_at: expires_at.map(rfc3339),
        }),
    ))
}

/// An API token in `GET /api/v2/users/{user}/keys` (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenJson {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, to the minute.
    #[serde(default)]
    pub last_used_at: Option<String>,
    /// RFC 3339; none: does not expire.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl From<&crate::db::ApiTokenInfo> for TokenJson {
    fn from(t: &crate::db::ApiTokenInfo) -> Self {
        TokenJson {
            id: t.id.clone(),
            name: t.name.clone(),
            created_at: rfc3339(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339),
            expires_at: t.expires_at.map(rfc3339),
        }
    }
}

/// The user whose tokens `p` may list or revoke: themselves, or anyone for an admin.
async fn token_owner_for(state: &AppState, p: &Principal, user: &str) -> Result<User> {
    let u = resolve_user(state, p, user).await?;
    if !p.may_act_for(&u.id) {
        return Err(Error::Forbidden(
            "only the user or an admin may see or revoke their tokens".into(),
        ));
    }
    Ok(u)
}

async fn list_keys(
    State(state): State<AppState>,
    p: Principal,
    Path(user): Path<String>,
) -> Result<Json<Vec<TokenJson>>> {
    let u = token_owner_for(&state, &p, &user).await?;
    Ok(Json(
        state
            .db
            .list_api_tokens(&u.id)
            .await?
            .iter()
            .map(TokenJson::from)
            .collect(),
    ))
}

async fn revoke_key(
    State(state): State<AppState>,
    p: Principal,
    Path((user, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    let u = token_owner_for(&state, &p, &user).await?;
    if !state.db.revoke_api_token(&u.id, &id).await? {
        return Err(Error::NotFound(format!(
            "{}'s token {id:?} not found",
            u.username
        )));
    }
    state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "token.revoke",
            detail: &u.username,
            before: Some(id),
            ..AuditEvent::default()
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v2/workspacenames` query.
#[derive(Debug, Deserialize)]
pub struct NameQuery {
    /// Owner name (default: the caller).
    pub owner: Option<String>,
    /// The proposed workspace name.
    #[serde(default)]
    pub name: String,
}

/// `GET /api/v2/workspacenames` answer: the contract's verdict on a proposed name, so the
/// dashboard validates as the user types with the very rules `create` applies.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameCheckJson {
    /// Valid.
    pub valid: bool,
    /// Why not, as the create call would say it.
    #[serde(default)]
    pub error: Option<String>,
    /// Pod name it will get.
    #[serde(default)]
    pub pod: Option<String>,
    /// Home volume (PVC) name it will get.
    #[serde(default)]
    pub home_volume: Option<String>,
}

/// The contract's verdict on `owner`/`name` (pure; the endpoint and the dashboard share it).
pub fn name_check(owner: &str, name: &str) -> NameCheckJson {
    match WorkspaceNames::new(owner, name) {
        Ok(n) => NameCheckJson {
            valid: true,
            error: None,
            pod: Some(n.pod),
            home_volume: Some(n.home_pvc),
        },
        Err(e) => NameCheckJson {
            valid: false,
            error: Some(e.to_string()),
            pod: None,
            home_volume: None,
        },
    }
}

async fn check_workspace_name(
    p: Principal,
    Query(q): Query<NameQuery>,
) -> Result<Json<NameCheckJson>> {
    let owner = q.owner.unwrap_or_else(|| p.user.username.clone());
    Ok(Json(name_check(&owner, &q.name)))
}

/// `POST /api/v2/users/{user}/workspaces`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateWorkspaceRequest {
    /// DNS-1123 label.
    pub name: String,
}

async fn create_workspace(
    State(state): State<AppState>,
    p: Principal,
    Path(user): Path<String>,
    Json(req): Json<CreateWorkspaceRequest>,
) -> Result<(StatusCode, Json<WorkspaceJson>)> {
    let owner = resolve_user(&state, &p, &user).await?;
    if !p.may_act_for(&owner.id) {
        return Err(Error::Forbidden(
            "only admins may create workspaces for other users".into(),
        ));
    }
    let names = WorkspaceNames::new(&owner.username, &req.name)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let created = state
        .db
        .create_workspace_from(&owner, &req.name, &names.pod, Some(&p.user), p.client_ip)
        .await?;
    state.build_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(workspace_json(
            &state,
            &created.workspace,
            Some(&created.build),
        )),
    ))
}

async fn get_workspace_by_name(
    State(state): State<AppState>,
    p: Principal,
    Path((user, name)): Path<(String, String)>,
) -> Result<Json<WorkspaceJson>> {
    let owner = resolve_user(&state, &p, &user).await?;
    let not_found = || Error::NotFound(format!("workspace {user}/{name} not found"));
    if !p.may_act_for(&owner.id) {
        return Err(not_found());
    }
    let ws = state
        .db
        .workspace_by_owner_and_name(&owner.id, &name)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(full_workspace(&state, &ws).await?))
}

/// `GET /api/v2/workspaces` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Admins: only this owner's (username).
    pub owner: Option<String>,
}

async fn list_workspaces(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<WorkspacesJson>> {
    let owner_id = if p.user.is_admin {
        match q.owner.as_deref() {
            Some(name) => Some(resolve_user(&state, &p, name).await?.id),
            None => None,
        }
    } else {
        Some(p.user.id.clone())
    };
    let list = state.db.list_workspaces(owner_id.as_deref()).await?;
    let builds = state.db.latest_builds(owner_id.as_deref()).await?;
    let workspaces: Vec<_> = list
        .iter()
        .map(|ws| workspace_json(&state, ws, builds.get(&ws.id)))
        .collect();
    Ok(Json(WorkspacesJson {
        count: workspaces.len(),
        workspaces,
    }))
}

async fn get_workspace(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<WorkspaceJson>> {
    let ws = visible_workspace(&state, &p, &id).await?;
    Ok(Json(full_workspace(&state, &ws).await?))
}

async fn list_builds(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<BuildJson>>> {
    let ws = visible_workspace(&state, &p, &id).await?;
    Ok(Json(
        state
            .db
            .list_builds(&ws.id)
            .await?
            .iter()
            .map(BuildJson::from)
            .collect(),
    ))
}

/// `POST /api/v2/workspaces/{id}/builds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateBuildRequest {
    /// `start`, `stop` or `delete`.
    pub transition: Transition,
}

async fn create_build(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Json(req): Json<CreateBuildRequest>,
) -> Result<(StatusCode, Json<BuildJson>)> {
    let ws = visible_workspace(&state, &p, &id).await?;
    let b = state
        .db
        .create_build_from(&ws.id, req.transition, Some(&p.user), p.client_ip)
        .await?;
    state.build_wake.notify_one();
    state.dirty.mark(&ws.id);
    Ok((StatusCode::CREATED, Json(BuildJson::from(&b))))
}

fn sse_event(ws: &WorkspaceJson) -> Event {
    Event::default()
        .event("workspace")
        .json_data(ws)
        .unwrap_or_else(|_| Event::default().event("error").data("encoding failed"))
}

async fn watch_workspace(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let ws = visible_workspace(&state, &p, &id).await?;
    let rx = state.events.subscribe();
    let first = full_workspace(&state, &ws).await?;
    let last_status = (first.status, first.status_reason.clone());
    let head = stream::once(futures::future::ready(Ok(sse_event(&first))));
    let tail = stream::unfold(
        (rx, state, id, Some(last_status)),
        |(mut rx, state, id, last)| async move {
            let last = last?;
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.workspace_id == id => {}
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
                let Ok(Some(ws)) = state.db.workspace(&id).await else {
                    return None;
                };
                if (ws.status, ws.status_reason.clone()) == last {
                    continue;
                }
                let Ok(json) = full_workspace(&state, &ws).await else {
                    return None;
                };
                let next = (json.status != WorkspaceStatus::Deleted)
                    .then(|| (json.status, json.status_reason.clone()));
                return Some((Ok(sse_event(&json)), (rx, state, id, next)));
            }
        },
    );
    Ok(Sse::new(head.chain(tail)).keep_alive(KeepAlive::default()))
}

/// What a list watcher compares to decide whether a row changed.
type RowKey = (WorkspaceStatus, String, Option<(String, String)>);

fn row_key(ws: &WorkspaceJson) -> RowKey {
    (
        ws.status,
        ws.status_reason.clone(),
        ws.agent
            .as_ref()
            .map(|a| (a.lifecycle_state.clone(), a.status.clone())),
    )
}

/// `GET /api/v2/workspaces/watch`: one SSE stream for every workspace the caller may see (a
/// browser holds few connections per origin, so the dashboard's list cannot open one watch per
/// row). An event is sent when a workspace's status, reason, or agent lifecycle/connection
/// changes; a deleted workspace's last event says `deleted`.
async fn watch_workspaces(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let rx = state.events.subscribe();
    let owner = (!p.user.is_admin).then(|| p.user.id.clone());
    let builds = state.db.latest_builds(owner.as_deref()).await?;
    let seen: std::collections::HashMap<String, RowKey> = state
        .db
        .list_workspaces(owner.as_deref())
        .await?
        .iter()
        .map(|ws| {
            let json = workspace_json(&state, ws, builds.get(&ws.id));
            (ws.id.clone(), row_key(&json))
        })
        .collect();
    let stream = stream::unfold(
        (
            rx,
            state,
            p,
            seen,
            std::collections::VecDeque::<String>::new(),
        ),
        |(mut rx, state, p, mut seen, mut queue)| async move {
            loop {
                let id = match queue.pop_front() {
                    Some(id) => id,
                    None => match rx.recv().await {
                        Ok(ev) => ev.workspace_id,
                        // Events were missed: look at every workspace seen so far again.
                        Err(RecvError::Lagged(_)) => {
                            queue.extend(seen.keys().cloned());
                            continue;
                        }
                        Err(RecvError::Closed) => return None,
                    },
                };
                let Ok(Some(ws)) = state.db.workspace(&id).await else {
                    continue;
                };
                if !p.may_act_for(&ws.owner_id) {
                    continue;
                }
                let Ok(json) = full_workspace(&state, &ws).await else {
                    continue;
                };
                let key = row_key(&json);
                if seen.get(&id) == Some(&key) {
                    continue;
                }
                seen.insert(id, key);
                return Some((Ok(sse_event(&json)), (rx, state, p, seen, queue)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /api/v2/audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only this actor (user name or id).
    pub user: Option<String>,
    /// Only this action (`build.stop`), or a prefix ending in `*` (`build.*`).
    pub action: Option<String>,
    /// From this time on (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// How many (default 100).
    pub limit: Option<i64>,
}

fn parse_time(name: &str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_millis())
            .map_err(|e| Error::BadRequest(format!("{name} {t:?} is not an RFC 3339 time: {e}")))
    })
    .transpose()
}

async fn audit_log(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>> {
    p.require_admin()?;
    let filter = AuditFilter {
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        workspace_id: q.workspace_id,
        user: q.user,
        action: q.action,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    Ok(Json(state.db.audit_query(&filter).await?))
}

/// A small HTML page (for browser-facing errors such as a stopped workspace's apps).
pub fn html_page(status: StatusCode, title: &str, body: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{t}</h1><p>{b}</p></body></html>",
            t = esc(title),
            b = esc(body)
        ),
    )
        .into_response()
}
