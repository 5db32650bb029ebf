//! Running lumie-server against the harness, one way for every test, benchmark and the demo:
//! a [`Config`] on a free loopback port whose access and agent URLs name that port (the Host
//! guard accepts only the access URL's host, so the port must be known before start), and a
//! start as the control plane's own identity (`system:serviceaccount:coder:coder`).
//!
//! Also the real `lumie-server` process, for tests that kill, restart or run several of it: the
//! binary of this build ([`server_binary`]), its base environment ([`server_command`]) and a
//! start that waits for its `listening` line while echoing its log ([`spawn_until_listening`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lumie_server::config::Config;
use lumie_server::serve::Running;

use crate::{Cluster, HarnessError, Identity, io_error};

/// A loopback address with a port nobody listens on right now.
pub fn free_loopback_addr() -> Result<SocketAddr, HarnessError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(io_error("picking a free loopback port"))
}

/// The server's test settings (`Config::for_tests`, SQLite in `data_dir`, which is created)
/// listening on a free loopback port, with the access and agent URLs pointing at it.
pub fn server_config(data_dir: &Path) -> Result<Config, HarnessError> {
    std::fs::create_dir_all(data_dir)
        .map_err(io_error(format!("creating {}", data_dir.display())))?;
    let mut config = Config::for_tests(data_dir.to_path_buf());
    listen_on(&mut config, free_loopback_addr()?);
    Ok(config)
}

/// Points a config's listener, access URL and agent URL at `addr`.
pub fn listen_on(config: &mut Config, addr: SocketAddr) {
    config.listen = addr;
    config.access_url = format!("http://{addr}");
    config.agent_url = config.access_url.clone();
}

/// Starts lumie-server on `cluster` as the control plane.
pub async fn start_server(
    cluster: &Cluster,
    config: Config,
) -> lumie_server::error::StartupResult<Running> {
    lumie_server::serve::start(config, cluster.client_as(Identity::ControlPlane).await).await
}

/// A member the admin made, with an API token of their own.
pub struct Member {
    /// The user's id.
    pub id: String,
    /// Their API token (`Coder-Session-Token`).
    pub token: String,
}

/// Makes the member `username` and a token of theirs through the API, as the admin
/// (`admin_token`) of the server at `url`. Panics with the server's answer when it refuses:
/// this is test set-up.
pub async fn member(url: &str, admin_token: &str, username: &str) -> Member {
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let req = http
            .post(format!("{url}{path}"))
            .header("Coder-Session-Token", admin_token)
            .json(&body);
        async move {
            let resp = req.send().await.expect("the server answers");
            let status = resp.status();
            let json: serde_json::Value = resp.json().await.expect("a JSON answer");
            assert!(status.is_success(), "POST {path}: {status} {json}");
            json
        }
    };
    let user = post(
        "/api/v2/users".into(),
        serde_json::json!({ "username": username }),
    )
    .await;
    let id = user["id"].as_str().expect("a user id").to_string();
    let key = post(format!("/api/v2/users/{id}/keys"), serde_json::json!({})).await;
    let token = key["key"].as_str().expect("a token").to_string();
    Member { id, token }
}

/// Starts a per-test-binary shared stack (webhook, server, runners) on a runtime of its own, on
/// a thread that lives as long as the test process, and returns what `start` hands back; what
/// it keeps (the second value: servers, webhooks) lives as long as the process too. Each
/// `#[tokio::test]` has its own runtime that ends with it: a server started on one would die
/// with the first test. Wrap the call in a `OnceLock` so the stack starts once.
pub fn start_shared<T, K, F, Fut>(start: F) -> T
where
    T: Send + 'static,
    K: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (T, K)>,
{
    shared(None, start)
}

/// [`start_shared`] for a set-up that may hang (charts, a provider, policy syncs): a panic
/// after `within` rather than a test binary that never ends.
pub fn start_shared_within<T, K, F, Fut>(within: Duration, start: F) -> T
where
    T: Send + 'static,
    K: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (T, K)>,
{
    shared(Some(within), start)
}

fn shared<T, K, F, Fut>(within: Option<Duration>, start: F) -> T
where
    T: Send + 'static,
    K: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (T, K)>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the shared stack");
        rt.block_on(async move {
            let (shared, _keep) = start().await;
            if tx.send(shared).is_ok() {
                std::future::pending::<()>().await;
            }
        });
    });
    match within {
        None => rx.recv().expect("the shared stack starts"),
        Some(within) => rx
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("the shared stack did not start within {within:?}: {e}")),
    }
}

/// The `lumie-server` binary of this build (`CARGO_BIN_EXE_*` only exists for the crate's own
/// tests), next to the test executable: `cargo build` (same profile) brings it up to date first,
/// once per process.
pub fn server_binary() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_server_binary().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

fn build_server_binary() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(io_error("locating the current executable"))?;
    // target/<profile>/deps/<test>
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Without what `cargo test` set for this process (package variables, the library path):
    // build scripts that watch them would rebuild here, and again in the next `cargo test`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&k.as_str());
        if (k.starts_with("CARGO_") && !keep) || k == "LD_LIBRARY_PATH" || k == "OUT_DIR" {
            cargo.env_remove(&k);
        }
    }
    cargo
        .args(["build", "-p", "lumie-server", "--bin", "lumie-server"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdout(Stdio::null());
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .map_err(io_error("running cargo build -p lumie-server"))?;
    let bin = profile_dir.join("lumie-server");
    if !status.success() || !bin.exists() {
        return Err(HarnessError::Build(format!(
            "cargo build -p lumie-server: {status}, expected {}",
            bin.display()
        )));
    }
    Ok(bin)
}

/// [`server_binary`] with the environment every test process of it starts from: nothing
/// inherited but `PATH`, logs at info without colour (the tests read them), listening on `addr`
/// as the control plane (its kubeconfig). With `own_urls` the access and agent URLs are
/// `http://addr`; without, the caller sets them (replicas behind a balancer are reached as it).
pub fn server_command(
    cluster: &Cluster,
    addr: SocketAddr,
    own_urls: bool,
) -> Result<Command, HarnessError> {
    let mut cmd = Command::new(server_binary()?);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("LUMIE_LISTEN_ADDR", addr.to_string())
        .env("KUBECONFIG", cluster.kubeconfig(Identity::ControlPlane));
    if own_urls {
        let base = format!("http://{addr}");
        cmd.env("CODER_ACCESS_URL", &base)
            .env("LUMIE_AGENT_URL", &base);
    }
    Ok(cmd)
}

/// How a spawned server's log (its stderr) reaches the test.
pub struct Echo {
    /// Each echoed line's prefix (`lumie-server[127.0.0.1:PORT]`).
    pub label: String,
    /// Which lines are echoed to the test's stderr (a test about one concern filters the rest,
    /// which would drown it).
    pub filter: fn(&str) -> bool,
    /// Every line is also kept here, when set (for assertions on what a server logged).
    pub keep: Option<Arc<Mutex<Vec<String>>>>,
}

impl Echo {
    /// Every line, prefixed `label`.
    pub fn all(label: impl Into<String>) -> Echo {
        Echo {
            label: label.into(),
            filter: |_| true,
            keep: None,
        }
    }
}

/// How long a server has to say it listens: a cold start migrates its database first.
pub const LISTEN_WITHIN: Duration = Duration::from_secs(60);

/// The line lumie-server logs once it accepts connections.
const LISTENING: &str = "lumie-server listening";

/// Spawns `cmd` (a lumie-server, from [`server_command`] or another way of running it) with
/// `stdout` and its stderr echoed as `echo` says, and returns once it logged that it listens,
/// within [`LISTEN_WITHIN`]; otherwise it is killed and the error says how it ended.
pub fn spawn_until_listening(
    cmd: &mut Command,
    stdout: Stdio,
    echo: Echo,
) -> Result<Child, HarnessError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error(format!("running {}", echo.label)))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let label = echo.label.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if (echo.filter)(&line) {
                eprintln!("{}: {line}", echo.label);
            }
            if line.contains(LISTENING)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            if let Some(keep) = &echo.keep {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }
    });
    // Listening in time, or the process ended (the sender is dropped at EOF).
    if rx.recv_timeout(LISTEN_WITHIN).is_err() {
        let _ = child.kill();
        let ended = child.wait();
        return Err(HarnessError::Server(format!(
            "{label} did not start listening within {LISTEN_WITHIN:?}: {ended:?}"
        )));
    }
    Ok(child)
}
