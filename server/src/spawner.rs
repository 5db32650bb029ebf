//! Kubernetes actions for one workspace: server-side apply of the home PVC and pod (field
//! manager [`FIELD_MANAGER`]), and their deletion. Every action is idempotent, so a build
//! interrupted by a crash is simply carried out again.
//!
//! No agent Secret is created: the agent authenticates with its pod's projected
//! ServiceAccount token (see [`crate::agent_api`]). Deleting a workspace still deletes the
//! `coder-…-agent` Secret that versions before that created.
//!
//! The control plane never creates, patches or deletes the `dev-workspace` ServiceAccount or
//! Service; it only reads them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use lumie_contract::naming::WorkspaceNames;

use crate::agents::AgentHub;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::WorkspaceRecord;
use crate::template::{Template, WorkspaceRef};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "lumie-coder";

/// A kube failure as one line: the apiserver's (or webhook's) message when there is one.
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Whether retrying could help (server-side or transport trouble, not a refusal).
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Kube(kube::Error::Api(s)) => s.code >= 500 || s.code == 429 || s.code == 409,
        Error::Kube(_) => true,
        Error::Database(_) => true,
        _ => false,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Kube actions in the workspace namespace, and the agent resets a new pod implies.
#[derive(Clone)]
pub struct Spawner {
    client: Client,
    namespace: String,
    template: Arc<Template>,
    agent_url: String,
    db: Db,
    agents: Arc<AgentHub>,
}

/// What [`Spawner::ensure_started`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartOutcome {
    /// A pod was created (it did not exist).
    pub pod_created: bool,
}

impl Spawner {
    /// Over this client and namespace; pods from `template`, their agents told to reach the
    /// control plane at `agent_url`.
    pub fn new(
        client: Client,
        namespace: &str,
        template: Arc<Template>,
        agent_url: &str,
        db: Db,
        agents: Arc<AgentHub>,
    ) -> Self {
        Spawner {
            client,
            namespace: namespace.into(),
            template,
            agent_url: agent_url.into(),
            db,
            agents,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Fails with a clear reason when the shared `dev-workspace` ServiceAccount is missing.
    pub async fn check_service_account(&self, name: &str) -> Result<()> {
        let sas: Api<ServiceAccount> = self.api();
        match sas.get_opt(name).await? {
            Some(_) => Ok(()),
            None => Err(Error::Conflict(format!(
                "ServiceAccount {}/{name} is missing; it is owned by the lumie-dev overlay (the control plane never creates it) — re-apply the overlay",
                self.namespace
            ))),
        }
    }

    /// Applies the PVC and pod of a workspace, reusing what exists:
    /// - the PVC is applied (unchanged when it exists);
    /// - a pod that exists (not terminating) is left alone; a terminating one is waited out.
    pub async fn ensure_started(
        &self,
        ws: &WorkspaceRecord,
        names: &WorkspaceNames,
    ) -> Result<StartOutcome> {
        let wref = WorkspaceRef { id: &ws.id, names };
        let template = &*self.template;
        self.check_service_account(&template.service_account_name)
            .await?;
        let mut outcome = StartOutcome::default();
        if self.db.agent_for_workspace(&ws.id).await?.is_none() {
            return Err(Error::NotFound(format!(
                "no agent row for workspace {}",
                ws.id
            )));
        }

        // Home PVC.
        let pvcs: Api<PersistentVolumeClaim> = self.api();
        if pvcs.get_opt(&names.home_pvc).await?.is_none() {
            pvcs.patch(
                &names.home_pvc,
                &Self::apply_params(),
                &Patch::Apply(&template.home_pvc(&wref, &self.namespace)),
            )
            .await?;
        }

        // Pod.
        outcome.pod_created = self.ensure_pod(&wref).await?;
        Ok(outcome)
    }

    /// Creates a workspace's pod again after it was deleted behind the control plane's back
    /// (the PVC is left as it is). Returns whether a pod was created.
    pub async fn recreate_pod(&self, workspace_id: &str, names: &WorkspaceNames) -> Result<bool> {
        self.ensure_pod(&WorkspaceRef {
            id: workspace_id,
            names,
        })
        .await
    }

    /// Creates the pod unless a live one exists; waits out a terminating one (up to its grace
    /// period plus a margin). A new pod means a fresh agent (connection timeout counted from
    /// now), reset before the pod exists. Returns whether a pod was created.
    async fn ensure_pod(&self, wref: &WorkspaceRef<'_>) -> Result<bool> {
        let template = &*self.template;
        let pods: Api<Pod> = self.api();
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(template.termination_grace_period_seconds.max(0) as u64 + 30);
        loop {
            match pods.get_opt(&wref.names.pod).await? {
                Some(p) if p.metadata.deletion_timestamp.is_none() => return Ok(false),
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(_) => {
                    return Err(Error::Conflict(format!(
                        "pod {} is still terminating; try again once it is gone",
                        wref.names.pod
                    )));
                }
                None => break,
            }
        }
        self.agents.restart(wref.id).await?;
        pods.patch(
            &wref.names.pod,
            &Self::apply_params(),
            &Patch::Apply(&template.pod(wref, &self.namespace, &self.agent_url)),
        )
        .await?;
        Ok(true)
    }

    /// Deletes the pod (a missing one is fine).
    pub async fn delete_pod(&self, name: &str) -> Result<()> {
        Self::ignore_missing(
            self.api::<Pod>()
                .delete(name, &DeleteParams::default())
                .await,
        )
    }

    /// Deletes the pod, the home PVC and the agent Secret older versions created (a missing one
    /// is fine: the upgrade path).
    pub async fn delete_all(&self, names: &WorkspaceNames) -> Result<()> {
        self.delete_pod(&names.pod).await?;
        Self::ignore_missing(
            self.api::<PersistentVolumeClaim>()
                .delete(&names.home_pvc, &DeleteParams::default())
                .await,
        )?;
        Self::ignore_missing(
            self.api::<Secret>()
                .delete(&names.agent_secret, &DeleteParams::default())
                .await,
        )
    }

    /// Deletes one object by kind name (`Pod`, `PersistentVolumeClaim`, `Secret`), for orphans.
    pub async fn delete_kind(&self, kind: &str, name: &str) -> Result<()> {
        let dp = DeleteParams::default();
        let r = match kind {
            "Pod" => self.api::<Pod>().delete(name, &dp).await.map(|_| ()),
            "PersistentVolumeClaim" => self
                .api::<PersistentVolumeClaim>()
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "Secret" => self.api::<Secret>().delete(name, &dp).await.map(|_| ()),
            other => {
                return Err(Error::Internal(format!(
                    "cannot delete unknown kind {other}"
                )));
            }
        };
        Self::ignore_missing(r)
    }

    fn ignore_missing<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
