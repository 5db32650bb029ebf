//! The policy API end to end (issue 6, "Platform admins setting policy"): lumie-server running
//! as the control plane's ServiceAccount (granted the chart's WorkspacePolicy ClusterRole)
//! against the harness's real kube-apiserver, reached over HTTP.
//!
//! One test, in order, because every step reads or writes the one cluster-scoped policy
//! `default`: the built-in default before any object exists, a write that creates it, a read
//! from the cluster, a stale write refused by the apiserver's precondition (409), invalid
//! policies refused with `validate()`'s messages (400), members refused (403), and the audit
//! log holding each change with before and after.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use lumie_contract::policy::{
    DEFAULT_POLICY_NAME, PolicyMode, WorkspacePolicy, WorkspacePolicySpec,
};
use lumie_server::model::AuditEntry;
use lumie_server::policy_api::{PolicyJson, PolicySource};
use lumie_tests::{Cluster, bootstrap, control_plane};
use serde_json::{Value, json};

/// The chart's `lumie-coder-server-policies` grant (with `rbac.policyWrite`), for the harness's
/// control-plane identity.
async fn grant_policy_write(admin: &kube::Client) {
    let pp = PatchParams::apply("lumie-tests").force();
    let role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "lumie-coder-server-policies"},
        "rules": [{
            "apiGroups": ["coder.lumie-infra.com"],
            "resources": ["workspacepolicies"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }],
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .patch("lumie-coder-server-policies", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "lumie-coder-server-policies"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "lumie-coder-server-policies",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": "coder"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("lumie-coder-server-policies", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}

struct Caller {
    url: String,
    http: reqwest::Client,
}

impl Caller {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("Coder-Session-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_read_and_write_the_cluster_policy_with_conflicts_validation_and_audit() {
    let cluster = Cluster::shared();
    let admin_kube = cluster.client().await;
    bootstrap::install_policy_crd(&admin_kube).await.unwrap();
    grant_policy_write(&admin_kube).await;
    let policies = Api::<WorkspacePolicy>::all(admin_kube.clone());

    let work = tempfile::tempdir().unwrap();
    let config = control_plane::server_config(&work.path().join("server")).unwrap();
    let url = config.access_url.clone();
    let server = control_plane::start_server(cluster, config)
        .await
        .expect("lumie-server starts");
    let admin = server.first_admin_token.clone().unwrap();
    let api = Caller {
        url,
        http: reqwest::Client::new(),
    };

    // No object yet: the built-in default, without a version.
    let (status, body) = api.call("GET", "/api/v2/policy", &admin, None).await;
    assert_eq!(status, 200, "{body}");
    let got: PolicyJson = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(got.source, PolicySource::Builtin);
    assert_eq!(got.spec, WorkspacePolicySpec::contract_default());
    assert!(body.get("resourceVersion").is_none(), "{body}");

    // Write mode Warn: the object exists in the cluster, owned by lumie-server.
    let mut warn = WorkspacePolicySpec::contract_default();
    warn.mode = PolicyMode::Warn;
    let (status, body) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &admin,
            Some(json!({ "spec": warn })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let written: PolicyJson = serde_json::from_value(body).unwrap();
    assert_eq!(written.source, PolicySource::Cluster);
    assert_eq!(written.spec.mode, PolicyMode::Warn);
    let rv1 = written.resource_version.clone().expect("a version");
    let obj = policies.get(DEFAULT_POLICY_NAME).await.unwrap();
    assert_eq!(obj.spec.mode, PolicyMode::Warn);
    let managers: Vec<_> = obj
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "lumie-server"), "{managers:?}");

    // GET reads it back from the cluster.
    let (status, body) = api.call("GET", "/api/v2/policy", &admin, None).await;
    assert_eq!(status, 200, "{body}");
    let got: PolicyJson = serde_json::from_value(body).unwrap();
    assert_eq!(got.source, PolicySource::Cluster);
    assert_eq!(got.spec, warn);
    assert_eq!(got.resource_version.as_deref(), Some(rv1.as_str()));

    // A write at the current version succeeds and moves the version on.
    let mut audit_mode = warn.clone();
    audit_mode.mode = PolicyMode::Audit;
    let (status, body) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &admin,
            Some(json!({ "spec": audit_mode, "resourceVersion": rv1 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rv2 = serde_json::from_value::<PolicyJson>(body)
        .unwrap()
        .resource_version
        .unwrap();
    assert_ne!(rv1, rv2);

    // A write at the old version (someone changed it since): 409, and nothing changes.
    let (status, body) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &admin,
            Some(
                json!({ "spec": WorkspacePolicySpec::contract_default(), "resourceVersion": rv1 }),
            ),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("changed since you read it") && message.contains(&rv1),
        "{message}"
    );
    assert_eq!(
        policies.get(DEFAULT_POLICY_NAME).await.unwrap().spec.mode,
        PolicyMode::Audit
    );

    // Invalid policies: 400 with every problem validate() names, and nothing changes.
    let mut bad = WorkspacePolicySpec::contract_default();
    bad.namespaces.clear();
    bad.privileged_containers[0].images = vec!["docker:[dind".into()];
    let problems = bad
        .validate(k8s_openapi::jiff::Timestamp::now())
        .unwrap_err();
    let (status, body) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &admin,
            Some(json!({ "spec": bad })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    for p in &problems {
        assert!(message.contains(p.as_str()), "{p:?} missing from {message}");
    }
    let (status, body) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &admin,
            Some(json!({ "spec": { "mode": "Sometimes" } })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant"),
        "{body}"
    );
    assert_eq!(
        policies.get(DEFAULT_POLICY_NAME).await.unwrap().spec.mode,
        PolicyMode::Audit
    );

    // Members: 403 both ways.
    let (status, _) = api
        .call(
            "POST",
            "/api/v2/users",
            &admin,
            Some(json!({ "username": "bob" })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, key) = api
        .call("POST", "/api/v2/users/bob/keys", &admin, None)
        .await;
    assert_eq!(status, 201, "{key}");
    let member = key["key"].as_str().unwrap().to_string();
    assert_eq!(
        api.call("GET", "/api/v2/policy", &member, None).await.0,
        403
    );
    let (status, _) = api
        .call(
            "PUT",
            "/api/v2/policy",
            &member,
            Some(json!({ "spec": warn })),
        )
        .await;
    assert_eq!(status, 403);

    // The audit log: the two accepted changes, newest first, with before and after.
    let (status, body) = api
        .call("GET", "/api/v2/audit?action=policy.update", &admin, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let entries: Vec<AuditEntry> = serde_json::from_value(body).unwrap();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let spec_of = |s: &Option<String>| -> Option<WorkspacePolicySpec> {
        s.as_deref().map(|j| serde_json::from_str(j).unwrap())
    };
    let mut entries = entries;
    entries.sort_by_key(|e| e.id);
    let (created, changed) = (&entries[0], &entries[1]);
    for e in [created, changed] {
        assert_eq!(e.actor_name, "admin");
        assert!(e.client_ip.is_some(), "{e:?}");
    }
    assert_eq!(spec_of(&created.before), None);
    assert_eq!(spec_of(&created.after), Some(warn.clone()));
    assert_eq!(spec_of(&changed.before), Some(warn));
    assert_eq!(spec_of(&changed.after), Some(audit_mode));

    policies
        .delete(DEFAULT_POLICY_NAME, &Default::default())
        .await
        .unwrap();
    server.shutdown().await;
}
