//! Start-up and the running server: checks, first admin, background tasks, the listener.
//!
//! The first admin's API token exists in clear only once, on the first start. It goes to the
//! Kubernetes Secret `LUMIE_FIRST_ADMIN_SECRET` names (the chart sets it, and grants the server
//! `create` on Secrets in its own namespace and nothing else there), or, without one, to stdout
//! when that is a terminal; never into a log a Deployment keeps.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use tokio::task::JoinHandle;

use crate::builds::Executor;
use crate::config::{Config, SecretRef};
use crate::db::Db;
use crate::drift::DriftCheck;
use crate::error::{StartupError, StartupResult};
use crate::leader::{Elector, Leadership};
use crate::reconcile::{Parts, Reconciler, start_watchers};
use crate::spawner::Spawner;
use crate::state::AppState;
use crate::template::Template;

/// Username of the admin created on first start.
pub const FIRST_ADMIN: &str = "admin";
/// Key of the token in the first admin's Secret.
pub const FIRST_ADMIN_TOKEN_KEY: &str = "token";
/// Key of the username in the first admin's Secret.
pub const FIRST_ADMIN_USERNAME_KEY: &str = "username";

/// The claim holder name of a single-replica (SQLite) server: the same on every start, so a
/// restarted process resumes its predecessor's builds at once.
pub const SINGLE_REPLICA: &str = "single-replica";

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: AppState,
    /// The first admin's token, when this start created it.
    pub first_admin_token: Option<String>,
    /// The Secret this start wrote the first admin's token to.
    pub first_admin_secret: Option<SecretRef>,
    /// Whether this replica leads (runs the reconciler's actions and the builds).
    pub leadership: Leadership,
    elector: Option<Arc<Elector>>,
    tasks: Vec<JoinHandle<()>>,
    /// Stops the listener accepting (see [`Running::drain`]).
    stop_accepting: Option<tokio::sync::oneshot::Sender<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops every task at once (like a killed process: nothing is flushed).
    pub fn abort(&self) {
        for t in self.tasks.iter().chain(&self.listener) {
            t.abort();
        }
    }

    /// A graceful stop for a replica behind a load balancer: `/healthz` answers 503 for
    /// `shutdown_drain` while requests are still served (the balancer's health check takes the
    /// replica out of rotation), then no new connection is accepted and in-flight requests get
    /// `shutdown_grace` to finish (open streams and WebSockets are cut then: clients reconnect,
    /// to another replica), then pending heartbeats are flushed and everything stops.
    pub async fn drain(mut self) {
        let (drain, grace) = (
            self.state.config.shutdown_drain,
            self.state.config.shutdown_grace,
        );
        self.state
            .readiness
            .write()
            .expect("readiness lock")
            .draining = true;
        // The leader's work moves on now, not after the drain: serving needs no leadership.
        self.step_down().await;
        tracing::info!(
            ?drain,
            "draining: /healthz answers 503; still serving until load balancers notice"
        );
        tokio::time::sleep(drain).await;
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
        if let Some(listener) = self.listener.take() {
            let started = std::time::Instant::now();
            match tokio::time::timeout(grace, listener).await {
                Ok(_) => {
                    tracing::info!(took = ?started.elapsed(), "draining: every request finished")
                }
                Err(_) => tracing::info!(
                    ?grace,
                    "draining: open streams and WebSockets cut after the grace period"
                ),
            }
        }
        self.shutdown().await;
    }

    /// A leader stops acting for good and hands its Lease and build claims back, so another
    /// replica takes over without waiting for them to expire. Idempotent.
    async fn step_down(&self) {
        let Some(elector) = &self.elector else {
            return;
        };
        elector.release().await;
        // Nothing of this replica acts any more: its builds are the next leader's at once.
        match self
            .state
            .db
            .release_build_claims(self.leadership.identity())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(builds = n, "released the build claims"),
            Err(e) => tracing::warn!(error = %e, "cannot release the build claims"),
        }
    }

    /// Flushes pending heartbeats, then stops; a leader hands its Lease and build claims back
    /// ([`Running::step_down`]).
    pub async fn shutdown(self) {
        if let Err(e) = self.state.agents.flush().await {
            tracing::warn!(error = %e, "final heartbeat flush failed");
        }
        self.abort();
        self.step_down().await;
    }
}

/// Checks everything (database, template, kube API and permissions), then starts the server
/// with `client`. Errors are one line naming the setting to fix.
pub async fn start(config: Config, client: kube::Client) -> StartupResult<Running> {
    let template = Template::load(config.template_file.as_deref())?;
    let db = Db::connect(&config.database).await?;
    start_with(config, template, db, client).await
}

/// [`start`] with the template and database already opened.
pub async fn start_with(
    config: Config,
    template: Template,
    db: Db,
    client: kube::Client,
) -> StartupResult<Running> {
    crate::preflight::check_kube(&client, &config.namespace).await?;
    if db.is_shared() {
        crate::leader::check_access(&client, &config.leader).await?;
    }
    let first_admin_token = bootstrap_first_admin(&db, &client, &config).await?;
    let first_admin_secret = match (&first_admin_token, &config.first_admin_secret) {
        (Some(token), Some(secret)) => {
            match create_first_admin_secret(&client, secret, token, false).await {
                Ok(()) => {
                    tracing::info!(
                        secret = %secret,
                        "first start: created user {FIRST_ADMIN:?} (admin); its API token is in Secret {secret}: {}",
                        read_command(secret)
                    );
                    Some(secret.clone())
                }
                Err(e) => {
                    tracing::error!(
                        "first start: created user {FIRST_ADMIN:?} (admin) but {}",
                        explain_secret_error(secret, &e)
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartupError::InvalidSetting {
            setting: "LUMIE_LISTEN_ADDR",
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartupError::io("listener address", e))?;
    let namespace = config.namespace.clone();
    let state = AppState::new(config, db, template, Some(client.clone())).await?;
    let spawner = Spawner::new(
        client.clone(),
        &namespace,
        state.template.clone(),
        &state.config.agent_url,
        state.db.clone(),
        state.agents.clone(),
    );

    // Readiness and drift first, so /readyz is truthful from the start.
    let drift = DriftCheck {
        client: client.clone(),
        namespace: namespace.clone(),
        service_account: state.template.service_account_name.clone(),
        readiness: state.readiness.clone(),
        metrics: state.metrics.clone(),
        interval: state.config.drift_check_interval,
    };
    drift.check_and_record().await;
    let mut tasks = vec![tokio::spawn(drift.run())];
    tasks.extend(crate::bus::start_for(&state));
    tasks.push(tokio::spawn(state.agents.clone().run()));
    tasks.push(tokio::spawn(
        state.sessions.keys.clone().run_refresh(state.db.clone()),
    ));
    tasks.push(tokio::spawn(
        state.sessions.clone().run_sync(state.db.clone()),
    ));
    // One leader over a shared database (a Lease); SQLite is one replica's file, which leads.
    let (leadership, elector) = if state.db.is_shared() {
        let (leadership, elector, task) = Elector::start(
            client.clone(),
            state.config.leader.clone(),
            crate::leader::identity(),
            state.metrics.clone(),
        );
        tasks.push(task);
        (leadership, Some(elector))
    } else {
        (Leadership::always(SINGLE_REPLICA), None)
    };
    let control_plane = lumie_contract::policy::CONTROL_PLANE_USER;
    let stores = start_watchers(&client, &namespace, control_plane, &state.dirty);
    state.agent_auth.install(
        Arc::new(crate::agent_api::KubeTokenReviewer::new(client.clone())),
        Arc::new(stores.clone()),
    );
    let reconciler = Arc::new(Reconciler::new(
        Parts {
            db: state.db.clone(),
            agents: state.agents.clone(),
            spawner: spawner.clone(),
            views: state.cluster.clone(),
            events: state.events.clone(),
            dirty: state.dirty.clone(),
            metrics: state.metrics.clone(),
            agent_connection_timeout: state.config.agent_connection_timeout,
            orphan_grace: state.config.orphan_grace,
            control_plane: control_plane.to_string(),
            leadership: leadership.clone(),
        },
        stores,
    ));
    tasks.push(tokio::spawn(reconciler.run()));
    let executor = Executor {
        db: state.db.clone(),
        spawner,
        dirty: state.dirty.clone(),
        metrics: state.metrics.clone(),
        wake: state.build_wake.notifier(),
        identity: leadership.identity().to_string(),
        claim_ttl: state.config.leader.duration,
    };
    tasks.push(tokio::spawn(
        leadership
            .clone()
            .while_leading("build executor", move || executor.clone().run()),
    ));
    crate::edge::discover_at_start(&state.edge).await;
    let app_state = state.clone();
    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(async move {
        // Dropped with this task: an aborted server's open connections close, as an aborted
        // `axum::serve` closes them (the shutdown signal runs in a task of its own).
        let (aborted_tx, aborted) = tokio::sync::oneshot::channel::<()>();
        let _aborted_tx = aborted_tx;
        // A dropped `Running` (no drain asked for) keeps serving, as before.
        let stopped = async move {
            tokio::select! {
                Ok(()) = stopped => {}
                _ = aborted => {}
            }
        };
        if let Err(e) = crate::edge::serve_until(listener, app_state, stopped).await {
            tracing::error!(error = %e, "listener failed");
        }
    });
    tracing::info!(%addr, namespace = %namespace, "lumie-server listening");
    Ok(Running {
        addr,
        state,
        first_admin_token,
        first_admin_secret,
        leadership,
        elector,
        tasks,
        stop_accepting: Some(stop_accepting),
        listener: Some(listener),
    })
}

/// Creates the first admin when there is no user yet. With a Secret configured, first checks
/// (a dry-run create) that the Secret can be written, so a missing grant or a leftover Secret
/// stops the start before a token exists that could not be handed over.
async fn bootstrap_first_admin(
    db: &Db,
    client: &kube::Client,
    config: &Config,
) -> StartupResult<Option<String>> {
    if let Some(secret) = &config.first_admin_secret
        && db.count_users().await? == 0
    {
        create_first_admin_secret(client, secret, "", true)
            .await
            .map_err(|e| StartupError::Kube(explain_secret_error(secret, &e)))?;
    }
    Ok(db.bootstrap_admin(FIRST_ADMIN).await?.map(|(_, t)| t))
}

/// The first admin's Secret: immutable, created once (the server may create Secrets in its
/// namespace but not read, update or delete any).
fn first_admin_secret_object(secret: &SecretRef, token: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_string(),
                    "lumie-coder".to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "first-admin".to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (
                FIRST_ADMIN_USERNAME_KEY.to_string(),
                FIRST_ADMIN.to_string(),
            ),
            (FIRST_ADMIN_TOKEN_KEY.to_string(), token.to_string()),
        ])),
        ..Secret::default()
    }
}

async fn create_first_admin_secret(
    client: &kube::Client,
    secret: &SecretRef,
    token: &str,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    let pp = PostParams {
        dry_run,
        field_manager: Some("lumie-server".into()),
    };
    api.create(&pp, &first_admin_secret_object(secret, token))
        .await
        .map(|_| ())
}

/// How an operator reads the token.
fn read_command(secret: &SecretRef) -> String {
    format!(
        "kubectl -n {} get secret {} -o jsonpath='{{.data.{FIRST_ADMIN_TOKEN_KEY}}}' | base64 -d",
        secret.namespace, secret.name
    )
}

/// One line on why the first admin's Secret cannot be written, and what to do.
fn explain_secret_error(secret: &SecretRef, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 409 => format!(
            "Secret {secret} (LUMIE_FIRST_ADMIN_SECRET) already exists while the database has no user: it holds the token of an earlier database; delete it (kubectl -n {} delete secret {}) and start again",
            secret.namespace, secret.name
        ),
        kube::Error::Api(s) if s.code == 403 => format!(
            "the kube API forbids creating Secret {secret} (LUMIE_FIRST_ADMIN_SECRET): {} — grant the server's ServiceAccount `create` on secrets in namespace {} (chart: rbac.create)",
            s.message, secret.namespace
        ),
        kube::Error::Api(s) if s.code == 404 => format!(
            "namespace {} of Secret {secret} not found — fix LUMIE_FIRST_ADMIN_SECRET_NAMESPACE",
            secret.namespace
        ),
        other => format!(
            "cannot create Secret {secret} (LUMIE_FIRST_ADMIN_SECRET): {}",
            lumie_contract::diagnostics::error_chain(other)
        ),
    }
}

/// `lumie-server serve`: start, print the first admin token once, run until SIGTERM/Ctrl-C.
pub async fn run(config: Config) -> StartupResult<()> {
    // In the order an operator fixes things: settings, database, then the kube API.
    if let Some(warning) = config.trusted_proxy_warning() {
        tracing::warn!("{warning}");
    }
    let template = Template::load(config.template_file.as_deref())?;
    let db = Db::connect(&config.database).await?;
    let client = crate::preflight::kube_client().await?;
    let running = start_with(config, template, db, client).await?;
    if let Some(token) = &running.first_admin_token
        && running.first_admin_secret.is_none()
    {
        if std::io::stdout().is_terminal() {
            // Shown once, on the first start only: only its hash is stored.
            println!(
                "lumie-server: first start: created user {FIRST_ADMIN:?} (admin); API token, shown only now: {token}"
            );
        } else {
            tracing::warn!(
                "first start: created user {FIRST_ADMIN:?} (admin), but its API token is not shown: stdout is not a terminal (a log would keep it) and no Secret took it — set LUMIE_FIRST_ADMIN_SECRET (the chart does) and start again on an empty database"
            );
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.drain().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_admin_secret_object_and_read_command() {
        let secret = SecretRef {
            namespace: "coder".into(),
            name: "lumie-first-admin".into(),
        };
        let s = first_admin_secret_object(&secret, "tok");
        assert_eq!(s.metadata.name.as_deref(), Some("lumie-first-admin"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("coder"));
        assert_eq!(s.immutable, Some(true));
        let data = s.string_data.unwrap();
        assert_eq!(data[FIRST_ADMIN_TOKEN_KEY], "tok");
        assert_eq!(data[FIRST_ADMIN_USERNAME_KEY], FIRST_ADMIN);
        assert_eq!(
            read_command(&secret),
            "kubectl -n coder get secret lumie-first-admin -o jsonpath='{.data.token}' | base64 -d"
        );
    }
}
