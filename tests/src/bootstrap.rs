//! What a real cluster has before lumie-coder is installed, and what its controllers would do:
//! the `coder` and `lumie-dev` namespaces with their ServiceAccounts and RBAC, the `local-path`
//! StorageClass, and the aggregated `admin`/`edit`/`view` ClusterRoles (filled by
//! kube-controller-manager in a real cluster, absent here).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::HarnessError;
use lumie_contract::workspace;

const MANAGER: &str = "lumie-harness";
/// The Role the control plane's ServiceAccount holds in `lumie-dev`, as the chart grants it.
pub const CONTROL_PLANE_ROLE: &str = "lumie-coder-server";
/// The Role (and binding) the control plane holds in `coder` for its leader Lease, as the chart
/// grants it.
pub const CONTROL_PLANE_LEASES_ROLE: &str = "lumie-coder-server-leases";
/// The ClusterRole (and binding) letting the control plane review agents' tokens, as the
/// chart grants it.
pub const CONTROL_PLANE_TOKEN_REVIEWS: &str = "lumie-coder-server-tokenreviews";

/// Installs everything the tests expect a cluster to have.
pub async fn install(client: &Client) -> Result<(), HarnessError> {
    aggregate_cluster_roles(client).await?;
    create_service_account(client, "default", "default").await?;
    for ns in [workspace::CONTROL_PLANE_NAMESPACE, workspace::NAMESPACE] {
        create_namespace(client, ns).await?;
    }
    create_service_account(client, workspace::CONTROL_PLANE_NAMESPACE, "coder").await?;
    create_service_account(client, workspace::NAMESPACE, "dev-workspace").await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), workspace::NAMESPACE),
        "dev-workspace-admin",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "dev-workspace-admin", "namespace": workspace::NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev-workspace", "namespace": workspace::NAMESPACE}]
        }),
    )
    .await?;
    apply(
        &Api::<Role>::namespaced(client.clone(), workspace::NAMESPACE),
        CONTROL_PLANE_ROLE,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": CONTROL_PLANE_ROLE, "namespace": workspace::NAMESPACE},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["services", "serviceaccounts"],
                 "resourceNames": [workspace::STABLE_SERVICE], "verbs": ["get"]}
            ]
        }),
    )
    .await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), workspace::NAMESPACE),
        CONTROL_PLANE_ROLE,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": CONTROL_PLANE_ROLE, "namespace": workspace::NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROL_PLANE_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": workspace::CONTROL_PLANE_NAMESPACE}]
        }),
    )
    .await?;
    apply(
        &Api::<Role>::namespaced(client.clone(), workspace::CONTROL_PLANE_NAMESPACE),
        CONTROL_PLANE_LEASES_ROLE,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": CONTROL_PLANE_LEASES_ROLE, "namespace": workspace::CONTROL_PLANE_NAMESPACE},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch"]}]
        }),
    )
    .await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), workspace::CONTROL_PLANE_NAMESPACE),
        CONTROL_PLANE_LEASES_ROLE,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": CONTROL_PLANE_LEASES_ROLE, "namespace": workspace::CONTROL_PLANE_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROL_PLANE_LEASES_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": workspace::CONTROL_PLANE_NAMESPACE}]
        }),
    )
    .await?;
    apply(
        &Api::<ClusterRole>::all(client.clone()),
        CONTROL_PLANE_TOKEN_REVIEWS,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": CONTROL_PLANE_TOKEN_REVIEWS},
            "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
        }),
    )
    .await?;
    apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        CONTROL_PLANE_TOKEN_REVIEWS,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROL_PLANE_TOKEN_REVIEWS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROL_PLANE_TOKEN_REVIEWS},
            "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": workspace::CONTROL_PLANE_NAMESPACE}]
        }),
    )
    .await?;
    apply(
        &Api::<StorageClass>::all(client.clone()),
        workspace::HOME_STORAGE_CLASS,
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": workspace::HOME_STORAGE_CLASS},
            "provisioner": "rancher.io/local-path",
            "reclaimPolicy": "Delete",
            // Immediate: the harness's PV binder binds claims as soon as they appear.
            "volumeBindingMode": "Immediate"
        }),
    )
    .await?;
    Ok(())
}

/// Creates a namespace as a modern cluster would: labelled `kubernetes.io/metadata.name`
/// (Kubernetes 1.20 does not add it) and with a `default` ServiceAccount.
pub async fn create_namespace(client: &Client, name: &str) -> Result<(), HarnessError> {
    apply(
        &Api::<Namespace>::all(client.clone()),
        name,
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}
        }),
    )
    .await?;
    create_service_account(client, name, "default").await
}

/// Creates a ServiceAccount (its token Secret is made by the simulator's token controller).
pub async fn create_service_account(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), HarnessError> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("static ServiceAccount");
    let err = |e| HarnessError::Kube(format!("creating ServiceAccount {namespace}/{name}"), e);
    let sa = match api.create(&PostParams::default(), &sa).await {
        Ok(sa) => sa,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await.map_err(err)?,
        Err(e) => return Err(err(e)),
    };
    // Made here too, not only by the token controller's watch, so a pod created right after
    // start-up is never refused for a token that is still on its way.
    crate::simulator::create_token_secret(client, &sa)
        .await
        .map_err(err)
}

async fn apply<K>(api: &Api<K>, name: &str, body: serde_json::Value) -> Result<(), HarnessError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
    .map_err(|e| HarnessError::Kube(format!("applying {name}"), e))
}

/// Fills `view`, then `edit`, then `admin` from the roles labelled to aggregate into them.
async fn aggregate_cluster_roles(client: &Client) -> Result<(), HarnessError> {
    let api = Api::<ClusterRole>::all(client.clone());
    for target in ["view", "edit", "admin"] {
        let roles = api
            .list(&Default::default())
            .await
            .map_err(|e| HarnessError::Kube("listing ClusterRoles".into(), e))?;
        let Some(role) = roles.iter().find(|r| r.name_any() == target) else {
            continue;
        };
        let selectors: Vec<BTreeMap<String, String>> = role
            .aggregation_rule
            .iter()
            .flat_map(|a| a.cluster_role_selectors.iter().flatten())
            .filter_map(|s| s.match_labels.clone())
            .collect();
        let mut rules: Vec<PolicyRule> = Vec::new();
        for r in roles.iter().filter(|r| r.name_any() != target) {
            let labels = r.labels();
            if selectors
                .iter()
                .any(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            {
                for rule in r.rules.iter().flatten() {
                    if !rules.contains(rule) {
                        rules.push(rule.clone());
                    }
                }
            }
        }
        api.patch(
            target,
            &PatchParams::default(),
            &Patch::Merge(json!({ "rules": rules })),
        )
        .await
        .map_err(|e| HarnessError::Kube(format!("aggregating ClusterRole {target}"), e))?;
    }
    Ok(())
}

/// Installs the `WorkspacePolicy` CRD (generated from the contract type) and waits until the
/// apiserver serves it.
pub async fn install_policy_crd(client: &Client) -> Result<(), HarnessError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = lumie_contract::policy::WorkspacePolicy::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| HarnessError::Kube("installing the WorkspacePolicy CRD".into(), e))?;
    for _ in 0..100 {
        let established = crds
            .get(&name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            // Discovery needs a moment after Established before watches and creates work.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(HarnessError::Startup {
        component: "kube-apiserver",
        reason: "the WorkspacePolicy CRD was not established within 10 s".into(),
        log_tail: String::new(),
    })
}
