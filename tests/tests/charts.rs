//! The Helm charts under a real `helm` (v4, from `scripts/install-helm.sh`): lint, render with
//! several value sets, schema rejections of typos; then the rendered manifests applied to the
//! harness apiserver (Kubernetes 1.20): server-side dry-run of every value set, a real install,
//! the CRD established, the webhook configurations accepted and failing closed only in the
//! workspace namespace, and SubjectAccessReviews proving each ServiceAccount's reach.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use lumie_contract::{apps, labels, workspace};
use lumie_tests::tools::helm;
use lumie_tests::{Cluster, Identity};
use serde_json::{Value, json};

const RELEASE: &str = "lumie-coder";
const NAMESPACE: &str = workspace::CONTROL_PLANE_NAMESPACE;
const SERVER_USER: &str = "system:serviceaccount:coder:coder";
const WEBHOOK_USER: &str = "system:serviceaccount:coder:lumie-webhook";
const DEVELOPER_USER: &str = "system:serviceaccount:lumie-dev:dev-workspace";
const MANAGER: &str = "lumie-charts-test";

// ---------------------------------------------------------------------------------------------
// helm, rendering and looking into the output
// ---------------------------------------------------------------------------------------------

fn set_args<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    sets.iter().flat_map(|s| ["--set", *s]).collect()
}

/// `helm lint` of a chart with `--set` values.
fn lint(chart: &str, sets: &[&str]) -> Result<String, String> {
    let path = format!("charts/{chart}");
    let mut args = vec!["lint", path.as_str(), "--strict", "--namespace", NAMESPACE];
    args.extend(set_args(sets));
    helm(&args)
}

/// Renders a chart (CRDs included) into its documents, or the error helm printed.
fn try_render(
    chart: &str,
    kube_version: Option<&str>,
    sets: &[&str],
) -> Result<Vec<Value>, String> {
    let path = format!("charts/{chart}");
    let mut args = vec![
        "template",
        RELEASE,
        path.as_str(),
        "--include-crds",
        "--namespace",
        NAMESPACE,
    ];
    if let Some(v) = kube_version {
        args.extend(["--kube-version", v]);
    }
    args.extend(set_args(sets));
    let out = helm(&args)?;
    Ok(parse_docs(&out))
}

fn render(chart: &str, sets: &[&str]) -> Vec<Value> {
    try_render(chart, None, sets)
        .unwrap_or_else(|e| panic!("helm template {chart} {sets:?} failed:\n{e}"))
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d)
                .expect("helm printed valid YAML");
            serde_json::to_value(v).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn all<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind_of(d) == kind && name_of(d) == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", kind_of(d), name_of(d)))
                .collect();
            panic!("no {kind}/{name} rendered; have {have:?}")
        })
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    env(container, name).unwrap_or_else(|| panic!("env {name} missing"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("env {name} has no literal value"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}

// ---------------------------------------------------------------------------------------------
// helm lint and helm template
// ---------------------------------------------------------------------------------------------

/// The value sets the charts are checked with (lint, render, and dry-run on the apiserver).
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults", vec![]),
        ("cert-manager", vec!["webhook.tls.mode=certManager"]),
        (
            "cert-manager with an issuer",
            vec![
                "webhook.tls.mode=certManager",
                "webhook.tls.certManager.issuerRef.name=lumie-webhook-ca",
                "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
            ],
        ),
        (
            "existing secret",
            vec![
                "webhook.tls.mode=existingSecret",
                "webhook.tls.secretName=my-webhook-tls",
                "webhook.tls.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
            ],
        ),
        (
            "vault, servicemonitor and networkpolicy",
            vec![
                "vault.enabled=true",
                "serviceMonitor.enabled=true",
                "networkPolicy.enabled=true",
            ],
        ),
        (
            "embedded sqlite with persistence and a template",
            vec![
                "server.database.existingSecret=",
                "server.persistence.enabled=true",
                "server.workspaceTemplate.image=ghcr.io/lumie-infra/dev:latest",
            ],
        ),
    ]
}

#[test]
fn both_charts_lint_for_every_value_set() {
    for (what, sets) in value_sets() {
        let out = lint("lumie-coder", &sets)
            .unwrap_or_else(|e| panic!("helm lint lumie-coder ({what}) failed:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{what}: {out}");
    }
    let out = lint("lumie-dev", &[]).unwrap_or_else(|e| panic!("helm lint lumie-dev:\n{e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn value_typos_and_impossible_values_fail_the_install() {
    // (what, values, the word the error must name, whether the schema catches it: helm lint
    // reports template `fail` calls only as info, schema violations as errors).
    let cases: [(&str, &[&str], &str, bool); 9] = [
        (
            "a misspelt server key",
            &["server.acessUrl=https://x"],
            "acessUrl",
            true,
        ),
        (
            "a misspelt top-level key",
            &["webhok.enabled=false"],
            "webhok",
            true,
        ),
        (
            "a misspelt nested key",
            &["webhook.tls.mdoe=selfSigned"],
            "mdoe",
            true,
        ),
        (
            "an unknown failure policy",
            &["webhook.admission.failurePolicy=Sometimes"],
            "failurePolicy",
            true,
        ),
        (
            "a single webhook replica",
            &["webhook.replicas=1"],
            "replicas",
            true,
        ),
        (
            "an unknown TLS mode",
            &["webhook.tls.mode=letsencrypt"],
            "mode",
            true,
        ),
        (
            "existingSecret without a CA bundle",
            &["webhook.tls.mode=existingSecret"],
            "caBundle",
            false,
        ),
        (
            "a misspelt leader key",
            &["server.leader.leaseDuration=15"],
            "leaseDuration",
            true,
        ),
        (
            "a lease renewed less than twice per duration",
            &["server.leader.renewSeconds=10"],
            "renewSeconds",
            false,
        ),
    ];
    for (what, sets, needle, schema) in cases {
        let err = try_render("lumie-coder", None, sets)
            .err()
            .unwrap_or_else(|| panic!("{what} ({sets:?}) rendered, it must fail"));
        assert!(
            err.contains(needle),
            "{what}: the error should name {needle:?}:\n{err}"
        );
        if schema {
            assert!(
                lint("lumie-coder", sets).is_err(),
                "{what}: helm lint must fail too"
            );
        }
    }
    let err = try_render("lumie-dev", None, &["service.prots[0].port=1"])
        .expect_err("a typo in lumie-dev values must fail");
    assert!(err.contains("prots"), "{err}");
}

#[test]
fn server_deployment_keeps_the_old_configuration() {
    let docs = render("lumie-coder", &[]);
    let deploy = find(&docs, "Deployment", "coder");
    assert_eq!(deploy["metadata"]["namespace"], NAMESPACE);
    let c = container(deploy, "lumie-server");
    assert_eq!(
        env_value(c, "CODER_ACCESS_URL"),
        "https://coder.lumie-infra.com"
    );
    assert_eq!(
        env_value(c, "CODER_WILDCARD_ACCESS_URL"),
        "",
        "path-based apps only"
    );
    assert_eq!(
        env_value(c, "CODER_OIDC_ISSUER_URL"),
        "https://auth.lumie-edu.com/realms/infra"
    );
    assert_eq!(env_value(c, "CODER_OIDC_CLIENT_ID"), "coder");
    assert_eq!(
        env_value(c, "CODER_PROXY_TRUSTED_HEADERS"),
        "X-Forwarded-For"
    );
    // No trusted proxy unless the operator names Teleport's (any pod in a default range could
    // write the audit log's client IP); a named one reaches the server.
    assert_eq!(env_value(c, "CODER_PROXY_TRUSTED_ORIGINS"), "");
    let named = render(
        "lumie-coder",
        &["server.proxy.trustedOrigins={10.42.7.0/28,10.42.9.3}"],
    );
    assert_eq!(
        env_value(
            container(find(&named, "Deployment", "coder"), "lumie-server"),
            "CODER_PROXY_TRUSTED_ORIGINS"
        ),
        "10.42.7.0/28,10.42.9.3"
    );
    assert_eq!(env_value(c, "LUMIE_LISTEN_ADDR"), "0.0.0.0:8080");
    assert_eq!(
        env_value(c, "LUMIE_WORKSPACE_NAMESPACE"),
        workspace::NAMESPACE
    );
    assert_eq!(env_value(c, "LUMIE_AGENT_URL"), workspace::IN_CLUSTER_URL);
    let db = env(c, "CODER_PG_CONNECTION_URL").expect("database URL from a Secret");
    assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "coder-db-secret");
    let oidc = env(c, "CODER_OIDC_CLIENT_SECRET").expect("OIDC secret from a Secret");
    assert_eq!(
        oidc["valueFrom"]["secretKeyRef"]["name"],
        "coder-oidc-secret"
    );
    assert!(
        env(c, "LUMIE_TEMPLATE_FILE").is_none(),
        "built-in template by default"
    );

    // Service coder: 80 → the container's 8080.
    let svc = find(&docs, "Service", "coder");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 80);
    let target = port["targetPort"].as_str().expect("named target port");
    let cport = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == target)
        .expect("the Service's target port exists in the container");
    assert_eq!(cport["containerPort"], 8080);
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k} matches the pods");
    }

    // Hardened: non-root, read-only root, no capabilities, RuntimeDefault seccomp, and the
    // probes on /healthz and /readyz.
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "coder");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The writable places a read-only root needs.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains(&"/tmp") && mounts.contains(&"/var/lib/lumie-coder"),
        "{mounts:?}"
    );
}

/// The notes `helm install` prints (a client-side dry run: no cluster needed).
fn install_notes(sets: &[&str]) -> String {
    let mut args = vec![
        "install",
        RELEASE,
        "charts/lumie-coder",
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
    ];
    args.extend(set_args(sets));
    let out = helm(&args).unwrap_or_else(|e| panic!("helm install --dry-run {sets:?}:\n{e}"));
    out.split_once("NOTES:")
        .map(|(_, notes)| notes.to_string())
        .unwrap_or_else(|| panic!("no NOTES in:\n{out}"))
}

#[test]
fn install_notes_warn_until_a_trusted_proxy_is_named() {
    let notes = install_notes(&[]);
    assert!(
        notes.contains("Warning:")
            && notes.contains("CODER_PROXY_TRUSTED_ORIGINS")
            && notes.contains("server.proxy.trustedOrigins"),
        "{notes}"
    );
    let notes = install_notes(&["server.proxy.trustedOrigins={10.42.7.0/28}"]);
    assert!(!notes.contains("Warning:"), "{notes}");
}

#[test]
fn embedded_database_mode_is_single_replica_with_a_volume_and_template() {
    let docs = render(
        "lumie-coder",
        &[
            "server.database.existingSecret=",
            "server.persistence.enabled=true",
            "server.workspaceTemplate.image=ghcr.io/lumie-infra/dev:latest",
        ],
    );
    let deploy = find(&docs, "Deployment", "coder");
    let c = container(deploy, "lumie-server");
    assert!(env(c, "CODER_PG_CONNECTION_URL").is_none());
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let claim = find(&docs, "PersistentVolumeClaim", "coder-data");
    assert_eq!(claim["metadata"]["namespace"], NAMESPACE);
    let volumes = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "coder-data")
    );
    let cm = find(&docs, "ConfigMap", "coder-workspace-template");
    let template = cm["data"]["template.yaml"].as_str().unwrap();
    assert!(
        template.contains("ghcr.io/lumie-infra/dev:latest"),
        "{template}"
    );
    assert_eq!(
        env_value(c, "LUMIE_TEMPLATE_FILE"),
        "/etc/lumie-coder/template/template.yaml"
    );

    let err = try_render(
        "lumie-coder",
        None,
        &["server.database.existingSecret=", "server.replicas=2"],
    )
    .expect_err("two replicas on SQLite must be refused");
    assert!(err.contains("PostgreSQL"), "{err}");
}

#[test]
fn webhook_configurations_fail_closed_only_in_workspace_namespaces() {
    let docs = render("lumie-coder", &[]);
    let mutating = find(&docs, "MutatingWebhookConfiguration", "lumie-webhook");
    let validating = find(&docs, "ValidatingWebhookConfiguration", "lumie-webhook");
    let secret = find(&docs, "Secret", "lumie-webhook-tls");
    let ca = secret["data"]["ca.crt"].as_str().unwrap();

    let mut pod_hooks = 0;
    let mut policy_hooks = 0;
    for (config, path) in [(mutating, "/mutate"), (validating, "/validate")] {
        for hook in config["webhooks"].as_array().unwrap() {
            let name = hook["name"].as_str().unwrap();
            assert_eq!(strings(&hook["admissionReviewVersions"]), ["v1"], "{name}");
            assert_eq!(hook["sideEffects"], "None", "{name}");
            assert_eq!(hook["failurePolicy"], "Fail", "{name}");
            assert_eq!(hook["timeoutSeconds"], 10, "{name}");
            let svc = &hook["clientConfig"]["service"];
            assert_eq!(svc["name"], "lumie-webhook");
            assert_eq!(svc["namespace"], NAMESPACE);
            assert_eq!(svc["path"], path);
            assert_eq!(svc["port"], 443);
            assert_eq!(
                hook["clientConfig"]["caBundle"], ca,
                "{name}: the generated CA"
            );
            let rule = &hook["rules"][0];
            assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"], "{name}");
            if strings(&rule["resources"]).contains(&"workspacepolicies") {
                policy_hooks += 1;
                assert_eq!(strings(&rule["apiGroups"]), ["coder.lumie-infra.com"]);
            } else {
                pod_hooks += 1;
                assert_eq!(
                    strings(&rule["resources"]),
                    ["pods", "pods/ephemeralcontainers"]
                );
                let sel = &hook["namespaceSelector"]["matchExpressions"][0];
                assert_eq!(sel["key"], "kubernetes.io/metadata.name", "{name}");
                assert_eq!(sel["operator"], "In", "{name}");
                assert_eq!(strings(&sel["values"]), [workspace::NAMESPACE], "{name}");
            }
        }
    }
    assert_eq!(
        (pod_hooks, policy_hooks),
        (2, 1),
        "mutate + validate pods, validate policies"
    );

    // Values reach both configurations.
    let docs = render(
        "lumie-coder",
        &[
            "webhook.admission.failurePolicy=Ignore",
            "webhook.admission.timeoutSeconds=5",
            "serviceAccount.workspaceNamespaces={lumie-dev,team-b}",
        ],
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let hook = &find(&docs, kind, "lumie-webhook")["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["timeoutSeconds"], 5);
        assert_eq!(
            strings(&hook["namespaceSelector"]["matchExpressions"][0]["values"]),
            ["lumie-dev", "team-b"]
        );
    }
}

#[test]
fn chart_generated_pair_is_a_ca_and_a_serving_certificate_for_the_service() {
    let docs = render("lumie-coder", &[]);
    let secret = find(&docs, "Secret", "lumie-webhook-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let pem_of = |key: &str| b64(secret["data"][key].as_str().unwrap());
    let ca_pem = pem_of("ca.crt");
    let crt_pem = pem_of("tls.crt");
    assert!(String::from_utf8_lossy(&pem_of("tls.key")).contains("PRIVATE KEY"));

    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_pem).expect("ca.crt is PEM");
    let ca = ca_pem.parse_x509().expect("ca.crt is a certificate");
    let (_, crt_pem) = x509_parser::pem::parse_x509_pem(&crt_pem).expect("tls.crt is PEM");
    let crt = crt_pem.parse_x509().expect("tls.crt is a certificate");
    assert!(ca.is_ca(), "ca.crt is a CA");
    assert_eq!(crt.issuer(), ca.subject(), "tls.crt is issued by ca.crt");
    crt.verify_signature(Some(ca.public_key()))
        .expect("tls.crt is signed by ca.crt's key");
    let sans: BTreeSet<String> = crt
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("tls.crt has SANs")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<String> =
        lumie_webhook::certs::service_dns_names("lumie-webhook", NAMESPACE)
            .into_iter()
            .collect();
    assert_eq!(
        sans, expected,
        "the same names `lumie-webhook certs generate` uses"
    );

    // The pods mount that Secret as a directory at the paths the flags default to.
    let deploy = find(&docs, "Deployment", "lumie-webhook");
    let c = container(deploy, "lumie-webhook");
    assert_eq!(
        env_value(c, "LUMIE_WEBHOOK_TLS_CERT"),
        "/etc/lumie-webhook/tls/tls.crt"
    );
    assert_eq!(
        env_value(c, "LUMIE_WEBHOOK_TLS_KEY"),
        "/etc/lumie-webhook/tls/tls.key"
    );
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/lumie-webhook/tls")
        .expect("TLS mount");
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never see rotation"
    );
    let vol = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(vol["secret"]["secretName"], "lumie-webhook-tls");
}

#[test]
fn cert_manager_mode_renders_a_ca_chain_and_injects_the_root() {
    let docs = render("lumie-coder", &["webhook.tls.mode=certManager"]);
    assert!(
        all(&docs, "Secret").is_empty(),
        "cert-manager writes the Secrets, not helm"
    );
    // self-signed Issuer -> root CA Certificate -> CA Issuer -> serving Certificate.
    let selfsigned = find(&docs, "Issuer", "lumie-webhook-selfsigned");
    assert!(selfsigned["spec"]["selfSigned"].is_object());
    let root = find(&docs, "Certificate", "lumie-webhook-ca");
    assert_eq!(root["metadata"]["namespace"], NAMESPACE);
    assert_eq!(root["spec"]["isCA"], true);
    assert_eq!(root["spec"]["secretName"], "lumie-webhook-ca");
    assert_eq!(root["spec"]["duration"], "87600h", "a long-lived root");
    assert_eq!(
        root["spec"]["privateKey"]["rotationPolicy"], "Never",
        "the root renews with its key, so certificates it signed keep verifying"
    );
    assert_eq!(
        root["spec"]["issuerRef"],
        json!({"name": "lumie-webhook-selfsigned", "kind": "Issuer"})
    );
    let ca_issuer = find(&docs, "Issuer", "lumie-webhook-ca");
    assert_eq!(ca_issuer["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        ca_issuer["spec"],
        json!({"ca": {"secretName": "lumie-webhook-ca"}})
    );
    assert_eq!(all(&docs, "Issuer").len(), 2);
    assert_eq!(all(&docs, "Certificate").len(), 2);

    let cert = find(&docs, "Certificate", "lumie-webhook");
    assert_eq!(cert["metadata"]["namespace"], NAMESPACE);
    assert_eq!(cert["spec"]["secretName"], "lumie-webhook-tls");
    assert!(cert["spec"].get("isCA").is_none(), "a leaf, not a CA");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "lumie-webhook-ca", "kind": "Issuer"}),
        "signed by the CA Issuer, not self-signed"
    );
    assert_eq!(cert["spec"]["privateKey"]["rotationPolicy"], "Always");
    let names: Vec<String> = strings(&cert["spec"]["dnsNames"])
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        lumie_webhook::certs::service_dns_names("lumie-webhook", NAMESPACE)
    );
    // The webhook mounts the serving Secret, not the root's.
    let webhook = find(&docs, "Deployment", "lumie-webhook");
    let volumes = webhook["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("lumie-webhook-tls"), "{volumes}");
    assert!(!volumes.contains("lumie-webhook-ca"), "{volumes}");
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = find(&docs, kind, "lumie-webhook");
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "coder/lumie-webhook-ca",
            "{kind}: cainjector injects the root, which a serving renewal does not change"
        );
        for hook in config["webhooks"].as_array().unwrap() {
            assert!(
                hook["clientConfig"].get("caBundle").is_none(),
                "{kind}: cainjector owns caBundle"
            );
        }
    }

    // A CA issuer of one's own replaces the chart's chain; its CA comes with the serving
    // certificate's Secret (ca.crt), so that Certificate is the injection source.
    let docs = render(
        "lumie-coder",
        &[
            "webhook.tls.mode=certManager",
            "webhook.tls.certManager.issuerRef.name=corp-ca",
            "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    assert!(all(&docs, "Issuer").is_empty());
    let certs = all(&docs, "Certificate");
    assert_eq!(certs.len(), 1, "no chart root next to the operator's CA");
    let cert = find(&docs, "Certificate", "lumie-webhook");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "corp-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let annotations = &find(&docs, kind, "lumie-webhook")["metadata"]["annotations"];
        assert_eq!(
            annotations["cert-manager.io/inject-ca-from"], "coder/lumie-webhook",
            "{kind}"
        );
    }
}

#[test]
fn existing_secret_mode_uses_the_named_secret_and_bundle() {
    let bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";
    let ca_value = format!("webhook.tls.caBundle={bundle}");
    let docs = render(
        "lumie-coder",
        &[
            "webhook.tls.mode=existingSecret",
            "webhook.tls.secretName=my-webhook-tls",
            &ca_value,
        ],
    );
    assert!(
        all(&docs, "Secret").is_empty(),
        "the Secret is the operator's"
    );
    assert!(all(&docs, "Certificate").is_empty());
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = find(&docs, kind, "lumie-webhook");
        assert!(
            config["metadata"].get("annotations").is_none(),
            "{kind}: no cainjector"
        );
        for hook in config["webhooks"].as_array().unwrap() {
            assert_eq!(hook["clientConfig"]["caBundle"], bundle, "{kind}");
        }
    }
    let deploy = find(&docs, "Deployment", "lumie-webhook");
    let vols = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        vols.iter()
            .any(|v| v["secret"]["secretName"] == "my-webhook-tls")
    );
}

#[test]
fn server_on_postgres_runs_two_replicas_spread_with_a_pdb_and_a_lease_role() {
    let docs = render("lumie-coder", &[]);
    let deploy = find(&docs, "Deployment", "coder");
    assert_eq!(
        deploy["spec"]["replicas"], 2,
        "PostgreSQL: two replicas by default"
    );
    assert_ne!(deploy["spec"]["strategy"]["type"], "Recreate");
    let pod = &deploy["spec"]["template"]["spec"];
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in spread["labelSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the spread counts the server pods");
    }
    let pdb = find(&docs, "PodDisruptionBudget", "coder");
    assert_eq!(pdb["metadata"]["namespace"], NAMESPACE);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "PDB selects the server pods");
    }
    let c = container(deploy, "lumie-server");
    assert_eq!(
        env(c, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env_value(c, "LUMIE_LEASE_NAMESPACE"), NAMESPACE);
    assert_eq!(env_value(c, "LUMIE_LEASE_NAME"), "lumie-server-leader");
    assert_eq!(env_value(c, "LUMIE_LEASE_DURATION_SECS"), "15");
    assert_eq!(env_value(c, "LUMIE_LEASE_RENEW_SECS"), "5");
    // Leases in the release namespace only, never deleted.
    let role = find(&docs, "Role", "lumie-coder-leader");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"]}])
    );
    let binding = find(&docs, "RoleBinding", "lumie-coder-leader");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert_eq!(binding["roleRef"]["name"], "lumie-coder-leader");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "coder", "namespace": NAMESPACE}])
    );
    let leases_anywhere: Vec<&Value> = all(&docs, "Role")
        .into_iter()
        .chain(all(&docs, "ClusterRole"))
        .filter(|r| r["rules"].to_string().contains("leases"))
        .collect();
    assert_eq!(
        leases_anywhere.len(),
        1,
        "one grant of leases: {leases_anywhere:?}"
    );

    // One replica asked for: no PDB (it would block every drain), no spread.
    let one = render("lumie-coder", &["server.replicas=1"]);
    assert_eq!(find(&one, "Deployment", "coder")["spec"]["replicas"], 1);
    assert!(
        all(&one, "PodDisruptionBudget")
            .iter()
            .all(|p| name_of(p) != "coder")
    );
    assert!(
        find(&one, "Deployment", "coder")["spec"]["template"]["spec"]
            .get("topologySpreadConstraints")
            .is_none()
    );
    // Three by choice.
    let three = render("lumie-coder", &["server.replicas=3"]);
    assert_eq!(find(&three, "Deployment", "coder")["spec"]["replicas"], 3);

    // SQLite: one replica, no Lease, no grant, no PDB.
    let sqlite = render("lumie-coder", &["server.database.existingSecret="]);
    let deploy = find(&sqlite, "Deployment", "coder");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert!(env(container(deploy, "lumie-server"), "LUMIE_LEASE_NAME").is_none());
    assert!(
        all(&sqlite, "Role")
            .iter()
            .all(|r| name_of(r) != "lumie-coder-leader")
    );
    assert!(
        all(&sqlite, "PodDisruptionBudget")
            .iter()
            .all(|p| name_of(p) != "coder")
    );
}

#[test]
fn webhook_runs_replicated_spread_and_protected_by_a_pdb() {
    let docs = render("lumie-coder", &[]);
    let deploy = find(&docs, "Deployment", "lumie-webhook");
    assert!(deploy["spec"]["replicas"].as_i64().unwrap() >= 2);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = &deploy["spec"]["template"]["spec"];
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["maxSkew"], 1);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let pdb = find(&docs, "PodDisruptionBudget", "lumie-webhook");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "PDB selects the webhook pods");
    }
    let c = container(deploy, "lumie-webhook");
    assert_eq!(strings(&c["args"]), ["serve"]);
    assert_eq!(env_value(c, "LUMIE_WEBHOOK_LISTEN"), "0.0.0.0:8443");
    assert_eq!(env_value(c, "LUMIE_WEBHOOK_HEALTH_LISTEN"), "0.0.0.0:8080");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

    // policy/v1 only where the cluster has it (from 1.21); 1.20 gets policy/v1beta1.
    assert_eq!(pdb["apiVersion"], "policy/v1");
    let old = try_render("lumie-coder", Some("1.20.2"), &[]).expect("renders for 1.20");
    assert_eq!(
        find(&old, "PodDisruptionBudget", "lumie-webhook")["apiVersion"],
        "policy/v1beta1"
    );
}

#[test]
fn rbac_reaches_only_workspace_namespaces_and_policies() {
    let docs = render(
        "lumie-coder",
        &["serviceAccount.workspaceNamespaces={lumie-dev,team-b}"],
    );
    // The first admin's create-only Role and the leader's Lease Role in the release namespace
    // have their own tests.
    let roles: Vec<&Value> = all(&docs, "Role")
        .into_iter()
        .filter(|r| {
            r["metadata"]["name"] != "lumie-coder-first-admin"
                && r["metadata"]["name"] != "lumie-coder-leader"
        })
        .collect();
    let namespaces: BTreeSet<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, BTreeSet::from(["lumie-dev", "team-b"]));
    for role in &roles {
        for rule in role["rules"].as_array().unwrap() {
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            assert!(
                !resources.contains(&"*") && !verbs.contains(&"*"),
                "no wildcards: {rule}"
            );
            for r in &resources {
                assert!(
                    [
                        "pods",
                        "pods/log",
                        "persistentvolumeclaims",
                        "secrets",
                        "events",
                        "services",
                        "serviceaccounts"
                    ]
                    .contains(r),
                    "unexpected resource {r}"
                );
            }
            if resources.contains(&"services") || resources.contains(&"serviceaccounts") {
                assert_eq!(strings(&rule["resourceNames"]), [workspace::STABLE_SERVICE]);
                assert_eq!(verbs, ["get"], "read-only on the overlay's objects");
            }
            if resources.contains(&"events") {
                assert!(verbs.iter().all(|v| ["get", "list", "watch"].contains(v)));
            }
        }
    }
    for rb in all(&docs, "RoleBinding") {
        assert_eq!(rb["subjects"][0]["name"], "coder");
        assert_eq!(rb["subjects"][0]["namespace"], NAMESPACE);
        assert_eq!(rb["roleRef"]["kind"], "Role");
    }
    for cr in all(&docs, "ClusterRole") {
        if cr["metadata"]["name"] == "lumie-coder-server-tokenreviews" {
            // Agents' projected tokens are checked with a TokenReview: create, nothing else.
            assert_eq!(
                cr["rules"],
                json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]),
                "{cr}"
            );
            continue;
        }
        for rule in cr["rules"].as_array().unwrap() {
            assert_eq!(
                strings(&rule["apiGroups"]),
                ["coder.lumie-infra.com"],
                "{cr}"
            );
            for r in strings(&rule["resources"]) {
                assert!(r.starts_with("workspacepolicies"), "{r}");
            }
        }
    }
    let binding = find(
        &docs,
        "ClusterRoleBinding",
        "lumie-coder-server-tokenreviews",
    );
    assert_eq!(binding["subjects"][0]["name"], "coder");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    let webhook_role = find(&docs, "ClusterRole", "lumie-webhook-policies");
    for rule in webhook_role["rules"].as_array().unwrap() {
        if strings(&rule["resources"]) == ["workspacepolicies"] {
            assert_eq!(
                strings(&rule["verbs"]),
                ["get", "list", "watch"],
                "webhook only reads"
            );
        }
    }

    // Read-only policy access when the policy API is off.
    let docs = render("lumie-coder", &["rbac.policyWrite=false"]);
    let server_role = find(&docs, "ClusterRole", "lumie-coder-server-policies");
    assert_eq!(
        strings(&server_role["rules"][0]["verbs"]),
        ["get", "list", "watch"]
    );
}

#[test]
fn first_admin_token_goes_to_a_secret_the_server_may_only_create() {
    let docs = render("lumie-coder", &[]);
    let role = find(&docs, "Role", "lumie-coder-first-admin");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{role}");
    assert_eq!(strings(&rules[0]["resources"]), ["secrets"]);
    assert_eq!(
        strings(&rules[0]["verbs"]),
        ["create"],
        "create only: no read, no update"
    );
    let rb = find(&docs, "RoleBinding", "lumie-coder-first-admin");
    assert_eq!(rb["metadata"]["namespace"], NAMESPACE);
    assert_eq!(rb["roleRef"]["name"], "lumie-coder-first-admin");
    assert_eq!(rb["subjects"][0]["name"], "coder");
    let deployment = find(&docs, "Deployment", "coder");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let value = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    assert_eq!(
        value("LUMIE_FIRST_ADMIN_SECRET").as_deref(),
        Some("lumie-first-admin")
    );
    assert_eq!(
        value("LUMIE_FIRST_ADMIN_SECRET_NAMESPACE").as_deref(),
        Some(NAMESPACE)
    );

    let notes = install_notes(&[]);
    assert!(
        notes.contains(&format!(
            "kubectl -n {NAMESPACE} get secret lumie-first-admin -o jsonpath='{{.data.token}}' | base64 -d"
        )),
        "{notes}"
    );

    // Blank: neither the grant nor the setting.
    let docs = render("lumie-coder", &["server.firstAdminSecret="]);
    assert!(
        all(&docs, "Role")
            .iter()
            .all(|r| r["metadata"]["name"] != "lumie-coder-first-admin")
    );
    let deployment = find(&docs, "Deployment", "coder");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("LUMIE_FIRST_ADMIN_SECRET"), "{env}");
}

#[test]
fn default_policy_lets_the_server_create_workspaces() {
    let docs = render("lumie-coder", &[]);
    let policy = find(&docs, "WorkspacePolicy", "default");
    assert_eq!(policy["apiVersion"], "coder.lumie-infra.com/v1alpha1");
    assert_eq!(strings(&policy["spec"]["workspaceCreators"]), [SERVER_USER]);
    assert_eq!(
        strings(&policy["spec"]["namespaces"]),
        [workspace::NAMESPACE]
    );
    let hook = policy["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .unwrap();
    assert!(
        hook.contains("post-install"),
        "written once the webhook serves: {hook}"
    );
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "workspacepolicies.coder.lumie-infra.com",
    );
    assert_eq!(crd["spec"]["scope"], "Cluster");

    let docs = render("lumie-coder", &["defaultPolicy.spec.mode=Audit"]);
    let policy = find(&docs, "WorkspacePolicy", "default");
    assert_eq!(policy["spec"]["mode"], "Audit");
    assert_eq!(strings(&policy["spec"]["workspaceCreators"]), [SERVER_USER]);
    let docs = render("lumie-coder", &["defaultPolicy.enabled=false"]);
    assert!(all(&docs, "WorkspacePolicy").is_empty());
}

#[test]
fn optional_integrations_render_only_when_enabled() {
    let defaults = render("lumie-coder", &[]);
    for kind in [
        "VaultStaticSecret",
        "ServiceMonitor",
        "NetworkPolicy",
        "Certificate",
        "Issuer",
    ] {
        assert!(all(&defaults, kind).is_empty(), "{kind} is off by default");
    }
    let docs = render(
        "lumie-coder",
        &[
            "vault.enabled=true",
            "serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    );
    let vss = all(&docs, "VaultStaticSecret");
    let dest: BTreeSet<&str> = vss
        .iter()
        .map(|v| v["spec"]["destination"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        dest,
        BTreeSet::from(["coder-db-secret", "coder-oidc-secret"])
    );
    for v in &vss {
        assert_eq!(v["apiVersion"], "secrets.hashicorp.com/v1beta1");
        assert_eq!(v["spec"]["mount"], "secret");
        assert_eq!(v["spec"]["path"], "infrastructure/coder");
        let templates = v["spec"]["destination"]["transformation"]["templates"]
            .as_object()
            .unwrap();
        let key = if v["spec"]["destination"]["name"] == "coder-db-secret" {
            "url"
        } else {
            "client-secret"
        };
        let text = templates[key]["text"]
            .as_str()
            .expect("the key the server reads");
        assert!(
            text.starts_with("{{ get .Secrets "),
            "Go template left for the operator: {text}"
        );
    }
    let monitors = all(&docs, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    let svc_ports: Vec<String> = all(&docs, "Service")
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().unwrap().iter())
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    for m in monitors {
        let ep = &m["spec"]["endpoints"][0];
        assert_eq!(ep["path"], "/metrics");
        assert!(svc_ports.contains(&ep["port"].as_str().unwrap().to_string()));
    }
    let server_np = find(&docs, "NetworkPolicy", "coder");
    let from =
        &server_np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0];
    assert!(
        strings(&from["values"]).contains(&workspace::NAMESPACE),
        "agents reach the server"
    );
    find(&docs, "NetworkPolicy", "lumie-webhook");
}

#[test]
fn lumie_dev_overlay_matches_the_workspace_contract() {
    let docs = render("lumie-dev", &[]);
    let ns = find(&docs, "Namespace", workspace::NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        workspace::NAMESPACE
    );
    let sa = find(&docs, "ServiceAccount", "dev-workspace");
    assert_eq!(sa["metadata"]["namespace"], workspace::NAMESPACE);
    assert!(
        all(&docs, "ClusterRoleBinding").is_empty(),
        "admin inside lumie-dev only"
    );
    let rb = &all(&docs, "RoleBinding")[0];
    assert_eq!(rb["metadata"]["namespace"], workspace::NAMESPACE);
    assert_eq!(rb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(rb["roleRef"]["name"], "admin");
    assert_eq!(rb["subjects"][0]["name"], "dev-workspace");

    let svc = find(&docs, "Service", workspace::STABLE_SERVICE);
    assert_eq!(svc["metadata"]["namespace"], workspace::NAMESPACE);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["selector"][labels::APP_NAME],
        labels::APP_NAME_WORKSPACE
    );
    let ports: Vec<(String, u64, u64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let contract: Vec<(String, u64, u64)> = apps::ALL
        .iter()
        .map(|a| (a.slug.to_string(), u64::from(a.port), u64::from(a.port)))
        .collect();
    assert_eq!(ports, contract, "Service ports are the contract's apps");
}

// ---------------------------------------------------------------------------------------------
// the harness apiserver: server-side dry-run, a real install, admission and RBAC
// ---------------------------------------------------------------------------------------------

/// Minimal CRDs for the kinds the optional value sets render but the harness lacks
/// (cert-manager, Prometheus Operator, Vault Secrets Operator): enough for the apiserver to
/// route and scope them, with no schema.
fn foreign_crds() -> Vec<Value> {
    [
        ("cert-manager.io", "v1", "Issuer", "issuers"),
        ("cert-manager.io", "v1", "Certificate", "certificates"),
        ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
        ("secrets.hashicorp.com", "v1beta1", "VaultStaticSecret", "vaultstaticsecrets"),
    ]
    .into_iter()
    .map(|(group, version, kind, plural)| {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                "versions": [{
                    "name": version, "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }]
            }
        })
    })
    .collect()
}

/// Server-side applies one document (optionally as a dry run).
async fn apply(client: &Client, doc: &Value, dry_run: bool) -> Result<(), String> {
    let (group, version) = match doc["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .split_once('/')
    {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, kind_of(doc));
    let what = format!("{}/{}", kind_of(doc), name_of(doc));
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{what}: the apiserver does not serve {gvk:?}: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .ok_or_else(|| format!("{what}: namespaced but rendered without a namespace"))?;
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let mut params = PatchParams::apply(MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name_of(doc), &params, &Patch::Apply(doc))
        .await
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}"))
}

async fn wait_established(client: &Client, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = kube::runtime::wait::await_condition(
        crds,
        name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 60s"))
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
}

/// What the one-time install into the harness found.
struct Installed {
    /// Every (value set, document) that failed the server-side dry run.
    dry_run_failures: Vec<String>,
    /// How many documents were dry-run applied.
    dry_run_count: usize,
    /// SubjectAccessReviews before the charts were applied: (user, verb, resource, ns) → allowed.
    before: Vec<(String, bool)>,
    /// The lumie-coder documents applied for real (for comparing what the apiserver kept).
    applied: Vec<Value>,
}

/// Installs the charts into the shared harness once per process, in the order an operator (or
/// helm) would: CRDs, then a server-side dry run of every value set, then lumie-dev and
/// lumie-coder for real. The harness's own stand-in RBAC for the control plane is removed
/// first, so every grant the tests see afterwards comes from the charts.
fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(install())
        })
        .join()
        .expect("installing the charts panicked")
    })
}

async fn install() -> Installed {
    let cluster = Cluster::shared();
    let client = cluster.client().await;
    let version = client.apiserver_version().await.expect("apiserver version");
    let kube_version = version.git_version.trim_start_matches('v').to_string();

    // CRDs first (helm installs crds/ before anything else), for real: the dry runs of custom
    // resources need them.
    let chart_crds: Vec<Value> = render("lumie-coder", &[])
        .into_iter()
        .filter(|d| kind_of(d) == "CustomResourceDefinition")
        .collect();
    assert!(
        !chart_crds.is_empty(),
        "the chart carries the WorkspacePolicy CRD"
    );
    for crd in chart_crds.iter().chain(foreign_crds().iter()) {
        apply(&client, crd, true)
            .await
            .unwrap_or_else(|e| panic!("dry run: {e}"));
        apply(&client, crd, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for crd in chart_crds.iter().chain(foreign_crds().iter()) {
        wait_established(&client, name_of(crd)).await;
    }

    // Every value set of both charts, rendered for this apiserver's version, dry-run.
    let mut dry_run_failures = Vec::new();
    let mut dry_run_count = 0;
    let mut sets: Vec<(&str, &str, Vec<&str>)> = value_sets()
        .into_iter()
        .map(|(what, sets)| ("lumie-coder", what, sets))
        .collect();
    sets.push(("lumie-dev", "defaults", vec![]));
    for (chart, what, sets) in &sets {
        let docs = try_render(chart, Some(&kube_version), sets)
            .unwrap_or_else(|e| panic!("helm template {chart} ({what}):\n{e}"));
        for doc in docs
            .iter()
            .filter(|d| kind_of(d) != "CustomResourceDefinition")
        {
            dry_run_count += 1;
            if let Err(e) = apply(&client, doc, true).await {
                dry_run_failures.push(format!("{chart} ({what}): {e}"));
            }
        }
    }

    // Remove the harness's stand-in grants, and record what the ServiceAccounts could do
    // before the charts.
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), workspace::NAMESPACE);
    let roles: Api<Role> = Api::namespaced(client.clone(), workspace::NAMESPACE);
    for name in [
        lumie_tests::bootstrap::CONTROL_PLANE_ROLE,
        "dev-workspace-admin",
    ] {
        let _ = rbs.delete(name, &DeleteParams::default()).await;
    }
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
        .delete(
            lumie_tests::bootstrap::CONTROL_PLANE_TOKEN_REVIEWS,
            &DeleteParams::default(),
        )
        .await;
    let _ = roles
        .delete(
            lumie_tests::bootstrap::CONTROL_PLANE_ROLE,
            &DeleteParams::default(),
        )
        .await;
    let mut before = Vec::new();
    for (user, verb, resource, ns) in [
        (SERVER_USER, "create", "pods", workspace::NAMESPACE),
        (DEVELOPER_USER, "create", "pods", workspace::NAMESPACE),
    ] {
        let allowed = can(&client, user, verb, "", resource, ns, None).await;
        before.push((format!("{user} {verb} {resource} in {ns}"), allowed));
    }
    let allowed = can(
        &client,
        SERVER_USER,
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        "",
        None,
    )
    .await;
    before.push((format!("{SERVER_USER} create tokenreviews"), allowed));

    // The real install: the overlay, then the control plane (hooks excluded: the default
    // policy goes through the webhook, which is not running here).
    let overlay = try_render("lumie-dev", Some(&kube_version), &[]).expect("lumie-dev renders");
    for doc in &overlay {
        apply(&client, doc, false)
            .await
            .unwrap_or_else(|e| panic!("lumie-dev: {e}"));
    }
    let docs = try_render("lumie-coder", Some(&kube_version), &[]).expect("lumie-coder renders");
    let applied: Vec<Value> = docs
        .into_iter()
        .filter(|d| kind_of(d) != "CustomResourceDefinition")
        .filter(|d| d["metadata"]["annotations"].get("helm.sh/hook").is_none())
        .collect();
    for doc in &applied {
        apply(&client, doc, false)
            .await
            .unwrap_or_else(|e| panic!("lumie-coder: {e}"));
    }
    Installed {
        dry_run_failures,
        dry_run_count,
        before,
        applied,
    }
}

/// Whether `user` (a ServiceAccount, with its groups) may `verb` `resource` in `ns` ("" =
/// cluster-wide), asked with a SubjectAccessReview.
async fn can(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    ns: &str,
    name: Option<&str>,
) -> bool {
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
            "resourceAttributes": {
                "verb": verb, "group": group, "resource": resource, "subresource": subresource,
                "namespace": ns, "name": name.unwrap_or_default()
            }
        }
    }))
    .expect("SubjectAccessReview");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("creating a SubjectAccessReview");
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

#[tokio::test]
async fn every_rendered_manifest_passes_server_side_dry_run() {
    let installed = tokio::task::spawn_blocking(installed).await.unwrap();
    assert!(
        installed.dry_run_failures.is_empty(),
        "server-side dry run refused:\n{}",
        installed.dry_run_failures.join("\n")
    );
    assert!(
        installed.dry_run_count > 60,
        "only {} documents dry-run",
        installed.dry_run_count
    );

    // A dry run persists nothing: cert-manager and Vault objects were only ever dry-run.
    let client = Cluster::shared().client().await;
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let certs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
    assert!(certs.get_opt("lumie-webhook").await.unwrap().is_none());
    let gvk = GroupVersionKind::gvk("secrets.hashicorp.com", "v1beta1", "VaultStaticSecret");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let vss: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &ar);
    assert!(vss.get_opt("coder-db-secret").await.unwrap().is_none());
}

#[tokio::test]
async fn installed_crd_is_established_and_webhook_configurations_accepted() {
    let installed = tokio::task::spawn_blocking(installed).await.unwrap();
    let client = Cluster::shared().client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("workspacepolicies.coder.lumie-infra.com")
        .await
        .unwrap();
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "WorkspacePolicy CRD established");

    for (kind, plural) in [
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        ),
    ] {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
        assert_eq!(ar.plural, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let live = api
            .get("lumie-webhook")
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let live = serde_json::to_value(&live).unwrap();
        let rendered = find(&installed.applied, kind, "lumie-webhook");
        let live_hooks = live["webhooks"].as_array().unwrap();
        let rendered_hooks = rendered["webhooks"].as_array().unwrap();
        assert_eq!(live_hooks.len(), rendered_hooks.len(), "{kind}");
        for (l, r) in live_hooks.iter().zip(rendered_hooks) {
            for field in [
                "name",
                "failurePolicy",
                "sideEffects",
                "timeoutSeconds",
                "admissionReviewVersions",
                "rules",
            ] {
                assert_eq!(l[field], r[field], "{kind} {field} kept as rendered");
            }
            assert_eq!(
                l["clientConfig"]["caBundle"], r["clientConfig"]["caBundle"],
                "{kind}"
            );
        }
    }

    // The 1.20 apiserver took the policy/v1beta1 PodDisruptionBudget and the Deployments.
    let pdb = find(&installed.applied, "PodDisruptionBudget", "lumie-webhook");
    assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NAMESPACE);
    for name in ["coder", "lumie-webhook"] {
        deployments
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Deployment {name}: {e}"));
    }
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client, workspace::NAMESPACE);
    let svc = services.get(workspace::STABLE_SERVICE).await.unwrap();
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(
        ports,
        apps::ALL
            .iter()
            .map(|a| i32::from(a.port))
            .collect::<Vec<_>>()
    );
}

/// A pod for a dry-run create in `ns`.
fn probe_pod(ns: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "chart-admission-probe", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn webhook_outage_blocks_only_the_workspace_namespace() {
    tokio::task::spawn_blocking(installed).await.unwrap();
    let cluster = Cluster::shared();
    let client = cluster.client().await;
    lumie_tests::bootstrap::create_service_account(&client, "kube-system", "default")
        .await
        .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // No webhook pod runs here, so admission in lumie-dev fails closed ...
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), workspace::NAMESPACE);
    let err = pods
        .create(&dry, &probe_pod(workspace::NAMESPACE))
        .await
        .expect_err("with failurePolicy Fail and no webhook, lumie-dev pods are refused");
    assert!(
        err.to_string().contains("lumie-webhook"),
        "refused by the webhook: {err}"
    );

    // ... and never in kube-system or coder.
    for ns in ["kube-system", NAMESPACE] {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&dry, &probe_pod(ns))
            .await
            .unwrap_or_else(|e| panic!("a pod in {ns} must not depend on the webhook: {e}"));
    }

    // WorkspacePolicy writes pass through the validating webhook too.
    let gvk = GroupVersionKind::gvk("coder.lumie-infra.com", "v1alpha1", "WorkspacePolicy");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let policies: Api<DynamicObject> = Api::all_with(client, &ar);
    let policy = json!({
        "apiVersion": "coder.lumie-infra.com/v1alpha1", "kind": "WorkspacePolicy",
        "metadata": {"name": "chart-probe"}, "spec": {}
    });
    let err = policies
        .patch(
            "chart-probe",
            &PatchParams::apply(MANAGER).dry_run(),
            &Patch::Apply(&policy),
        )
        .await
        .expect_err("policy writes are validated by the (absent) webhook");
    assert!(err.to_string().contains("lumie-webhook"), "{err}");
}

#[tokio::test]
async fn server_service_account_can_do_exactly_its_job() {
    let installed = tokio::task::spawn_blocking(installed).await.unwrap();
    for (what, allowed) in &installed.before {
        assert!(
            !allowed,
            "before the charts: {what} must be denied (control)"
        );
    }
    let client = Cluster::shared().client().await;
    let dev = workspace::NAMESPACE;
    let grants: &[(&str, &str, &str, &str, Option<&str>)] = &[
        ("create", "", "pods", dev, None),
        ("delete", "", "pods", dev, None),
        ("watch", "", "pods", dev, None),
        ("get", "", "pods/log", dev, None),
        ("create", "", "secrets", dev, None),
        ("delete", "", "secrets", dev, None),
        ("create", "", "persistentvolumeclaims", dev, None),
        ("delete", "", "persistentvolumeclaims", dev, None),
        ("list", "", "events", dev, None),
        ("get", "", "services", dev, Some(workspace::STABLE_SERVICE)),
        ("get", "", "serviceaccounts", dev, Some("dev-workspace")),
        ("create", "authentication.k8s.io", "tokenreviews", "", None),
        (
            "list",
            "coder.lumie-infra.com",
            "workspacepolicies",
            "",
            None,
        ),
        (
            "watch",
            "coder.lumie-infra.com",
            "workspacepolicies",
            "",
            None,
        ),
        (
            "create",
            "coder.lumie-infra.com",
            "workspacepolicies",
            "",
            None,
        ),
    ];
    let denials: &[(&str, &str, &str, &str, Option<&str>)] = &[
        // The leader Lease: in the release namespace only, and never deleted.
        ("get", "coordination.k8s.io", "leases", dev, None),
        (
            "create",
            "coordination.k8s.io",
            "leases",
            "kube-system",
            None,
        ),
        ("delete", "coordination.k8s.io", "leases", NAMESPACE, None),
        ("create", "", "pods", "kube-system", None),
        ("create", "", "secrets", "kube-system", None),
        ("get", "", "secrets", "kube-system", None),
        ("create", "", "persistentvolumeclaims", "kube-system", None),
        ("create", "", "pods", NAMESPACE, None),
        ("get", "", "secrets", NAMESPACE, Some("coder-db-secret")),
        ("create", "", "pods", "", None),
        ("list", "", "secrets", "", None),
        ("create", "", "persistentvolumeclaims", "", None),
        ("create", "", "pods/exec", dev, None),
        ("create", "", "events", dev, None),
        ("create", "", "services", dev, None),
        (
            "delete",
            "",
            "services",
            dev,
            Some(workspace::STABLE_SERVICE),
        ),
        ("get", "", "services", dev, Some("other")),
        ("delete", "", "serviceaccounts", dev, Some("dev-workspace")),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            dev,
            None,
        ),
        ("list", "", "nodes", "", None),
        ("create", "", "namespaces", "", None),
        ("create", "", "serviceaccounts/token", dev, None),
        (
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            "",
            None,
        ),
        (
            "update",
            "coder.lumie-infra.com",
            "workspacepolicies/status",
            "",
            None,
        ),
        (
            "update",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
            None,
        ),
    ];
    check(&client, SERVER_USER, grants, denials).await;
}

#[tokio::test]
async fn webhook_and_workspace_service_accounts_are_least_privilege() {
    tokio::task::spawn_blocking(installed).await.unwrap();
    let client = Cluster::shared().client().await;
    let dev = workspace::NAMESPACE;
    check(
        &client,
        WEBHOOK_USER,
        &[
            (
                "list",
                "coder.lumie-infra.com",
                "workspacepolicies",
                "",
                None,
            ),
            (
                "watch",
                "coder.lumie-infra.com",
                "workspacepolicies",
                "",
                None,
            ),
            (
                "update",
                "coder.lumie-infra.com",
                "workspacepolicies/status",
                "",
                None,
            ),
        ],
        &[
            (
                "create",
                "coder.lumie-infra.com",
                "workspacepolicies",
                "",
                None,
            ),
            (
                "delete",
                "coder.lumie-infra.com",
                "workspacepolicies",
                "",
                None,
            ),
            ("get", "", "pods", dev, None),
            ("get", "", "secrets", NAMESPACE, None),
            ("create", "", "pods", "kube-system", None),
        ],
    )
    .await;
    check(
        &client,
        DEVELOPER_USER,
        &[
            ("create", "", "pods", dev, None),
            ("create", "", "services", dev, None),
            (
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                dev,
                None,
            ),
        ],
        &[
            ("create", "", "pods", "kube-system", None),
            ("create", "", "pods", NAMESPACE, None),
            ("get", "", "secrets", NAMESPACE, None),
            ("list", "", "nodes", "", None),
            (
                "create",
                "coder.lumie-infra.com",
                "workspacepolicies",
                "",
                None,
            ),
        ],
    )
    .await;
    // The developer identity of the harness is the same ServiceAccount: its real token agrees.
    assert_eq!(Identity::Developer.username(), DEVELOPER_USER);
    assert_eq!(Identity::ControlPlane.username(), SERVER_USER);
}

type Access<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>);

async fn check(client: &Client, user: &str, grants: &[Access<'_>], denials: &[Access<'_>]) {
    let mut wrong = Vec::new();
    for (expected, list) in [(true, grants), (false, denials)] {
        for (verb, group, resource, ns, name) in list {
            let allowed = can(client, user, verb, group, resource, ns, *name).await;
            if allowed != expected {
                let scope = if ns.is_empty() {
                    "cluster-wide".to_string()
                } else {
                    format!("in {ns}")
                };
                wrong.push(format!(
                    "{user} {verb} {group}/{resource}{} {scope}: allowed={allowed}, expected {expected}",
                    name.map(|n| format!(" {n}")).unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from the design:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn helm_upgrade_install_takes_over_and_keeps_the_generated_webhook_ca() {
    let installed = tokio::task::spawn_blocking(installed).await.unwrap();
    let cluster = Cluster::shared();
    let kubeconfig = cluster.kubeconfig(Identity::Admin).display().to_string();
    // The default policy hook is left out: it would wait on a webhook that does not run here.
    let upgrade = move || {
        helm(&[
            "upgrade",
            "--install",
            RELEASE,
            "charts/lumie-coder",
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            &kubeconfig,
            "--take-ownership",
            "--force-conflicts",
            "--set",
            "defaultPolicy.enabled=false",
        ])
    };
    let rendered_ca = find(&installed.applied, "Secret", "lumie-webhook-tls")["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_string();
    let client = cluster.client().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), NAMESPACE);
    let gvk = GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
    );
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let validating: Api<DynamicObject> = Api::all_with(client.clone(), &ar);

    for round in ["install", "upgrade"] {
        let up = upgrade.clone();
        let out = tokio::task::spawn_blocking(up)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("helm upgrade --install ({round}) failed:\n{e}"));
        assert!(out.contains("STATUS: deployed"), "{round}: {out}");
        // helm looked the existing pair up instead of generating a new one, so the webhook
        // pods and the configurations keep trusting each other across upgrades.
        let secret = secrets.get("lumie-webhook-tls").await.unwrap();
        let ca = secret.data.unwrap()["ca.crt"].0.clone();
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        assert_eq!(ca, rendered_ca, "{round}: the CA survived");
        let live = serde_json::to_value(validating.get("lumie-webhook").await.unwrap()).unwrap();
        for hook in live["webhooks"].as_array().unwrap() {
            assert_eq!(
                hook["clientConfig"]["caBundle"],
                rendered_ca.as_str(),
                "{round}"
            );
        }
    }
}
