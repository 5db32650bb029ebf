//! `lumie-server doctor` against the harness with the real charts installed by a real `helm`.
//!
//! The setup, once per test process (the simplest honest one the harness allows):
//! - a real PostgreSQL (`scripts/start-postgres.sh`) and a real OpenID provider
//!   (`tests/oidc/provider.js`); `coder-db-secret` and `coder-oidc-secret` created in `coder`
//!   with their URL and client secret, as Vault Secrets Operator would;
//! - the webhook's serving pair issued by the harness CA and put in `lumie-webhook-tls`;
//! - `helm upgrade --install` of `charts/lumie-dev` and of `charts/lumie-coder` in its
//!   `existingSecret` TLS mode (caBundle = the harness CA), the issuer pointing at the provider,
//!   and the default policy hook off (it would wait on a webhook that is not up yet);
//! - the real lumie-webhook started in-process on 127.0.0.1 with that pair, and the chart's
//!   two webhook configurations patched to call it by `url` instead of the Service (the harness
//!   has no Service routing); everything else in them is as the chart rendered it;
//! - the `default` WorkspacePolicy created through that webhook, as the chart's hook would;
//! - no kube-controller-manager runs here, so the test plays the Deployment controller once:
//!   one pod made from the server Deployment's template, which the node simulator runs (Ready).
//!
//! Each scenario group is one test holding a process-wide lock (the cluster is shared), breaks
//! one thing at a time, checks that exactly the expected checks turn and name the culprit, then
//! restores it and checks everything is ok again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lumie_contract::policy::{WorkspacePolicy, WorkspacePolicySpec};
use lumie_contract::workspace;
use lumie_server::doctor::checks::id;
use lumie_server::doctor::{DoctorOptions, Report, Status};
use lumie_tests::stack::Postgres;
use lumie_tests::tools::{self, repo_root};
use lumie_tests::{Cluster, Identity, bootstrap, control_plane, nodes};
use lumie_webhook::certs::{CertificateAuthority, write_private};
use lumie_webhook::server::{PolicySource, ServeConfig, start};
use serde_json::json;

const NS: &str = workspace::CONTROL_PLANE_NAMESPACE;
const WS: &str = workspace::NAMESPACE;
const OIDC_SECRET: &str = "s3cret-from-coder-oidc-secret";
const STANDIN_POD: &str = "coder-standin-0";

/// Scenario groups break the shared cluster one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    webhook: SocketAddr,
    ca_b64: String,
    pg_url: String,
    /// provider.js; it stops when its stdin closes (at process exit).
    _oidc: (std::process::Child, std::process::ChildStdin),
}

static ENV: OnceLock<Env> = OnceLock::new();

// ---------------------------------------------------------------------------------------------
// setup
// ---------------------------------------------------------------------------------------------

fn helm(args: &[&str]) -> String {
    tools::helm(args).unwrap_or_else(|stderr| panic!("helm {args:?} failed:\n{stderr}"))
}

/// Starts provider.js; returns its issuer, the process and the stdin that keeps it alive.
fn start_oidc_provider() -> (String, (std::process::Child, std::process::ChildStdin)) {
    let dir = repo_root().join("tests/oidc");
    if !dir.join("node_modules").is_dir() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(st.success(), "npm ci in tests/oidc failed");
    }
    let mut child = Command::new("node")
        .arg("provider.js")
        .current_dir(&dir)
        .env("OIDC_CLIENT_SECRET", OIDC_SECRET)
        .env(
            "OIDC_REDIRECT_URIS",
            "https://coder.lumie-infra.com/api/v2/users/oidc/callback",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node not found: run scripts/install-deps.sh");
    let stdin = child.stdin.take().expect("piped stdin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading provider.js");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("provider.js ready line");
    let issuer = ready["issuer"].as_str().expect("issuer").to_string();
    (issuer, (child, stdin))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let cluster = Cluster::shared();
        let pg_url = Postgres::start().expect("PostgreSQL").url;
        let (issuer, oidc) = start_oidc_provider();
        let pg = pg_url.clone();
        // The webhook serves on the shared runtime for the whole process.
        let (webhook, ca_b64) =
            control_plane::start_shared_within(Duration::from_secs(600), move || async move {
                let (addr, ca_b64, server) = install(cluster, &pg, &issuer).await;
                ((addr, ca_b64), server)
            });
        Env {
            webhook,
            ca_b64,
            pg_url,
            _oidc: oidc,
        }
    })
}

async fn install(
    cluster: &'static Cluster,
    pg_url: &str,
    issuer: &str,
) -> (SocketAddr, String, lumie_webhook::server::RunningServer) {
    let client = cluster.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    // The Secrets Vault would render.
    create_secret(&secrets, "coder-db-secret", "url", pg_url).await;
    create_secret(&secrets, "coder-oidc-secret", "client-secret", OIDC_SECRET).await;

    // The webhook's serving pair, from the CA the apiserver trusts.
    let pair = cluster
        .ca()
        .issue_server(
            &[
                "lumie-webhook".into(),
                "lumie-webhook.coder".into(),
                "lumie-webhook.coder.svc".into(),
                "lumie-webhook.coder.svc.cluster.local".into(),
            ],
            &["127.0.0.1".parse().unwrap()],
            30,
        )
        .expect("serving pair");
    let ca_pem = cluster.ca().cert_pem().to_string();
    let tls: Secret = serde_json::from_value(json!({
        "metadata": {"name": "lumie-webhook-tls", "namespace": NS},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(pair.cert_pem.as_bytes()), "tls.key": b64(pair.key_pem.as_bytes()),
                 "ca.crt": b64(ca_pem.as_bytes())}
    }))
    .unwrap();
    secrets
        .patch(
            "lumie-webhook-tls",
            &PatchParams::apply("doctor-test").force(),
            &Patch::Apply(&tls),
        )
        .await
        .expect("webhook TLS Secret");

    // Both charts, by a real helm.
    let kubeconfig = cluster.kubeconfig(Identity::Admin).display().to_string();
    let ca_b64 = b64(ca_pem.as_bytes());
    let issuer_set = format!("server.oidc.issuerUrl={issuer}");
    let ca_set = format!("webhook.tls.caBundle={ca_b64}");
    tokio::task::spawn_blocking(move || {
        for args in [
            vec![
                "upgrade",
                "--install",
                "lumie-dev",
                "charts/lumie-dev",
                "--namespace",
                WS,
            ],
            vec![
                "upgrade",
                "--install",
                "lumie-coder",
                "charts/lumie-coder",
                "--namespace",
                NS,
                "--set",
                "webhook.tls.mode=existingSecret",
                "--set",
                &ca_set,
                "--set",
                &issuer_set,
                "--set",
                "defaultPolicy.enabled=false",
                // One stand-in server pod (the harness runs no Deployment controller).
                "--set",
                "server.replicas=1",
            ],
        ] {
            let mut args = args;
            args.extend([
                "--kubeconfig",
                &kubeconfig,
                "--take-ownership",
                "--force-conflicts",
            ]);
            let out = helm(&args);
            assert!(out.contains("STATUS: deployed"), "{out}");
        }
    })
    .await
    .unwrap();

    // The real webhook, and the chart's configurations calling it on loopback.
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, &pair.cert_pem).unwrap();
    write_private(&key_file, &pair.key_pem).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServeConfig::new(any, any, cert_file, key_file);
    config.policy = PolicySource::Watch(client.clone());
    let server = start(config).await.expect("webhook starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.state.is_ready() {
        assert!(Instant::now() < deadline, "webhook policy sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    point_webhooks(&client, &format!("https://{}", server.addr), &ca_b64, None).await;
    settle_admission(&client, "the webhook on loopback", Result::is_ok).await;

    // The default policy, through the webhook, as the chart's post-install hook would.
    let mut spec = WorkspacePolicySpec::contract_default();
    spec.namespaces = vec![WS.into()];
    spec.workspace_creators = vec![Identity::ControlPlane.username().into()];
    let policies: Api<WorkspacePolicy> = Api::all(client.clone());
    let policy = WorkspacePolicy::new("default", spec);
    wait_for(
        "the default WorkspacePolicy through the webhook",
        || async {
            match policies.create(&PostParams::default(), &policy).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) if s.code == 409 => true,
                // The apiserver picks configuration changes up from a watch, a moment later.
                Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => false,
                Err(e) => panic!("default WorkspacePolicy: {e}"),
            }
        },
    )
    .await;

    start_server_standin(&client).await;
    // The stand-in pod's leader election, as the server it stands in for would run it (on
    // this runtime, for the whole process).
    let (leadership, _elector, _task) = lumie_server::leader::Elector::start(
        client.clone(),
        lumie_server::leader::LeaderConfig::default(),
        format!("{STANDIN_POD}-x1y2z3"),
        std::sync::Arc::new(lumie_server::metrics::Metrics::new()),
    );
    tokio::time::timeout(Duration::from_secs(30), leadership.until_leader())
        .await
        .expect("the stand-in server leads");
    (server.addr, ca_b64, server)
}

async fn create_secret(api: &Api<Secret>, name: &str, key: &str, value: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "data": {key: b64(value.as_bytes())}
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply("doctor-test").force(),
        &Patch::Apply(&s),
    )
    .await
    .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
}

/// Points every webhook of both configurations at `base` (+ its path) with `ca_b64` as
/// caBundle; `mutate_base` overrides the mutating webhook's base (to take it down).
async fn point_webhooks(client: &Client, base: &str, ca_b64: &str, mutate_base: Option<&str>) {
    fn path(cc: &WebhookClientConfig) -> String {
        cc.service
            .as_ref()
            .and_then(|s| s.path.clone())
            .or_else(|| {
                cc.url
                    .as_deref()
                    .and_then(|u| reqwest::Url::parse(u).ok())
                    .map(|u| u.path().to_string())
            })
            .unwrap_or_default()
    }
    let client_config = |cc: &WebhookClientConfig, base: &str| json!({"service": null, "url": format!("{base}{}", path(cc)), "caBundle": ca_b64});
    let pp = PatchParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let m = mutating
        .get("lumie-webhook")
        .await
        .expect("chart's mutating configuration");
    let hooks: Vec<_> = m
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": client_config(&w.client_config, mutate_base.unwrap_or(base))}))
        .collect();
    mutating
        .patch(
            "lumie-webhook",
            &pp,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .expect("patching the mutating configuration");
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let v = validating
        .get("lumie-webhook")
        .await
        .expect("chart's validating configuration");
    let hooks: Vec<_> = v
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": client_config(&w.client_config, base)}))
        .collect();
    validating
        .patch(
            "lumie-webhook",
            &pp,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .expect("patching the validating configuration");
}

/// Waits until the apiserver's admission of a workspace pod (dry-run) gives an answer `ok`
/// accepts: it reads webhook configurations from a watch, so a change lands a moment later.
async fn settle_admission(client: &Client, what: &str, ok: impl Fn(&Result<(), String>) -> bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), WS);
    let pod: Pod = serde_json::from_value(workspace_pod("doctor-settle")).unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(what, || async {
        let got = pods
            .create(&dry, &pod)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        ok(&got)
    })
    .await;
}

/// A workspace pod meeting the contract (the webhook adds the ServiceAccount and affinity).
fn workspace_pod(name: &str) -> serde_json::Value {
    let c = |name: &str, image: &str| json!({"name": name, "image": image, "securityContext": {"allowPrivilegeEscalation": false}});
    json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "dev-workspace"}},
        "spec": {"serviceAccountName": "dev-workspace", "containers": [
            c("dev", "busybox"), c("agents", "busybox"), c("dind", "docker:27-dind")
        ]}
    })
}

/// Plays the Deployment controller once: a pod from the server Deployment's template.
async fn start_server_standin(client: &Client) {
    let deploy = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("coder")
        .await
        .expect("the chart's server Deployment");
    let template = deploy.spec.unwrap().template;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(STANDIN_POD.into()),
            namespace: Some(NS.into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("stand-in server pod: {e}"),
    }
    wait_for("the stand-in server pod Ready", || async {
        pods.get_opt(STANDIN_POD)
            .await
            .ok()
            .flatten()
            .is_some_and(|p| lumie_server::doctor::control_plane::pod_ready(&p))
    })
    .await;
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// running the doctor and judging its report
// ---------------------------------------------------------------------------------------------

async fn doctor() -> Report {
    let options = DoctorOptions {
        kubeconfig: Some(Cluster::shared().kubeconfig(Identity::Admin)),
        timeout: Duration::from_secs(10),
        ..DoctorOptions::default()
    };
    lumie_server::doctor::run(options)
        .await
        .expect("the doctor reaches the harness")
}

/// Exactly the listed checks are not ok, each with its status and naming every needle.
fn assert_only(report: &Report, what: &str, expected: &[(&str, Status, &[&str])]) {
    let text = report.render_text();
    for c in &report.checks {
        match expected.iter().find(|(id, _, _)| *id == c.id) {
            Some((_, status, needles)) => {
                assert_eq!(c.status, *status, "{what}: {}\n{text}", c.id);
                for n in *needles {
                    assert!(
                        c.summary.contains(n),
                        "{what}: {} should name {n:?}\n{text}",
                        c.id
                    );
                }
                assert!(c.fix.is_some(), "{what}: {} says what to do", c.id);
            }
            None => assert_eq!(
                c.status,
                Status::Ok,
                "{what}: {} should stay ok\n{text}",
                c.id
            ),
        }
    }
    for (id, _, _) in expected {
        assert!(report.check(id).is_some(), "{what}: check {id} ran\n{text}");
    }
    let failed = expected.iter().any(|(_, s, _)| *s == Status::Failure);
    assert_eq!(
        report.exit_code(),
        u8::from(failed),
        "{what}: exit code\n{text}"
    );
}

async fn assert_healthy(what: &str) {
    assert_only(&doctor().await, what, &[]);
}

// ---------------------------------------------------------------------------------------------
// scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthy_install_is_all_ok_in_text_and_json() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let report = doctor().await;
    println!("{}", report.render_text());
    assert_only(&report, "healthy", &[]);
    // Fourteen, and the leader line of a PostgreSQL install.
    assert_eq!(report.checks.len(), 15, "{}", report.render_text());
    // The lines say what was actually seen.
    let summary = |id: &str| report.check(id).unwrap().summary.clone();
    assert!(summary(id::SERVER).contains("1/1 pods ready"));
    assert!(summary(id::LEADER).contains("leader coder-standin-0-x1y2z3"));
    assert!(summary(id::LEADER).contains("coder-standin-0 (ready)"));
    assert!(summary(id::DATABASE).contains("connected to PostgreSQL"));
    assert!(
        !report.render_text().contains(&env.pg_url),
        "no credentials in the output"
    );
    assert!(summary(id::OIDC_ISSUER).contains("/realms/infra serves its discovery document"));
    assert!(summary(id::WEBHOOK_CA_BUNDLE).contains("Secret coder/lumie-webhook-tls"));
    assert!(summary(id::WEBHOOK_ANSWERING).contains("mutated"));
    assert!(summary(id::WORKSPACE_ROLE_BINDING).contains("dev-workspace-admin"));
    assert!(summary(id::WORKER_CAPACITY).contains("3 of 3 worker(s)"));
    assert!(summary(id::DIND_EXCEPTION).contains("WorkspacePolicy default (Enforce)"));

    let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["counts"]["ok"], 15);
    assert_eq!(json["checks"][0]["id"], id::SERVER);
    let text = report.render_text();
    assert_eq!(
        text.lines().count(),
        16,
        "one line per check and a count:\n{text}"
    );
    assert!(
        text.ends_with("15 checks: 15 ok, 0 warning(s), 0 failure(s)\n"),
        "{text}"
    );
}

#[tokio::test]
async fn control_plane_secrets_and_pods_broken_then_restored() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = Cluster::shared().client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let dp = DeleteParams::default();

    secrets.delete("coder-db-secret", &dp).await.unwrap();
    assert_only(
        &doctor().await,
        "deleted database Secret",
        &[
            (
                id::DB_SECRET,
                Status::Failure,
                &["Secret coder/coder-db-secret not found"],
            ),
            (id::DATABASE, Status::Warning, &["not checked", "db-secret"]),
        ],
    );
    create_secret(
        &secrets,
        "coder-db-secret",
        "url",
        "postgres://lumie:wrong@127.0.0.1:1/lumie",
    )
    .await;
    assert_only(
        &doctor().await,
        "database URL pointing nowhere",
        &[(id::DATABASE, Status::Failure, &["lumie@127.0.0.1:1/lumie"])],
    );
    // An in-cluster host this machine cannot resolve: said so, and only a warning.
    create_secret(
        &secrets,
        "coder-db-secret",
        "url",
        "postgres://lumie:x@postgres.databases.svc.cluster.local:5432/lumie",
    )
    .await;
    assert_only(
        &doctor().await,
        "in-cluster database host",
        &[(
            id::DATABASE,
            Status::Warning,
            &[
                "postgres.databases.svc.cluster.local is an in-cluster name this machine cannot resolve",
            ],
        )],
    );
    create_secret(&secrets, "coder-db-secret", "url", &env.pg_url).await;

    secrets.delete("coder-oidc-secret", &dp).await.unwrap();
    assert_only(
        &doctor().await,
        "deleted OIDC Secret",
        &[(
            id::OIDC_SECRET,
            Status::Failure,
            &["Secret coder/coder-oidc-secret not found"],
        )],
    );
    create_secret(&secrets, "coder-oidc-secret", "client-secret", "").await;
    assert_only(
        &doctor().await,
        "empty OIDC client secret",
        &[(
            id::OIDC_SECRET,
            Status::Failure,
            &["coder-oidc-secret key \"client-secret\" is empty"],
        )],
    );
    create_secret(&secrets, "coder-oidc-secret", "client-secret", OIDC_SECRET).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(
        STANDIN_POD,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..dp.clone()
        },
    )
    .await
    .unwrap();
    wait_for("the stand-in pod gone", || async {
        pods.get_opt(STANDIN_POD).await.unwrap().is_none()
    })
    .await;
    assert_only(
        &doctor().await,
        "no server pod",
        &[
            (
                id::SERVER,
                Status::Failure,
                &["Deployment coder/coder: 0/1 pods ready"],
            ),
            // The stand-in's election still renews the Lease, with no pod behind it.
            (
                id::LEADER,
                Status::Warning,
                &["none of the server Deployment's pods", "no server pods"],
            ),
        ],
    );
    start_server_standin(&client).await;
    assert_healthy("control plane restored").await;
}

#[tokio::test]
async fn workspace_overlay_broken_then_restored() {
    let _serial = SERIAL.lock().await;
    env();
    let client = Cluster::shared().client().await;

    // Service port drift: code-server moved to 13338.
    let services: Api<Service> = Api::namespaced(client.clone(), WS);
    let original = services.get(workspace::STABLE_SERVICE).await.unwrap();
    let ports =
        serde_json::to_value(original.spec.as_ref().unwrap().ports.clone().unwrap()).unwrap();
    let mut drifted = ports.clone();
    for p in drifted.as_array_mut().unwrap() {
        if p["name"] == "code-server" {
            p["port"] = json!(13338);
            p["targetPort"] = json!(13338);
        }
    }
    let set_ports = |ports: serde_json::Value| {
        let services = services.clone();
        async move {
            services
                .patch(
                    workspace::STABLE_SERVICE,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"ports": ports}})),
                )
                .await
                .unwrap();
        }
    };
    set_ports(drifted).await;
    assert_only(
        &doctor().await,
        "Service port drift",
        &[(
            id::WORKSPACE_SERVICE,
            Status::Failure,
            &[
                "Service lumie-dev/dev-workspace drifted",
                "port code-server is 13338, the contract says 13337",
                "port code-server targets 13338",
            ],
        )],
    );
    set_ports(ports).await;
    assert_healthy("Service restored").await;

    // The workspace ServiceAccount deleted: its check fails, and the webhook probe (refused
    // before the webhook, for the missing account) only warns.
    bootstrap_sa_delete(&client).await;
    assert_only(
        &doctor().await,
        "missing ServiceAccount",
        &[
            (
                id::WORKSPACE_SERVICE_ACCOUNT,
                Status::Failure,
                &["ServiceAccount lumie-dev/dev-workspace not found"],
            ),
            (id::WEBHOOK_ANSWERING, Status::Warning, &["dev-workspace"]),
        ],
    );
    bootstrap::create_service_account(&client, WS, "dev-workspace")
        .await
        .unwrap();
    assert_healthy("ServiceAccount restored").await;

    // The RoleBinding deleted.
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), WS);
    let rb = bindings.get("dev-workspace-admin").await.unwrap();
    bindings
        .delete("dev-workspace-admin", &DeleteParams::default())
        .await
        .unwrap();
    assert_only(
        &doctor().await,
        "missing RoleBinding",
        &[(
            id::WORKSPACE_ROLE_BINDING,
            Status::Failure,
            &["no RoleBinding in lumie-dev binds ServiceAccount dev-workspace"],
        )],
    );
    let restored = RoleBinding {
        metadata: ObjectMeta {
            name: rb.metadata.name,
            namespace: rb.metadata.namespace,
            labels: rb.metadata.labels,
            annotations: rb.metadata.annotations,
            ..Default::default()
        },
        role_ref: rb.role_ref,
        subjects: rb.subjects,
    };
    bindings
        .create(&PostParams::default(), &restored)
        .await
        .unwrap();
    assert_healthy("RoleBinding restored").await;
}

async fn bootstrap_sa_delete(client: &Client) {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), WS);
    sas.delete("dev-workspace", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the ServiceAccount gone", || async {
        sas.get_opt("dev-workspace").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn webhook_wrong_ca_bundle_and_outage_then_restored() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = Cluster::shared().client().await;
    let base = format!("https://{}", env.webhook);

    // A caBundle from another CA: the offline check and the apiserver both refuse the cert.
    let wrong = CertificateAuthority::generate("some other CA", 1).unwrap();
    point_webhooks(&client, &base, &b64(wrong.cert_pem().as_bytes()), None).await;
    settle_admission(&client, "the wrong CA in use", |r| {
        r.as_ref().is_err_and(|e| e.contains("x509"))
    })
    .await;
    assert_only(
        &doctor().await,
        "wrong CA bundle",
        &[
            (
                id::WEBHOOK_CA_BUNDLE,
                Status::Failure,
                &[
                    "MutatingWebhookConfiguration webhook mutate-pods.coder.lumie-infra.com",
                    "ValidatingWebhookConfiguration webhook validate-pods.coder.lumie-infra.com",
                    "is not signed by the caBundle (CN=some other CA)",
                ],
            ),
            (
                id::WEBHOOK_ANSWERING,
                Status::Failure,
                &["failed calling webhook", "x509"],
            ),
        ],
    );

    // The right bundle, but nothing listening where the mutating webhook is called.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    point_webhooks(&client, &base, &env.ca_b64, Some(&down)).await;
    settle_admission(&client, "the mutating webhook down", |r| {
        r.as_ref().is_err_and(|e| e.contains("connection refused"))
    })
    .await;
    assert_only(
        &doctor().await,
        "webhook down",
        &[(
            id::WEBHOOK_ANSWERING,
            Status::Failure,
            &[
                "failed calling webhook \"mutate-pods.coder.lumie-infra.com\"",
                "connection refused",
            ],
        )],
    );

    point_webhooks(&client, &base, &env.ca_b64, None).await;
    settle_admission(&client, "the webhook back", Result::is_ok).await;
    assert_healthy("webhook restored").await;
}

#[tokio::test]
async fn pending_workspace_reports_the_scheduler_reason_verbatim() {
    let _serial = SERIAL.lock().await;
    env();
    let client = Cluster::shared().client().await;
    nodes::cordon_workers(&client, true).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), WS);
    let pod: Pod = serde_json::from_value(workspace_pod("doctor-pending")).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), WS);
    let lp =
        ListParams::default().fields("involvedObject.name=doctor-pending,reason=FailedScheduling");
    wait_for("the scheduler's FailedScheduling event", || async {
        !events.list(&lp).await.unwrap().items.is_empty()
    })
    .await;
    let report = doctor().await;
    // Read after the doctor: the message it quotes is the latest one it could have seen.
    let latest = events
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect::<Vec<_>>();
    let check = report.check(id::PENDING_WORKSPACES).unwrap();
    assert!(
        latest.iter().any(|m| check.summary.contains(m.trim())),
        "the scheduler's message verbatim: {latest:?}\n{}",
        report.render_text()
    );
    assert_only(
        &report,
        "workers cordoned",
        &[
            (
                id::PENDING_WORKSPACES,
                Status::Failure,
                &["lumie-dev/doctor-pending: 0/4 nodes are available"],
            ),
            (
                id::WORKER_CAPACITY,
                Status::Failure,
                &["worker-1: cordoned", "control-plane-1: control plane"],
            ),
        ],
    );

    pods.delete(
        "doctor-pending",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_for("the pending pod gone", || async {
        pods.get_opt("doctor-pending").await.unwrap().is_none()
    })
    .await;
    nodes::cordon_workers(&client, false).await.unwrap();
    assert_healthy("workers uncordoned").await;
}
