//! Label keys and values carried by every object the control plane creates for a workspace.

/// Selected by the stable `dev-workspace` Service and by the default `workspaceSelector`.
pub const APP_NAME: &str = "app.kubernetes.io/name";
/// The value of [`APP_NAME`] on workspace pods.
pub const APP_NAME_WORKSPACE: &str = "dev-workspace";
/// Marks objects the control plane owns, so reconciliation never touches anyone else's.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGED_BY_LUMIE: &str = "lumie-coder";
/// The workspace owner's name (a DNS-1123 label, see [`crate::naming`]).
pub const OWNER: &str = "coder.lumie-infra.com/owner";
/// The workspace name (a DNS-1123 label).
pub const WORKSPACE: &str = "coder.lumie-infra.com/workspace";
/// The workspace's database id (a UUID), the key reconciliation joins on.
pub const WORKSPACE_ID: &str = "coder.lumie-infra.com/workspace-id";

/// The label selector (`key=value,…`) matching every object managed by lumie-coder.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_LUMIE}")
}

/// The labels that say which workspace a pod belongs to. Only the control plane sets them on
/// pods: the server finds a workspace's pod by them, and the webhook derives from them which
/// home volume and agent Secret the pod may mount.
pub const WORKSPACE_IDENTITY: [&str; 3] = [OWNER, WORKSPACE, WORKSPACE_ID];

/// Annotation the webhook stamps on a workspace pod it admits from the control plane: the
/// username that created it. Nobody else may set or change it, so the server trusts only pods
/// carrying it.
pub const CREATED_BY: &str = "coder.lumie-infra.com/created-by";
