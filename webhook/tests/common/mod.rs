//! Fixtures shared by the webhook's table tests.

use serde_json::{Value, json};

/// A workspace pod as the control plane creates it, after mutation.
pub fn workspace_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "coder-alice-main",
            "namespace": "lumie-dev",
            "labels": {"app.kubernetes.io/name": "dev-workspace"}
        },
        "spec": {
            "serviceAccountName": "dev-workspace",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
                    {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}
                ]}]
            }}},
            "containers": [
                {"name": "dev", "image": "ghcr.io/lumie-infra/dev:1.4"},
                {"name": "agents", "image": "ghcr.io/lumie-infra/agents:1.4",
                 "ports": [{"containerPort": 3000}]},
                {"name": "dind", "image": "docker:27-dind", "securityContext": {"privileged": true}}
            ]
        }
    })
}
