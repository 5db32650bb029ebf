//! Identity wired into the server: the OIDC login state built from [`Config`] over the database,
//! and the edge in front of every route (client address through the trusted proxy,
//! `Host`/WebSocket `Origin` checks).
//!
//! [`app`] is what `serve` listens with: [`crate::router`] plus the login routes when OIDC is
//! configured, wrapped in the edge middleware. Tests drive it like the real server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::db::Db;
use crate::error::Result;
use crate::identity::trusted_proxy::{client_ip_middleware, host_guard_middleware};
use crate::identity::{
    AccessUrl, HostGuard, IdentityOptions, IdentityState, OidcClient, TrustedProxy,
};
use crate::state::AppState;

/// Paths reached by pods at the in-cluster URL (agent API, agent download, init script) and by
/// probes and Prometheus: they are not browser-facing and arrive with another `Host`.
pub const HOST_EXEMPT_PREFIXES: &[&str] =
    &["/api/v2/workspaceagents/", "/bin/", "/api/v2/init-script/"];

/// The edge settings every request passes through.
#[derive(Clone)]
pub struct Edge {
    /// The access URL.
    pub access_url: AccessUrl,
    /// Whose forwarding headers to believe.
    pub proxy: Arc<TrustedProxy>,
    /// `Host` / WebSocket `Origin` check for browser-facing routes.
    pub host_guard: HostGuard,
    /// OIDC login, when configured.
    pub identity: Option<IdentityState>,
}

impl Edge {
    /// Builds the edge from the config; errors name the setting. Nothing is fetched here.
    pub fn new(config: &Config, db: &Db) -> Result<Edge> {
        let access_url = AccessUrl::parse(&config.access_url)?;
        let proxy =
            TrustedProxy::new(&config.proxy_trusted_headers, &config.proxy_trusted_origins)?;
        let host_guard = HostGuard::new(access_url.clone()).exempt(HOST_EXEMPT_PREFIXES);
        let identity = match &config.oidc {
            None => None,
            Some(oidc) => {
                let client = OidcClient::new(oidc.settings(&access_url)?)?;
                let mut options = IdentityOptions::new(access_url.clone());
                options.roles = oidc.roles();
                options.proxy = proxy.clone();
                Some(IdentityState::new(Arc::new(client), db.clone(), options))
            }
        };
        Ok(Edge {
            access_url,
            proxy: Arc::new(proxy),
            host_guard,
            identity,
        })
    }

    /// Registers the login and Host-mismatch counters.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.host_guard.register_metrics(registry);
        if let Some(identity) = &self.identity {
            identity.register_metrics(registry);
        }
    }
}

/// The server's whole HTTP surface as it listens: the API router, the OIDC login routes when
/// configured, the `Host`/`Origin` guard (probes, metrics and pod-facing paths exempt), and
/// outermost the client address resolution. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app(state: AppState) -> Router {
    let edge = state.edge.clone();
    let mut router = crate::router(state);
    if let Some(identity) = &edge.identity {
        router = router.merge(crate::identity::routes(identity.clone()));
    }
    router
        .layer(from_fn_with_state(
            edge.host_guard.clone(),
            host_guard_middleware,
        ))
        .layer(from_fn_with_state(edge.proxy.clone(), client_ip_middleware))
}

/// Serves [`app`] on a bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Fetches the provider's discovery document and keys once at start, so a misconfigured
/// issuer shows in the log right away; logins retry on their own, so a failure only logs.
pub async fn discover_at_start(edge: &Edge) {
    let Some(identity) = &edge.identity else {
        return;
    };
    if let Err(e) = identity.oidc().discover().await {
        tracing::error!(kind = e.kind(), error = %e, "OIDC discovery at start failed; logins will retry it");
    }
}
