//! The `WorkspacePolicy` custom resource: how platform admins set the contract every workspace
//! pod must meet, and [`WorkspacePolicySpec::contract_default`], the contract itself.
//!
//! Validation of a policy object is pure and lives here so the webhook (which rejects a broken
//! policy at `kubectl apply`) and the server's policy API give the same message. It includes
//! the floor: a policy covering `lumie-dev` stays `Enforce` and never exempts the workspace
//! pods' own identities, unless it carries a [`BreakGlass`] reason and expiry (see
//! [`WorkspacePolicySpec::floor_problems`]).
//!
//! Privileged image patterns match parsed image references ([`ImageRef`]), part by part, so a
//! pattern for the `docker` repository never matches a registry host that happens to be
//! called `docker`.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobMatcher};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, Time,
};
use k8s_openapi::jiff::Timestamp;
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
/// The control plane's username in the default install (the chart's server ServiceAccount
/// `coder` in namespace `coder`): the default `workspaceCreators`, and the webhook's default
/// control-plane identity.
pub const CONTROL_PLANE_USER: &str = "system:serviceaccount:coder:coder";
/// The ServiceAccount every workspace pod runs as.
pub const WORKSPACE_SERVICE_ACCOUNT: &str = "dev-workspace";

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

/// A container allowed to be privileged: matched by name AND image pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrivilegedContainer {
    /// Container name (exact).
    pub name: String,
    /// Image patterns, matched part by part against the parsed image reference
    /// (`[registry/]repository[:tag][@digest]`): `*` matches any run of characters, `?` one
    /// character. A pattern without a registry matches only images without one, a pattern
    /// without a tag only untagged images; a pattern without a digest accepts any digest.
    pub images: Vec<String>,
}

impl PrivilegedContainer {
    /// Compiles the image patterns. Every pattern in a validated policy compiles.
    pub fn image_matcher(&self) -> Result<ImageMatcher, globset::Error> {
        let patterns = self
            .images
            .iter()
            .map(|p| ImagePattern::compile(p))
            .collect::<Result<_, _>>()?;
        Ok(ImageMatcher { patterns })
    }
}

/// An image reference split the way a container runtime reads it:
/// `[registry/]repository[:tag][@digest]`. The first path component is the registry when it
/// contains `.` or `:` or is `localhost` (Docker's rule), so `docker:5000/attacker/dind` is
/// repository `attacker/dind` on registry `docker:5000`, not repository `docker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// `host[:port]`, when the reference names a registry.
    pub registry: Option<&'a str>,
    /// The repository path (`docker`, `library/docker`, `lumie-infra/dev`).
    pub repository: &'a str,
    /// The tag, when there is one.
    pub tag: Option<&'a str>,
    /// The digest (`sha256:…`), when there is one.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Splits `image` into its parts. Never fails: an odd reference just has odd parts (the
    /// runtime refuses what it cannot pull).
    pub fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first), path)
            }
            _ => (None, rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        ImageRef {
            registry,
            repository,
            tag,
            digest,
        }
    }
}

/// One compiled image pattern: a glob per part of the reference.
#[derive(Clone, Debug)]
struct ImagePattern {
    registry: Option<GlobMatcher>,
    repository: GlobMatcher,
    tag: Option<GlobMatcher>,
    digest: Option<GlobMatcher>,
}

impl ImagePattern {
    fn compile(pattern: &str) -> Result<Self, globset::Error> {
        let parts = ImageRef::parse(pattern);
        let opt = |p: Option<&str>| p.map(glob).transpose();
        Ok(ImagePattern {
            registry: opt(parts.registry)?,
            repository: glob(parts.repository)?,
            tag: opt(parts.tag)?,
            digest: opt(parts.digest)?,
        })
    }

    fn matches(&self, image: &ImageRef<'_>) -> bool {
        let part = |g: &Option<GlobMatcher>, v: Option<&str>| match (g, v) {
            (None, None) => true,
            (Some(g), Some(v)) => g.is_match(v),
            _ => false,
        };
        part(&self.registry, image.registry)
            && self.repository.is_match(image.repository)
            && part(&self.tag, image.tag)
            && self
                .digest
                .as_ref()
                .is_none_or(|g| image.digest.is_some_and(|d| g.is_match(d)))
    }
}

fn glob(part: &str) -> Result<GlobMatcher, globset::Error> {
    // A repository path contains '/', and `*` in it may cross it.
    GlobBuilder::new(part)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// The compiled image patterns of one privileged container.
#[derive(Clone, Debug)]
pub struct ImageMatcher {
    patterns: Vec<ImagePattern>,
}

impl ImageMatcher {
    /// Whether `image` matches one of the patterns.
    pub fn is_match(&self, image: &str) -> bool {
        let image = ImageRef::parse(image);
        self.patterns.iter().any(|p| p.matches(&image))
    }
}

/// A time-limited lift of the floor: why, and until when. After `expires` the webhook
/// enforces the policy as if it met the floor (`Enforce`, the workspace identities not exempt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlass {
    /// Why the floor is lifted (the incident, who asked).
    pub reason: String,
    /// When the lift ends (RFC 3339).
    pub expires: Time,
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
    /// Lifts the floor (in lumie-dev: Enforce, no exemption of the workspace pods' own
    /// identities, never dropping lumie-dev) until it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
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
            workspace_creators: vec![CONTROL_PLANE_USER.to_string()],
            service_account_name: WORKSPACE_SERVICE_ACCOUNT.to_string(),
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
            break_glass: None,
        }
    }

    /// Whether the policy guards the workspace namespace, where the floor holds.
    pub fn covers_workspace_namespace(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n == crate::workspace::NAMESPACE)
    }

    /// The identities a workspace pod's own requests carry (its ServiceAccount and that
    /// account's groups): exempting any of them would exempt the developers themselves.
    pub fn workspace_identities(&self) -> Vec<String> {
        let ns = crate::workspace::NAMESPACE;
        let mut ids = vec![
            "system:authenticated".to_string(),
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            format!("system:serviceaccount:{ns}:{WORKSPACE_SERVICE_ACCOUNT}"),
        ];
        let own = format!("system:serviceaccount:{ns}:{}", self.service_account_name);
        if !ids.contains(&own) {
            ids.push(own);
        }
        ids
    }

    /// Why the policy falls below the floor: for a policy covering `lumie-dev`, a mode other
    /// than `Enforce`, or an exemption of the workspace identities. Empty when it meets it;
    /// a [`BreakGlass`] does not change the answer (see [`Self::validate`]).
    pub fn floor_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.covers_workspace_namespace() {
            return problems;
        }
        let ns = crate::workspace::NAMESPACE;
        if self.mode != PolicyMode::Enforce {
            problems.push(format!(
                "spec.mode: {:?} leaves Enforce in {ns:?}, below the floor (workspace pods must be held to the policy)",
                self.mode.as_str()
            ));
        }
        let ids = self.workspace_identities();
        for (field, list) in [
            ("exemptUsers", &self.exempt_users),
            ("exemptGroups", &self.exempt_groups),
        ] {
            for (i, v) in list.iter().enumerate() {
                if ids.contains(v) {
                    problems.push(format!(
                        "spec.{field}[{i}]: {v:?} would exempt the workspace pods themselves (ServiceAccount {ns}/{} and its groups), below the floor",
                        self.service_account_name
                    ));
                }
            }
        }
        problems
    }

    /// Whether a break-glass lift is in force at `now`.
    pub fn break_glass_active(&self, now: Timestamp) -> bool {
        self.break_glass
            .as_ref()
            .is_some_and(|b| !b.reason.trim().is_empty() && b.expires.0 > now)
    }

    /// The policy with the floor put back: `Enforce` and no exemption of the workspace
    /// identities. What the webhook enforces once a break-glass lift expires.
    pub fn with_floor(&self) -> Self {
        let mut spec = self.clone();
        if spec.covers_workspace_namespace() {
            let ids = self.workspace_identities();
            spec.mode = PolicyMode::Enforce;
            spec.exempt_users.retain(|u| !ids.contains(u));
            spec.exempt_groups.retain(|g| !ids.contains(g));
        }
        spec
    }

    /// [`Self::validate`] for a change from `previous` (an UPDATE): also refuses a policy that
    /// stops covering `lumie-dev`, unless a break-glass lift is in force.
    pub fn validate_change(
        &self,
        previous: Option<&WorkspacePolicySpec>,
        now: Timestamp,
    ) -> Result<(), Vec<String>> {
        let mut problems = self.validate(now).err().unwrap_or_default();
        if previous.is_some_and(Self::covers_workspace_namespace)
            && !self.covers_workspace_namespace()
            && !self.break_glass_active(now)
        {
            problems.push(format!(
                "spec.namespaces: stops covering {:?}, which the previous version guarded; {}",
                crate::workspace::NAMESPACE,
                self.break_glass_hint(now)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn break_glass_hint(&self, now: Timestamp) -> String {
        match &self.break_glass {
            Some(b) if b.expires.0 <= now => format!(
                "spec.breakGlass expired at {} (set a new expiry to lift the floor again)",
                b.expires.0
            ),
            _ => "to lift the floor for a while, set spec.breakGlass {reason, expires}".to_string(),
        }
    }

    /// Checks the policy can be enforced as written, at `now` (a break-glass lift counts only
    /// until it expires). Returns every problem, each naming its field.
    pub fn validate(&self, now: Timestamp) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(b) = &self.break_glass
            && b.reason.trim().is_empty()
        {
            problems.push("spec.breakGlass.reason: must say why the floor is lifted".to_string());
        }
        if !self.break_glass_active(now) {
            let hint = self.break_glass_hint(now);
            problems.extend(
                self.floor_problems()
                    .into_iter()
                    .map(|p| format!("{p}; {hint}")),
            );
        }
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
                } else if matches!(ImageRef::parse(pattern).repository, "*" | "**") {
                    problems.push(format!(
                        "spec.privilegedContainers[{i}].images[{j}]: {pattern:?} would allow any image to run privileged"
                    ));
                } else if let Err(e) = ImagePattern::compile(pattern) {
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

    fn now() -> Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    fn break_glass(expires: &str) -> Option<BreakGlass> {
        Some(BreakGlass {
            reason: "INC-42: dind images moved registry".into(),
            expires: Time(expires.parse().unwrap()),
        })
    }

    #[test]
    fn default_policy_is_valid_and_is_what_a_missing_field_means() {
        let d = WorkspacePolicySpec::contract_default();
        assert_eq!(d.validate(now()), Ok(()));
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
            (
                "Warn in lumie-dev",
                |p| p.mode = PolicyMode::Warn,
                Some(r#"spec.mode: "Warn" leaves Enforce in "lumie-dev", below the floor"#),
            ),
            (
                "Audit in lumie-dev",
                |p| p.mode = PolicyMode::Audit,
                Some("set spec.breakGlass {reason, expires}"),
            ),
            (
                "Warn in another namespace only",
                |p| {
                    p.mode = PolicyMode::Warn;
                    p.namespaces = vec!["lumie-live".into()];
                },
                None,
            ),
            (
                "Warn with break-glass",
                |p| {
                    p.mode = PolicyMode::Warn;
                    p.break_glass = break_glass("2026-12-01T12:00:00Z");
                },
                None,
            ),
            (
                "Warn with an expired break-glass",
                |p| {
                    p.mode = PolicyMode::Warn;
                    p.break_glass = break_glass("2026-12-01T09:00:00Z");
                },
                Some("spec.breakGlass expired at 2026-12-01T09:00:00Z"),
            ),
            (
                "break-glass without a reason",
                |p| {
                    p.mode = PolicyMode::Warn;
                    p.break_glass = break_glass("2026-12-01T12:00:00Z");
                    p.break_glass.as_mut().unwrap().reason = " ".into();
                },
                Some("spec.breakGlass.reason: must say why"),
            ),
            (
                "exempt the workspace ServiceAccount",
                |p| p.exempt_users = vec!["system:serviceaccount:lumie-dev:dev-workspace".into()],
                Some(
                    r#"spec.exemptUsers[0]: "system:serviceaccount:lumie-dev:dev-workspace" would exempt the workspace pods themselves"#,
                ),
            ),
            (
                "exempt system:serviceaccounts",
                |p| p.exempt_groups = vec!["platform".into(), "system:serviceaccounts".into()],
                Some("spec.exemptGroups[1]"),
            ),
            (
                "exempt system:serviceaccounts:lumie-dev",
                |p| p.exempt_groups = vec!["system:serviceaccounts:lumie-dev".into()],
                Some("spec.exemptGroups[0]"),
            ),
            (
                "exempt system:authenticated",
                |p| p.exempt_groups = vec!["system:authenticated".into()],
                Some("below the floor"),
            ),
            (
                "exempt a renamed workspace ServiceAccount",
                |p| {
                    p.service_account_name = "ws".into();
                    p.exempt_users = vec!["system:serviceaccount:lumie-dev:ws".into()];
                },
                Some("spec.exemptUsers[0]"),
            ),
            (
                "exempt a platform group",
                |p| p.exempt_groups = vec!["platform-admins".into()],
                None,
            ),
            (
                "exempt the workspace group with break-glass",
                |p| {
                    p.exempt_groups = vec!["system:serviceaccounts:lumie-dev".into()];
                    p.break_glass = break_glass("2026-12-02T00:00:00Z");
                },
                None,
            ),
        ];
        for (name, edit, want) in cases {
            let mut p = WorkspacePolicySpec::contract_default();
            edit(&mut p);
            match (p.validate(now()), want) {
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
    fn stopping_to_cover_lumie_dev_needs_break_glass() {
        let before = WorkspacePolicySpec::contract_default();
        let mut after = before.clone();
        after.namespaces = vec!["team-b".into()];
        assert_eq!(after.validate(now()), Ok(()), "alone it is a team-b policy");
        let problems = after.validate_change(Some(&before), now()).unwrap_err();
        assert!(
            problems[0].starts_with(
                r#"spec.namespaces: stops covering "lumie-dev", which the previous version guarded"#
            ),
            "{problems:?}"
        );
        assert_eq!(after.validate_change(None, now()), Ok(()), "a new policy");
        assert_eq!(after.validate_change(Some(&after), now()), Ok(()));
        after.break_glass = break_glass("2026-12-01T11:00:00Z");
        assert_eq!(after.validate_change(Some(&before), now()), Ok(()));
        let later: Timestamp = "2026-12-01T11:00:01Z".parse().unwrap();
        assert!(after.validate_change(Some(&before), later).is_err());
    }

    #[test]
    fn the_floor_put_back() {
        let mut p = WorkspacePolicySpec::contract_default();
        p.mode = PolicyMode::Audit;
        p.exempt_groups = vec!["system:serviceaccounts".into(), "platform".into()];
        p.exempt_users = vec!["system:serviceaccount:lumie-dev:dev-workspace".into()];
        p.break_glass = break_glass("2026-12-01T11:00:00Z");
        assert!(p.break_glass_active(now()));
        assert!(!p.break_glass_active("2026-12-01T11:00:00Z".parse().unwrap()));
        let floored = p.with_floor();
        assert_eq!(floored.mode, PolicyMode::Enforce);
        assert_eq!(floored.exempt_groups, ["platform"]);
        assert!(floored.exempt_users.is_empty());
        assert!(floored.floor_problems().is_empty());
        let mut other = p.clone();
        other.namespaces = vec!["team-b".into()];
        assert_eq!(other.with_floor(), other, "the floor is about lumie-dev");
    }

    #[test]
    fn image_references_are_parsed_like_a_runtime_does() {
        let r = |s| ImageRef::parse(s);
        let cases = [
            ("docker:27-dind", (None, "docker", Some("27-dind"), None)),
            ("docker", (None, "docker", None, None)),
            (
                "docker:5000/attacker/dind",
                (Some("docker:5000"), "attacker/dind", None, None),
            ),
            (
                "docker.io/library/docker:dind@sha256:ab",
                (
                    Some("docker.io"),
                    "library/docker",
                    Some("dind"),
                    Some("sha256:ab"),
                ),
            ),
            (
                "localhost/dind:1",
                (Some("localhost"), "dind", Some("1"), None),
            ),
            (
                "lumie-infra/dind:1",
                (None, "lumie-infra/dind", Some("1"), None),
            ),
            (
                "reg:5000/docker@sha256:ab",
                (Some("reg:5000"), "docker", None, Some("sha256:ab")),
            ),
        ];
        for (image, (registry, repository, tag, digest)) in cases {
            assert_eq!(
                r(image),
                ImageRef {
                    registry,
                    repository,
                    tag,
                    digest
                },
                "{image}"
            );
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
            "docker:27-dind@sha256:0123abcd",
        ] {
            assert!(m.is_match(ok), "{ok}");
        }
        for bad in [
            "docker:27",
            "evil.io/docker:dind",
            "ubuntu:dind",
            "docker.io/evil/docker:dind",
            "dind",
            "docker:5000/attacker/dind",
            "docker:5000/attacker/dind:latest",
            "docker:5000/docker:dind",
            "docker.io:443/library/docker:dind",
            "docker@sha256:0123abcd",
            "docker/dind:1",
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
