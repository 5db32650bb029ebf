//! Fixed parts of the workspace pod contract that no policy changes.

/// The namespace workspaces live in; the control plane's RBAC reaches no other.
pub const NAMESPACE: &str = "lumie-dev";
/// The control plane's namespace.
pub const CONTROL_PLANE_NAMESPACE: &str = "coder";
/// The in-cluster URL of the control plane: pods cannot reach the public (Teleport) URL.
pub const IN_CLUSTER_URL: &str = "http://coder.coder.svc.cluster.local";
/// The singleton ClusterIP Service targeting the workspace app ports, owned by the lumie-dev overlay.
pub const STABLE_SERVICE: &str = "dev-workspace";

/// The build/shell container: Tilt, kubectl, Docker CLI, code-server, and the agent.
pub const CONTAINER_DEV: &str = "dev";
/// The agents browser UI container.
pub const CONTAINER_AGENTS: &str = "agents";
/// The privileged Docker-in-Docker sidecar: the one privilege exception.
pub const CONTAINER_DIND: &str = "dind";
/// The containers every workspace pod has.
pub const REQUIRED_CONTAINERS: [&str; 3] = [CONTAINER_DEV, CONTAINER_AGENTS, CONTAINER_DIND];

/// Default size of the home PersistentVolumeClaim.
pub const HOME_SIZE: &str = "30Gi";
/// Default storage class of the home PersistentVolumeClaim.
pub const HOME_STORAGE_CLASS: &str = "local-path";
/// Access mode of the home PersistentVolumeClaim.
pub const HOME_ACCESS_MODE: &str = "ReadWriteOnce";
/// Where the home volume is mounted in `dev`.
pub const HOME_MOUNT_PATH: &str = "/home/coder";

/// Env var carrying the control plane URL to the agent.
pub const ENV_AGENT_URL: &str = "CODER_AGENT_URL";
/// Env var carrying a fixed agent token (development and the agent's own tests; the server
/// authenticates agents by their projected token, [`ENV_AGENT_TOKEN_FILE`]).
pub const ENV_AGENT_TOKEN: &str = "CODER_AGENT_TOKEN";
/// Env var naming the file that holds the agent's projected ServiceAccount token. The kubelet
/// refreshes the file; the agent reads it for each request.
pub const ENV_AGENT_TOKEN_FILE: &str = "CODER_AGENT_TOKEN_FILE";
/// Audience of the agent's projected token: the server's TokenReview asks for exactly this one,
/// so the pod's API token (audience: the apiserver) is no agent token and vice versa.
pub const AGENT_TOKEN_AUDIENCE: &str = "lumie-coder-agent";
/// Lifetime requested for the agent's projected token; the kubelet refreshes it at 80 %.
pub const AGENT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Where the projected token volume is mounted in `dev`.
pub const AGENT_TOKEN_DIR: &str = "/var/run/secrets/coder.lumie-infra.com/agent";
/// The token's file name in [`AGENT_TOKEN_DIR`].
pub const AGENT_TOKEN_FILE_NAME: &str = "token";
/// Env var carrying the pod IP (downward API) so the agent listens where the Service reaches.
pub const ENV_POD_IP: &str = "POD_IP";
/// Key of the agent token in the per-workspace Secret of older versions (no longer created;
/// a leftover one is deleted with its workspace).
pub const SECRET_TOKEN_KEY: &str = "token";
/// The agent's session port on the pod IP: terminal, SSH and TCP sessions opened by the control
/// plane with a ticket ([`crate::sessions`]). Not an app port, and outside the ranges developer
/// tools and the kernel's ephemeral ports use.
pub const SESSION_PORT: u16 = 13399;
