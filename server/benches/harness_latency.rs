//! Workspace create → pod bound latency on the harness: the real kube-apiserver with the real
//! lumie-webhook registered, the real kube-scheduler, lumie-server as the control plane's
//! ServiceAccount on SQLite. 50 workspaces, one after the other; the clock runs from the
//! `POST /api/v2/users/{user}/workspaces` to the moment a pod watch sees `spec.nodeName`.
//!
//! `cargo bench -p lumie-server --bench harness_latency` prints p50/p99.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use lumie_contract::{labels, workspace};
use lumie_tests::{Cluster, admission, control_plane};
use serde_json::json;

const WORKSPACES: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::shared();
    let admin = cluster.client().await;

    // The real webhook, in-process, registered for lumie-dev.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let pair = cluster
        .ca()
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1)
        .unwrap();
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    lumie_webhook::certs::write_private(&key, &pair.key_pem).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let webhook =
        lumie_webhook::server::start(lumie_webhook::server::ServeConfig::new(any, any, cert, key))
            .await
            .unwrap();
    admission::register_webhooks(
        &admin,
        &format!("https://{}", webhook.addr),
        cluster.ca().cert_pem(),
        &[workspace::NAMESPACE],
    )
    .await
    .unwrap();
    // The overlay's Service, so the server starts without drift warnings.
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": workspace::STABLE_SERVICE, "namespace": workspace::NAMESPACE},
        "spec": {"selector": {labels::APP_NAME: labels::APP_NAME_WORKSPACE}, "ports": [
            {"name": "tilt", "port": 10350, "targetPort": 10350, "protocol": "TCP"},
            {"name": "code-server", "port": 13337, "targetPort": 13337, "protocol": "TCP"},
            {"name": "agents", "port": 3000, "targetPort": 3000, "protocol": "TCP"}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), workspace::NAMESPACE)
        .patch(
            workspace::STABLE_SERVICE,
            &kube::api::PatchParams::apply("overlay").force(),
            &kube::api::Patch::Apply(&svc),
        )
        .await
        .unwrap();

    // The server.
    let config = control_plane::server_config(&dir.path().join("data")).unwrap();
    let running = control_plane::start_server(cluster, config).await.unwrap();
    let token = running.first_admin_token.clone().unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v2/users"))
        .header("Coder-Session-Token", &token)
        .json(&json!({"username": "bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    // When each pod was first seen bound.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let b = bound.clone();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), workspace::NAMESPACE);
    tokio::spawn(async move {
        let mut s = std::pin::pin!(
            watcher(
                pods,
                watcher::Config::default().labels(&labels::managed_selector())
            )
            .applied_objects()
        );
        while let Some(Ok(p)) = s.next().await {
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                b.lock()
                    .unwrap()
                    .entry(p.name_any())
                    .or_insert_with(Instant::now);
            }
        }
    });

    let mut latencies = vec![];
    let total = Instant::now();
    for i in 0..WORKSPACES {
        let t0 = Instant::now();
        let r = http
            .post(format!("{base}/api/v2/users/bench/workspaces"))
            .header("Coder-Session-Token", &token)
            .json(&json!({"name": format!("w{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
        let pod = format!("coder-bench-w{i}");
        let at = loop {
            if let Some(at) = bound.lock().unwrap().get(&pod) {
                break *at;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{pod} not bound within 60s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(at - t0);
    }
    let elapsed = total.elapsed();
    latencies.sort();
    println!(
        "create -> pod bound over {WORKSPACES} workspaces (webhook + scheduler, SQLite): p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms ({:.1}s total)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        elapsed.as_secs_f64()
    );
    running.abort();
}
