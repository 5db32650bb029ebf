//! Workspace isolation, as pure functions: no developer can become another. Every workspace pod
//! runs as the same `dev-workspace` ServiceAccount (admin in `lumie-dev`), so RBAC cannot tell
//! one developer from another; these rules do, in every namespace the webhook guards, whatever
//! a policy's mode or exemptions say:
//!
//! - only the control plane creates pods carrying the workspace identity labels
//!   ([`labels::WORKSPACE_IDENTITY`]) or the [`labels::CREATED_BY`] annotation, or named
//!   `coder-…` (the contract's pod names), and nobody else changes them on an UPDATE;
//! - a workspace pod mounts only its own home volume and agent Secret (names from
//!   [`WorkspaceNames`] for its owner/workspace labels); any other pod mounts none of them
//!   (volumes, projected sources, CSI secrets, `env` and `envFrom`);
//! - `exec`, `attach` and `portforward` into a workspace pod are allowed to the control plane,
//!   admins, and that workspace's own pod only ([`check_connect`]).
//!
//! Whether a CONNECT targets a workspace pod is read from the pod's name (`coder-…`), not from
//! the pod object: the name is all the review carries, and since only the control plane may
//! create pods named `coder-…`, the name is as good as the labels without a read of the pod
//! (no RBAC on pods for the webhook, no extra round trip, no stale cache to fail open on).

use std::collections::BTreeMap;
use std::sync::Arc;

use lumie_contract::labels;
use lumie_contract::naming::WorkspaceNames;
use lumie_contract::policy::CONTROL_PLANE_USER;

use crate::podview::{ContainerView, PodView};
use crate::validate::{Subject, Violation};

/// The prefix of every workspace object name (`coder-<owner>-<workspace>`, see
/// [`lumie_contract::naming`]).
pub const WORKSPACE_PREFIX: &str = "coder-";
/// Suffix of a home PersistentVolumeClaim name.
pub const HOME_SUFFIX: &str = "-home";
/// Suffix of an agent-token Secret name.
pub const AGENT_SUFFIX: &str = "-agent";
/// The `userInfo.extra` key of a bound ServiceAccount token naming the caller's pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The group admins are in by default.
pub const DEFAULT_ADMIN_GROUP: &str = "system:masters";

/// Who the control plane and the admins are: configuration, not policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities {
    /// Usernames of the control plane (the server's ServiceAccount).
    pub control_plane: Vec<String>,
    /// Groups whose members may exec into any workspace pod.
    pub admin_groups: Vec<String>,
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            control_plane: vec![CONTROL_PLANE_USER.to_string()],
            admin_groups: vec![DEFAULT_ADMIN_GROUP.to_string()],
        }
    }
}

impl Identities {
    /// Whether `username` is the control plane.
    pub fn is_control_plane(&self, username: &str) -> bool {
        self.control_plane.iter().any(|u| u == username)
    }

    /// Whether one of `groups` is an admin group.
    pub fn is_admin(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.admin_groups.contains(g))
    }

    fn control_plane_list(&self) -> String {
        quoted(&self.control_plane)
    }
}

fn quoted(list: &[String]) -> String {
    let v: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    v.join(", ")
}

/// The requester of a review.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// `userInfo.username`.
    pub username: &'a str,
    /// `userInfo.groups`.
    pub groups: &'a [String],
    /// `userInfo.extra["authentication.kubernetes.io/pod-name"]`, when it holds one name.
    pub pod_name: Option<&'a str>,
}

/// Which workspace a pod belongs to, by its identity labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodIdentity {
    /// No identity label: not a workspace pod.
    None,
    /// The labels name a workspace: its object names.
    Workspace(WorkspaceNames),
    /// Some identity label is set but they do not name a workspace.
    Invalid(String),
}

/// Reads the identity labels.
pub fn pod_identity(labels: Option<&BTreeMap<String, String>>) -> PodIdentity {
    let Some(l) = labels else {
        return PodIdentity::None;
    };
    if !labels::WORKSPACE_IDENTITY
        .iter()
        .any(|k| l.contains_key(*k))
    {
        return PodIdentity::None;
    }
    let missing: Vec<&str> = labels::WORKSPACE_IDENTITY
        .iter()
        .copied()
        .filter(|k| l.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return PodIdentity::Invalid(format!(
            "a workspace pod carries all of the labels {}; {} missing",
            quoted(&labels::WORKSPACE_IDENTITY.map(String::from)),
            quoted(&missing.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        ));
    }
    match WorkspaceNames::new(&l[labels::OWNER], &l[labels::WORKSPACE]) {
        Ok(names) => PodIdentity::Workspace(names),
        Err(e) => PodIdentity::Invalid(e.to_string()),
    }
}

fn is_home(name: &str) -> bool {
    name.starts_with(WORKSPACE_PREFIX) && name.ends_with(HOME_SUFFIX)
}

fn is_agent_secret(name: &str) -> bool {
    name.starts_with(WORKSPACE_PREFIX) && name.ends_with(AGENT_SUFFIX)
}

/// Whether `name` is a workspace pod's name under the contract's naming.
pub fn is_workspace_pod_name(name: &str) -> bool {
    name.starts_with(WORKSPACE_PREFIX)
}

struct Out {
    out: Vec<Violation>,
}

impl Out {
    fn push(&mut self, subject: Subject, field: String, value: Option<String>, rule: String) {
        self.out.push(Violation {
            subject,
            field,
            value,
            rule: format!("workspace isolation: {rule}"),
            policy: Arc::from(""),
        });
    }
}

/// The isolation rules for a pod CREATE (`old` is `None`) or UPDATE in a guarded namespace.
pub fn check_pod(
    ids: &Identities,
    caller: Caller<'_>,
    pod: &PodView<'_>,
    old: Option<&PodView<'_>>,
) -> Vec<Violation> {
    let mut f = Out { out: Vec::new() };
    let control_plane = ids.is_control_plane(caller.username);
    let meta = &pod.metadata;
    let identity = pod_identity(meta.labels.as_ref());
    let label = |m: &crate::podview::MetaView<'_>, k: &str| {
        m.labels.as_ref().and_then(|l| l.get(k)).cloned()
    };
    let created_by = |m: &crate::podview::MetaView<'_>| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(labels::CREATED_BY))
            .map(|v| v.to_string())
    };
    let only_cp = || {
        format!(
            "only the control plane ({}) creates workspace pods",
            ids.control_plane_list()
        )
    };
    match (old, control_plane) {
        (None, false) => {
            for key in labels::WORKSPACE_IDENTITY {
                if let Some(v) = label(meta, key) {
                    f.push(
                        Subject::Pod,
                        format!("metadata.labels[{key:?}]"),
                        Some(format!("{v:?}")),
                        only_cp(),
                    );
                }
            }
            if let Some(v) = created_by(meta) {
                f.push(
                    Subject::Pod,
                    format!("metadata.annotations[{:?}]", labels::CREATED_BY),
                    Some(format!("{v:?}")),
                    format!("{}; the webhook sets it", only_cp()),
                );
            }
            for (field, name) in [
                ("metadata.name", meta.name.as_deref()),
                ("metadata.generateName", meta.generate_name.as_deref()),
            ] {
                if let Some(n) = name.filter(|n| is_workspace_pod_name(n)) {
                    f.push(
                        Subject::Pod,
                        field.to_string(),
                        Some(format!("{n:?}")),
                        format!(
                            "pod names starting with {WORKSPACE_PREFIX:?} are workspace pods; {}",
                            only_cp()
                        ),
                    );
                }
            }
        }
        (None, true) => match &identity {
            PodIdentity::None => {}
            PodIdentity::Invalid(why) => {
                f.push(Subject::Pod, "metadata.labels".into(), None, why.clone());
            }
            PodIdentity::Workspace(names) => {
                if meta.name.as_deref() != Some(names.pod.as_str()) {
                    f.push(
                        Subject::Pod,
                        "metadata.name".into(),
                        Some(format!("{:?}", meta.name.as_deref().unwrap_or(""))),
                        format!(
                            "workspace {}/{}'s pod is named {:?}",
                            names.owner, names.workspace, names.pod
                        ),
                    );
                }
                if created_by(meta).as_deref() != Some(caller.username) {
                    f.push(
                        Subject::Pod,
                        format!(
                            "metadata.annotations[{:?}]={:?}",
                            labels::CREATED_BY,
                            caller.username
                        ),
                        None,
                        "the mutating webhook stamps it on workspace pods (is /mutate registered?)"
                            .into(),
                    );
                }
            }
        },
        (Some(old), false) => {
            let old_meta = &old.metadata;
            for key in labels::WORKSPACE_IDENTITY {
                let (was, now) = (label(old_meta, key), label(meta, key));
                if was != now {
                    f.push(
                        Subject::Pod,
                        format!("metadata.labels[{key:?}]"),
                        Some(format!("{:?}", now.unwrap_or_default())),
                        format!(
                            "only the control plane ({}) changes a pod's workspace labels (was {:?})",
                            ids.control_plane_list(),
                            was.unwrap_or_default()
                        ),
                    );
                }
            }
            let (was, now) = (created_by(old_meta), created_by(meta));
            if was != now {
                f.push(
                    Subject::Pod,
                    format!("metadata.annotations[{:?}]", labels::CREATED_BY),
                    Some(format!("{:?}", now.unwrap_or_default())),
                    format!(
                        "only the control plane ({}) changes it (was {:?})",
                        ids.control_plane_list(),
                        was.unwrap_or_default()
                    ),
                );
            }
        }
        (Some(_), true) => {}
    }
    // The volumes and Secrets a pod reads are fixed at CREATE (the spec is immutable but for
    // ephemeral containers and images); an UPDATE that leaves the spec alone is not judged
    // again, so a pod admitted before these rules can still be labelled or finalized.
    if old.is_none_or(|o| o.spec != pod.spec) {
        let own = match &identity {
            PodIdentity::Workspace(n) => Some(n),
            _ => None,
        };
        check_references(&mut f, pod, own);
    }
    f.out
}

/// The isolation rules for ephemeral containers sent on their own (the `EphemeralContainers`
/// object): their pod is not in the review, so they may read no workspace's agent Secret.
pub fn check_ephemeral_containers(containers: &[ContainerView<'_>]) -> Vec<Violation> {
    let mut f = Out { out: Vec::new() };
    for c in containers {
        check_env(
            &mut f,
            Subject::EphemeralContainer(c.name.to_string()),
            c,
            None,
        );
    }
    f.out
}

fn denied_reference(own: Option<&WorkspaceNames>, what: &str) -> String {
    match own {
        Some(n) => format!(
            "a workspace's {what} is read only by its own pod; this is workspace {}/{}'s pod",
            n.owner, n.workspace
        ),
        None => {
            format!("a workspace's {what} is read only by its own pod; this is no workspace pod")
        }
    }
}

fn check_references(f: &mut Out, pod: &PodView<'_>, own: Option<&WorkspaceNames>) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let home_ok = |name: &str| !is_home(name) || own.is_some_and(|n| n.home_pvc == name);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(claim) = &v.persistent_volume_claim
            && !home_ok(&claim.claim_name)
        {
            f.push(
                Subject::Pod,
                format!("spec.volumes[{i}].persistentVolumeClaim.claimName"),
                Some(format!("{:?}", claim.claim_name)),
                denied_reference(own, "home volume"),
            );
        }
        let mut secrets: Vec<(String, &str)> = Vec::new();
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            secrets.push((format!("spec.volumes[{i}].secret.secretName"), name));
        }
        for (j, src) in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .enumerate()
        {
            if let Some(name) = src.secret.as_ref().and_then(|s| s.name.as_deref()) {
                secrets.push((
                    format!("spec.volumes[{i}].projected.sources[{j}].secret.name"),
                    name,
                ));
            }
        }
        if let Some(name) = v
            .csi
            .as_ref()
            .and_then(|c| c.node_publish_secret_ref.as_ref())
            .and_then(|r| r.name.as_deref())
        {
            secrets.push((
                format!("spec.volumes[{i}].csi.nodePublishSecretRef.name"),
                name,
            ));
        }
        for (field, name) in secrets {
            if !agent_ok(own, name) {
                f.push(
                    Subject::Pod,
                    field,
                    Some(format!("{name:?}")),
                    denied_reference(own, "agent token Secret"),
                );
            }
        }
    }
    for c in spec.containers() {
        check_env(f, Subject::Container(c.name.to_string()), c, own);
    }
    for c in spec.init_containers.iter().flatten() {
        check_env(f, Subject::InitContainer(c.name.to_string()), c, own);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        check_env(f, Subject::EphemeralContainer(c.name.to_string()), c, own);
    }
}

fn agent_ok(own: Option<&WorkspaceNames>, name: &str) -> bool {
    !is_agent_secret(name) || own.is_some_and(|n| n.agent_secret == name)
}

fn check_env(f: &mut Out, subject: Subject, c: &ContainerView<'_>, own: Option<&WorkspaceNames>) {
    for (k, e) in c.env.iter().flatten().enumerate() {
        if let Some(name) = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .and_then(|r| r.name.as_deref())
            && !agent_ok(own, name)
        {
            f.push(
                subject.clone(),
                format!("env[{k}].valueFrom.secretKeyRef.name"),
                Some(format!("{name:?}")),
                denied_reference(own, "agent token Secret"),
            );
        }
    }
    for (k, e) in c.env_from.iter().flatten().enumerate() {
        if let Some(name) = e.secret_ref.as_ref().and_then(|r| r.name.as_deref())
            && !agent_ok(own, name)
        {
            f.push(
                subject.clone(),
                format!("envFrom[{k}].secretRef.name"),
                Some(format!("{name:?}")),
                denied_reference(own, "agent token Secret"),
            );
        }
    }
}

/// Whether `caller` may `subresource` (`exec`, `attach`, `portforward`) into pod `name` in
/// `namespace`; the denial message otherwise.
pub fn check_connect(
    ids: &Identities,
    caller: Caller<'_>,
    namespace: &str,
    name: &str,
    subresource: &str,
) -> Result<(), String> {
    if !is_workspace_pod_name(name)
        || ids.is_control_plane(caller.username)
        || ids.is_admin(caller.groups)
    {
        return Ok(());
    }
    // A bound ServiceAccount token of a pod in this namespace names its pod; only that pod
    // is the workspace itself.
    let own_pod = caller.pod_name == Some(name)
        && caller
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(ns, _)| ns == namespace);
    if own_pod {
        return Ok(());
    }
    let from = match caller.pod_name {
        Some(p) => format!(" from pod {p:?}"),
        None => String::new(),
    };
    Err(format!(
        "{subresource} into workspace pod {namespace}/{name} is allowed only to the control plane ({}), \
         admins (groups {}) and the workspace's own pod; {:?}{from} is none of them (workspace isolation)",
        ids.control_plane_list(),
        quoted(&ids.admin_groups),
        caller.username
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_labels_name_a_workspace_or_say_why_not() {
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(pod_identity(None), PodIdentity::None);
        assert_eq!(pod_identity(Some(&l(&[("app", "x")]))), PodIdentity::None);
        let full = l(&[
            (labels::OWNER, "alice"),
            (labels::WORKSPACE, "dev"),
            (labels::WORKSPACE_ID, "id-1"),
        ]);
        match pod_identity(Some(&full)) {
            PodIdentity::Workspace(n) => assert_eq!(n.home_pvc, "coder-alice-dev-home"),
            other => panic!("{other:?}"),
        }
        match pod_identity(Some(&l(&[(labels::WORKSPACE_ID, "id-1")]))) {
            PodIdentity::Invalid(why) => assert!(why.contains("missing"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut bad = full.clone();
        bad.insert(labels::OWNER.into(), "Alice".into());
        assert!(matches!(pod_identity(Some(&bad)), PodIdentity::Invalid(_)));
    }

    #[test]
    fn connect_table() {
        let ids = Identities::default();
        let masters = vec!["system:masters".to_string()];
        let sa = vec!["system:serviceaccounts".to_string()];
        let dev = "system:serviceaccount:lumie-dev:dev-workspace";
        let who = |username, groups: &'static [String], pod_name| Caller {
            username,
            groups,
            pod_name,
        };
        let masters: &'static [String] = Vec::leak(masters);
        let sa: &'static [String] = Vec::leak(sa);
        let cases = [
            (
                "control plane",
                who(CONTROL_PLANE_USER, sa, None),
                "coder-bob-dev",
                true,
            ),
            (
                "admin",
                who("lumie-admin", masters, None),
                "coder-bob-dev",
                true,
            ),
            (
                "own pod",
                who(dev, sa, Some("coder-bob-dev")),
                "coder-bob-dev",
                true,
            ),
            (
                "another pod",
                who(dev, sa, Some("coder-alice-dev")),
                "coder-bob-dev",
                false,
            ),
            ("no pod claim", who(dev, sa, None), "coder-bob-dev", false),
            (
                "a pod of the same name in another namespace",
                who("system:serviceaccount:other:x", sa, Some("coder-bob-dev")),
                "coder-bob-dev",
                false,
            ),
            (
                "a user that claims a pod name",
                who("mallory", sa, Some("coder-bob-dev")),
                "coder-bob-dev",
                false,
            ),
            ("not a workspace pod", who(dev, sa, None), "scratch", true),
        ];
        for (name, caller, target, ok) in cases {
            let got = check_connect(&ids, caller, "lumie-dev", target, "exec");
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if let Err(m) = got {
                assert!(
                    m.starts_with(
                        "exec into workspace pod lumie-dev/coder-bob-dev is allowed only"
                    ),
                    "{m}"
                );
            }
        }
    }
}
