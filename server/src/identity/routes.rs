//! The browser login routes and what they need from the rest of the server.
//!
//! - `GET /api/v2/users/oidc/login[?redirect=/path]`: starts a login. The PKCE verifier, `state`
//!   and `nonce` stay on the server (an in-memory store, 5 minutes, bounded per client address
//!   and overall by evicting the oldest, so a flood never locks real users out; on PostgreSQL
//!   also in the database, under the hash of `state` and with the same bounds, so the callback
//!   may reach any replica and still completes once); the browser gets the
//!   `state` in a short-lived cookie scoped to the callback path, which binds the login to the
//!   browser that started it (no login CSRF), and is sent to the provider.
//! - `GET /api/v2/users/oidc/callback`: checks `state` against that cookie and the store (each
//!   login response is usable once), the `iss` parameter, exchanges the code and verifies the ID
//!   token ([`super::oidc`]), maps role and profile ([`super::roles`]), upserts the user and
//!   stores a session in the database ([`Db`]), sets the session cookie and sends the browser
//!   on. A refusal is an HTML page and a log line naming which failure it is.
//! - `POST /api/v2/users/logout`: revokes the session and clears the cookie.
//!
//! Requests after the login are authenticated by [`crate::caller`], the same way as API tokens.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::IdentityError;
use super::oidc::{OidcClient, PendingLogin};
use super::roles::{Role, RoleMapping, UserProfile};
use super::sessions::{
    CookieSettings, DEFAULT_SESSION_LIFETIME, cookie_value, new_session, set_cookie,
};
use super::trusted_proxy::{AccessUrl, TrustedProxy, client_ip_of};
use crate::db::Db;

/// Login start route.
pub const LOGIN_PATH: &str = "/api/v2/users/oidc/login";
/// Logout route.
pub const LOGOUT_PATH: &str = "/api/v2/users/logout";
/// Cookie carrying the login's `state` to the callback.
pub const LOGIN_COOKIE: &str = "lumie_oidc_state";
/// How long a started login may take (the provider's login form included).
pub const DEFAULT_LOGIN_TTL: Duration = Duration::from_secs(300);
/// Logins in progress kept at most (unauthenticated callers create them); beyond it the oldest
/// is forgotten, a new login is never refused.
pub const DEFAULT_MAX_PENDING_LOGINS: usize = 10_000;
/// Logins in progress kept at most per client address (IPv6: per /64); beyond it that client's
/// oldest is forgotten. Room for an office behind one NAT address logging in at once.
pub const DEFAULT_MAX_PENDING_LOGINS_PER_CLIENT: usize = 32;

/// A user as an OIDC login leaves it ([`Db::upsert_oidc_user`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// User id (sessions point at it).
    pub id: String,
    /// `preferred_username`.
    pub login: String,
    /// DNS-1123 owner name (unique).
    pub owner_name: String,
    /// Email.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Role as of the last login.
    pub role: Role,
}

/// Settings of the login routes besides the OIDC client's.
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// The access URL (cookie `Secure`, redirects).
    pub access_url: AccessUrl,
    /// Claim and group for the admin role.
    pub roles: RoleMapping,
    /// Session lifetime.
    pub session_lifetime: Duration,
    /// Session cookie.
    pub cookie: CookieSettings,
    /// Trusted proxy (client IP of the session).
    pub proxy: TrustedProxy,
    /// How long a started login may take.
    pub login_ttl: Duration,
    /// Bound on logins in progress (the oldest is evicted).
    pub max_pending_logins: usize,
    /// Bound on logins in progress per client address (that client's oldest is evicted).
    pub max_pending_logins_per_client: usize,
}

impl IdentityOptions {
    /// Defaults for an access URL.
    pub fn new(access_url: AccessUrl) -> Self {
        IdentityOptions {
            cookie: CookieSettings::for_access_url(&access_url),
            access_url,
            roles: RoleMapping::default(),
            session_lifetime: DEFAULT_SESSION_LIFETIME,
            proxy: TrustedProxy::default(),
            login_ttl: DEFAULT_LOGIN_TTL,
            max_pending_logins: DEFAULT_MAX_PENDING_LOGINS,
            max_pending_logins_per_client: DEFAULT_MAX_PENDING_LOGINS_PER_CLIENT,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Shared state of the identity routes.
#[derive(Clone)]
pub struct IdentityState(Arc<Inner>);

struct Inner {
    oidc: Arc<OidcClient>,
    db: Db,
    options: IdentityOptions,
    logins: LoginStore,
    /// The database, when replicas share it: logins are also kept there (see the module doc).
    /// A database rather than a signed cookie, because a login must complete once on any
    /// replica (a replayed callback is refused and named), which a cookie cannot enforce.
    shared: Option<Db>,
    results: Family<ResultLabel, Counter>,
}

impl IdentityState {
    /// State over an OIDC client and the database that keeps users and sessions.
    pub fn new(oidc: Arc<OidcClient>, db: Db, options: IdentityOptions) -> Self {
        let logins = LoginStore::new(
            options.login_ttl,
            options.max_pending_logins,
            options.max_pending_logins_per_client,
        );
        IdentityState(Arc::new(Inner {
            oidc,
            shared: db.is_shared().then(|| db.clone()),
            db,
            options,
            logins,
            results: Family::default(),
        }))
    }

    /// The OIDC client.
    pub fn oidc(&self) -> &Arc<OidcClient> {
        &self.0.oidc
    }

    /// The options.
    pub fn options(&self) -> &IdentityOptions {
        &self.0.options
    }

    /// Registers `lumie_oidc_logins_total{result="ok"|<failure kind>}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "lumie_oidc_logins",
            "OIDC login callbacks by result (ok, or the failure kind)",
            self.0.results.clone(),
        );
    }

    /// Logins in progress kept in memory (used ones included, until they would have expired):
    /// never more than [`IdentityOptions::max_pending_logins`].
    pub fn pending_logins(&self) -> usize {
        self.0.logins.len()
    }

    /// Logins so far with this result (`ok` or an [`IdentityError::kind`]).
    pub fn login_results(&self, result: &'static str) -> u64 {
        self.0.results.get_or_create(&ResultLabel { result }).get()
    }
}

/// The login, callback and logout routes, state applied (merge into the server's router).
pub fn routes(state: IdentityState) -> Router {
    Router::new()
        .route(LOGIN_PATH, get(login))
        .route(super::oidc::CALLBACK_PATH, get(callback))
        .route(LOGOUT_PATH, post(logout))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    redirect: Option<String>,
}

async fn login(
    State(state): State<IdentityState>,
    Query(q): Query<LoginQuery>,
    req: Request,
) -> Response {
    let client_ip = client_ip_of(req.extensions(), req.headers(), &state.0.options.proxy);
    let return_to = local_path(q.redirect.as_deref());
    let result = async {
        let (url, pending) = state.0.oidc.begin_login(&return_to).await?;
        let cookie = set_cookie(
            LOGIN_COOKIE,
            &pending.state,
            super::oidc::CALLBACK_PATH,
            state.0.options.login_ttl,
            state.0.options.cookie.secure,
        );
        if let Some(db) = &state.0.shared {
            share_login(db, &state.0.options, &pending, client_ip).await?;
        }
        state.0.logins.insert(pending, client_ip);
        Ok::<_, IdentityError>((url, cookie))
    }
    .await;
    match result {
        Ok((url, cookie)) => redirect(&url, &[cookie]),
        Err(e) => refuse(&state, "login", e, Some(&return_to)),
    }
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(state): State<IdentityState>,
    Query(q): Query<CallbackQuery>,
    req: Request,
) -> Response {
    let client_ip = client_ip_of(req.extensions(), req.headers(), &state.0.options.proxy);
    // Known once the login's state is matched: where "Sign in again" returns to on a failure.
    let mut return_path = None;
    match finish_login(&state, q, req.headers(), client_ip, &mut return_path).await {
        Ok((user, cookie, return_to)) => {
            state
                .0
                .results
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
            tracing::info!(user = %user.login, owner = %user.owner_name, role = %user.role, ip = ?client_ip, "OIDC login");
            let clear_login = set_cookie(
                LOGIN_COOKIE,
                "",
                super::oidc::CALLBACK_PATH,
                Duration::ZERO,
                state.0.options.cookie.secure,
            );
            redirect(&return_to, &[cookie, clear_login])
        }
        Err(e) => refuse(&state, "callback", e, return_path.as_deref()),
    }
}

async fn finish_login(
    state: &IdentityState,
    q: CallbackQuery,
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
    return_path: &mut Option<String>,
) -> Result<(UserRecord, String, String), IdentityError> {
    let inner = &state.0;
    if let Some(error) = q.error {
        return Err(IdentityError::ProviderError {
            error,
            description: q.error_description.unwrap_or_default(),
        });
    }
    let login_state = q.state.ok_or(IdentityError::MissingParameter("state"))?;
    let cookie = cookie_value(headers, LOGIN_COOKIE);
    let ttl = inner.options.login_ttl;
    let pending = match &inner.shared {
        // Begun on another replica (or evicted here): the database decides.
        Some(db) if !inner.logins.knows(&login_state) => {
            take_shared(db, ttl, &login_state, cookie).await?
        }
        Some(db) => {
            let pending = inner.logins.take(&login_state, cookie)?;
            mark_shared_used(db, ttl, &login_state).await?;
            pending
        }
        None => inner.logins.take(&login_state, cookie)?,
    };
    *return_path = Some(pending.return_to.clone());
    let code = q.code.ok_or(IdentityError::MissingParameter("code"))?;
    inner.oidc.check_issuer_parameter(q.iss.as_deref())?;
    let claims = inner.oidc.complete_login(&pending, &code).await?;
    let profile = UserProfile::from_claims(&claims, &inner.options.roles)?;
    let user = inner.db.upsert_oidc_user(&profile, client_ip).await?;
    let (token, record) = new_session(
        &user.id,
        inner.options.session_lifetime,
        Utc::now(),
        client_ip,
    );
    inner.db.create_session(&record).await?;
    let cookie = inner
        .options
        .cookie
        .set_session(&token, inner.options.session_lifetime);
    Ok((user, cookie, pending.return_to))
}

async fn logout(State(state): State<IdentityState>, headers: HeaderMap) -> Response {
    let inner = &state.0;
    if let Some(token) = inner.options.cookie.session_token(&headers)
        && let Err(e) = inner.db.revoke_session(&token.hash()).await
    {
        let e = IdentityError::from(e);
        tracing::error!(kind = e.kind(), error = %e, "logout: revoking the session failed");
        return e.into_response();
    }
    let mut response = (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "message": "Successfully logged out." })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&inner.options.cookie.clear_session()) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}

/// The error page, a log line naming the failure, and the counter.
fn refuse(
    state: &IdentityState,
    step: &'static str,
    e: IdentityError,
    return_to: Option<&str>,
) -> Response {
    let kind = e.kind();
    state
        .0
        .results
        .get_or_create(&ResultLabel { result: kind })
        .inc();
    if e.is_operator_problem() {
        tracing::error!(step, kind, error = %e, "OIDC login failed");
    } else {
        tracing::warn!(step, kind, error = %e, "OIDC login refused");
    }
    e.page_returning(return_to)
}

fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(SET_COOKIE, v);
        }
    }
    response
}

/// Only a local absolute path may be the post-login destination (no open redirect).
fn local_path(requested: Option<&str>) -> String {
    match requested {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(|c| c.is_control()) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

enum LoginEntry {
    Pending(PendingLogin),
    Used,
}

/// Who started a login, for the per-client bound: the IPv4 address, or the IPv6 /64 (one host
/// usually holds a whole /64, so rotating addresses inside it is still one client).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ClientKey {
    /// No address known (no connection info: in-process callers).
    Unknown,
    /// An IPv4 client (IPv4-mapped IPv6 included).
    V4(std::net::Ipv4Addr),
    /// The /64 prefix of an IPv6 client.
    V6(u64),
}

impl ClientKey {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip {
            None => ClientKey::Unknown,
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl ClientKey {
    /// How the database names the client (for the per-client bound there).
    fn as_text(&self) -> String {
        match self {
            ClientKey::Unknown => "-".into(),
            ClientKey::V4(v4) => v4.to_string(),
            ClientKey::V6(prefix) => format!("{prefix:016x}::/64"),
        }
    }
}

/// What a callback's `state` and login cookie mean for a login known to be pending
/// (`Some(true)`), used (`Some(false)`) or unknown (`None`): `Ok` only for a pending login whose
/// cookie matches. The same decision whether the login is in memory or in the database.
fn decide(live: Option<bool>, state: &str, cookie: Option<&str>) -> Result<(), IdentityError> {
    match (live, cookie) {
        (Some(false), _) => Err(IdentityError::ReplayedCallback),
        (Some(true), Some(c)) if c == state => Ok(()),
        (Some(true), _) => Err(IdentityError::StateMismatch),
        (None, Some(c)) if c != state => Err(IdentityError::StateMismatch),
        (None, None) => Err(IdentityError::NoLoginInProgress),
        (None, Some(_)) => Err(IdentityError::UnknownState),
    }
}

fn expired_before(ttl: Duration) -> i64 {
    crate::model::now_ms() - ttl.as_millis() as i64
}

/// Keeps a started login in the database too (bounded like [`LoginStore`]).
async fn share_login(
    db: &Db,
    options: &IdentityOptions,
    login: &PendingLogin,
    client_ip: Option<IpAddr>,
) -> Result<(), IdentityError> {
    let json = serde_json::to_string(login)
        .map_err(|e| crate::error::Error::Internal(format!("encoding a login: {e}")))?;
    db.insert_oidc_login(
        &crate::db::hash_token(&login.state),
        &json,
        &ClientKey::of(client_ip).as_text(),
        crate::model::now_ms(),
        expired_before(options.login_ttl),
        (
            options.max_pending_logins,
            options.max_pending_logins_per_client,
        ),
    )
    .await?;
    Ok(())
}

/// The pending login for `state` from the database, once across every replica.
async fn take_shared(
    db: &Db,
    ttl: Duration,
    state: &str,
    cookie: Option<&str>,
) -> Result<PendingLogin, IdentityError> {
    let hash = crate::db::hash_token(state);
    let stored = db.oidc_login(&hash, expired_before(ttl)).await?;
    decide(stored.as_ref().map(|s| !s.used), state, cookie)?;
    let stored = stored.ok_or(IdentityError::UnknownState)?;
    if !db.use_oidc_login(&hash, crate::model::now_ms()).await? {
        return Err(IdentityError::ReplayedCallback);
    }
    serde_json::from_str(&stored.login).map_err(|e| {
        crate::error::Error::Internal(format!("a stored login does not decode: {e}")).into()
    })
}

/// A login taken from memory is used in the database too, unless another replica completed it
/// first (a replay sent there); one the database no longer holds (evicted) is fine.
async fn mark_shared_used(db: &Db, ttl: Duration, state: &str) -> Result<(), IdentityError> {
    let hash = crate::db::hash_token(state);
    if !db.use_oidc_login(&hash, crate::model::now_ms()).await?
        && db
            .oidc_login(&hash, expired_before(ttl))
            .await?
            .is_some_and(|s| s.used)
    {
        return Err(IdentityError::ReplayedCallback);
    }
    Ok(())
}

struct Slot {
    seq: u64,
    at: Instant,
    client: ClientKey,
    entry: LoginEntry,
}

/// The store's maps: `by_state` holds the entries, `order` every entry's sequence number oldest
/// first (with stale ones left by per-client evictions, dropped lazily and compacted), and
/// `by_client` each client's entries oldest first (always exact).
#[derive(Default)]
struct Logins {
    by_state: HashMap<String, Slot>,
    order: VecDeque<(u64, String)>,
    by_client: HashMap<ClientKey, VecDeque<(u64, String)>>,
    next_seq: u64,
}

impl Logins {
    /// Removes the globally oldest entry (skipping stale order records); false when empty.
    fn pop_oldest(&mut self, only_if_older_than: Option<Duration>) -> bool {
        while let Some((seq, state)) = self.order.front() {
            let live = self.by_state.get(state).filter(|s| s.seq == *seq);
            let Some(slot) = live else {
                self.order.pop_front();
                continue;
            };
            if only_if_older_than.is_some_and(|ttl| slot.at.elapsed() < ttl) {
                return false;
            }
            let (seq, state) = self.order.pop_front().expect("front exists");
            let slot = self.by_state.remove(&state).expect("live above");
            self.forget_client_front(slot.client, seq);
            return true;
        }
        false
    }

    /// Drops `seq` from the front of its client's queue: entries leave in age order, so the
    /// globally oldest entry of a client is that client's oldest.
    fn forget_client_front(&mut self, client: ClientKey, seq: u64) {
        if let Some(q) = self.by_client.get_mut(&client) {
            if q.front().is_some_and(|(s, _)| *s == seq) {
                q.pop_front();
            }
            if q.is_empty() {
                self.by_client.remove(&client);
            }
        }
    }

    /// Removes the oldest entry of `client` (its record in `order` goes stale).
    fn pop_oldest_of(&mut self, client: ClientKey) {
        if let Some(q) = self.by_client.get_mut(&client) {
            if let Some((_, state)) = q.pop_front() {
                self.by_state.remove(&state);
            }
            if q.is_empty() {
                self.by_client.remove(&client);
            }
        }
    }

    fn client_count(&self, client: ClientKey) -> usize {
        self.by_client.get(&client).map_or(0, VecDeque::len)
    }

    /// Drops stale `order` records once they outnumber the live entries, so a flood from one
    /// client (each start evicting that client's oldest) cannot grow `order` without bound.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.by_state.len() + 64 {
            let by_state = &self.by_state;
            self.order
                .retain(|(seq, state)| by_state.get(state).is_some_and(|s| s.seq == *seq));
        }
    }
}

/// Logins in progress, by `state`; a used one is remembered until it would have expired, so a
/// replayed login response is named as such.
///
/// Unauthenticated callers create these, so the store is bounded twice, and neither bound ever
/// refuses a new login: each client (address, or IPv6 /64) keeps at most `per_client` (its
/// oldest goes first), and the whole store at most `max` (the oldest entry of anyone goes
/// first). A flood from one address thus only ever displaces its own logins; a flood from many
/// displaces the oldest logins, while every new login (a real user's among them) still starts.
struct LoginStore {
    inner: Mutex<Logins>,
    ttl: Duration,
    max: usize,
    per_client: usize,
}

impl LoginStore {
    fn new(ttl: Duration, max: usize, per_client: usize) -> Self {
        LoginStore {
            inner: Mutex::new(Logins::default()),
            ttl,
            max: max.max(1),
            per_client: per_client.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logins> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a started login; always succeeds, evicting as described on [`LoginStore`].
    fn insert(&self, login: PendingLogin, client_ip: Option<IpAddr>) {
        let client = ClientKey::of(client_ip);
        let mut g = self.lock();
        while g.pop_oldest(Some(self.ttl)) {}
        while g.client_count(client) >= self.per_client {
            g.pop_oldest_of(client);
        }
        while g.by_state.len() >= self.max && g.pop_oldest(None) {}
        g.compact();
        let seq = g.next_seq;
        g.next_seq += 1;
        let state = login.state.clone();
        if let Some(old) = g.by_state.remove(&state) {
            // A repeated `state` (random, 128 bits: never in practice): the old one goes.
            if let Some(q) = g.by_client.get_mut(&old.client) {
                q.retain(|(s, _)| *s != old.seq);
            }
        }
        g.order.push_back((seq, state.clone()));
        g.by_client
            .entry(client)
            .or_default()
            .push_back((seq, state.clone()));
        g.by_state.insert(
            state,
            Slot {
                seq,
                at: Instant::now(),
                client,
                entry: LoginEntry::Pending(login),
            },
        );
    }

    /// Entries kept (pending and used), for the bound's tests and metrics.
    fn len(&self) -> usize {
        self.lock().by_state.len()
    }

    /// Whether `state` names a login kept here (pending or used, not expired).
    fn knows(&self, state: &str) -> bool {
        self.lock()
            .by_state
            .get(state)
            .is_some_and(|slot| slot.at.elapsed() < self.ttl)
    }

    /// The pending login for `state`, once; `cookie` is the browser's login cookie.
    fn take(&self, state: &str, cookie: Option<&str>) -> Result<PendingLogin, IdentityError> {
        let mut g = self.lock();
        let slot = g
            .by_state
            .get_mut(state)
            .filter(|slot| slot.at.elapsed() < self.ttl);
        let live = slot
            .as_ref()
            .map(|s| matches!(s.entry, LoginEntry::Pending(_)));
        decide(live, state, cookie)?;
        let slot = slot.ok_or(IdentityError::UnknownState)?;
        match std::mem::replace(&mut slot.entry, LoginEntry::Used) {
            LoginEntry::Pending(p) => Ok(p),
            LoginEntry::Used => Err(IdentityError::ReplayedCallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(state: &str) -> PendingLogin {
        // Built through the public surface: begin_login needs a provider, so use serde-free
        // construction via a tiny helper in the oidc module's tests instead.
        super::super::oidc::test_pending(state)
    }

    #[test]
    fn login_store_table() {
        let store = LoginStore::new(Duration::from_secs(600), 100, 10);
        store.insert(pending("s1"), None);
        store.insert(pending("s2"), None);
        // Cookie from another login: tampered state (or another browser).
        assert_eq!(
            store.take("s1", Some("s2")).unwrap_err().kind(),
            "state_mismatch"
        );
        assert_eq!(store.take("s1", None).unwrap_err().kind(), "state_mismatch");
        // Unknown state with this browser's cookie for another login: tampered.
        assert_eq!(
            store.take("forged", Some("s1")).unwrap_err().kind(),
            "state_mismatch"
        );
        assert_eq!(
            store.take("forged", None).unwrap_err().kind(),
            "no_login_in_progress"
        );
        assert_eq!(
            store.take("forged", Some("forged")).unwrap_err().kind(),
            "unknown_state"
        );
        // The real one, once.
        assert_eq!(store.take("s1", Some("s1")).unwrap().state, "s1");
        assert_eq!(
            store.take("s1", Some("s1")).unwrap_err().kind(),
            "replayed_callback"
        );
        assert_eq!(
            store.take("s1", None).unwrap_err().kind(),
            "replayed_callback"
        );
        assert_eq!(store.take("s2", Some("s2")).unwrap().state, "s2");
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn login_store_expiry() {
        let store = LoginStore::new(Duration::ZERO, 2, 2);
        store.insert(pending("old"), None);
        assert_eq!(
            store.take("old", Some("old")).unwrap_err().kind(),
            "unknown_state"
        );
        // Expired entries go first, at the next start.
        let short = LoginStore::new(Duration::from_millis(1), 10, 10);
        short.insert(pending("a"), ip("192.0.2.1"));
        std::thread::sleep(Duration::from_millis(5));
        short.insert(pending("b"), ip("192.0.2.2"));
        assert_eq!(short.len(), 1);
    }

    /// (starts as (state, client), what is still there afterwards) for a store of at most 4
    /// logins, 2 per client: a new login is never refused; the client's own oldest goes first,
    /// then the oldest of anyone.
    #[test]
    fn login_store_bounds_table() {
        /// (case, starts as (state, client address), states kept)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "one client floods: only its own oldest go",
                &[
                    ("real", "198.51.100.9"),
                    ("f1", "203.0.113.7"),
                    ("f2", "203.0.113.7"),
                    ("f3", "203.0.113.7"),
                    ("f4", "203.0.113.7"),
                ],
                &["real", "f3", "f4"],
            ),
            (
                "many clients flood: the oldest of anyone goes, the newest login stays",
                &[
                    ("a", "192.0.2.1"),
                    ("b", "192.0.2.2"),
                    ("c", "192.0.2.3"),
                    ("d", "192.0.2.4"),
                    ("e", "192.0.2.5"),
                    ("real", "198.51.100.9"),
                ],
                &["c", "d", "e", "real"],
            ),
            (
                "one IPv6 /64 is one client",
                &[
                    ("x1", "2001:db8:1:2::1"),
                    ("x2", "2001:db8:1:2::2"),
                    ("x3", "2001:db8:1:2:ffff::3"),
                    ("y", "2001:db8:1:3::1"),
                ],
                &["x2", "x3", "y"],
            ),
            (
                "IPv4-mapped IPv6 is the IPv4 client",
                &[
                    ("m1", "::ffff:192.0.2.1"),
                    ("m2", "192.0.2.1"),
                    ("m3", "::ffff:192.0.2.1"),
                ],
                &["m2", "m3"],
            ),
        ];
        for (name, starts, kept) in cases {
            let store = LoginStore::new(Duration::from_secs(600), 4, 2);
            for (state, client) in *starts {
                store.insert(pending(state), ip(client));
            }
            let mut have: Vec<&str> = starts
                .iter()
                .map(|(s, _)| *s)
                .filter(|s| store.take(s, Some(s)).is_ok())
                .collect();
            have.sort();
            let mut want = kept.to_vec();
            want.sort();
            assert_eq!(have, want, "{name}");
        }
    }

    /// A sustained flood from one address keeps every structure of the store bounded.
    #[test]
    fn login_store_memory_stays_bounded_under_a_flood() {
        let store = LoginStore::new(Duration::from_secs(600), 1000, 8);
        for i in 0..50_000 {
            store.insert(pending(&format!("flood-{i}")), ip("203.0.113.7"));
        }
        for i in 0..5_000 {
            let client = format!("10.0.{}.{}", i / 256, i % 256);
            store.insert(pending(&format!("many-{i}")), ip(&client));
        }
        store.insert(pending("real"), ip("198.51.100.9"));
        let g = store.lock();
        assert_eq!(g.by_state.len(), 1000);
        assert!(g.order.len() <= 2 * 1000 + 64, "order: {}", g.order.len());
        let queued: usize = g.by_client.values().map(VecDeque::len).sum();
        assert_eq!(queued, 1000, "client queues hold exactly the entries");
        assert!(g.by_client.len() <= 1000);
        drop(g);
        assert_eq!(store.take("real", Some("real")).unwrap().state, "real");
    }

    #[test]
    fn post_login_destination_is_local() {
        let cases = [
            (None, "/"),
            (Some("/"), "/"),
            (Some("/@alice/ws"), "/@alice/ws"),
            (Some("/workspaces?x=1"), "/workspaces?x=1"),
            (Some("https://evil.example/"), "/"),
            (Some("//evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("/x\r\nSet-Cookie: a=b"), "/"),
            (Some("relative"), "/"),
            // What the app proxy's sign-in links carry: the app page, or the ticket route.
            (
                Some("/@alice/dev/apps/tilt/r/x?a=1&b=2"),
                "/@alice/dev/apps/tilt/r/x?a=1&b=2",
            ),
            (
                Some(
                    "/api/v2/applications/auth-redirect?redirect_uri=https%3A%2F%2Ftilt--dev--alice.apps.example%2F",
                ),
                "/api/v2/applications/auth-redirect?redirect_uri=https%3A%2F%2Ftilt--dev--alice.apps.example%2F",
            ),
            (Some("https:evil.example"), "/"),
            (Some("//evil.example@coder.example/"), "/"),
            (Some("\\\\evil.example"), "/"),
            (Some("/\t/evil.example"), "/"),
            (Some(""), "/"),
        ];
        for (input, want) in cases {
            assert_eq!(local_path(input), want, "{input:?}");
        }
    }
}
