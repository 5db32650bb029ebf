//! The agent end to end in-process: a stand-in control plane records heartbeats, stand-in apps
//! answer on 127.0.0.1, and a distinct 127.77.2.x address plays the pod IP.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{App, Recorder, StandIn, free_port};
use lumie_agent::Config;
use lumie_agent::config::{AppConfig, HealthCheck};
use lumie_contract::agent_api::{AppHealth, LifecycleState as S};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn config(url: reqwest::Url, ports: [u16; 3], pod_ip: Option<IpAddr>) -> Config {
    let mut c = Config::new(url, "token-123");
    for (app, port) in c.apps.iter_mut().zip(ports) {
        app.port = port;
    }
    c.pod_ip = pod_ip;
    c.health_interval = Duration::from_millis(100);
    c.health_threshold = 2;
    c.health_timeout = Duration::from_millis(500);
    c.shutdown_timeout = Duration::from_secs(3);
    c.home_dir = std::env::temp_dir();
    c
}

/// Runs the agent; send on the returned sender (or drop it) to shut it down.
fn spawn_agent(c: Config) -> (oneshot::Sender<()>, JoinHandle<S>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        lumie_agent::run(c, async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    (tx, task)
}

async fn read_all(addr: SocketAddr) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    got
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn starting_then_ready_then_health_changes_at_once_then_off() {
    let cp = StandIn::start(Recorder::new(15)).await;
    let rec = cp.rec.clone();
    let ports = [free_port(), free_port(), free_port()];
    let pod = IpAddr::from([127, 77, 2, 1]);
    let mut c = config(cp.url(), ports, Some(pod));
    // A long interval: anything reported quickly was reported because it changed.
    c.report_interval = Some(Duration::from_secs(60));
    let (stop, agent) = spawn_agent(c);

    let first = rec.wait_for("at start", WAIT, |_| true).await;
    assert_eq!(first.token.as_deref(), Some("token-123"));
    assert_eq!(first.body.version, lumie_agent::VERSION);
    let starting = rec.wait_for_state(S::Starting, WAIT).await;
    assert!(
        starting
            .body
            .apps
            .values()
            .all(|h| *h != AppHealth::Healthy)
    );

    // No app answers: after the threshold the apps are unhealthy, still starting.
    rec.wait_for("with tilt unhealthy", WAIT, |b| {
        b.body.apps["tilt"] == AppHealth::Unhealthy
    })
    .await;
    assert!(!rec.states().contains(&S::Ready));

    let tilt = App::start_on("tilt", ports[0]).await;
    let _code = App::start_on("code-server", ports[1]).await;
    let _agents = App::start_on("agents", ports[2]).await;
    let ready = rec.wait_for_state(S::Ready, WAIT).await;
    assert!(
        ready.body.apps.values().all(|h| *h == AppHealth::Healthy),
        "{ready:?}"
    );
    // `created` lasts only until the checks start, so it may not be seen.
    let states = rec.states();
    assert!(
        states == [S::Starting, S::Ready] || states == [S::Created, S::Starting, S::Ready],
        "{states:?}"
    );

    // Every app is reachable on the pod IP through the agent.
    for (name, port) in ["tilt", "code-server", "agents"].into_iter().zip(ports) {
        assert_eq!(read_all(SocketAddr::new(pod, port)).await, name.as_bytes());
    }

    // Kill Tilt: reported unhealthy within its threshold, long before the 60 s interval.
    let killed = Instant::now();
    tilt.kill();
    let unhealthy = rec
        .wait_for("with tilt unhealthy after ready", WAIT, |b| {
            b.at > killed && b.body.apps["tilt"] == AppHealth::Unhealthy
        })
        .await;
    let took = unhealthy.at - killed;
    // Its threshold is a few 100 ms checks; 5 s leaves room for a loaded machine and is still
    // far from the 60 s report interval a missed immediate report would wait for.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(unhealthy.body.lifecycle, S::Ready, "ready stays ready");
    let stats = unhealthy.body.stats.expect("stats with every heartbeat");
    assert!(stats.forwarded_connections_total >= 3, "{stats:?}");
    assert!(stats.forwarded_bytes >= "tiltcode-serveragents".len() as u64);
    assert!(stats.memory_total_bytes > 0 && stats.disk_total_bytes > 0);

    let _ = stop.send(());
    let last = tokio::time::timeout(WAIT, agent).await.unwrap().unwrap();
    assert_eq!(last, S::Off);
    let states = rec.states();
    assert_eq!(&states[states.len() - 2..], [S::ShuttingDown, S::Off]);
    // Forwarding stopped with the agent.
    assert!(
        TcpStream::connect(SocketAddr::new(pod, ports[1]))
            .await
            .is_err()
    );
    cp.stop().await;
}

#[tokio::test]
async fn start_timeout_names_the_apps_still_down_and_ready_follows_later() {
    let cp = StandIn::start(Recorder::new(15)).await;
    let rec = cp.rec.clone();
    let tilt = App::start("tilt").await;
    let code = App::start("code-server").await;
    let agents_port = free_port();
    let mut c = config(cp.url(), [tilt.port, code.port, agents_port], None);
    // Long enough for tilt and code-server (up from the start) to pass their 100 ms checks on a
    // loaded machine, so the reason names only the app that is really down.
    c.start_timeout = Duration::from_millis(1500);
    c.report_interval = Some(Duration::from_secs(60));
    let (stop, agent) = spawn_agent(c);

    let timeout = rec.wait_for_state(S::StartTimeout, WAIT).await;
    assert_eq!(
        timeout.body.lifecycle_reason.as_deref(),
        Some("apps not healthy in time: agents")
    );
    assert_eq!(timeout.body.apps["tilt"], AppHealth::Healthy);

    let _agents = App::start_on("agents", agents_port).await;
    let ready = rec.wait_for_state(S::Ready, WAIT).await;
    assert_eq!(ready.body.lifecycle_reason, None);
    drop(stop);
    assert_eq!(
        tokio::time::timeout(WAIT, agent).await.unwrap().unwrap(),
        S::Off
    );
    cp.stop().await;
}

#[tokio::test]
async fn a_pod_ip_that_cannot_be_listened_on_is_a_start_error() {
    let cp = StandIn::start(Recorder::new(15)).await;
    let rec = cp.rec.clone();
    let apps = [
        App::start("tilt").await,
        App::start("code-server").await,
        App::start("agents").await,
    ];
    // TEST-NET-3 is not on this host: the bind fails locally and nothing is sent there.
    let c = config(
        cp.url(),
        [apps[0].port, apps[1].port, apps[2].port],
        Some(IpAddr::from([203, 0, 113, 7])),
    );
    let (stop, agent) = spawn_agent(c);
    let err = rec.wait_for_state(S::StartError, WAIT).await;
    let reason = err.body.lifecycle_reason.unwrap();
    assert!(
        reason.starts_with("cannot listen on 203.0.113.7:"),
        "{reason}"
    );
    assert!(!rec.states().contains(&S::Ready), "{:?}", rec.states());
    drop(stop);
    assert_eq!(
        tokio::time::timeout(WAIT, agent).await.unwrap().unwrap(),
        S::Off
    );
    cp.stop().await;
}

#[tokio::test]
async fn disabled_and_http_checks() {
    let cp = StandIn::start(Recorder::new(15)).await;
    let rec = cp.rec.clone();
    // code-server is checked over HTTP on a small server answering 200 on /healthz.
    let health = StandIn::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
        Recorder::new(15),
    );
    let tilt = App::start("tilt").await;
    let mut c = config(cp.url(), [tilt.port, health.addr.port(), free_port()], None);
    c.apps[1].health =
        HealthCheck::Http(format!("http://{}/healthz", health.addr).parse().unwrap());
    c.apps[2] = AppConfig {
        health: HealthCheck::Disabled,
        ..c.apps[2].clone()
    };
    let (stop, agent) = spawn_agent(c);
    let ready = rec.wait_for_state(S::Ready, WAIT).await;
    assert_eq!(ready.body.apps["agents"], AppHealth::Disabled);
    assert_eq!(ready.body.apps["code-server"], AppHealth::Healthy);
    // The HTTP health endpoint goes away: code-server turns unhealthy.
    health.stop().await;
    rec.wait_for("with code-server unhealthy", WAIT, |b| {
        b.body.apps["code-server"] == AppHealth::Unhealthy
    })
    .await;
    drop(stop);
    assert_eq!(
        tokio::time::timeout(WAIT, agent).await.unwrap().unwrap(),
        S::Off
    );
    cp.stop().await;
}

#[tokio::test]
async fn control_plane_down_backs_off_forwarding_goes_on_and_heartbeats_resume() {
    let apps = [
        App::start("tilt").await,
        App::start("code-server").await,
        App::start("agents").await,
    ];
    let ports = [apps[0].port, apps[1].port, apps[2].port];
    let pod = IpAddr::from([127, 77, 2, 5]);
    let cp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let url: reqwest::Url = format!("http://{cp_addr}").parse().unwrap();
    let mut c = config(url, ports, Some(pod));
    c.report_interval = Some(Duration::from_millis(300));
    let (stop, agent) = spawn_agent(c);

    // Nothing listens at the control plane address; the agent works anyway.
    let mut forwarded = false;
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(SocketAddr::new(pod, ports[2])).await {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            forwarded = got == b"agents";
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(forwarded, "forwarding works with the control plane down");

    // The control plane answers 503 for two seconds: the agent backs off (100 ms doubling, with
    // jitter, so a handful of attempts), not once per 300 ms interval and not in a tight loop.
    let rec = Recorder::new(1);
    rec.set_status(503);
    let cp = StandIn::start_at(cp_addr, rec.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = rec.attempts();
    assert!((2..=9).contains(&attempts), "{attempts} attempts in 2 s");
    rec.set_status(200);
    let back = rec.wait_for_state(S::Ready, WAIT).await;
    assert_eq!(back.token.as_deref(), Some("token-123"));

    // Down again for a while: forwarding goes on; heartbeats resume when it is back.
    cp.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(read_all(SocketAddr::new(pod, ports[0])).await, b"tilt");
    let before = rec.beats().len();
    let restarted = Instant::now();
    let cp = StandIn::start_at(cp_addr, rec.clone()).await;
    rec.wait_for("after the restart", WAIT, |b| b.at > restarted)
        .await;
    assert!(rec.beats().len() > before);

    drop(stop);
    assert_eq!(
        tokio::time::timeout(WAIT, agent).await.unwrap().unwrap(),
        S::Off
    );
    assert_eq!(rec.beats().last().unwrap().body.lifecycle, S::Off);
    cp.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_when_the_control_plane_is_gone() {
    let cp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let url: reqwest::Url = format!("http://{cp_addr}").parse().unwrap();
    let mut c = config(url, [free_port(), free_port(), free_port()], None);
    c.shutdown_timeout = Duration::from_millis(1500);
    let (stop, agent) = spawn_agent(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    drop(stop);
    let last = tokio::time::timeout(WAIT, agent).await.unwrap().unwrap();
    let took = asked.elapsed();
    assert_eq!(last, S::Off);
    // The 1.5 s shutdown timeout plus room for a loaded machine.
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
}
