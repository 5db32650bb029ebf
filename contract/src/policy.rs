//! The `WorkspacePolicy` custom resource: how platform admins set the contract every workspace
//! pod must meet, and [`WorkspacePolicySpec::contract_default`], the contract itself.
//!
//! Validation of a policy object is pure and lives here so the webhook (which rejects a broken
//! policy at `kubectl apply`) and the server's policy API give the same message.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::labels;

/// The name of the policy object the built-in default is published as.
pub const DEFAULT_POLICY_NAME: &str = "default";
/// API group of the CRD.
pub const GROUP: &str = "coder.lumie-infra.com";
/// API version of the CRD.
pub const VERSION: &str = "v1alpha1";

/// What happens to a pod that violates the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PolicyMode {
    /// Violations are denied.
    #[default]
    Enforce,
    /// Violations are allowed, each returned as an admission warning (kubectl prints them).
    Warn,
    /// Violations are allowed and recorded as audit annotations.
    Audit,
}

impl PolicyMode {
    /// The mode as written in the resource (`Enforce`, `Warn`, `Audit`).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "Enforce",
            PolicyMode::Warn => "Warn",
            PolicyMode::Audit => "Audit",
        }
    }
}

/// A container allowed to be privileged: matched by name AND image glob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrivilegedContainer {
    /// Container name (exact).
    pub name: String,
    /// Image patterns; `*` matches any run of characters, `?` one character.
    pub images: Vec<String>,
}

impl PrivilegedContainer {
    /// Compiles the image patterns. Every pattern in a validated policy compiles.
    pub fn image_matcher(&self) -> Result<GlobSet, globset::Error> {
        let mut set = GlobSetBuilder::new();
        for pattern in &self.images {
            set.add(compile_image_glob(pattern)?);
        }
        set.build()
    }
}

fn compile_image_glob(pattern: &str) -> Result<Glob, globset::Error> {
    // Images contain '/', and `docker:*dind*` must not care about it: no literal separator.
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}

/// The spec of a `WorkspacePolicy`: every field defaults to the contract in DESIGN.md.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "coder.lumie-infra.com",
    version = "v1alpha1",
    kind = "WorkspacePolicy",
    plural = "workspacepolicies",
    shortname = "wsp",
    status = "WorkspacePolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkspacePolicySpec {
    /// `Enforce` denies violations; `Warn` and `Audit` allow them and report.
    pub mode: PolicyMode,
    /// Namespaces the policy guards.
    pub namespaces: Vec<String>,
    /// Which pods are workspace pods (mutated, and allowed the privileged exception).
    pub workspace_selector: LabelSelector,
    /// Usernames allowed to create workspace pods (the control plane's ServiceAccount).
    pub workspace_creators: Vec<String>,
    /// The ServiceAccount every workspace pod runs as.
    pub service_account_name: String,
    /// Node label keys workspace pods must avoid (required anti-affinity, `DoesNotExist`).
    pub avoid_node_labels: Vec<String>,
    /// Containers that may be privileged in workspace pods, by name and image.
    pub privileged_containers: Vec<PrivilegedContainer>,
    /// Users whose requests are allowed whatever they contain (break-glass), and audited.
    pub exempt_users: Vec<String>,
    /// Groups whose requests are allowed whatever they contain (break-glass), and audited.
    pub exempt_groups: Vec<String>,
}

impl Default for WorkspacePolicySpec {
    fn default() -> Self {
        Self::contract_default()
    }
}

impl WorkspacePolicySpec {
    /// The workspace pod contract. This is the only place the defaults are written.
    pub fn contract_default() -> Self {
        WorkspacePolicySpec {
            mode: PolicyMode::Enforce,
            namespaces: vec![crate::workspace::NAMESPACE.to_string()],
            workspace_selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    labels::APP_NAME.to_string(),
                    labels::APP_NAME_WORKSPACE.to_string(),
                )])),
                match_expressions: None,
            },
            workspace_creators: vec!["system:serviceaccount:coder:coder".to_string()],
            service_account_name: "dev-workspace".to_string(),
            avoid_node_labels: vec![
                "node-role.kubernetes.io/control-plane".to_string(),
                "node-role.kubernetes.io/master".to_string(),
            ],
            privileged_containers: vec![PrivilegedContainer {
                name: crate::workspace::CONTAINER_DIND.to_string(),
                images: vec![
                    "docker:*dind*".to_string(),
                    "docker.io/library/docker:*dind*".to_string(),
                ],
            }],
            exempt_users: vec![],
            exempt_groups: vec![],
        }
    }

    /// Checks the policy can be enforced as written. Returns every problem, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.namespaces.is_empty() {
            problems.push(
                "spec.namespaces: must name at least one namespace (an empty list would guard nothing)"
                    .to_string(),
            );
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if let Err(e) = crate::naming::validate_dns_label(ns) {
                problems.push(format!("spec.namespaces[{i}]: {ns:?} {e}"));
            }
        }
        if let Err(e) = validate_selector(&self.workspace_selector) {
            problems.push(format!("spec.workspaceSelector: {e}"));
        }
        if is_empty_selector(&self.workspace_selector) {
            problems.push(
                "spec.workspaceSelector: must not be empty (it would make every pod a workspace pod)"
                    .to_string(),
            );
        }
        if let Err(e) = crate::naming::validate_dns_subdomain(&self.service_account_name) {
            problems.push(format!(
                "spec.serviceAccountName: {:?} {e}",
                self.service_account_name
            ));
        }
        for (i, key) in self.avoid_node_labels.iter().enumerate() {
            if let Err(e) = validate_label_key(key) {
                problems.push(format!("spec.avoidNodeLabels[{i}]: {key:?} {e}"));
            }
        }
        for (i, c) in self.privileged_containers.iter().enumerate() {
            if let Err(e) = crate::naming::validate_dns_label(&c.name) {
                problems.push(format!(
                    "spec.privilegedContainers[{i}].name: {:?} {e}",
                    c.name
                ));
            }
            if c.images.is_empty() {
                problems.push(format!(
                    "spec.privilegedContainers[{i}].images: must list at least one image pattern"
                ));
            }
            for (j, pattern) in c.images.iter().enumerate() {
                if pattern.trim().is_empty() {
                    problems.push(format!(
                        "spec.privilegedContainers[{i}].images[{j}]: must not be empty"
                    ));
                } else if pattern == "*" || pattern == "**" {
                    problems.push(format!(
                        "spec.privilegedContainers[{i}].images[{j}]: {pattern:?} would allow any image to run privileged"
                    ));
                } else if let Err(e) = compile_image_glob(pattern) {
                    problems.push(format!(
                        "spec.privilegedContainers[{i}].images[{j}]: bad glob {pattern:?}: {}",
                        e.kind()
                    ));
                }
            }
        }
        for (field, list) in [
            ("workspaceCreators", &self.workspace_creators),
            ("exemptUsers", &self.exempt_users),
            ("exemptGroups", &self.exempt_groups),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.trim().is_empty() {
                    problems.push(format!("spec.{field}[{i}]: must not be empty"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Status written back by the webhook: whether the policy is in force.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspacePolicyStatus {
    /// The `metadata.generation` last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Human-readable state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_empty_selector(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        crate::naming::validate_dns_subdomain(p).map_err(|e| format!("prefix {e}"))?;
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(ok_char)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("is not a valid label key".to_string());
    }
    Ok(())
}

fn validate_selector(s: &LabelSelector) -> Result<(), String> {
    for key in s.match_labels.iter().flat_map(|m| m.keys()) {
        validate_label_key(key).map_err(|e| format!("matchLabels key {key:?} {e}"))?;
    }
    for req in s.match_expressions.iter().flatten() {
        validate_label_key(&req.key)
            .map_err(|e| format!("matchExpressions key {:?} {e}", req.key))?;
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(format!(
                    "matchExpressions {:?}: operator {} needs values",
                    req.key, req.operator
                ));
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(format!(
                    "matchExpressions {:?}: operator {} takes no values",
                    req.key, req.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "matchExpressions {:?}: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)",
                    req.key
                ));
            }
        }
    }
    Ok(())
}

/// Whether `labels` match `selector`, with Kubernetes semantics. An invalid selector (see
/// [`WorkspacePolicySpec::validate`]) matches nothing, so a broken policy never widens the exception.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if validate_selector(selector).is_err() {
        return false;
    }
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let in_values = |v: &String| r.values.iter().flatten().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(in_values),
        "NotIn" => !value.is_some_and(in_values),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_policy_is_valid_and_is_what_a_missing_field_means() {
        let d = WorkspacePolicySpec::contract_default();
        assert_eq!(d.validate(), Ok(()));
        let parsed: WorkspacePolicySpec = serde_json::from_str(r#"{"mode":"Warn"}"#).unwrap();
        assert_eq!(parsed.mode, PolicyMode::Warn);
        assert_eq!(parsed.namespaces, d.namespaces);
        assert_eq!(parsed.privileged_containers, d.privileged_containers);
    }

    #[test]
    fn unknown_mode_is_a_parse_error() {
        let err = serde_json::from_str::<WorkspacePolicySpec>(r#"{"mode":"Relaxed"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `Relaxed`"),
            "{err}"
        );
    }

    #[test]
    fn validation_table() {
        type Edit = fn(&mut WorkspacePolicySpec);
        let cases: &[(&str, Edit, Option<&str>)] = &[
            ("default", |_| {}, None),
            (
                "empty namespaces",
                |p| p.namespaces.clear(),
                Some("spec.namespaces: must name"),
            ),
            (
                "bad namespace",
                |p| p.namespaces = vec!["Lumie_Dev".into()],
                Some("spec.namespaces[0]"),
            ),
            (
                "bad glob",
                |p| p.privileged_containers[0].images = vec!["docker:[dind".into()],
                Some("bad glob"),
            ),
            (
                "star glob",
                |p| p.privileged_containers[0].images = vec!["*".into()],
                Some("any image"),
            ),
            (
                "no images",
                |p| p.privileged_containers[0].images.clear(),
                Some("at least one image"),
            ),
            (
                "bad container name",
                |p| p.privileged_containers[0].name = "DinD".into(),
                Some(".name"),
            ),
            (
                "empty selector",
                |p| p.workspace_selector = LabelSelector::default(),
                Some("must not be empty"),
            ),
            (
                "bad operator",
                |p| {
                    p.workspace_selector.match_expressions = Some(vec![LabelSelectorRequirement {
                        key: "a".into(),
                        operator: "Like".into(),
                        values: None,
                    }])
                },
                Some("unknown operator"),
            ),
            (
                "bad sa",
                |p| p.service_account_name = "".into(),
                Some("spec.serviceAccountName"),
            ),
            (
                "bad node label",
                |p| p.avoid_node_labels = vec!["-x".into()],
                Some("spec.avoidNodeLabels[0]"),
            ),
            (
                "empty exempt user",
                |p| p.exempt_users = vec![" ".into()],
                Some("spec.exemptUsers[0]"),
            ),
        ];
        for (name, edit, want) in cases {
            let mut p = WorkspacePolicySpec::contract_default();
            edit(&mut p);
            match (p.validate(), want) {
                (Ok(()), None) => {}
                (Err(problems), Some(w)) => assert!(
                    problems.iter().any(|m| m.contains(w)),
                    "{name}: {problems:?} lacks {w:?}"
                ),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn image_globs_match_only_dind_images() {
        let m = WorkspacePolicySpec::contract_default().privileged_containers[0]
            .image_matcher()
            .unwrap();
        for ok in [
            "docker:27-dind",
            "docker:dind",
            "docker:27.3.1-dind-rootless",
            "docker.io/library/docker:dind",
        ] {
            assert!(m.is_match(ok), "{ok}");
        }
        for bad in [
            "docker:27",
            "evil.io/docker:dind",
            "ubuntu:dind",
            "docker.io/evil/docker:dind",
            "dind",
        ] {
            assert!(!m.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn selector_semantics() {
        let sel = WorkspacePolicySpec::contract_default().workspace_selector;
        assert!(selector_matches(
            &sel,
            &labels(&[("app.kubernetes.io/name", "dev-workspace"), ("x", "y")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app.kubernetes.io/name", "other")])
        ));
        assert!(!selector_matches(&sel, &labels(&[])));
        let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
        };
        let dev = labels(&[("tier", "dev")]);
        let none = labels(&[]);
        assert!(selector_matches(&expr("In", Some(vec!["dev", "qa"])), &dev));
        assert!(!selector_matches(&expr("In", Some(vec!["qa"])), &dev));
        assert!(!selector_matches(&expr("In", Some(vec!["dev"])), &none));
        assert!(selector_matches(&expr("NotIn", Some(vec!["qa"])), &dev));
        assert!(selector_matches(&expr("NotIn", Some(vec!["qa"])), &none));
        assert!(selector_matches(&expr("Exists", None), &dev));
        assert!(!selector_matches(&expr("Exists", None), &none));
        assert!(selector_matches(&expr("DoesNotExist", None), &none));
        assert!(
            !selector_matches(&expr("Bogus", None), &dev),
            "invalid selectors match nothing"
        );
    }

    #[test]
    fn crd_is_cluster_scoped_with_status_and_columns() {
        let crd = WorkspacePolicy::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, GROUP);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Mode", "Age"]);
    }
}
