//! Start-up checks of the kube API: reachable, and the control plane allowed to do its job in
//! the workspace namespace. Each failure is one line saying what to check.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::error::{StartupError, StartupResult};

/// What the control plane must be allowed to do in the workspace namespace:
/// (verb, resource, object name for name-scoped rules).
pub const REQUIRED_ACCESS: &[(&str, &str, Option<&str>)] = &[
    ("create", "pods", None),
    ("delete", "pods", None),
    ("patch", "pods", None),
    ("list", "pods", None),
    ("watch", "pods", None),
    ("create", "persistentvolumeclaims", None),
    ("delete", "persistentvolumeclaims", None),
    ("patch", "persistentvolumeclaims", None),
    ("watch", "persistentvolumeclaims", None),
    ("create", "secrets", None),
    ("delete", "secrets", None),
    ("patch", "secrets", None),
    ("get", "secrets", None),
    ("watch", "secrets", None),
    ("watch", "events", None),
    (
        "get",
        "services",
        Some(lumie_contract::workspace::STABLE_SERVICE),
    ),
    ("get", "serviceaccounts", Some("dev-workspace")),
];

/// Builds the kube client from the in-cluster service account or `KUBECONFIG`.
pub async fn kube_client() -> StartupResult<Client> {
    Client::try_default().await.map_err(|e| {
        StartupError::Kube(format!(
            "no kube API configuration: {e} — run in-cluster with a ServiceAccount token, or set KUBECONFIG"
        ))
    })
}

/// Lists pods in `namespace` (reachability and read access), then asks a
/// SelfSubjectAccessReview for each of [`REQUIRED_ACCESS`].
pub async fn check_kube(client: &Client, namespace: &str) -> StartupResult<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if let Err(e) = pods.list_metadata(&ListParams::default().limit(1)).await {
        return Err(StartupError::Kube(match e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "the kube API forbids listing pods in namespace {namespace}: {} — check the Role/RoleBinding of the coder ServiceAccount in {namespace}",
                s.message
            ),
            kube::Error::Api(s) if s.code == 404 => format!(
                "namespace {namespace} not found — create it (lumie-dev overlay) or fix LUMIE_WORKSPACE_NAMESPACE"
            ),
            other => format!(
                "kube API unreachable: {other} — check KUBECONFIG / the in-cluster API address and network policy"
            ),
        }));
    }
    let denied: Vec<String> = denied_access(client, namespace, "", REQUIRED_ACCESS)
        .await?
        .into_iter()
        .map(|(verb, resource)| format!("{verb} {resource}"))
        .collect();
    if denied.is_empty() {
        Ok(())
    } else {
        Err(StartupError::Kube(format!(
            "the control plane may not {} in namespace {namespace} — check the Role/RoleBinding of the coder ServiceAccount",
            denied.join(", ")
        )))
    }
}

/// Asks a SelfSubjectAccessReview for each (verb, resource, object name) of `wanted` in
/// `namespace` and API `group` ("" for the core group); returns the (verb, resource) pairs
/// refused. Every start-up permission check goes through here.
pub async fn denied_access<'a>(
    client: &Client,
    namespace: &str,
    group: &str,
    wanted: &[(&'a str, &'a str, Option<&'a str>)],
) -> StartupResult<Vec<(&'a str, &'a str)>> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for &(verb, resource, name) in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    name: name.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                StartupError::Kube(format!(
                    "SelfSubjectAccessReview failed: {e} — check that the kube API is reachable and authentication works"
                ))
            })?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push((verb, resource));
        }
    }
    Ok(denied)
}
