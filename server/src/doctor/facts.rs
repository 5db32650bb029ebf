//! Gathering: every read the checks need, done once, into a plain [`Facts`]. This and
//! [`super::probe`] are the doctor's only I/O. What to read next follows from what was read
//! (which Secrets the Deployment names, which ServiceAccount the policy gives workspaces)
//! through the same pure derivations [`super::judge`] uses, so both work from one picture.
//!
//! A read that fails is kept as its [`ReadError`]: it becomes that check's line, never the end
//! of the run.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource};
use lumie_contract::policy::{WorkspacePolicy, WorkspacePolicySpec};
use lumie_contract::{labels, workspace};

use super::control_plane::ValueSource;
use super::reach::Reach;
use super::{DoctorOptions, judge, probe, webhook};
use crate::error::StartupError;

/// Why a read of the kube API did not give an answer, kept as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// The apiserver's status code, when it answered with an error (403, 404, …).
    pub code: Option<u16>,
    /// The apiserver's own message, or the whole error when the apiserver did not answer.
    pub message: String,
    /// The error as the kube client words it, for lines that quote it whole.
    pub display: String,
}

impl From<kube::Error> for ReadError {
    fn from(e: kube::Error) -> Self {
        let display = e.to_string();
        match &e {
            kube::Error::Api(s) => ReadError {
                code: Some(s.code),
                message: s.message.clone(),
                display,
            },
            _ => ReadError {
                code: None,
                message: display.clone(),
                display,
            },
        }
    }
}

/// One read: what came back, or why nothing did.
pub type Read<T> = Result<T, ReadError>;

/// Everything the doctor read, in the control plane namespace (`options.namespace`) and the
/// workspace namespace. `Option` fields are reads and probes that only happen when an earlier
/// read asks for them; `None` means not done: a ConfigMap or Secret not read counts as not
/// found, a probe not made as not checked.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The server Deployment (`None`: not found).
    pub server: Read<Option<Deployment>>,
    /// The pods its selector matches; empty without a Deployment or a selector.
    pub server_pods: Read<Vec<Pod>>,
    /// The control plane Secrets that were read, by name: the database URL and OIDC client
    /// secret the Deployment names, and the webhook's TLS Secret.
    pub secrets: Secrets,
    /// What connecting to the database came to, when there was a URL to try.
    pub database: Option<Reach>,
    /// What fetching the OIDC discovery document came to, when the issuer is a literal URL.
    pub oidc_issuer: Option<Reach>,
    /// What asking the server for the pods' agent binary came to, when its URL is known.
    pub agent_binary: Option<Reach>,
    /// Every WorkspacePolicy, by name (a 404: the CRD is not installed).
    pub policies: Read<Vec<(String, WorkspacePolicySpec)>>,
    /// The workspace template ConfigMap, when the server's template file comes from one.
    pub template_config_map: Option<Read<Option<ConfigMap>>>,
    /// The MutatingWebhookConfiguration named like the webhook.
    pub mutating: Read<Option<MutatingWebhookConfiguration>>,
    /// The ValidatingWebhookConfiguration named like the webhook.
    pub validating: Read<Option<ValidatingWebhookConfiguration>>,
    /// The webhook Deployment, which names the TLS Secret; a failed read counts as none.
    pub webhook_deployment: Option<Deployment>,
    /// Seconds since the epoch at gathering, for certificate expiry.
    pub now_unix: i64,
    /// The server-side dry-run create of [`webhook::probe_pod`]: the pod as admitted, or why not.
    pub probe: Read<Pod>,
    /// The ServiceAccount the policy gives workspace pods (`None`: not found).
    pub workspace_service_account: Read<Option<ServiceAccount>>,
    /// The RoleBindings of the workspace namespace.
    pub role_bindings: Read<Vec<RoleBinding>>,
    /// The stable `dev-workspace` Service (`None`: not found).
    pub service: Read<Option<Service>>,
    /// The workspace pods.
    pub workspace_pods: Read<Vec<Pod>>,
    /// The `FailedScheduling` events of the workspace namespace.
    pub scheduling_events: Read<Vec<Event>>,
    /// Every node.
    pub nodes: Read<Vec<Node>>,
    /// The pods of all namespaces that hold resources (not Succeeded or Failed).
    pub running_pods: Read<Vec<Pod>>,
    /// The leader Lease (name, as read), when the server uses PostgreSQL; `None`: not read
    /// (SQLite: one replica, no election).
    pub leader_lease: Option<(
        String,
        Read<Option<k8s_openapi::api::coordination::v1::Lease>>,
    )>,
}

/// Control plane Secrets by name, as read.
pub type Secrets = BTreeMap<String, Read<Option<Secret>>>;

/// A Secret by name; one that was not read counts as not found.
pub fn secret<'a>(secrets: &'a Secrets, name: &str) -> Result<Option<&'a Secret>, &'a ReadError> {
    match secrets.get(name) {
        Some(Ok(s)) => Ok(s.as_ref()),
        Some(Err(e)) => Err(e),
        None => Ok(None),
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

async fn get<K>(api: Api<K>, name: &str) -> Read<Option<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?)
}

async fn list<K>(api: Api<K>, params: &ListParams) -> Read<Vec<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(params).await?.items)
}

/// Reads everything the checks need. `Err` only when the kube API cannot be used at all
/// (checked once up front: with no API, every line would say the same).
pub async fn gather(client: &Client, options: &DoctorOptions) -> Result<Facts, StartupError> {
    client.apiserver_version().await.map_err(|e| {
        StartupError::Kube(format!(
            "kube API unreachable: {e} — check KUBECONFIG / the in-cluster API address"
        ))
    })?;
    let ns = options.namespace.as_str();
    let ws = options.workspace_namespace.as_str();

    // The server Deployment, and what it says about the settings.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let server = get(deployments.clone(), &options.server_deployment).await;
    let server_pods = match server
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(selector_string)
    {
        Some(sel) => {
            list(
                Api::namespaced(client.clone(), ns),
                &ListParams::default().labels(&sel),
            )
            .await
        }
        None => Ok(Vec::new()),
    };
    let settings = judge::settings(&server);

    // The Secrets the settings name, and the services they unlock.
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets = Secrets::new();
    for source in [&settings.database_url, &settings.oidc_client_secret] {
        if let ValueSource::Secret { name, .. } = source
            && !secrets.contains_key(name)
        {
            secrets.insert(name.clone(), get(secret_api.clone(), name).await);
        }
    }
    let database = match judge::database_target(ns, &settings, &secrets) {
        Ok(url) => Some(probe::database(&url, options.timeout).await),
        Err(_) => None,
    };
    let oidc_issuer = match judge::oidc_target(&settings) {
        Ok(issuer) => Some(probe::oidc_issuer(&issuer, options.timeout).await),
        Err(_) => None,
    };
    let agent_binary = match server.as_ref().ok().and_then(|d| d.as_ref()) {
        Some(d) => match super::control_plane::agent_url(d) {
            Some(url) => Some(probe::agent_binary(&url, options.timeout).await),
            None => None,
        },
        None => None,
    };

    // The policies in force, and the template.
    let policies = list(
        Api::<WorkspacePolicy>::all(client.clone()),
        &ListParams::default(),
    )
    .await
    .map(|items| {
        items
            .into_iter()
            .map(|p| (p.metadata.name.unwrap_or_default(), p.spec))
            .collect()
    });
    let template_config_map = match &settings.template {
        Some((cm, _)) => Some(get(Api::namespaced(client.clone(), ns), cm).await),
        None => None,
    };

    // The webhook: configurations, its TLS Secret, and an answer through the apiserver.
    let name = options.webhook_name.as_str();
    let mutating = get(Api::all(client.clone()), name).await;
    let validating = get(Api::all(client.clone()), name).await;
    let webhook_deployment = deployments.get_opt(name).await.ok().flatten();
    let tls = webhook::webhook_tls_secret(webhook_deployment.as_ref(), name);
    if let Entry::Vacant(slot) = secrets.entry(tls) {
        let read = get(secret_api, slot.key()).await;
        slot.insert(read);
    }
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (ws_service_account, _) =
        judge::workspace_identity(&judge::effective(ws, &policies, now_unix));
    let template = judge::template(ns, &settings, template_config_map.as_ref());
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some("lumie-doctor".into()),
    };
    let probe = Api::<Pod>::namespaced(client.clone(), ws)
        .create(
            &dry_run,
            &webhook::probe_pod(ws, &ws_service_account, &judge::dind_image(&template)),
        )
        .await
        .map_err(ReadError::from);

    // The lumie-dev overlay, and scheduling.
    let workspace_pods = ListParams::default().labels(&format!(
        "{}={}",
        labels::APP_NAME,
        labels::APP_NAME_WORKSPACE
    ));
    let leader_lease = if settings.database_url == ValueSource::Unset {
        None
    } else {
        let name = super::leader::lease_name(server.as_ref().ok().and_then(Option::as_ref));
        let read = get(Api::namespaced(client.clone(), ns), &name).await;
        Some((name, read))
    };
    Ok(Facts {
        leader_lease,
        server,
        server_pods,
        secrets,
        database,
        oidc_issuer,
        agent_binary,
        policies,
        template_config_map,
        mutating,
        validating,
        webhook_deployment,
        now_unix,
        probe,
        workspace_service_account: get(Api::namespaced(client.clone(), ws), &ws_service_account)
            .await,
        role_bindings: list(Api::namespaced(client.clone(), ws), &ListParams::default()).await,
        service: get(
            Api::namespaced(client.clone(), ws),
            workspace::STABLE_SERVICE,
        )
        .await,
        workspace_pods: list(Api::namespaced(client.clone(), ws), &workspace_pods).await,
        scheduling_events: list(
            Api::namespaced(client.clone(), ws),
            &ListParams::default().fields("reason=FailedScheduling"),
        )
        .await,
        nodes: list(Api::all(client.clone()), &ListParams::default()).await,
        running_pods: list(
            Api::all(client.clone()),
            &ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        )
        .await,
    })
}
