//! Test objects shared by the doctor's tables: the chart's server Deployment, the overlay's
//! Service, both webhook configurations, a policy, and a serving pair with its CA.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Node, Pod, Secret, Service};
use lumie_contract::policy::WorkspacePolicySpec;
use serde_json::json;

use super::report::{Check, Status};

pub(crate) fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test object")
}

pub(crate) fn chart_deployment() -> Deployment {
    from(json!({
        "metadata": {"name": "coder", "namespace": "coder"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "lumie-server"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "lumie-server"}},
                "spec": {
                    "serviceAccountName": "coder",
                    "containers": [{
                        "name": "lumie-server",
                        "env": [
                            {"name": "CODER_PG_CONNECTION_URL", "valueFrom": {"secretKeyRef": {"name": "coder-db-secret", "key": "url"}}},
                            {"name": "CODER_OIDC_ISSUER_URL", "value": "https://auth.example/realms/infra"},
                            {"name": "CODER_OIDC_CLIENT_SECRET", "valueFrom": {"secretKeyRef": {"name": "coder-oidc-secret", "key": "client-secret"}}},
                            {"name": "LUMIE_TEMPLATE_FILE", "value": "/etc/lumie-coder/template/template.yaml"}
                        ],
                        "volumeMounts": [{"name": "workspace-template", "mountPath": "/etc/lumie-coder/template"}]
                    }],
                    "volumes": [{"name": "workspace-template", "configMap": {"name": "coder-workspace-template"}}]
                }
            }
        }
    }))
}

pub(crate) fn pod(name: &str, ready: bool, waiting: Option<&str>) -> Pod {
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
    });
    if let Some(w) = waiting {
        status["containerStatuses"] = json!([{"name": "lumie-server", "ready": false, "restartCount": 3,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": w}}}]);
    }
    from(json!({"metadata": {"name": name}, "status": status}))
}

pub(crate) fn secret_with(data: serde_json::Value) -> Secret {
    from(json!({"metadata": {"name": "s"}, "data": data}))
}

pub(crate) fn service(ports: serde_json::Value) -> Service {
    from(json!({
        "metadata": {"name": "dev-workspace"},
        "spec": {"selector": {"app.kubernetes.io/name": "dev-workspace"}, "ports": ports}
    }))
}

pub(crate) fn contract_ports() -> serde_json::Value {
    json!([
        {"name": "tilt", "port": 10350, "targetPort": 10350, "protocol": "TCP"},
        {"name": "code-server", "port": 13337, "targetPort": 13337, "protocol": "TCP"},
        {"name": "agents", "port": 3000, "targetPort": 3000, "protocol": "TCP"}
    ])
}

pub(crate) fn webhook_configs(
    bundle: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let cc = |path: &str| json!({"service": {"name": "lumie-webhook", "namespace": "coder", "path": path}, "caBundle": b64(bundle)});
    let m = from(json!({"metadata": {"name": "lumie-webhook"}, "webhooks": [
        {"name": "mutate-pods.coder.lumie-infra.com", "clientConfig": cc("/mutate"), "sideEffects": "None", "admissionReviewVersions": ["v1"]}
    ]}));
    let v = from(json!({"metadata": {"name": "lumie-webhook"}, "webhooks": [
        {"name": "validate-pods.coder.lumie-infra.com", "clientConfig": cc("/validate"), "sideEffects": "None", "admissionReviewVersions": ["v1"]},
        {"name": "validate-policies.coder.lumie-infra.com", "clientConfig": {"url": "https://127.0.0.1:8443/validate"}, "sideEffects": "None", "admissionReviewVersions": ["v1"]}
    ]}));
    (m, v)
}

pub(crate) fn policy(edit: impl FnOnce(&mut WorkspacePolicySpec)) -> WorkspacePolicySpec {
    let mut p = WorkspacePolicySpec::contract_default();
    edit(&mut p);
    p
}

/// Secret data: base64 in JSON, as `ByteString` deserializes it.
pub(crate) fn b64(s: &str) -> serde_json::Value {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap()
}

/// A CA, a serving certificate it signed for `lumie-webhook.coder.svc`, and another CA.
pub(crate) struct Pki {
    /// The CA's certificate (PEM), the caBundle that verifies the serving certificate.
    pub(crate) ca_pem: String,
    /// A CA that did not sign it.
    pub(crate) other_ca_pem: String,
    /// Secret `lumie-webhook-tls` with the serving certificate as `tls.crt`.
    pub(crate) tls: Secret,
}

pub(crate) fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test-ca");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.clone().self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&params, &ca_key);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["lumie-webhook.coder.svc".to_string()]).unwrap();
    let leaf = leaf_params
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = params.self_signed(&other_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        other_ca_pem: other.pem(),
        tls: from(json!({"metadata": {"name": "lumie-webhook-tls"},
            "data": {"tls.crt": b64(&leaf.pem())}})),
    }
}

/// A Ready node with room (4 CPU, 8Gi, 10 pods), `extra` merged in.
pub(crate) fn node(name: &str, extra: serde_json::Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    });
    json_merge(&mut n, extra);
    from(n)
}

fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// One table row's verdict: the status, and the words the summary must hold.
pub(crate) fn assert_verdict(case: &str, c: &Check, status: Status, text: &str) {
    assert_eq!(c.status, status, "{case}: {c:?}");
    assert!(
        c.summary.contains(text),
        "{case}: {:?} lacks {text:?}",
        c.summary
    );
}

/// The server container's environment of a Deployment.
pub(crate) fn server_env(d: &mut Deployment) -> &mut Vec<EnvVar> {
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .env
        .as_mut()
        .unwrap()
}
