//! The dashboard in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/dashboard.test.mjs`, `node --test`) against one stack: lumie-server on the
//! harness cluster behind the real webhook and scheduler, signing in through the test OpenID
//! provider (`tests/oidc`, alice admin and bob member) as well as with tokens, with a stand-in
//! agent (heartbeats with resource stats) and stand-in apps on each workspace pod's IP.
//!
//! The script signs in with tokens and through the provider's login form, creates workspaces
//! and watches them change live, opens code-server through the app proxy, stops, starts and
//! deletes, reads a cordoned cluster's scheduling reason and the pod's events, checks who sees
//! what (members, admins, the admin pages), edits the policy (validation, a concurrent edit, the
//! audit log), sends a cross-site form, and saves screenshots (360 px and 1920 px, member and
//! admin) into `target/screenshots/`.
//!
//! What only the cluster can do (cordon the workers, record an event) or only time would (an
//! hour of resource samples) the script asks this process for over a small loopback control
//! server.

#[path = "../../server/tests/common/oidc_provider.rs"]
mod oidc_provider;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::routing::post;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::PostParams;
use lumie_server::config::OidcConfig;
use lumie_tests::workspace_pods::{self, StandInAgent, StandInApps};
use lumie_tests::{Cluster, PodAction, PodContext, admission, control_plane, nodes};

fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

/// The stand-in agent (its heartbeat also carries resource stats, for the graphs), and the
/// stand-in apps listening on the pod's own IP, where the app proxy dials.
struct AgentAndApps {
    agent: StandInAgent,
    apps: Arc<Mutex<BTreeMap<IpAddr, StandInApps>>>,
}

impl PodAction for AgentAndApps {
    fn command(&self, ctx: &PodContext) -> Option<Command> {
        let ip = IpAddr::V4(ctx.pod_ip);
        let apps = self.apps.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match StandInApps::start(ip).await {
                    Ok(a) => {
                        apps.lock().unwrap().insert(ip, a);
                    }
                    Err(e) => eprintln!("stand-in apps on {ip}: {e}"),
                }
            });
        }
        self.agent.command(ctx)
    }
}

/// The stand-in agent's `apps` map, followed by the heartbeat's `stats` (the agent writes the
/// two into one JSON object, so the stats ride along after the map).
const APPS_AND_STATS: &str = r#"{"tilt":"healthy","code-server":"healthy","agents":"initializing"},"stats":{"cpu_cores":0.35,"memory_used_bytes":1610612736,"memory_total_bytes":8589934592,"disk_used_bytes":3221225472,"disk_total_bytes":21474836480,"network_rx_bytes":0,"network_tx_bytes":0,"forwarded_connections_open":0,"forwarded_connections_total":0,"forwarded_bytes":0}"#;

/// The chart's `lumie-coder-server-policies` grant with `rbac.policyWrite`, for the policy
/// editor (the harness's control-plane identity has only the namespace Role otherwise).
async fn grant_policy_write(admin: &kube::Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Patch, PatchParams};
    let pp = PatchParams::apply("lumie-tests").force();
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "lumie-coder-server-policies"},
        "rules": [{"apiGroups": ["coder.lumie-infra.com"], "resources": ["workspacepolicies"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .patch("lumie-coder-server-policies", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "lumie-coder-server-policies"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "lumie-coder-server-policies"},
        "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": "coder"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("lumie-coder-server-policies", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}

#[derive(serde::Deserialize)]
struct CordonQuery {
    on: bool,
}

#[derive(serde::Deserialize)]
struct EventQuery {
    pod: String,
    message: String,
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    workspace_id: String,
}

/// What the control server reaches: the cluster as its admin, and the server's database.
#[derive(Clone)]
struct Control {
    admin: kube::Client,
    db: lumie_server::db::Db,
}

/// `POST /cordon?on=…`: cordons (returning once the scheduler refuses pods) or uncordons
/// every worker.
async fn cordon(State(c): State<Control>, Query(q): Query<CordonQuery>) -> String {
    nodes::cordon_workers(&c.admin, q.on).await.unwrap();
    "ok".into()
}

/// `POST /history?workspace_id=…`: the hour of samples a workspace running that long would
/// have left (the live heartbeats add the newest), so the graphs show a real hour.
async fn history(State(c): State<Control>, Query(q): Query<HistoryQuery>) -> String {
    use lumie_server::db::SAMPLE_BUCKET_MS;
    let now = chrono::Utc::now().timestamp_millis();
    let gib = 1u64 << 30;
    for i in 2..120i64 {
        let at = now - i * SAMPLE_BUCKET_MS;
        let t = (120 - i) as f64;
        let stats = lumie_contract::agent_api::ResourceStats {
            cpu_cores: 0.3 + 0.25 * (t / 9.0).sin() + if i % 37 == 0 { 1.1 } else { 0.0 },
            memory_used_bytes: gib + (t * 4.0e6) as u64,
            memory_total_bytes: 8 * gib,
            disk_used_bytes: 3 * gib - (i as u64) * (gib / 400),
            disk_total_bytes: 20 * gib,
            ..Default::default()
        };
        c.db.record_sample(&q.workspace_id, at / SAMPLE_BUCKET_MS, at, &stats)
            .await
            .unwrap();
    }
    "ok".into()
}

/// `POST /event?pod=…&message=…`: a Warning event about that pod in the workspace namespace,
/// as a kubelet would record one.
async fn event(State(c): State<Control>, Query(q): Query<EventQuery>) -> String {
    let ns = lumie_contract::workspace::NAMESPACE;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ev: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{}.", q.pod), "namespace": ns},
        "involvedObject": {"kind": "Pod", "name": q.pod, "namespace": ns, "apiVersion": "v1"},
        "reason": "BackOff", "message": q.message, "type": "Warning",
        "source": {"component": "kubelet"}, "count": 3,
        "firstTimestamp": now, "lastTimestamp": now,
    }))
    .unwrap();
    Api::<Event>::namespaced(c.admin, ns)
        .create(&PostParams::default(), &ev)
        .await
        .unwrap();
    "ok".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "run scripts/install-deps.sh (npm ci in tests/browser)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "run scripts/install-deps.sh (apt chromium)"
    );
    let cluster = Cluster::shared();
    let admin = cluster.client().await;
    let work = tempfile::tempdir().unwrap();
    // The real webhook: it stamps the server's pods, which the server trusts only then.
    let _webhook = admission::start_registered_webhook(cluster, work.path())
        .await
        .unwrap();
    workspace_pods::install_stable_service(&admin)
        .await
        .unwrap();
    grant_policy_write(&admin).await;
    let apps = Arc::new(Mutex::new(BTreeMap::new()));
    cluster.set_pod_action(Arc::new(AgentAndApps {
        agent: StandInAgent {
            apps_json: APPS_AND_STATS,
            first_after_secs: 2,
        },
        apps: apps.clone(),
    }));
    let mut config = control_plane::server_config(&work.path().join("server")).unwrap();
    let url = config.access_url.clone();
    // Sign-in through the test OpenID provider (alice: platform-admins; bob: developers).
    let provider = oidc_provider::Provider::start(
        &format!("{url}{}", lumie_server::identity::oidc::CALLBACK_PATH),
        &[],
    )
    .await;
    config.oidc = Some(OidcConfig::new(
        &provider.issuer,
        "coder",
        oidc_provider::SECRET,
    ));
    let server = control_plane::start_server(cluster, config)
        .await
        .expect("lumie-server starts");
    let token = server.first_admin_token.clone().unwrap();

    // A member with a token of their own.
    let member = control_plane::member(&url, &token, "mia").await;

    // What the script asks of the cluster.
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_url = format!("http://{}", control.local_addr().unwrap());
    let control_app = axum::Router::new()
        .route("/cordon", post(cordon))
        .route("/event", post(event))
        .route("/history", post(history))
        .with_state(Control {
            admin: admin.clone(),
            db: server.state.db.clone(),
        });
    let control_task = tokio::spawn(async move {
        let _ = axum::serve(control, control_app).await;
    });

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let profile = work.path().join("chromium-profile");
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--test")
            .arg("--test-reporter=spec")
            .arg("dashboard.test.mjs")
            .current_dir(&browser_dir)
            .env("LUMIE_URL", url2)
            .env("LUMIE_ADMIN_TOKEN", token)
            .env("LUMIE_MEMBER_TOKEN", &member.token)
            .env("LUMIE_CONTROL", control_url)
            .env("LUMIE_SCREENSHOTS", &shots)
            .env("LUMIE_PROFILE_DIR", profile)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    cluster.clear_pod_action();
    // Whatever the script got to, the workers are schedulable again for the next test.
    nodes::cordon_workers(&admin, false).await.unwrap();
    control_task.abort();
    assert!(
        out.status.success(),
        "the browser test failed: {}",
        out.status
    );
    drop(server);
    drop(provider);
    drop(apps);
    let _ = url;
}
