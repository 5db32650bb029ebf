//! The workspace template: a config file (images, resources, env, home volume, the startup and
//! shutdown scripts the agent runs) and the pure functions that turn it plus a workspace into the
//! PVC and Pod the server applies, and into the agent's [`Manifest`].
//!
//! The agent authenticates with the pod's own projected ServiceAccount token (audience
//! [`workspace::AGENT_TOKEN_AUDIENCE`], mounted read-only into `dev`, refreshed by the kubelet):
//! no Secret that every `dev-workspace` holder could read.
//!
//! The pod passes the webhook by construction: ServiceAccount `dev-workspace`, required node
//! affinity away from the contract's avoid labels, only `dind` privileged (with a `docker:*dind*`
//! image), every other container within Pod Security baseline.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::core::v1::{
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lumie_contract::agent_api::{Manifest, StartupBehavior};
use lumie_contract::naming::WorkspaceNames;
use lumie_contract::policy::WorkspacePolicySpec;
use lumie_contract::{apps, labels, workspace};
use serde::{Deserialize, Serialize};

use crate::error::{StartupError, StartupResult};

/// The agent bootstrap script (`agent/init-script.sh`, no placeholders: it reads the pod's
/// environment), run as the `dev` container's entry and served at `/api/v2/init-script/…`.
pub const INIT_SCRIPT: &str = include_str!("../../agent/init-script.sh");

/// The default startup script: code-server for the path-based app proxy (auth off: the proxy
/// authenticates; links absolute under the app's path) and Tilt when the home has a `Tiltfile`,
/// each only when installed and saying so when not. The agents UI runs in its own container.
pub const DEFAULT_STARTUP_SCRIPT: &str = r#"# lumie-coder default startup script (template startupScript).
cd "$HOME" || exit 1
base="/@${CODER_WORKSPACE_OWNER_NAME}/${CODER_WORKSPACE_NAME}/apps/code-server"
if command -v code-server >/dev/null 2>&1; then
  echo "starting code-server on 127.0.0.1:13337 (served under $base)"
  code-server --auth none --bind-addr 127.0.0.1:13337 --abs-proxy-base-path "$base"     --disable-telemetry >"$HOME/.code-server.log" 2>&1 &
else
  echo "code-server is not installed in this image: the code-server app will not start" >&2
fi
if [ -f "$HOME/Tiltfile" ]; then
  if command -v tilt >/dev/null 2>&1; then
    echo "starting tilt up on 127.0.0.1:10350 for $HOME/Tiltfile"
    tilt up --host 127.0.0.1 --port 10350 --file "$HOME/Tiltfile" >"$HOME/.tilt.log" 2>&1 &
  else
    echo "$HOME/Tiltfile exists but tilt is not installed in this image: Tilt will not start" >&2
  fi
else
  echo "no $HOME/Tiltfile: Tilt is not started (add one and restart the workspace)"
fi
"#;

/// The projected volume holding the agent's token.
pub const AGENT_TOKEN_VOLUME: &str = "agent-token";

/// Where the agent's token file is inside `dev` (`CODER_AGENT_TOKEN_FILE`).
pub fn agent_token_path() -> String {
    format!(
        "{}/{}",
        workspace::AGENT_TOKEN_DIR,
        workspace::AGENT_TOKEN_FILE_NAME
    )
}

/// Images of the three containers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Images {
    /// The `dev` container.
    pub dev: String,
    /// The agents UI.
    pub agents: String,
    /// Docker-in-Docker; must match the policy's privileged image patterns.
    pub dind: String,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            dev: "codercom/enterprise-base:ubuntu".into(),
            agents: "ghcr.io/lumie-infra/agents-ui:latest".into(),
            dind: "docker:27-dind".into(),
        }
    }
}

/// Resources per container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Resources {
    /// `dev`.
    pub dev: ResourceRequirements,
    /// `agents`.
    pub agents: ResourceRequirements,
    /// `dind`.
    pub dind: ResourceRequirements,
}

/// The home volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Home {
    /// Requested size.
    pub size: String,
    /// Storage class.
    pub storage_class_name: String,
    /// Access mode.
    pub access_mode: String,
}

impl Default for Home {
    fn default() -> Self {
        Home {
            size: workspace::HOME_SIZE.into(),
            storage_class_name: workspace::HOME_STORAGE_CLASS.into(),
            access_mode: workspace::HOME_ACCESS_MODE.into(),
        }
    }
}

/// The template config file (`LUMIE_TEMPLATE_FILE`, YAML). Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Template {
    /// Container images.
    pub images: Images,
    /// Container resources.
    pub resources: Resources,
    /// Extra environment of the `dev` container.
    pub env: Vec<EnvVar>,
    /// Home volume.
    pub home: Home,
    /// ServiceAccount of the pod (the contract's `dev-workspace`).
    pub service_account_name: String,
    /// Node labels the pod must avoid.
    pub avoid_node_labels: Vec<String>,
    /// Grace period, seconds (the agent reports `off` within it).
    pub termination_grace_period_seconds: i64,
    /// Image pull policy of every container.
    pub image_pull_policy: String,
    /// Shell text the agent runs (`sh -c`, in the home) once it has connected; empty for none.
    pub startup_script: String,
    /// Shell text the agent runs on SIGTERM, within its shutdown timeout; empty for none.
    pub shutdown_script: String,
    /// The user both scripts run as; unset: the agent's user.
    pub script_user: Option<String>,
    /// `blocking` (the workspace is `starting` until the script exits 0 and the apps are
    /// healthy) or `non-blocking` (the apps' health alone decides).
    pub startup_behavior: StartupBehavior,
    /// How long the agent may take to be ready, seconds (unset: the agent's 5 minutes).
    pub start_timeout_seconds: Option<u64>,
    /// The agent's shutdown timeout, seconds (unset: its 10 s); below the grace period.
    pub shutdown_timeout_seconds: Option<u64>,
}

impl Default for Template {
    fn default() -> Self {
        let policy = WorkspacePolicySpec::contract_default();
        Template {
            images: Images::default(),
            resources: Resources::default(),
            env: vec![],
            home: Home::default(),
            service_account_name: policy.service_account_name,
            avoid_node_labels: policy.avoid_node_labels,
            termination_grace_period_seconds: 30,
            image_pull_policy: "IfNotPresent".into(),
            startup_script: DEFAULT_STARTUP_SCRIPT.into(),
            shutdown_script: String::new(),
            script_user: None,
            startup_behavior: StartupBehavior::Blocking,
            start_timeout_seconds: None,
            shutdown_timeout_seconds: None,
        }
    }
}

/// A workspace as the template sees it.
#[derive(Clone, Debug)]
pub struct WorkspaceRef<'a> {
    /// Database id.
    pub id: &'a str,
    /// Object names.
    pub names: &'a WorkspaceNames,
}

impl Template {
    /// Reads and checks the template file, or the built-in default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> StartupResult<Template> {
        let Some(path) = path else {
            return Ok(Template::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| StartupError::Template {
            path: path.display().to_string(),
            message: format!("cannot read: {e} (LUMIE_TEMPLATE_FILE)"),
        })?;
        let t: Template = serde_yaml::from_str(&text).map_err(|e| StartupError::Template {
            path: path.display().to_string(),
            message: e.to_string().replace('\n', " "),
        })?;
        t.check().map_err(|message| StartupError::Template {
            path: path.display().to_string(),
            message,
        })?;
        Ok(t)
    }

    /// Checks the template against the contract's default policy, so a bad template fails at
    /// start rather than at the webhook.
    pub fn check(&self) -> std::result::Result<(), String> {
        let policy = WorkspacePolicySpec::contract_default();
        let dind = policy
            .privileged_containers
            .iter()
            .find(|c| c.name == workspace::CONTAINER_DIND)
            .map(|c| c.image_matcher())
            .transpose()
            .map_err(|e| e.to_string())?;
        if !dind.is_some_and(|m| m.is_match(&self.images.dind)) {
            return Err(format!(
                "images.dind {:?} is not an allowed privileged image (docker:*dind*)",
                self.images.dind
            ));
        }
        if self.service_account_name.is_empty() {
            return Err("serviceAccountName must not be empty".into());
        }
        for key in &policy.avoid_node_labels {
            if !self.avoid_node_labels.contains(key) {
                return Err(format!(
                    "avoidNodeLabels must include {key:?} (the contract keeps workspaces off control-plane nodes)"
                ));
            }
        }
        for e in &self.env {
            if [
                workspace::ENV_AGENT_URL,
                workspace::ENV_AGENT_TOKEN,
                workspace::ENV_AGENT_TOKEN_FILE,
                workspace::ENV_POD_IP,
            ]
            .contains(&e.name.as_str())
            {
                return Err(format!("env {} is set by the server", e.name));
            }
        }
        if self.home.size.trim().is_empty() {
            return Err("home.size must not be empty".into());
        }
        if let Some(user) = &self.script_user
            && (user.is_empty()
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(format!(
                "scriptUser {user:?} is not a user name (letters, digits, '.', '_', '-')"
            ));
        }
        if let Some(t) = self.shutdown_timeout_seconds
            && i64::try_from(t).unwrap_or(i64::MAX) >= self.termination_grace_period_seconds
        {
            return Err(format!(
                "shutdownTimeoutSeconds {t} must be below terminationGracePeriodSeconds {} (the agent reports off within the grace period)",
                self.termination_grace_period_seconds
            ));
        }
        if self.start_timeout_seconds == Some(0) {
            return Err("startTimeoutSeconds must be at least 1".into());
        }
        Ok(())
    }

    /// What the agent runs, as the manifest route answers it.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            startup_script: self.startup_script.clone(),
            shutdown_script: self.shutdown_script.clone(),
            run_as: self.script_user.clone(),
            startup_behavior: self.startup_behavior,
            start_timeout_seconds: self.start_timeout_seconds,
            shutdown_timeout_seconds: self.shutdown_timeout_seconds,
        }
    }

    /// The labels of every object of a workspace.
    pub fn labels(ws: &WorkspaceRef<'_>) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::MANAGED_BY.into(), labels::MANAGED_BY_LUMIE.into()),
            (labels::OWNER.into(), ws.names.owner.clone()),
            (labels::WORKSPACE.into(), ws.names.workspace.clone()),
            (labels::WORKSPACE_ID.into(), ws.id.to_string()),
        ])
    }

    fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        }
    }

    /// The home PVC.
    pub fn home_pvc(&self, ws: &WorkspaceRef<'_>, namespace: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: Self::meta(&ws.names.home_pvc, namespace, Self::labels(ws)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![self.home.access_mode.clone()]),
                storage_class_name: Some(self.home.storage_class_name.clone()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(self.home.size.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn baseline_security() -> SecurityContext {
        SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }
    }

    fn port(app: apps::WorkspaceApp) -> ContainerPort {
        ContainerPort {
            name: Some(app.slug.into()),
            container_port: app.port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    /// The workspace pod.
    pub fn pod(&self, ws: &WorkspaceRef<'_>, namespace: &str, agent_url: &str) -> Pod {
        let mut labels = Self::labels(ws);
        labels.insert(labels::APP_NAME.into(), labels::APP_NAME_WORKSPACE.into());
        let value = |name: &str, v: &str| EnvVar {
            name: name.into(),
            value: Some(v.into()),
            value_from: None,
        };
        let mut env = vec![
            value(workspace::ENV_AGENT_URL, agent_url),
            value(workspace::ENV_AGENT_TOKEN_FILE, &agent_token_path()),
            EnvVar {
                name: workspace::ENV_POD_IP.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "status.podIP".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
            },
            value("CODER_WORKSPACE_NAME", &ws.names.workspace),
            value("CODER_WORKSPACE_OWNER_NAME", &ws.names.owner),
            value("DOCKER_HOST", "tcp://127.0.0.1:2375"),
        ];
        env.extend(self.env.iter().cloned());
        let pull = Some(self.image_pull_policy.clone());
        let dev = Container {
            name: workspace::CONTAINER_DEV.into(),
            image: Some(self.images.dev.clone()),
            image_pull_policy: pull.clone(),
            command: Some(vec!["/bin/sh".into(), "-c".into(), INIT_SCRIPT.into()]),
            env: Some(env),
            ports: Some(vec![Self::port(apps::TILT), Self::port(apps::CODE_SERVER)]),
            resources: Some(self.resources.dev.clone()),
            security_context: Some(Self::baseline_security()),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "home".into(),
                    mount_path: workspace::HOME_MOUNT_PATH.into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: AGENT_TOKEN_VOLUME.into(),
                    mount_path: workspace::AGENT_TOKEN_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            working_dir: Some(workspace::HOME_MOUNT_PATH.into()),
            ..Default::default()
        };
        let agents = Container {
            name: workspace::CONTAINER_AGENTS.into(),
            image: Some(self.images.agents.clone()),
            image_pull_policy: pull.clone(),
            ports: Some(vec![Self::port(apps::AGENTS)]),
            resources: Some(self.resources.agents.clone()),
            security_context: Some(Self::baseline_security()),
            ..Default::default()
        };
        let dind = Container {
            name: workspace::CONTAINER_DIND.into(),
            image: Some(self.images.dind.clone()),
            image_pull_policy: pull,
            env: Some(vec![value("DOCKER_TLS_CERTDIR", "")]),
            resources: Some(self.resources.dind.clone()),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "docker".into(),
                mount_path: "/var/lib/docker".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let avoid = self
            .avoid_node_labels
            .iter()
            .map(|key| NodeSelectorRequirement {
                key: key.clone(),
                operator: "DoesNotExist".into(),
                values: None,
            })
            .collect();
        Pod {
            metadata: Self::meta(&ws.names.pod, namespace, labels),
            spec: Some(PodSpec {
                service_account_name: Some(self.service_account_name.clone()),
                hostname: Some(ws.names.workspace.clone()),
                termination_grace_period_seconds: Some(self.termination_grace_period_seconds),
                affinity: Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: vec![NodeSelectorTerm {
                                match_expressions: Some(avoid),
                                match_fields: None,
                            }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                containers: vec![dev, agents, dind],
                volumes: Some(vec![
                    Volume {
                        name: "home".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: ws.names.home_pvc.clone(),
                            read_only: None,
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "docker".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                    Volume {
                        name: AGENT_TOKEN_VOLUME.into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    audience: Some(workspace::AGENT_TOKEN_AUDIENCE.into()),
                                    expiration_seconds: Some(
                                        workspace::AGENT_TOKEN_EXPIRATION_SECONDS,
                                    ),
                                    path: workspace::AGENT_TOKEN_FILE_NAME.into(),
                                }),
                                ..Default::default()
                            }]),
                            default_mode: None,
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> WorkspaceNames {
        WorkspaceNames::new("alice", "dev").unwrap()
    }

    #[test]
    fn pod_meets_the_contract() {
        let t = Template::default();
        let n = names();
        let ws = WorkspaceRef {
            id: "id-1",
            names: &n,
        };
        let pod = t.pod(&ws, "lumie-dev", "http://coder.coder.svc.cluster.local");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("dev-workspace"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::APP_NAME], "dev-workspace");
        assert_eq!(labels[labels::WORKSPACE_ID], "id-1");
        assert_eq!(labels[labels::MANAGED_BY], "lumie-coder");
        let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["dev", "agents", "dind"]);
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            if c.name == "dind" {
                assert_eq!(sc.privileged, Some(true));
                assert_eq!(c.image.as_deref(), Some("docker:27-dind"));
            } else {
                assert_eq!(sc.privileged, Some(false), "{}", c.name);
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            }
        }
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let keys: Vec<_> = terms[0]
            .match_expressions
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| (r.key.as_str(), r.operator.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("node-role.kubernetes.io/control-plane", "DoesNotExist"),
                ("node-role.kubernetes.io/master", "DoesNotExist")
            ]
        );
        let dev = &spec.containers[0];
        assert_eq!(dev.command.as_ref().unwrap()[2], INIT_SCRIPT);
        let env: BTreeMap<_, _> = dev
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["CODER_AGENT_URL"].value.as_deref(),
            Some("http://coder.coder.svc.cluster.local")
        );
        // The agent's token: the pod's own projected token, no Secret.
        assert!(!env.contains_key("CODER_AGENT_TOKEN"));
        assert_eq!(
            env["CODER_AGENT_TOKEN_FILE"].value.as_deref(),
            Some("/var/run/secrets/coder.lumie-infra.com/agent/token")
        );
        let mount = dev
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == AGENT_TOKEN_VOLUME)
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/var/run/secrets/coder.lumie-infra.com/agent", Some(true))
        );
        let projected = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == AGENT_TOKEN_VOLUME)
            .and_then(|v| v.projected.as_ref())
            .unwrap();
        let sources = projected.sources.as_ref().unwrap();
        assert_eq!(sources.len(), 1);
        let sat = sources[0].service_account_token.as_ref().unwrap();
        assert_eq!(
            (
                sat.audience.as_deref(),
                sat.expiration_seconds,
                sat.path.as_str()
            ),
            (Some("lumie-coder-agent"), Some(3600), "token")
        );
        assert!(
            spec.volumes.iter().flatten().all(|v| v.secret.is_none()),
            "no Secret volume"
        );
        assert!(
            spec.containers
                .iter()
                .all(|c| c.env.iter().flatten().all(|e| e
                    .value_from
                    .as_ref()
                    .is_none_or(|f| f.secret_key_ref.is_none()))),
            "no Secret env"
        );
        assert_eq!(
            env["POD_IP"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        // No host namespaces or host paths anywhere.
        assert!(spec.host_network.is_none() && spec.host_pid.is_none() && spec.host_ipc.is_none());
        assert!(spec.volumes.iter().flatten().all(|v| v.host_path.is_none()));
    }

    #[test]
    fn the_default_script_starts_the_tools_it_finds() {
        let m = Template::default().manifest();
        assert_eq!(m.startup_behavior, StartupBehavior::Blocking);
        assert!(m.shutdown_script.is_empty() && m.run_as.is_none());
        for needle in [
            "--auth none",
            "--bind-addr 127.0.0.1:13337",
            "--abs-proxy-base-path \"$base\"",
            "/apps/code-server",
            "--port 10350",
            "$HOME/Tiltfile",
            "is not installed",
        ] {
            assert!(m.startup_script.contains(needle), "{needle}");
        }
    }

    /// The default script, run with neither tool installed and no Tiltfile: it says so for each
    /// and exits 0 (the apps then stay unhealthy, which the status names).
    #[test]
    fn the_default_script_says_what_it_could_not_start() {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(DEFAULT_STARTUP_SCRIPT)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home.path())
            .env("CODER_WORKSPACE_OWNER_NAME", "alice")
            .env("CODER_WORKSPACE_NAME", "dev")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("code-server is not installed"), "{stderr}");
        assert!(stdout.contains("Tilt is not started"), "{stdout}");
        std::fs::write(home.path().join("Tiltfile"), "").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(DEFAULT_STARTUP_SCRIPT)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("tilt is not installed"),
            "{out:?}"
        );
    }

    #[test]
    fn pvc_from_the_template() {
        let t = Template::default();
        let n = names();
        let ws = WorkspaceRef {
            id: "id-1",
            names: &n,
        };
        let pvc = t.home_pvc(&ws, "lumie-dev");
        let spec = pvc.spec.unwrap();
        assert_eq!(pvc.metadata.name.as_deref(), Some("coder-alice-dev-home"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("30Gi".into())
        );
    }

    #[test]
    fn template_file_overrides_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(
            &path,
            "images:\n  dev: my/dev:1\nhome:\n  size: 50Gi\nresources:\n  dev:\n    limits:\n      cpu: \"2\"\nenv:\n  - name: FOO\n    value: bar\n",
        )
        .unwrap();
        let t = Template::load(Some(&path)).unwrap();
        assert_eq!(t.images.dev, "my/dev:1");
        assert_eq!(
            t.images.dind, "docker:27-dind",
            "unset fields keep defaults"
        );
        assert_eq!(t.home.size, "50Gi");
        assert_eq!(t.env[0].name, "FOO");
        let cases = [
            ("images:\n  dind: ubuntu:22.04\n", "images.dind"),
            ("avoidNodeLabels: []\n", "avoidNodeLabels"),
            (
                "env:\n  - name: CODER_AGENT_TOKEN\n    value: x\n",
                "set by the server",
            ),
            (
                "env:\n  - name: CODER_AGENT_TOKEN_FILE\n    value: /x\n",
                "set by the server",
            ),
            ("images: [\n", "t.yaml"),
            ("scriptUser: \"a b\"\n", "scriptUser"),
            (
                "shutdownTimeoutSeconds: 30\n",
                "below terminationGracePeriodSeconds",
            ),
            ("startTimeoutSeconds: 0\n", "startTimeoutSeconds"),
            ("startupBehavior: later\n", "t.yaml"),
        ];
        for (yaml, want) in cases {
            std::fs::write(&path, yaml).unwrap();
            let e = Template::load(Some(&path)).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        std::fs::write(
            &path,
            "startupScript: |\n  echo hi\nshutdownScript: echo bye\nscriptUser: coder\nstartupBehavior: non-blocking\nstartTimeoutSeconds: 60\nshutdownTimeoutSeconds: 20\n",
        )
        .unwrap();
        let m = Template::load(Some(&path)).unwrap().manifest();
        assert_eq!(
            m,
            Manifest {
                startup_script: "echo hi\n".into(),
                shutdown_script: "echo bye".into(),
                run_as: Some("coder".into()),
                startup_behavior: StartupBehavior::NonBlocking,
                start_timeout_seconds: Some(60),
                shutdown_timeout_seconds: Some(20),
            }
        );
        assert!(
            Template::load(Some(&dir.path().join("missing.yaml")))
                .unwrap_err()
                .to_string()
                .contains("LUMIE_TEMPLATE_FILE")
        );
    }
}
