//! The running webhook: shared state (policies in force, readiness, metrics), the HTTPS router
//! (`POST /mutate`, `POST /validate`), the plain-HTTP health router (`/healthz`, `/readyz`,
//! `/metrics`), and [`start`], which binds both, loads TLS and starts the policy source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::isolation::Identities;
use crate::metrics::{Decision, Metrics, ModeLabel};
use crate::policy::PolicySet;
use crate::review::{Endpoint, MAX_BODY_BYTES, Reviewer};
use crate::tls::{CertReloader, serve_tls, server_config};

/// State shared by every request: cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    policies: RwLock<Arc<PolicySet>>,
    identities: Identities,
    synced: AtomicBool,
    metrics: Metrics,
}

impl AppState {
    /// State serving `policies` with the default identities; `synced` says whether readiness
    /// holds from the start (a static policy) or waits for [`AppState::mark_synced`] (the watch).
    pub fn new(policies: PolicySet, synced: bool) -> Self {
        Self::with_identities(policies, synced, Identities::default())
    }

    /// [`AppState::new`] with who the control plane and the admins are.
    pub fn with_identities(policies: PolicySet, synced: bool, identities: Identities) -> Self {
        let metrics = Metrics::new();
        metrics.set_generation(policies.generation());
        AppState(Arc::new(Inner {
            policies: RwLock::new(Arc::new(policies)),
            identities,
            synced: AtomicBool::new(synced),
            metrics,
        }))
    }

    /// Who the control plane and the admins are.
    pub fn identities(&self) -> &Identities {
        &self.0.identities
    }

    /// The policies in force now.
    pub fn policies(&self) -> Arc<PolicySet> {
        Arc::clone(&self.0.policies.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts a new generation in force.
    pub fn set_policies(&self, set: PolicySet) {
        self.0.metrics.set_generation(set.generation());
        *self.0.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// The policy source has delivered its first complete view.
    pub fn mark_synced(&self) {
        self.0.synced.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.synced.load(Ordering::Acquire)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

/// The admission router, served over HTTPS: `POST /mutate` and `POST /validate`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(|s: State<AppState>, b: Body| admission(s, Endpoint::Mutate, b)),
        )
        .route(
            "/validate",
            post(|s: State<AppState>, b: Body| admission(s, Endpoint::Validate, b)),
        )
        .with_state(state)
}

/// The health router, served over plain HTTP: `/healthz`, `/readyz`, `/metrics`.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first WorkspacePolicy sync\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}

async fn admission(State(state): State<AppState>, endpoint: Endpoint, body: Body) -> Response {
    let started = Instant::now();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let msg = format!(
                "bad AdmissionReview: body unreadable or over the {MAX_BODY_BYTES} byte limit: {e}"
            );
            return bad_request(&state, endpoint, started, msg);
        }
    };
    let policies = state.policies();
    let reviewer = Reviewer {
        policies: &policies,
        identities: state.identities(),
        now: None,
    };
    match reviewer.review(endpoint, &bytes) {
        Ok(reviewed) => {
            if let Some(d) = &reviewed.denial {
                tracing::info!(
                    endpoint = endpoint.as_str(),
                    namespace = %d.namespace,
                    pod = %d.name,
                    user = %d.user,
                    dry_run = d.dry_run,
                    violations = %d.message,
                    "admission denied"
                );
            }
            state.metrics().observe(
                endpoint,
                reviewed.decision,
                reviewed.mode,
                started.elapsed(),
            );
            let mut resp = Response::new(Body::from(reviewed.body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => bad_request(&state, endpoint, started, e.to_string()),
    }
}

fn bad_request(state: &AppState, endpoint: Endpoint, started: Instant, msg: String) -> Response {
    tracing::warn!(endpoint = endpoint.as_str(), error = %msg, "unreadable admission request");
    state.metrics().observe(
        endpoint,
        Decision::Invalid,
        ModeLabel::None,
        started.elapsed(),
    );
    (StatusCode::BAD_REQUEST, msg + "\n").into_response()
}

/// Where the policies come from.
#[derive(Clone)]
pub enum PolicySource {
    /// The built-in contract default only.
    Builtin,
    /// A file of WorkspacePolicy objects (or bare specs), read once.
    File(PathBuf),
    /// WorkspacePolicy objects in the cluster, watched.
    Watch(kube::Client),
}

impl std::fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::Builtin => f.write_str("Builtin"),
            PolicySource::File(p) => f.debug_tuple("File").field(p).finish(),
            PolicySource::Watch(_) => f.write_str("Watch"),
        }
    }
}

/// Everything `lumie-webhook serve` needs; tests build it directly.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// HTTPS address for `/mutate` and `/validate`.
    pub listen: SocketAddr,
    /// Plain-HTTP address for `/healthz`, `/readyz`, `/metrics`.
    pub health_listen: SocketAddr,
    /// Serving certificate (PEM), reloaded when it changes.
    pub tls_cert: PathBuf,
    /// Serving key (PEM), reloaded when it changes.
    pub tls_key: PathBuf,
    /// Where the policies come from.
    pub policy: PolicySource,
    /// How often the certificate files are checked.
    pub cert_poll: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
    /// Who the control plane and the admins are (workspace isolation).
    pub identities: Identities,
}

impl ServeConfig {
    /// Defaults for everything but the addresses and files.
    pub fn new(
        listen: SocketAddr,
        health_listen: SocketAddr,
        tls_cert: PathBuf,
        tls_key: PathBuf,
    ) -> Self {
        ServeConfig {
            listen,
            health_listen,
            tls_cert,
            tls_key,
            policy: PolicySource::Builtin,
            cert_poll: crate::tls::DEFAULT_POLL,
            drain: Duration::from_secs(10),
            identities: Identities::default(),
        }
    }
}

/// A started webhook.
#[derive(Debug)]
pub struct RunningServer {
    /// Where HTTPS is served (the bound port when the config said 0).
    pub addr: SocketAddr,
    /// Where health and metrics are served.
    pub health_addr: SocketAddr,
    /// The shared state (policies, metrics).
    pub state: AppState,
    /// The serving certificate.
    pub certs: Arc<CertReloader>,
    stop: oneshot::Sender<()>,
    https: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, drains requests in flight, and stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.https.await;
        for t in self.background {
            t.abort();
        }
    }
}

/// Binds both listeners, loads TLS and the policies, and starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningServer> {
    let certs = CertReloader::load(&config.tls_cert, &config.tls_key)?;
    let tls = server_config(Arc::clone(&certs))?;
    let (initial, synced) = match &config.policy {
        PolicySource::Builtin => (PolicySet::builtin(), true),
        PolicySource::File(path) => (crate::policy_file::load(path)?, true),
        PolicySource::Watch(_) => (PolicySet::builtin(), false),
    };
    let state = AppState::with_identities(initial, synced, config.identities.clone());

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let health = TcpListener::bind(config.health_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.health_listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Serve(e.to_string()))?;
    let health_addr = health
        .local_addr()
        .map_err(|e| Error::Serve(e.to_string()))?;

    let mut background = vec![certs.spawn_poller(config.cert_poll)];
    let health_app = health_router(state.clone());
    background.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(health, health_app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    }));
    if let PolicySource::Watch(client) = &config.policy {
        background.push(tokio::spawn(crate::watch::run(
            client.clone(),
            state.clone(),
        )));
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(state.clone());
    let drain = config.drain;
    let https = tokio::spawn(async move {
        serve_tls(
            listener,
            tls,
            app,
            async {
                let _ = stopped.await;
            },
            drain,
        )
        .await;
    });
    tracing::info!(
        %addr,
        %health_addr,
        policy = ?config.policy,
        control_plane = ?config.identities.control_plane,
        admin_groups = ?config.identities.admin_groups,
        "lumie-webhook serving"
    );
    Ok(RunningServer {
        addr,
        health_addr,
        state,
        certs,
        stop,
        https,
        background,
    })
}
