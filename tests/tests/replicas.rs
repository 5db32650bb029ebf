//! Three real `lumie-server` processes on one real PostgreSQL behind a real TCP load balancer
//! (haproxy, round-robin, [`lumie_tests::balancer`]), on the harness (real kube-apiserver,
//! scheduler, node simulator, the real webhook): any replica answers any request.
//!
//! One test, in phases sharing the stack (the whole file stays well under two minutes):
//! - a workspace created through one replica and watched (SSE) on all three: every status
//!   change reaches every watcher within 1 s of the first (whichever replica made it);
//! - the workspace's agent (the real one) heartbeats through the balancer: `connected` on every
//!   replica, asked directly; its apps answer through the app proxy on every replica;
//! - a rolling restart (SIGTERM, drain, start again) of every replica under continuous API reads,
//!   app proxy requests, heartbeats and an open terminal session WebSocket, all through the
//!   balancer: no failed request (a refused connection is retried, as a client would), the
//!   agent never `disconnected`, the WebSocket cut at most for a reconnect;
//! - PostgreSQL restarted under that load: the replicas recover on their own, say what happened
//!   (naming PostgreSQL), and watchers opened before the restart see the next change.
//!
//! - an OIDC login (the test OpenID provider, `tests/oidc`) begun on one replica completes on
//!   another, and the session works on the third;
//!
//! Until leader election lands every replica runs the reconciler and the build executor; nothing
//! here depends on which one acts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use lumie_server::api::WorkspaceJson;
use lumie_server::config::DatabaseConfig;
use lumie_server::model::WorkspaceStatus;
use lumie_tests::balancer::{Balancer, CHECK_INTERVAL};
use lumie_tests::control_plane::Echo;
use lumie_tests::stack::{self, Postgres};
use lumie_tests::workspace_pods::{self, DevContainerRunner, StandInApps};
use lumie_tests::{Cluster, control_plane, ws};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../server/tests/common/oidc_provider.rs"]
mod oidc_provider;

const REPLICAS: usize = 3;

fn location(base: &reqwest::Url, r: &reqwest::Response) -> reqwest::Url {
    let loc = r
        .headers()
        .get(reqwest::header::LOCATION)
        .unwrap_or_else(|| panic!("no Location from {base}"))
        .to_str()
        .unwrap();
    base.join(loc).unwrap()
}

/// A browser (cookies kept, redirects followed by hand) signs in: the login starts on `begin`,
/// the provider's callback is sent to `finish` (both reached as the balancer's host), and the
/// session cookie it sets is then used on `then`. Returns who `then` says the browser is.
async fn login_across(
    lb: &str,
    (begin, finish, then): (SocketAddr, SocketAddr, SocketAddr),
) -> serde_json::Value {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = async |url: &reqwest::Url| {
        browser
            .get(url.clone())
            .header(reqwest::header::HOST, lb)
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    };
    let start: reqwest::Url = format!("http://{begin}/api/v2/users/oidc/login")
        .parse()
        .unwrap();
    let r = get(&start).await;
    assert_eq!(r.status(), 303, "login start");
    let authorize = location(&start, &r);
    let provider_get = async |url: &reqwest::Url| browser.get(url.clone()).send().await.unwrap();
    let r = provider_get(&authorize).await;
    assert_eq!(r.status(), 303, "authorize");
    let form_page = location(&authorize, &r);
    let html = provider_get(&form_page).await.text().await.unwrap();
    let (action, r) =
        oidc_provider::submit_login_form(&browser, &form_page, &html, "alice", "alice-password")
            .await;
    assert_eq!(r.status(), 303, "login form");
    let resume = location(&action, &r);
    let r = provider_get(&resume).await;
    assert_eq!(r.status(), 303, "resume");
    let callback = location(&resume, &r);
    assert_eq!(callback.host_str(), Some("127.0.0.1"), "{callback}");
    let mut on_finish = callback.clone();
    on_finish.set_port(Some(finish.port())).unwrap();
    let r = get(&on_finish).await;
    assert_eq!(
        r.status(),
        303,
        "callback on another replica: {}",
        r.text().await.unwrap()
    );
    let me: reqwest::Url = format!("http://{then}/api/v2/users/me").parse().unwrap();
    let r = get(&me).await;
    assert_eq!(r.status(), 200, "the session on a third replica");
    r.json().await.unwrap()
}

/// One replica: a `lumie-server` process on a fixed address (restarted on the same one).
struct Replica {
    addr: SocketAddr,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
    /// Every line every start of this replica logged.
    log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn start(&mut self) {
        let child = control_plane::spawn_until_listening(
            control_plane::server_command(Cluster::shared(), self.addr, false)
                .unwrap()
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))),
            Stdio::null(),
            Echo {
                keep: Some(self.log.clone()),
                ..Echo::all(format!("lumie-server[{}]", self.addr))
            },
        )
        .unwrap();
        self.child = Some(child);
    }

    /// SIGTERM, then waits for the process to end (it drains first).
    fn stop(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "a drained replica exits cleanly: {status}"
                );
                return started.elapsed();
            }
            assert!(Instant::now() < deadline, "exits within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logged(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// HTTP as a client of the balancer, or of one replica directly (same Host header: the Host
/// guard accepts only the access URL's).
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    host: String,
    token: String,
}

impl Api {
    fn req(&self, method: reqwest::Method, to: SocketAddr, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{to}{path}"))
            .header(reqwest::header::HOST, &self.host)
            .header("Coder-Session-Token", &self.token)
    }

    /// `GET /@admin/multi/apps/tilt/{path}` through the app proxy: the stand-in's answer.
    async fn app(&self, to: SocketAddr, path: &str) -> reqwest::Result<String> {
        self.req(
            reqwest::Method::GET,
            to,
            &format!("/@admin/multi/apps/tilt/{path}"),
        )
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
    }

    async fn workspace(&self, to: SocketAddr, id: &str) -> reqwest::Result<WorkspaceJson> {
        self.req(
            reqwest::Method::GET,
            to,
            &format!("/api/v2/workspaces/{id}"),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
    }
}

/// Statuses a watcher saw, with when: spawned on `to`'s `GET …/watch`.
/// What a watcher from [`watch`] has seen: each status and when.
type Seen = Arc<Mutex<Vec<(WorkspaceStatus, Instant)>>>;

/// Whether each watcher from [`watch`] has seen `status`.
fn every_watcher_saw(watchers: &[Seen], status: WorkspaceStatus) -> bool {
    watchers
        .iter()
        .all(|w| w.lock().unwrap().iter().any(|(s, _)| *s == status))
}

fn watch(api: &Api, to: SocketAddr, id: &str) -> Seen {
    let seen: Seen = Arc::default();
    let (api, id, out) = (api.clone(), id.to_string(), seen.clone());
    tokio::spawn(async move {
        let r = api
            .req(
                reqwest::Method::GET,
                to,
                &format!("/api/v2/workspaces/{id}/watch"),
            )
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                    && let Ok(ws) = serde_json::from_str::<WorkspaceJson>(data)
                {
                    out.lock().unwrap().push((ws.status, Instant::now()));
                }
            }
        }
    });
    seen
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads through the balancer until told to stop: (ok, failed, refused-then-retried, agent
/// seen disconnected, failures).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    disconnected: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn load(api: &Api, to: SocketAddr, id: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let [ok, failed, retried, disconnected] = std::array::from_fn(|_| Arc::new(AtomicU64::new(0)));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (api, id) = (api.clone(), id.to_string());
    let (s, o, f, r, d, e) = (
        stop.clone(),
        ok.clone(),
        failed.clone(),
        retried.clone(),
        disconnected.clone(),
        errors.clone(),
    );
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            // API reads and app proxy requests in turn. A real client retries a refused
            // connection (nothing was sent) and nothing else.
            let mut attempt = 0;
            let got = loop {
                let one = if n.is_multiple_of(2) {
                    api.workspace(to, &id)
                        .await
                        .map(|ws| ws.agent.is_some_and(|a| a.status == "disconnected"))
                } else {
                    api.app(to, &format!("load/{n}")).await.map(|body| {
                        // A wrong answer ends the test (through `Load::finish`).
                        assert_eq!(body, format!("tilt stand-in: /load/{n}"));
                        false
                    })
                };
                match one {
                    Err(err) if err.is_connect() && attempt < 20 => {
                        attempt += 1;
                        r.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => break other,
                }
            };
            match got {
                Ok(disconnected) => {
                    o.fetch_add(1, Ordering::Relaxed);
                    if disconnected {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(err) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    e.lock().unwrap().push(format!("{err:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    Load {
        stop,
        ok,
        failed,
        retried,
        disconnected,
        errors,
        task,
    }
}

impl Load {
    async fn finish(self) -> (u64, u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.disconnected.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
        )
    }
}

/// A terminal session through the balancer, used continuously (a command every 100 ms) and
/// reopened whenever it is cut: how many commands came back, how often it was reopened, and
/// the longest time without an answer.
struct Terminal {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    reopened: Arc<AtomicU64>,
    longest_gap: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

fn terminal(url: String, token: String) -> Terminal {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let reopened = Arc::new(AtomicU64::new(0));
    let longest_gap: Arc<Mutex<Duration>> = Arc::default();
    let (s, r, o, g) = (
        stop.clone(),
        rounds.clone(),
        reopened.clone(),
        longest_gap.clone(),
    );
    let task = tokio::spawn(async move {
        let mut last_answer = Instant::now();
        let mut n = 0u64;
        let mut first = true;
        while !s.load(Ordering::Relaxed) {
            let Ok(mut socket) = ws::connect(&url, &token).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if !first {
                o.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let mut seen = String::new();
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let want = format!("{}\r\n", 1_000_000 + n);
                let cmd = format!("echo $(({n}+1000000))\r");
                if socket
                    .send(Message::Binary(cmd.into_bytes().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                let answered = tokio::time::timeout(Duration::from_secs(5), async {
                    while !seen.contains(&want) {
                        match socket.next().await {
                            Some(Ok(Message::Binary(b))) => {
                                seen.push_str(&String::from_utf8_lossy(&b))
                            }
                            Some(Ok(_)) => {}
                            _ => return false,
                        }
                    }
                    true
                })
                .await;
                if answered != Ok(true) {
                    break;
                }
                seen.clear();
                // From the previous answer (the first one's wait is the session's start).
                let gap = if r.load(Ordering::Relaxed) == 0 {
                    Duration::ZERO
                } else {
                    last_answer.elapsed()
                };
                {
                    let mut longest = g.lock().unwrap();
                    *longest = (*longest).max(gap);
                }
                last_answer = Instant::now();
                r.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    Terminal {
        stop,
        rounds,
        reopened,
        longest_gap,
        task,
    }
}

impl Terminal {
    async fn finish(self) -> (u64, u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (
            self.rounds.load(Ordering::Relaxed),
            self.reopened.load(Ordering::Relaxed),
            *self.longest_gap.lock().unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_any_request_through_restarts_of_replicas_and_postgresql() {
    let started = Instant::now();
    let cluster = Cluster::shared();
    let work = tempfile::tempdir().unwrap();
    let _webhook = stack::start_workspace_admission(cluster, work.path())
        .await
        .unwrap();
    // The real agent (downloaded from the control plane through the balancer, as the init
    // script does), with stand-in apps on a loopback address of this process's own.
    let agent_dir = workspace_pods::agent_binary_dir(work.path()).unwrap();
    let app_host = workspace_pods::private_app_host();
    let _apps = StandInApps::start(app_host).await.unwrap();
    let runner = DevContainerRunner::created(work.path().join("pods"))
        .unwrap()
        .with_env("LUMIE_AGENT_APP_HOST", app_host.to_string());
    cluster.set_pod_action(Arc::new(runner));
    let postgres = Postgres::start().unwrap();
    let pg = postgres.url.clone();
    let db = lumie_server::db::Db::connect(&DatabaseConfig::Postgres(pg.clone()))
        .await
        .unwrap();
    let (_, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    db.close().await;

    let addrs: Vec<SocketAddr> = (0..REPLICAS)
        .map(|_| control_plane::free_loopback_addr().unwrap())
        .collect();
    let lb = Balancer::start(&addrs).unwrap();
    let provider =
        oidc_provider::Provider::start(&format!("{}/api/v2/users/oidc/callback", lb.url()), &[])
            .await;
    let mut replicas: Vec<Replica> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let dir = work.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            Replica {
                addr: *addr,
                env: vec![
                    ("CODER_PG_CONNECTION_URL", pg.clone()),
                    ("LUMIE_DATA_DIR", dir.display().to_string()),
                    // Every replica is reached as the balancer, agents included.
                    ("CODER_ACCESS_URL", lb.url()),
                    ("LUMIE_AGENT_URL", lb.url()),
                    ("LUMIE_AGENT_REPORT_INTERVAL_SECS", "2".into()),
                    ("LUMIE_AGENT_BINARY_DIR", agent_dir.display().to_string()),
                    ("CODER_OIDC_ISSUER_URL", provider.issuer.clone()),
                    ("CODER_OIDC_CLIENT_ID", "coder".into()),
                    ("CODER_OIDC_CLIENT_SECRET", oidc_provider::SECRET.into()),
                    (
                        "LUMIE_SHUTDOWN_DRAIN_MS",
                        (4 * CHECK_INTERVAL.as_millis()).to_string(),
                    ),
                    ("LUMIE_SHUTDOWN_GRACE_MS", "2000".into()),
                ],
                child: None,
                log: Arc::default(),
            }
        })
        .collect();
    for r in &mut replicas {
        r.start();
    }
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        host: lb.addr.to_string(),
        token,
    };
    eprintln!("stack up after {:?}", started.elapsed());

    // --- a login begun on one replica completes on another ---
    let me = login_across(&lb.addr.to_string(), (addrs[0], addrs[1], addrs[2])).await;
    assert_eq!(me["username"], "alice", "{me}");

    // --- create through one replica, watch on every one ---
    let r = api
        .req(
            reqwest::Method::POST,
            addrs[0],
            "/api/v2/users/me/workspaces",
        )
        .json(&json!({"name": "multi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ws: WorkspaceJson = r.json().await.unwrap();
    let watchers: Vec<_> = addrs.iter().map(|a| watch(&api, *a, &ws.id)).collect();
    until(
        "running, seen by every watcher",
        Duration::from_secs(60),
        async || every_watcher_saw(&watchers, WorkspaceStatus::Running),
    )
    .await;
    let mut worst = Duration::ZERO;
    for status in [WorkspaceStatus::Starting, WorkspaceStatus::Running] {
        // When each watcher first saw it, after its own first event (the state at subscribe).
        let times: Vec<Instant> = watchers
            .iter()
            .filter_map(|w| {
                let g = w.lock().unwrap();
                g.iter()
                    .skip(1)
                    .find(|(s, _)| *s == status)
                    .map(|(_, t)| *t)
            })
            .collect();
        if times.len() < REPLICAS {
            continue; // Already so when a watcher subscribed.
        }
        let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
        eprintln!("{status:?} reached all {REPLICAS} watchers within {spread:?}");
        worst = worst.max(spread);
    }
    assert!(worst < Duration::from_secs(1), "spread {worst:?}");

    // --- heartbeats through the balancer: connected on every replica ---
    for a in &addrs {
        until(
            "agent connected on every replica",
            Duration::from_secs(10),
            async || {
                api.workspace(*a, &ws.id)
                    .await
                    .is_ok_and(|w| w.agent.is_some_and(|g| g.status == "connected"))
            },
        )
        .await;
    }

    // The app proxy through the balancer (every replica in turn) and on each replica directly.
    for i in 0..2 * REPLICAS {
        let body = api.app(lb.addr, &format!("rr/{i}")).await.unwrap();
        assert_eq!(body, format!("tilt stand-in: /rr/{i}"));
    }
    for a in &addrs {
        assert_eq!(
            api.app(*a, "direct").await.unwrap(),
            "tilt stand-in: /direct"
        );
    }

    // --- rolling restart under load ---
    let traffic = load(&api, lb.addr, &ws.id);
    let term = terminal(
        format!("{}/api/v2/workspaces/{}/sessions/terminal", lb.url(), ws.id),
        api.token.clone(),
    );
    until(
        "the terminal answers",
        Duration::from_secs(20),
        async || term.rounds.load(Ordering::Relaxed) > 0,
    )
    .await;
    for r in replicas.iter_mut() {
        let took = r.stop();
        r.start();
        eprintln!(
            "replica {} drained and stopped in {took:?}, started again",
            r.addr
        );
        // Back in rotation once haproxy's next check passes.
        let a = r.addr;
        until("back in rotation", Duration::from_secs(10), async || {
            api.req(reqwest::Method::GET, a, "/healthz")
                .send()
                .await
                .is_ok_and(|x| x.status() == 200)
        })
        .await;
        tokio::time::sleep(3 * CHECK_INTERVAL).await;
    }
    let (ok, failed, retried, disconnected, errors) = traffic.finish().await;
    let (rounds, reopened, gap) = term.finish().await;
    eprintln!(
        "rolling restart: {ok} reads ok, {failed} failed, {retried} refused connections retried, agent seen disconnected {disconnected} times; terminal: {rounds} commands answered, reopened {reopened} times, longest gap {gap:?}"
    );
    assert!(
        reopened >= 1,
        "the terminal's replica drained at some point: it was cut and reopened"
    );
    assert!(
        gap < Duration::from_secs(5),
        "the terminal was away only for a reconnect: {gap:?}"
    );
    assert_eq!(failed, 0, "no failed request: {errors:?}");
    assert_eq!(disconnected, 0, "the agent stayed connected");
    assert!(ok > 50, "traffic flowed");
    for a in &addrs {
        let w = api.workspace(*a, &ws.id).await.unwrap();
        assert_eq!(
            w.agent.unwrap().status,
            "connected",
            "on {a} after the restarts"
        );
    }

    // --- PostgreSQL restarted under load ---
    let watchers: Vec<_> = addrs.iter().map(|a| watch(&api, *a, &ws.id)).collect();
    until("watchers open", Duration::from_secs(5), async || {
        watchers.iter().all(|w| !w.lock().unwrap().is_empty())
    })
    .await;
    let traffic = load(&api, lb.addr, &ws.id);
    let pg_started = Instant::now();
    tokio::task::spawn_blocking(move || postgres.restart().unwrap())
        .await
        .unwrap();
    eprintln!("PostgreSQL restarted in {:?}", pg_started.elapsed());
    for a in &addrs {
        until(
            "answering again after the PostgreSQL restart",
            Duration::from_secs(20),
            async || api.workspace(*a, &ws.id).await.is_ok(),
        )
        .await;
    }
    eprintln!(
        "every replica answers again {:?} after the restart began",
        pg_started.elapsed()
    );
    let (ok, failed, retried, _, _) = traffic.finish().await;
    eprintln!(
        "during the PostgreSQL restart: {ok} reads ok, {failed} failed (503 while it was down), {retried} retried"
    );
    for r in &replicas {
        until(
            "the replica says what happened",
            Duration::from_secs(20),
            async || {
                let log = r.logged();
                log.contains("PostgreSQL LISTEN connection was lost")
                    && log.contains("LISTEN on PostgreSQL re-established; resyncing")
            },
        )
        .await;
    }
    // Watchers opened before the restart still see the next change.
    let r = api
        .req(
            reqwest::Method::POST,
            lb.addr,
            &format!("/api/v2/workspaces/{}/builds", ws.id),
        )
        .json(&json!({"transition": "stop"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    until(
        "stopped, seen by watchers opened before the restart",
        Duration::from_secs(60),
        async || every_watcher_saw(&watchers, WorkspaceStatus::Stopped),
    )
    .await;
    eprintln!("whole test: {:?}", started.elapsed());
}
