//! Registers lumie-webhook with the harness apiserver, the way the chart does, but with a
//! `url` on loopback instead of a Service: the real apiserver calls the real webhook over TLS.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use lumie_contract::{policy, workspace};

use crate::HarnessError;

/// Name of both webhook configurations.
pub const CONFIGURATION_NAME: &str = "lumie-webhook";

/// Creates or replaces the Mutating- and ValidatingWebhookConfiguration pointing at `base_url`
/// (`https://127.0.0.1:PORT`), trusting `ca_pem`, guarding `namespaces` (default `[lumie-dev]`).
pub async fn register_webhooks(
    client: &Client,
    base_url: &str,
    ca_pem: &str,
    namespaces: &[&str],
) -> Result<(), HarnessError> {
    let namespaces = if namespaces.is_empty() {
        vec![workspace::NAMESPACE.to_string()]
    } else {
        namespaces.iter().map(|s| s.to_string()).collect()
    };
    let selector = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "In".into(),
            values: Some(namespaces),
        }]),
        match_labels: None,
    };
    let client_config = |path: &str| WebhookClientConfig {
        url: Some(format!("{base_url}{path}")),
        ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
        service: None,
    };
    let pod_rule = RuleWithOperations {
        api_groups: Some(vec!["".into()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
        resources: Some(vec!["pods".into(), "pods/ephemeralcontainers".into()]),
        scope: Some("Namespaced".into()),
    };
    // exec, attach and port-forward into workspace pods: the webhook lets only the control
    // plane, admins and the workspace's own pod in.
    let connect_rule = RuleWithOperations {
        api_groups: Some(vec!["".into()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(vec!["CONNECT".into()]),
        resources: Some(vec![
            "pods/exec".into(),
            "pods/attach".into(),
            "pods/portforward".into(),
        ]),
        scope: Some("Namespaced".into()),
    };
    let policy_rule = RuleWithOperations {
        api_groups: Some(vec![policy::GROUP.into()]),
        api_versions: Some(vec![policy::VERSION.into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
        resources: Some(vec!["workspacepolicies".into()]),
        scope: Some("Cluster".into()),
    };
    let mutating = MutatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![MutatingWebhook {
            name: "mutate-pods.coder.lumie-infra.com".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("IfNeeded".into()),
            namespace_selector: Some(selector.clone()),
            rules: Some(vec![pod_rule.clone()]),
            client_config: client_config("/mutate"),
            ..Default::default()
        }]),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![
            ValidatingWebhook {
                name: "validate-pods.coder.lumie-infra.com".into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: "None".into(),
                failure_policy: Some("Fail".into()),
                timeout_seconds: Some(10),
                namespace_selector: Some(selector),
                rules: Some(vec![pod_rule, connect_rule]),
                client_config: client_config("/validate"),
                ..Default::default()
            },
            ValidatingWebhook {
                name: "validate-policies.coder.lumie-infra.com".into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: "None".into(),
                failure_policy: Some("Fail".into()),
                timeout_seconds: Some(10),
                rules: Some(vec![policy_rule]),
                client_config: client_config("/validate"),
                ..Default::default()
            },
        ]),
    };
    let pp = PatchParams::apply("lumie-harness").force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION_NAME,
            &pp,
            &Patch::Apply(with_kind(&mutating, "MutatingWebhookConfiguration")),
        )
        .await
        .map_err(|e| HarnessError::Kube("registering the mutating webhook".into(), e))?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION_NAME,
            &pp,
            &Patch::Apply(with_kind(&validating, "ValidatingWebhookConfiguration")),
        )
        .await
        .map_err(|e| HarnessError::Kube("registering the validating webhook".into(), e))?;
    Ok(())
}

/// Removes both webhook configurations (absent ones are fine).
pub async fn unregister_webhooks(client: &Client) {
    let dp = Default::default();
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION_NAME, &dp)
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION_NAME, &dp)
        .await;
}

fn meta() -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(CONFIGURATION_NAME.into()),
        ..Default::default()
    }
}

fn with_kind<T: serde::Serialize>(obj: &T, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("webhook configuration serializes");
    v["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    v["kind"] = kind.into();
    v
}

/// Where a started webhook reads its policies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policies<'a> {
    /// Watched from the cluster, with the `WorkspacePolicy` CRD installed first (as the chart
    /// runs it); guarding `lumie-dev`.
    Watch,
    /// A file holding the contract default for `namespaces`, and no CRD: for stacks whose
    /// tests guard namespaces of their own and never change a policy.
    File(&'a [&'a str]),
}

/// Starts the real lumie-webhook on loopback (a serving certificate from the harness CA written
/// into `dir`, policies watched from the cluster, the harness's control plane as the identity
/// it stamps on workspace pods) and registers it for `lumie-dev`, with the `WorkspacePolicy` CRD
/// installed: what every end-to-end stack with real workspace pods needs.
pub async fn start_registered_webhook(
    cluster: &crate::Cluster,
    dir: &std::path::Path,
) -> Result<lumie_webhook::server::RunningServer, HarnessError> {
    start_webhook(cluster, dir, Policies::Watch).await
}

/// [`start_registered_webhook`] with its policies from `policies`, registered for the
/// namespaces they guard.
pub async fn start_webhook(
    cluster: &crate::Cluster,
    dir: &std::path::Path,
    policies: Policies<'_>,
) -> Result<lumie_webhook::server::RunningServer, HarnessError> {
    use lumie_webhook::server::PolicySource;
    use std::net::{IpAddr, Ipv4Addr};
    let admin = cluster.client().await;
    let pair = cluster
        .ca()
        .issue_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 1)
        .map_err(|e| HarnessError::Credentials(format!("the webhook's serving cert: {e}")))?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &pair.cert_pem).map_err(crate::io_error("writing the webhook cert"))?;
    lumie_webhook::certs::write_private(&key, &pair.key_pem)
        .map_err(|e| HarnessError::Webhook(format!("writing its key: {e}")))?;
    let (source, namespaces) = match policies {
        Policies::Watch => {
            crate::bootstrap::install_policy_crd(&admin).await?;
            (PolicySource::Watch(admin.clone()), &[][..])
        }
        Policies::File(namespaces) => {
            let file = dir.join("policy.yaml");
            let default = serde_json::json!({ "namespaces": namespaces });
            std::fs::write(&file, default.to_string())
                .map_err(crate::io_error("writing the webhook's policy file"))?;
            (PolicySource::File(file), namespaces)
        }
    };
    let loopback = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut config = lumie_webhook::server::ServeConfig::new(loopback, loopback, cert, key);
    config.policy = source;
    // The server's identity in the harness: the webhook stamps it on the pods it creates, and
    // the server trusts only pods carrying it.
    config.identities.control_plane = vec![crate::Identity::ControlPlane.username().into()];
    let webhook = lumie_webhook::server::start(config)
        .await
        .map_err(|e| HarnessError::Webhook(format!("cannot start: {e}")))?;
    register_webhooks(
        &admin,
        &format!("https://127.0.0.1:{}", webhook.addr.port()),
        cluster.ca().cert_pem(),
        namespaces,
    )
    .await?;
    Ok(webhook)
}
