//! Running workspace pods for real on the simulated nodes: the `dev` container's entry (the
//! agent init script) as a local process with the pod's environment (paths into the projected
//! token volume mapped to where the simulator wrote the token), so the script downloads the
//! agent from the control plane and the agent reports in with its pod's token, as in a real pod.
//!
//! Also the pieces around it: where the built `lumie-agent` binary is, the stand-in apps the
//! agent checks and forwards to (on the host, or started by the workspace's own startup script:
//! [`stand_in_apps_script`]), and the overlay's `dev-workspace` Service.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use lumie_contract::{apps, labels, workspace};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::simulator::{PodAction, PodContext};
use crate::{HarnessError, io_error};

/// Runs the `dev` container's command of each workspace pod, with its resolved env.
pub struct DevContainerRunner {
    /// Per-pod folders (agent download dir, home dir, log) go here.
    pub work_dir: PathBuf,
    /// Extra environment for every pod (e.g. a short health interval for tests).
    pub extra_env: BTreeMap<String, String>,
}

impl DevContainerRunner {
    /// A runner keeping per-pod folders under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        DevContainerRunner {
            work_dir: work_dir.into(),
            extra_env: BTreeMap::new(),
        }
    }

    /// [`new`](Self::new), with `work_dir` created (the simulator runs pods right away).
    pub fn created(work_dir: impl Into<PathBuf>) -> Result<Self, HarnessError> {
        let runner = DevContainerRunner::new(work_dir);
        std::fs::create_dir_all(&runner.work_dir)
            .map_err(io_error(format!("creating {}", runner.work_dir.display())))?;
        Ok(runner)
    }

    /// Adds `key=value` to every pod's environment.
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.extra_env.insert(key.into(), value.into());
        self
    }

    /// The log file of a pod's `dev` process.
    pub fn log_path(&self, pod_name: &str) -> PathBuf {
        self.work_dir.join(format!("{pod_name}.log"))
    }
}

impl PodAction for DevContainerRunner {
    fn command(&self, ctx: &PodContext) -> Option<Command> {
        let is_workspace = ctx.pod.labels().get(labels::APP_NAME).map(String::as_str)
            == Some(labels::APP_NAME_WORKSPACE);
        if !is_workspace {
            return None;
        }
        let argv = dev_argv(&ctx.pod)?;
        let (program, args) = argv.split_first()?;
        let pod_dir = self.work_dir.join(ctx.pod.name_any());
        let home = pod_dir.join("home");
        std::fs::create_dir_all(&home).ok()?;
        let log = std::fs::File::create(self.log_path(&ctx.pod.name_any())).ok()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .envs(ctx.local_env(workspace::CONTAINER_DEV))
            .env("LUMIE_AGENT_BIN_DIR", pod_dir.join("bin"))
            .env("LUMIE_AGENT_HOME_DIR", &home)
            .env("LUMIE_INIT_RETRY_DELAY", "1")
            .envs(&self.extra_env)
            .stdout(log.try_clone().ok()?)
            .stderr(log);
        Some(cmd)
    }
}

/// The `dev` container's command line (command, then args) of a workspace pod: the agent init
/// script, as the kubelet would run it.
pub fn dev_argv(pod: &Pod) -> Option<Vec<String>> {
    let dev = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == workspace::CONTAINER_DEV)?;
    Some(
        dev.command
            .iter()
            .flatten()
            .chain(dev.args.iter().flatten())
            .cloned()
            .collect(),
    )
}

/// The built `lumie-agent` binary next to the running test or demo executable. Under cargo
/// (`CARGO` is set: a test run) it is always built first, once per process, so a narrow
/// `cargo test -p lumie-tests` never runs a stale agent (a no-op when it is fresh); outside cargo
/// (the demo, after `make demo` built it) only when it is missing.
pub fn agent_binary() -> Result<PathBuf, HarnessError> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_agent_binary().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

fn build_agent_binary() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(io_error("locating the current executable"))?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let bin = profile_dir.join("lumie-agent");
    if !bin.exists() || std::env::var_os("CARGO").is_some() {
        let release = profile_dir.ends_with("release");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "-p", "lumie-agent", "--bin", "lumie-agent"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .stdout(Stdio::null());
        if release {
            cargo.arg("--release");
        }
        let status = cargo
            .status()
            .map_err(io_error("running cargo build -p lumie-agent"))?;
        if !status.success() || !bin.exists() {
            return Err(HarnessError::Build(format!(
                "cargo build -p lumie-agent: {status}, expected {}",
                bin.display()
            )));
        }
    }
    Ok(bin)
}

/// Startup-script lines that start the stand-in apps (`bin`, the `lumie-stand-in-apps` binary)
/// inside the workspace: in the background, in the script's process group (so stopping the
/// workspace stops them), watching the agent (`$PPID` of the script) so they never outlive it,
/// on the agent's app host (`LUMIE_AGENT_APP_HOST`, default 127.0.0.1).
pub fn stand_in_apps_script(bin: &Path) -> String {
    format!(
        "echo \"starting the stand-in apps\"\n\"{}\" --host \"${{LUMIE_AGENT_APP_HOST:-127.0.0.1}}\" --watch-pid \"$PPID\" &\n",
        bin.display()
    )
}

/// A loopback address of this process's own for the apps (`LUMIE_AGENT_APP_HOST`), so stand-ins
/// on the contract ports do not collide with another harness's on 127.0.0.1.
pub fn private_app_host() -> IpAddr {
    let n = std::process::id();
    IpAddr::from([127, 200 + (n % 50) as u8, (n >> 8) as u8, (n as u8).max(1)])
}

/// The built `lumie-stand-in-apps` binary next to the running executable (the demo's; tests
/// use `CARGO_BIN_EXE_lumie-stand-in-apps`).
pub fn stand_in_apps_binary() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(io_error("locating the current executable"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("lumie-stand-in-apps");
    if !bin.exists() {
        return Err(HarnessError::Build(format!(
            "{} is missing: build it with cargo build -p lumie-tests --bin lumie-stand-in-apps",
            bin.display()
        )));
    }
    Ok(bin)
}

/// A folder laid out like the server's `LUMIE_AGENT_BINARY_DIR`: `lumie-agent-linux-amd64`.
pub fn agent_binary_dir(under: &Path) -> Result<PathBuf, HarnessError> {
    let dir = under.join("agent-bin");
    std::fs::create_dir_all(&dir).map_err(io_error("creating the agent binary dir"))?;
    std::fs::copy(agent_binary()?, dir.join("lumie-agent-linux-amd64"))
        .map_err(io_error("copying lumie-agent"))?;
    Ok(dir)
}

/// Creates the overlay's singleton `dev-workspace` Service with the contract's ports, as the
/// `lumie-dev` chart does (the control plane checks it, never creates it).
pub async fn install_stable_service(client: &Client) -> Result<(), HarnessError> {
    StableService::default().install(client).await
}

/// The overlay's `dev-workspace` Service as a test wants it.
#[derive(Clone, Copy, Debug)]
pub struct StableService<'a> {
    /// Where (default `lumie-dev`).
    pub namespace: &'a str,
    /// Apps whose Service port is one above the contract's (the target port stays): the drift
    /// the server reports.
    pub drifted: &'a [&'a str],
    /// The field manager applying it (default `lumie-harness`): a test that checks the server
    /// never writes the Service looks for this one alone.
    pub manager: &'a str,
}

impl Default for StableService<'_> {
    fn default() -> Self {
        StableService {
            namespace: workspace::NAMESPACE,
            drifted: &[],
            manager: "lumie-harness",
        }
    }
}

impl StableService<'_> {
    /// Creates or replaces it (server-side apply, forced).
    pub async fn install(&self, client: &Client) -> Result<(), HarnessError> {
        let ports: Vec<_> = apps::ALL
            .iter()
            .map(|a| {
                let port = a.port + u16::from(self.drifted.contains(&a.slug));
                json!({"name": a.slug, "port": port, "targetPort": a.port, "protocol": "TCP"})
            })
            .collect();
        let ns = self.namespace;
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(
                workspace::STABLE_SERVICE,
                &PatchParams::apply(self.manager).force(),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": workspace::STABLE_SERVICE, "namespace": ns},
                    "spec": {"type": "ClusterIP", "ports": ports,
                             "selector": {labels::APP_NAME: labels::APP_NAME_WORKSPACE}}
                })),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                HarnessError::Kube(format!("creating the dev-workspace Service in {ns}"), e)
            })
    }
}

/// Small HTTP + WebSocket servers standing in for Tilt, code-server and the agents UI, each on
/// its contract port on `host`. Plain requests answer `<slug> stand-in: <path>`; a WebSocket
/// upgrade echoes every message back.
pub struct StandInApps {
    servers: Mutex<BTreeMap<&'static str, JoinHandle<()>>>,
    host: IpAddr,
}

impl StandInApps {
    /// None running yet, on `host`; start them with [`start_one`](Self::start_one).
    pub fn empty(host: IpAddr) -> StandInApps {
        StandInApps {
            servers: Mutex::new(BTreeMap::new()),
            host,
        }
    }

    /// Starts all three on `host` (ports from the contract).
    pub async fn start(host: IpAddr) -> Result<StandInApps, HarnessError> {
        let apps = StandInApps::empty(host);
        for app in apps::ALL {
            apps.start_one(app.slug).await?;
        }
        Ok(apps)
    }

    /// (Re)starts one app by slug.
    pub async fn start_one(&self, slug: &'static str) -> Result<(), HarnessError> {
        let app = apps::by_slug(slug).expect("contract app slug");
        let addr = SocketAddr::new(self.host, app.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_error(format!("binding stand-in {slug} on {addr}")))?;
        let router = Router::new().fallback(move |req: Request| stand_in(slug, req));
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        if let Some(old) = self
            .servers
            .lock()
            .expect("stand-in lock")
            .insert(slug, handle)
        {
            old.abort();
        }
        Ok(())
    }

    /// Stops one app (its port then refuses connections).
    pub fn stop_one(&self, slug: &str) {
        if let Some(h) = self.servers.lock().expect("stand-in lock").remove(slug) {
            h.abort();
        }
    }
}

impl Drop for StandInApps {
    fn drop(&mut self) {
        for (_, h) in self.servers.lock().expect("stand-in lock").iter() {
            h.abort();
        }
    }
}

async fn stand_in(slug: &'static str, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let (mut parts, _body) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws
            .on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    let reply = match msg {
                        Message::Text(t) => Message::Text(t),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
            })
            .into_response(),
        Err(_) => format!("{slug} stand-in: {path}").into_response(),
    }
}

/// A stand-in for the agent, for tests about the control plane rather than the agent: a shell
/// loop in each workspace pod posting a `ready` heartbeat with these app healths every second,
/// with its pod's projected token re-read each time (as the real agent does).
pub struct StandInAgent {
    /// The heartbeat's `apps` map, as JSON (`{"tilt":"healthy",…}`).
    pub apps_json: &'static str,
    /// Seconds before the first heartbeat (so a watcher sees `starting` before `running`).
    pub first_after_secs: u32,
}

impl StandInAgent {
    /// Every app healthy, the first heartbeat at once: a workspace that runs as soon as its pod
    /// does.
    pub const HEALTHY: StandInAgent = StandInAgent {
        apps_json: r#"{"tilt":"healthy","code-server":"healthy","agents":"healthy"}"#,
        first_after_secs: 0,
    };
}

impl PodAction for StandInAgent {
    fn command(&self, ctx: &PodContext) -> Option<Command> {
        let env = ctx.local_env(workspace::CONTAINER_DEV);
        env.get(workspace::ENV_AGENT_TOKEN_FILE)?;
        let body = format!(
            r#"{{"lifecycle":"ready","apps":{},"version":"stand-in"}}"#,
            self.apps_json
        );
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            r#"sleep {delay}; while :; do curl -fsS -m 2 -X POST -H "Coder-Session-Token: $(cat "$CODER_AGENT_TOKEN_FILE")" -H 'content-type: application/json' -d '{body}' "$CODER_AGENT_URL{path}" >/dev/null 2>&1; sleep 1; done"#,
            path = lumie_contract::agent_api::HEARTBEAT_PATH,
            delay = self.first_after_secs,
        ));
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.envs(env);
        Some(c)
    }
}
