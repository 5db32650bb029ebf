//! The running agent: starts the heartbeat loop, the app checkers and the port forwarders, turns
//! their news into lifecycle events (`ready` once every checked app is healthy and its pod IP
//! port is settled, so the Service really reaches it), and runs the shutdown sequence (report `shutting_down`,
//! stop, report `off`) within the shutdown timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lumie_contract::agent_api::{AppHealth, LifecycleState};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Error;
use crate::config::{Config, HealthCheck};
use crate::forward::{self, ForwardStats, PortEvent, PortForward, PortState};
use crate::health::{self, CheckSettings, HealthChange};
use crate::heartbeat::{self, HeartbeatClient, Report};
use crate::lifecycle::{Event, Lifecycle};
use crate::stats::{CGROUP_ROOT, StatsCollector};

/// Runs the agent until `shutdown` resolves, then shuts down and returns the final lifecycle
/// state (`off` normally). Errors only for configuration problems found before starting.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<LifecycleState, Error> {
    let client = HeartbeatClient::new(&config)?;
    let probe_http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(Error::Client)?;
    let forward_stats = Arc::new(ForwardStats::default());
    let stats = StatsCollector::new(
        CGROUP_ROOT.into(),
        config.home_dir.clone(),
        forward_stats.clone(),
    );

    let mut lifecycle = Lifecycle::default();
    let mut apps: BTreeMap<String, AppHealth> = config
        .apps
        .iter()
        .map(|a| (a.slug.clone(), AppHealth::Initializing))
        .collect();
    let (report_tx, report_rx) = watch::channel(Report {
        lifecycle: lifecycle.clone(),
        apps: apps.clone(),
    });
    let publish = |lifecycle: &Lifecycle, apps: &BTreeMap<String, AppHealth>| {
        report_tx.send_replace(Report {
            lifecycle: lifecycle.clone(),
            apps: apps.clone(),
        });
    };

    tracing::info!(version = crate::VERSION, url = %client.url(), "lumie-agent starting");
    let sessions = Arc::new(crate::session::Sessions::new(config.app_host));
    let keys = sessions.clone();
    let heartbeats = tokio::spawn(heartbeat::run_loop(
        client.clone(),
        report_rx,
        stats,
        config.report_interval,
        move |answer| keys.update(answer),
    ));

    let mut tasks = JoinSet::new();
    if let Some(pod_ip) = config.pod_ip.filter(|_| config.session_port != 0) {
        let addr = SocketAddr::new(pod_ip, config.session_port);
        match forward::listen(addr) {
            Ok(listener) => {
                tracing::info!(%addr, "listening for sessions");
                tasks.spawn(sessions.serve(listener));
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen for sessions; terminal, SSH and port-forward are off")
            }
        }
    }
    let (health_tx, mut health_rx) = mpsc::unbounded_channel::<HealthChange>();
    let settings = CheckSettings {
        app_host: config.app_host,
        interval: config.health_interval,
        threshold: config.health_threshold,
        timeout: config.health_timeout,
    };
    for (index, app) in config.apps.iter().enumerate() {
        tasks.spawn(health::run_checker(
            index,
            app.clone(),
            settings.clone(),
            probe_http.clone(),
            health_tx.clone(),
        ));
    }
    drop(health_tx);

    // Per app: whether its pod IP port is settled (forwarding or left to the app). Without a
    // pod IP there is nothing to settle.
    let mut ports_settled: BTreeMap<String, bool> = BTreeMap::new();
    let (port_tx, mut port_rx) = mpsc::unbounded_channel::<PortEvent>();
    match config.pod_ip {
        Some(pod_ip) => {
            for app in &config.apps {
                ports_settled.insert(app.slug.clone(), false);
                tasks.spawn(forward::run_port(
                    PortForward {
                        slug: app.slug.clone(),
                        listen: SocketAddr::new(pod_ip, app.port),
                        target: SocketAddr::new(config.app_host, app.port),
                        max_connections: config.max_connections,
                        copy_mode: config.copy_mode,
                    },
                    config.health_interval,
                    forward_stats.clone(),
                    port_tx.clone(),
                ));
            }
        }
        None => tracing::warn!("POD_IP is not set: port forwarding is off"),
    }
    drop(port_tx);

    let change = |lifecycle: &mut Lifecycle, event: Event| {
        let from = lifecycle.state;
        if lifecycle.apply(&event) {
            match &lifecycle.reason {
                Some(why) => tracing::warn!(
                    "lifecycle {} -> {}: {why}",
                    from.as_str(),
                    lifecycle.state.as_str()
                ),
                None => tracing::info!(
                    "lifecycle {} -> {}",
                    from.as_str(),
                    lifecycle.state.as_str()
                ),
            }
            true
        } else {
            false
        }
    };

    change(&mut lifecycle, Event::Started);
    if ready(&config, &apps, &ports_settled) {
        change(&mut lifecycle, Event::AppsHealthy);
    }
    publish(&lifecycle, &apps);

    let start_deadline = Instant::now() + config.start_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(HealthChange { index, health }) = health_rx.recv() => {
                apps.insert(config.apps[index].slug.clone(), health);
                if ready(&config, &apps, &ports_settled) {
                    change(&mut lifecycle, Event::AppsHealthy);
                }
                publish(&lifecycle, &apps);
            }
            Some(PortEvent { slug, state }) = port_rx.recv() => {
                match state {
                    PortState::Forwarding | PortState::LeftAlone(_) => {
                        ports_settled.insert(slug, true);
                        if ready(&config, &apps, &ports_settled) {
                            change(&mut lifecycle, Event::AppsHealthy);
                        }
                    }
                    PortState::Failed(why) => {
                        change(&mut lifecycle, Event::StartFailed(why));
                    }
                }
                publish(&lifecycle, &apps);
            }
            () = tokio::time::sleep_until(start_deadline), if lifecycle.state == LifecycleState::Starting => {
                let unhealthy = config
                    .apps
                    .iter()
                    .filter(|a| a.health != HealthCheck::Disabled
                        && (apps.get(&a.slug) != Some(&AppHealth::Healthy)
                            || ports_settled.get(&a.slug) == Some(&false)))
                    .map(|a| a.slug.clone())
                    .collect();
                change(&mut lifecycle, Event::StartDeadline { unhealthy });
                publish(&lifecycle, &apps);
            }
        }
    }

    // Shutdown: say so, stop everything, say `off`, all within the shutdown timeout.
    let deadline = Instant::now() + config.shutdown_timeout;
    heartbeats.abort();
    change(&mut lifecycle, Event::Terminate);
    let report = Report {
        lifecycle: lifecycle.clone(),
        apps: apps.clone(),
    };
    let first_part = Instant::now() + config.shutdown_timeout / 3;
    if let Err(e) = heartbeat::deliver(&client, &report.to_request(None), first_part).await {
        tracing::warn!("could not report shutting_down: {e}");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if Instant::now() >= deadline {
        change(&mut lifecycle, Event::ShutdownDeadline);
    } else {
        change(&mut lifecycle, Event::ShutdownComplete);
    }
    let report = Report {
        lifecycle: lifecycle.clone(),
        apps,
    };
    match heartbeat::deliver(&client, &report.to_request(None), deadline).await {
        Ok(()) => tracing::info!("reported {}; exiting", lifecycle.state.as_str()),
        Err(e) => tracing::error!(
            "could not report {} before the shutdown timeout: {e}",
            lifecycle.state.as_str()
        ),
    }
    Ok(lifecycle.state)
}

/// Whether the agent is ready: every app that is checked is healthy and, with a pod IP, its
/// port is settled (the Service reaches it through the agent or the app itself).
fn ready(
    config: &Config,
    apps: &BTreeMap<String, AppHealth>,
    ports_settled: &BTreeMap<String, bool>,
) -> bool {
    config
        .apps
        .iter()
        .filter(|a| a.health != HealthCheck::Disabled)
        .all(|a| {
            apps.get(&a.slug) == Some(&AppHealth::Healthy)
                && ports_settled.get(&a.slug) != Some(&false)
        })
}
