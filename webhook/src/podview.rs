//! The parts of a Pod the webhook reads, borrowed straight from the AdmissionReview bytes.
//!
//! Why not `k8s_openapi::api::core::v1::Pod`: it owns every string of the object (env, probes,
//! resources, managed fields…), which made parsing most of the cost of a review. These views
//! borrow what is read and skip the rest, so a compliant pod costs a scan and a few small
//! allocations. Every field a rule or the mutation depends on is here; two views being equal
//! means the pod's security posture is equal (what the UPDATE shortcut relies on).
//!
//! Every view of a Kubernetes object accepts only a JSON object (serde's derive would also
//! take an array, read positionally, so `spec.securityContext: []` would pass as an empty
//! context): a wrong type is a parse error, and [`PodView::parse`] names the field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
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

/// The derived (`remote = "Self"`) deserializer of a view, which [`ObjectOnly`] feeds a map.
trait DerivedDe<'de>: Sized {
    fn derived<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Accepts a JSON object only, then hands it to the derived deserializer.
struct ObjectOnly<T>(PhantomData<fn() -> T>);

impl<'de, T: DerivedDe<'de>> Visitor<'de> for ObjectOnly<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::derived(MapAccessDeserializer::new(map))
    }
}

/// Implements `Deserialize` for views derived with `#[serde(remote = "Self")]`: objects only.
macro_rules! object_only {
    ($($t:ident $(<$l:lifetime>)?),* $(,)?) => {$(
        impl<'de $(: $l, $l)?> DerivedDe<'de> for $t$(<$l>)? {
            fn derived<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $t::deserialize(d)
            }
        }
        impl<'de $(: $l, $l)?> Deserialize<'de> for $t$(<$l>)? {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_map(ObjectOnly::<Self>(PhantomData))
            }
        }
    )*};
}

object_only!(
    PodView<'a>,
    MetaView<'a>,
    SpecView<'a>,
    VolumeView<'a>,
    HostPathView<'a>,
    ClaimView<'a>,
    SecretVolumeView<'a>,
    ProjectedView<'a>,
    ProjectionView<'a>,
    NameRefView<'a>,
    CsiView<'a>,
    PodSecurityView<'a>,
    SysctlView<'a>,
    ProfileView<'a>,
    SeLinuxView<'a>,
    WindowsView,
    GitRepoView<'a>,
    ContainerView<'a>,
    ProbeView<'a>,
    LifecycleView<'a>,
    HostView<'a>,
    EnvView<'a>,
    EnvSourceView<'a>,
    EnvFromView<'a>,
    PortView,
    SecurityView<'a>,
    CapabilitiesView<'a>,
    UlimitView<'a>,
    AffinityView<'a>,
    NodeAffinityView<'a>,
    NodeSelectorView<'a>,
    TermView<'a>,
    ExpressionView<'a>,
);

/// A Pod, as far as the webhook is concerned.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
    /// Parses a Pod, refusing objects of another kind. A field of the wrong type is named
    /// (`spec.securityContext: invalid type: sequence, expected a JSON object …`).
    pub fn parse(json: &'a str) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        let pod: PodView<'a> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.into_inner().to_string()
            } else {
                format!("{path}: {}", e.into_inner())
            }
        })?;
        de.end().map_err(|e| e.to_string())?;
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
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
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
    /// `spec.hostUsers`: `false` runs the pod in a user namespace, which relaxes `procMount`.
    #[serde(default)]
    pub host_users: Option<bool>,
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

/// A volume: whether it is a hostPath, and which claim or Secrets it mounts.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct VolumeView<'a> {
    /// Volume name.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
    /// `hostPath`, when it is one.
    #[serde(borrow, default)]
    pub host_path: Option<HostPathView<'a>>,
    /// `persistentVolumeClaim`, when it is one.
    #[serde(borrow, default)]
    pub persistent_volume_claim: Option<ClaimView<'a>>,
    /// `secret`, when it is one.
    #[serde(borrow, default)]
    pub secret: Option<SecretVolumeView<'a>>,
    /// `projected`, when it is one.
    #[serde(borrow, default)]
    pub projected: Option<ProjectedView<'a>>,
    /// `csi`, when it is one (its `nodePublishSecretRef`).
    #[serde(borrow, default)]
    pub csi: Option<CsiView<'a>>,
    /// `gitRepo`, when it is one (deprecated; the kubelet runs `git` on the node).
    #[serde(borrow, default)]
    pub git_repo: Option<GitRepoView<'a>>,
}

/// A `gitRepo` volume.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct GitRepoView<'a> {
    /// `repository`.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub repository: Str<'a>,
}

/// `persistentVolumeClaim`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct ClaimView<'a> {
    /// `claimName`.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub claim_name: Str<'a>,
}

/// A `secret` volume.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeView<'a> {
    /// `secretName`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub secret_name: Option<Str<'a>>,
}

/// A `projected` volume.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct ProjectedView<'a> {
    /// `sources`.
    #[serde(borrow, default)]
    pub sources: Option<Vec<ProjectionView<'a>>>,
}

/// One projected source: only a Secret matters.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct ProjectionView<'a> {
    /// `secret`.
    #[serde(borrow, default)]
    pub secret: Option<NameRefView<'a>>,
}

/// A reference by `name` (a projected Secret, `secretRef`, `nodePublishSecretRef`, `secretKeyRef`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct NameRefView<'a> {
    /// `name`.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub name: Option<Str<'a>>,
}

/// A `csi` volume.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct CsiView<'a> {
    /// `nodePublishSecretRef`.
    #[serde(borrow, default)]
    pub node_publish_secret_ref: Option<NameRefView<'a>>,
}

/// `hostPath`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct HostPathView<'a> {
    /// The node path.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub path: Str<'a>,
}

/// `spec.securityContext`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
pub struct SysctlView<'a> {
    /// Its name.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
}

/// A seccomp or AppArmor profile.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct ProfileView<'a> {
    /// `RuntimeDefault`, `Localhost`, `Unconfined`.
    #[serde(borrow, default, rename = "type", deserialize_with = "cow")]
    pub type_: Str<'a>,
}

/// SELinux options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct WindowsView {
    /// HostProcess.
    #[serde(default)]
    pub host_process: Option<bool>,
}

/// A container (regular, init or ephemeral).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
    /// `env`: only the Secrets it reads.
    #[serde(borrow, default)]
    pub env: Option<Vec<EnvView<'a>>>,
    /// `envFrom`: only the Secrets it reads.
    #[serde(borrow, default)]
    pub env_from: Option<Vec<EnvFromView<'a>>>,
    /// `livenessProbe`: only the hosts it connects to.
    #[serde(borrow, default)]
    pub liveness_probe: Option<ProbeView<'a>>,
    /// `readinessProbe`.
    #[serde(borrow, default)]
    pub readiness_probe: Option<ProbeView<'a>>,
    /// `startupProbe`.
    #[serde(borrow, default)]
    pub startup_probe: Option<ProbeView<'a>>,
    /// `lifecycle`.
    #[serde(borrow, default)]
    pub lifecycle: Option<LifecycleView<'a>>,
}

/// A probe or a lifecycle handler: the two actions the kubelet performs from the node's
/// network namespace, where a `host` points them anywhere the node can reach.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct ProbeView<'a> {
    /// `httpGet`.
    #[serde(borrow, default)]
    pub http_get: Option<HostView<'a>>,
    /// `tcpSocket`.
    #[serde(borrow, default)]
    pub tcp_socket: Option<HostView<'a>>,
}

/// `lifecycle`: its handlers read like probes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct LifecycleView<'a> {
    /// `postStart`.
    #[serde(borrow, default)]
    pub post_start: Option<ProbeView<'a>>,
    /// `preStop`.
    #[serde(borrow, default)]
    pub pre_stop: Option<ProbeView<'a>>,
}

/// `httpGet` or `tcpSocket`: only the host.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct HostView<'a> {
    /// `host`; unset or empty means the pod IP.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub host: Option<Str<'a>>,
}

/// An `env` entry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct EnvView<'a> {
    /// `valueFrom`.
    #[serde(borrow, default)]
    pub value_from: Option<EnvSourceView<'a>>,
}

/// `valueFrom`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct EnvSourceView<'a> {
    /// `secretKeyRef`.
    #[serde(borrow, default)]
    pub secret_key_ref: Option<NameRefView<'a>>,
}

/// An `envFrom` entry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct EnvFromView<'a> {
    /// `secretRef`.
    #[serde(borrow, default)]
    pub secret_ref: Option<NameRefView<'a>>,
}

/// A container port: only the host port matters.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// `hostPort`.
    #[serde(default)]
    pub host_port: Option<i32>,
}

/// A container's security context.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
    /// `ulimits` (Kubernetes 1.37+; an older apiserver drops the field before admission).
    #[serde(borrow, default)]
    pub ulimits: Option<Vec<UlimitView<'a>>>,
}

/// A container ulimit: only its name, for the violation.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct UlimitView<'a> {
    /// `name` (`nofile`, `memlock`…).
    #[serde(borrow, default, deserialize_with = "cow")]
    pub name: Str<'a>,
}

/// Capabilities: only what is added.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
pub struct CapabilitiesView<'a> {
    /// `add`.
    #[serde(borrow, default, deserialize_with = "opt_vec_cow")]
    pub add: Option<Vec<Str<'a>>>,
}

/// `spec.affinity`, down to the required node selector terms.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct AffinityView<'a> {
    /// `nodeAffinity`.
    #[serde(borrow, default)]
    pub node_affinity: Option<NodeAffinityView<'a>>,
}

/// `nodeAffinity`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorView<'a> {
    /// `nodeSelectorTerms` (ORed).
    #[serde(borrow, default)]
    pub node_selector_terms: Option<Vec<TermView<'a>>>,
}

/// A node selector term: its expressions (ANDed).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
#[serde(rename_all = "camelCase")]
pub struct TermView<'a> {
    /// `matchExpressions`.
    #[serde(borrow, default)]
    pub match_expressions: Option<Vec<ExpressionView<'a>>>,
}

/// A node selector requirement.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(remote = "Self")]
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
        let probed = PodView::parse(
            r#"{"spec":{"hostUsers":false,"volumes":[{"name":"g","gitRepo":{"repository":"r"}}],
            "ephemeralContainers":[{"name":"e","lifecycle":{"preStop":{"tcpSocket":{"host":"n","port":1}}}}],
            "containers":[{"name":"c","livenessProbe":{"httpGet":{"host":"h","port":80},"periodSeconds":5},
            "startupProbe":{"exec":{"command":["true"]}}}]}}"#,
        )
        .unwrap();
        let spec = probed.spec.as_ref().unwrap();
        assert_eq!(spec.host_users, Some(false));
        assert_eq!(
            spec.volumes.as_ref().unwrap()[0]
                .git_repo
                .as_ref()
                .unwrap()
                .repository,
            "r"
        );
        let c = &spec.containers()[0];
        let host = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .host
            .as_ref();
        assert!(matches!(host, Some(Cow::Borrowed("h"))), "{host:?}");
        let exec = c.startup_probe.as_ref().unwrap();
        assert!(exec.http_get.is_none() && exec.tcp_socket.is_none());
        let e = &spec.ephemeral_containers.as_ref().unwrap()[0];
        let pre_stop = e.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(
            pre_stop.tcp_socket.as_ref().unwrap().host.as_deref(),
            Some("n")
        );
        assert!(
            PodView::parse(r#"{"spec":{"containers":[{"name":"c","livenessProbe":[]}]}}"#).is_err(),
            "a probe must be an object"
        );
        let err = PodView::parse(r#"{"apiVersion":"v1","kind":"Service"}"#).unwrap_err();
        assert!(err.contains("Service"), "{err}");
        assert!(PodView::parse(r#"{"spec":{"containers":"x"}}"#).is_err());
    }
}
