//! The end-to-end stacks the test binaries share, assembled one way: a throwaway PostgreSQL
//! ([`Postgres`]), the in-process server with the webhook and the overlay's Service in front of
//! real workspace pods ([`AgentStack`]), and an admin's client of the workspace API that waits
//! for a workspace state ([`WorkspaceClient`]), and the waits and counts the tests around them
//! share ([`eventually`], [`count_by_workspace`]).
//!
//! The pieces it is built from stay where they were: the webhook in [`crate::admission`], the
//! server and its process in [`crate::control_plane`], pods and the Service in
//! [`crate::workspace_pods`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use lumie_server::api::WorkspaceJson;
use lumie_server::config::Config;
use lumie_server::serve::Running;
use lumie_webhook::server::RunningServer;

use crate::tools::repo_root;
use crate::{Cluster, HarnessError, admission, control_plane, io_error, workspace_pods};

/// A PostgreSQL server of this test process (`scripts/start-postgres.sh`, stopped by its
/// watchdog when the process exits).
pub struct Postgres {
    /// The URL of its empty `lumie` database.
    pub url: String,
    /// Its data directory (from the script's `pg_ctl stop -D <dir>` line), for a restart.
    pub data_dir: PathBuf,
}

impl Postgres {
    /// Starts one; the script's progress goes to the test's stderr.
    pub fn start() -> Result<Postgres, HarnessError> {
        let out = Command::new(repo_root().join("scripts/start-postgres.sh"))
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(io_error("running scripts/start-postgres.sh"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        let failed = |why: &str| HarnessError::Startup {
            component: "postgres",
            reason: format!("scripts/start-postgres.sh: {why} ({})", out.status),
            log_tail: stderr.to_string(),
        };
        if !out.status.success() {
            return Err(failed("failed"));
        }
        let data_dir = stderr
            .split("pg_ctl stop -D ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .map(|d| PathBuf::from(d.trim()))
            .ok_or_else(|| failed("no data directory in its output"))?;
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| l.trim().to_string())
            .ok_or_else(|| failed("no URL line"))?;
        Ok(Postgres { url, data_dir })
    }

    /// Restarts it (`pg_ctl restart -m fast`): every connection of every client drops.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(io_error("listing /usr/lib/postgresql"))?
            .filter_map(|e| {
                let p = e.ok()?.path().join("bin/pg_ctl");
                p.exists().then_some(p)
            })
            .max()
            .ok_or_else(|| HarnessError::Build("no pg_ctl under /usr/lib/postgresql".into()))?;
        // The server runs as `postgres` when the tests run as root (initdb refuses root).
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = cmd
            .args(["restart", "-m", "fast", "-w", "-t", "30", "-D"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .status()
            .map_err(io_error("running pg_ctl restart"))?;
        if !status.success() {
            return Err(HarnessError::Startup {
                component: "postgres",
                reason: format!("pg_ctl restart: {status}"),
                log_tail: String::new(),
            });
        }
        Ok(())
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The in-process stack in front of workspace pods running the real agent: the registered
/// webhook, the overlay's `dev-workspace` Service, and lumie-server serving `agent_binary_dir`
/// with a one-second agent report interval (so connection changes show quickly). What it holds
/// must outlive the tests using it.
pub struct AgentStack {
    /// The webhook (it stops when dropped).
    pub webhook: RunningServer,
    /// The server (it stops when dropped).
    pub server: Running,
    /// The config it was started with (for a restart on the same address and data).
    pub config: Config,
    /// The admin's client (the first-admin token).
    pub api: WorkspaceClient,
}

impl AgentStack {
    /// Starts it on `cluster`, with the webhook's files, the server's data (`dir/server`) and
    /// whatever the caller adds under `dir`.
    pub async fn start(
        cluster: &Cluster,
        dir: &Path,
        agent_binary_dir: PathBuf,
    ) -> Result<AgentStack, HarnessError> {
        let webhook = start_workspace_admission(cluster, dir).await?;
        let mut config = control_plane::server_config(&dir.join("server"))?;
        config.agent_binary_dir = agent_binary_dir;
        config.agent_report_interval = Duration::from_secs(1);
        let server = control_plane::start_server(cluster, config.clone())
            .await
            .map_err(|e| HarnessError::Server(e.to_string()))?;
        let token = server
            .first_admin_token
            .clone()
            .ok_or_else(|| HarnessError::Server("no first-admin token printed".into()))?;
        let api = WorkspaceClient::new(&config.access_url, &token);
        Ok(AgentStack {
            webhook,
            server,
            config,
            api,
        })
    }
}

/// What a cluster needs before real workspace pods are created in `lumie-dev`: the webhook
/// ([`admission::start_registered_webhook`], files in `dir`) and the overlay's Service.
pub async fn start_workspace_admission(
    cluster: &Cluster,
    dir: &Path,
) -> Result<RunningServer, HarnessError> {
    let webhook = admission::start_registered_webhook(cluster, dir).await?;
    workspace_pods::install_stable_service(&cluster.client().await).await?;
    Ok(webhook)
}

/// One user's client of a server's workspace API. Calls panic with the server's answer when
/// it refuses: they are test set-up and waits, not what a test asserts.
#[derive(Clone)]
pub struct WorkspaceClient {
    /// The server's URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The user's token (`Coder-Session-Token`).
    pub token: String,
    /// The HTTP client (connections kept).
    pub http: reqwest::Client,
}

/// How often [`WorkspaceClient::wait_for`] asks: the states it waits on have no event a client
/// could watch short of the SSE stream, and a fifth of a second is well below what they take.
const POLL: Duration = Duration::from_millis(200);

impl WorkspaceClient {
    /// A client of `url` as the holder of `token`.
    pub fn new(url: &str, token: &str) -> WorkspaceClient {
        WorkspaceClient {
            url: url.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `body` as JSON: the status and the answer (JSON, or the text as a
    /// JSON string), whatever they are, for tests asserting on refusals too.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .request(
                method.parse().expect("an HTTP method"),
                format!("{}{path}", self.url),
            )
            .header("Coder-Session-Token", &self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("an answer body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Creates the workspace `name` of `owner` (`me`, `admin`, a username).
    pub async fn create(&self, owner: &str, name: &str) -> WorkspaceJson {
        self.http
            .post(format!("{}/api/v2/users/{owner}/workspaces", self.url))
            .header("Coder-Session-Token", &self.token)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("the server answers")
            .error_for_status()
            .expect("the workspace is created")
            .json()
            .await
            .expect("a workspace")
    }

    /// The workspace `id` as the API shows it now.
    pub async fn workspace(&self, id: &str) -> WorkspaceJson {
        self.http
            .get(format!("{}/api/v2/workspaces/{id}", self.url))
            .header("Coder-Session-Token", &self.token)
            .send()
            .await
            .expect("the server answers")
            .error_for_status()
            .expect("the workspace is shown")
            .json()
            .await
            .expect("a workspace")
    }

    /// Starts a build of the workspace `id` (`start`, `stop`, `delete`).
    pub async fn build(&self, id: &str, transition: &str) {
        self.http
            .post(format!("{}/api/v2/workspaces/{id}/builds", self.url))
            .header("Coder-Session-Token", &self.token)
            .json(&serde_json::json!({ "transition": transition }))
            .send()
            .await
            .expect("the server answers")
            .error_for_status()
            .expect("the build is accepted");
    }

    /// Asks for the workspace `id` until `check` holds, and returns it then; after `within`,
    /// panics with `what`, the last state and the pod's `dev` log (`log`), which says why.
    pub async fn wait_for(
        &self,
        what: &str,
        id: &str,
        within: Duration,
        log: &Path,
        check: impl Fn(&WorkspaceJson) -> bool,
    ) -> WorkspaceJson {
        let deadline = Instant::now() + within;
        loop {
            let ws = self.workspace(id).await;
            if check(&ws) {
                return ws;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!(
                    "timed out after {within:?} waiting for {what}: {ws:#?}\n--- dev container log ---\n{log}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether the workspace's agent is `connected` (its heartbeats are accepted).
pub fn agent_connected(ws: &WorkspaceJson) -> bool {
    ws.agent.as_ref().is_some_and(|a| a.status == "connected")
}

/// Calls `f` every `every` until it gives a value, and returns it; panics naming `what` after
/// `within`. For states seen from outside with no event to wait on (a Lease write, a row, an
/// object the reconciler restores): `every` is what the state's own pace allows.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// How many of `objects` carry each workspace id (`None`: no workspace-id label at all): one
/// of each per workspace is what "nothing duplicated, nothing orphaned" means.
pub fn count_by_workspace<K: ResourceExt>(objects: &[K]) -> BTreeMap<Option<String>, usize> {
    let mut counts = BTreeMap::new();
    for o in objects {
        let id = o
            .labels()
            .get(lumie_contract::labels::WORKSPACE_ID)
            .cloned();
        *counts.entry(id).or_default() += 1;
    }
    counts
}
