//! The control plane itself: the server Deployment and its pods, what the Deployment says about
//! the server's settings (where the database URL, the OIDC client secret and the workspace
//! template come from), and the Secrets behind those settings. Pure over the objects read.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};

use super::checks::{env, id, name_of};
use super::reach::Reach;
use super::report::Check;

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

/// The URL workspace pods download the agent from: the Deployment's literal `LUMIE_AGENT_URL`,
/// else the server's default (the in-cluster Service). `None` when it comes from elsewhere.
pub fn agent_url(deploy: &Deployment) -> Option<String> {
    match env_source(server_container(deploy), env::AGENT_URL) {
        ValueSource::Literal(url) => Some(url),
        ValueSource::Unset => Some(lumie_contract::workspace::IN_CLUSTER_URL.to_string()),
        _ => None,
    }
}

/// The server check, told whether the server serves an agent binary: a server that answers
/// 404 for it fails (every new workspace would wait for its agent); one the doctor could not
/// ask from here keeps its verdict.
pub fn with_agent_binary(check: Check, reach: Option<&Reach>) -> Check {
    match reach {
        Some(Reach::Failed(why)) => Check::failure(
            check.id,
            format!("{}; but {why}", check.summary),
            "put lumie-agent-linux-amd64 (and lumie-agent-linux-arm64 for arm64 nodes; scripts/build-static.sh builds both) into the server's LUMIE_AGENT_BINARY_DIR (the server image ships it; a mounted volume over that path hides it)",
        ),
        Some(Reach::Reached(what)) if check.status == super::report::Status::Ok => {
            Check::ok(check.id, format!("{}; {what}", check.summary))
        }
        _ => check,
    }
}

/// The ConfigMap and key a file path inside the container comes from.
fn template_config_map(
    container: Option<&Container>,
    pod_spec: Option<&PodSpec>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::*;
    use crate::doctor::report::Status;
    use serde_json::json;

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
        server_env(&mut d)
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
            assert_verdict(name, &c, status, text);
            assert_eq!(c.fix.is_some(), status != Status::Ok, "{name}");
        }
        let mut zero = chart_deployment();
        zero.spec.as_mut().unwrap().replicas = Some(0);
        let c = server_deployment("coder", "coder", Some(&zero), &[]);
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("scaled to 0"));
    }

    #[test]
    fn secret_table() {
        let src = ValueSource::Secret {
            name: "coder-db-secret".into(),
            key: "url".into(),
        };
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
            assert_verdict(name, &c, status, text);
            assert!(
                !c.summary.contains("postgres://"),
                "{name}: values are never printed"
            );
        }
    }
}
