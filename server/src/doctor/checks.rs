//! What every verdict shares: the check ids (stable for `--output json` consumers), the server's
//! environment variable names, and a name for objects in messages. The verdicts themselves are
//! by topic: [`super::control_plane`], [`super::reach`], [`super::webhook`], [`super::overlay`],
//! [`super::capacity`], [`super::policy`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
    /// The leader Lease and the replicas (PostgreSQL installs).
    pub const LEADER: &str = "leader";
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
    /// The URL pods reach the server at (and download the agent from).
    pub const AGENT_URL: &str = "LUMIE_AGENT_URL";
}

/// An object's name in a message (`?` for one without).
pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("?")
}
