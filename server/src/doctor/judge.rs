//! Judging: the whole [`Report`] from the [`Facts`], pure, one check per line in the order an
//! operator reads them (control plane, its Secrets and services, the webhook, the lumie-dev
//! overlay, scheduling, the policy). The derivations [`super::facts::gather`] also needs to
//! know what to read next (the server's settings, the database URL, the policies in force,
//! the workspace identity, the template) are here, so reading and judging agree.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use lumie_contract::policy::WorkspacePolicySpec;
use lumie_contract::workspace;

use super::DoctorOptions;
use super::capacity::{self, TemplateFacts};
use super::checks::{env, id};
use super::control_plane::{self, DB_SECRET, OIDC_SECRET, SecretRole, ServerSettings, ValueSource};
use super::facts::{Facts, Read, ReadError, Secrets, secret};
use super::overlay;
use super::policy::{self, Effective};
use super::reach::{self, Reach};
use super::report::{Check, Report, Status};
use super::webhook::{self, ProbeOutcome};

/// A read that could not be done, as the check's line: forbidden is a warning (the doctor's
/// identity, not the install, is short), anything else a failure.
pub fn read_failed(id: &'static str, what: &str, e: &ReadError) -> Check {
    match e.code {
        Some(403) => Check::warning(
            id,
            format!("cannot read {what}: forbidden ({})", e.message),
            "run the doctor as someone allowed to read it (an admin kubeconfig)",
        ),
        _ => Check::failure(
            id,
            format!("reading {what}: {}", e.display),
            "check the kube API is reachable and healthy",
        ),
    }
}

/// The server's settings: from its Deployment, or the chart's defaults when it cannot be read.
pub fn settings(server: &Read<Option<Deployment>>) -> ServerSettings {
    match server {
        Ok(Some(d)) => control_plane::server_settings(d),
        _ => ServerSettings::chart_defaults(),
    }
}

/// The Secret check of one setting, over what was read.
fn secret_check(role: SecretRole, ns: &str, source: &ValueSource, secrets: &Secrets) -> Check {
    match source {
        ValueSource::Secret { name, .. } => match secret(secrets, name) {
            Ok(s) => control_plane::secret(role, ns, source, s),
            Err(e) => read_failed(role.id, &format!("Secret {ns}/{name}"), e),
        },
        other => control_plane::secret(role, ns, other, None),
    }
}

/// The database URL to connect to, or what the database check says instead: nothing to reach
/// (embedded SQLite), or not tried because the db-secret check failed or gave no URL.
pub fn database_target(
    ns: &str,
    settings: &ServerSettings,
    secrets: &Secrets,
) -> Result<String, Reach> {
    let url = match &settings.database_url {
        ValueSource::Unset => {
            return Err(Reach::NotConfigured(
                "embedded SQLite: no database server to reach".into(),
            ));
        }
        ValueSource::Literal(v) => Some(v.clone()),
        ValueSource::Secret { name, key } => match secret(secrets, name) {
            Ok(Some(s)) => s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_string()),
            _ => None,
        },
        ValueSource::Other(_) => None,
    };
    let secret_ok =
        secret_check(DB_SECRET, ns, &settings.database_url, secrets).status != Status::Failure;
    match url {
        Some(url) if secret_ok && !url.is_empty() => Ok(url),
        _ => Err(Reach::Skipped(
            "no usable database URL (see db-secret)".into(),
        )),
    }
}

/// The OIDC issuer to fetch the discovery document of, or why there is none: the doctor only
/// follows a literal issuer URL.
pub fn oidc_target(settings: &ServerSettings) -> Result<String, Reach> {
    match &settings.oidc_issuer_url {
        ValueSource::Literal(issuer) => Ok(issuer.clone()),
        ValueSource::Unset => Err(Reach::NotConfigured(format!(
            "{} is not set on the server: OIDC login is off",
            env::OIDC_ISSUER_URL
        ))),
        ValueSource::Secret { name, .. } => Err(Reach::NotConfigured(format!(
            "{} comes from Secret {name}; the doctor only follows a literal issuer URL",
            env::OIDC_ISSUER_URL
        ))),
        ValueSource::Other(why) => Err(Reach::NotConfigured(why.clone())),
    }
}

/// A probe's result, when the plan said to probe; a plan without its result is reported as
/// not checked rather than guessed.
fn reached(target: Result<String, Reach>, probed: Option<&Reach>) -> Reach {
    match (target, probed) {
        (Err(why), _) => why,
        (Ok(_), Some(r)) => r.clone(),
        (Ok(_), None) => Reach::Skipped("it was not probed".into()),
    }
}

/// The policies the webhook applies in `ws`. A failed list (other than the CRD's absence)
/// counts as no objects here; [`policy_read_error`] reports it.
pub fn effective(ws: &str, policies: &Read<Vec<(String, WorkspacePolicySpec)>>) -> Effective {
    match policies {
        Ok(list) => policy::effective_policies(ws, Some(list)),
        Err(e) if e.code == Some(404) => policy::effective_policies(ws, None),
        Err(_) => policy::effective_policies(ws, Some(&[])),
    }
}

/// The dind-exception line when the policies could not be listed.
fn policy_read_error(policies: &Read<Vec<(String, WorkspacePolicySpec)>>) -> Option<Check> {
    match policies {
        Err(e) if e.code != Some(404) => Some(read_failed(
            id::DIND_EXCEPTION,
            "WorkspacePolicy objects",
            e,
        )),
        _ => None,
    }
}

/// What the policies in force give workspace pods: the ServiceAccount (of the first covering
/// policy) and every avoided node label (of all of them, once each). Without a covering
/// policy, the contract default's.
pub fn workspace_identity(effective: &Effective) -> (String, Vec<String>) {
    match effective {
        Effective::Policies(list) => {
            let mut avoid: Vec<String> = Vec::new();
            for l in list.iter().flat_map(|(_, s)| &s.avoid_node_labels) {
                if !avoid.contains(l) {
                    avoid.push(l.clone());
                }
            }
            (list[0].1.service_account_name.clone(), avoid)
        }
        _ => {
            let d = WorkspacePolicySpec::contract_default();
            (d.service_account_name, d.avoid_node_labels)
        }
    }
}

/// The workspace template the server runs with: its ConfigMap's key, or the built-in one.
pub fn template(
    ns: &str,
    settings: &ServerSettings,
    config_map: Option<&Read<Option<ConfigMap>>>,
) -> Result<TemplateFacts, String> {
    let Some((cm, key)) = &settings.template else {
        return capacity::template_facts(None, "the built-in template");
    };
    let source = format!("ConfigMap {ns}/{cm} key {key}");
    match config_map {
        Some(Ok(Some(c))) => match c.data.as_ref().and_then(|d| d.get(key)) {
            Some(yaml) => capacity::template_facts(Some(yaml), &source),
            None => Err(format!("{source} is missing")),
        },
        Some(Ok(None)) | None => Err(format!("{source}: ConfigMap not found")),
        Some(Err(e)) => Err(format!("{source}: {}", e.display)),
    }
}

/// The `dind` image of the template, or the built-in one when the template cannot be read.
pub fn dind_image(template: &Result<TemplateFacts, String>) -> String {
    template
        .as_ref()
        .map(|t| t.dind_image.clone())
        .unwrap_or_else(|_| capacity::BUILTIN_DIND_IMAGE.to_string())
}

/// Every check, in order, from what was gathered.
pub fn judge(options: &DoctorOptions, facts: &Facts) -> Report {
    let ns = options.namespace.as_str();
    let ws = options.workspace_namespace.as_str();
    let deploy_name = options.server_deployment.as_str();
    let settings = settings(&facts.server);
    let mut out = Vec::new();

    // The server Deployment.
    out.push(match (&facts.server, &facts.server_pods) {
        (Ok(Some(d)), Ok(pods)) => control_plane::server_deployment(ns, deploy_name, Some(d), pods),
        (Ok(Some(_)), Err(e)) => read_failed(id::SERVER, &format!("pods in {ns}"), e),
        (Ok(None), _) => control_plane::server_deployment(ns, deploy_name, None, &[]),
        (Err(e), _) => read_failed(id::SERVER, &format!("Deployment {ns}/{deploy_name}"), e),
    });

    // The Secrets, and the services they unlock.
    out.push(secret_check(
        DB_SECRET,
        ns,
        &settings.database_url,
        &facts.secrets,
    ));
    out.push(secret_check(
        OIDC_SECRET,
        ns,
        &settings.oidc_client_secret,
        &facts.secrets,
    ));
    let db = database_target(ns, &settings, &facts.secrets);
    out.push(reach::database(&reached(db, facts.database.as_ref())));
    let oidc = oidc_target(&settings);
    out.push(reach::oidc_issuer(&reached(
        oidc,
        facts.oidc_issuer.as_ref(),
    )));

    // The webhook: configurations, CA bundle, and an answer through the apiserver.
    let name = options.webhook_name.as_str();
    match (&facts.mutating, &facts.validating) {
        (Ok(m), Ok(v)) => {
            out.push(webhook::webhook_configurations(
                name,
                ns,
                m.as_ref(),
                v.as_ref(),
            ));
            let entries = webhook::webhook_entries(m.as_ref(), v.as_ref());
            let tls = webhook::webhook_tls_secret(facts.webhook_deployment.as_ref(), name);
            out.push(match secret(&facts.secrets, &tls) {
                Ok(s) => webhook::webhook_ca_bundle(&entries, ns, &tls, s, facts.now_unix),
                Err(e) => read_failed(id::WEBHOOK_CA_BUNDLE, &format!("Secret {ns}/{tls}"), e),
            });
        }
        (Err(e), _) | (_, Err(e)) => {
            out.push(read_failed(
                id::WEBHOOK_CONFIGURATIONS,
                "webhook configurations",
                e,
            ));
            out.push(Check::warning(
                id::WEBHOOK_CA_BUNDLE,
                "not checked: the webhook configurations could not be read",
                "fix webhook-configurations first",
            ));
        }
    }
    let effective = effective(ws, &facts.policies);
    let (ws_service_account, avoid_labels) = workspace_identity(&effective);
    let outcome = match &facts.probe {
        Ok(pod) => ProbeOutcome::Admitted {
            mutated: avoid_labels.is_empty() || webhook::has_required_node_affinity(pod),
        },
        Err(e) if e.code.is_some() => webhook::classify_probe_error(&e.message),
        Err(e) => ProbeOutcome::NotProbed(e.display.clone()),
    };
    out.push(webhook::webhook_answering(ws, &outcome));

    // The lumie-dev overlay.
    out.push(match &facts.workspace_service_account {
        Ok(sa) => overlay::workspace_service_account(ws, &ws_service_account, sa.as_ref()),
        Err(e) => read_failed(
            id::WORKSPACE_SERVICE_ACCOUNT,
            &format!("ServiceAccount {ws}/{ws_service_account}"),
            e,
        ),
    });
    out.push(match &facts.role_bindings {
        Ok(list) => overlay::workspace_role_binding(ws, &ws_service_account, list),
        Err(e) => read_failed(
            id::WORKSPACE_ROLE_BINDING,
            &format!("RoleBindings in {ws}"),
            e,
        ),
    });
    out.push(match &facts.service {
        Ok(svc) => overlay::workspace_service(ws, workspace::STABLE_SERVICE, svc.as_ref()),
        Err(e) => read_failed(
            id::WORKSPACE_SERVICE,
            &format!("Service {ws}/{}", workspace::STABLE_SERVICE),
            e,
        ),
    });

    // Scheduling.
    out.push(match (&facts.workspace_pods, &facts.scheduling_events) {
        (Ok(pods), Ok(events)) => capacity::pending_workspaces(ws, pods, events),
        (Ok(pods), Err(_)) => capacity::pending_workspaces(ws, pods, &[]),
        (Err(e), _) => read_failed(id::PENDING_WORKSPACES, &format!("pods in {ws}"), e),
    });
    let template = template(ns, &settings, facts.template_config_map.as_ref());
    out.push(match (&template, &facts.nodes, &facts.running_pods) {
        (Err(why), _, _) => Check::warning(
            id::WORKER_CAPACITY,
            format!("not checked: the workspace template cannot be read ({why})"),
            "fix the template ConfigMap (server.workspaceTemplate values)",
        ),
        (Ok(t), Ok(nodes), Ok(pods)) => {
            capacity::worker_capacity(nodes, pods, &avoid_labels, &t.need)
        }
        (Ok(_), Err(e), _) => read_failed(id::WORKER_CAPACITY, "nodes", e),
        (Ok(_), _, Err(e)) => read_failed(id::WORKER_CAPACITY, "pods of all namespaces", e),
    });

    // The privileged dind exception, for pods the server creates.
    let creator = format!("system:serviceaccount:{ns}:{}", settings.service_account);
    out.push(policy_read_error(&facts.policies).unwrap_or_else(|| {
        policy::dind_exception(ws, &effective, &creator, &dind_image(&template))
    }));
    Report { checks: out }
}
