//! `lumie-server doctor`: the checks an operator would otherwise type by hand, run through the
//! kube API, one line each (ok / warning / failure, with the fix).
//!
//! - this module: the flags ([`DoctorArgs`] → [`DoctorOptions`]), reading the cluster, and
//!   [`run`] / [`run_with_client`] putting the checks together in order;
//! - [`checks`]: the verdicts, pure over what was read; [`capacity`]: scheduling and room;
//! - [`certs`]: caBundle against the serving certificate; [`probe`]: database and OIDC;
//! - [`report`]: the [`Report`], its text and JSON, and the exit code.
//!
//! Reading the cluster never stops the run: a read that fails becomes that check's line.

pub mod capacity;
pub mod certs;
pub mod checks;
pub mod probe;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use lumie_contract::policy::{WorkspacePolicy, WorkspacePolicySpec};
use lumie_contract::{labels, workspace};
use serde_json::json;

use crate::error::Error;
use checks::{Effective, ProbeOutcome, Reach, ServerSettings, ValueSource, id};
pub use report::{Check, OutputFormat, Report, Status};

/// Flags of `lumie-server doctor`; each has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Namespace of the control plane (server, webhook, their Secrets).
    #[arg(long, env = "LUMIE_DOCTOR_NAMESPACE", default_value = workspace::CONTROL_PLANE_NAMESPACE)]
    pub namespace: String,
    /// Namespace the workspace pods live in.
    #[arg(long, env = "LUMIE_WORKSPACE_NAMESPACE", default_value = workspace::NAMESPACE)]
    pub workspace_namespace: String,
    /// Name of the server Deployment (the chart's `server.name`).
    #[arg(long, env = "LUMIE_DOCTOR_SERVER_DEPLOYMENT", default_value = "coder")]
    pub server_deployment: String,
    /// Name of the webhook Deployment and of both webhook configurations (`webhook.name`).
    #[arg(
        long,
        env = "LUMIE_DOCTOR_WEBHOOK_NAME",
        default_value = "lumie-webhook"
    )]
    pub webhook_name: String,
    /// Kubeconfig file; unset: in-cluster ServiceAccount, then `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `text` (one line per check) or `json`.
    #[arg(long, env = "LUMIE_DOCTOR_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// How long each network probe (database, OIDC, DNS) may take, in seconds.
    #[arg(long, env = "LUMIE_DOCTOR_TIMEOUT_SECONDS", default_value_t = 5)]
    pub timeout_seconds: u64,
}

/// What the doctor runs with; tests build it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorOptions {
    /// Control plane namespace.
    pub namespace: String,
    /// Workspace namespace.
    pub workspace_namespace: String,
    /// Server Deployment name.
    pub server_deployment: String,
    /// Webhook Deployment / configuration name.
    pub webhook_name: String,
    /// Kubeconfig file, if not in-cluster or the default.
    pub kubeconfig: Option<PathBuf>,
    /// Output format (used by the caller that prints).
    pub output: OutputFormat,
    /// Timeout of each network probe.
    pub timeout: Duration,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions {
            namespace: workspace::CONTROL_PLANE_NAMESPACE.into(),
            workspace_namespace: workspace::NAMESPACE.into(),
            server_deployment: "coder".into(),
            webhook_name: "lumie-webhook".into(),
            kubeconfig: None,
            output: OutputFormat::Text,
            timeout: Duration::from_secs(5),
        }
    }
}

impl From<DoctorArgs> for DoctorOptions {
    fn from(a: DoctorArgs) -> Self {
        DoctorOptions {
            namespace: a.namespace,
            workspace_namespace: a.workspace_namespace,
            server_deployment: a.server_deployment,
            webhook_name: a.webhook_name,
            kubeconfig: a.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            output: a.output,
            timeout: Duration::from_secs(a.timeout_seconds.max(1)),
        }
    }
}

/// The kube client: the kubeconfig file when given (a single path), else in-cluster or the
/// default kubeconfig.
async fn client(options: &DoctorOptions) -> Result<Client, Error> {
    let fail = |e: String| {
        Error::KubeStartup(format!(
            "no kube API configuration: {e} — set KUBECONFIG (or --kubeconfig), or run in-cluster"
        ))
    };
    let config = match &options.kubeconfig {
        Some(path) if !path.to_string_lossy().contains(':') => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        _ => kube::Config::infer()
            .await
            .map_err(|e| fail(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// Runs every check with a client built from the options.
pub async fn run(options: DoctorOptions) -> Result<Report, Error> {
    let client = client(&options).await?;
    run_with_client(client, &options).await
}

/// What `main` calls for `lumie-server doctor`: prints the report in the chosen format and
/// returns the exit code (1 when a check failed). With no kube API at all the report is one
/// failing `kube-api` line, so `--output json` consumers still get a document.
pub async fn run_cli(args: DoctorArgs) -> std::process::ExitCode {
    let options = DoctorOptions::from(args);
    let report = match run(options.clone()).await {
        Ok(report) => report,
        Err(e) => unreachable_report(&e),
    };
    print!("{}", report.render(options.output));
    std::process::ExitCode::from(report.exit_code())
}

/// The report when the kube API cannot be used at all.
pub fn unreachable_report(e: &Error) -> Report {
    Report {
        checks: vec![Check::failure(
            id::KUBE_API,
            e.to_string(),
            "point KUBECONFIG (or --kubeconfig) at the cluster, or run the doctor in-cluster",
        )],
    }
}

/// A read that could not be done, as the check's line.
fn read_failed(id: &'static str, what: &str, e: &kube::Error) -> Check {
    match e {
        kube::Error::Api(s) if s.code == 403 => Check::warning(
            id,
            format!("cannot read {what}: forbidden ({})", s.message),
            "run the doctor as someone allowed to read it (an admin kubeconfig)",
        ),
        other => Check::failure(
            id,
            format!("reading {what}: {other}"),
            "check the kube API is reachable and healthy",
        ),
    }
}

fn selector_string(deploy: &Deployment) -> Option<String> {
    let labels = deploy.spec.as_ref()?.selector.match_labels.as_ref()?;
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The name of the Secret the webhook pods mount their certificate from: the `tls` volume of
/// the webhook Deployment (or its only Secret volume), else the chart's `<name>-tls`.
fn webhook_tls_secret(deploy: Option<&Deployment>, webhook_name: &str) -> String {
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
fn probe_pod(namespace: &str, service_account: &str, dind_image: &str) -> Pod {
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

fn has_required_node_affinity(pod: &Pod) -> bool {
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

/// Runs every check against `client`.
pub async fn run_with_client(client: Client, options: &DoctorOptions) -> Result<Report, Error> {
    // One reachability check up front: with no API at all, every line would say the same.
    client.apiserver_version().await.map_err(|e| {
        Error::KubeStartup(format!(
            "kube API unreachable: {e} — check KUBECONFIG / the in-cluster API address"
        ))
    })?;
    let ns = options.namespace.as_str();
    let ws = options.workspace_namespace.as_str();
    let mut out = Vec::new();

    // The server Deployment, and what it says about the settings.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let server = deployments.get_opt(&options.server_deployment).await;
    let (settings, server_check) = match &server {
        Ok(Some(d)) => {
            let pods = match selector_string(d) {
                Some(sel) => Api::<Pod>::namespaced(client.clone(), ns)
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .map(|l| l.items),
                None => Ok(Vec::new()),
            };
            let check = match pods {
                Ok(pods) => {
                    checks::server_deployment(ns, &options.server_deployment, Some(d), &pods)
                }
                Err(e) => read_failed(id::SERVER, &format!("pods in {ns}"), &e),
            };
            (checks::server_settings(d), check)
        }
        Ok(None) => (
            ServerSettings::chart_defaults(),
            checks::server_deployment(ns, &options.server_deployment, None, &[]),
        ),
        Err(e) => (
            ServerSettings::chart_defaults(),
            read_failed(
                id::SERVER,
                &format!("Deployment {ns}/{}", options.server_deployment),
                e,
            ),
        ),
    };
    out.push(server_check);

    // The Secrets, and the services they unlock.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut database_url = None;
    let mut db_secret_ok = true;
    for (role, source) in [
        (checks::DB_SECRET, &settings.database_url),
        (checks::OIDC_SECRET, &settings.oidc_client_secret),
    ] {
        let check = match source {
            ValueSource::Secret { name, key } => match secrets.get_opt(name).await {
                Ok(s) => {
                    if role.id == id::DB_SECRET {
                        database_url = s
                            .as_ref()
                            .and_then(|s| s.data.as_ref())
                            .and_then(|d| d.get(key))
                            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
                    }
                    checks::secret(role, ns, source, s.as_ref())
                }
                Err(e) => read_failed(role.id, &format!("Secret {ns}/{name}"), &e),
            },
            other => {
                if role.id == id::DB_SECRET
                    && let ValueSource::Literal(v) = other
                {
                    database_url = Some(v.clone());
                }
                checks::secret(role, ns, source, None)
            }
        };
        if role.id == id::DB_SECRET {
            db_secret_ok = check.status != Status::Failure;
        }
        out.push(check);
    }
    let db_reach = match (&settings.database_url, database_url) {
        (ValueSource::Unset, _) => {
            Reach::NotConfigured("embedded SQLite: no database server to reach".into())
        }
        (_, Some(url)) if db_secret_ok && !url.is_empty() => {
            probe::database(&url, options.timeout).await
        }
        _ => Reach::Skipped("no usable database URL (see db-secret)".into()),
    };
    out.push(checks::database(&db_reach));
    let oidc_reach = match &settings.oidc_issuer_url {
        ValueSource::Literal(issuer) => probe::oidc_issuer(issuer, options.timeout).await,
        ValueSource::Unset => Reach::NotConfigured(format!(
            "{} is not set on the server: OIDC login is off",
            checks::env::OIDC_ISSUER_URL
        )),
        ValueSource::Secret { name, .. } => Reach::NotConfigured(format!(
            "{} comes from Secret {name}; the doctor only follows a literal issuer URL",
            checks::env::OIDC_ISSUER_URL
        )),
        ValueSource::Other(why) => Reach::NotConfigured(why.clone()),
    };
    out.push(checks::oidc_issuer(&oidc_reach));

    // The policies in force (needed by the probe and the dind check), and the template.
    let mut policy_read_error = None;
    let policies: Option<Vec<(String, WorkspacePolicySpec)>> =
        match Api::<WorkspacePolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .map(|p| (p.metadata.name.unwrap_or_default(), p.spec))
                    .collect(),
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => {
                policy_read_error = Some(read_failed(
                    id::DIND_EXCEPTION,
                    "WorkspacePolicy objects",
                    &e,
                ));
                Some(Vec::new())
            }
        };
    let effective = checks::effective_policies(ws, policies.as_deref());
    let (ws_service_account, avoid_labels) = match &effective {
        Effective::Policies(list) => {
            let mut avoid: Vec<String> = Vec::new();
            for (_, s) in list {
                for l in &s.avoid_node_labels {
                    if !avoid.contains(l) {
                        avoid.push(l.clone());
                    }
                }
            }
            (list[0].1.service_account_name.clone(), avoid)
        }
        _ => {
            let d = WorkspacePolicySpec::contract_default();
            (d.service_account_name, d.avoid_node_labels)
        }
    };
    let template = match &settings.template {
        Some((cm, key)) => {
            let source = format!("ConfigMap {ns}/{cm} key {key}");
            match Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(cm)
                .await
            {
                Ok(Some(c)) => {
                    let yaml = c.data.and_then(|d| d.get(key).cloned());
                    match yaml {
                        Some(y) => capacity::template_facts(Some(&y), &source),
                        None => Err(format!("{source} is missing")),
                    }
                }
                Ok(None) => Err(format!("{source}: ConfigMap not found")),
                Err(e) => Err(format!("{source}: {e}")),
            }
        }
        None => capacity::template_facts(None, "the built-in template"),
    };

    // The webhook: configurations, CA bundle, and an answer through the apiserver.
    let name = options.webhook_name.as_str();
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await;
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await;
    match (&mutating, &validating) {
        (Ok(m), Ok(v)) => {
            out.push(checks::webhook_configurations(
                name,
                ns,
                m.as_ref(),
                v.as_ref(),
            ));
            let entries = checks::webhook_entries(m.as_ref(), v.as_ref());
            let webhook_deploy = deployments.get_opt(name).await.ok().flatten();
            let secret_name = webhook_tls_secret(webhook_deploy.as_ref(), name);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            out.push(match secrets.get_opt(&secret_name).await {
                Ok(s) => checks::webhook_ca_bundle(&entries, ns, &secret_name, s.as_ref(), now),
                Err(e) => read_failed(
                    id::WEBHOOK_CA_BUNDLE,
                    &format!("Secret {ns}/{secret_name}"),
                    &e,
                ),
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
    let dind_image = template
        .as_ref()
        .map(|t| t.dind_image.clone())
        .unwrap_or_else(|_| capacity::BUILTIN_DIND_IMAGE.to_string());
    let probe = probe_pod(ws, &ws_service_account, &dind_image);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some("lumie-doctor".into()),
    };
    let outcome = match Api::<Pod>::namespaced(client.clone(), ws)
        .create(&dry_run, &probe)
        .await
    {
        Ok(pod) => ProbeOutcome::Admitted {
            mutated: avoid_labels.is_empty() || has_required_node_affinity(&pod),
        },
        Err(kube::Error::Api(s)) => checks::classify_probe_error(&s.message),
        Err(e) => ProbeOutcome::NotProbed(e.to_string()),
    };
    out.push(checks::webhook_answering(ws, &outcome));

    // The lumie-dev overlay.
    out.push(
        match Api::<ServiceAccount>::namespaced(client.clone(), ws)
            .get_opt(&ws_service_account)
            .await
        {
            Ok(sa) => checks::workspace_service_account(ws, &ws_service_account, sa.as_ref()),
            Err(e) => read_failed(
                id::WORKSPACE_SERVICE_ACCOUNT,
                &format!("ServiceAccount {ws}/{ws_service_account}"),
                &e,
            ),
        },
    );
    out.push(
        match Api::<RoleBinding>::namespaced(client.clone(), ws)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => checks::workspace_role_binding(ws, &ws_service_account, &list.items),
            Err(e) => read_failed(
                id::WORKSPACE_ROLE_BINDING,
                &format!("RoleBindings in {ws}"),
                &e,
            ),
        },
    );
    out.push(
        match Api::<Service>::namespaced(client.clone(), ws)
            .get_opt(workspace::STABLE_SERVICE)
            .await
        {
            Ok(svc) => checks::workspace_service(ws, workspace::STABLE_SERVICE, svc.as_ref()),
            Err(e) => read_failed(
                id::WORKSPACE_SERVICE,
                &format!("Service {ws}/{}", workspace::STABLE_SERVICE),
                &e,
            ),
        },
    );

    // Scheduling.
    let ws_pods = Api::<Pod>::namespaced(client.clone(), ws)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            labels::APP_NAME,
            labels::APP_NAME_WORKSPACE
        )))
        .await;
    let events = Api::<Event>::namespaced(client.clone(), ws)
        .list(&ListParams::default().fields("reason=FailedScheduling"))
        .await;
    out.push(match (ws_pods, events) {
        (Ok(pods), Ok(events)) => capacity::pending_workspaces(ws, &pods.items, &events.items),
        (Ok(pods), Err(_)) => capacity::pending_workspaces(ws, &pods.items, &[]),
        (Err(e), _) => read_failed(id::PENDING_WORKSPACES, &format!("pods in {ws}"), &e),
    });
    out.push(match &template {
        Err(why) => Check::warning(
            id::WORKER_CAPACITY,
            format!("not checked: the workspace template cannot be read ({why})"),
            "fix the template ConfigMap (server.workspaceTemplate values)",
        ),
        Ok(t) => {
            let nodes = Api::<Node>::all(client.clone())
                .list(&ListParams::default())
                .await;
            let pods = Api::<Pod>::all(client.clone())
                .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
                .await;
            match (nodes, pods) {
                (Ok(n), Ok(p)) => {
                    capacity::worker_capacity(&n.items, &p.items, &avoid_labels, &t.need)
                }
                (Err(e), _) => read_failed(id::WORKER_CAPACITY, "nodes", &e),
                (_, Err(e)) => read_failed(id::WORKER_CAPACITY, "pods of all namespaces", &e),
            }
        }
    });

    // The privileged dind exception, for pods the server creates.
    let creator = format!("system:serviceaccount:{ns}:{}", settings.service_account);
    out.push(
        policy_read_error
            .unwrap_or_else(|| checks::dind_exception(ws, &effective, &creator, &dind_image)),
    );
    Ok(Report { checks: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DoctorArgs,
    }

    #[test]
    fn every_flag_has_an_env_var_and_the_defaults_match_the_chart() {
        let cmd = <Wrapper as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
        let w = Wrapper::try_parse_from(["doctor"]).unwrap();
        let mut o = DoctorOptions::from(w.args);
        o.kubeconfig = None; // KUBECONFIG of whoever runs the tests
        let want = DoctorOptions::default();
        assert_eq!(o.namespace, want.namespace);
        assert_eq!(o.server_deployment, "coder");
        assert_eq!(o.webhook_name, "lumie-webhook");
        assert_eq!(o.output, OutputFormat::Text);
        assert_eq!(o.timeout, Duration::from_secs(5));
        let w =
            Wrapper::try_parse_from(["doctor", "--output", "json", "--namespace", "x"]).unwrap();
        let o = DoctorOptions::from(w.args);
        assert_eq!(o.output, OutputFormat::Json);
        assert_eq!(o.namespace, "x");
    }

    /// The wiring main.rs uses: `Doctor(DoctorArgs)` as a subcommand next to the server's own
    /// flattened flags (one of which shares `LUMIE_WORKSPACE_NAMESPACE`).
    #[test]
    fn doctor_args_work_as_a_subcommand_of_the_server_cli() {
        #[derive(Parser)]
        struct Top {
            #[command(subcommand)]
            command: Option<Sub>,
            #[arg(long, env = "LUMIE_WORKSPACE_NAMESPACE", default_value = "lumie-dev")]
            workspace_namespace: String,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Doctor(DoctorArgs),
        }
        <Top as clap::CommandFactory>::command().debug_assert();
        let top = Top::try_parse_from(["lumie-server", "doctor", "--output", "json"]).unwrap();
        assert_eq!(top.workspace_namespace, "lumie-dev");
        let Some(Sub::Doctor(args)) = top.command else {
            panic!("doctor subcommand")
        };
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn no_kube_api_is_one_failing_line() {
        let r = unreachable_report(&Error::KubeStartup("kube API unreachable: refused".into()));
        assert_eq!(r.exit_code(), 1);
        let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
        assert_eq!(v["checks"][0]["id"], "kube-api");
        assert!(
            r.render_text()
                .starts_with("failure  kube-api  kubernetes: kube API unreachable")
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
