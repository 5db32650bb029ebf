//! Starting the control plane (etcd, kube-apiserver, kube-scheduler) on free loopback ports in a
//! temp dir, and handing out clients for each identity.
//!
//! One cluster per test process: [`Cluster::shared`] starts it on first use on a runtime of its
//! own (so every `#[tokio::test]` can make its own client on its own runtime) and a watchdog
//! process kills every component and removes the temp dir when the test process exits, also after
//! a panic. [`Cluster::start`] gives an owned cluster that is torn down on drop (the demo).

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use lumie_webhook::certs::CertificateAuthority;

use crate::simulator::{PodAction, Simulator};

/// Who a client acts as. Each is a line in the apiserver's static token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// `lumie-admin`, in `system:masters`.
    Admin,
    /// The control plane's ServiceAccount, `system:serviceaccount:coder:coder`.
    ControlPlane,
    /// A developer holding the workspace account, `system:serviceaccount:lumie-dev:dev-workspace`.
    Developer,
    /// `system:kube-scheduler`, used by the scheduler.
    Scheduler,
}

impl Identity {
    /// Every identity in the token file.
    pub const ALL: [Identity; 4] = [
        Identity::Admin,
        Identity::ControlPlane,
        Identity::Developer,
        Identity::Scheduler,
    ];

    /// The username the apiserver sees.
    pub fn username(self) -> &'static str {
        match self {
            Identity::Admin => "lumie-admin",
            Identity::ControlPlane => "system:serviceaccount:coder:coder",
            Identity::Developer => "system:serviceaccount:lumie-dev:dev-workspace",
            Identity::Scheduler => "system:kube-scheduler",
        }
    }

    fn groups(self) -> &'static str {
        match self {
            Identity::Admin => "system:masters,system:authenticated",
            Identity::ControlPlane => {
                "system:serviceaccounts,system:serviceaccounts:coder,system:authenticated"
            }
            Identity::Developer => {
                "system:serviceaccounts,system:serviceaccounts:lumie-dev,system:authenticated"
            }
            Identity::Scheduler => "system:authenticated",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Identity::Admin => "admin",
            Identity::ControlPlane => "control-plane",
            Identity::Developer => "developer",
            Identity::Scheduler => "scheduler",
        }
    }
}

/// Why the harness could not start or be reached.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binaries could not be provided.
    #[error(
        "install-binaries.sh failed ({0}); run tests/cluster/install-binaries.sh by hand to see why"
    )]
    Binaries(String),
    /// A binary the tests run (the agent, the stand-in apps) is missing or did not build.
    #[error("{0}")]
    Build(String),
    /// A component did not come up; the message carries the tail of its log.
    #[error(
        "{component} did not start: {reason}\n--- last lines of {component}.log ---\n{log_tail}"
    )]
    Startup {
        /// etcd, kube-apiserver or kube-scheduler.
        component: &'static str,
        /// What was observed.
        reason: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Local I/O (temp dir, files, spawning).
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Generating certificates or keys.
    #[error("generating harness credentials: {0}")]
    Credentials(String),
    /// A kube API call while bootstrapping.
    #[error("{0}: {1}")]
    Kube(String, kube::Error),
    /// The cluster did not do something in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The real webhook could not be started for a stack.
    #[error("lumie-webhook: {0}")]
    Webhook(String),
    /// The load balancer (haproxy) in front of several servers did not start.
    #[error("haproxy: {0}")]
    Balancer(String),
    /// A lumie-server process did not start.
    #[error("lumie-server: {0}")]
    Server(String),
}

/// Wraps an I/O error with what was being done.
pub fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |e| HarnessError::Io(what, e)
}

/// A running local control plane.
pub struct Cluster {
    dir: PathBuf,
    server_url: String,
    ca: CertificateAuthority,
    tokens: BTreeMap<Identity, String>,
    processes: Mutex<Vec<(&'static str, Child)>>,
    simulator: Arc<Simulator>,
    /// Removed on drop for an owned cluster; the watchdog removes it for the shared one.
    temp: Option<tempfile::TempDir>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The cluster of this test process, started on first use. Panics with the components' log
    /// tails when it cannot start: every test that needs it would fail anyway.
    pub fn shared() -> &'static Cluster {
        let started = SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("lumie-harness".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("harness runtime");
                    rt.block_on(async move {
                        let started = Cluster::start_inner(true).await;
                        let failed = started.is_err();
                        let _ = tx.send(started);
                        if !failed {
                            // The simulator's tasks live on this runtime for the whole process.
                            std::future::pending::<()>().await;
                        }
                    });
                })
                .expect("spawning the harness thread");
            rx.recv()
                .expect("harness thread ended")
                .map_err(|e| e.to_string())
        });
        match started {
            Ok(cluster) => cluster,
            Err(e) => panic!("local cluster did not start: {e}"),
        }
    }

    /// An owned cluster, torn down on drop. Its background tasks run on the caller's runtime.
    pub async fn start() -> Result<Cluster, HarnessError> {
        Cluster::start_inner(false).await
    }

    async fn start_inner(shared: bool) -> Result<Cluster, HarnessError> {
        let bin_dir = install_binaries()?;
        let temp = temp_dir()?;
        let dir = temp.path().to_path_buf();

        let ca = CertificateAuthority::generate("lumie-coder harness CA", 30)
            .map_err(|e| HarnessError::Credentials(e.to_string()))?;
        let serving = ca
            .issue_server(
                &[
                    "localhost".to_string(),
                    "kubernetes".to_string(),
                    "kubernetes.default.svc".to_string(),
                ],
                &[Ipv4Addr::LOCALHOST.into()],
                30,
            )
            .map_err(|e| HarnessError::Credentials(e.to_string()))?;
        let sa_key =
            rcgen::KeyPair::generate().map_err(|e| HarnessError::Credentials(e.to_string()))?;
        write(&dir.join("ca.crt"), ca.cert_pem())?;
        write(&dir.join("apiserver.crt"), &serving.cert_pem)?;
        write(&dir.join("apiserver.key"), &serving.key_pem)?;
        write(&dir.join("sa.key"), &sa_key.serialize_pem())?;
        // 1.20 reads public keys only from PUBLIC KEY blocks, not from PKCS#8 private keys.
        write(&dir.join("sa.pub"), &sa_key.public_key_pem())?;
        let tokens: BTreeMap<Identity, String> = Identity::ALL
            .into_iter()
            .map(|id| (id, random_token()))
            .collect();
        let token_file: String = tokens
            .iter()
            .map(|(id, t)| format!("{t},{},{},\"{}\"\n", id.username(), id.slug(), id.groups()))
            .collect();
        write(&dir.join("tokens.csv"), &token_file)?;

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let mut cluster = Cluster {
            dir: dir.clone(),
            server_url,
            ca,
            tokens,
            processes: Mutex::new(Vec::new()),
            simulator: Arc::new(Simulator::default()),
            temp: Some(temp),
        };
        for id in Identity::ALL {
            cluster.write_kubeconfig(id)?;
        }

        cluster.spawn(
            "etcd",
            Command::new(bin_dir.join("etcd")).args([
                "--name=default".to_string(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--log-level=warn".to_string(),
            ]),
        )?;
        let d = |f: &str| dir.join(f).display().to_string();
        cluster.spawn(
            "kube-apiserver",
            Command::new(bin_dir.join("kube-apiserver")).args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".to_string(),
                "--advertise-address=127.0.0.1".to_string(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".to_string(),
                format!("--cert-dir={}", d("apiserver-certs")),
                format!("--tls-cert-file={}", d("apiserver.crt")),
                format!("--tls-private-key-file={}", d("apiserver.key")),
                format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC".to_string(),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
                "--api-audiences=https://kubernetes.default.svc.cluster.local".to_string(),
                "--service-cluster-ip-range=10.96.0.0/16".to_string(),
                "--allow-privileged=true".to_string(),
                "--feature-gates=EphemeralContainers=true".to_string(),
                "--enable-admission-plugins=NodeRestriction".to_string(),
                "--disable-admission-plugins=StorageObjectInUseProtection".to_string(),
                "--enable-priority-and-fairness=false".to_string(),
                "--endpoint-reconciler-type=none".to_string(),
                "--profiling=false".to_string(),
                "--v=0".to_string(),
            ]),
        )?;
        cluster.wait_ready("kube-apiserver").await?;

        cluster.spawn(
            "kube-scheduler",
            Command::new(bin_dir.join("kube-scheduler")).args([
                format!(
                    "--kubeconfig={}",
                    cluster.kubeconfig(Identity::Scheduler).display()
                ),
                "--leader-elect=false".to_string(),
                "--port=0".to_string(),
                "--secure-port=0".to_string(),
                "--v=0".to_string(),
            ]),
        )?;

        let admin = cluster.client().await;
        crate::bootstrap::install(&admin).await?;
        crate::nodes::create_all(&admin).await?;
        cluster.simulator.clone().run(admin, cluster.dir.clone());

        if shared {
            // Statics are never dropped: from here on the watchdog owns the cleanup.
            start_watchdog(&cluster.dir)?;
            if let Some(t) = cluster.temp.take() {
                let _ = t.keep();
            }
        }
        Ok(cluster)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA the apiserver's serving certificate is signed by; also trusted for webhook certs.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The cluster's temp dir (logs, credentials).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig file acting as `who` (for kubectl, helm, or a server under test).
    pub fn kubeconfig(&self, who: Identity) -> PathBuf {
        self.dir.join(format!("kubeconfig-{}", who.slug()))
    }

    /// The bearer token of `who`.
    pub fn token(&self, who: Identity) -> &str {
        &self.tokens[&who]
    }

    /// An admin client. Make one per test: a client belongs to the runtime it was made on.
    pub async fn client(&self) -> kube::Client {
        self.client_as(Identity::Admin).await
    }

    /// A client acting as `who`.
    pub async fn client_as(&self, who: Identity) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(who)).expect("harness kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("harness kubeconfig is valid");
        kube::Client::try_from(config).expect("harness client")
    }

    /// What the node simulator runs for each pod it starts (replaces the previous action).
    pub fn set_pod_action(&self, action: Arc<dyn PodAction>) {
        *self.simulator.action.write().expect("action lock") = Some(action);
    }

    /// Stops running anything for new pods.
    pub fn clear_pod_action(&self) {
        *self.simulator.action.write().expect("action lock") = None;
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`, `kube-scheduler`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(&self.dir.join(format!("{component}.log")), lines)
    }

    fn write_kubeconfig(&self, who: Identity) -> Result<(), HarnessError> {
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lumie\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: lumie\n  context:\n    cluster: lumie\n    user: {user}\n    namespace: default\ncurrent-context: lumie\n",
            url = self.server_url,
            ca = self.dir.join("ca.crt").display(),
            user = who.slug(),
            token = self.tokens[&who],
        );
        write(&self.kubeconfig(who), &body)
    }

    fn spawn(&mut self, component: &'static str, cmd: &mut Command) -> Result<(), HarnessError> {
        let log = fs::File::create(self.dir.join(format!("{component}.log")))
            .map_err(io_error(format!("creating {component}.log")))?;
        use std::os::unix::process::CommandExt;
        // Loopback only: a proxy from the environment must never carry webhook or API calls.
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_error("log handle"))?)
            .stderr(log)
            .spawn()
            .map_err(io_error(format!("starting {component}")))?;
        record_pid(&self.dir.join("pids"), child.id())?;
        self.processes
            .lock()
            .expect("process lock")
            .push((component, child));
        Ok(())
    }

    async fn wait_ready(&self, component: &'static str) -> Result<(), HarnessError> {
        let ca = reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes())
            .map_err(|e| HarnessError::Credentials(e.to_string()))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| HarnessError::Credentials(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(exit) = self.exited(component) {
                return Err(self.startup_error(component, format!("exited: {exit}")));
            }
            match http
                .get(format!("{}/readyz", self.server_url))
                .bearer_auth(self.token(Identity::Admin))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("/readyz answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(self.startup_error(component, format!("not ready after 90 s ({last})")))
    }

    fn exited(&self, component: &str) -> Option<String> {
        let mut procs = self.processes.lock().expect("process lock");
        let (_, child) = procs.iter_mut().find(|(c, _)| *c == component)?;
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    fn startup_error(&self, component: &'static str, reason: String) -> HarnessError {
        let mut tails = String::new();
        for c in ["etcd", "kube-apiserver", "kube-scheduler"] {
            let path = self.dir.join(format!("{c}.log"));
            if path.exists() && c != component {
                tails.push_str(&format!(
                    "--- last lines of {c}.log ---\n{}\n",
                    log_tail(&path, 10)
                ));
            }
        }
        HarnessError::Startup {
            component,
            reason,
            log_tail: format!(
                "{}\n{tails}",
                log_tail(&self.dir.join(format!("{component}.log")), 30)
            ),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.simulator.stop_all();
        let mut procs = self.processes.lock().expect("process lock");
        for (_, child) in procs.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Shared state handle so the simulator can be reached by [`Cluster::set_pod_action`].
pub(crate) type ActionSlot = RwLock<Option<Arc<dyn PodAction>>>;

fn install_binaries() -> Result<PathBuf, HarnessError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/install-binaries.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_error("running install-binaries.sh"))?;
    if !out.status.success() {
        return Err(HarnessError::Binaries(out.status.to_string()));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(dir))
}

fn temp_dir() -> Result<tempfile::TempDir, HarnessError> {
    // etcd fsyncs on every write; tmpfs makes that free.
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("lumie-cluster-");
    if let Ok(t) = b.tempdir_in(shm) {
        return Ok(t);
    }
    b.tempdir()
        .map_err(io_error("creating the cluster temp dir"))
}

fn write(path: &Path, body: &str) -> Result<(), HarnessError> {
    fs::write(path, body).map_err(io_error(format!("writing {}", path.display())))
}

pub(crate) fn record_pid(pid_dir: &Path, pid: u32) -> Result<(), HarnessError> {
    fs::create_dir_all(pid_dir).map_err(io_error("creating the pid dir"))?;
    write(&pid_dir.join(pid.to_string()), "")
}

/// A detached shell that waits for this process to exit, then kills every recorded process
/// group and removes the temp dir: statics are never dropped, and a panicking test must not
/// leave an apiserver behind.
fn start_watchdog(dir: &Path) -> Result<(), HarnessError> {
    let script = format!(
        r#"while kill -0 {me} 2>/dev/null; do sleep 0.5; done
for f in "{dir}"/pids/*; do p=$(basename "$f"); kill -TERM -"$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
sleep 1
for f in "{dir}"/pids/*; do p=$(basename "$f"); kill -KILL -"$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
rm -rf "{dir}""#,
        me = std::process::id(),
        dir = dir.display()
    );
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io_error("starting the harness watchdog"))?;
    Ok(())
}

fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_error("finding a free port"))?
        .port())
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("FLAG:")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
