//! `lumie-webhook-bench`: throughput and latency of `/validate` and `/mutate` over TLS with
//! keep-alive, against a null handler (a fixed allow) on the same server stack, so the cost of
//! the admission logic shows as a ratio. Run in release:
//! `cargo run --release -p lumie-webhook --bin lumie-webhook-bench`.
//!
//! Closed loop at several concurrencies (each worker one keep-alive connection, next request as
//! soon as the answer is in), then an open loop at a fixed rate where queueing behind a slow
//! answer counts (see [`fixed_rate`] for how the client's own timer delay is kept out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use clap::Parser;
use lumie_webhook::certs::{CertificateAuthority, write_private};
use lumie_webhook::client::WebhookClient;
use lumie_webhook::policy::PolicySet;
use lumie_webhook::review::{Endpoint, MAX_BODY_BYTES, review};
use lumie_webhook::server::{AppState, router};
use lumie_webhook::tls::{CertReloader, serve_tls, server_config};
use serde_json::{Value, json};

/// Benchmark the webhook over TLS.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds measured per run (after warm-up).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 3.0)]
    seconds: f64,
    /// Warm-up seconds per run.
    #[arg(long, env = "BENCH_WARMUP_SECONDS", default_value_t = 0.5)]
    warmup: f64,
    /// Closed-loop concurrencies (connections), comma-separated.
    #[arg(
        long,
        env = "BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,4,16,64"
    )]
    concurrency: Vec<usize>,
    /// Fixed rate (reviews/s) of the open-loop run; 0 skips it.
    #[arg(long, env = "BENCH_RATE", default_value_t = 2000)]
    rate: u32,
    /// Connections for the open-loop run.
    #[arg(long, env = "BENCH_RATE_CONNECTIONS", default_value_t = 8)]
    rate_connections: usize,
    /// Only time `review()` in-process (no TLS, no HTTP), this many reviews per endpoint.
    #[arg(long, env = "BENCH_MICRO", default_value_t = 20_000)]
    micro: u32,
    /// Server worker threads.
    #[arg(long, env = "BENCH_SERVER_THREADS", default_value_t = 2)]
    server_threads: usize,
}

/// A workspace pod as the apiserver sends it to the webhook (defaults filled in).
fn workspace_pod(mutated: bool) -> Value {
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    let container = |name: &str, image: &str, privileged: bool| {
        json!({
            "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "env": [env("CODER_AGENT_URL", "http://coder.coder.svc.cluster.local"),
                    env("HOME", "/home/coder"), env("DOCKER_HOST", "tcp://localhost:2375")],
            "resources": {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}},
            "volumeMounts": [{"name": "home", "mountPath": "/home/coder"},
                             {"name": "default-token-abcde", "readOnly": true,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "securityContext": if privileged { json!({"privileged": true}) } else { json!({"allowPrivilegeEscalation": false}) }
        })
    };
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "coder-alice-main", "namespace": "lumie-dev",
            "labels": {"app.kubernetes.io/name": "dev-workspace", "app.kubernetes.io/managed-by": "lumie-coder",
                       "coder.lumie-infra.com/owner": "alice", "coder.lumie-infra.com/workspace": "main",
                       "coder.lumie-infra.com/workspace-id": "0b6f4b9e-4d55-4f0e-9d53-7c1c5f3b2a10"},
            "annotations": {"coder.lumie-infra.com/template": "default"}
        },
        "spec": {
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "coder-alice-main-home"}},
                        {"name": "default-token-abcde", "secret": {"secretName": "default-token-abcde", "defaultMode": 420}}],
            "containers": [container("dev", "ghcr.io/lumie-infra/dev:1.4.2", false),
                           container("agents", "ghcr.io/lumie-infra/agents:1.4.2", false),
                           container("dind", "docker:27-dind", true)],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default",
            "securityContext": {"fsGroup": 1000}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    });
    if mutated {
        pod["spec"]["serviceAccountName"] = json!("dev-workspace");
        pod["spec"]["serviceAccount"] = json!("dev-workspace");
        pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
                {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}]}]}}});
    }
    pod
}

fn review_body(pod: Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "coder-alice-main", "namespace": "lumie-dev", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:coder:coder", "uid": "3c1f",
                             "groups": ["system:serviceaccounts", "system:serviceaccounts:coder", "system:authenticated"]},
                "object": pod, "oldObject": null, "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        }))
        .expect("static JSON"),
    )
}

const NULL_ALLOW: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","allowed":true}}"#;

/// The null handler: reads the body like the real endpoints, answers a fixed allow.
async fn null_handler(body: Body) -> impl IntoResponse {
    let _ = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(NULL_ALLOW),
    )
}

struct Stats {
    count: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut micros: Vec<u32>, elapsed: Duration) -> Stats {
    micros.sort_unstable();
    let pct = |p: f64| {
        let i = ((micros.len() as f64 * p).ceil() as usize).saturating_sub(1);
        Duration::from_micros(micros.get(i).copied().unwrap_or(0).into())
    };
    Stats {
        count: micros.len(),
        per_sec: micros.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
    }
}

async fn closed_loop(
    client: &WebhookClient,
    path: &'static str,
    body: Bytes,
    concurrency: usize,
    warmup: Duration,
    seconds: Duration,
) -> anyhow::Result<Stats> {
    let start = Instant::now() + warmup;
    let end = start + seconds;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut conn = client.connect().await?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65_536);
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let (status, resp) = conn.post(path, body.clone()).await?;
                anyhow::ensure!(status == 200, "{path}: HTTP {status}");
                anyhow::ensure!(
                    resp.windows(14).any(|w| w == b"\"allowed\":true"),
                    "{path}: not allowed: {}",
                    String::from_utf8_lossy(&resp)
                );
                if t >= start {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, seconds))
}

/// Open loop: `rate` reviews/s spread over `connections`, each request due at a fixed time.
///
/// Latency counts from when the request was due if its connection was still busy with the
/// previous answer then (queueing behind a slow answer is the webhook's), and from when it was
/// actually sent otherwise: tokio's timer fires on millisecond ticks, so a request is sent up to
/// a millisecond after it was due while the webhook sits idle, and that delay is the client's.
/// How late the timer sent requests is returned too, so the split can be checked.
async fn fixed_rate(
    client: &WebhookClient,
    path: &'static str,
    body: Bytes,
    rate: u32,
    connections: usize,
    warmup: Duration,
    seconds: Duration,
) -> anyhow::Result<(Stats, Stats)> {
    let interval = Duration::from_secs_f64(connections as f64 / f64::from(rate));
    let begin = Instant::now();
    let start = begin + warmup;
    let end = start + seconds;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let mut conn = client.connect().await?;
        let body = body.clone();
        let offset = interval.mul_f64(i as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let micros = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
            let (mut lat, mut late) = (Vec::with_capacity(65_536), Vec::with_capacity(65_536));
            let mut due = begin + offset;
            let mut free_at = begin;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let from = if free_at > due { due } else { sent };
                let (status, _) = conn.post(path, body.clone()).await?;
                anyhow::ensure!(status == 200, "{path}: HTTP {status}");
                free_at = Instant::now();
                if due >= start {
                    lat.push(micros(free_at - from));
                    late.push(micros(sent - due));
                }
                due += interval;
            }
            Ok::<_, anyhow::Error>((lat, late))
        }));
    }
    let (mut all, mut all_late) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, late) = t.await??;
        all.extend(lat);
        all_late.extend(late);
    }
    Ok((stats(all, seconds), stats(all_late, seconds)))
}

fn print_row(label: &str, s: &Stats) {
    println!(
        "{label:<28} {:>10.0} {:>9.0?} {:>9.0?} {:>9.0?} {:>9}",
        s.per_sec, s.p50, s.p99, s.max, s.count
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);

    // The admission logic alone, single thread: what a review costs before TLS and HTTP.
    if args.micro > 0 {
        let policies = PolicySet::builtin();
        for (label, endpoint, body) in [
            (
                "validate",
                Endpoint::Validate,
                review_body(workspace_pod(true)),
            ),
            (
                "mutate",
                Endpoint::Mutate,
                review_body(workspace_pod(false)),
            ),
        ] {
            let started = Instant::now();
            for _ in 0..args.micro {
                let r = review(&policies, endpoint, &body)?;
                std::hint::black_box(r);
            }
            let per = started.elapsed() / args.micro;
            println!(
                "review() alone, {label:<8}: {per:?} per review ({} reviews)",
                args.micro
            );
        }
    }

    // Server on a runtime of its own, built from the same parts `serve` uses.
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate("bench CA", 1)?;
    let pair = ca.issue_server(&["localhost".into()], &["127.0.0.1".parse()?], 1)?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &pair.cert_pem)?;
    write_private(&key, &pair.key_pem)?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("server")
        .enable_all()
        .build()?;
    let addr: SocketAddr = server_rt.block_on(async {
        let certs = CertReloader::load(&cert, &key)?;
        let tls = server_config(Arc::clone(&certs))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app: Router =
            router(AppState::new(PolicySet::builtin(), true)).route("/null", post(null_handler));
        tokio::spawn(serve_tls(
            listener,
            tls,
            app,
            std::future::pending(),
            Duration::ZERO,
        ));
        Ok::<_, anyhow::Error>(addr)
    })?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    client_rt.block_on(async {
        let client = WebhookClient::new(addr, "127.0.0.1", ca.cert_pem())?;
        let validate = review_body(workspace_pod(true));
        let mutate = review_body(workspace_pod(false));
        println!(
            "lumie-webhook bench: TLS + HTTP/1.1 keep-alive on {addr}, review bodies {} B (validate) / {} B (mutate), {} s per run, {} server threads",
            validate.len(),
            mutate.len(),
            args.seconds,
            args.server_threads
        );
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "run", "reviews/s", "p50", "p99", "max", "n"
        );
        let mut ratios = Vec::new();
        for &c in &args.concurrency {
            let null = closed_loop(&client, "/null", validate.clone(), c, warmup, seconds)
                .await
                .context("null")?;
            let v = closed_loop(&client, "/validate", validate.clone(), c, warmup, seconds)
                .await
                .context("validate")?;
            let m = closed_loop(&client, "/mutate", mutate.clone(), c, warmup, seconds)
                .await
                .context("mutate")?;
            print_row(&format!("null      c={c}"), &null);
            print_row(&format!("validate  c={c}"), &v);
            print_row(&format!("mutate    c={c}"), &m);
            ratios.push((c, v.per_sec / null.per_sec, m.per_sec / null.per_sec));
        }
        println!();
        for (c, v, m) in &ratios {
            println!("c={c:<3} throughput vs null: validate {v:.2}x, mutate {m:.2}x");
        }
        if args.rate > 0 {
            println!();
            println!(
                "fixed rate {} reviews/s over {} connections (latency from when a request was due, or from when it was sent if the client timer was late and the connection idle):",
                args.rate, args.rate_connections
            );
            for (label, path, body) in [
                ("null", "/null", &validate),
                ("validate", "/validate", &validate),
                ("mutate", "/mutate", &mutate),
            ] {
                let (s, late) = fixed_rate(
                    &client,
                    path,
                    body.clone(),
                    args.rate,
                    args.rate_connections,
                    warmup,
                    seconds,
                )
                .await
                .with_context(|| label.to_string())?;
                print_row(&format!("{label:<9} @{}/s", args.rate), &s);
                println!(
                    "  (client timer sent requests late by p50 {:?}, p99 {:?}: not counted unless the connection was busy)",
                    late.p50, late.p99
                );
                if path != "/null" {
                    let verdict = if s.p99 <= Duration::from_millis(1) {
                        "meets"
                    } else {
                        "misses"
                    };
                    println!("  {label}: p99 {:?} {verdict} the 1 ms target", s.p99);
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(server_rt);
    Ok(())
}
