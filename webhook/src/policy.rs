//! The policies in force: `WorkspacePolicy` specs compiled once per policy generation (image
//! globs, rule texts) so the admission hot path only reads them.
//!
//! Owns the rules for which policy objects count: a policy that fails
//! [`WorkspacePolicySpec::validate`] is ignored, but never weakens the guard (the last valid
//! version of that object stays in force), and with no valid object at all the built-in
//! contract default applies under the name [`BUILTIN_POLICY_NAME`]. The floor: `lumie-dev`
//! is always guarded (the built-in default covers it when no valid policy does), and a
//! break-glass policy is enforced with the floor put back once its lift expires
//! ([`CompiledPolicy::at`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use lumie_contract::policy::{ImageMatcher, PolicyMode, WorkspacePolicySpec, selector_matches};
use lumie_contract::workspace::NAMESPACE;

/// The name violations carry when no `WorkspacePolicy` object exists.
pub const BUILTIN_POLICY_NAME: &str = "default (built-in)";

/// One privileged-container exception with its image patterns compiled.
#[derive(Debug)]
pub struct PrivilegedException {
    /// Container name (exact).
    pub name: String,
    /// The image patterns as written, for messages.
    pub images: Vec<String>,
    matcher: ImageMatcher,
}

impl PrivilegedException {
    /// Whether `image` matches one of the allowed patterns.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.matcher.is_match(image)
    }
}

/// A validated policy ready for the hot path.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// The object name (or [`BUILTIN_POLICY_NAME`]).
    pub name: Arc<str>,
    /// The spec as written.
    pub spec: WorkspacePolicySpec,
    /// Compiled privileged-container exceptions.
    pub privileged: Vec<PrivilegedException>,
    /// Rule text for a privileged container that is not excepted, e.g.
    /// `only "dind" in workspace pods may be privileged`.
    pub privileged_rule: String,
    /// For a policy below the floor under a break-glass lift: when the lift ends, and the
    /// policy with the floor put back, enforced from then on.
    expiry: Option<(Timestamp, Arc<CompiledPolicy>)>,
}

impl CompiledPolicy {
    /// Compiles a spec; fails with every problem [`WorkspacePolicySpec::validate`] finds now.
    pub fn compile(name: &str, spec: WorkspacePolicySpec) -> Result<Self, Vec<String>> {
        Self::compile_at(name, spec, Timestamp::now())
    }

    /// [`Self::compile`] at `now`.
    pub fn compile_at(
        name: &str,
        spec: WorkspacePolicySpec,
        now: Timestamp,
    ) -> Result<Self, Vec<String>> {
        spec.validate(now)?;
        let expiry = match &spec.break_glass {
            Some(b) if !spec.floor_problems().is_empty() => {
                let floored = Self::compile_spec(name, spec.with_floor(), None)?;
                Some((b.expires.0, Arc::new(floored)))
            }
            _ => None,
        };
        Self::compile_spec(name, spec, expiry)
    }

    fn compile_spec(
        name: &str,
        spec: WorkspacePolicySpec,
        expiry: Option<(Timestamp, Arc<CompiledPolicy>)>,
    ) -> Result<Self, Vec<String>> {
        let mut privileged = Vec::with_capacity(spec.privileged_containers.len());
        for (i, c) in spec.privileged_containers.iter().enumerate() {
            let matcher = c.image_matcher().map_err(|e| {
                vec![format!(
                    "spec.privilegedContainers[{i}].images: {}",
                    e.kind()
                )]
            })?;
            privileged.push(PrivilegedException {
                name: c.name.clone(),
                images: c.images.clone(),
                matcher,
            });
        }
        let privileged_rule = match privileged.as_slice() {
            [] => "no container may be privileged".to_string(),
            list => {
                let names: Vec<String> = list.iter().map(|p| format!("{:?}", p.name)).collect();
                format!(
                    "only {} in workspace pods may be privileged",
                    names.join(" or ")
                )
            }
        };
        Ok(CompiledPolicy {
            name: Arc::from(name),
            spec,
            privileged,
            privileged_rule,
            expiry,
        })
    }

    /// The policy as enforced at `now`: itself, or once its break-glass lift has expired,
    /// the version with the floor put back.
    pub fn at(&self, now: Timestamp) -> &CompiledPolicy {
        match &self.expiry {
            Some((expires, floored)) if now >= *expires => floored,
            _ => self,
        }
    }

    /// Whether [`Self::at`] depends on the time.
    pub fn expires(&self) -> bool {
        self.expiry.is_some()
    }

    /// The built-in contract default.
    pub fn builtin() -> Self {
        Self::compile(BUILTIN_POLICY_NAME, WorkspacePolicySpec::contract_default())
            .expect("the contract default is valid (tested in the contract crate)")
    }

    /// Whether the policy guards `namespace`.
    pub fn covers(&self, namespace: &str) -> bool {
        self.spec.namespaces.iter().any(|n| n == namespace)
    }

    /// Whether a pod with these labels is a workspace pod under this policy.
    pub fn is_workspace(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        selector_matches(&self.spec.workspace_selector, labels.unwrap_or(&EMPTY))
    }

    /// What makes a pod a workspace pod under this policy, in words: the labels
    /// `workspaceSelector` wants, the service account the pod runs as, who must create it.
    /// For `check` to say why a privileged container was not excepted.
    pub fn workspace_pod_description(&self) -> String {
        let sel = &self.spec.workspace_selector;
        let mut wants: Vec<String> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.as_deref().unwrap_or(&[]).join(", ");
            wants.push(match e.operator.as_str() {
                "Exists" | "DoesNotExist" => format!("{} {}", e.key, e.operator),
                op => format!("{} {op} ({values})", e.key),
            });
        }
        format!(
            "a workspace pod under WorkspacePolicy {:?} has the labels {} (workspaceSelector), \
             runs as service account {:?} (serviceAccountName; the mutation sets it) and is \
             created by one of workspaceCreators: {}",
            &*self.name,
            wants.join(", "),
            self.spec.service_account_name,
            self.spec.workspace_creators.join(", ")
        )
    }

    /// Whether `user` may create workspace pods (and so use the privileged exception).
    pub fn is_creator(&self, user: &str) -> bool {
        self.spec.workspace_creators.iter().any(|c| c == user)
    }

    /// Why a request is exempt (break-glass), if it is.
    pub fn exemption(&self, user: &str, groups: &[String]) -> Option<String> {
        if self.spec.exempt_users.iter().any(|u| u == user) {
            return Some(format!(
                "user {user:?} is exempt from WorkspacePolicy {:?} (exemptUsers)",
                &*self.name
            ));
        }
        groups
            .iter()
            .find(|g| self.spec.exempt_groups.contains(g))
            .map(|g| {
                format!(
                    "user {user:?} is exempt from WorkspacePolicy {:?} (exemptGroups {g:?})",
                    &*self.name
                )
            })
    }

    /// The policy's mode.
    pub fn mode(&self) -> PolicyMode {
        self.spec.mode
    }
}

/// A policy object that is not in force, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredPolicy {
    /// Object name.
    pub name: String,
    /// What [`WorkspacePolicySpec::validate`] found.
    pub problems: Vec<String>,
    /// Whether an earlier valid version of the object stays in force instead.
    pub kept_previous: bool,
}

/// Every policy in force at one generation. Cheap to share (`Arc`), never mutated.
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
    /// The built-in default guarding `lumie-dev` when no valid policy covers it.
    floor: Option<Arc<CompiledPolicy>>,
    /// Whether some policy's enforcement depends on the time (a break-glass lift).
    timed: bool,
    generation: u64,
    builtin: bool,
    ignored: Vec<IgnoredPolicy>,
}

impl PolicySet {
    /// Only the built-in default.
    pub fn builtin() -> Self {
        PolicySet {
            policies: vec![Arc::new(CompiledPolicy::builtin())],
            floor: None,
            timed: false,
            generation: 0,
            builtin: true,
            ignored: Vec::new(),
        }
    }

    /// One policy from a file or a test, as `name`. Fails when the spec is invalid.
    pub fn single(name: &str, spec: WorkspacePolicySpec) -> Result<Self, Vec<String>> {
        let policies = vec![Arc::new(CompiledPolicy::compile(name, spec)?)];
        Ok(Self::with_floor(policies, 0, Vec::new()))
    }

    /// The set of `policies` (not empty), with the floor for `lumie-dev` when none covers it.
    fn with_floor(
        policies: Vec<Arc<CompiledPolicy>>,
        generation: u64,
        ignored: Vec<IgnoredPolicy>,
    ) -> Self {
        let covered = policies.iter().any(|p| p.covers(NAMESPACE));
        PolicySet {
            timed: policies.iter().any(|p| p.expires()),
            policies,
            floor: (!covered).then(|| Arc::new(CompiledPolicy::builtin())),
            generation,
            builtin: false,
            ignored,
        }
    }

    /// Builds the next generation from the objects now in the cluster (name → spec).
    ///
    /// An invalid object is ignored; if `previous` held a valid version of it, that version stays
    /// in force so a broken edit never weakens the guard. With no valid object the built-in
    /// default applies.
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = (&'a str, &'a WorkspacePolicySpec)>,
        previous: Option<&PolicySet>,
    ) -> Self {
        let mut policies = Vec::new();
        let mut ignored = Vec::new();
        for (name, spec) in objects {
            match CompiledPolicy::compile(name, spec.clone()) {
                Ok(p) => policies.push(Arc::new(p)),
                Err(problems) => {
                    let kept = previous
                        .filter(|prev| !prev.builtin)
                        .and_then(|prev| prev.policies.iter().find(|p| &*p.name == name));
                    if let Some(kept) = kept {
                        policies.push(Arc::clone(kept));
                    }
                    ignored.push(IgnoredPolicy {
                        name: name.to_string(),
                        problems,
                        kept_previous: kept.is_some(),
                    });
                }
            }
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        policies.dedup_by(|a, b| a.name == b.name);
        let generation = previous.map_or(0, |p| p.generation + 1);
        if policies.is_empty() {
            return PolicySet {
                generation,
                ignored,
                ..PolicySet::builtin()
            };
        }
        Self::with_floor(policies, generation, ignored)
    }

    /// The policies guarding `namespace`, in name order, as written (see [`Self::covering_at`]).
    /// `lumie-dev` is always guarded: by the built-in default when no valid policy covers it.
    pub fn covering<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a CompiledPolicy> {
        self.policies
            .iter()
            .chain(self.floor.iter().filter(move |_| namespace == NAMESPACE))
            .map(|p| &**p)
            .filter(move |p| p.covers(namespace))
    }

    /// The policies guarding `namespace` as enforced at `now` (an expired break-glass lift is
    /// enforced with the floor put back).
    pub fn covering_at<'a>(
        &'a self,
        namespace: &'a str,
        now: Timestamp,
    ) -> impl Iterator<Item = &'a CompiledPolicy> {
        self.covering(namespace).map(move |p| p.at(now))
    }

    /// Whether the webhook guards `namespace` (some policy, or the floor, covers it).
    pub fn guards(&self, namespace: &str) -> bool {
        self.covering(namespace).next().is_some()
    }

    /// Whether enforcement depends on the time (some policy has a break-glass lift that ends).
    pub fn is_timed(&self) -> bool {
        self.timed
    }

    /// Every policy in force.
    pub fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies.iter().map(|p| &**p)
    }

    /// Increases by one each time the policies are rebuilt.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether only the built-in default is in force.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// Objects not in force and why.
    pub fn ignored(&self) -> &[IgnoredPolicy] {
        &self.ignored
    }

    /// Whether `other` puts exactly the same policies in force (generation aside), so a watch
    /// event that changed nothing that matters (a status write) is not a new generation.
    pub fn same_policies(&self, other: &PolicySet) -> bool {
        self.builtin == other.builtin
            && self.ignored == other.ignored
            && self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|(a, b)| a.name == b.name && a.spec == b.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(edit: impl FnOnce(&mut WorkspacePolicySpec)) -> WorkspacePolicySpec {
        let mut s = WorkspacePolicySpec::contract_default();
        edit(&mut s);
        s
    }

    /// Below the floor in `mode`, under a break-glass lift until `expires`.
    fn lifted(mode: PolicyMode, expires: Timestamp) -> WorkspacePolicySpec {
        spec(|s| {
            s.mode = mode;
            s.break_glass = Some(lumie_contract::policy::BreakGlass {
                reason: "INC-7".into(),
                expires: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(expires),
            });
        })
    }

    fn in_an_hour() -> Timestamp {
        Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(3600)
    }

    #[test]
    fn lumie_dev_is_guarded_by_the_builtin_when_no_valid_policy_covers_it() {
        let other = spec(|s| s.namespaces = vec!["team-b".into()]);
        let set = PolicySet::from_objects([("team-b", &other)], None);
        assert!(!set.is_builtin());
        let names: Vec<_> = set
            .covering("lumie-dev")
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(names, [BUILTIN_POLICY_NAME]);
        assert!(set.guards("lumie-dev") && set.guards("team-b") && !set.guards("kube-system"));
        let single = PolicySet::single("team-b", other).unwrap();
        assert_eq!(single.covering("lumie-dev").count(), 1);
        let own = PolicySet::single("own", spec(|_| {})).unwrap();
        let names: Vec<_> = own
            .covering("lumie-dev")
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(
            names,
            ["own"],
            "no floor next to a policy that covers lumie-dev"
        );
    }

    #[test]
    fn an_expired_break_glass_is_enforced_with_the_floor() {
        let expires = in_an_hour();
        let mut audit = lifted(PolicyMode::Audit, expires);
        audit.exempt_groups = vec!["system:serviceaccounts".into(), "platform".into()];
        let set = PolicySet::from_objects([("lifted", &audit)], None);
        assert!(set.is_timed());
        let before = Timestamp::now();
        let p: Vec<_> = set.covering_at("lumie-dev", before).collect();
        assert_eq!(p[0].mode(), PolicyMode::Audit);
        let after = expires + k8s_openapi::jiff::SignedDuration::from_secs(1);
        let p: Vec<_> = set.covering_at("lumie-dev", after).collect();
        assert_eq!(p[0].mode(), PolicyMode::Enforce);
        assert_eq!(p[0].spec.exempt_groups, ["platform"]);
        assert_eq!(&*p[0].name, "lifted");
        assert!(!PolicySet::builtin().is_timed());
    }

    #[test]
    fn no_objects_means_the_builtin_default() {
        let set = PolicySet::from_objects([], None);
        assert!(set.is_builtin());
        let names: Vec<_> = set
            .covering("lumie-dev")
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(names, [BUILTIN_POLICY_NAME]);
        assert_eq!(set.covering("kube-system").count(), 0);
    }

    #[test]
    fn invalid_object_alone_is_ignored_and_the_default_stays() {
        let bad = spec(|s| s.namespaces.clear());
        let set = PolicySet::from_objects([("broken", &bad)], None);
        assert!(set.is_builtin());
        assert_eq!(set.ignored()[0].name, "broken");
        assert!(!set.ignored()[0].kept_previous);
    }

    #[test]
    fn invalid_edit_keeps_the_previous_valid_version() {
        let good = spec(|s| s.mode = PolicyMode::Enforce);
        let first = PolicySet::from_objects([("strict", &good)], None);
        let bad = spec(|s| s.privileged_containers[0].images = vec!["*".into()]);
        let second = PolicySet::from_objects([("strict", &bad)], Some(&first));
        assert_eq!(second.generation(), first.generation() + 1);
        let p: Vec<_> = second.covering("lumie-dev").collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].spec, good, "the valid version stays in force");
        assert!(second.ignored()[0].kept_previous);
    }

    #[test]
    fn an_unchanged_rebuild_is_recognised() {
        let a = lifted(PolicyMode::Warn, in_an_hour());
        let first = PolicySet::from_objects([("a", &a)], None);
        let again = PolicySet::from_objects([("a", &a)], Some(&first));
        assert!(again.same_policies(&first));
        let b = lifted(PolicyMode::Audit, in_an_hour());
        let changed = PolicySet::from_objects([("a", &b)], Some(&first));
        assert!(!changed.same_policies(&first));
        assert!(!PolicySet::builtin().same_policies(&first));
    }

    #[test]
    fn several_objects_are_all_in_force_in_name_order() {
        let a = lifted(PolicyMode::Warn, in_an_hour());
        let b = spec(|s| s.namespaces = vec!["lumie-dev".into(), "other".into()]);
        let set = PolicySet::from_objects([("zeta", &a), ("alpha", &b)], None);
        let names: Vec<_> = set
            .covering("lumie-dev")
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(set.covering("other").count(), 1);
    }

    #[test]
    fn exemptions_name_the_reason() {
        let p = CompiledPolicy::compile(
            "p",
            spec(|s| {
                s.exempt_users = vec!["root".into()];
                s.exempt_groups = vec!["platform-admins".into()];
            }),
        )
        .unwrap();
        assert!(p.exemption("root", &[]).unwrap().contains("exemptUsers"));
        assert!(
            p.exemption("bob", &["platform-admins".into()])
                .unwrap()
                .contains("exemptGroups \"platform-admins\"")
        );
        assert_eq!(p.exemption("bob", &["dev".into()]), None);
    }
}
