//! The lumie-dev overlay's objects every workspace relies on: the `dev-workspace`
//! ServiceAccount, its RoleBinding, and the stable Service with the contract's ports. The
//! control plane only reads them. Pure over the objects read.

use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use lumie_contract::{apps, labels, service};

use super::checks::{id, name_of};
use super::report::Check;

/// The ServiceAccount every workspace pod runs as exists.
pub fn workspace_service_account(
    namespace: &str,
    name: &str,
    sa: Option<&ServiceAccount>,
) -> Check {
    match sa {
        Some(_) => Check::ok(
            id::WORKSPACE_SERVICE_ACCOUNT,
            format!("ServiceAccount {namespace}/{name} present"),
        ),
        None => Check::failure(
            id::WORKSPACE_SERVICE_ACCOUNT,
            format!(
                "ServiceAccount {namespace}/{name} not found: workspace pods cannot be created"
            ),
            format!(
                "helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (the overlay owns it; the control plane never creates it)"
            ),
        ),
    }
}

/// A RoleBinding in the namespace grants the workspace ServiceAccount a role.
pub fn workspace_role_binding(namespace: &str, sa: &str, bindings: &[RoleBinding]) -> Check {
    let binds = |rb: &&RoleBinding| {
        rb.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref().unwrap_or(namespace) == namespace
        })
    };
    match bindings.iter().find(binds) {
        Some(rb) => Check::ok(
            id::WORKSPACE_ROLE_BINDING,
            format!(
                "RoleBinding {namespace}/{} binds ServiceAccount {sa} to {} {}",
                name_of(&rb.metadata),
                rb.role_ref.kind,
                rb.role_ref.name
            ),
        ),
        None => Check::failure(
            id::WORKSPACE_ROLE_BINDING,
            format!(
                "no RoleBinding in {namespace} binds ServiceAccount {sa}: developers cannot use kubectl from their workspace"
            ),
            format!(
                "helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (RoleBinding {sa}-admin)"
            ),
        ),
    }
}

/// The stable Service exists, selects workspace pods, and its ports match the contract (the
/// rule of [`service::port_drift`], which the server's readiness check applies too).
pub fn workspace_service(namespace: &str, name: &str, service: Option<&Service>) -> Check {
    let contract: Vec<String> = apps::ALL
        .iter()
        .map(|a| format!("{} {}", a.slug, a.port))
        .collect();
    let fix = format!(
        "restore the overlay's Service: helm upgrade --install lumie-dev charts/lumie-dev -n {namespace} (service.ports: {})",
        contract.join(", ")
    );
    let Some(service) = service else {
        return Check::failure(
            id::WORKSPACE_SERVICE,
            format!("Service {namespace}/{name} not found: workspace apps are unreachable"),
            fix,
        );
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let drift = service::port_drift(ports);
    let mut problems: Vec<String> = drift.problems.iter().map(ToString::to_string).collect();
    let extras: Vec<String> = drift.extras.iter().map(ToString::to_string).collect();
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.get(labels::APP_NAME).map(String::as_str) != Some(labels::APP_NAME_WORKSPACE) {
        problems.push(format!(
            "selector {selector:?} does not select workspace pods ({}={})",
            labels::APP_NAME,
            labels::APP_NAME_WORKSPACE
        ));
    }
    if !problems.is_empty() {
        return Check::failure(
            id::WORKSPACE_SERVICE,
            format!(
                "Service {namespace}/{name} drifted from the contract: {}",
                problems.join("; ")
            ),
            fix,
        );
    }
    let summary = format!(
        "Service {namespace}/{name} ports match the contract ({})",
        contract.join(", ")
    );
    if extras.is_empty() {
        Check::ok(id::WORKSPACE_SERVICE, summary)
    } else {
        Check::warning(
            id::WORKSPACE_SERVICE,
            format!(
                "{summary}; extra ports not in the contract: {}",
                extras.join(", ")
            ),
            "remove ports the contract does not name, or add them to contract::apps",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::*;
    use crate::doctor::report::Status;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn workspace_service_verdicts() {
        let ok = service(contract_ports());
        let c = workspace_service("lumie-dev", "dev-workspace", Some(&ok));
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.summary
                .contains("tilt 10350, code-server 13337, agents 3000")
        );
        let mut drift = contract_ports();
        drift[1]["port"] = json!(13338);
        let c = workspace_service("lumie-dev", "dev-workspace", Some(&service(drift)));
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("Service lumie-dev/dev-workspace drifted"),
            "{c:?}"
        );
        assert!(c.fix.unwrap().contains("code-server 13337"));
        let c = workspace_service("lumie-dev", "dev-workspace", None);
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("not found"));
        let mut wrong_selector = service(contract_ports());
        wrong_selector.spec.as_mut().unwrap().selector =
            Some(BTreeMap::from([("app".to_string(), "x".to_string())]));
        let c = workspace_service("lumie-dev", "dev-workspace", Some(&wrong_selector));
        assert_eq!(c.status, Status::Failure);
        assert!(c.summary.contains("does not select workspace pods"));
        let mut extra = contract_ports();
        extra
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "debug", "port": 2345}));
        let c = workspace_service("lumie-dev", "dev-workspace", Some(&service(extra)));
        assert_eq!(c.status, Status::Warning);
    }

    #[test]
    fn service_account_and_role_binding() {
        let sa: ServiceAccount = from(json!({"metadata": {"name": "dev-workspace"}}));
        assert_eq!(
            workspace_service_account("lumie-dev", "dev-workspace", Some(&sa)).status,
            Status::Ok
        );
        let c = workspace_service_account("lumie-dev", "dev-workspace", None);
        assert_eq!(c.status, Status::Failure);
        assert!(
            c.summary
                .contains("ServiceAccount lumie-dev/dev-workspace not found")
        );

        let rb = |name: &str, sa: &str, ns: Option<&str>| -> RoleBinding {
            let mut subject = json!({"kind": "ServiceAccount", "name": sa});
            if let Some(ns) = ns {
                subject["namespace"] = json!(ns);
            }
            from(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [subject]
            }))
        };
        let c = workspace_role_binding(
            "lumie-dev",
            "dev-workspace",
            &[
                rb("other", "someone", None),
                rb("dev-workspace-admin", "dev-workspace", Some("lumie-dev")),
            ],
        );
        assert_eq!(c.status, Status::Ok);
        assert!(c.summary.contains(
            "dev-workspace-admin binds ServiceAccount dev-workspace to ClusterRole admin"
        ));
        let c = workspace_role_binding(
            "lumie-dev",
            "dev-workspace",
            &[rb("x", "dev-workspace", Some("elsewhere"))],
        );
        assert_eq!(
            c.status,
            Status::Failure,
            "a subject from another namespace is someone else"
        );
    }
}
