//! The parts of a Pod the webhook reads, borrowed straight from the AdmissionReview bytes.
//!
//! Why not `k8s_openapi::api::core::v1::Pod`: it owns every string of the object (env, probes,
//! resources, managed fields…), which made parsing most of the cost of a review. These views
//! borrow what is read and skip the rest, so a compliant pod costs a scan and a few small
//! allocations. Every field a rule or the mutation depends on is here; two views being equal
//! means the pod's security posture is equal (what the UPDATE shortcut relies on).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

/// A borrowed string (owned only when the JSON escaped it).
pub type Str<'a> = Cow<'a, str>;

/// A string that borrows from the input when it can (serde only does this by itself for a
/// field spelled `Cow<str>`, not inside `Option`, `Vec` or maps).
struct BorrowCow<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowCow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(BorrowCow)
    }
}

fn cow<'de, D: Deserializer<'de>>(d: D) -> Result<Str<'de>, D::Error> {
    BorrowCow::deserialize(d).map(|b| b.0)
}

fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Str<'de>>, D::Error> {
    Option::<BorrowCow<'de>>::deserialize(d).map(|o| o.map(|b| b.0))
}

fn opt_vec_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Str<'de>>>, D::Error> {
    Option::<Vec<BorrowCow<'de>>>::deserialize(d)
        .map(|o| o.map(|v| v.into_iter().map(|b| b.0).collect()))
}

fn opt_map_cow<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<Str<'de>, Str<'de>>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<Str<'de>, Str<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<BorrowCow<'de>, BorrowCow<'de>>()? {
                out.insert(k.0, v.0);
            }
            Ok(out)
        }
    }
    struct M<'a>(BTreeMap<Str<'a>, Str<'a>>);
    impl<'de> Deserialize<'de> for M<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(V).map(M)
        }
    }
    Option::<M<'de>>::deserialize(d).map(|o| o.map(|m| m.0))
}

/// A Pod, as far as the webhook is concerned.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView<'a> {
    /// Must be `v1` when present.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub api_version: Option<Str<'a>>,
    /// Must be `Pod` when present.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub kind: Option<Str<'a>>,
    /// Name, namespace, labels, annotations.
    #[serde(borrow, default)]
    pub metadata: MetaView<'a>,
    /// The spec.
    #[serde(borrow, default)]
    pub spec: Option<SpecView<'a>>,
}

impl<'a> PodView<'a> {
    /// Parses a Pod, refusing objects of another kind.
    pub fn parse(json: &'a str) -> Result<Self, String> {
        let pod: PodView<'a> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        pod.check_kind()?;
        Ok(pod)
    }

    /// Refuses an object whose `kind` or `apiVersion`, when present, is not a v1 Pod's.
    pub fn check_kind(&self) -> Result<(), String> {
        if let Some(kind) = self.kind.as_deref()
            && kind != "Pod"
        {
            return Err(format!("kind is {kind:?}"));
        }
        if let Some(v) = self.api_version.as_deref()
            && v != "v1"
        {
            return Err(format!("apiVersion is {v:?}"));
        }
        Ok(())
    }
}

/// Object metadata.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaView<'a> {
    /// `metadata.name`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub name: Option<Str<'a>>,
    /// `metadata.generateName`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub generate_name: Option<Str<'a>>,
    /// `metadata.namespace`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub namespace: Option<Str<'a>>,
    /// Labels, owned: the contract's selector matching takes owned maps.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations (the pre-field AppArmor and seccomp settings live here).
    #[serde(borrow, default, deserialize_with = "opt_map_cow")]
    pub annotations: Option<BTreeMap<Str<'a>, Str<'a>>>,
}

/// `spec`, the fields that matter.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView<'a> {
    /// `spec.hostNetwork`.
    #[serde(default)]
    pub host_network: Option<bool>,
    /// `spec.hostPID`.
    #[serde(default, rename = "hostPID")]
    pub host_pid: Option<bool>,
    /// `spec.hostIPC`.
    #[serde(default, rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    /// `spec.volumes`.
    #[serde(borrow, default)]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    /// `spec.securityContext`.
    #[serde(borrow, default)]
    pub security_context: Option<PodSecurityView<'a>>,
    /// `spec.containers`.
    #[serde(borrow, default)]
    pub containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.initContainers`.
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.ephemeralContainers`.
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.serviceAccountName`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub service_account_name: Option<Str<'a>>,
    /// `spec.serviceAccount` (deprecated alias).
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub service_account: Option<Str<'a>>,
    /// `spec.affinity`.
    #[serde(borrow, default)]
    pub affinity: Option<AffinityView<'a>>,
}

impl<'a> SpecView<'a> {
    /// The regular containers (none when absent).
    pub fn containers(&self) -> &[ContainerView<'a>] {
        self.containers.as_deref().unwrap_or(&[])
    }
}

/// A volume: only whether it is a hostPath.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView<'a> {
    /// Volume name.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
    /// `hostPath`, when it is one.
    #[serde(borrow, default)]
    pub host_path: Option<HostPathView<'a>>,
}

/// `hostPath`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HostPathView<'a> {
    /// The node path.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub path: Str<'a>,
}

/// `spec.securityContext`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityView<'a> {
    /// Sysctls.
    #[serde(borrow, default)]
    pub sysctls: Option<Vec<SysctlView<'a>>>,
    /// Seccomp profile.
    #[serde(borrow, default)]
    pub seccomp_profile: Option<ProfileView<'a>>,
    /// AppArmor profile.
    #[serde(borrow, default)]
    pub app_armor_profile: Option<ProfileView<'a>>,
    /// SELinux options.
    #[serde(borrow, default)]
    pub se_linux_options: Option<SeLinuxView<'a>>,
    /// Windows options.
    #[serde(default)]
    pub windows_options: Option<WindowsView>,
}

/// A sysctl.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SysctlView<'a> {
    /// Its name.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
}

/// A seccomp or AppArmor profile.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ProfileView<'a> {
    /// `RuntimeDefault`, `Localhost`, `Unconfined`.
    #[serde(borrow, default, rename = "type", deserialize_with = "cow")]
    pub type_: Str<'a>,
}

/// SELinux options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SeLinuxView<'a> {
    /// Type.
    #[serde(borrow, default, rename = "type", deserialize_with = "opt_cow")]
    pub type_: Option<Str<'a>>,
    /// User.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub user: Option<Str<'a>>,
    /// Role.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub role: Option<Str<'a>>,
}

/// Windows options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowsView {
    /// HostProcess.
    #[serde(default)]
    pub host_process: Option<bool>,
}

/// A container (regular, init or ephemeral).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView<'a> {
    /// Name.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
    /// Image.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub image: Option<Str<'a>>,
    /// Security context.
    #[serde(borrow, default)]
    pub security_context: Option<SecurityView<'a>>,
    /// Ports.
    #[serde(default)]
    pub ports: Option<Vec<PortView>>,
}

/// A container port: only the host port matters.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// `hostPort`.
    #[serde(default)]
    pub host_port: Option<i32>,
}

/// A container's security context.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityView<'a> {
    /// `privileged`.
    #[serde(default)]
    pub privileged: Option<bool>,
    /// `allowPrivilegeEscalation`.
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
    /// `capabilities`.
    #[serde(borrow, default)]
    pub capabilities: Option<CapabilitiesView<'a>>,
    /// `procMount`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub proc_mount: Option<Str<'a>>,
    /// `seccompProfile`.
    #[serde(borrow, default)]
    pub seccomp_profile: Option<ProfileView<'a>>,
    /// `appArmorProfile`.
    #[serde(borrow, default)]
    pub app_armor_profile: Option<ProfileView<'a>>,
    /// `seLinuxOptions`.
    #[serde(borrow, default)]
    pub se_linux_options: Option<SeLinuxView<'a>>,
    /// `windowsOptions`.
    #[serde(default)]
    pub windows_options: Option<WindowsView>,
}

/// Capabilities: only what is added.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CapabilitiesView<'a> {
    /// `add`.
    #[serde(borrow, default, deserialize_with = "opt_vec_cow")]
    pub add: Option<Vec<Str<'a>>>,
}

/// `spec.affinity`, down to the required node selector terms.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityView<'a> {
    /// `nodeAffinity`.
    #[serde(borrow, default)]
    pub node_affinity: Option<NodeAffinityView<'a>>,
}

/// `nodeAffinity`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NodeAffinityView<'a> {
    /// `requiredDuringSchedulingIgnoredDuringExecution`.
    #[serde(
        borrow,
        default,
        rename = "requiredDuringSchedulingIgnoredDuringExecution"
    )]
    pub required: Option<NodeSelectorView<'a>>,
}

/// A node selector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorView<'a> {
    /// `nodeSelectorTerms` (ORed).
    #[serde(borrow, default)]
    pub node_selector_terms: Option<Vec<TermView<'a>>>,
}

/// A node selector term: its expressions (ANDed).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TermView<'a> {
    /// `matchExpressions`.
    #[serde(borrow, default)]
    pub match_expressions: Option<Vec<ExpressionView<'a>>>,
}

/// A node selector requirement.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ExpressionView<'a> {
    /// Label key.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub key: Str<'a>,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub operator: Str<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_matters_and_refuses_other_kinds() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}},
            "spec":{"hostPID":true,"containers":[{"name":"c","image":"i","env":[{"name":"X","value":"y"}],
            "securityContext":{"privileged":true,"capabilities":{"add":["NET_ADMIN"]}}}],
            "affinity":null,"volumes":[{"name":"v","hostPath":{"path":"/"}}]}}"#;
        let pod = PodView::parse(json).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_pid, Some(true));
        assert_eq!(spec.containers()[0].name, "c");
        assert!(spec.affinity.is_none());
        assert_eq!(
            spec.volumes.as_ref().unwrap()[0]
                .host_path
                .as_ref()
                .unwrap()
                .path,
            "/"
        );
        assert!(
            matches!(spec.containers()[0].name, Cow::Borrowed(_)),
            "borrowed, not copied"
        );
        assert!(matches!(pod.metadata.name, Some(Cow::Borrowed(_))));
        let with_notes = PodView::parse(
            r#"{"metadata":{"annotations":{"container.apparmor.security.beta.kubernetes.io/c":"unconfined","q":"a\"b"}}}"#,
        )
        .unwrap();
        let notes = with_notes.metadata.annotations.unwrap();
        assert_eq!(notes["q"], "a\"b", "escaped strings are unescaped");
        assert!(matches!(
            notes.iter().next().unwrap().1,
            Cow::Borrowed("unconfined")
        ));
        let err = PodView::parse(r#"{"apiVersion":"v1","kind":"Service"}"#).unwrap_err();
        assert!(err.contains("Service"), "{err}");
        assert!(PodView::parse(r#"{"spec":{"containers":"x"}}"#).is_err());
    }
}
