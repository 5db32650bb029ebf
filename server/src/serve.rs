//! Start-up and the running server: checks, first admin, background tasks, the listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::builds::Executor;
use crate::config::Config;
use crate::db::Db;
use crate::drift::DriftCheck;
use crate::error::{Error, Result};
use crate::reconcile::{Parts, Reconciler, start_watchers};
use crate::spawner::Spawner;
use crate::state::AppState;
use crate::template::Template;

/// Username of the admin created on first start.
pub const FIRST_ADMIN: &str = "admin";

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: AppState,
    /// The first admin's token, when this start created it.
    pub first_admin_token: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops every task at once (like a killed process: nothing is flushed).
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Flushes pending heartbeats, then stops.
    pub async fn shutdown(self) {
        if let Err(e) = self.state.agents.flush().await {
            tracing::warn!(error = %e, "final heartbeat flush failed");
        }
        self.abort();
    }
}

/// Checks everything (database, template, kube API and permissions), then starts the server
/// with `client`. Errors are one line naming the setting to fix.
pub async fn start(config: Config, client: kube::Client) -> Result<Running> {
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
) -> Result<Running> {
    crate::preflight::check_kube(&client, &config.namespace).await?;
    let first_admin_token = db.bootstrap_admin(FIRST_ADMIN).await?.map(|(_, t)| t);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::InvalidSetting {
            setting: "LUMIE_LISTEN_ADDR",
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
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
    tasks.push(tokio::spawn(state.agents.clone().run()));
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
        },
        stores,
    ));
    tasks.push(tokio::spawn(reconciler.run()));
    let executor = Executor {
        db: state.db.clone(),
        spawner,
        dirty: state.dirty.clone(),
        metrics: state.metrics.clone(),
        wake: state.build_wake.clone(),
    };
    tasks.push(tokio::spawn(executor.run()));
    crate::edge::discover_at_start(&state.edge).await;
    let app_state = state.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::edge::serve(listener, app_state).await {
            tracing::error!(error = %e, "listener failed");
        }
    }));
    tracing::info!(%addr, namespace = %namespace, "lumie-server listening");
    Ok(Running {
        addr,
        state,
        first_admin_token,
        tasks,
    })
}

/// `lumie-server serve`: start, print the first admin token once, run until SIGTERM/Ctrl-C.
pub async fn run(config: Config) -> Result<()> {
    // In the order an operator fixes things: settings, database, then the kube API.
    if let Some(warning) = config.trusted_proxy_warning() {
        tracing::warn!("{warning}");
    }
    let template = Template::load(config.template_file.as_deref())?;
    let db = Db::connect(&config.database).await?;
    let client = crate::preflight::kube_client().await?;
    let running = start_with(config, template, db, client).await?;
    if let Some(token) = &running.first_admin_token {
        // Printed once, on the first start only: only its hash is stored.
        println!(
            "lumie-server: first start: created user {FIRST_ADMIN:?} (admin); API token, shown only now: {token}"
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
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
