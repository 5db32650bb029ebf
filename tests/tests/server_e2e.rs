//! lumie-server end to end on the harness: the real kube-apiserver (1.20) with the real
//! lumie-webhook registered (in-process, over TLS), the real kube-scheduler, the node simulator
//! as kubelet and PV binder, and lumie-server itself, running as the control plane's
//! ServiceAccount on SQLite, reached over HTTP.
//!
//! Each test has its own namespace (guarded by the webhook, with the control plane's Role) and
//! its own server, so tests run in parallel without seeing each other's objects — except the
//! scheduler test, which cordons every worker and so takes the nodes lock for writing.
//!
//! Workspace pods run a stand-in agent (a shell loop posting `ready` heartbeats with the pod's
//! projected token, which the node simulator requested and wrote as the kubelet does), so
//! `running` means what it does in production: pod Running and agent ready.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use lumie_contract::{labels, workspace};
use lumie_server::api::{WorkspaceJson, WorkspacesJson};
use lumie_server::config::{Config, DatabaseConfig};
use lumie_server::model::{BuildStatus, WorkspaceStatus};
use lumie_tests::admission::Policies;
use lumie_tests::control_plane::Echo;
use lumie_tests::stack::{self, Postgres, WorkspaceClient};
use lumie_tests::workspace_pods::{StableService, StandInAgent};
use lumie_tests::{Cluster, Identity, admission, bootstrap, control_plane, nodes};
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// Namespaces this test binary uses; the webhook guards all of them.
const NAMESPACES: &[&str] = &[
    workspace::NAMESPACE,
    "lumie-e2e-conc",
    "lumie-e2e-restart",
    "lumie-e2e-nosa",
    "lumie-e2e-drift",
    "lumie-e2e-recon",
    "lumie-e2e-sched",
];

/// How often a state the reconciler or scheduler reaches is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Tests that need pods scheduled take it for reading; cordoning every worker takes it for writing.
static NODES: RwLock<()> = RwLock::const_new(());

// ----- once per process: the webhook and the stand-in agent -----

struct Shared {
    _webhook: SocketAddr,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let cluster = Cluster::shared();
        cluster.set_pod_action(Arc::new(StandInAgent::HEALTHY));
        // The contract default, guarding every namespace of this binary.
        let webhook = control_plane::start_shared(move || async move {
            let dir = tempfile::tempdir().unwrap().keep();
            let webhook = admission::start_webhook(cluster, &dir, Policies::File(NAMESPACES))
                .await
                .unwrap();
            (webhook.addr, webhook)
        });
        Shared { _webhook: webhook }
    })
}

// ----- per test: a namespace like the lumie-dev overlay makes it, and a server -----

/// How the `dev-workspace` Service of a test namespace looks.
#[derive(Clone, Copy, PartialEq)]
enum ServiceShape {
    Contract,
    TiltPortDrifted,
}

async fn prepare_namespace(ns: &str, with_service_account: bool, service: ServiceShape) {
    let admin = Cluster::shared().client().await;
    if ns != workspace::NAMESPACE {
        bootstrap::create_namespace(&admin, ns).await.unwrap();
        if with_service_account {
            bootstrap::create_service_account(&admin, ns, "dev-workspace")
                .await
                .unwrap();
        }
        // The control plane's Role, as in lumie-dev (copied from the harness bootstrap).
        let pp = PatchParams::apply("server-e2e").force();
        let roles: Api<k8s_openapi::api::rbac::v1::Role> =
            Api::namespaced(admin.clone(), workspace::NAMESPACE);
        let mut role = roles.get(bootstrap::CONTROL_PLANE_ROLE).await.unwrap();
        role.metadata = kube::api::ObjectMeta {
            name: Some(bootstrap::CONTROL_PLANE_ROLE.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        };
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), ns)
            .patch(bootstrap::CONTROL_PLANE_ROLE, &pp, &Patch::Apply(&role))
            .await
            .unwrap();
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": bootstrap::CONTROL_PLANE_ROLE, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": bootstrap::CONTROL_PLANE_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": workspace::CONTROL_PLANE_NAMESPACE}]
        }))
        .unwrap();
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), ns)
            .patch(bootstrap::CONTROL_PLANE_ROLE, &pp, &Patch::Apply(&binding))
            .await
            .unwrap();
    }
    let drifted: &[&str] = match service {
        ServiceShape::Contract => &[],
        ServiceShape::TiltPortDrifted => &["tilt"],
    };
    StableService {
        namespace: ns,
        drifted,
        manager: "lumie-dev-overlay",
    }
    .install(&admin)
    .await
    .unwrap();
}

/// A lumie-server on a runtime of its own: killing it drops every task at once, mid-request.
struct Server {
    addr: SocketAddr,
    token: String,
    http: reqwest::Client,
    kill: Option<std::sync::mpsc::Sender<()>>,
    done: Option<std::thread::JoinHandle<()>>,
    /// The real `lumie-server` process, when it is one ([`Server::spawn_binary`]).
    process: Option<std::process::Child>,
}

fn server_config(data_dir: PathBuf, ns: &str) -> Config {
    let mut c = Config::for_tests(data_dir.clone());
    c.database = DatabaseConfig::Sqlite(data_dir.join("lumie.db"));
    c.namespace = ns.into();
    c
}

/// Every object with the managed-by label in `ns`: (pods, PVCs, Secrets).
async fn managed_objects(
    client: &Client,
    ns: &str,
) -> (Vec<Pod>, Vec<PersistentVolumeClaim>, Vec<Secret>) {
    labelled(client, ns, &labels::managed_selector()).await
}

/// The workspace `ws_id`'s objects in `ns`: (pods, PVCs, Secrets).
async fn objects(
    client: &Client,
    ns: &str,
    ws_id: &str,
) -> (Vec<Pod>, Vec<PersistentVolumeClaim>, Vec<Secret>) {
    labelled(client, ns, &format!("{}={ws_id}", labels::WORKSPACE_ID)).await
}

async fn labelled(
    client: &Client,
    ns: &str,
    selector: &str,
) -> (Vec<Pod>, Vec<PersistentVolumeClaim>, Vec<Secret>) {
    let lp = ListParams::default().labels(selector);
    (
        Api::<Pod>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
        Api::<Secret>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
    )
}

impl Server {
    /// Starts a server; `token` is the admin token to use (from a previous start of the same
    /// database), or `None` on a first start (the printed first-admin token is used).
    fn start(mut config: Config, token: Option<String>) -> Server {
        let addr = control_plane::free_loopback_addr().unwrap();
        control_plane::listen_on(&mut config, addr);
        let (tx, rx) = std::sync::mpsc::channel();
        let (kill, kill_rx) = std::sync::mpsc::channel::<()>();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let started =
                rt.block_on(
                    async move { control_plane::start_server(Cluster::shared(), config).await },
                );
            match started {
                Ok(running) => {
                    tx.send(Ok(running.first_admin_token.clone())).unwrap();
                    let _ = kill_rx.recv();
                    // Like SIGKILL: every task dropped where it stands, nothing flushed.
                    rt.shutdown_background();
                    drop(running);
                }
                Err(e) => tx.send(Err(e.to_string())).unwrap(),
            }
        });
        let first = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("server start: {e}"));
        let token = token.or(first).expect("an admin token");
        Server {
            addr,
            token,
            http: reqwest::Client::new(),
            kill: Some(kill),
            done: Some(done),
            process: None,
        }
    }

    /// Runs the real `lumie-server` binary listening on `addr` with `env` (its settings) on
    /// the harness as the control plane, and waits (bounded) until it listens. Its output goes
    /// to the test's stderr.
    fn spawn_binary(addr: SocketAddr, env: &[(&str, String)], token: String) -> Server {
        let child = control_plane::spawn_until_listening(
            control_plane::server_command(Cluster::shared(), addr, true)
                .unwrap()
                .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
            Stdio::inherit(),
            Echo::all(format!("lumie-server[{addr}]")),
        )
        .unwrap();
        Server {
            addr,
            token,
            http: reqwest::Client::new(),
            kill: None,
            done: None,
            process: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            // SIGKILL: no shutdown hook runs, nothing is flushed.
            let _ = p.kill();
            let _ = p.wait();
        }
        drop(self.kill.take());
        if let Some(d) = self.done.take() {
            d.join().unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let api = WorkspaceClient {
            url: format!("http://{}", self.addr),
            token: self.token.clone(),
            http: self.http.clone(),
        };
        api.call(method, path, body).await
    }

    async fn create(&self, owner: &str, name: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/api/v2/users/{owner}/workspaces"),
            Some(json!({ "name": name })),
        )
        .await
    }

    async fn user(&self, name: &str) {
        let (s, v) = self
            .call("POST", "/api/v2/users", Some(json!({ "username": name })))
            .await;
        assert_eq!(s, 201, "{v}");
    }

    async fn workspace(&self, id: &str) -> WorkspaceJson {
        let (s, v) = self
            .call("GET", &format!("/api/v2/workspaces/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn build(&self, id: &str, transition: &str) {
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/v2/workspaces/{id}/builds"),
                Some(json!({ "transition": transition })),
            )
            .await;
        assert_eq!(s, 201, "{transition}: {v}");
    }

    /// Waits until the workspace has `status` (and its latest build is finished), returning it.
    async fn wait_status(
        &self,
        id: &str,
        status: WorkspaceStatus,
        within: Duration,
    ) -> WorkspaceJson {
        let deadline = Instant::now() + within;
        loop {
            let ws = self.workspace(id).await;
            let settled = ws
                .latest_build
                .as_ref()
                .is_none_or(|b| !b.status.is_active());
            if ws.status == status && settled {
                return ws;
            }
            assert!(
                Instant::now() < deadline,
                "workspace {id} did not reach {status} within {within:?}; now {} ({}), build {:?}",
                ws.status,
                ws.status_reason,
                ws.latest_build
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn live(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stop_start_delete_through_the_webhook_and_scheduler() {
    shared();
    let _nodes = NODES.read().await;
    let ns = workspace::NAMESPACE;
    prepare_namespace(ns, true, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_config(dir.path().into(), ns), None);
    let admin = Cluster::shared().client().await;
    server.user("alice").await;

    let (s, v) = server.create("alice", "dev").await;
    assert_eq!(s, 201, "{v}");
    let ws: WorkspaceJson = serde_json::from_value(v).unwrap();
    let ws = server
        .wait_status(&ws.id, WorkspaceStatus::Running, Duration::from_secs(60))
        .await;
    assert_eq!(ws.status_reason, "");
    assert_eq!(ws.agent.as_ref().unwrap().lifecycle_state, "ready");

    let (pods, pvcs, secrets) = objects(&admin, ns, &ws.id).await;
    assert_eq!(
        (pods.len(), pvcs.len(), secrets.len()),
        (1, 1, 0),
        "no agent Secret: the agent uses its pod's projected token"
    );
    let pod = &pods[0];
    assert_eq!(pod.name_any(), "coder-alice-dev");
    assert_eq!(
        pod.annotations()
            .get(labels::CREATED_BY)
            .map(String::as_str),
        Some(Identity::ControlPlane.username()),
        "the webhook stamped the control plane as its creator"
    );
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    assert!(
        node.starts_with("worker-"),
        "bound by the scheduler to a worker, got {node}"
    );
    assert_eq!(
        pod.metadata
            .managed_fields
            .as_ref()
            .unwrap()
            .iter()
            .filter(|f| f.manager.as_deref() == Some("lumie-coder"))
            .count(),
        1,
        "applied with the lumie-coder field manager"
    );
    let pvc = &pvcs[0];
    assert_eq!(pvc.name_any(), "coder-alice-dev-home");
    let pvc_uid = pvc.uid().unwrap();
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "30Gi"
    );
    let token_volume = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref()?[0].service_account_token.clone())
        .unwrap();
    assert_eq!(
        token_volume.audience.as_deref(),
        Some(workspace::AGENT_TOKEN_AUDIENCE)
    );

    // The webhook is live in this namespace: the control plane cannot create a non-compliant pod.
    let cp = Cluster::shared().client_as(Identity::ControlPlane).await;
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-a-good-pod", "labels": {labels::APP_NAME: labels::APP_NAME_WORKSPACE}},
        "spec": {"serviceAccountName": "dev-workspace", "containers": [{"name": "dev", "image": "busybox", "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let err = Api::<Pod>::namespaced(cp.clone(), ns)
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("privileged"), "{err}");

    // Stop: pod gone, PVC kept.
    server.build(&ws.id, "stop").await;
    let stopped = server
        .wait_status(&ws.id, WorkspaceStatus::Stopped, Duration::from_secs(60))
        .await;
    assert!(stopped.status_reason.contains("home volume is kept"));
    let (pods, pvcs, secrets) = objects(&admin, ns, &ws.id).await;
    assert!(pods.is_empty());
    assert_eq!((pvcs.len(), secrets.len()), (1, 0));
    assert_eq!(pvcs[0].uid().unwrap(), pvc_uid);

    // The app proxy says "stopped", not 502 (to the owner: path apps are hers only).
    let (s, key) = server.call("POST", "/api/v2/users/alice/keys", None).await;
    assert_eq!(s, 201, "{key}");
    let page = server
        .http
        .get(server.url("/@alice/dev/apps/tilt/"))
        .header("Coder-Session-Token", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 503);
    assert!(page.text().await.unwrap().contains("is stopped"));

    // Start again: same PVC.
    server.build(&ws.id, "start").await;
    server
        .wait_status(&ws.id, WorkspaceStatus::Running, Duration::from_secs(60))
        .await;
    let (pods, pvcs, _) = objects(&admin, ns, &ws.id).await;
    assert_eq!(live(&pods).len(), 1);
    assert_eq!(pvcs[0].uid().unwrap(), pvc_uid, "the home volume is reused");
    let claim = pods[0]
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .unwrap();
    assert_eq!(claim.claim_name, "coder-alice-dev-home");

    // An agent Secret as versions before projected tokens made it: deleted with the workspace.
    let names = lumie_contract::naming::WorkspaceNames::new("alice", "dev").unwrap();
    let old_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": names.agent_secret, "labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_LUMIE, labels::WORKSPACE_ID: ws.id,
            labels::OWNER: "alice", labels::WORKSPACE: "dev"}},
        "data": {"token": "b2xkLXRva2Vu"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(cp.clone(), ns)
        .create(&PostParams::default(), &old_secret)
        .await
        .unwrap();

    // Delete: everything gone, the workspace too.
    server.build(&ws.id, "delete").await;
    server
        .wait_status(&ws.id, WorkspaceStatus::Deleted, Duration::from_secs(90))
        .await;
    let (pods, pvcs, secrets) = objects(&admin, ns, &ws.id).await;
    assert!(
        pods.is_empty() && pvcs.is_empty() && secrets.is_empty(),
        "{} {} {}",
        pods.len(),
        pvcs.len(),
        secrets.len()
    );
    let (_, list) = server.call("GET", "/api/v2/workspaces", None).await;
    let list: WorkspacesJson = serde_json::from_value(list).unwrap();
    assert_eq!(list.count, 0);
    let (s, _) = server.create("alice", "dev").await;
    assert_eq!(s, 201, "the name is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_cordoned_gives_pending_with_the_schedulers_reason() {
    shared();
    let _nodes = NODES.write().await;
    let ns = "lumie-e2e-sched";
    prepare_namespace(ns, true, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_config(dir.path().into(), ns), None);
    let admin = Cluster::shared().client().await;
    server.user("bob").await;
    nodes::cordon_workers(&admin, true).await.unwrap();
    let (s, v) = server.create("bob", "dev").await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let ws = stack::eventually(
        "pending with the scheduler's message",
        Duration::from_secs(60),
        POLL,
        || async {
            let ws = server.workspace(&id).await;
            (ws.status == WorkspaceStatus::Pending
                && ws.status_reason.contains("nodes are available"))
            .then_some(ws)
        },
    )
    .await;
    nodes::cordon_workers(&admin, false).await.unwrap();
    // Verbatim: the pod's PodScheduled condition carries the same text.
    let pod = Api::<Pod>::namespaced(admin.clone(), ns)
        .get("coder-bob-dev")
        .await
        .unwrap();
    let cond = pod
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(ws.status_reason, cond.message.unwrap());
    assert!(ws.status_reason.starts_with("0/"), "{}", ws.status_reason);
    // Uncordoned: the scheduler retries and the workspace runs.
    server
        .wait_status(&id, WorkspaceStatus::Running, Duration::from_secs(90))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dev_workspace_service_account_is_explained() {
    shared();
    let ns = "lumie-e2e-nosa";
    prepare_namespace(ns, false, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_config(dir.path().into(), ns), None);
    server.user("carol").await;
    let (s, v) = server.create("carol", "dev").await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    let ws = server
        .wait_status(id, WorkspaceStatus::Failed, Duration::from_secs(30))
        .await;
    assert!(
        ws.status_reason
            .contains("ServiceAccount lumie-e2e-nosa/dev-workspace is missing"),
        "{}",
        ws.status_reason
    );
    assert_eq!(ws.latest_build.unwrap().status, BuildStatus::Failed);
    let admin = Cluster::shared().client().await;
    let (pods, _, _) = objects(&admin, ns, id).await;
    assert!(pods.is_empty(), "no pod without its ServiceAccount");
    // Readiness says so too, and the drift metric.
    let ready: Value = server
        .http
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["warnings"]
            .to_string()
            .contains("dev-workspace is missing"),
        "{ready}"
    );
    let m = server.metrics().await;
    assert!(
        m.contains(
            r#"lumie_contract_drift{object="serviceaccount/dev-workspace",field="exists"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_port_drift_is_a_readiness_warning_and_a_metric() {
    shared();
    let ns = "lumie-e2e-drift";
    prepare_namespace(ns, true, ServiceShape::TiltPortDrifted).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_config(dir.path().into(), ns), None);
    let resp = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "drift warns; it does not take the server out"
    );
    let ready: Value = resp.json().await.unwrap();
    assert!(
        ready["warnings"]
            .to_string()
            .contains("port tilt is 10351, the contract says 10350"),
        "{ready}"
    );
    let m = server.metrics().await;
    assert!(
        m.contains(r#"lumie_contract_drift{object="service/dev-workspace",field="port/tilt"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"lumie_contract_drift{object="service/dev-workspace",field="port/agents"} 0"#),
        "{m}"
    );
    // The server never touched the Service: its only field manager is the overlay's.
    let admin = Cluster::shared().client().await;
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin, ns)
        .get(workspace::STABLE_SERVICE)
        .await
        .unwrap();
    let managers: Vec<_> = svc
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, ["lumie-dev-overlay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_creates_with_one_duplicate() {
    shared();
    let _nodes = NODES.read().await;
    let ns = "lumie-e2e-conc";
    prepare_namespace(ns, true, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(server_config(dir.path().into(), ns), None));
    server.user("dana").await;
    let mut tasks = vec![];
    for i in 0..20 {
        let server = server.clone();
        let name = if i == 19 {
            "w0".to_string()
        } else {
            format!("w{i}")
        };
        tasks.push(tokio::spawn(
            async move { server.create("dana", &name).await },
        ));
    }
    let mut created = vec![];
    let mut conflicts = vec![];
    for t in tasks {
        match t.await.unwrap() {
            (201, v) => created.push(v["id"].as_str().unwrap().to_string()),
            (409, v) => conflicts.push(v["message"].as_str().unwrap().to_string()),
            (s, v) => panic!("unexpected {s}: {v}"),
        }
    }
    assert_eq!(created.len(), 19);
    assert_eq!(conflicts, ["workspace dana/w0 already exists"]);
    let admin = Cluster::shared().client().await;
    for id in &created {
        server
            .wait_status(id, WorkspaceStatus::Running, Duration::from_secs(120))
            .await;
    }
    for id in &created {
        let (pods, pvcs, secrets) = objects(&admin, ns, id).await;
        assert_eq!(
            (pods.len(), pvcs.len(), secrets.len()),
            (1, 1, 0),
            "workspace {id}"
        );
    }
    let lp = ListParams::default().labels(&labels::managed_selector());
    assert_eq!(
        Api::<Pod>::namespaced(admin.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        19
    );
}

/// The real `lumie-server` process on PostgreSQL, SIGKILLed with five builds in flight, then
/// started again: every build finishes, and every object with the managed-by label belongs to
/// exactly one workspace, one Pod, PVC and Secret each (no orphan, no duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_build_then_restarted_finishes_cleanly() {
    shared();
    let _nodes = NODES.read().await;
    let ns = "lumie-e2e-restart";
    prepare_namespace(ns, true, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start().unwrap().url;
    let database = DatabaseConfig::Postgres(pg.clone());
    // The admin exists before the first start (the binary shows its own first admin's token
    // only on a terminal).
    let db = lumie_server::db::Db::connect(&database).await.unwrap();
    let (_, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    db.close().await;
    let env = [
        ("CODER_PG_CONNECTION_URL", pg.clone()),
        ("LUMIE_DATA_DIR", dir.path().display().to_string()),
        ("LUMIE_WORKSPACE_NAMESPACE", ns.to_string()),
    ];
    // One address for both starts: the pods the first one made call back to it.
    let addr = control_plane::free_loopback_addr().unwrap();
    let mut first = Server::spawn_binary(addr, &env, token.clone());
    first.user("erin").await;
    // Five workspaces at once, SIGKILLed a few milliseconds in: builds are pending or half done.
    let mut ids = vec![];
    let names: Vec<String> = (0..5).map(|i| format!("w{i}")).collect();
    let creates: Vec<_> = names.iter().map(|n| first.create("erin", n)).collect();
    for (s, v) in futures::future::join_all(creates).await {
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    first.kill();

    let db = lumie_server::db::Db::connect(&database).await.unwrap();
    let in_flight = db.active_builds().await.unwrap().len();
    eprintln!("builds in flight at the kill: {in_flight} of {}", ids.len());
    // A build left `running` before it applied anything, as a crash right after it started leaves it.
    let erin = db.user_by_name("erin").await.unwrap().unwrap();
    let half = db
        .create_workspace(&erin, "half", "coder-erin-half", None)
        .await
        .unwrap();
    db.start_build(&half.build.id).await.unwrap();
    ids.push(half.workspace.id.clone());

    let second = Server::spawn_binary(addr, &env, token);
    let admin = Cluster::shared().client().await;
    for id in &ids {
        let ws = server_wait_running_or_report(&second, id).await;
        let b = ws.latest_build.unwrap();
        assert_eq!(
            (b.build_number, b.status),
            (1, BuildStatus::Succeeded),
            "the interrupted build finished"
        );
    }
    // Everything lumie-coder manages in the namespace, not only what names a known workspace.
    let (pods, pvcs, secrets) = managed_objects(&admin, ns).await;
    let want: BTreeMap<Option<String>, usize> =
        ids.iter().map(|id| (Some(id.clone()), 1)).collect();
    assert_eq!(
        stack::count_by_workspace(&pods),
        want,
        "one pod per workspace, nothing else"
    );
    assert_eq!(
        stack::count_by_workspace(&pvcs),
        want,
        "one home PVC per workspace, nothing else"
    );
    assert!(
        secrets.is_empty(),
        "no Secret at all (agents use their pod's token): {:?}",
        stack::count_by_workspace(&secrets)
    );
    assert!(
        db.active_builds().await.unwrap().is_empty(),
        "no build stuck in running"
    );
    // The half-done workspace's agent reported in with its pod's token (it is running, and
    // its agent row shows the contact).
    stack::eventually(
        "the half-done workspace's agent contact written",
        Duration::from_secs(10),
        POLL,
        || async {
            db.agent_for_workspace(&half.workspace.id)
                .await
                .unwrap()
                .and_then(|a| a.last_contact_at)
        },
    )
    .await;
    db.close().await;
}

async fn server_wait_running_or_report(server: &Server, id: &str) -> WorkspaceJson {
    server
        .wait_status(id, WorkspaceStatus::Running, Duration::from_secs(120))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_is_restored_and_orphans_removed_after_grace() {
    shared();
    let _nodes = NODES.read().await;
    let ns = "lumie-e2e-recon";
    prepare_namespace(ns, true, ServiceShape::Contract).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = server_config(dir.path().into(), ns);
    config.orphan_grace = Duration::from_secs(5);
    let server = Server::start(config, None);
    let admin = Cluster::shared().client().await;
    let pods = Api::<Pod>::namespaced(admin.clone(), ns);
    server.user("fay").await;

    // A pod deleted behind the server's back is recreated.
    let (_, v) = server.create("fay", "dev").await;
    let id = v["id"].as_str().unwrap().to_string();
    server
        .wait_status(&id, WorkspaceStatus::Running, Duration::from_secs(60))
        .await;
    let old = pods.get("coder-fay-dev").await.unwrap().uid().unwrap();
    pods.delete("coder-fay-dev", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    stack::eventually(
        "the pod recreated",
        Duration::from_secs(60),
        POLL,
        || async {
            pods.get_opt("coder-fay-dev")
                .await
                .unwrap()
                .filter(|p| p.uid().unwrap() != old && p.metadata.deletion_timestamp.is_none())
        },
    )
    .await;
    server
        .wait_status(&id, WorkspaceStatus::Running, Duration::from_secs(60))
        .await;
    let m = server.metrics().await;
    let recreated: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("lumie_pods_recreated_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(recreated >= 1, "{m}");

    // A pod that shows up for a stopped workspace is removed.
    server.build(&id, "stop").await;
    server
        .wait_status(&id, WorkspaceStatus::Stopped, Duration::from_secs(60))
        .await;
    let names = lumie_contract::naming::WorkspaceNames::new("fay", "dev").unwrap();
    let wref = lumie_server::template::WorkspaceRef {
        id: &id,
        names: &names,
    };
    let pod = lumie_server::template::Template::default().pod(&wref, ns, &server.url(""));
    let cp = Cluster::shared().client_as(Identity::ControlPlane).await;
    Api::<Pod>::namespaced(cp.clone(), ns)
        .patch(
            &names.pod,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&pod),
        )
        .await
        .unwrap();
    stack::eventually(
        "the stray pod removed",
        Duration::from_secs(60),
        POLL,
        || async {
            pods.get_opt(&names.pod)
                .await
                .unwrap()
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    server
        .wait_status(&id, WorkspaceStatus::Stopped, Duration::from_secs(60))
        .await;

    // An object with workspace labels but no workspace: reported, kept within the grace
    // period, then removed.
    let orphan_id = "00000000-0000-4000-8000-000000000000";
    let orphan: Secret = serde_json::from_value(json!({
        "metadata": {"name": "coder-nobody-orphan-agent", "labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_LUMIE, labels::WORKSPACE_ID: orphan_id,
            labels::OWNER: "nobody", labels::WORKSPACE: "orphan"}},
        "data": {"token": "eA=="}
    }))
    .unwrap();
    let secrets = Api::<Secret>::namespaced(cp, ns);
    secrets
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let created = Instant::now();
    stack::eventually(
        "the orphan reported",
        Duration::from_secs(30),
        POLL,
        || async {
            server
                .metrics()
                .await
                .contains("lumie_orphaned_objects 1")
                .then_some(())
        },
    )
    .await;
    stack::eventually(
        "the orphan removed",
        Duration::from_secs(40),
        POLL,
        || async {
            secrets
                .get_opt("coder-nobody-orphan-agent")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        created.elapsed() >= Duration::from_secs(5),
        "not before the grace period"
    );
    // The workspace's own objects were never taken for orphans.
    let (_, pvcs, secrets) = objects(&admin, ns, &id).await;
    assert_eq!((pvcs.len(), secrets.len()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_namespace_it_may_not_use() {
    let admin = Cluster::shared().client().await;
    let ns = "lumie-e2e-norbac";
    bootstrap::create_namespace(&admin, ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = Cluster::shared().client_as(Identity::ControlPlane).await;
    let err = match lumie_server::serve::start(server_config(dir.path().into(), ns), cp).await {
        Ok(_) => panic!("started without RBAC in {ns}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("forbids listing pods in namespace lumie-e2e-norbac")
            && err.contains("Role/RoleBinding of the coder ServiceAccount"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    // With the Role, but without the name-scoped Service read: the review names what is missing.
    let pp = PatchParams::apply("server-e2e").force();
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "partial", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), ns)
        .patch("partial", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "partial", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "partial"},
        "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": workspace::CONTROL_PLANE_NAMESPACE}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin, ns)
        .patch("partial", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
    let cp = Cluster::shared().client_as(Identity::ControlPlane).await;
    let err = stack::eventually("RBAC to take effect", Duration::from_secs(20), POLL, || {
        let (cp, dir) = (cp.clone(), dir.path().to_path_buf());
        async move {
            match lumie_server::serve::start(server_config(dir, ns), cp).await {
                Ok(_) => panic!("started with a partial Role"),
                Err(e) => Some(e.to_string()).filter(|e| e.contains("may not")),
            }
        }
    })
    .await;
    assert!(
        err.contains("create persistentvolumeclaims")
            && err.contains("get services")
            && !err.contains("create pods"),
        "{err}"
    );
}
