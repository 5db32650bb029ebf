//! The agent's HTTP routes (agent token, not a user's session): heartbeats (the agent table they
//! update is [`crate::agents::AgentHub`]), the manifest (the template's scripts) and the
//! scripts' output ([`crate::startup_logs`]).
//!
//! Agents authenticate with their pod's projected ServiceAccount token (audience
//! [`workspace::AGENT_TOKEN_AUDIENCE`]), never with a Secret: every workspace runs as the same
//! `dev-workspace` account, admin in its namespace, so any Secret one workspace's agent could
//! read, every other workspace could read too. [`AgentAuth`] asks the apiserver (a TokenReview
//! with that audience) who the token belongs to, and accepts it only when it is the workspace
//! ServiceAccount's token bound to a pod the control plane created ([`decide`]); that pod's
//! `workspace-id` label names the workspace.
//!
//! Reviews are cached by token hash (at most [`CACHE_TTL`], and never past shortly before the
//! token's own expiry; at most [`CACHE_MAX`] entries), so a heartbeat costs a TokenReview only
//! for a token not seen in the last few minutes. The pod check is made for every heartbeat,
//! from the reconciler's pod store (memory): a deleted or replaced pod's token stops working at
//! once, cached or not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use lumie_contract::agent_api::{
    AGENT_TOKEN_HEADER, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse, LOGS_PATH, LogBatch,
    LogBatchResponse, MANIFEST_PATH, Manifest,
};
use lumie_contract::workspace;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::state::AppState;

/// The `userInfo.extra` key of a bound token naming its pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The `userInfo.extra` key of a bound token carrying its pod's uid.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// Longest a successful review is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// A review is not reused this close to the token's expiry.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Most cached reviews (a few per agent at most: one per token it has been handed).
pub const CACHE_MAX: usize = 10_000;
/// TokenReviews of tokens not seen recently, at most this many in a burst…
pub const REVIEW_BURST: f64 = 200.0;
/// …and this many per second after it: a server restart with 1,000 agents re-reviews them all
/// within about 15 s, while a flood of made-up tokens cannot turn into a flood on the apiserver.
pub const REVIEWS_PER_SECOND: f64 = 50.0;

/// The agent API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(HEARTBEAT_PATH, post(heartbeat))
        .route(MANIFEST_PATH, get(manifest))
        .route(LOGS_PATH, post(logs))
}

/// The agent token from its header, or `Authorization: Bearer` as Coder's agents send it.
fn agent_token(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized(format!(
                "agent token missing: send the {AGENT_TOKEN_HEADER} header"
            ))
        })
}

/// `POST /api/v2/workspaceagents/me/heartbeat`.
async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(hb): Json<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>> {
    let start = Instant::now();
    let r = match agent_token(&headers) {
        Ok(token) => match state.agent_auth.authenticate(token).await {
            Ok(workspace_id) => {
                let stats = hb.stats.clone();
                let r = state.agents.heartbeat(&workspace_id, hb);
                if r.is_ok()
                    && let Some(stats) = stats
                {
                    crate::dashboard::resources::offer_sample(&state, &workspace_id, stats);
                }
                r.map(|mut answer| {
                    // Session tickets: the keys they are signed with, and the workspace they name.
                    answer.session_keys = state.sessions.keys.public_keys();
                    answer.workspace_id = Some(workspace_id);
                    answer
                })
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    state
        .metrics
        .heartbeat_latency
        .observe(start.elapsed().as_secs_f64());
    r.map(Json)
}

/// `GET /api/v2/workspaceagents/me/manifest`: the template's scripts for the caller's workspace.
async fn manifest(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Manifest>> {
    let token = agent_token(&headers)?;
    state.agent_auth.authenticate(token).await?;
    Ok(Json(state.template.manifest()))
}

/// `POST /api/v2/workspaceagents/me/logs`: a batch of script output, stored once per
/// (start, seq) and with the caller's own token redacted should a script have printed it.
async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<LogBatchResponse>> {
    let token = agent_token(&headers)?;
    let workspace_id = state.agent_auth.authenticate(token).await?;
    let batch: LogBatch = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("not a log batch: {e}")))?;
    let batch = crate::startup_logs::checked_batch(batch, token)?;
    crate::startup_logs::store(&state, &workspace_id, &batch)
        .await
        .map(Json)
}

/// Who the apiserver says an authenticated token belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reviewed {
    /// `status.user.username`.
    pub username: String,
    /// The pod a bound token is bound to, when it names exactly one.
    pub pod_name: Option<String>,
    /// That pod's uid.
    pub pod_uid: Option<String>,
}

/// A workspace pod the control plane created (its labels and the webhook's created-by stamp
/// say so), as the pod store shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedPod {
    /// Its uid.
    pub uid: String,
    /// Its `workspace-id` label.
    pub workspace_id: String,
}

/// Asks the apiserver about a token (a TokenReview with the agent audience).
pub trait TokenReviewer: Send + Sync {
    /// `Ok(None)`: the apiserver does not accept the token for the agent audience.
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Reviewed>>>;
}

/// Finds the pods the control plane created.
pub trait PodDirectory: Send + Sync {
    /// The pod named `name` in the workspace namespace, when it is a workspace pod the control
    /// plane created.
    fn trusted_pod(&self, name: &str) -> Option<TrustedPod>;

    /// Whether the directory has had its first complete list (before that, absence proves
    /// nothing and the agent is told to retry).
    fn ready(&self) -> bool {
        true
    }
}

/// Whether a reviewed token is the agent of a workspace, and which: the workspace
/// ServiceAccount's token (`expected_username`), bound to a pod, that pod (`pod`, looked up by
/// the token's pod name) one the control plane created, with the same uid (not a later pod of
/// the same name). The error says why not.
pub fn decide(
    reviewed: &Reviewed,
    expected_username: &str,
    pod: Option<&TrustedPod>,
) -> std::result::Result<String, String> {
    if reviewed.username != expected_username {
        return Err(format!(
            "the token belongs to {:?}, not to the workspace ServiceAccount {expected_username:?}",
            reviewed.username
        ));
    }
    let (Some(name), Some(uid)) = (&reviewed.pod_name, &reviewed.pod_uid) else {
        return Err(
            "the token is not bound to a pod: agents send their pod's projected token".into(),
        );
    };
    let Some(pod) = pod else {
        return Err(format!(
            "pod {name} is not a workspace pod the control plane created"
        ));
    };
    if &pod.uid != uid {
        return Err(format!(
            "the token is bound to an earlier pod named {name} (uid {uid}), not the current one"
        ));
    }
    Ok(pod.workspace_id.clone())
}

/// How long a review made at `now` may be reused: [`CACHE_TTL`], but never past
/// [`EXPIRY_MARGIN`] before the token expires (`exp`, seconds since the epoch, when the token
/// says). `None`: do not cache.
pub fn cache_for(now_unix: i64, exp: Option<i64>) -> Option<Duration> {
    let Some(exp) = exp else {
        return Some(CACHE_TTL);
    };
    let left = exp - now_unix - EXPIRY_MARGIN.as_secs() as i64;
    if left <= 0 {
        return None;
    }
    Some(CACHE_TTL.min(Duration::from_secs(left as u64)))
}

/// The `exp` claim of a JWT, read without checking the signature (the apiserver has checked
/// it): only to bound how long its review is reused.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_i64()
}

/// Whether a token can be an agent's projected token at all, read without its signature: a JWT
/// for `audience`, not expired at `now_unix`, bound to a pod. Anything else is refused without
/// spending a TokenReview on it (the review still decides for those that pass).
pub fn plausible_agent_token(
    token: &str,
    audience: &str,
    now_unix: i64,
) -> Result<(), &'static str> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64url_decode(payload).ok_or("not a JWT")?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| "not a JWT")?;
    let aud_ok = match v.get("aud") {
        Some(serde_json::Value::String(s)) => s == audience,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err("not issued for the agent audience");
    }
    if v.get("exp")
        .and_then(|e| e.as_i64())
        .is_none_or(|exp| exp <= now_unix)
    {
        return Err("expired");
    }
    if v.pointer("/kubernetes.io/pod").is_none() {
        return Err("not bound to a pod");
    }
    Ok(())
}

/// A token bucket over TokenReviews of tokens not in the cache.
#[derive(Debug)]
pub struct ReviewBudget {
    tokens: f64,
    last: Instant,
}

impl ReviewBudget {
    /// Full, at `now`.
    pub fn new(now: Instant) -> Self {
        ReviewBudget {
            tokens: REVIEW_BURST,
            last: now,
        }
    }

    /// Takes one review from the budget at `now`, if any is left.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * REVIEWS_PER_SECOND).min(REVIEW_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().take_while(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

struct Backend {
    reviewer: Arc<dyn TokenReviewer>,
    pods: Arc<dyn PodDirectory>,
}

struct Cached {
    reviewed: Reviewed,
    until: Instant,
}

/// Authenticates agents (see the module header). Installed with its kube parts once the
/// reconciler's pod store exists; until then every agent is told to retry (503).
pub struct AgentAuth {
    expected_username: String,
    backend: OnceLock<Backend>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    reviews: AtomicU64,
}

impl AgentAuth {
    /// For agents running as `system:serviceaccount:<namespace>:<service_account>`.
    pub fn new(namespace: &str, service_account: &str) -> Self {
        AgentAuth {
            expected_username: format!("system:serviceaccount:{namespace}:{service_account}"),
            backend: OnceLock::new(),
            cache: Mutex::default(),
            reviews: AtomicU64::new(0),
        }
    }

    /// The username an agent's token must carry.
    pub fn expected_username(&self) -> &str {
        &self.expected_username
    }

    /// Installs the reviewer and the pod directory (once; later calls change nothing).
    pub fn install(&self, reviewer: Arc<dyn TokenReviewer>, pods: Arc<dyn PodDirectory>) {
        let _ = self.backend.set(Backend { reviewer, pods });
    }

    /// How many TokenReviews were made so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// The workspace whose agent holds `token`, or 401 saying why not.
    pub async fn authenticate(&self, token: &str) -> Result<String> {
        let Some(backend) = self.backend.get() else {
            return Err(Error::Unavailable(
                "agent authentication is starting; retry shortly".into(),
            ));
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().expect("agent auth cache lock");
            cache
                .get(&key)
                .filter(|c| c.until > now)
                .map(|c| c.reviewed.clone())
        };
        let reviewed = match cached {
            Some(r) => r,
            None => {
                self.reviews.fetch_add(1, Ordering::Relaxed);
                let Some(r) = backend.reviewer.review(token).await? else {
                    return Err(Error::Unauthorized(format!(
                        "the agent token is not valid for audience {}: agents send their pod's projected ServiceAccount token",
                        workspace::AGENT_TOKEN_AUDIENCE
                    )));
                };
                let now_unix = crate::model::now_ms() / 1000;
                if let Some(ttl) = cache_for(now_unix, jwt_expiry(token)) {
                    self.remember(key, r.clone(), now + ttl);
                }
                r
            }
        };
        if !backend.pods.ready() {
            return Err(Error::Unavailable(
                "the control plane is still listing workspace pods; retry shortly".into(),
            ));
        }
        let pod = reviewed
            .pod_name
            .as_deref()
            .and_then(|name| backend.pods.trusted_pod(name));
        decide(&reviewed, &self.expected_username, pod.as_ref()).map_err(|why| {
            tracing::warn!(username = %reviewed.username, pod = ?reviewed.pod_name, reason = %why, "agent token refused");
            Error::Unauthorized(format!("agent token refused: {why}"))
        })
    }

    fn remember(&self, key: [u8; 32], reviewed: Reviewed, until: Instant) {
        let mut cache = self.cache.lock().expect("agent auth cache lock");
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_MAX {
                // Still full of live entries: start over rather than grow (each costs one
                // more TokenReview at most).
                cache.clear();
            }
        }
        cache.insert(key, Cached { reviewed, until });
    }
}

/// TokenReviews against the apiserver, with the agent audience.
/// Only plausible agent tokens are sent ([`plausible_agent_token`]), and at most
/// [`REVIEWS_PER_SECOND`] after a burst ([`ReviewBudget`]): whoever can reach the server cannot
/// make it flood the apiserver with reviews of made-up tokens.
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    budget: Mutex<ReviewBudget>,
}

impl KubeTokenReviewer {
    /// Over this client (the control plane's; it needs `create` on `tokenreviews`).
    pub fn new(client: Client) -> Self {
        KubeTokenReviewer {
            api: Api::all(client),
            budget: Mutex::new(ReviewBudget::new(Instant::now())),
        }
    }
}

/// The part of a TokenReview answer that matters, as a [`Reviewed`] when authenticated for
/// `audience`.
pub fn reviewed_from(review: &TokenReview, audience: &str) -> Option<Reviewed> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true) {
        return None;
    }
    if let Some(auds) = &status.audiences
        && !auds.iter().any(|a| a == audience)
    {
        return None;
    }
    let user = status.user.as_ref()?;
    let one = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .filter(|v| v.len() == 1)
            .map(|v| v[0].clone())
    };
    Some(Reviewed {
        username: user.username.clone().unwrap_or_default(),
        pod_name: one(POD_NAME_EXTRA),
        pod_uid: one(POD_UID_EXTRA),
    })
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Reviewed>>> {
        Box::pin(async move {
            let now_unix = crate::model::now_ms() / 1000;
            if let Err(why) =
                plausible_agent_token(token, workspace::AGENT_TOKEN_AUDIENCE, now_unix)
            {
                let audience = workspace::AGENT_TOKEN_AUDIENCE;
                return Err(Error::Unauthorized(format!(
                    "agent token refused without a review: {why} (the token is not valid for audience {audience}: agents send their pod's projected ServiceAccount token)"
                )));
            }
            if !self
                .budget
                .lock()
                .expect("review budget lock")
                .try_take(Instant::now())
            {
                return Err(Error::Unavailable(
                    "too many agent authentications at once; retry shortly".into(),
                ));
            }
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![workspace::AGENT_TOKEN_AUDIENCE.to_string()]),
                },
                ..Default::default()
            };
            let answer = self
                .api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "TokenReview failed");
                    Error::Unavailable(format!(
                        "cannot check the agent token with the kube API: {}",
                        crate::spawner::describe_kube_error(&e)
                    ))
                })?;
            Ok(reviewed_from(&answer, workspace::AGENT_TOKEN_AUDIENCE))
        })
    }
}

/// Agents known up front, for tests and benchmarks without a cluster: each token stands for a
/// review of the workspace ServiceAccount bound to a trusted pod of one workspace.
#[derive(Default)]
pub struct FixedAgents {
    username: String,
    by_token: Mutex<HashMap<String, (String, TrustedPod)>>,
}

impl FixedAgents {
    /// Tokens reviewed as `username` (use [`AgentAuth::expected_username`]).
    pub fn new(username: &str) -> Self {
        FixedAgents {
            username: username.into(),
            by_token: Mutex::default(),
        }
    }

    /// `token` is the agent of `workspace_id` (its pod named after the workspace id).
    pub fn add(&self, token: &str, workspace_id: &str) {
        let pod = TrustedPod {
            uid: format!("uid-{workspace_id}"),
            workspace_id: workspace_id.into(),
        };
        self.by_token
            .lock()
            .expect("fixed agents lock")
            .insert(token.into(), (format!("pod-{workspace_id}"), pod));
    }
}

impl TokenReviewer for FixedAgents {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Reviewed>>> {
        let r = self
            .by_token
            .lock()
            .expect("fixed agents lock")
            .get(token)
            .map(|(name, pod)| Reviewed {
                username: self.username.clone(),
                pod_name: Some(name.clone()),
                pod_uid: Some(pod.uid.clone()),
            });
        Box::pin(async move { Ok(r) })
    }
}

impl PodDirectory for FixedAgents {
    fn trusted_pod(&self, name: &str) -> Option<TrustedPod> {
        self.by_token
            .lock()
            .expect("fixed agents lock")
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: &str = "system:serviceaccount:lumie-dev:dev-workspace";

    fn reviewed(user: &str, pod: Option<(&str, &str)>) -> Reviewed {
        Reviewed {
            username: user.into(),
            pod_name: pod.map(|p| p.0.into()),
            pod_uid: pod.map(|p| p.1.into()),
        }
    }

    #[test]
    fn decide_table() {
        let trusted = TrustedPod {
            uid: "u1".into(),
            workspace_id: "ws-1".into(),
        };
        /// (name, review, the pod store's answer for its pod name, workspace or error part)
        type Case<'a> = (
            &'a str,
            Reviewed,
            Option<&'a TrustedPod>,
            std::result::Result<&'a str, &'a str>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("the workspace's own pod", reviewed(SA, Some(("coder-a-dev", "u1"))), Some(&trusted), Ok("ws-1")),
            ("another account's pod token", reviewed("system:serviceaccount:lumie-dev:default", Some(("x", "u1"))), Some(&trusted), Err("not to the workspace ServiceAccount")),
            ("the control plane's own token", reviewed("system:serviceaccount:coder:coder", None), None, Err("not to the workspace ServiceAccount")),
            ("the workspace account, no pod binding", reviewed(SA, None), None, Err("not bound to a pod")),
            ("pod name without uid", Reviewed { pod_uid: None, ..reviewed(SA, Some(("coder-a-dev", "u1"))) }, Some(&trusted), Err("not bound to a pod")),
            ("a pod the control plane did not create", reviewed(SA, Some(("impostor", "u9"))), None, Err("is not a workspace pod the control plane created")),
            ("a replaced pod of the same name", reviewed(SA, Some(("coder-a-dev", "u0"))), Some(&trusted), Err("earlier pod")),
        ];
        for (name, r, pod, want) in cases {
            let got = decide(&r, SA, pod);
            match (got, want) {
                (Ok(id), Ok(w)) => assert_eq!(id, w, "{name}"),
                (Err(why), Err(w)) => assert!(why.contains(w), "{name}: {why}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cache_lifetime_table() {
        let now = 1_000_000;
        let cases = [
            ("no exp claim: the bounded TTL", None, Some(300)),
            ("an hour left: the bounded TTL", Some(now + 3600), Some(300)),
            (
                "two minutes left: until 30 s before",
                Some(now + 120),
                Some(90),
            ),
            ("30 s left: not cached", Some(now + 30), None),
            ("expired: not cached", Some(now - 5), None),
        ];
        for (name, exp, want) in cases {
            assert_eq!(cache_for(now, exp).map(|d| d.as_secs()), want, "{name}");
        }
    }

    fn jwt(payload: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b64 = |s: &str| {
            let mut out = String::new();
            for chunk in s.as_bytes().chunks(3) {
                let n = chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        };
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload))
    }

    #[test]
    fn implausible_tokens_are_refused_before_any_review() {
        let aud = "lumie-coder-agent";
        let now = 1_700_000_000;
        let pod = r#""kubernetes.io":{"pod":{"name":"coder-a-b","uid":"u"}}"#;
        #[rustfmt::skip]
        let cases = [
            ("bound pod token", format!(r#"{{"aud":["{aud}"],"exp":{},{pod}}}"#, now + 60), Ok(())),
            ("audience as a string", format!(r#"{{"aud":"{aud}","exp":{},{pod}}}"#, now + 60), Ok(())),
            ("other audience", format!(r#"{{"aud":["https://kubernetes.default.svc"],"exp":{},{pod}}}"#, now + 60), Err("not issued for the agent audience")),
            ("no audience", format!(r#"{{"exp":{},{pod}}}"#, now + 60), Err("not issued for the agent audience")),
            ("expired", format!(r#"{{"aud":["{aud}"],"exp":{now},{pod}}}"#), Err("expired")),
            ("no expiry", format!(r#"{{"aud":["{aud}"],{pod}}}"#), Err("expired")),
            ("not bound to a pod", format!(r#"{{"aud":["{aud}"],"exp":{}}}"#, now + 60), Err("not bound to a pod")),
        ];
        for (name, payload, want) in cases {
            assert_eq!(
                plausible_agent_token(&jwt(&payload), aud, now),
                want,
                "{name}"
            );
        }
        for garbage in ["", "agent-a", "a.b", "a.!!!.c", "a.e30.c"] {
            assert!(
                plausible_agent_token(garbage, aud, now).is_err(),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn the_review_budget_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = ReviewBudget::new(t0);
        let burst = (0..1_000).filter(|_| b.try_take(t0)).count();
        assert_eq!(burst, REVIEW_BURST as usize, "a full burst, then nothing");
        let later = t0 + Duration::from_secs(2);
        let refill = (0..1_000).filter(|_| b.try_take(later)).count();
        assert_eq!(
            refill,
            (2.0 * REVIEWS_PER_SECOND) as usize,
            "two seconds' worth"
        );
        let much_later = later + Duration::from_secs(3_600);
        let capped = (0..10_000).filter(|_| b.try_take(much_later)).count();
        assert_eq!(
            capped, REVIEW_BURST as usize,
            "never more than a burst saved up"
        );
    }

    #[test]
    fn jwt_expiry_reads_the_claim() {
        // {"alg":"none"} . {"aud":["lumie-coder-agent"],"exp":1700000000}
        let b64 = |s: &str| {
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = s.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        };
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"aud":["lumie-coder-agent"],"exp":1700000000}"#)
        );
        assert_eq!(jwt_expiry(&token), Some(1_700_000_000));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry(&format!("a.{}.c", b64("{}"))), None);
    }

    #[test]
    fn reviews_are_read_for_the_audience() {
        let review = |json: serde_json::Value| -> TokenReview {
            serde_json::from_value(serde_json::json!({"spec": {}, "status": json})).unwrap()
        };
        let aud = workspace::AGENT_TOKEN_AUDIENCE;
        let bound = review(serde_json::json!({
            "authenticated": true, "audiences": [aud],
            "user": {"username": SA, "extra": {POD_NAME_EXTRA: ["coder-a-dev"], POD_UID_EXTRA: ["u1"]}}
        }));
        assert_eq!(
            reviewed_from(&bound, aud),
            Some(reviewed(SA, Some(("coder-a-dev", "u1"))))
        );
        let other_audience = review(serde_json::json!({
            "authenticated": true, "audiences": ["https://kubernetes.default.svc"],
            "user": {"username": SA}
        }));
        assert_eq!(reviewed_from(&other_audience, aud), None);
        let refused = review(serde_json::json!({"authenticated": false, "error": "invalid"}));
        assert_eq!(reviewed_from(&refused, aud), None);
        let two_pods = review(serde_json::json!({
            "authenticated": true,
            "user": {"username": SA, "extra": {POD_NAME_EXTRA: ["a", "b"]}}
        }));
        assert_eq!(reviewed_from(&two_pods, aud), Some(reviewed(SA, None)));
    }

    #[tokio::test]
    async fn reviews_are_cached_and_the_pod_checked_every_time() {
        let auth = AgentAuth::new("lumie-dev", "dev-workspace");
        assert!(matches!(
            auth.authenticate("t").await,
            Err(Error::Unavailable(_))
        ));
        let fixed = Arc::new(FixedAgents::new(auth.expected_username()));
        fixed.add("tok-a", "ws-a");
        auth.install(fixed.clone(), fixed.clone());
        for _ in 0..5 {
            assert_eq!(auth.authenticate("tok-a").await.unwrap(), "ws-a");
        }
        assert_eq!(auth.reviews(), 1, "one review, then the cache");
        assert!(matches!(
            auth.authenticate("tok-unknown").await,
            Err(Error::Unauthorized(_))
        ));
        assert_eq!(auth.reviews(), 2, "a refused token is not cached");
        // The pod goes away: the cached review no longer authenticates.
        fixed.by_token.lock().unwrap().clear();
        let e = auth.authenticate("tok-a").await.unwrap_err().to_string();
        assert!(
            e.contains("not a workspace pod the control plane created"),
            "{e}"
        );
        assert_eq!(auth.reviews(), 2);
    }
}
