//! lumie-webhook end to end: the real kube-apiserver (1.20) calls the real webhook over TLS.
//!
//! One webhook per test process, started in-process on 127.0.0.1 with a serving certificate
//! issued by the harness CA, watching WorkspacePolicy objects, and registered like the chart
//! does (`failurePolicy: Fail`, namespaceSelector on `lumie-dev` and `lumie-live`, CONNECT on
//! exec, attach and portforward). Pods are created as the control plane's ServiceAccount and as
//! a developer: accepted ones come back mutated, rejected ones carry the violations. Workspace
//! isolation (no developer can become another) is tried the way a developer would: mounting
//! another workspace's home volume or token, forging workspace labels, and exec, attach and
//! port-forward into another workspace's pod as a pod's bound ServiceAccount token would ask
//! (the admin impersonates the workspace account with the pod-name extra).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use lumie_contract::labels;
use lumie_contract::policy::WorkspacePolicy;
use lumie_tests::{Cluster, Identity, admission, bootstrap, control_plane, nodes};
use lumie_webhook::certs::write_private;
use lumie_webhook::server::{AppState, PolicySource, ServeConfig, start};
use lumie_webhook::tls::CertReloader;
use serde_json::{Value, json};

/// A namespace guarded by its own policy, for the live policy change.
const LIVE_NS: &str = "lumie-live";
/// A namespace the webhook is not registered for.
const OTHER_NS: &str = "elsewhere";

struct Webhook {
    addr: SocketAddr,
    state: AppState,
    certs: std::sync::Arc<CertReloader>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

static WEBHOOK: OnceLock<Webhook> = OnceLock::new();

/// Starts the webhook once for this process, on a runtime of its own so it outlives each test.
fn webhook() -> &'static Webhook {
    WEBHOOK.get_or_init(|| {
        let cluster = Cluster::shared();
        control_plane::start_shared_within(Duration::from_secs(120), move || async move {
            let client = cluster.client().await;
            lumie_tests::bootstrap::install_policy_crd(&client)
                .await
                .expect("WorkspacePolicy CRD established");
            bootstrap::create_namespace(&client, LIVE_NS).await.unwrap();
            bootstrap::create_namespace(&client, OTHER_NS)
                .await
                .unwrap();

            let dir = tempfile::tempdir().unwrap().keep();
            let cert_file = dir.join("tls.crt");
            let key_file = dir.join("tls.key");
            write_pair(cluster, &cert_file, &key_file);
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let mut config = ServeConfig::new(any, any, cert_file.clone(), key_file.clone());
            config.policy = PolicySource::Watch(client.clone());
            config.cert_poll = Duration::from_millis(200);
            // The harness's control plane is a static-token user, not the chart's default.
            config.identities.control_plane = vec![Identity::ControlPlane.username().into()];
            let server = start(config).await.unwrap();
            wait_until("the first policy sync", || server.state.is_ready()).await;
            admission::register_webhooks(
                &client,
                &format!("https://{}", server.addr),
                cluster.ca().cert_pem(),
                &["lumie-dev", LIVE_NS],
            )
            .await
            .unwrap();
            // The objects the chart installs, created through the webhook itself.
            apply_policy(&client, "default", json!({})).await.unwrap();
            apply_policy(&client, "e2e-live", json!({"namespaces": [LIVE_NS]}))
                .await
                .unwrap();
            let state = server.state.clone();
            wait_until("both policies in force", || {
                state.policies().policies().count() == 2
            })
            .await;
            let webhook = Webhook {
                addr: server.addr,
                state: server.state.clone(),
                certs: server.certs.clone(),
                cert_file,
                key_file,
            };
            (webhook, server)
        })
    })
}

fn write_pair(cluster: &Cluster, cert: &std::path::Path, key: &std::path::Path) {
    let pair = cluster
        .ca()
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1)
        .unwrap();
    // Replaced atomically, file by file, as the kubelet updates a Secret volume.
    let tmp = cert.with_extension("tmp");
    std::fs::write(&tmp, &pair.cert_pem).unwrap();
    std::fs::rename(&tmp, cert).unwrap();
    write_private(&tmp, &pair.key_pem).unwrap();
    std::fs::rename(&tmp, key).unwrap();
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn apply_policy(client: &Client, name: &str, spec: Value) -> Result<(), kube::Error> {
    let api: Api<WorkspacePolicy> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "coder.lumie-infra.com/v1alpha1",
        "kind": "WorkspacePolicy",
        "metadata": {"name": name},
        "spec": spec
    });
    api.patch(
        name,
        &PatchParams::apply("webhook-e2e").force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
}

/// A workspace pod as the control plane creates it before mutation: no service account, no
/// affinity.
fn workspace_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "dev-workspace"}},
        "spec": {"containers": [
            {"name": "dev", "image": "ghcr.io/lumie-infra/dev:1"},
            {"name": "agents", "image": "ghcr.io/lumie-infra/agents:1", "ports": [{"containerPort": 3000}]},
            {"name": "dind", "image": "docker:27-dind", "securityContext": {"privileged": true}}
        ]}
    }))
    .unwrap()
}

fn plain_pod(name: &str, security: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "securityContext": security}]}
    }))
    .unwrap()
}

fn denial(result: Result<Pod, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            s.message
        }
        Err(e) => panic!("not an admission denial: {e}"),
        Ok(p) => panic!("admitted: {:?}", p.metadata.name),
    }
}

fn avoids_control_plane(pod: &Pod) -> bool {
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    !terms.is_empty()
        && terms.iter().all(|t| {
            [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master",
            ]
            .iter()
            .all(|k| {
                t.match_expressions
                    .iter()
                    .flatten()
                    .any(|e| e.key == *k && e.operator == "DoesNotExist")
            })
        })
}

async fn pods_as(who: Identity, ns: &str) -> Api<Pod> {
    Api::namespaced(Cluster::shared().client_as(who).await, ns)
}

#[tokio::test]
async fn control_plane_workspace_pod_is_mutated_admitted_and_scheduled_on_a_worker() {
    webhook();
    let pods = pods_as(Identity::ControlPlane, "lumie-dev").await;
    let created = pods
        .create(&PostParams::default(), &workspace_pod("ws-control-plane"))
        .await
        .expect("the control plane's workspace pod is admitted");
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("dev-workspace"));
    assert!(avoids_control_plane(&created), "{:?}", spec.affinity);
    assert_eq!(
        created.metadata.annotations.as_ref().unwrap()[labels::CREATED_BY],
        Identity::ControlPlane.username(),
        "stamped with its creator"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pods.get("ws-control-plane").await.unwrap();
        if let Some(node) = p.spec.and_then(|s| s.node_name) {
            assert!(nodes::WORKERS.contains(&node.as_str()), "bound to {node}");
            break;
        }
        assert!(Instant::now() < deadline, "never scheduled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn developer_gets_no_privilege() {
    webhook();
    let pods = pods_as(Identity::Developer, "lumie-dev").await;
    let msg = denial(
        pods.create(&PostParams::default(), &workspace_pod("ws-developer"))
            .await,
    );
    assert!(
        msg.contains(
            r#"admission webhook "validate-pods.coder.lumie-infra.com" denied the request"#
        ),
        "{msg}"
    );
    assert!(
        msg.contains(r#"container "dind": securityContext.privileged=true is not allowed"#)
            && msg.contains(r#""system:serviceaccount:lumie-dev:dev-workspace" is not one"#)
            && msg.contains(r#"WorkspacePolicy "default""#),
        "{msg}"
    );

    let escape: Pod = serde_json::from_value(json!({
        "metadata": {"name": "escape"},
        "spec": {
            "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "sh", "image": "alpine",
                "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]
        }
    }))
    .unwrap();
    let msg = denial(pods.create(&PostParams::default(), &escape).await);
    for part in [
        "pod: spec.hostPID=true",
        r#"spec.volumes[0].hostPath="/""#,
        r#"container "sh": securityContext.capabilities.add=["SYS_ADMIN"]"#,
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
}

#[tokio::test]
async fn developer_plain_pod_is_admitted_untouched() {
    webhook();
    let pods = pods_as(Identity::Developer, "lumie-dev").await;
    let created = pods
        .create(
            &PostParams::default(),
            &plain_pod("scratch", json!({"allowPrivilegeEscalation": false})),
        )
        .await
        .expect("a baseline pod is admitted");
    let spec = created.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert!(spec.affinity.is_none(), "not a workspace pod: not mutated");
}

#[tokio::test]
async fn server_dry_run_gets_the_same_decision_and_stores_nothing() {
    webhook();
    let pods = pods_as(Identity::ControlPlane, "lumie-dev").await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = pods
        .create(&dry, &workspace_pod("ws-dry-run"))
        .await
        .unwrap();
    assert!(avoids_control_plane(&created));
    assert!(
        pods.get_opt("ws-dry-run").await.unwrap().is_none(),
        "stored"
    );
    let msg = denial(
        pods.create(&dry, &plain_pod("dry-bad", json!({"privileged": true})))
            .await,
    );
    assert!(
        msg.contains(r#"container "main": securityContext.privileged=true"#),
        "{msg}"
    );
}

#[tokio::test]
async fn a_pod_in_another_namespace_is_never_touched() {
    webhook();
    let pods = pods_as(Identity::Admin, OTHER_NS).await;
    let created = pods
        .create(&PostParams::default(), &workspace_pod("ws-elsewhere"))
        .await
        .expect("not guarded");
    let spec = created.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert!(spec.affinity.is_none());
}

#[tokio::test]
async fn ephemeral_containers_go_through_both_webhooks() {
    webhook();
    // The 1.20 `admin` role does not grant pods/ephemeralcontainers: debug as a cluster admin.
    let client = Cluster::shared().client_as(Identity::Admin).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "lumie-dev");
    pods.create(
        &PostParams::default(),
        &plain_pod("debug-target", json!({})),
    )
    .await
    .unwrap();
    let resource = ApiResource::erase::<Pod>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client, "lumie-dev", &resource);
    // Kubernetes 1.20 takes an EphemeralContainers object on the subresource.
    let body = |security: Option<Value>| {
        let mut debug = json!({"name": "debug", "image": "busybox:1.36",
            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"});
        if let Some(sc) = security {
            debug["securityContext"] = sc;
        }
        json!({
            "apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "debug-target", "namespace": "lumie-dev"},
            "ephemeralContainers": [debug]
        })
    };
    // Kubernetes 1.20 itself refuses a securityContext on an ephemeral container (the webhook's
    // check of it is table-tested for later versions, where the field is allowed).
    let err = dynamic
        .replace_subresource(
            "ephemeralcontainers",
            "debug-target",
            &PostParams::default(),
            &body(Some(json!({"privileged": true}))),
        )
        .await
        .expect_err("a privileged debug container is refused");
    assert!(err.to_string().contains("securityContext"), "{err}");
    // A plain debug container goes through both webhooks (failurePolicy Fail: a webhook that
    // could not read the EphemeralContainers object would refuse it).
    dynamic
        .replace_subresource(
            "ephemeralcontainers",
            "debug-target",
            &PostParams::default(),
            &body(None),
        )
        .await
        .expect("a baseline debug container is admitted");
    let pod = pods.get("debug-target").await.unwrap();
    assert_eq!(
        pod.spec.unwrap().ephemeral_containers.unwrap()[0].name,
        "debug"
    );
}

#[tokio::test]
async fn policy_objects_are_validated_and_changes_apply_live() {
    let hook = webhook();
    let admin = Cluster::shared().client().await;
    let err = apply_policy(
        &admin,
        "broken",
        json!({"namespaces": [], "privilegedContainers": [{"name": "dind", "images": ["docker:[dind"]}]}),
    )
    .await
    .expect_err("a broken policy is rejected at apply");
    let msg = err.to_string();
    assert!(
        msg.contains("spec.namespaces: must name at least one namespace")
            && msg.contains("bad glob"),
        "{msg}"
    );

    let pods = pods_as(Identity::Admin, LIVE_NS).await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let privileged = plain_pod("live", json!({"privileged": true}));
    let msg = denial(pods.create(&dry, &privileged).await);
    assert!(msg.contains(r#"WorkspacePolicy "e2e-live""#), "{msg}");

    for (mode, allowed) in [("Warn", true), ("Enforce", false)] {
        let generation = hook.state.policies().generation();
        let started = Instant::now();
        apply_policy(
            &admin,
            "e2e-live",
            json!({"namespaces": [LIVE_NS], "mode": mode}),
        )
        .await
        .unwrap();
        loop {
            let got = pods.create(&dry, &privileged).await;
            if got.is_ok() == allowed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "mode {mode} not in force after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(hook.state.policies().generation() > generation);
        eprintln!("mode {mode} in force after {:?}", started.elapsed());
    }

    // The webhook says in the object's status that it is in force.
    let policies: Api<WorkspacePolicy> = Api::all(admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = policies.get("e2e-live").await.unwrap();
        let status = p.status.unwrap_or_default();
        if status.message.as_deref() == Some("in force")
            && status.observed_generation == p.metadata.generation
        {
            break;
        }
        assert!(Instant::now() < deadline, "status not written: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificate_rotation_mid_run_fails_no_request() {
    let hook = webhook();
    let cluster = Cluster::shared();
    let pods = pods_as(Identity::ControlPlane, "lumie-dev").await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let reloads = hook.certs.reloads();
    let ok = AtomicUsize::new(0);
    let started = Instant::now();
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        write_pair(cluster, &hook.cert_file, &hook.key_file);
    };
    let traffic = async {
        let mut failures = Vec::new();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(4) {
            i += 1;
            match pods.create(&dry, &workspace_pod(&format!("rot-{i}"))).await {
                Ok(p) if avoids_control_plane(&p) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => failures.push("admitted without mutation".to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }
        failures
    };
    let ((), failures) = tokio::join!(rotate, traffic);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok.load(Ordering::Relaxed) > 10, "too little traffic");
    assert!(
        hook.certs.reloads() > reloads,
        "the new certificate was loaded"
    );
    let _ = hook.addr;
}

// ----- workspace isolation -----

/// Workspace `owner/dev`'s pod as the server builds it: identity labels, its home volume and
/// its agent token (from `extra` volumes and env added by the caller).
fn identity_pod(owner: &str, extra_volume: Option<Value>, extra_env: Option<Value>) -> Pod {
    let names = lumie_contract::naming::WorkspaceNames::new(owner, "dev").unwrap();
    let mut volumes = vec![json!({"name": "home",
        "persistentVolumeClaim": {"claimName": names.home_pvc}})];
    volumes.extend(extra_volume);
    let mut env = vec![json!({"name": "CODER_AGENT_TOKEN", "valueFrom":
        {"secretKeyRef": {"name": names.agent_secret, "key": "token"}}})];
    env.extend(extra_env);
    serde_json::from_value(json!({
        "metadata": {"name": names.pod, "labels": {
            labels::APP_NAME: labels::APP_NAME_WORKSPACE,
            labels::MANAGED_BY: labels::MANAGED_BY_LUMIE,
            labels::OWNER: owner,
            labels::WORKSPACE: "dev",
            labels::WORKSPACE_ID: format!("00000000-0000-4000-8000-{:0>12}", owner.len())
        }},
        "spec": {
            "volumes": volumes,
            "containers": [
                {"name": "dev", "image": "ghcr.io/lumie-infra/dev:1", "env": env,
                 "volumeMounts": [{"name": "home", "mountPath": "/home/coder"}]},
                {"name": "agents", "image": "ghcr.io/lumie-infra/agents:1"},
                {"name": "dind", "image": "docker:27-dind", "securityContext": {"privileged": true}}
            ]
        }
    }))
    .unwrap()
}

fn dry() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn no_pod_reads_another_workspaces_home_or_token_or_forges_a_workspace() {
    webhook();
    let cp = pods_as(Identity::ControlPlane, "lumie-dev").await;
    let dev = pods_as(Identity::Developer, "lumie-dev").await;

    // The control plane's own workspace pod is admitted and stamped.
    let ok = cp
        .create(&dry(), &identity_pod("iso-carol", None, None))
        .await
        .expect("a workspace pod reading its own volume and token");
    assert_eq!(
        ok.metadata.annotations.unwrap()[labels::CREATED_BY],
        Identity::ControlPlane.username()
    );

    // Not even the control plane mounts another workspace's home or token into a pod.
    let bob_home =
        json!({"name": "bob", "persistentVolumeClaim": {"claimName": "coder-iso-bob-dev-home"}});
    let msg = denial(
        cp.create(
            &dry(),
            &identity_pod("iso-carol", Some(bob_home.clone()), None),
        )
        .await,
    );
    assert!(
        msg.contains(r#"pod: spec.volumes[1].persistentVolumeClaim.claimName="coder-iso-bob-dev-home" is not allowed (workspace isolation: a workspace's home volume is read only by its own pod; this is workspace iso-carol/dev's pod)"#),
        "{msg}"
    );
    let bob_token = json!({"name": "STOLEN", "valueFrom":
        {"secretKeyRef": {"name": "coder-iso-bob-dev-agent", "key": "token"}}});
    let msg = denial(
        cp.create(&dry(), &identity_pod("iso-carol", None, Some(bob_token)))
            .await,
    );
    assert!(
        msg.contains(r#"container "dev": env[1].valueFrom.secretKeyRef.name="coder-iso-bob-dev-agent" is not allowed"#),
        "{msg}"
    );

    // A developer's own pod mounts no workspace's home, projected token or envFrom token.
    let sneaky: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sneaky"},
        "spec": {
            "volumes": [
                {"name": "h", "persistentVolumeClaim": {"claimName": "coder-iso-bob-dev-home"}},
                {"name": "t", "projected": {"sources": [{"secret": {"name": "coder-iso-bob-dev-agent"}}]}}
            ],
            "containers": [{"name": "main", "image": "busybox:1.36",
                "envFrom": [{"secretRef": {"name": "coder-iso-bob-dev-agent"}}]}]
        }
    }))
    .unwrap();
    let msg = denial(dev.create(&dry(), &sneaky).await);
    for part in [
        r#"spec.volumes[0].persistentVolumeClaim.claimName="coder-iso-bob-dev-home""#,
        r#"spec.volumes[1].projected.sources[0].secret.name="coder-iso-bob-dev-agent""#,
        r#"container "main": envFrom[0].secretRef.name="coder-iso-bob-dev-agent""#,
        "this is no workspace pod",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }

    // A developer creates no workspace pod (labels, stamp, name)...
    let msg = denial(
        dev.create(&dry(), &identity_pod("iso-carol", None, None))
            .await,
    );
    assert!(
        msg.contains(r#"metadata.labels["coder.lumie-infra.com/workspace-id"]"#)
            && msg.contains(r#"only the control plane ("system:serviceaccount:coder:coder") creates workspace pods"#)
            && msg.contains(r#"pod: metadata.name="coder-iso-carol-dev" is not allowed"#),
        "{msg}"
    );
    let mut stamped = plain_pod("self-stamped", json!({}));
    stamped.metadata.annotations = Some(
        [(
            labels::CREATED_BY.to_string(),
            Identity::ControlPlane.username().to_string(),
        )]
        .into(),
    );
    let msg = denial(dev.create(&dry(), &stamped).await);
    assert!(msg.contains("coder.lumie-infra.com/created-by"), "{msg}");

    // ... nor turns its pod into one afterwards.
    dev.create(&PostParams::default(), &plain_pod("relabel-me", json!({})))
        .await
        .expect("a plain pod");
    for patch in [
        json!({"metadata": {"labels": {labels::WORKSPACE_ID: "00000000-0000-4000-8000-00000000000b"}}}),
        json!({"metadata": {"annotations": {labels::CREATED_BY: Identity::ControlPlane.username()}}}),
    ] {
        let err = dev
            .patch("relabel-me", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let msg = denial(err);
        assert!(msg.contains("only the control plane"), "{msg}");
    }
    dev.patch(
        "relabel-me",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .expect("other labels may change");

    // A registry host named `docker` is not the docker image.
    let mut fake_dind = identity_pod("iso-carol", None, None);
    fake_dind.spec.as_mut().unwrap().containers[2].image = Some("docker:5000/attacker/dind".into());
    let msg = denial(cp.create(&dry(), &fake_dind).await);
    assert!(
        msg.contains(r#"image "docker:5000/attacker/dind" is not an allowed image for "dind""#),
        "{msg}"
    );
}

/// A CONNECT (`exec`, `attach`, `portforward`) into `pod`, as the admin impersonating `as_user`
/// (with its groups and, when given, the pod-name extra a bound token carries), or as the
/// admin itself. Returns the status and body; admission runs before the apiserver dials the
/// (fake) node, so an allowed request fails later, and differently.
async fn connect(
    subresource: &str,
    pod: &str,
    as_user: Option<(Identity, Option<&str>)>,
) -> (u16, String) {
    let cluster = Cluster::shared();
    let ca = reqwest::Certificate::from_pem(cluster.ca().cert_pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .no_proxy()
        .build()
        .unwrap();
    let query = match subresource {
        "portforward" => "ports=3000",
        "attach" => "container=dev&stdout=true",
        _ => "container=dev&command=sh&stdin=true&stdout=true",
    };
    let mut req = http
        .post(format!(
            "{}/api/v1/namespaces/lumie-dev/pods/{pod}/{subresource}?{query}",
            cluster.server_url()
        ))
        .bearer_auth(cluster.token(Identity::Admin));
    if let Some((who, pod_name)) = as_user {
        req = req.header("Impersonate-User", who.username());
        for g in [
            "system:serviceaccounts",
            "system:serviceaccounts:lumie-dev",
            "system:authenticated",
        ] {
            req = req.header("Impersonate-Group", g);
        }
        if let Some(p) = pod_name {
            req = req.header(
                "Impersonate-Extra-authentication.kubernetes.io%2Fpod-name",
                p,
            );
        }
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn webhook_denied(status: u16, body: &str) -> bool {
    status == 403
        && body.contains(
            r#"admission webhook \"validate-pods.coder.lumie-infra.com\" denied the request"#,
        )
}

#[tokio::test]
async fn exec_attach_and_portforward_into_a_workspace_pod_only_for_it_the_control_plane_and_admins()
{
    webhook();
    let cp = pods_as(Identity::ControlPlane, "lumie-dev").await;
    for owner in ["conn-bob", "conn-alice"] {
        cp.create(&PostParams::default(), &identity_pod(owner, None, None))
            .await
            .expect("the control plane's workspace pod");
    }
    let (bob, alice) = ("coder-conn-bob-dev", "coder-conn-alice-dev");
    let dev = Identity::Developer;

    for sub in ["exec", "attach", "portforward"] {
        // Another workspace's pod token, and a developer without one, are refused.
        for claim in [Some(alice), None] {
            let (status, body) = connect(sub, bob, Some((dev, claim))).await;
            assert!(
                webhook_denied(status, &body),
                "{sub} {claim:?}: {status} {body}"
            );
            assert!(
                body.contains(&format!(
                    "{sub} into workspace pod lumie-dev/{bob} is allowed only to the control plane"
                )),
                "{body}"
            );
        }
        // The workspace's own pod and admins get past admission to the connection itself,
        // which then fails on the harness (no kubelet: "does not have a host assigned" or a
        // dial error), not with a 403. (The harness's control plane has no RBAC for
        // pods/exec; the webhook's answer for it is table-tested.)
        for (what, who) in [("its own pod", Some((dev, Some(bob)))), ("an admin", None)] {
            let (status, body) = connect(sub, bob, who).await;
            eprintln!("{sub} as {what}: {status} {}", body.trim());
            assert!(
                status != 403 && !body.contains("admission webhook"),
                "{sub} as {what} was refused: {status} {body}"
            );
        }
    }
    // A pod that is no workspace pod is the developer's business.
    let dev_pods = pods_as(Identity::Developer, "lumie-dev").await;
    dev_pods
        .create(
            &PostParams::default(),
            &plain_pod("conn-scratch", json!({})),
        )
        .await
        .unwrap();
    let (status, body) = connect("exec", "conn-scratch", Some((dev, None))).await;
    assert!(
        status != 403 && !body.contains("admission webhook"),
        "{status} {body}"
    );
}

#[tokio::test]
async fn policies_below_the_floor_need_break_glass() {
    webhook();
    let admin = Cluster::shared().client().await;
    let api: Api<WorkspacePolicy> = Api::all(admin.clone());
    let body = |name: &str, spec: Value| {
        json!({"apiVersion": "coder.lumie-infra.com/v1alpha1", "kind": "WorkspacePolicy",
            "metadata": {"name": name}, "spec": spec})
    };
    let dry = PatchParams::apply("webhook-e2e").force().dry_run();
    for (spec, want) in [
        (
            json!({"mode": "Warn"}),
            r#"spec.mode: "Warn" leaves Enforce in "lumie-dev", below the floor"#,
        ),
        (
            json!({"exemptGroups": ["system:serviceaccounts:lumie-dev"]}),
            "would exempt the workspace pods themselves",
        ),
        (
            json!({"mode": "Audit", "breakGlass": {"reason": "INC-1", "expires": "2020-01-01T00:00:00Z"}}),
            "spec.breakGlass expired at 2020-01-01T00:00:00Z",
        ),
    ] {
        let err = api
            .patch("e2e-floor", &dry, &Patch::Apply(body("e2e-floor", spec)))
            .await
            .expect_err("below the floor");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    api.patch(
        "e2e-floor",
        &dry,
        &Patch::Apply(body(
            "e2e-floor",
            json!({"mode": "Warn", "breakGlass": {"reason": "INC-1", "expires": "2999-01-01T00:00:00Z"}}),
        )),
    )
    .await
    .expect("a break-glass lift is accepted");
    // The default policy may not stop guarding lumie-dev.
    let err = api
        .patch(
            "default",
            &dry,
            &Patch::Apply(body("default", json!({"namespaces": [LIVE_NS]}))),
        )
        .await
        .expect_err("dropping lumie-dev");
    assert!(
        err.to_string()
            .contains(r#"spec.namespaces: stops covering "lumie-dev""#),
        "{err}"
    );
}
