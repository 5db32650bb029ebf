//! Stand-ins for the parts of a node and of kube-controller-manager the tests need:
//! - a kubelet (kwok-like): every pod the real scheduler binds is set Running with a distinct
//!   pod IP in 127.0.0.0/8 and Ready conditions, and a configurable [`PodAction`] runs for it as a
//!   local process (the workspace agent, say); deleting the pod stops that process. Its
//!   projected ServiceAccount token volumes are filled as the kubelet fills them: a TokenRequest
//!   bound to the pod, with the source's audience and lifetime, written to a local folder per
//!   volume ([`PodContext::local_path`] maps a container path into it) and refreshed at 80 % of
//!   the lifetime;
//! - the token controller: every ServiceAccount gets a `kubernetes.io/service-account-token`
//!   Secret, so the ServiceAccount admission plugin admits pods that use it;
//! - a PV binder: every pending claim gets a PersistentVolume and is bound to it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::cluster::{ActionSlot, record_pid};
use crate::nodes::now_rfc3339;

/// What the simulator knows about a pod it starts.
pub struct PodContext {
    /// The pod as bound by the scheduler.
    pub pod: Pod,
    /// Its IP (distinct per pod, in 127.0.0.0/8, so processes can listen on it locally).
    pub pod_ip: Ipv4Addr,
    /// Each container's environment, resolved as a kubelet would (values, `fieldRef`,
    /// `secretKeyRef`, `configMapKeyRef`), by container name.
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    /// The local folder of each volume the simulator fills (projected ServiceAccount tokens),
    /// by volume name.
    pub volumes: BTreeMap<String, PathBuf>,
}

impl PodContext {
    /// A container's resolved environment with every value that is a path under a filled
    /// volume's mount mapped to where that is on this machine (`CODER_AGENT_TOKEN_FILE`, say),
    /// as the local process sees the pod's files.
    pub fn local_env(&self, container: &str) -> BTreeMap<String, String> {
        self.env
            .get(container)
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = match self.local_path(container, v) {
                    Some(p) if v.starts_with('/') => p.display().to_string(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// Where `path` inside `container` is on this machine, when it lies under a mount of a
    /// volume the simulator fills (the longest matching mount path wins).
    pub fn local_path(&self, container: &str, path: &str) -> Option<PathBuf> {
        let spec = self.pod.spec.as_ref()?;
        let c = spec.containers.iter().find(|c| c.name == container)?;
        c.volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let dir = self.volumes.get(&m.name)?;
                let mount = m.mount_path.trim_end_matches('/');
                let rest = path.strip_prefix(mount)?;
                (rest.is_empty() || rest.starts_with('/')).then(|| {
                    let rest = rest.trim_start_matches('/');
                    (
                        mount.len(),
                        if rest.is_empty() {
                            dir.clone()
                        } else {
                            dir.join(rest)
                        },
                    )
                })
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }
}

/// A token of `namespace/service_account` for `audience`, valid `expiration_seconds`, bound to
/// `pod` (name, uid) when given — what the kubelet asks for a projected token (and, unbound,
/// what anyone holding the account may ask for).
pub async fn request_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
    expiration_seconds: i64,
    pod: Option<(&str, &str)>,
) -> Result<String, kube::Error> {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &req)
        .await?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

/// Something the simulator runs for a started pod.
pub trait PodAction: Send + Sync {
    /// The command to run for this pod, if any. It runs in its own process group, which is
    /// sent SIGTERM when the pod is deleted (and SIGKILL after the grace period).
    fn command(&self, ctx: &PodContext) -> Option<Command>;
}

/// The simulator's state; tasks run on the runtime that called [`Simulator::run`].
#[derive(Default)]
pub struct Simulator {
    pub(crate) action: ActionSlot,
    started: Mutex<HashMap<String, Started>>,
    next_ip: AtomicU32,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Started {
    ip: Ipv4Addr,
    child: Option<Child>,
    /// Token refreshers and the pod's volume folder, ended and removed with the pod.
    refreshers: Vec<tokio::task::JoinHandle<()>>,
    volume_dir: Option<PathBuf>,
}

impl Simulator {
    /// Starts the kubelet, token-controller and PV-binder loops; pids and pod volumes are kept
    /// under `dir`.
    pub(crate) fn run(self: Arc<Self>, client: Client, dir: PathBuf) {
        let me = self.clone();
        let c = client.clone();
        let tasks = vec![
            tokio::spawn(async move { me.kubelet_loop(c, dir).await }),
            tokio::spawn(token_controller_loop(client.clone())),
            tokio::spawn(pv_binder_loop(client)),
        ];
        self.tasks.lock().expect("simulator lock").extend(tasks);
    }

    /// Stops every process the simulator started.
    pub(crate) fn stop_all(&self) {
        for t in self.tasks.lock().expect("simulator lock").drain(..) {
            t.abort();
        }
        let mut started = self.started.lock().expect("simulator lock");
        for (_, s) in started.iter_mut() {
            if let Some(child) = s.child.as_mut() {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
            }
        }
        started.clear();
    }

    async fn kubelet_loop(self: Arc<Self>, client: Client, dir: PathBuf) {
        let pods = Api::<Pod>::all(client.clone());
        loop {
            let mut stream = watcher(pods.clone(), watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("lumie harness: pod watch: {e}");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        let me = self.clone();
                        let client = client.clone();
                        let dir = dir.clone();
                        tokio::spawn(async move { me.on_pod(client, pod, dir).await });
                    }
                    watcher::Event::Delete(pod) => {
                        let me = self.clone();
                        tokio::task::spawn_blocking(move || me.stop(&pod_key(&pod), 0));
                    }
                    _ => {}
                }
            }
        }
    }

    async fn on_pod(self: Arc<Self>, client: Client, pod: Pod, dir: PathBuf) {
        let pid_dir = dir.join("pids");
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let key = pod_key(&pod);
        let ns = pod.namespace().unwrap_or_default();
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .clamp(0, 10) as u64;
            let me = self.clone();
            let k = key.clone();
            let _ = tokio::task::spawn_blocking(move || me.stop(&k, grace)).await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let _ = api.delete(&pod.name_any(), &dp).await;
            return;
        }
        // Claim the pod once; later events for it (our own status patch) change nothing.
        let ip = {
            let mut started = self.started.lock().expect("simulator lock");
            if started.contains_key(&key) {
                return;
            }
            let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
            let ip = Ipv4Addr::new(
                127,
                1 + (n / 62_500) as u8,
                ((n / 250) % 250) as u8,
                (n % 250 + 2) as u8,
            );
            started.insert(
                key.clone(),
                Started {
                    ip,
                    child: None,
                    refreshers: Vec::new(),
                    volume_dir: None,
                },
            );
            ip
        };
        let env = resolve_env(&client, &pod, ip).await;
        let volume_dir = dir.join("volumes").join(format!(
            "{ns}-{}-{}",
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ));
        let (volumes, refreshers) = project_tokens(&client, &pod, &volume_dir).await;
        if let Some(s) = self.started.lock().expect("simulator lock").get_mut(&key) {
            s.refreshers = refreshers;
            s.volume_dir = Some(volume_dir);
        }
        let ctx = PodContext {
            pod: pod.clone(),
            pod_ip: ip,
            env,
            volumes,
        };
        let action = self.action.read().expect("action lock").clone();
        if let Some(mut cmd) = action.and_then(|a| a.command(&ctx)) {
            match cmd.process_group(0).stdin(Stdio::null()).spawn() {
                Ok(child) => {
                    let _ = record_pid(&pid_dir, child.id());
                    if let Some(s) = self.started.lock().expect("simulator lock").get_mut(&key) {
                        s.child = Some(child);
                    }
                }
                Err(e) => eprintln!("lumie harness: starting the action for pod {key}: {e}"),
            }
        }
        let now = now_rfc3339();
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({
                    "name": c.name, "ready": true, "started": true, "restartCount": 0,
                    "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "containerID": format!("lumie-sim://{}-{}", pod.uid().unwrap_or_default(), c.name),
                    "state": {"running": {"startedAt": now}}
                })
            })
            .collect();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": now,
            "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": containers,
        }});
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
        {
            eprintln!("lumie harness: marking pod {key} Running on {node}: {e}");
        }
    }

    /// Stops a pod's process: SIGTERM to its group, SIGKILL after `grace` seconds.
    fn stop(&self, key: &str, grace: u64) {
        let Some(mut s) = self.started.lock().expect("simulator lock").remove(key) else {
            return;
        };
        let _ = s.ip;
        // Volumes go once the containers are gone, as the kubelet unmounts them.
        struct Cleanup(Vec<tokio::task::JoinHandle<()>>, Option<PathBuf>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                for r in self.0.drain(..) {
                    r.abort();
                }
                if let Some(d) = self.1.take() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        let _cleanup = Cleanup(std::mem::take(&mut s.refreshers), s.volume_dir.take());
        let Some(child) = s.child.as_mut() else {
            return;
        };
        signal_group(child.id(), "TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(grace);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(child.id(), "KILL");
        let _ = child.wait();
    }

    /// The IP given to a running pod (`namespace/name`), if the simulator started it.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let prefix = format!("{namespace}/{name}/");
        self.started
            .lock()
            .expect("simulator lock")
            .iter()
            .find(|(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| s.ip)
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}/{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    )
}

fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Fills the pod's projected ServiceAccount token volumes under `dir` (one folder per volume)
/// and starts a refresher for each token, as the kubelet does.
async fn project_tokens(
    client: &Client,
    pod: &Pod,
    dir: &std::path::Path,
) -> (BTreeMap<String, PathBuf>, Vec<tokio::task::JoinHandle<()>>) {
    let mut volumes = BTreeMap::new();
    let mut refreshers = Vec::new();
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let (name, uid) = (pod.name_any(), pod.uid().unwrap_or_default());
    for v in spec.volumes.iter().flatten() {
        let Some(projected) = &v.projected else {
            continue;
        };
        let vdir = dir.join(&v.name);
        if let Err(e) = std::fs::create_dir_all(&vdir) {
            eprintln!("lumie harness: volume {} of pod {ns}/{name}: {e}", v.name);
            continue;
        }
        for src in projected.sources.iter().flatten() {
            let Some(t) = &src.service_account_token else {
                continue;
            };
            let audience = t.audience.clone().unwrap_or_default();
            let expiration = t.expiration_seconds.unwrap_or(3600);
            let file = vdir.join(&t.path);
            let write = {
                let (client, ns, sa, name, uid, file) = (
                    client.clone(),
                    ns.clone(),
                    sa.clone(),
                    name.clone(),
                    uid.clone(),
                    file.clone(),
                );
                let audience = audience.clone();
                move || {
                    let (client, ns, sa, name, uid, file, audience) = (
                        client.clone(),
                        ns.clone(),
                        sa.clone(),
                        name.clone(),
                        uid.clone(),
                        file.clone(),
                        audience.clone(),
                    );
                    async move {
                        match request_token(
                            &client,
                            &ns,
                            &sa,
                            &audience,
                            expiration,
                            Some((&name, &uid)),
                        )
                        .await
                        {
                            Ok(token) => {
                                let tmp = file.with_extension("tmp");
                                if std::fs::write(&tmp, token)
                                    .and_then(|_| std::fs::rename(&tmp, &file))
                                    .is_err()
                                {
                                    eprintln!("lumie harness: writing {}", file.display());
                                }
                            }
                            Err(e) => {
                                eprintln!("lumie harness: TokenRequest for pod {ns}/{name}: {e}")
                            }
                        }
                    }
                }
            };
            write().await;
            let every = Duration::from_secs((expiration.max(1) as u64) * 4 / 5);
            refreshers.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    write().await;
                }
            }));
        }
        volumes.insert(v.name.clone(), vdir);
    }
    (volumes, refreshers)
}

async fn resolve_env(
    client: &Client,
    pod: &Pod,
    ip: Ipv4Addr,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let mut env = BTreeMap::new();
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                Some(v.clone())
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "status.podIP" => Some(ip.to_string()),
                        "metadata.name" => Some(pod.name_any()),
                        "metadata.namespace" => Some(ns.clone()),
                        "spec.nodeName" => spec.node_name.clone(),
                        "spec.serviceAccountName" => spec.service_account_name.clone(),
                        _ => None,
                    }
                } else if let Some(s) = &from.secret_key_ref {
                    Api::<Secret>::namespaced(client.clone(), &ns)
                        .get_opt(&s.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|sec| sec.data?.get(&s.key).cloned())
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                } else if let Some(m) = &from.config_map_key_ref {
                    Api::<ConfigMap>::namespaced(client.clone(), &ns)
                        .get_opt(&m.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|cm| cm.data?.get(&m.key).cloned())
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(v) = value {
                env.insert(e.name.clone(), v);
            }
        }
        out.insert(c.name.clone(), env);
    }
    out
}

async fn token_controller_loop(client: Client) {
    let sas = Api::<ServiceAccount>::all(client.clone());
    let mut stream = watcher(sas, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(sa)) if sa.secrets.as_ref().is_none_or(|s| s.is_empty()) => {
                if let Err(e) = create_token_secret(&client, &sa).await {
                    eprintln!(
                        "lumie harness: token for ServiceAccount {}: {e}",
                        sa.name_any()
                    );
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => eprintln!("lumie harness: ServiceAccount watch: {e}"),
        }
    }
}

pub(crate) async fn create_token_secret(
    client: &Client,
    sa: &ServiceAccount,
) -> Result<(), kube::Error> {
    let ns = sa.namespace().unwrap_or_default();
    let name = format!("{}-token", sa.name_any());
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "kubernetes.io/service-account.name": sa.name_any(),
            "kubernetes.io/service-account.uid": sa.uid().unwrap_or_default(),
        }},
        "type": "kubernetes.io/service-account-token",
        "stringData": {"token": "lumie-harness-token", "namespace": ns}
    }))
    .expect("static secret");
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            &sa.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"secrets": [{"name": name}]})),
        )
        .await
        .map(|_| ())
}

async fn pv_binder_loop(client: Client) {
    let claims = Api::<PersistentVolumeClaim>::all(client.clone());
    let mut stream = watcher(claims, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(pvc)) | Ok(watcher::Event::InitApply(pvc)) => {
                let unbound = pvc.spec.as_ref().is_none_or(|s| s.volume_name.is_none());
                if unbound
                    && pvc.metadata.deletion_timestamp.is_none()
                    && let Err(e) = bind(&client, &pvc).await
                {
                    eprintln!("lumie harness: binding claim {}: {e}", pvc.name_any());
                }
            }
            Ok(watcher::Event::Delete(pvc)) => {
                let pv = format!("pvc-{}", pvc.uid().unwrap_or_default());
                let _ = Api::<PersistentVolume>::all(client.clone())
                    .delete(&pv, &DeleteParams::default())
                    .await;
            }
            Ok(_) => {}
            Err(e) => eprintln!("lumie harness: claim watch: {e}"),
        }
    }
}

async fn bind(client: &Client, pvc: &PersistentVolumeClaim) -> Result<(), kube::Error> {
    let ns = pvc.namespace().unwrap_or_default();
    let uid = pvc.uid().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".to_string());
    let modes = spec
        .access_modes
        .clone()
        .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()]);
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": "lumie-harness"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "hostPath": {"path": format!("/tmp/lumie-harness-pv/{uid}")},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                         "name": pvc.name_any(), "uid": uid}
        }
    }))
    .expect("static pv");
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    pvs.patch_status(
        &pv_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound"}})),
    )
    .await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    claims
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                             "pv.kubernetes.io/bound-by-controller": "yes"}},
                "spec": {"volumeName": pv_name}
            })),
        )
        .await?;
    claims
        .patch_status(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "accessModes": modes,
                                             "capacity": {"storage": size}}})),
        )
        .await
        .map(|_| ())
}
