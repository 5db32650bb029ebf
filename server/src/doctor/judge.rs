//! Judging: the whole [`Report`] from the [`Facts`], pure, one check per line in the order an
//! operator reads them (control plane, its Secrets and services, the webhook, the lumie-dev
//! overlay, scheduling, the policy). The derivations [`super::facts::gather`] also needs to
//! know what to read next (the server's settings, the database URL, the policies in force,
//! the workspace identity, the template) are here, so reading and judging agree.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
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
pub fn effective(
    ws: &str,
    policies: &Read<Vec<(String, WorkspacePolicySpec)>>,
    now_unix: i64,
) -> Effective {
    let now = Timestamp::from_second(now_unix).unwrap_or(Timestamp::UNIX_EPOCH);
    match policies {
        Ok(list) => policy::effective_policies(ws, Some(list), now),
        Err(e) if e.code == Some(404) => policy::effective_policies(ws, None, now),
        Err(_) => policy::effective_policies(ws, Some(&[]), now),
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
        (Ok(Some(d)), Ok(pods)) => control_plane::with_agent_binary(
            control_plane::server_deployment(ns, deploy_name, Some(d), pods),
            facts.agent_binary.as_ref(),
        ),
        (Ok(Some(_)), Err(e)) => read_failed(id::SERVER, &format!("pods in {ns}"), e),
        (Ok(None), _) => control_plane::server_deployment(ns, deploy_name, None, &[]),
        (Err(e), _) => read_failed(id::SERVER, &format!("Deployment {ns}/{deploy_name}"), e),
    });

    // The replicas and the leader, where there is an election.
    if let (Some((lease_name, lease)), Ok(pods)) = (&facts.leader_lease, &facts.server_pods) {
        out.push(super::leader::leadership(
            ns,
            lease_name,
            pods,
            lease,
            facts.now_unix * 1000,
        ));
    }

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
    let effective = effective(ws, &facts.policies, facts.now_unix);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::*;
    use k8s_openapi::api::core::v1::{Event, Pod, Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use serde_json::json;

    fn api_error(code: u16, message: &str) -> ReadError {
        kube::Error::Api(
            kube::core::Status::failure(message, "Test")
                .with_code(code)
                .boxed(),
        )
        .into()
    }

    /// An error the apiserver did not answer with.
    fn no_answer(what: &str) -> ReadError {
        kube::Error::Service(what.to_string().into()).into()
    }

    const TEMPLATE: &str = "images:\n  dind: docker:27-dind\nresources:\n  dev:\n    requests:\n      cpu: 500m\n      memory: 1Gi\n";

    fn template_map(yaml: &str) -> ConfigMap {
        from(
            json!({"metadata": {"name": "coder-workspace-template"}, "data": {"template.yaml": yaml}}),
        )
    }

    fn one_replica() -> Deployment {
        let mut d = chart_deployment();
        d.spec.as_mut().unwrap().replicas = Some(1);
        d
    }

    fn admitted(mutated: bool) -> Pod {
        let mut pod =
            json!({"metadata": {"name": "lumie-doctor-probe-x"}, "spec": {"containers": []}});
        if mutated {
            pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]
            }}});
        }
        from(pod)
    }

    fn role_binding(sa: &str) -> RoleBinding {
        from(json!({
            "metadata": {"name": format!("{sa}-admin")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "lumie-dev"}]
        }))
    }

    fn workers(cordoned: bool) -> Vec<k8s_openapi::api::core::v1::Node> {
        let mut nodes = vec![node(
            "control-plane-1",
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
        )];
        for i in 1..=3 {
            nodes.push(node(
                &format!("worker-{i}"),
                json!({"spec": {"unschedulable": cordoned}}),
            ));
        }
        nodes
    }

    /// What the doctor reads from the harness install of tests/tests/doctor.rs, healthy.
    fn healthy(pki: &Pki) -> Facts {
        let secret = |key: &str, value: &str| -> Read<Option<Secret>> {
            Ok(Some(secret_with(json!({ key: b64(value) }))))
        };
        let (m, mut v) = webhook_configs(&pki.ca_pem);
        // Every webhook through the Service, as the chart renders them.
        let hooks = v.webhooks.as_mut().unwrap();
        hooks[1].client_config = hooks[0].client_config.clone();
        Facts {
            server: Ok(Some(one_replica())),
            server_pods: Ok(vec![pod("coder-standin-0", true, None)]),
            secrets: Secrets::from([
                (
                    "coder-db-secret".to_string(),
                    secret("url", "postgres://lumie:pw@db.example.com:5432/lumie"),
                ),
                (
                    "coder-oidc-secret".to_string(),
                    secret("client-secret", "s3cret"),
                ),
                ("lumie-webhook-tls".to_string(), Ok(Some(pki.tls.clone()))),
            ]),
            database: Some(Reach::Reached(
                "connected to PostgreSQL 16.4 as lumie@db.example.com:5432/lumie with the Secret's URL".into(),
            )),
            oidc_issuer: Some(Reach::Reached(
                "OIDC issuer https://auth.example/realms/infra serves its discovery document".into(),
            )),
            agent_binary: Some(Reach::Reached(
                "serves lumie-agent-linux-amd64 at http://coder.coder.svc.cluster.local/bin/lumie-agent-linux-amd64".into(),
            )),
            policies: Ok(vec![("default".into(), policy(|_| {}))]),
            template_config_map: Some(Ok(Some(template_map(TEMPLATE)))),
            mutating: Ok(Some(m)),
            validating: Ok(Some(v)),
            webhook_deployment: None,
            now_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
            probe: Ok(admitted(true)),
            workspace_service_account: Ok(Some(from(
                json!({"metadata": {"name": "dev-workspace"}}),
            ))),
            role_bindings: Ok(vec![role_binding("dev-workspace")]),
            service: Ok(Some(service(contract_ports()))),
            workspace_pods: Ok(vec![]),
            scheduling_events: Ok(vec![]),
            nodes: Ok(workers(false)),
            running_pods: Ok(vec![]),
            leader_lease: None,
        }
    }

    /// Exactly the listed checks are not ok (a listed `Ok` only checks its words), each with
    /// its status, naming every needle, with a fix unless ok; the exit code follows.
    fn assert_only(report: &Report, what: &str, expected: &[(&str, Status, &[&str])]) {
        let text = report.render_text();
        for c in &report.checks {
            match expected.iter().find(|(id, _, _)| *id == c.id) {
                Some((_, status, needles)) => {
                    assert_eq!(c.status, *status, "{what}: {}\n{text}", c.id);
                    for n in *needles {
                        assert!(
                            c.summary.contains(n),
                            "{what}: {} should name {n:?}\n{text}",
                            c.id
                        );
                    }
                    assert_eq!(c.fix.is_some(), *status != Status::Ok, "{what}: {}", c.id);
                }
                None => assert_eq!(
                    c.status,
                    Status::Ok,
                    "{what}: {} should stay ok\n{text}",
                    c.id
                ),
            }
        }
        for (id, _, _) in expected {
            assert!(report.check(id).is_some(), "{what}: check {id} ran\n{text}");
        }
        let failed = expected.iter().any(|(_, s, _)| *s == Status::Failure);
        assert_eq!(report.exit_code(), u8::from(failed), "{what}\n{text}");
    }

    #[test]
    fn healthy_is_fourteen_ok_lines_in_order() {
        let pki = pki();
        let report = judge(&DoctorOptions::default(), &healthy(&pki));
        assert_only(&report, "healthy", &[]);
        let ids: Vec<&str> = report.checks.iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [
                id::SERVER,
                id::DB_SECRET,
                id::OIDC_SECRET,
                id::DATABASE,
                id::OIDC_ISSUER,
                id::WEBHOOK_CONFIGURATIONS,
                id::WEBHOOK_CA_BUNDLE,
                id::WEBHOOK_ANSWERING,
                id::WORKSPACE_SERVICE_ACCOUNT,
                id::WORKSPACE_ROLE_BINDING,
                id::WORKSPACE_SERVICE,
                id::PENDING_WORKSPACES,
                id::WORKER_CAPACITY,
                id::DIND_EXCEPTION,
            ]
        );
        let summary = |id: &str| report.check(id).unwrap().summary.clone();
        assert!(summary(id::SERVER).contains("1/1 pods ready"));
        assert!(summary(id::DATABASE).contains("connected to PostgreSQL"));
        assert!(
            !report.render_text().contains("lumie:pw@"),
            "no credentials"
        );
        assert!(summary(id::WEBHOOK_CA_BUNDLE).contains("Secret coder/lumie-webhook-tls"));
        assert!(summary(id::WEBHOOK_ANSWERING).contains("mutated"));
        assert!(summary(id::WORKSPACE_ROLE_BINDING).contains("dev-workspace-admin"));
        assert!(summary(id::WORKER_CAPACITY).contains("3 of 3 worker(s)"));
        assert!(
            summary(id::WORKER_CAPACITY)
                .contains("ConfigMap coder/coder-workspace-template key template.yaml (requests")
        );
        assert!(summary(id::DIND_EXCEPTION).contains("WorkspacePolicy default (Enforce)"));
    }

    type Edit = fn(&mut Facts, &Pki);
    type Expect = &'static [(&'static str, Status, &'static [&'static str])];

    #[test]
    fn one_thing_broken_at_a_time() {
        let cases: &[(&str, Edit, Expect)] = &[
            // What tests/tests/doctor.rs breaks on the harness.
            (
                "deleted database Secret: the database is not tried",
                |f, _| {
                    f.secrets.insert("coder-db-secret".into(), Ok(None));
                },
                &[
                    (
                        id::DB_SECRET,
                        Status::Failure,
                        &["Secret coder/coder-db-secret not found"],
                    ),
                    (id::DATABASE, Status::Warning, &["not checked", "db-secret"]),
                ],
            ),
            (
                "database URL pointing nowhere",
                |f, _| {
                    f.database = Some(Reach::Failed(
                        "connecting as lumie@127.0.0.1:1/lumie: connection refused".into(),
                    ))
                },
                &[(id::DATABASE, Status::Failure, &["lumie@127.0.0.1:1/lumie"])],
            ),
            (
                "in-cluster database host",
                |f, _| {
                    f.database = Some(Reach::Unresolvable {
                        host: "postgres.databases.svc.cluster.local".into(),
                        error: "failed to lookup address".into(),
                    })
                },
                &[(
                    id::DATABASE,
                    Status::Warning,
                    &[
                        "postgres.databases.svc.cluster.local is an in-cluster name this machine cannot resolve",
                    ],
                )],
            ),
            (
                "deleted OIDC Secret",
                |f, _| {
                    f.secrets.insert("coder-oidc-secret".into(), Ok(None));
                },
                &[(
                    id::OIDC_SECRET,
                    Status::Failure,
                    &["Secret coder/coder-oidc-secret not found"],
                )],
            ),
            (
                "empty OIDC client secret",
                |f, _| {
                    f.secrets.insert(
                        "coder-oidc-secret".into(),
                        Ok(Some(secret_with(json!({"client-secret": b64("")})))),
                    );
                },
                &[(
                    id::OIDC_SECRET,
                    Status::Failure,
                    &["coder-oidc-secret key \"client-secret\" is empty"],
                )],
            ),
            (
                "no server pod",
                |f, _| f.server_pods = Ok(vec![]),
                &[(
                    id::SERVER,
                    Status::Failure,
                    &["Deployment coder/coder: 0/1 pods ready"],
                )],
            ),
            (
                "Service port drift",
                |f, _| {
                    let mut ports = contract_ports();
                    ports[1]["port"] = json!(13338);
                    ports[1]["targetPort"] = json!(13338);
                    f.service = Ok(Some(service(ports)));
                },
                &[(
                    id::WORKSPACE_SERVICE,
                    Status::Failure,
                    &[
                        "Service lumie-dev/dev-workspace drifted",
                        "port code-server is 13338, the contract says 13337",
                        "port code-server targets 13338",
                    ],
                )],
            ),
            (
                "missing ServiceAccount: the probe is refused before the webhook",
                |f, _| {
                    f.workspace_service_account = Ok(None);
                    f.probe = Err(api_error(
                        403,
                        "pods \"lumie-doctor-probe-x\" is forbidden: error looking up service account lumie-dev/dev-workspace: serviceaccount \"dev-workspace\" not found",
                    ));
                },
                &[
                    (
                        id::WORKSPACE_SERVICE_ACCOUNT,
                        Status::Failure,
                        &["ServiceAccount lumie-dev/dev-workspace not found"],
                    ),
                    (id::WEBHOOK_ANSWERING, Status::Warning, &["dev-workspace"]),
                ],
            ),
            (
                "missing RoleBinding",
                |f, _| f.role_bindings = Ok(vec![]),
                &[(
                    id::WORKSPACE_ROLE_BINDING,
                    Status::Failure,
                    &["no RoleBinding in lumie-dev binds ServiceAccount dev-workspace"],
                )],
            ),
            (
                "wrong CA bundle",
                |f, pki| {
                    let (m, mut v) = webhook_configs(&pki.other_ca_pem);
                    v.webhooks.as_mut().unwrap().truncate(1);
                    f.mutating = Ok(Some(m));
                    f.validating = Ok(Some(v));
                    f.probe = Err(api_error(
                        500,
                        "Internal error occurred: failed calling webhook \"mutate-pods.coder.lumie-infra.com\": tls: failed to verify certificate: x509: certificate signed by unknown authority",
                    ));
                },
                &[
                    (
                        id::WEBHOOK_CA_BUNDLE,
                        Status::Failure,
                        &[
                            "MutatingWebhookConfiguration webhook mutate-pods.coder.lumie-infra.com",
                            "ValidatingWebhookConfiguration webhook validate-pods.coder.lumie-infra.com",
                            "is not signed by the caBundle",
                        ],
                    ),
                    (
                        id::WEBHOOK_ANSWERING,
                        Status::Failure,
                        &["failed calling webhook", "x509"],
                    ),
                ],
            ),
            (
                "webhook down",
                |f, _| {
                    f.probe = Err(api_error(
                        500,
                        "Internal error occurred: failed calling webhook \"mutate-pods.coder.lumie-infra.com\": dial tcp 127.0.0.1:1: connect: connection refused",
                    ))
                },
                &[(
                    id::WEBHOOK_ANSWERING,
                    Status::Failure,
                    &[
                        "failed calling webhook \"mutate-pods.coder.lumie-infra.com\"",
                        "connection refused",
                    ],
                )],
            ),
            (
                "workers cordoned, a workspace pending",
                |f, _| {
                    let msg = "0/4 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 3 node(s) were unschedulable.";
                    f.workspace_pods = Ok(vec![from(json!({
                        "metadata": {"name": "doctor-pending", "uid": "u1"},
                        "status": {"phase": "Pending"}
                    }))]);
                    f.scheduling_events = Ok(vec![from::<Event>(json!({
                        "metadata": {"name": "doctor-pending.1"},
                        "involvedObject": {"kind": "Pod", "name": "doctor-pending", "uid": "u1"},
                        "reason": "FailedScheduling", "message": msg
                    }))]);
                    f.nodes = Ok(workers(true));
                },
                &[
                    (
                        id::PENDING_WORKSPACES,
                        Status::Failure,
                        &["lumie-dev/doctor-pending: 0/4 nodes are available"],
                    ),
                    (
                        id::WORKER_CAPACITY,
                        Status::Failure,
                        &["worker-1: cordoned", "control-plane-1: control plane"],
                    ),
                ],
            ),
            // Edge cases the harness does not reach.
            (
                "server Deployment not found: the chart's names are checked",
                |f, _| f.server = Ok(None),
                &[
                    (
                        id::SERVER,
                        Status::Failure,
                        &["Deployment coder/coder not found"],
                    ),
                    (
                        id::OIDC_ISSUER,
                        Status::Warning,
                        &["CODER_OIDC_ISSUER_URL is not set on the server"],
                    ),
                    (id::WORKER_CAPACITY, Status::Ok, &["the built-in template"]),
                ],
            ),
            (
                "server Deployment forbidden",
                |f, _| f.server = Err(api_error(403, "deployments.apps \"coder\" is forbidden")),
                &[
                    (
                        id::SERVER,
                        Status::Warning,
                        &[
                            "cannot read Deployment coder/coder: forbidden (deployments.apps \"coder\" is forbidden)",
                        ],
                    ),
                    (id::OIDC_ISSUER, Status::Warning, &["not set"]),
                ],
            ),
            (
                "server pods cannot be listed",
                |f, _| f.server_pods = Err(no_answer("connection reset")),
                &[(
                    id::SERVER,
                    Status::Failure,
                    &["reading pods in coder:", "connection reset"],
                )],
            ),
            (
                "embedded SQLite: nothing to reach, and fine",
                |f, _| {
                    let mut d = one_replica();
                    server_env(&mut d).retain(|e| e.name != env::DATABASE_URL);
                    f.server = Ok(Some(d));
                    f.database = None;
                },
                &[
                    (id::DB_SECRET, Status::Ok, &["embedded SQLite"]),
                    (id::DATABASE, Status::Ok, &["embedded SQLite"]),
                ],
            ),
            (
                "database Secret forbidden: a warning, and the database not tried",
                |f, _| {
                    f.secrets.insert(
                        "coder-db-secret".into(),
                        Err(api_error(403, "secrets is forbidden")),
                    );
                },
                &[
                    (
                        id::DB_SECRET,
                        Status::Warning,
                        &["cannot read Secret coder/coder-db-secret: forbidden"],
                    ),
                    (id::DATABASE, Status::Warning, &["not checked"]),
                ],
            ),
            (
                "database Secret without its key",
                |f, _| {
                    f.secrets.insert(
                        "coder-db-secret".into(),
                        Ok(Some(secret_with(json!({"password": b64("x")})))),
                    );
                },
                &[
                    (
                        id::DB_SECRET,
                        Status::Failure,
                        &["has no key \"url\" (keys: [password])"],
                    ),
                    (id::DATABASE, Status::Warning, &["no usable database URL"]),
                ],
            ),
            (
                "literal database URL: warned, still tried",
                |f, _| {
                    let mut d = one_replica();
                    let e = server_env(&mut d)
                        .iter_mut()
                        .find(|e| e.name == env::DATABASE_URL)
                        .unwrap();
                    e.value_from = None;
                    e.value = Some("postgres://lumie:pw@db.example.com/lumie".into());
                    f.server = Ok(Some(d));
                },
                &[(id::DB_SECRET, Status::Warning, &["literal value"])],
            ),
            (
                "a planned probe without its result is not guessed",
                |f, _| f.database = None,
                &[(
                    id::DATABASE,
                    Status::Warning,
                    &["not checked: it was not probed"],
                )],
            ),
            (
                "OIDC issuer from a Secret is not followed",
                |f, _| {
                    let mut d = one_replica();
                    let e = server_env(&mut d)
                        .iter_mut()
                        .find(|e| e.name == env::OIDC_ISSUER_URL)
                        .unwrap();
                    e.value = None;
                    e.value_from = Some(from(
                        json!({"secretKeyRef": {"name": "oidc-issuer", "key": "url"}}),
                    ));
                    f.server = Ok(Some(d));
                    f.oidc_issuer = None;
                },
                &[(
                    id::OIDC_ISSUER,
                    Status::Warning,
                    &["comes from Secret oidc-issuer"],
                )],
            ),
            (
                "WorkspacePolicy CRD not installed: the built-in default",
                |f, _| {
                    f.policies = Err(api_error(
                        404,
                        "the server could not find the requested resource",
                    ))
                },
                &[(
                    id::DIND_EXCEPTION,
                    Status::Ok,
                    &["built-in default policy (the WorkspacePolicy CRD is not installed)"],
                )],
            ),
            (
                "WorkspacePolicy objects forbidden",
                |f, _| f.policies = Err(api_error(403, "workspacepolicies is forbidden")),
                &[(
                    id::DIND_EXCEPTION,
                    Status::Warning,
                    &["cannot read WorkspacePolicy objects: forbidden"],
                )],
            ),
            (
                "a policy for another ServiceAccount: the overlay checks follow it",
                |f, _| {
                    f.policies = Ok(vec![(
                        "default".into(),
                        policy(|p| p.service_account_name = "ws-sa".into()),
                    )]);
                    f.workspace_service_account = Ok(Some(from::<ServiceAccount>(
                        json!({"metadata": {"name": "ws-sa"}}),
                    )));
                },
                &[
                    (
                        id::WORKSPACE_SERVICE_ACCOUNT,
                        Status::Ok,
                        &["ServiceAccount lumie-dev/ws-sa present"],
                    ),
                    (
                        id::WORKSPACE_ROLE_BINDING,
                        Status::Failure,
                        &["binds ServiceAccount ws-sa"],
                    ),
                ],
            ),
            (
                "webhook configurations unreadable",
                |f, _| f.mutating = Err(no_answer("timed out")),
                &[
                    (
                        id::WEBHOOK_CONFIGURATIONS,
                        Status::Failure,
                        &["reading webhook configurations:", "timed out"],
                    ),
                    (id::WEBHOOK_CA_BUNDLE, Status::Warning, &["not checked"]),
                ],
            ),
            (
                "validating configuration deleted: the mutating one's bundle still judged",
                |f, _| f.validating = Ok(None),
                &[
                    (
                        id::WEBHOOK_CONFIGURATIONS,
                        Status::Failure,
                        &["ValidatingWebhookConfiguration lumie-webhook not found"],
                    ),
                    (id::WEBHOOK_CA_BUNDLE, Status::Ok, &["of 1 webhook(s)"]),
                ],
            ),
            (
                "TLS Secret named by the webhook Deployment",
                |f, pki| {
                    f.webhook_deployment = Some(from(json!({
                        "metadata": {"name": "lumie-webhook"},
                        "spec": {"selector": {}, "template": {"spec": {"containers": [],
                            "volumes": [{"name": "tls", "secret": {"secretName": "my-tls"}}]}}}
                    })));
                    f.secrets.remove("lumie-webhook-tls");
                    f.secrets.insert("my-tls".into(), Ok(Some(pki.tls.clone())));
                },
                &[(id::WEBHOOK_CA_BUNDLE, Status::Ok, &["Secret coder/my-tls"])],
            ),
            (
                "TLS Secret unreadable",
                |f, _| {
                    f.secrets.insert(
                        "lumie-webhook-tls".into(),
                        Err(api_error(403, "secrets is forbidden")),
                    );
                },
                &[(
                    id::WEBHOOK_CA_BUNDLE,
                    Status::Warning,
                    &["cannot read Secret coder/lumie-webhook-tls: forbidden"],
                )],
            ),
            (
                "admitted without mutation",
                |f, _| f.probe = Ok(admitted(false)),
                &[(
                    id::WEBHOOK_ANSWERING,
                    Status::Warning,
                    &["without mutation"],
                )],
            ),
            (
                "no avoided labels: nothing to mutate, so no mutation is fine",
                |f, _| {
                    f.policies = Ok(vec![(
                        "default".into(),
                        policy(|p| p.avoid_node_labels.clear()),
                    )]);
                    f.probe = Ok(admitted(false));
                },
                &[],
            ),
            (
                "the probe never reached the apiserver",
                |f, _| f.probe = Err(no_answer("connection refused")),
                &[(
                    id::WEBHOOK_ANSWERING,
                    Status::Warning,
                    &[
                        "could not probe the webhook with a dry-run pod",
                        "connection refused",
                    ],
                )],
            ),
            (
                "template ConfigMap missing: capacity not checked, dind judged with the built-in image",
                |f, _| f.template_config_map = Some(Ok(None)),
                &[(
                    id::WORKER_CAPACITY,
                    Status::Warning,
                    &[
                        "ConfigMap coder/coder-workspace-template key template.yaml: ConfigMap not found",
                    ],
                )],
            ),
            (
                "template key missing",
                |f, _| {
                    f.template_config_map = Some(Ok(Some(from(
                        json!({"metadata": {"name": "coder-workspace-template"}, "data": {}}),
                    ))))
                },
                &[(
                    id::WORKER_CAPACITY,
                    Status::Warning,
                    &["key template.yaml is missing"],
                )],
            ),
            (
                "template dind image the policy does not allow",
                |f, _| {
                    f.template_config_map =
                        Some(Ok(Some(template_map("images:\n  dind: ubuntu:dind\n"))))
                },
                &[(id::DIND_EXCEPTION, Status::Failure, &["not ubuntu:dind"])],
            ),
            (
                "scheduling events unreadable: the pod's condition speaks",
                |f, _| {
                    f.workspace_pods = Ok(vec![from(json!({
                        "metadata": {"name": "ws-a"},
                        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                            "message": "0/4 nodes are available: 4 Insufficient cpu."}]}
                    }))]);
                    f.scheduling_events = Err(api_error(403, "events is forbidden"));
                },
                &[(
                    id::PENDING_WORKSPACES,
                    Status::Failure,
                    &["lumie-dev/ws-a: 0/4 nodes are available: 4 Insufficient cpu."],
                )],
            ),
            (
                "workspace pods unreadable",
                |f, _| f.workspace_pods = Err(no_answer("timed out")),
                &[(
                    id::PENDING_WORKSPACES,
                    Status::Failure,
                    &["reading pods in lumie-dev"],
                )],
            ),
            (
                "the server has no agent binary to serve",
                |f, _| {
                    f.agent_binary = Some(Reach::Failed(
                        "it has no agent binary to serve: http://coder.coder.svc.cluster.local/bin/lumie-agent-linux-amd64 answers 404".into(),
                    ))
                },
                &[(
                    id::SERVER,
                    Status::Failure,
                    &["1/1 pods ready", "no agent binary to serve", "answers 404"],
                )],
            ),
            (
                "the agent binary not asked from outside the cluster",
                |f, _| {
                    f.agent_binary = Some(Reach::Unresolvable {
                        host: "coder.coder.svc.cluster.local".into(),
                        error: "no such host".into(),
                    })
                },
                &[],
            ),
            (
                "nodes forbidden",
                |f, _| f.nodes = Err(api_error(403, "nodes is forbidden")),
                &[(
                    id::WORKER_CAPACITY,
                    Status::Warning,
                    &["cannot read nodes: forbidden"],
                )],
            ),
            (
                "pods of all namespaces unreadable",
                |f, _| f.running_pods = Err(no_answer("timed out")),
                &[(
                    id::WORKER_CAPACITY,
                    Status::Failure,
                    &["reading pods of all namespaces"],
                )],
            ),
        ];
        let pki = pki();
        for (name, edit, expected) in cases {
            let mut facts = healthy(&pki);
            edit(&mut facts, &pki);
            let report = judge(&DoctorOptions::default(), &facts);
            assert_eq!(report.checks.len(), 14, "{name}");
            assert_only(&report, name, expected);
        }
    }

    #[test]
    fn database_target_table() {
        let s = |key: &str, value: &str| -> Read<Option<Secret>> {
            Ok(Some(secret_with(json!({ key: b64(value) }))))
        };
        let chart = ServerSettings::chart_defaults();
        let literal = ServerSettings {
            database_url: ValueSource::Literal("postgres://x@db/x".into()),
            ..chart.clone()
        };
        let unset = ServerSettings {
            database_url: ValueSource::Unset,
            ..chart.clone()
        };
        let with =
            |read: Read<Option<Secret>>| Secrets::from([("coder-db-secret".to_string(), read)]);
        let cases: Vec<(&str, &ServerSettings, Secrets, Result<&str, &str>)> = vec![
            (
                "the Secret's URL, trimmed",
                &chart,
                with(s("url", " postgres://u@db/x\n")),
                Ok("postgres://u@db/x"),
            ),
            ("literal", &literal, Secrets::new(), Ok("postgres://x@db/x")),
            ("unset", &unset, Secrets::new(), Err("embedded SQLite")),
            (
                "not found",
                &chart,
                with(Ok(None)),
                Err("no usable database URL"),
            ),
            (
                "not read",
                &chart,
                Secrets::new(),
                Err("no usable database URL"),
            ),
            (
                "empty",
                &chart,
                with(s("url", "  ")),
                Err("no usable database URL"),
            ),
            (
                "forbidden",
                &chart,
                with(Err(api_error(403, "no"))),
                Err("no usable database URL"),
            ),
        ];
        for (name, settings, secrets, want) in cases {
            match (database_target("coder", settings, &secrets), want) {
                (Ok(url), Ok(w)) => assert_eq!(url, w, "{name}"),
                (Err(Reach::NotConfigured(why) | Reach::Skipped(why)), Err(w)) => {
                    assert!(why.contains(w), "{name}: {why}")
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }

    #[test]
    fn workspace_identity_follows_the_covering_policies() {
        let two = Effective::Policies(vec![
            (
                "a".into(),
                policy(|p| {
                    p.service_account_name = "first".into();
                    p.avoid_node_labels = vec!["x".into(), "y".into()];
                }),
            ),
            (
                "b".into(),
                policy(|p| {
                    p.service_account_name = "second".into();
                    p.avoid_node_labels = vec!["y".into(), "z".into()];
                }),
            ),
        ]);
        assert_eq!(
            workspace_identity(&two),
            (
                "first".to_string(),
                vec!["x".into(), "y".into(), "z".into()]
            )
        );
        let d = WorkspacePolicySpec::contract_default();
        for e in [
            Effective::Builtin { why: "x".into() },
            Effective::NoneCovering(vec!["other".into()]),
        ] {
            assert_eq!(
                workspace_identity(&e),
                (d.service_account_name.clone(), d.avoid_node_labels.clone())
            );
        }
    }

    #[test]
    fn read_errors_keep_the_apiserver_words() {
        let e = api_error(403, "nodes is forbidden");
        assert_eq!(
            (e.code, e.message.as_str()),
            (Some(403), "nodes is forbidden")
        );
        assert!(e.display.contains("nodes is forbidden"), "{}", e.display);
        let e = no_answer("connection refused");
        assert_eq!(e.code, None);
        assert_eq!(e.message, e.display);
        let c = read_failed(id::SERVER, "the thing", &api_error(500, "etcd down"));
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary.starts_with("reading the thing: "),
            "{}",
            c.summary
        );
    }
}
