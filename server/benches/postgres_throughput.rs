//! API and heartbeat throughput with a real PostgreSQL (`scripts/start-postgres.sh`):
//! - list/get over HTTP with 1,000 workspaces (10 owners × 100);
//! - heartbeat ingestion: simulated agents posting heartbeats over HTTP, sustained rate and p99;
//!   then, in the same run, the same load on one replica and on two replicas of the same
//!   database (each replica flushing its own batches and refreshing the other's rows as in
//!   production), with each agent on one replica (as a TCP balancer pins its connection) and
//!   with each agent's heartbeats alternating (the worst case), and the ratios.
//!
//! `cargo bench -p lumie-server --bench postgres_throughput` prints the figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lumie_contract::agent_api::{AppHealth, HeartbeatRequest, LifecycleState, ResourceStats};
use lumie_server::config::Config;
use lumie_server::state::AppState;
use lumie_server::template::Template;

const OWNERS: usize = 10;
const PER_OWNER: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Load {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: u64,
}

impl Load {
    fn print(&self, what: &str) {
        let mut l = self.latencies.clone();
        l.sort();
        println!(
            "{what}: {:.0} req/s over {:.1}s ({} requests, {} errors), p50 {:.2} ms, p99 {:.2} ms",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.requests,
            self.errors,
            percentile(&l, 0.50).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3,
        );
    }
}

/// Runs `workers` loops of `one(i)` for `dur`; each returns whether the request succeeded.
async fn load<F, Fut>(workers: usize, dur: Duration, one: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let one = Arc::new(one);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..workers {
        let (one, stop, counter, errors) =
            (one.clone(), stop.clone(), counter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if !one(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = vec![];
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Load {
        requests: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
        errors: errors.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() {
    let (db, db_url) = common::pg_db_with_url().await;
    let dir = tempfile::tempdir().unwrap();

    // 1,000 workspaces, each with an agent token.
    let (_, admin_token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let t = Instant::now();
    let mut owner_tokens = vec![];
    let mut ids = vec![];
    let mut agent_tokens = vec![];
    for o in 0..OWNERS {
        let owner = db
            .create_user(&format!("user{o}"), "", false)
            .await
            .unwrap();
        owner_tokens.push(db.create_api_token(&owner.id, "bench").await.unwrap());
        for w in 0..PER_OWNER {
            let c = db
                .create_workspace(
                    &owner,
                    &format!("ws{w}"),
                    &format!("coder-user{o}-ws{w}"),
                    None,
                )
                .await
                .unwrap();
            let tok = format!(
                "agent-token-{o}-{w}-{}",
                lumie_server::db::random_secret(16)
            );
            agent_tokens.push((tok, c.workspace.id.clone()));
            ids.push(c.workspace.id);
        }
    }
    println!(
        "setup: {} workspaces in PostgreSQL in {:.1}s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    let state = AppState::new(
        Config::for_tests(dir.path().into()),
        db.clone(),
        Template::default(),
        None,
    )
    .await
    .unwrap();
    // No cluster to review agent tokens: each token stands for its workspace's pod (the
    // cached-review path a heartbeat takes in production after its first).
    let fixed = Arc::new(lumie_server::agent_api::FixedAgents::new(
        state.agent_auth.expected_username(),
    ));
    for (tok, id) in &agent_tokens {
        fixed.add(tok, id);
    }
    state.agent_auth.install(fixed.clone(), fixed.clone());
    let agent_tokens: Vec<String> = agent_tokens.into_iter().map(|(t, _)| t).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, lumie_server::router(state.clone())).into_future());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let base = format!("http://{addr}");

    // List: all 1,000 as admin; 100 as an owner.
    for (what, token, expect) in [
        (
            "list 1,000 workspaces (admin)",
            admin_token.clone(),
            OWNERS * PER_OWNER,
        ),
        (
            "list 100 workspaces (owner)",
            owner_tokens[0].clone(),
            PER_OWNER,
        ),
    ] {
        let (http, url) = (http.clone(), format!("{base}/api/v2/workspaces"));
        let r = load(4, Duration::from_secs(5), move |_| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                match http
                    .get(&url)
                    .header("Coder-Session-Token", &token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r
                        .json::<lumie_server::api::WorkspacesJson>()
                        .await
                        .is_ok_and(|l| l.count == expect),
                    _ => false,
                }
            }
        })
        .await;
        r.print(what);
    }

    // Get: random workspaces as admin.
    let ids = Arc::new(ids);
    {
        let (http, base, token, ids) =
            (http.clone(), base.clone(), admin_token.clone(), ids.clone());
        let r = load(16, Duration::from_secs(5), move |i| {
            let id = ids[(i as usize * 7919) % ids.len()].clone();
            let (http, url, token) = (http.clone(), format!("{base}/api/v2/workspaces/{id}"), token.clone());
            async move {
                matches!(http.get(&url).header("Coder-Session-Token", &token).send().await, Ok(r) if r.status().is_success())
            }
        })
        .await;
        r.print("get one workspace");
    }

    // Heartbeats: 1,000 agents, 64 connections, flushed every 500 ms in batched statements.
    let flushed_rows = Arc::new(AtomicU64::new(0));
    let flushes = Arc::new(AtomicU64::new(0));
    {
        let (hub, rows, n) = (state.agents.clone(), flushed_rows.clone(), flushes.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lumie_server::agents::FLUSH_INTERVAL).await;
                let t = Instant::now();
                let k = hub.flush().await.unwrap() as u64;
                if k > 0 {
                    rows.fetch_add(k, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                    let _ = t;
                }
            }
        });
    }
    let body = serde_json::to_vec(&HeartbeatRequest {
        lifecycle: LifecycleState::Ready,
        lifecycle_reason: None,
        apps: [
            ("tilt", AppHealth::Healthy),
            ("code-server", AppHealth::Healthy),
            ("agents", AppHealth::Healthy),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        stats: Some(ResourceStats {
            cpu_cores: 0.25,
            memory_used_bytes: 1 << 30,
            ..Default::default()
        }),
        version: "bench".into(),
    })
    .unwrap();
    let tokens = Arc::new(agent_tokens);
    let url = format!("{base}{}", lumie_contract::agent_api::HEARTBEAT_PATH);
    let (http2, body2, tokens2) = (http.clone(), body.clone(), tokens.clone());
    let r = load(64, Duration::from_secs(10), move |i| {
        let token = tokens[i as usize % tokens.len()].clone();
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        heartbeat(http, url, token, body)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.print("heartbeats (1,000 agents, 64 connections)");
    let rows = flushed_rows.load(Ordering::Relaxed);
    let n = flushes.load(Ordering::Relaxed);
    println!(
        "heartbeat writes: {n} batched flushes, {rows} agent rows written for {} heartbeats ({:.2} rows per heartbeat, {:.0} rows per flush)",
        r.requests,
        rows as f64 / r.requests.max(1) as f64,
        rows as f64 / n.max(1) as f64
    );
    let sample = db.live_agents().await.unwrap();
    let written = sample.iter().filter(|a| a.version == "bench").count();
    println!(
        "agents with a persisted heartbeat: {written}/{}",
        sample.len()
    );

    // One replica against two on the same database, back to back. Each replica refreshes the
    // rows the others wrote every flush interval, as `AgentHub::run` does on PostgreSQL (the
    // flusher above keeps flushing the first replica).
    let second = replica(&db_url, dir.path(), &fixed).await;
    for hub in [state.agents.clone(), second.1.agents.clone()] {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lumie_server::agents::FLUSH_INTERVAL).await;
                hub.refresh().await.unwrap();
            }
        });
    }
    {
        let (hub, rows, n) = (
            second.1.agents.clone(),
            flushed_rows.clone(),
            flushes.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lumie_server::agents::FLUSH_INTERVAL).await;
                let k = hub.flush().await.unwrap() as u64;
                if k > 0 {
                    rows.fetch_add(k, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let path = lumie_contract::agent_api::HEARTBEAT_PATH;
    let one = vec![format!("{base}{path}")];
    let two = vec![format!("{base}{path}"), format!("{}{path}", second.0)];
    // Interleaved, so load from elsewhere on the machine weighs on every mode alike. Modes:
    // one replica; two with each agent pinned to one of them (a TCP balancer such as haproxy or
    // kube-proxy keeps an agent's keep-alive connection on one replica until it reconnects);
    // two with every agent's heartbeats alternating between them (the worst case: each
    // replica holds a pending write for every agent in each flush window).
    const MODES: [&str; 3] = [
        "1 replica",
        "2 replicas, each agent on one",
        "2 replicas, each agent alternating",
    ];
    let mut rates = [vec![], vec![], vec![]];
    for round in 0..6 {
        let mode = round % 3;
        let bases = Arc::new(if mode == 0 { one.clone() } else { two.clone() });
        let (http, body, tokens) = (http2.clone(), body2.clone(), tokens2.clone());
        let r = load(64, Duration::from_secs(5), move |i| {
            let agent = i as usize % tokens.len();
            let token = tokens[agent].clone();
            let replica = match mode {
                1 => agent,
                // Request i of an agent goes to replica i / agents: its heartbeats alternate.
                _ => i as usize / tokens.len(),
            } % bases.len();
            let url = bases[replica].clone();
            let (http, body) = (http.clone(), body.clone());
            heartbeat(http, url, token, body)
        })
        .await;
        r.print(&format!(
            "heartbeats, {} (1,000 agents, 64 connections)",
            MODES[mode]
        ));
        rates[mode].push(r.requests as f64 / r.elapsed.as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let r1 = mean(&rates[0]);
    println!(
        "heartbeat ingestion (mean of 2 interleaved runs each): {} {r1:.0}/s",
        MODES[0]
    );
    for mode in 1..3 {
        let r = mean(&rates[mode]);
        println!("  {}: {r:.0}/s, ratio {:.2}", MODES[mode], r / r1);
    }
}

/// Another replica on the database at `url`: its own pool, state and listener, the same agents.
async fn replica(
    url: &str,
    dir: &std::path::Path,
    fixed: &Arc<lumie_server::agent_api::FixedAgents>,
) -> (String, AppState) {
    let db = lumie_server::db::Db::connect(&lumie_server::config::DatabaseConfig::Postgres(
        url.to_string(),
    ))
    .await
    .unwrap();
    let state = AppState::new(
        Config::for_tests(dir.join("second")),
        db,
        Template::default(),
        None,
    )
    .await
    .unwrap();
    state.agent_auth.install(fixed.clone(), fixed.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, lumie_server::router(state.clone())).into_future());
    (base, state)
}

/// One heartbeat POST; whether it was answered with success.
async fn heartbeat(http: reqwest::Client, url: String, token: String, body: Vec<u8>) -> bool {
    matches!(
        http.post(&url)
            .header("Coder-Session-Token", token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await,
        Ok(r) if r.status().is_success()
    )
}
