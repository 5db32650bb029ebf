//! The admission webhook: both configurations, their caBundle against the serving certificate
//! of the webhook's TLS Secret, and the apiserver's answer to a dry-run workspace pod (which
//! this module builds). Pure over the objects read.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use lumie_contract::{labels, workspace};
use serde_json::json;

use super::certs::{EXPIRY_WARNING_DAYS, verify_serving_cert};
use super::checks::id;
use super::report::Check;

/// One webhook of a configuration, as the doctor reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEntry {
    /// `MutatingWebhookConfiguration` or `ValidatingWebhookConfiguration`.
    pub kind: &'static str,
    /// The webhook's name.
    pub name: String,
    /// Its caBundle (PEM), if set.
    pub ca_bundle: Option<Vec<u8>>,
    /// The host the apiserver dials: `<service>.<namespace>.svc`, or the URL's host.
    pub host: Option<String>,
}

fn client_host(cc: &WebhookClientConfig) -> Option<String> {
    if let Some(s) = &cc.service {
        return Some(format!("{}.{}.svc", s.name, s.namespace));
    }
    let url = reqwest::Url::parse(cc.url.as_deref()?).ok()?;
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// The webhooks of both configurations, in order.
pub fn webhook_entries(
    mutating: Option<&MutatingWebhookConfiguration>,
    validating: Option<&ValidatingWebhookConfiguration>,
) -> Vec<WebhookEntry> {
    let entry = |kind, name: &str, cc: &WebhookClientConfig| WebhookEntry {
        kind,
        name: name.to_string(),
        ca_bundle: cc.ca_bundle.as_ref().map(|b| b.0.clone()),
        host: client_host(cc),
    };
    let mut out = Vec::new();
    for w in mutating
        .and_then(|m| m.webhooks.as_ref())
        .into_iter()
        .flatten()
    {
        out.push(entry(
            "MutatingWebhookConfiguration",
            &w.name,
            &w.client_config,
        ));
    }
    for w in validating
        .and_then(|v| v.webhooks.as_ref())
        .into_iter()
        .flatten()
    {
        out.push(entry(
            "ValidatingWebhookConfiguration",
            &w.name,
            &w.client_config,
        ));
    }
    out
}

/// Both webhook configurations exist and carry webhooks.
pub fn webhook_configurations(
    name: &str,
    namespace: &str,
    mutating: Option<&MutatingWebhookConfiguration>,
    validating: Option<&ValidatingWebhookConfiguration>,
) -> Check {
    let count_m = mutating.map(|m| m.webhooks.as_ref().map_or(0, Vec::len));
    let count_v = validating.map(|v| v.webhooks.as_ref().map_or(0, Vec::len));
    let mut missing = Vec::new();
    for (kind, count) in [
        ("MutatingWebhookConfiguration", count_m),
        ("ValidatingWebhookConfiguration", count_v),
    ] {
        match count {
            None => missing.push(format!("{kind} {name} not found")),
            Some(0) => missing.push(format!("{kind} {name} has no webhooks")),
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        Check::ok(
            id::WEBHOOK_CONFIGURATIONS,
            format!(
                "MutatingWebhookConfiguration {name} ({} webhook(s)) and ValidatingWebhookConfiguration {name} ({} webhook(s)) present",
                count_m.unwrap_or(0),
                count_v.unwrap_or(0)
            ),
        )
    } else {
        Check::failure(
            id::WEBHOOK_CONFIGURATIONS,
            missing.join("; "),
            format!(
                "helm upgrade --install lumie-coder charts/lumie-coder -n {namespace} (webhook.enabled=true); without them lumie-dev pods are not guarded"
            ),
        )
    }
}

/// Every webhook's caBundle verifies the serving certificate (`tls.crt`) of the webhook's
/// TLS Secret, for the host the apiserver dials.
pub fn webhook_ca_bundle(
    entries: &[WebhookEntry],
    namespace: &str,
    secret_name: &str,
    secret: Option<&Secret>,
    now_unix: i64,
) -> Check {
    let fix = format!(
        "make the caBundle the CA of Secret {namespace}/{secret_name}: selfSigned mode — helm upgrade lumie-coder (it reuses the pair); existingSecret mode — set webhook.tls.caBundle to base64 of its CA (ca-bundle.b64 from lumie-webhook certs generate); certManager mode — check the Certificate and cainjector"
    );
    if entries.is_empty() {
        return Check::warning(
            id::WEBHOOK_CA_BUNDLE,
            "no webhooks to check (see webhook-configurations)",
            "fix webhook-configurations first",
        );
    }
    let Some(secret) = secret else {
        return Check::failure(
            id::WEBHOOK_CA_BUNDLE,
            format!("the webhook's TLS Secret {namespace}/{secret_name} not found"),
            fix,
        );
    };
    let Some(cert) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return Check::failure(
            id::WEBHOOK_CA_BUNDLE,
            format!("Secret {namespace}/{secret_name} has no tls.crt"),
            fix,
        );
    };
    let mut problems = Vec::new();
    let mut trusted = Vec::new();
    for e in entries {
        let who = format!("{} webhook {}", e.kind, e.name);
        let Some(bundle) = e.ca_bundle.as_deref().filter(|b| !b.is_empty()) else {
            problems.push(format!(
                "{who} has no caBundle (cert-manager's cainjector has not filled it?)"
            ));
            continue;
        };
        let Some(host) = &e.host else {
            problems.push(format!("{who} has neither a service nor a url"));
            continue;
        };
        match verify_serving_cert(bundle, &cert.0, host, now_unix) {
            Ok(t) => trusted.push(t),
            Err(why) => problems.push(format!("{who}: {why}")),
        }
    }
    if !problems.is_empty() {
        return Check::failure(id::WEBHOOK_CA_BUNDLE, problems.join("; "), fix);
    }
    let days_left = trusted.iter().map(|t| t.days_left).min().unwrap_or(0);
    let summary = format!(
        "the caBundle of {} webhook(s) verifies tls.crt of Secret {namespace}/{secret_name} (signed by {}, expires in {days_left} days)",
        entries.len(),
        trusted[0].signed_by
    );
    if days_left < EXPIRY_WARNING_DAYS {
        Check::warning(
            id::WEBHOOK_CA_BUNDLE,
            summary,
            "rotate the serving certificate before it expires (certs/README.md)",
        )
    } else {
        Check::ok(id::WEBHOOK_CA_BUNDLE, summary)
    }
}

/// What a server-side dry-run create of a compliant workspace pod came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Admitted; whether the mutating webhook changed it (added the node anti-affinity).
    Admitted {
        /// The mutation is visible in the returned pod.
        mutated: bool,
    },
    /// The apiserver could not call the webhook (down, unreachable, TLS refused).
    CallFailed(String),
    /// The webhook answered, and denied a pod that meets the contract.
    Denied(String),
    /// Refused before the webhook (missing ServiceAccount, RBAC), or not tried.
    NotProbed(String),
}

/// Sorts an apiserver error message of the dry-run create.
pub fn classify_probe_error(message: &str) -> ProbeOutcome {
    if message.contains("failed calling webhook") {
        ProbeOutcome::CallFailed(message.to_string())
    } else if message.contains("admission webhook") && message.contains("denied the request") {
        ProbeOutcome::Denied(message.to_string())
    } else {
        ProbeOutcome::NotProbed(message.to_string())
    }
}

/// The webhook answers the apiserver.
pub fn webhook_answering(workspace_namespace: &str, outcome: &ProbeOutcome) -> Check {
    let id = id::WEBHOOK_ANSWERING;
    match outcome {
        ProbeOutcome::Admitted { mutated: true } => Check::ok(
            id,
            format!(
                "a compliant workspace pod passes admission in {workspace_namespace} (server-side dry-run): the apiserver called the webhook, which mutated it"
            ),
        ),
        ProbeOutcome::Admitted { mutated: false } => Check::warning(
            id,
            format!(
                "a workspace pod dry-run in {workspace_namespace} was admitted without mutation: the mutating webhook was not called"
            ),
            format!(
                "check the MutatingWebhookConfiguration's namespaceSelector matches namespace {workspace_namespace} (label kubernetes.io/metadata.name) and its failurePolicy"
            ),
        ),
        ProbeOutcome::CallFailed(msg) => Check::failure(
            id,
            format!("the apiserver cannot call the webhook: {msg}"),
            "check the webhook Deployment's pods are Ready, its Service has endpoints, no NetworkPolicy blocks the apiserver, and webhook-ca-bundle",
        ),
        ProbeOutcome::Denied(msg) => Check::failure(
            id,
            format!("the webhook answers but denies a compliant workspace pod: {msg}"),
            "check the WorkspacePolicy in force: kubectl get workspacepolicies -o yaml",
        ),
        ProbeOutcome::NotProbed(msg) => Check::warning(
            id,
            format!("could not probe the webhook with a dry-run pod: {msg}"),
            "fix what the message names (often the dev-workspace ServiceAccount), then re-run",
        ),
    }
}

/// The name of the Secret the webhook pods mount their certificate from: the `tls` volume of
/// the webhook Deployment (or its only Secret volume), else the chart's `<name>-tls`.
pub fn webhook_tls_secret(deploy: Option<&Deployment>, webhook_name: &str) -> String {
    let volumes = deploy
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let secret_of = |v: &k8s_openapi::api::core::v1::Volume| {
        v.secret.as_ref().and_then(|s| s.secret_name.clone())
    };
    volumes
        .iter()
        .find(|v| v.name == "tls")
        .and_then(secret_of)
        .or_else(|| {
            let secrets: Vec<String> = volumes.iter().filter_map(secret_of).collect();
            (secrets.len() == 1).then(|| secrets[0].clone())
        })
        .unwrap_or_else(|| format!("{webhook_name}-tls"))
}

/// A compliant workspace pod for a server-side dry-run create: workspace labels, the
/// policy's ServiceAccount, Pod Security baseline everywhere (no privilege: the doctor is not a
/// workspace creator), and no affinity, so the mutating webhook's work shows in the answer.
pub fn probe_pod(namespace: &str, service_account: &str, dind_image: &str) -> Pod {
    let container = |name: &str, image: &str| {
        json!({
            "name": name, "image": image,
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}
        })
    };
    serde_json::from_value(json!({
        "metadata": {
            "generateName": "lumie-doctor-probe-",
            "namespace": namespace,
            "labels": {
                labels::APP_NAME: labels::APP_NAME_WORKSPACE,
                labels::MANAGED_BY: labels::MANAGED_BY_LUMIE
            }
        },
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "containers": [
                container(workspace::CONTAINER_DEV, "busybox"),
                container(workspace::CONTAINER_AGENTS, "busybox"),
                container(workspace::CONTAINER_DIND, dind_image)
            ]
        }
    }))
    .expect("the probe pod is a valid Pod")
}

/// Whether the pod carries a required node affinity: what the mutating webhook adds.
pub fn has_required_node_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|r| !r.node_selector_terms.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::*;
    use crate::doctor::report::Status;
    use serde_json::json;

    #[test]
    fn probe_error_classification() {
        let cases = [
            (
                r#"Internal error occurred: failed calling webhook "mutate-pods.coder.lumie-infra.com": Post "https://lumie-webhook.coder.svc:443/mutate?timeout=10s": x509: certificate signed by unknown authority"#,
                "call",
            ),
            (
                r#"admission webhook "validate-pods.coder.lumie-infra.com" denied the request: container "dind": securityContext.privileged=true is not allowed"#,
                "denied",
            ),
            (
                r#"pods "lumie-doctor-probe-x" is forbidden: error looking up service account lumie-dev/dev-workspace: serviceaccount "dev-workspace" not found"#,
                "other",
            ),
        ];
        for (msg, want) in cases {
            let got = classify_probe_error(msg);
            let kind = match &got {
                ProbeOutcome::CallFailed(_) => "call",
                ProbeOutcome::Denied(_) => "denied",
                ProbeOutcome::NotProbed(_) => "other",
                ProbeOutcome::Admitted { .. } => "admitted",
            };
            assert_eq!(kind, want, "{msg}");
            let c = webhook_answering("lumie-dev", &got);
            let status = match want {
                "other" => Status::Warning,
                _ => Status::Failure,
            };
            assert_eq!(c.status, status, "{msg}");
            assert!(c.summary.contains(msg), "messages are kept verbatim");
        }
        assert_eq!(
            webhook_answering("lumie-dev", &ProbeOutcome::Admitted { mutated: true }).status,
            Status::Ok
        );
        assert_eq!(
            webhook_answering("lumie-dev", &ProbeOutcome::Admitted { mutated: false }).status,
            Status::Warning
        );
    }

    #[test]
    fn webhook_configurations_and_entries() {
        let (m, v) = webhook_configs("pem");
        let c = webhook_configurations("lumie-webhook", "coder", Some(&m), Some(&v));
        assert_eq!(c.status, Status::Ok);
        assert!(c.summary.contains("(1 webhook(s))") && c.summary.contains("(2 webhook(s))"));
        let c = webhook_configurations("lumie-webhook", "coder", Some(&m), None);
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("ValidatingWebhookConfiguration lumie-webhook not found")
        );

        let entries = webhook_entries(Some(&m), Some(&v));
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].host.as_deref(), Some("lumie-webhook.coder.svc"));
        assert_eq!(entries[0].ca_bundle.as_deref(), Some(&b"pem"[..]));
        assert_eq!(entries[2].host.as_deref(), Some("127.0.0.1"));
        assert_eq!(entries[2].ca_bundle, None);
    }

    #[test]
    fn ca_bundle_verdicts() {
        let Pki {
            ca_pem,
            other_ca_pem,
            tls,
        } = pki();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        let (m, v) = webhook_configs(&ca_pem);
        let entries: Vec<WebhookEntry> = webhook_entries(Some(&m), Some(&v))
            .into_iter()
            .take(2)
            .collect();
        let c = webhook_ca_bundle(&entries, "coder", "lumie-webhook-tls", Some(&tls), now);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.summary.contains(
                "verifies tls.crt of Secret coder/lumie-webhook-tls (signed by CN=test-ca"
            )
        );

        let (m, v) = webhook_configs(&other_ca_pem);
        let entries = webhook_entries(Some(&m), Some(&v));
        let c = webhook_ca_bundle(&entries, "coder", "lumie-webhook-tls", Some(&tls), now);
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary.contains(
                "MutatingWebhookConfiguration webhook mutate-pods.coder.lumie-infra.com: tls.crt"
            ),
            "{c:?}"
        );
        assert!(
            c.summary
                .contains("validate-policies.coder.lumie-infra.com has no caBundle")
        );

        let c = webhook_ca_bundle(&entries, "coder", "lumie-webhook-tls", None, now);
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("Secret coder/lumie-webhook-tls not found")
        );
        assert_eq!(
            webhook_ca_bundle(&[], "coder", "lumie-webhook-tls", None, now).status,
            Status::Warning
        );
    }

    #[test]
    fn tls_secret_comes_from_the_webhook_deployment() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "lumie-webhook"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [], "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "tls", "secret": {"secretName": "my-webhook-tls"}}
            ]}}}
        }))
        .unwrap();
        assert_eq!(
            webhook_tls_secret(Some(&d), "lumie-webhook"),
            "my-webhook-tls"
        );
        assert_eq!(
            webhook_tls_secret(None, "lumie-webhook"),
            "lumie-webhook-tls"
        );
    }

    #[test]
    fn probe_pod_is_a_baseline_workspace_pod_without_affinity() {
        let p = probe_pod("lumie-dev", "dev-workspace", "docker:27-dind");
        let names: Vec<&str> = p
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, workspace::REQUIRED_CONTAINERS);
        assert!(!has_required_node_affinity(&p));
        assert!(
            p.spec
                .as_ref()
                .unwrap()
                .containers
                .iter()
                .all(|c| { c.security_context.as_ref().and_then(|s| s.privileged) != Some(true) })
        );
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(labels::APP_NAME)
                .map(String::as_str),
            Some(labels::APP_NAME_WORKSPACE)
        );
    }
}
