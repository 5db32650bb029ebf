//! The WorkspacePolicy in force for the workspace namespace, worked out as the webhook does,
//! and whether it keeps the privileged `dind` exception for the server's pods.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use lumie_contract::labels;
use lumie_contract::policy::{PolicyMode, WorkspacePolicySpec, selector_matches};

use super::checks::id;
use super::report::Check;

/// The policies the webhook enforces in a namespace, as the doctor works them out.
#[derive(Clone, Debug, PartialEq)]
pub enum Effective {
    /// No (valid) WorkspacePolicy object: the webhook applies the built-in contract default.
    Builtin {
        /// Why: no CRD, no objects, or every object invalid (names and problems).
        why: String,
    },
    /// Valid objects covering the namespace, by name.
    Policies(Vec<(String, WorkspacePolicySpec)>),
    /// Valid objects exist but none covers the namespace: nothing guards its pods.
    NoneCovering(Vec<String>),
}

/// Mirrors the webhook's rule: invalid objects are ignored; with no valid object at all the
/// built-in default applies; otherwise the valid objects naming the namespace apply.
/// `objects` is `None` when the CRD is not installed.
/// `now` decides whether a break-glass exception has expired, as the webhook does.
pub fn effective_policies(
    namespace: &str,
    objects: Option<&[(String, WorkspacePolicySpec)]>,
    now: Timestamp,
) -> Effective {
    let Some(objects) = objects else {
        return Effective::Builtin {
            why: "the WorkspacePolicy CRD is not installed".into(),
        };
    };
    let mut invalid = Vec::new();
    let mut valid = Vec::new();
    for (name, spec) in objects {
        match spec.validate(now) {
            Ok(()) => valid.push((name.clone(), spec.clone())),
            Err(problems) => invalid.push(format!("{name} ({})", problems.join("; "))),
        }
    }
    if valid.is_empty() {
        return Effective::Builtin {
            why: if invalid.is_empty() {
                "no WorkspacePolicy objects".into()
            } else {
                format!(
                    "every WorkspacePolicy is invalid and ignored: {}",
                    invalid.join(", ")
                )
            },
        };
    }
    let names: Vec<String> = valid.iter().map(|(n, _)| n.clone()).collect();
    let covering: Vec<(String, WorkspacePolicySpec)> = valid
        .into_iter()
        .filter(|(_, s)| s.namespaces.iter().any(|n| n == namespace))
        .collect();
    if covering.is_empty() {
        Effective::NoneCovering(names)
    } else {
        Effective::Policies(covering)
    }
}

/// Why a policy does not let the server's `dind` container run privileged, if it does not.
fn dind_problem(
    name: &str,
    spec: &WorkspacePolicySpec,
    creator: &str,
    image: &str,
) -> Option<String> {
    let workspace_labels = BTreeMap::from([(
        labels::APP_NAME.to_string(),
        labels::APP_NAME_WORKSPACE.to_string(),
    )]);
    let dind = lumie_contract::workspace::CONTAINER_DIND;
    let Some(ex) = spec.privileged_containers.iter().find(|c| c.name == dind) else {
        return Some(format!(
            "WorkspacePolicy {name} lists no privileged container {dind:?}"
        ));
    };
    if !ex.image_matcher().is_ok_and(|m| m.is_match(image)) {
        return Some(format!(
            "WorkspacePolicy {name} allows {dind:?} only with images [{}], not {image}",
            ex.images.join(", ")
        ));
    }
    if !spec.workspace_creators.iter().any(|c| c == creator) {
        return Some(format!(
            "WorkspacePolicy {name} workspaceCreators [{}] lacks {creator}: the server's pods lose the exception",
            spec.workspace_creators.join(", ")
        ));
    }
    if !selector_matches(&spec.workspace_selector, &workspace_labels) {
        return Some(format!(
            "WorkspacePolicy {name} workspaceSelector does not match workspace pods ({}={})",
            labels::APP_NAME,
            labels::APP_NAME_WORKSPACE
        ));
    }
    None
}

/// The privileged `dind` exception is in force for the server's workspace pods: every policy
/// covering the namespace allows `dind` with the template's image, for pods the server's
/// ServiceAccount creates. Non-enforcing policies only warn.
pub fn dind_exception(
    namespace: &str,
    effective: &Effective,
    creator: &str,
    dind_image: &str,
) -> Check {
    let id = id::DIND_EXCEPTION;
    let fix = "give dind its exception back: privilegedContainers [{name: dind, images: [\"docker:*dind*\", \"docker.io/library/docker:*dind*\"]}] and the server's ServiceAccount in workspaceCreators (kubectl edit workspacepolicy default)";
    match effective {
        Effective::Builtin { why } => {
            let builtin = WorkspacePolicySpec::contract_default();
            match dind_problem("default (built-in)", &builtin, creator, dind_image) {
                None => Check::ok(
                    id,
                    format!(
                        "dind may run privileged with {dind_image} under the built-in default policy ({why})"
                    ),
                ),
                Some(p) => Check::failure(
                    id,
                    format!("{p} ({why})"),
                    "install the default WorkspacePolicy (defaultPolicy.enabled=true) with the server's ServiceAccount as creator",
                ),
            }
        }
        Effective::NoneCovering(names) => Check::failure(
            id,
            format!(
                "no valid WorkspacePolicy covers {namespace} (policies: {}): its pods are not guarded at all",
                names.join(", ")
            ),
            format!("add {namespace} to spec.namespaces of the default WorkspacePolicy"),
        ),
        Effective::Policies(list) => {
            let mut enforced = Vec::new();
            let mut soft = Vec::new();
            for (name, spec) in list {
                if let Some(p) = dind_problem(name, spec, creator, dind_image) {
                    if spec.mode == PolicyMode::Enforce {
                        enforced.push(p);
                    } else {
                        soft.push(format!(
                            "{p} (mode {}: reported, not denied)",
                            spec.mode.as_str()
                        ));
                    }
                }
            }
            let names: Vec<String> = list
                .iter()
                .map(|(n, s)| format!("{n} ({})", s.mode.as_str()))
                .collect();
            if !enforced.is_empty() {
                Check::failure(id, enforced.join("; "), fix)
            } else if !soft.is_empty() {
                Check::warning(id, soft.join("; "), fix)
            } else {
                Check::ok(
                    id,
                    format!(
                        "dind may run privileged with {dind_image} for pods created by {creator} under WorkspacePolicy {}",
                        names.join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::*;
    use crate::doctor::report::Status;

    #[test]
    fn effective_policy_mirrors_the_webhook() {
        let ns = "lumie-dev";
        assert!(matches!(
            effective_policies(ns, None, Timestamp::UNIX_EPOCH),
            Effective::Builtin { .. }
        ));
        assert!(
            matches!(effective_policies(ns, Some(&[]), Timestamp::UNIX_EPOCH), Effective::Builtin { why } if why == "no WorkspacePolicy objects")
        );
        let invalid = vec![("broken".to_string(), policy(|p| p.namespaces.clear()))];
        assert!(
            matches!(effective_policies(ns, Some(&invalid), Timestamp::UNIX_EPOCH), Effective::Builtin { why } if why.contains("broken"))
        );
        let elsewhere = vec![(
            "other".to_string(),
            policy(|p| p.namespaces = vec!["x".into()]),
        )];
        assert_eq!(
            effective_policies(ns, Some(&elsewhere), Timestamp::UNIX_EPOCH),
            Effective::NoneCovering(vec!["other".into()])
        );
        let mixed = vec![
            ("default".to_string(), policy(|_| {})),
            (
                "other".to_string(),
                policy(|p| p.namespaces = vec!["x".into()]),
            ),
        ];
        match effective_policies(ns, Some(&mixed), Timestamp::UNIX_EPOCH) {
            Effective::Policies(list) => assert_eq!(list.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dind_exception_table() {
        let creator = "system:serviceaccount:coder:coder";
        let one = |p: WorkspacePolicySpec| Effective::Policies(vec![("default".into(), p)]);
        let cases: Vec<(&str, Effective, &str, Status, &str)> = vec![
            (
                "builtin",
                Effective::Builtin {
                    why: "no WorkspacePolicy objects".into(),
                },
                "docker:27-dind",
                Status::Ok,
                "built-in default policy",
            ),
            (
                "default object",
                one(policy(|_| {})),
                "docker:27-dind",
                Status::Ok,
                "under WorkspacePolicy default (Enforce)",
            ),
            (
                "no dind",
                one(policy(|p| p.privileged_containers.clear())),
                "docker:27-dind",
                Status::Failure,
                "lists no privileged container \"dind\"",
            ),
            (
                "image not allowed",
                one(policy(|p| {
                    p.privileged_containers[0].images = vec!["registry.local/dind:*".into()]
                })),
                "docker:27-dind",
                Status::Failure,
                "not docker:27-dind",
            ),
            (
                "template image off",
                one(policy(|_| {})),
                "ubuntu:dind",
                Status::Failure,
                "not ubuntu:dind",
            ),
            (
                "creator missing",
                one(policy(|p| p.workspace_creators = vec!["someone".into()])),
                "docker:27-dind",
                Status::Failure,
                "lacks system:serviceaccount:coder:coder",
            ),
            (
                "warn mode",
                one(policy(|p| {
                    p.mode = PolicyMode::Warn;
                    p.privileged_containers.clear();
                })),
                "docker:27-dind",
                Status::Warning,
                "mode Warn",
            ),
            (
                "none covering",
                Effective::NoneCovering(vec!["other".into()]),
                "docker:27-dind",
                Status::Failure,
                "no valid WorkspacePolicy covers lumie-dev",
            ),
        ];
        for (name, eff, image, status, text) in cases {
            let c = dind_exception("lumie-dev", &eff, creator, image);
            assert_verdict(name, &c, status, text);
        }
        let c = dind_exception(
            "lumie-dev",
            &Effective::Builtin { why: "x".into() },
            "system:serviceaccount:other:sa",
            "docker:27-dind",
        );
        assert_eq!(
            c.status,
            Status::Failure,
            "the built-in default names coder:coder only"
        );
    }
}
