//! The verdicts: pure functions from what was observed (Kubernetes objects, probe outcomes) to
//! one [`Check`] each, with the fix. No I/O here, so every verdict is table-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lumie_contract::apps::WorkspaceApp;
use lumie_contract::labels;
use lumie_contract::policy::{PolicyMode, WorkspacePolicySpec, selector_matches};

use super::certs::{EXPIRY_WARNING_DAYS, verify_serving_cert};
use super::report::Check;

/// Check ids, stable for `--output json` consumers.
pub mod id {
    /// The kube API itself (only when it cannot be used at all).
    pub const KUBE_API: &str = "kube-api";
    /// The server Deployment and its pods.
    pub const SERVER: &str = "server-deployment";
    /// The database URL Secret.
    pub const DB_SECRET: &str = "db-secret";
    /// The OIDC client secret Secret.
    pub const OIDC_SECRET: &str = "oidc-secret";
    /// The database, connected to with the Secret's URL.
    pub const DATABASE: &str = "database";
    /// The OIDC issuer's discovery document.
    pub const OIDC_ISSUER: &str = "oidc-issuer";
    /// Both webhook configurations exist.
    pub const WEBHOOK_CONFIGURATIONS: &str = "webhook-configurations";
    /// Their caBundle verifies the serving certificate.
    pub const WEBHOOK_CA_BUNDLE: &str = "webhook-ca-bundle";
    /// The apiserver gets an answer from the webhook.
    pub const WEBHOOK_ANSWERING: &str = "webhook-answering";
    /// The `dev-workspace` ServiceAccount.
    pub const WORKSPACE_SERVICE_ACCOUNT: &str = "workspace-service-account";
    /// Its RoleBinding.
    pub const WORKSPACE_ROLE_BINDING: &str = "workspace-role-binding";
    /// The `dev-workspace` Service and its ports.
    pub const WORKSPACE_SERVICE: &str = "workspace-service";
    /// Workspace pods stuck in Pending.
    pub const PENDING_WORKSPACES: &str = "pending-workspaces";
    /// Room on the workers for one more workspace.
    pub const WORKER_CAPACITY: &str = "worker-capacity";
    /// The privileged `dind` exception.
    pub const DIND_EXCEPTION: &str = "dind-exception";
}

/// The server container's environment variable names the doctor reads.
pub mod env {
    /// PostgreSQL URL.
    pub const DATABASE_URL: &str = "CODER_PG_CONNECTION_URL";
    /// OIDC client secret.
    pub const OIDC_CLIENT_SECRET: &str = "CODER_OIDC_CLIENT_SECRET";
    /// OIDC issuer.
    pub const OIDC_ISSUER_URL: &str = "CODER_OIDC_ISSUER_URL";
    /// Workspace template file.
    pub const TEMPLATE_FILE: &str = "LUMIE_TEMPLATE_FILE";
}

/// Where a setting of the server comes from, as its Deployment says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// Not set at all.
    Unset,
    /// A literal `value`.
    Literal(String),
    /// `valueFrom.secretKeyRef` in the release namespace.
    Secret {
        /// Secret name.
        name: String,
        /// Key in it.
        key: String,
    },
    /// Some other `valueFrom` (ConfigMap, field): the doctor cannot follow it.
    Other(String),
}

/// What the server Deployment tells the doctor about the server's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// `CODER_PG_CONNECTION_URL`.
    pub database_url: ValueSource,
    /// `CODER_OIDC_CLIENT_SECRET`.
    pub oidc_client_secret: ValueSource,
    /// `CODER_OIDC_ISSUER_URL`.
    pub oidc_issuer_url: ValueSource,
    /// The server pods' ServiceAccount.
    pub service_account: String,
    /// The workspace template ConfigMap (name, key), when `LUMIE_TEMPLATE_FILE` points into one.
    pub template: Option<(String, String)>,
}

impl ServerSettings {
    /// What the chart's defaults give, for when the Deployment cannot be read.
    pub fn chart_defaults() -> Self {
        ServerSettings {
            database_url: ValueSource::Secret {
                name: "coder-db-secret".into(),
                key: "url".into(),
            },
            oidc_client_secret: ValueSource::Secret {
                name: "coder-oidc-secret".into(),
                key: "client-secret".into(),
            },
            oidc_issuer_url: ValueSource::Unset,
            service_account: "coder".into(),
            template: None,
        }
    }
}

fn server_container(deploy: &Deployment) -> Option<&Container> {
    let containers = &deploy.spec.as_ref()?.template.spec.as_ref()?.containers;
    containers
        .iter()
        .find(|c| c.name == "lumie-server")
        .or_else(|| containers.first())
}

fn env_source(container: Option<&Container>, name: &str) -> ValueSource {
    let Some(var) = container
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().rev().find(|e| e.name == name))
    else {
        return ValueSource::Unset;
    };
    if let Some(from) = &var.value_from {
        return match &from.secret_key_ref {
            Some(r) => ValueSource::Secret {
                name: r.name.clone(),
                key: r.key.clone(),
            },
            None => ValueSource::Other(format!(
                "{name} comes from a valueFrom the doctor cannot follow"
            )),
        };
    }
    match var.value.as_deref() {
        None | Some("") => ValueSource::Unset,
        Some(v) => ValueSource::Literal(v.to_string()),
    }
}

/// Reads the settings the doctor needs out of the server Deployment.
pub fn server_settings(deploy: &Deployment) -> ServerSettings {
    let container = server_container(deploy);
    let pod_spec = deploy.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let template = match env_source(container, env::TEMPLATE_FILE) {
        ValueSource::Literal(path) => template_config_map(container, pod_spec, &path),
        _ => None,
    };
    ServerSettings {
        database_url: env_source(container, env::DATABASE_URL),
        oidc_client_secret: env_source(container, env::OIDC_CLIENT_SECRET),
        oidc_issuer_url: env_source(container, env::OIDC_ISSUER_URL),
        service_account: pod_spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        template,
    }
}

/// The ConfigMap and key a file path inside the container comes from.
fn template_config_map(
    container: Option<&Container>,
    pod_spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
    path: &str,
) -> Option<(String, String)> {
    let (dir, file) = path.rsplit_once('/')?;
    let mount = container?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == dir)?;
    let volume = pod_spec?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    let cm = volume.config_map.as_ref()?;
    Some((cm.name.clone(), file.to_string()))
}

/// The server Deployment exists and enough of its pods are Ready.
pub fn server_deployment(
    namespace: &str,
    name: &str,
    deploy: Option<&Deployment>,
    pods: &[Pod],
) -> Check {
    let Some(deploy) = deploy else {
        return Check::failure(
            id::SERVER,
            format!("Deployment {namespace}/{name} not found"),
            format!(
                "install the control plane: helm upgrade --install lumie-coder charts/lumie-coder -n {namespace}"
            ),
        );
    };
    let desired = deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if desired == 0 {
        return Check::failure(
            id::SERVER,
            format!("Deployment {namespace}/{name} is scaled to 0 replicas"),
            format!("kubectl -n {namespace} scale deployment {name} --replicas=1"),
        );
    }
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready: Vec<&&Pod> = live.iter().filter(|p| pod_ready(p)).collect();
    let not_ready: Vec<String> = live
        .iter()
        .filter(|p| !pod_ready(p))
        .map(|p| format!("{} {}", name_of(&p.metadata), pod_state(p)))
        .collect();
    let summary = format!(
        "Deployment {namespace}/{name}: {}/{desired} pods ready{}",
        ready.len(),
        if not_ready.is_empty() {
            String::new()
        } else {
            format!(" (not ready: {})", not_ready.join(", "))
        }
    );
    let fix = format!(
        "kubectl -n {namespace} describe pods -l app.kubernetes.io/name=lumie-server; kubectl -n {namespace} logs deploy/{name}"
    );
    match ready.len() as i32 {
        0 => Check::failure(id::SERVER, summary, fix),
        n if n < desired => Check::warning(id::SERVER, summary, fix),
        _ => Check::ok(id::SERVER, summary),
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("?")
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The phase, and the first container's waiting reason when there is one (`CrashLoopBackOff`).
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter().find_map(|c| {
                c.state
                    .as_ref()
                    .and_then(|st| st.waiting.as_ref())
                    .and_then(|w| w.reason.clone())
            })
        });
    match waiting {
        Some(w) => format!("{phase}/{w}"),
        None => phase,
    }
}

/// Which setting a Secret check is about.
#[derive(Clone, Copy, Debug)]
pub struct SecretRole {
    /// Check id.
    pub id: &'static str,
    /// The server's environment variable.
    pub env: &'static str,
    /// What the setting is, in words.
    pub what: &'static str,
    /// Whether leaving it unset is fine (the database: embedded SQLite).
    pub optional: bool,
}

/// The database URL Secret.
pub const DB_SECRET: SecretRole = SecretRole {
    id: id::DB_SECRET,
    env: env::DATABASE_URL,
    what: "PostgreSQL connection URL",
    optional: true,
};

/// The OIDC client secret Secret.
pub const OIDC_SECRET: SecretRole = SecretRole {
    id: id::OIDC_SECRET,
    env: env::OIDC_CLIENT_SECRET,
    what: "OIDC client secret",
    optional: false,
};

/// The Secret behind a setting exists and holds a non-empty value under the key. Values are
/// never printed, only key names.
pub fn secret(
    role: SecretRole,
    namespace: &str,
    source: &ValueSource,
    secret: Option<&Secret>,
) -> Check {
    match source {
        ValueSource::Unset if role.optional => Check::ok(
            role.id,
            format!(
                "{} unset: the server uses its embedded SQLite database",
                role.env
            ),
        ),
        ValueSource::Unset => Check::failure(
            role.id,
            format!("{} ({}) is not set on the server", role.env, role.what),
            "set server.oidc.existingSecret/secretKey in the lumie-coder chart values",
        ),
        ValueSource::Literal(_) => Check::warning(
            role.id,
            format!(
                "{} is a literal value in the Deployment, not from a Secret",
                role.env
            ),
            "keep credentials in a Secret (the chart's existingSecret values, or vault.enabled)",
        ),
        ValueSource::Other(why) => Check::warning(
            role.id,
            why.clone(),
            format!("make {} a secretKeyRef so it can be checked", role.env),
        ),
        ValueSource::Secret { name, key } => {
            let create = format!(
                "kubectl -n {namespace} create secret generic {name} --from-literal={key}=… (or let Vault Secrets Operator render it: vault.enabled=true)"
            );
            let Some(s) = secret else {
                return Check::failure(
                    role.id,
                    format!(
                        "Secret {namespace}/{name} not found ({} for {})",
                        role.what, role.env
                    ),
                    create,
                );
            };
            let keys: Vec<&str> = s.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
            match s.data.as_ref().and_then(|d| d.get(key)) {
                None => Check::failure(
                    role.id,
                    format!(
                        "Secret {namespace}/{name} has no key {key:?} (keys: [{}])",
                        keys.join(", ")
                    ),
                    create,
                ),
                Some(v) if String::from_utf8_lossy(&v.0).trim().is_empty() => Check::failure(
                    role.id,
                    format!("Secret {namespace}/{name} key {key:?} is empty"),
                    create,
                ),
                Some(_) => Check::ok(
                    role.id,
                    format!(
                        "Secret {namespace}/{name} has a non-empty {key:?} ({})",
                        role.what
                    ),
                ),
            }
        }
    }
}

/// What happened when the doctor tried to reach a network service (database, OIDC issuer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Not configured; the string says why (and the check says whether that is fine).
    NotConfigured(String),
    /// Not tried because of an earlier check's failure.
    Skipped(String),
    /// Reached; what was seen.
    Reached(String),
    /// The host name does not resolve from where the doctor runs.
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// Reached, or tried to, and it failed.
    Failed(String),
}

/// Whether a host name only resolves inside a cluster: a Service name (no dot), or a name under
/// `.svc` / `.cluster.local`. From an operator's laptop those fail to resolve, which says
/// nothing about the server's view.
pub fn is_in_cluster_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() || h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    !h.contains('.') || h.ends_with(".svc") || h.contains(".svc.") || h.ends_with(".cluster.local")
}

fn reach_check(
    id: &'static str,
    what: &str,
    reach: &Reach,
    fix: &str,
    not_configured_ok: bool,
) -> Check {
    match reach {
        Reach::Reached(detail) => Check::ok(id, detail.clone()),
        Reach::NotConfigured(why) if not_configured_ok => Check::ok(id, why.clone()),
        Reach::NotConfigured(why) => Check::warning(id, why.clone(), fix.to_string()),
        Reach::Skipped(why) => Check::warning(
            id,
            format!("{what} not checked: {why}"),
            "fix the check named there first",
        ),
        Reach::Unresolvable { host, error } if is_in_cluster_host(host) => Check::warning(
            id,
            format!(
                "{what} host {host} is an in-cluster name this machine cannot resolve ({error}); not checked from here"
            ),
            "run the doctor inside the cluster: kubectl -n coder exec deploy/coder -- lumie-server doctor",
        ),
        Reach::Unresolvable { host, error } => Check::failure(
            id,
            format!("{what} host {host} does not resolve: {error}"),
            fix.to_string(),
        ),
        Reach::Failed(error) => Check::failure(id, format!("{what}: {error}"), fix.to_string()),
    }
}

/// The database answered with the Secret's URL.
pub fn database(reach: &Reach) -> Check {
    reach_check(
        id::DATABASE,
        "database",
        reach,
        "check the URL in the database Secret (host, port, user, password, database, sslmode) and that PostgreSQL accepts connections from the cluster",
        true,
    )
}

/// The OIDC issuer serves its discovery document.
pub fn oidc_issuer(reach: &Reach) -> Check {
    reach_check(
        id::OIDC_ISSUER,
        "OIDC issuer",
        reach,
        "check server.oidc.issuerUrl (CODER_OIDC_ISSUER_URL) is the realm URL, e.g. https://auth.lumie-edu.com/realms/infra, and that Keycloak is up",
        false,
    )
}

/// Judges a discovery document fetched from `issuer`: it must name the same issuer (Keycloak
/// behind a proxy with the wrong hostname setting names another one, and logins then fail).
pub fn discovery_document(issuer: &str, status: u16, body: &str) -> Reach {
    if !(200..300).contains(&status) {
        return Reach::Failed(format!(
            "{issuer}/.well-known/openid-configuration answered HTTP {status}"
        ));
    }
    let doc: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Reach::Failed(format!(
                "{issuer}/.well-known/openid-configuration is not JSON: {e}"
            ));
        }
    };
    let named = doc["issuer"].as_str().unwrap_or_default();
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Reach::Failed(format!(
            "the discovery document of {issuer} names issuer {named:?}: tokens will not validate"
        ));
    }
    for field in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
        if doc[field].as_str().is_none_or(str::is_empty) {
            return Reach::Failed(format!("the discovery document of {issuer} has no {field}"));
        }
    }
    Reach::Reached(format!(
        "OIDC issuer {issuer} serves its discovery document"
    ))
}

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

/// The ServiceAccount every workspace pod runs as exists.
pub fn workspace_service_account(
    namespace: &str,
    name: &str,
    sa: Option<&ServiceAccount>,
) -> Check {
    match sa {
        Some(_) => Check::ok(
            id::WORKSPACE_SERVICE_ACCOUNT,
            format!("ServiceAccount {namespace}/{name} present"),
        ),
        None => Check::failure(
            id::WORKSPACE_SERVICE_ACCOUNT,
            format!(
                "ServiceAccount {namespace}/{name} not found: workspace pods cannot be created"
            ),
            format!(
                "helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (the overlay owns it; the control plane never creates it)"
            ),
        ),
    }
}

/// A RoleBinding in the namespace grants the workspace ServiceAccount a role.
pub fn workspace_role_binding(namespace: &str, sa: &str, bindings: &[RoleBinding]) -> Check {
    let binds = |rb: &&RoleBinding| {
        rb.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref().unwrap_or(namespace) == namespace
        })
    };
    match bindings.iter().find(binds) {
        Some(rb) => Check::ok(
            id::WORKSPACE_ROLE_BINDING,
            format!(
                "RoleBinding {namespace}/{} binds ServiceAccount {sa} to {} {}",
                name_of(&rb.metadata),
                rb.role_ref.kind,
                rb.role_ref.name
            ),
        ),
        None => Check::failure(
            id::WORKSPACE_ROLE_BINDING,
            format!(
                "no RoleBinding in {namespace} binds ServiceAccount {sa}: developers cannot use kubectl from their workspace"
            ),
            format!(
                "helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (RoleBinding {sa}-admin)"
            ),
        ),
    }
}

/// How the Service's ports differ from the contract: (problems, extra ports).
pub fn port_drift(service: &Service, apps: &[WorkspaceApp]) -> (Vec<String>, Vec<String>) {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for app in apps {
        let want = i32::from(app.port);
        let Some(p) = ports.iter().find(|p| p.name.as_deref() == Some(app.slug)) else {
            let by_number = ports.iter().find(|p| p.port == want);
            problems.push(match by_number.and_then(|p| p.name.clone()) {
                Some(other) => format!(
                    "port {want} is named {other:?}, the contract says {:?}",
                    app.slug
                ),
                None => format!("port {} ({want}) is missing", app.slug),
            });
            continue;
        };
        if p.port != want {
            problems.push(format!(
                "port {} is {}, the contract says {want}",
                app.slug, p.port
            ));
        }
        let target_ok = match &p.target_port {
            None => p.port == want,
            Some(IntOrString::Int(n)) => *n == want,
            Some(IntOrString::String(s)) => s == app.slug || s.parse::<i32>() == Ok(want),
        };
        if !target_ok {
            let shown = match &p.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => p.port.to_string(),
            };
            problems.push(format!(
                "port {} targets {shown}, the workspace pods listen on {want}",
                app.slug
            ));
        }
        if let Some(proto) = p.protocol.as_deref().filter(|p| *p != "TCP") {
            problems.push(format!(
                "port {} is {proto}, the contract says TCP",
                app.slug
            ));
        }
    }
    let extras = ports
        .iter()
        .filter(|p| !apps.iter().any(|a| p.name.as_deref() == Some(a.slug)))
        .filter(|p| !apps.iter().any(|a| i32::from(a.port) == p.port))
        .map(|p| format!("{} ({})", p.name.clone().unwrap_or_default(), p.port))
        .collect();
    (problems, extras)
}

/// The stable Service exists, selects workspace pods, and its ports match the contract.
pub fn workspace_service(
    namespace: &str,
    name: &str,
    service: Option<&Service>,
    apps: &[WorkspaceApp],
) -> Check {
    let contract: Vec<String> = apps
        .iter()
        .map(|a| format!("{} {}", a.slug, a.port))
        .collect();
    let fix = format!(
        "restore the overlay's Service: helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (service.ports: {})",
        contract.join(", ")
    );
    let Some(service) = service else {
        return Check::failure(
            id::WORKSPACE_SERVICE,
            format!("Service {namespace}/{name} not found: workspace apps are unreachable"),
            fix,
        );
    };
    let (mut problems, extras) = port_drift(service, apps);
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.get(labels::APP_NAME).map(String::as_str) != Some(labels::APP_NAME_WORKSPACE) {
        problems.push(format!(
            "selector {selector:?} does not select workspace pods ({}={})",
            labels::APP_NAME,
            labels::APP_NAME_WORKSPACE
        ));
    }
    if !problems.is_empty() {
        return Check::failure(
            id::WORKSPACE_SERVICE,
            format!(
                "Service {namespace}/{name} drifted from the contract: {}",
                problems.join("; ")
            ),
            fix,
        );
    }
    let summary = format!(
        "Service {namespace}/{name} ports match the contract ({})",
        contract.join(", ")
    );
    if extras.is_empty() {
        Check::ok(id::WORKSPACE_SERVICE, summary)
    } else {
        Check::warning(
            id::WORKSPACE_SERVICE,
            format!(
                "{summary}; extra ports not in the contract: {}",
                extras.join(", ")
            ),
            "remove ports the contract does not name, or add them to contract::apps",
        )
    }
}

/// The policies the webhook enforces in a namespace, as the doctor works them out.
#[derive(Clone, Debug, PartialEq)]
pub enum Effective {
    /// No (valid) WorkspacePolicy object: the webhook applies the built-in contract default.
    Builtin {
        /// Why: no CRD, no objects, or every object invalid (names and problems).
        why: String,
    },
    /// Valid objects covering the namespace, by name.
    Policies(Vec<(String, WorkspacePolicySpec)>),
    /// Valid objects exist but none covers the namespace: nothing guards its pods.
    NoneCovering(Vec<String>),
}

/// Mirrors the webhook's rule: invalid objects are ignored; with no valid object at all the
/// built-in default applies; otherwise the valid objects naming the namespace apply.
/// `objects` is `None` when the CRD is not installed.
pub fn effective_policies(
    namespace: &str,
    objects: Option<&[(String, WorkspacePolicySpec)]>,
) -> Effective {
    let Some(objects) = objects else {
        return Effective::Builtin {
            why: "the WorkspacePolicy CRD is not installed".into(),
        };
    };
    let mut invalid = Vec::new();
    let mut valid = Vec::new();
    for (name, spec) in objects {
        match spec.validate(k8s_openapi::jiff::Timestamp::now()) {
            Ok(()) => valid.push((name.clone(), spec.clone())),
            Err(problems) => invalid.push(format!("{name} ({})", problems.join("; "))),
        }
    }
    if valid.is_empty() {
        return Effective::Builtin {
            why: if invalid.is_empty() {
                "no WorkspacePolicy objects".into()
            } else {
                format!(
                    "every WorkspacePolicy is invalid and ignored: {}",
                    invalid.join(", ")
                )
            },
        };
    }
    let names: Vec<String> = valid.iter().map(|(n, _)| n.clone()).collect();
    let covering: Vec<(String, WorkspacePolicySpec)> = valid
        .into_iter()
        .filter(|(_, s)| s.namespaces.iter().any(|n| n == namespace))
        .collect();
    if covering.is_empty() {
        Effective::NoneCovering(names)
    } else {
        Effective::Policies(covering)
    }
}

/// Why a policy does not let the server's `dind` container run privileged, if it does not.
fn dind_problem(
    name: &str,
    spec: &WorkspacePolicySpec,
    creator: &str,
    image: &str,
) -> Option<String> {
    let workspace_labels = BTreeMap::from([(
        labels::APP_NAME.to_string(),
        labels::APP_NAME_WORKSPACE.to_string(),
    )]);
    let dind = lumie_contract::workspace::CONTAINER_DIND;
    let Some(ex) = spec.privileged_containers.iter().find(|c| c.name == dind) else {
        return Some(format!(
            "WorkspacePolicy {name} lists no privileged container {dind:?}"
        ));
    };
    if !ex.image_matcher().is_ok_and(|m| m.is_match(image)) {
        return Some(format!(
            "WorkspacePolicy {name} allows {dind:?} only with images [{}], not {image}",
            ex.images.join(", ")
        ));
    }
    if !spec.workspace_creators.iter().any(|c| c == creator) {
        return Some(format!(
            "WorkspacePolicy {name} workspaceCreators [{}] lacks {creator}: the server's pods lose the exception",
            spec.workspace_creators.join(", ")
        ));
    }
    if !selector_matches(&spec.workspace_selector, &workspace_labels) {
        return Some(format!(
            "WorkspacePolicy {name} workspaceSelector does not match workspace pods ({}={})",
            labels::APP_NAME,
            labels::APP_NAME_WORKSPACE
        ));
    }
    None
}

/// The privileged `dind` exception is in force for the server's workspace pods: every policy
/// covering the namespace allows `dind` with the template's image, for pods the server's
/// ServiceAccount creates. Non-enforcing policies only warn.
pub fn dind_exception(
    namespace: &str,
    effective: &Effective,
    creator: &str,
    dind_image: &str,
) -> Check {
    let id = id::DIND_EXCEPTION;
    let fix = "give dind its exception back: privilegedContainers [{name: dind, images: [\"docker:*dind*\", \"docker.io/library/docker:*dind*\"]}] and the server's ServiceAccount in workspaceCreators (kubectl edit workspacepolicy default)";
    match effective {
        Effective::Builtin { why } => {
            let builtin = WorkspacePolicySpec::contract_default();
            match dind_problem("default (built-in)", &builtin, creator, dind_image) {
                None => Check::ok(
                    id,
                    format!(
                        "dind may run privileged with {dind_image} under the built-in default policy ({why})"
                    ),
                ),
                Some(p) => Check::failure(
                    id,
                    format!("{p} ({why})"),
                    "install the default WorkspacePolicy (defaultPolicy.enabled=true) with the server's ServiceAccount as creator",
                ),
            }
        }
        Effective::NoneCovering(names) => Check::failure(
            id,
            format!(
                "no valid WorkspacePolicy covers {namespace} (policies: {}): its pods are not guarded at all",
                names.join(", ")
            ),
            format!("add {namespace} to spec.namespaces of the default WorkspacePolicy"),
        ),
        Effective::Policies(list) => {
            let mut enforced = Vec::new();
            let mut soft = Vec::new();
            for (name, spec) in list {
                if let Some(p) = dind_problem(name, spec, creator, dind_image) {
                    if spec.mode == PolicyMode::Enforce {
                        enforced.push(p);
                    } else {
                        soft.push(format!(
                            "{p} (mode {}: reported, not denied)",
                            spec.mode.as_str()
                        ));
                    }
                }
            }
            let names: Vec<String> = list
                .iter()
                .map(|(n, s)| format!("{n} ({})", s.mode.as_str()))
                .collect();
            if !enforced.is_empty() {
                Check::failure(id, enforced.join("; "), fix)
            } else if !soft.is_empty() {
                Check::warning(id, soft.join("; "), fix)
            } else {
                Check::ok(
                    id,
                    format!(
                        "dind may run privileged with {dind_image} for pods created by {creator} under WorkspacePolicy {}",
                        names.join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use lumie_contract::apps;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("test object")
    }

    fn chart_deployment() -> Deployment {
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

    fn pod(name: &str, ready: bool, waiting: Option<&str>) -> Pod {
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

    #[test]
    fn settings_follow_the_deployment() {
        let s = server_settings(&chart_deployment());
        assert_eq!(
            s.database_url,
            ValueSource::Secret {
                name: "coder-db-secret".into(),
                key: "url".into()
            }
        );
        assert_eq!(
            s.oidc_client_secret,
            ValueSource::Secret {
                name: "coder-oidc-secret".into(),
                key: "client-secret".into()
            }
        );
        assert_eq!(
            s.oidc_issuer_url,
            ValueSource::Literal("https://auth.example/realms/infra".into())
        );
        assert_eq!(s.service_account, "coder");
        assert_eq!(
            s.template,
            Some(("coder-workspace-template".into(), "template.yaml".into()))
        );
        // The embedded-database chart mode leaves the URL out.
        let mut d = chart_deployment();
        let c = &mut d
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        c.env
            .as_mut()
            .unwrap()
            .retain(|e| e.name != "CODER_PG_CONNECTION_URL" && e.name != "LUMIE_TEMPLATE_FILE");
        let s = server_settings(&d);
        assert_eq!(s.database_url, ValueSource::Unset);
        assert_eq!(s.template, None);
        assert_eq!(ServerSettings::chart_defaults().service_account, "coder");
    }

    #[test]
    fn server_deployment_table() {
        let d = chart_deployment();
        type Case<'a> = (
            &'static str,
            Option<&'a Deployment>,
            Vec<Pod>,
            Status,
            &'static str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "missing",
                None,
                vec![],
                Status::Failure,
                "Deployment coder/coder not found",
            ),
            (
                "no pods",
                Some(&d),
                vec![],
                Status::Failure,
                "0/2 pods ready",
            ),
            (
                "crashing",
                Some(&d),
                vec![pod("coder-a", false, Some("CrashLoopBackOff"))],
                Status::Failure,
                "coder-a Pending/CrashLoopBackOff",
            ),
            (
                "half",
                Some(&d),
                vec![pod("coder-a", true, None), pod("coder-b", false, None)],
                Status::Warning,
                "1/2 pods ready (not ready: coder-b Pending)",
            ),
            (
                "all",
                Some(&d),
                vec![pod("coder-a", true, None), pod("coder-b", true, None)],
                Status::Ok,
                "2/2 pods ready",
            ),
        ];
        for (name, deploy, pods, status, text) in cases {
            let c = server_deployment("coder", "coder", deploy, &pods);
            assert_eq!(c.status, status, "{name}: {c:?}");
            assert!(
                c.summary.contains(text),
                "{name}: {:?} lacks {text:?}",
                c.summary
            );
            assert_eq!(c.fix.is_some(), status != Status::Ok, "{name}");
        }
        let mut zero = chart_deployment();
        zero.spec.as_mut().unwrap().replicas = Some(0);
        let c = server_deployment("coder", "coder", Some(&zero), &[]);
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("scaled to 0"));
    }

    fn secret_with(data: serde_json::Value) -> Secret {
        from(json!({"metadata": {"name": "s"}, "data": data}))
    }

    #[test]
    fn secret_table() {
        let src = ValueSource::Secret {
            name: "coder-db-secret".into(),
            key: "url".into(),
        };
        let b64 =
            |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
        let good = secret_with(json!({"url": b64("postgres://u:p@db/x")}));
        let empty = secret_with(json!({"url": b64("  ")}));
        let other_key = secret_with(json!({"password": b64("p")}));
        type Case<'a> = (
            &'static str,
            SecretRole,
            ValueSource,
            Option<&'a Secret>,
            Status,
            &'static str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "present",
                DB_SECRET,
                src.clone(),
                Some(&good),
                Status::Ok,
                "Secret coder/coder-db-secret has a non-empty \"url\"",
            ),
            (
                "deleted",
                DB_SECRET,
                src.clone(),
                None,
                Status::Failure,
                "Secret coder/coder-db-secret not found",
            ),
            (
                "empty value",
                DB_SECRET,
                src.clone(),
                Some(&empty),
                Status::Failure,
                "key \"url\" is empty",
            ),
            (
                "wrong key",
                DB_SECRET,
                src.clone(),
                Some(&other_key),
                Status::Failure,
                "has no key \"url\" (keys: [password])",
            ),
            (
                "embedded sqlite",
                DB_SECRET,
                ValueSource::Unset,
                None,
                Status::Ok,
                "embedded SQLite",
            ),
            (
                "oidc unset",
                OIDC_SECRET,
                ValueSource::Unset,
                None,
                Status::Failure,
                "CODER_OIDC_CLIENT_SECRET",
            ),
            (
                "literal",
                OIDC_SECRET,
                ValueSource::Literal("x".into()),
                None,
                Status::Warning,
                "literal value",
            ),
        ];
        for (name, role, source, s, status, text) in cases {
            let c = secret(role, "coder", &source, s);
            assert_eq!(c.status, status, "{name}: {c:?}");
            assert!(
                c.summary.contains(text),
                "{name}: {:?} lacks {text:?}",
                c.summary
            );
            assert!(
                !c.summary.contains("postgres://"),
                "{name}: values are never printed"
            );
        }
    }

    #[test]
    fn in_cluster_hosts() {
        for h in [
            "postgres",
            "postgres.db.svc",
            "postgres.db.svc.cluster.local",
            "pg.db.svc.corp.internal",
            "x.cluster.local.",
        ] {
            assert!(is_in_cluster_host(h), "{h}");
        }
        for h in [
            "db.example.com",
            "127.0.0.1",
            "localhost",
            "::1",
            "auth.lumie-edu.com",
            "",
        ] {
            assert!(!is_in_cluster_host(h), "{h}");
        }
    }

    #[test]
    fn reach_table() {
        let unresolvable = |host: &str| Reach::Unresolvable {
            host: host.into(),
            error: "no such host".into(),
        };
        type Case = (
            &'static str,
            fn(&Reach) -> Check,
            Reach,
            Status,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "db reached",
                database,
                Reach::Reached("connected".into()),
                Status::Ok,
                "connected",
            ),
            (
                "db in-cluster",
                database,
                unresolvable("postgres.db.svc"),
                Status::Warning,
                "in-cluster name this machine cannot resolve",
            ),
            (
                "db public unresolvable",
                database,
                unresolvable("db.example.com"),
                Status::Failure,
                "does not resolve",
            ),
            (
                "db refused",
                database,
                Reach::Failed("connection refused".into()),
                Status::Failure,
                "connection refused",
            ),
            (
                "db embedded",
                database,
                Reach::NotConfigured("embedded SQLite".into()),
                Status::Ok,
                "embedded",
            ),
            (
                "db skipped",
                database,
                Reach::Skipped("see db-secret".into()),
                Status::Warning,
                "not checked",
            ),
            (
                "oidc unset",
                oidc_issuer,
                Reach::NotConfigured("CODER_OIDC_ISSUER_URL unset".into()),
                Status::Warning,
                "unset",
            ),
            (
                "oidc in-cluster",
                oidc_issuer,
                unresolvable("keycloak"),
                Status::Warning,
                "in-cluster",
            ),
        ];
        for (name, f, reach, status, text) in cases {
            let c = f(&reach);
            assert_eq!(c.status, status, "{name}: {c:?}");
            assert!(
                c.summary.contains(text),
                "{name}: {:?} lacks {text:?}",
                c.summary
            );
        }
    }

    #[test]
    fn discovery_document_table() {
        let iss = "http://127.0.0.1:1/realms/infra";
        let doc = |issuer: &str| {
            json!({"issuer": issuer, "authorization_endpoint": "a", "token_endpoint": "t", "jwks_uri": "j"}).to_string()
        };
        let cases: Vec<(&str, u16, String, Option<&str>)> = vec![
            ("good", 200, doc(iss), None),
            ("trailing slash", 200, doc(&format!("{iss}/")), None),
            ("404", 404, "not found".into(), Some("answered HTTP 404")),
            ("html", 200, "<html>".into(), Some("is not JSON")),
            (
                "other issuer",
                200,
                doc("http://keycloak:8080/realms/infra"),
                Some("names issuer"),
            ),
            (
                "no jwks",
                200,
                json!({"issuer": iss, "authorization_endpoint": "a", "token_endpoint": "t"})
                    .to_string(),
                Some("no jwks_uri"),
            ),
        ];
        for (name, status, body, want) in cases {
            match (discovery_document(iss, status, &body), want) {
                (Reach::Reached(_), None) => {}
                (Reach::Failed(e), Some(w)) => assert!(e.contains(w), "{name}: {e}"),
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }

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

    fn service(ports: serde_json::Value) -> Service {
        from(json!({
            "metadata": {"name": "dev-workspace"},
            "spec": {"selector": {"app.kubernetes.io/name": "dev-workspace"}, "ports": ports}
        }))
    }

    fn contract_ports() -> serde_json::Value {
        json!([
            {"name": "tilt", "port": 10350, "targetPort": 10350, "protocol": "TCP"},
            {"name": "code-server", "port": 13337, "targetPort": 13337, "protocol": "TCP"},
            {"name": "agents", "port": 3000, "targetPort": 3000, "protocol": "TCP"}
        ])
    }

    #[test]
    fn port_drift_table() {
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(&str, Edit, &[&str], &[&str])] = &[
            ("contract", |_| {}, &[], &[]),
            (
                "targetPort by name",
                |p| p[1]["targetPort"] = json!("code-server"),
                &[],
                &[],
            ),
            (
                "targetPort as number string",
                |p| p[1]["targetPort"] = json!("13337"),
                &[],
                &[],
            ),
            (
                "no targetPort",
                |p| {
                    p[0].as_object_mut().unwrap().remove("targetPort");
                },
                &[],
                &[],
            ),
            (
                "port drift",
                |p| p[1]["port"] = json!(13338),
                &["port code-server is 13338, the contract says 13337"],
                &[],
            ),
            (
                "targetPort drift",
                |p| p[2]["targetPort"] = json!(3001),
                &["port agents targets 3001, the workspace pods listen on 3000"],
                &[],
            ),
            (
                "wrong target name",
                |p| p[2]["targetPort"] = json!("http"),
                &["port agents targets http, the workspace pods listen on 3000"],
                &[],
            ),
            (
                "missing",
                |p| {
                    p.as_array_mut().unwrap().remove(0);
                },
                &["port tilt (10350) is missing"],
                &[],
            ),
            (
                "renamed",
                |p| p[0]["name"] = json!("tilt-ui"),
                &["port 10350 is named \"tilt-ui\", the contract says \"tilt\""],
                &[],
            ),
            (
                "udp",
                |p| p[0]["protocol"] = json!("UDP"),
                &["port tilt is UDP, the contract says TCP"],
                &[],
            ),
            (
                "extra",
                |p| {
                    p.as_array_mut()
                        .unwrap()
                        .push(json!({"name": "debug", "port": 2345}))
                },
                &[],
                &["debug (2345)"],
            ),
        ];
        for (name, edit, problems, extras) in cases {
            let mut ports = contract_ports();
            edit(&mut ports);
            let (p, e) = port_drift(&service(ports), &apps::ALL);
            assert_eq!(p, *problems, "{name}");
            assert_eq!(e, *extras, "{name}");
        }
    }

    #[test]
    fn workspace_service_verdicts() {
        let ok = service(contract_ports());
        let c = workspace_service("lumie-dev", "dev-workspace", Some(&ok), &apps::ALL);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.summary
                .contains("tilt 10350, code-server 13337, agents 3000")
        );
        let mut drift = contract_ports();
        drift[1]["port"] = json!(13338);
        let c = workspace_service(
            "lumie-dev",
            "dev-workspace",
            Some(&service(drift)),
            &apps::ALL,
        );
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("Service lumie-dev/dev-workspace drifted"),
            "{c:?}"
        );
        assert!(c.fix.unwrap().contains("code-server 13337"));
        let c = workspace_service("lumie-dev", "dev-workspace", None, &apps::ALL);
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("not found"));
        let mut wrong_selector = service(contract_ports());
        wrong_selector.spec.as_mut().unwrap().selector =
            Some(BTreeMap::from([("app".to_string(), "x".to_string())]));
        let c = workspace_service(
            "lumie-dev",
            "dev-workspace",
            Some(&wrong_selector),
            &apps::ALL,
        );
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("does not select workspace pods"));
        let mut extra = contract_ports();
        extra
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "debug", "port": 2345}));
        let c = workspace_service(
            "lumie-dev",
            "dev-workspace",
            Some(&service(extra)),
            &apps::ALL,
        );
        assert_eq!(c.status, Status::Warning);
    }

    #[test]
    fn service_account_and_role_binding() {
        let sa: ServiceAccount = from(json!({"metadata": {"name": "dev-workspace"}}));
        assert_eq!(
            workspace_service_account("lumie-dev", "dev-workspace", Some(&sa)).status,
            Status::Ok
        );
        let c = workspace_service_account("lumie-dev", "dev-workspace", None);
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("ServiceAccount lumie-dev/dev-workspace not found")
        );

        let rb = |name: &str, sa: &str, ns: Option<&str>| -> RoleBinding {
            let mut subject = json!({"kind": "ServiceAccount", "name": sa});
            if let Some(ns) = ns {
                subject["namespace"] = json!(ns);
            }
            from(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [subject]
            }))
        };
        let c = workspace_role_binding(
            "lumie-dev",
            "dev-workspace",
            &[
                rb("other", "someone", None),
                rb("dev-workspace-admin", "dev-workspace", Some("lumie-dev")),
            ],
        );
        assert_eq!(c.status, Status::Ok);
        assert!(c.summary.contains(
            "dev-workspace-admin binds ServiceAccount dev-workspace to ClusterRole admin"
        ));
        let c = workspace_role_binding(
            "lumie-dev",
            "dev-workspace",
            &[rb("x", "dev-workspace", Some("elsewhere"))],
        );
        assert_eq!(
            c.status,
            Status::Failure,
            "a subject from another namespace is someone else"
        );
    }

    fn webhook_configs(
        bundle: &str,
    ) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
        let b64 = |s: &str| {
            // ByteString deserializes base64; serialize through it to get the encoding.
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap()
        };
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
        let tls: Secret = from(json!({"metadata": {"name": "lumie-webhook-tls"},
            "data": {"tls.crt": serde_json::to_value(k8s_openapi::ByteString(leaf.pem().into_bytes())).unwrap()}}));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        let (m, v) = webhook_configs(&ca.pem());
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

        let (m, v) = webhook_configs(&other.pem());
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

    fn policy(edit: impl FnOnce(&mut WorkspacePolicySpec)) -> WorkspacePolicySpec {
        let mut p = WorkspacePolicySpec::contract_default();
        edit(&mut p);
        p
    }

    #[test]
    fn effective_policy_mirrors_the_webhook() {
        let ns = "lumie-dev";
        assert!(matches!(
            effective_policies(ns, None),
            Effective::Builtin { .. }
        ));
        assert!(
            matches!(effective_policies(ns, Some(&[])), Effective::Builtin { why } if why == "no WorkspacePolicy objects")
        );
        let invalid = vec![("broken".to_string(), policy(|p| p.namespaces.clear()))];
        assert!(
            matches!(effective_policies(ns, Some(&invalid)), Effective::Builtin { why } if why.contains("broken"))
        );
        let elsewhere = vec![(
            "other".to_string(),
            policy(|p| p.namespaces = vec!["x".into()]),
        )];
        assert_eq!(
            effective_policies(ns, Some(&elsewhere)),
            Effective::NoneCovering(vec!["other".into()])
        );
        let mixed = vec![
            ("default".to_string(), policy(|_| {})),
            (
                "other".to_string(),
                policy(|p| p.namespaces = vec!["x".into()]),
            ),
        ];
        match effective_policies(ns, Some(&mixed)) {
            Effective::Policies(list) => assert_eq!(list.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dind_exception_table() {
        let creator = "system:serviceaccount:coder:coder";
        let one = |p: WorkspacePolicySpec| Effective::Policies(vec![("default".into(), p)]);
        let cases: Vec<(&str, Effective, &str, Status, &str)> = vec![
            (
                "builtin",
                Effective::Builtin {
                    why: "no WorkspacePolicy objects".into(),
                },
                "docker:27-dind",
                Status::Ok,
                "built-in default policy",
            ),
            (
                "default object",
                one(policy(|_| {})),
                "docker:27-dind",
                Status::Ok,
                "under WorkspacePolicy default (Enforce)",
            ),
            (
                "no dind",
                one(policy(|p| p.privileged_containers.clear())),
                "docker:27-dind",
                Status::Failure,
                "lists no privileged container \"dind\"",
            ),
            (
                "image not allowed",
                one(policy(|p| {
                    p.privileged_containers[0].images = vec!["registry.local/dind:*".into()]
                })),
                "docker:27-dind",
                Status::Failure,
                "not docker:27-dind",
            ),
            (
                "template image off",
                one(policy(|_| {})),
                "ubuntu:dind",
                Status::Failure,
                "not ubuntu:dind",
            ),
            (
                "creator missing",
                one(policy(|p| p.workspace_creators = vec!["someone".into()])),
                "docker:27-dind",
                Status::Failure,
                "lacks system:serviceaccount:coder:coder",
            ),
            (
                "warn mode",
                one(policy(|p| {
                    p.mode = PolicyMode::Warn;
                    p.privileged_containers.clear();
                })),
                "docker:27-dind",
                Status::Warning,
                "mode Warn",
            ),
            (
                "none covering",
                Effective::NoneCovering(vec!["other".into()]),
                "docker:27-dind",
                Status::Failure,
                "no valid WorkspacePolicy covers lumie-dev",
            ),
        ];
        for (name, eff, image, status, text) in cases {
            let c = dind_exception("lumie-dev", &eff, creator, image);
            assert_eq!(c.status, status, "{name}: {c:?}");
            assert!(
                c.summary.contains(text),
                "{name}: {:?} lacks {text:?}",
                c.summary
            );
        }
        let c = dind_exception(
            "lumie-dev",
            &Effective::Builtin { why: "x".into() },
            "system:serviceaccount:other:sa",
            "docker:27-dind",
        );
        assert_eq!(
            c.status,
            Status::Failure,
            "the built-in default names coder:coder only"
        );
    }
}
