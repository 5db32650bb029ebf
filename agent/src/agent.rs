//! The running agent: starts the heartbeat loop, the app checkers and the port forwarders, turns
//! their news into lifecycle events (`ready` once every checked app is healthy and its pod IP
//! port is settled, so the Service really reaches it, and a blocking startup script has exited
//! 0), runs the template's startup script once the control plane has answered a heartbeat and
//! handed over the manifest, ships its output ([`crate::logs`]), and runs the shutdown sequence
//! (report `shutting_down`, the shutdown script, stop the startup script's process group, send
//! the rest of the output, report `off`) within the shutdown timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lumie_contract::agent_api::{AppHealth, LifecycleState, LogStream, Manifest, StartupBehavior};
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Error;
use crate::config::{Config, HealthCheck};
use crate::forward::{self, ForwardStats, PortEvent, PortForward, PortState};
use crate::health::{self, CheckSettings, HealthChange};
use crate::heartbeat::{self, HeartbeatClient, Report};
use crate::lifecycle::{Event, Lifecycle};
use crate::logs::{self, LogSink};
use crate::scripts::{self, Exit, ScriptSettings, ScriptState, Which};
use crate::stats::{CGROUP_ROOT, StatsCollector};

/// How long the startup script's processes get between SIGTERM and SIGKILL on shutdown.
pub const SCRIPT_KILL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

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
    let (first_contact_tx, first_contact) = oneshot::channel();
    let sessions = Arc::new(crate::session::Sessions::new(config.app_host));
    let keys = sessions.clone();
    let heartbeats = tokio::spawn(heartbeat::run_loop(
        client.clone(),
        report_rx,
        stats,
        config.report_interval,
        first_contact_tx,
        move |answer| keys.update(answer),
    ));

    // Script output goes out in batches from the start; the manifest comes after the first
    // heartbeat the control plane answers.
    let sink = LogSink::default();
    let (logs_stop_tx, logs_stop_rx) = watch::channel(None);
    let shipper = tokio::spawn(logs::ship(
        client.clone(),
        sink.clone(),
        logs::new_start_id(),
        logs_stop_rx,
    ));
    let (manifest_tx, mut manifest_rx) = mpsc::channel::<Manifest>(1);
    let manifest_task = tokio::spawn(fetch_manifest(client.clone(), first_contact, manifest_tx));
    let mut manifest: Option<Manifest> = None;
    let mut behavior = StartupBehavior::Blocking;
    let mut script_state = ScriptState::Pending;
    let mut startup_pgid: Option<u32> = None;
    let (script_tx, mut script_rx) = mpsc::channel::<(Exit, Vec<String>)>(1);

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
    publish(&lifecycle, &apps);

    let started_at = Instant::now();
    let mut start_timeout = config.start_timeout;
    let mut start_deadline = started_at + start_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(HealthChange { index, health }) = health_rx.recv() => {
                apps.insert(config.apps[index].slug.clone(), health);
                if ready(&config, &apps, &ports_settled) && scripts::gate_open(behavior, &script_state) {
                    change(&mut lifecycle, Event::AppsHealthy);
                }
                publish(&lifecycle, &apps);
            }
            Some(PortEvent { slug, state }) = port_rx.recv() => {
                match state {
                    PortState::Forwarding | PortState::LeftAlone(_) => {
                        ports_settled.insert(slug, true);
                        if ready(&config, &apps, &ports_settled) && scripts::gate_open(behavior, &script_state) {
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
                let script = scripts::holds_start(behavior, &script_state, start_timeout);
                change(&mut lifecycle, Event::StartDeadline { unhealthy, script });
                publish(&lifecycle, &apps);
            }
            Some(m) = manifest_rx.recv(), if manifest.is_none() => {
                behavior = m.startup_behavior;
                if let Some(secs) = m.start_timeout_seconds {
                    start_timeout = std::time::Duration::from_secs(secs);
                    start_deadline = started_at + start_timeout;
                }
                script_state = if m.startup_script.trim().is_empty() {
                    ScriptState::None
                } else {
                    match script_settings(&config, &client, &m).and_then(|settings| {
                        scripts::start(Which::Startup, &m.startup_script, &settings, &sink)
                            .map_err(|e| format!("cannot start the startup script: {e}"))
                    }) {
                        Ok(mut running) => {
                            tracing::info!(behavior = behavior.as_str(), "startup script started");
                            startup_pgid = running.pgid();
                            let (tx, sink) = (script_tx.clone(), sink.clone());
                            tokio::spawn(async move {
                                let outcome = running.wait(&sink).await;
                                let _ = tx.send(outcome).await;
                            });
                            ScriptState::Running
                        }
                        Err(why) => {
                            sink.line(LogStream::Agent, &why);
                            change(&mut lifecycle, Event::StartFailed(why.clone()));
                            ScriptState::Failed(why)
                        }
                    }
                };
                manifest = Some(m);
                if ready(&config, &apps, &ports_settled) && scripts::gate_open(behavior, &script_state) {
                    change(&mut lifecycle, Event::AppsHealthy);
                }
                publish(&lifecycle, &apps);
            }
            Some((exit, last_lines)) = script_rx.recv() => {
                if exit.success() {
                    tracing::info!("startup script exited 0");
                    script_state = ScriptState::Succeeded;
                    if ready(&config, &apps, &ports_settled) && scripts::gate_open(behavior, &script_state) {
                        change(&mut lifecycle, Event::AppsHealthy);
                    }
                } else {
                    let why = scripts::exit_reason(Which::Startup, exit, &last_lines);
                    if !change(&mut lifecycle, Event::StartFailed(why.clone())) {
                        tracing::warn!("{why} (after start; the apps' health tells the rest)");
                    }
                    script_state = ScriptState::Failed(why);
                }
                publish(&lifecycle, &apps);
            }
        }
    }

    // Shutdown: say so, run the shutdown script, stop everything, send the rest of the output,
    // say `off`, all within the shutdown timeout.
    let shutdown_timeout = manifest
        .as_ref()
        .and_then(|m| m.shutdown_timeout_seconds)
        .map(std::time::Duration::from_secs)
        .unwrap_or(config.shutdown_timeout);
    let shutdown_started = Instant::now();
    let deadline = shutdown_started + shutdown_timeout;
    heartbeats.abort();
    manifest_task.abort();
    change(&mut lifecycle, Event::Terminate);
    let report = Report {
        lifecycle: lifecycle.clone(),
        apps: apps.clone(),
    };
    let first_part = shutdown_started + shutdown_timeout / 3;
    if let Err(e) = heartbeat::deliver(&client, &report.to_request(None), first_part).await {
        tracing::warn!("could not report shutting_down: {e}");
    }
    if let Some(m) = manifest
        .as_ref()
        .filter(|m| !m.shutdown_script.trim().is_empty())
    {
        // Leave a third of the timeout for the output and the final report.
        let script_by = deadline - shutdown_timeout / 3;
        if let Some(why) = run_shutdown_script(&config, &client, m, &sink, script_by).await {
            change(&mut lifecycle, Event::ShutdownFailed(why));
        }
    }
    if startup_pgid.is_some() {
        scripts::signal_group(startup_pgid, Signal::TERM);
        tokio::time::sleep(SCRIPT_KILL_GRACE.min(shutdown_timeout / 10)).await;
        scripts::signal_group(startup_pgid, Signal::KILL);
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    sink.close();
    let logs_by = deadline - shutdown_timeout / 6;
    logs_stop_tx.send_replace(Some(logs_by));
    if tokio::time::timeout_at(logs_by, shipper).await.is_err() {
        tracing::warn!("script output not all sent before the shutdown timeout");
    }
    if lifecycle.state != LifecycleState::ShuttingDown {
        // The shutdown script failed: that is the final state.
    } else if Instant::now() >= deadline {
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

/// Waits for the first answered heartbeat, then fetches the manifest (retrying with backoff until
/// the control plane hands it over) and sends it on.
async fn fetch_manifest(
    client: HeartbeatClient,
    first_contact: oneshot::Receiver<()>,
    out: mpsc::Sender<Manifest>,
) {
    if first_contact.await.is_err() {
        return;
    }
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        match client.manifest().await {
            Ok(m) => {
                let _ = out.send(m).await;
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay(crate::backoff::random());
                tracing::warn!("fetching the manifest failed: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How the scripts of `manifest` run: in the home directory, with the agent's environment minus
/// anything token-like, as the template's user.
fn script_settings(
    config: &Config,
    client: &HeartbeatClient,
    manifest: &Manifest,
) -> Result<ScriptSettings, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uid = rustix::process::getuid().as_raw();
    let user = scripts::run_as(manifest.run_as.as_deref(), uid, &passwd)?;
    Ok(ScriptSettings {
        home: config.home_dir.clone(),
        env: scripts::script_env(std::env::vars(), &client.secrets()),
        user,
    })
}

/// Runs the shutdown script until it exits or `by`, when its process group is killed. Returns
/// why it failed, if it did.
async fn run_shutdown_script(
    config: &Config,
    client: &HeartbeatClient,
    manifest: &Manifest,
    sink: &LogSink,
    by: Instant,
) -> Option<String> {
    let settings = match script_settings(config, client, manifest) {
        Ok(s) => s,
        Err(why) => {
            sink.line(LogStream::Agent, &why);
            return Some(why);
        }
    };
    let mut running =
        match scripts::start(Which::Shutdown, &manifest.shutdown_script, &settings, sink) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("cannot start the shutdown script: {e}");
                sink.line(LogStream::Agent, &why);
                return Some(why);
            }
        };
    let pgid = running.pgid();
    match tokio::time::timeout_at(by, running.wait(sink)).await {
        Ok((exit, _)) if exit.success() => {
            scripts::signal_group(pgid, Signal::KILL);
            None
        }
        Ok((exit, last)) => {
            scripts::signal_group(pgid, Signal::KILL);
            let why = scripts::exit_reason(Which::Shutdown, exit, &last);
            tracing::warn!("{why}");
            Some(why)
        }
        Err(_) => {
            scripts::signal_group(pgid, Signal::KILL);
            let why = "shutdown script did not finish in time; stopped".to_string();
            sink.line(LogStream::Agent, &why);
            tracing::warn!("{why}");
            Some(why)
        }
    }
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
