//! The static agent and CLI (issue 14) where the glibc build cannot go, against the real control
//! plane (cluster harness, webhook, lumie-server serving the static agents):
//! - a Debian 11 root (glibc 2.31, made by debootstrap; the glibc build fails there, needing a
//!   newer glibc): the static agent's `--version`, and a workspace pod's agent run chrooted in
//!   it heartbeats with its pod's projected token until the server shows it `connected`; its
//!   idle RSS is measured;
//! - a root holding only busybox-static: the pod's own entry (the init script) runs under
//!   busybox `sh`, picks amd64 from `uname -m`, downloads the agent with busybox wget, verifies it,
//!   execs it, and the server sees it `connected`; the static CLI answers `--version` there;
//! - the arm64 builds under `qemu-aarch64`: `--version` of both, and a pod's agent heartbeats
//!   to `connected`.
//!
//! Plus the footprint: stripped size ≤ 10 MiB and idle RSS ≤ 8 MiB for both architectures.
//!
//! Each chrooted pod runs in a mount namespace of its own (`unshare -m`) where its token volume,
//! `/dev` and `/proc` are bind-mounted into the root, so nothing is left mounted when it ends;
//! the chroot shares the host's loopback network, so it reaches the server as a pod would.
//! Nothing is skipped: a missing tool fails with what to install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::ResourceExt;
use lumie_contract::{labels, workspace};
use lumie_server::api::WorkspaceJson;
use lumie_tests::stack::{AgentStack, WorkspaceClient, agent_connected};
use lumie_tests::static_bins;
use lumie_tests::workspace_pods;
use lumie_tests::{Cluster, PodAction, PodContext, control_plane};

const STRIPPED_BUDGET: u64 = 10 * 1024 * 1024;
const IDLE_RSS_BUDGET_KIB: u64 = 8 * 1024;
/// Where the Debian root keeps the agent (copied in: minbase has neither curl nor wget).
const DEBIAN_AGENT: &str = "/opt/lumie/lumie-agent";
/// A standard PATH inside the roots.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `ROOT BINDS... -- PROGRAM ARGS...` chrooted in ROOT, each BIND (`host=inside`) and
/// `/dev`, `/proc` bind-mounted first; started under `unshare -m`, so the mounts are the
/// process's own and vanish with it.
const CHROOT_RUN: &str = r#"set -e
root=$1; shift
while [ "$1" != "--" ]; do
  mkdir -p "$root${1#*=}"
  mount --bind "${1%%=*}" "$root${1#*=}"
  shift
done
shift
mkdir -p "$root/dev" "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind /proc "$root/proc"
exec chroot "$root" "$@"
"#;

fn static_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| static_bins::build(static_bins::SHIPPED).unwrap())
}

/// The workspaces of this file, by name: how their pod runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Where {
    /// The static agent chrooted in the Debian 11 root.
    Debian11,
    /// The pod's init script under busybox `sh` chrooted in the busybox root.
    Busybox,
    /// The arm64 agent under qemu-aarch64, on the host.
    Arm64,
}

impl Where {
    fn workspace(self) -> &'static str {
        match self {
            Where::Debian11 => "static-debian11",
            Where::Busybox => "static-busybox",
            Where::Arm64 => "static-arm64",
        }
    }
}

struct Runner {
    debian: PathBuf,
    busybox: PathBuf,
    chroot_run: PathBuf,
    arm64_agent: PathBuf,
    qemu: PathBuf,
}

impl Runner {
    /// The pod's `dev` environment as the pod sees it (paths untouched: its volumes are mounted
    /// at their paths inside the root), with a root's PATH and the agent's folders.
    fn pod_env(ctx: &PodContext) -> BTreeMap<String, String> {
        let mut env = ctx
            .env
            .get(workspace::CONTAINER_DEV)
            .cloned()
            .unwrap_or_default();
        env.extend(
            [
                ("PATH", ROOT_PATH),
                ("HOME", "/root"),
                ("LUMIE_AGENT_BIN_DIR", "/tmp/lumie-agent"),
                ("LUMIE_AGENT_HOME_DIR", "/root"),
                ("LUMIE_INIT_RETRY_DELAY", "1"),
                ("LUMIE_AGENT_LOG", "info"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env
    }

    /// `host=inside` for each filled volume the `dev` container mounts, `inside` with the
    /// root's symlinks resolved (Debian's `/var/run` is a link to `/run`: a mount through it
    /// would land on the host's).
    fn binds(root: &Path, ctx: &PodContext) -> Vec<String> {
        let dev = ctx
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == workspace::CONTAINER_DEV);
        dev.into_iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .filter_map(|m| {
                let host = ctx.volumes.get(&m.name)?;
                let inside = resolve_in_root(root, Path::new(&m.mount_path));
                Some(format!("{}={}", host.display(), inside.display()))
            })
            .collect()
    }

    fn chrooted(&self, root: &Path, ctx: &PodContext, argv: &[String]) -> Command {
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["-m", "--propagation", "private", "/bin/sh"])
            .arg(&self.chroot_run)
            .arg(root)
            .args(Self::binds(root, ctx))
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(Self::pod_env(ctx));
        cmd
    }
}

impl PodAction for Runner {
    fn command(&self, ctx: &PodContext) -> Option<Command> {
        let name = ctx.pod.labels().get(labels::WORKSPACE)?.clone();
        let which = [Where::Debian11, Where::Busybox, Where::Arm64]
            .into_iter()
            .find(|w| w.workspace() == name)?;
        let log = std::fs::File::create(log_path(&name)).ok()?;
        let mut cmd = match which {
            Where::Debian11 => self.chrooted(&self.debian, ctx, &[DEBIAN_AGENT.to_string()]),
            Where::Busybox => {
                // The dev container's own command: the init script, under busybox sh.
                let argv = workspace_pods::dev_argv(&ctx.pod)?;
                self.chrooted(&self.busybox, ctx, &argv)
            }
            Where::Arm64 => {
                // On the host (qemu-user shares its network); the pod's files where the
                // simulator wrote them.
                let mut cmd = Command::new(&self.qemu);
                cmd.arg(&self.arm64_agent)
                    .env_clear()
                    .env("PATH", ROOT_PATH)
                    .envs(ctx.local_env(workspace::CONTAINER_DEV))
                    .env("LUMIE_AGENT_HOME_DIR", work_dir().join("arm64-home"))
                    .env("HOME", work_dir().join("arm64-home"));
                cmd
            }
        };
        cmd.stdout(log.try_clone().ok()?).stderr(log);
        Some(cmd)
    }
}

/// `path` as seen inside `root` with every symlink on the way resolved inside the root (an
/// absolute link target is relative to the root, not the host).
fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let on_host = root.join(next.strip_prefix("/").unwrap());
        match std::fs::read_link(&on_host) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                todo.extend(target.components().rev().filter_map(|c| match c {
                    std::path::Component::Normal(n) => Some(n.to_os_string()),
                    std::path::Component::ParentDir => Some("..".into()),
                    _ => None,
                }));
            }
            _ => at = next,
        }
    }
    at
}

#[test]
fn symlinks_resolve_inside_the_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("run")).unwrap();
    std::fs::create_dir_all(root.path().join("var/lib")).unwrap();
    std::os::unix::fs::symlink("/run", root.path().join("var/run")).unwrap();
    std::os::unix::fs::symlink("../run", root.path().join("var/rel")).unwrap();
    #[rustfmt::skip]
    let cases = [
        ("/var/run/secrets/token", "/run/secrets/token"),
        ("/var/rel/secrets", "/run/secrets"),
        ("/var/lib/x", "/var/lib/x"),
        ("/not/there/yet", "/not/there/yet"),
    ];
    for (path, want) in cases {
        assert_eq!(
            resolve_in_root(root.path(), Path::new(path)),
            Path::new(want),
            "{path}"
        );
    }
}

fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap().keep())
}

fn log_path(workspace: &str) -> PathBuf {
    work_dir().join(format!("{workspace}.log"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Debian 11 root, unpacked once from the debootstrap tarball, with the static agent and
/// the glibc (host-built) agent in `/opt/lumie`.
fn debian_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tarball = static_bins::debian11_tarball().unwrap();
        let root = work_dir().join("debian11");
        std::fs::create_dir_all(&root).unwrap();
        let (ok, _, err) = run(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xzf")
            .arg(&tarball));
        assert!(ok, "unpacking {}: {err}", tarball.display());
        let opt = root.join("opt/lumie");
        std::fs::create_dir_all(&opt).unwrap();
        std::fs::copy(
            static_dir().join("linux-amd64/lumie-agent"),
            opt.join("lumie-agent"),
        )
        .unwrap();
        std::fs::copy(
            workspace_pods::agent_binary().unwrap(),
            opt.join("lumie-agent-glibc"),
        )
        .unwrap();
        root
    })
}

/// A root holding only busybox-static (`/bin/busybox` and a link per applet), `/tmp`, `/root`
/// and a passwd with root, plus the static CLI in `/opt/lumie`.
fn busybox_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let busybox = static_bins::busybox_static().unwrap();
        let root = work_dir().join("busybox");
        for d in ["bin", "tmp", "root", "etc", "opt/lumie"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        let (ok, list, err) = run(Command::new(&busybox).arg("--list"));
        assert!(ok, "busybox --list: {err}");
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::copy(
            static_dir().join("linux-amd64/lumie"),
            root.join("opt/lumie/lumie"),
        )
        .unwrap();
        root
    })
}

static STACK: OnceLock<WorkspaceClient> = OnceLock::new();

/// The webhook, a server serving the static agents, and the runner above, started once: the
/// admin's client of it, a new one for each test (a client's pooled connections belong to the
/// runtime of the test that made them, which ends with it).
fn stack() -> WorkspaceClient {
    let shared = STACK.get_or_init(|| {
        let cluster = Cluster::shared();
        let static_dir = static_dir().to_path_buf();
        let runner = Runner {
            debian: debian_root().to_path_buf(),
            busybox: busybox_root().to_path_buf(),
            chroot_run: {
                let p = work_dir().join("chroot-run.sh");
                std::fs::write(&p, CHROOT_RUN).unwrap();
                p
            },
            arm64_agent: static_dir.join("linux-arm64/lumie-agent"),
            qemu: static_bins::qemu_aarch64().unwrap(),
        };
        std::fs::create_dir_all(work_dir().join("arm64-home")).unwrap();
        control_plane::start_shared(move || async move {
            let work = work_dir();
            let agents = static_bins::agent_binary_dir(&static_dir, work).unwrap();
            let stack = AgentStack::start(cluster, work, agents).await.unwrap();
            cluster.set_pod_action(Arc::new(runner));
            (stack.api.clone(), stack)
        })
    });
    WorkspaceClient::new(&shared.url, &shared.token)
}

/// Creates the workspace `w` and waits until its agent is `connected` (its heartbeats are
/// accepted); panics with the pod's log when it is not within 120 s.
async fn connected(api: &WorkspaceClient, w: Where) -> WorkspaceJson {
    let created = api.create("admin", w.workspace()).await;
    api.wait_for(
        &format!("{w:?}: the agent to connect"),
        &created.id,
        Duration::from_secs(120),
        &log_path(w.workspace()),
        agent_connected,
    )
    .await
}

/// The pid of the running agent of workspace `w`: a process whose command line names the
/// agent, chrooted into `root` (a chrooted process's `/proc/<pid>/root` is its root), or on the
/// host under qemu.
fn agent_pid(root: Option<&Path>, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(needle) {
            return None;
        }
        let in_root = std::fs::read_link(e.path().join("root")).ok()?;
        match root {
            Some(r) => (in_root == r).then_some(pid),
            None => (in_root == Path::new("/")).then_some(pid),
        }
    })
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The agent's idle RSS once it has been connected for a few heartbeats (1 s interval).
async fn idle_rss(root: Option<&Path>, needle: &str, what: &str) -> u64 {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = agent_pid(root, needle).unwrap_or_else(|| panic!("{what}: no agent process"));
    let kib = rss_kib(pid);
    eprintln!(
        "{what}: idle RSS {:.2} MiB (budget {} MiB)",
        kib as f64 / 1024.0,
        IDLE_RSS_BUDGET_KIB / 1024
    );
    kib
}

fn version_line(bin: &str) -> String {
    format!(
        "{bin} {} (rev {}",
        env!("CARGO_PKG_VERSION"),
        lumie_build_info::REVISION
    )
}

#[test]
fn static_builds_are_static_stripped_within_budget_and_name_their_revision() {
    let qemu = static_bins::qemu_aarch64().unwrap();
    for arch in static_bins::ARCHES {
        for bin in ["lumie-agent", "lumie"] {
            let path = static_dir().join(format!("linux-{arch}")).join(bin);
            let (ok, desc, err) = run(Command::new("file").arg("-b").arg(&path));
            assert!(ok, "file {}: {err}", path.display());
            assert!(
                desc.contains("statically linked") && desc.contains(", stripped"),
                "{arch} {bin}: {desc}"
            );
            assert!(!desc.contains("interpreter"), "{arch} {bin}: {desc}");
            let want_machine = if arch == "amd64" {
                "x86-64"
            } else {
                "ARM aarch64"
            };
            assert!(desc.contains(want_machine), "{arch} {bin}: {desc}");
            let size = std::fs::metadata(&path).unwrap().len();
            eprintln!(
                "{arch} {bin}: {size} bytes ({:.2} MiB) stripped",
                size as f64 / 1048576.0
            );
            if bin == "lumie-agent" {
                assert!(
                    size <= STRIPPED_BUDGET,
                    "{arch} agent: {size} bytes > 10 MiB"
                );
            }
            let mut cmd = if arch == "amd64" {
                Command::new(&path)
            } else {
                let mut c = Command::new(&qemu);
                c.arg(&path);
                c
            };
            let (ok, out, err) = run(cmd.arg("--version"));
            assert!(ok, "{arch} {bin} --version: {err}");
            assert!(out.starts_with(&version_line(bin)), "{arch} {bin}: {out:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian11_root_runs_the_static_agent_which_heartbeats() {
    let root = debian_root();
    let chroot = |args: &[&str]| {
        run(Command::new("chroot")
            .arg(root)
            .args(args)
            .env("PATH", ROOT_PATH))
    };
    // The root is the old glibc the issue names, and the glibc build indeed fails there.
    let (ok, out, err) = chroot(&["/usr/bin/ldd", "--version"]);
    assert!(ok && out.contains("2.31"), "ldd --version: {out}{err}");
    let (ok, _, err) = chroot(&["/opt/lumie/lumie-agent-glibc", "--version"]);
    assert!(
        !ok && err.contains("GLIBC_"),
        "the glibc agent in Debian 11: {err}"
    );
    let (ok, out, err) = chroot(&[DEBIAN_AGENT, "--version"]);
    assert!(ok, "static agent --version in Debian 11: {err}");
    assert!(out.starts_with(&version_line("lumie-agent")), "{out:?}");

    let s = stack();
    let ws = connected(&s, Where::Debian11).await;
    let agent = ws.agent.as_ref().unwrap();
    assert!(
        agent.version.starts_with(env!("CARGO_PKG_VERSION")),
        "{agent:?}"
    );
    let kib = idle_rss(Some(root), DEBIAN_AGENT, "amd64 agent in Debian 11").await;
    assert!(kib <= IDLE_RSS_BUDGET_KIB, "idle RSS {kib} KiB");
    s.build(&ws.id, "stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_root_init_script_downloads_verifies_and_execs_the_agent() {
    let root = busybox_root();
    // The static CLI runs where there is nothing but busybox.
    let (ok, out, err) = run(Command::new("chroot")
        .arg(root)
        .args(["/opt/lumie/lumie", "--version"]));
    assert!(ok, "lumie --version in the busybox root: {err}");
    assert!(out.starts_with(&version_line("lumie")), "{out:?}");

    let s = stack();
    let ws = connected(&s, Where::Busybox).await;
    let log = std::fs::read_to_string(log_path(Where::Busybox.workspace())).unwrap();
    let verified = log
        .lines()
        .find(|l| l.contains("verified"))
        .unwrap_or_else(|| panic!("no verified line: {log}"));
    assert!(
        verified.contains(&version_line("lumie-agent")) && verified.contains("via busybox-applet"),
        "{verified}"
    );
    // The arch came from `uname -m`: it downloaded the amd64 agent.
    let served = std::fs::read(root.join("tmp/lumie-agent/lumie-agent")).unwrap();
    let amd64 = std::fs::read(static_dir().join("linux-amd64/lumie-agent")).unwrap();
    assert!(
        served == amd64,
        "the downloaded agent is the static amd64 one"
    );
    let kib = idle_rss(
        Some(root),
        "/tmp/lumie-agent/lumie-agent",
        "amd64 agent in the busybox root",
    )
    .await;
    assert!(kib <= IDLE_RSS_BUDGET_KIB, "idle RSS {kib} KiB");
    s.build(&ws.id, "stop").await;
}

/// The guest's share of a qemu-user process's RSS, KiB, from `/proc/<pid>/smaps`: everything
/// but what is certainly the emulator's (its own executable's mappings, its malloc `[heap]`, its
/// `[stack]`, the vDSO, and the `rwx` translation buffer; the guest's code and data are never
/// `rwx`). An upper bound: anonymous memory qemu maps for itself counts as the guest's.
fn guest_rss_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut emulator) = (0u64, 0u64);
    let mut current_is_emulator = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let perms = f.next().unwrap_or_default();
            let name = line.split_whitespace().nth(5).unwrap_or_default();
            current_is_emulator = perms.starts_with("rwx")
                || name.contains("qemu-aarch64")
                || matches!(
                    name,
                    "[heap]" | "[stack]" | "[vdso]" | "[vvar]" | "[vsyscall]"
                );
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if current_is_emulator {
                emulator += kib;
            }
        }
    }
    (total - emulator, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_agent_heartbeats_under_qemu() {
    let s = stack();
    let ws = connected(&s, Where::Arm64).await;
    let agent = ws.agent.as_ref().unwrap();
    assert!(
        agent.version.starts_with(env!("CARGO_PKG_VERSION")),
        "{agent:?}"
    );
    let agent_path = static_dir().join("linux-arm64/lumie-agent");
    let needle = agent_path.display().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = agent_pid(None, &needle).expect("the arm64 agent under qemu");
    let (guest, total) = guest_rss_kib(pid);
    eprintln!(
        "arm64 agent under qemu-aarch64: idle RSS {:.2} MiB (at most; the whole emulator {:.2} MiB; budget {} MiB)",
        guest as f64 / 1024.0,
        total as f64 / 1024.0,
        IDLE_RSS_BUDGET_KIB / 1024
    );
    assert!(guest <= IDLE_RSS_BUDGET_KIB, "idle RSS {guest} KiB");
    s.build(&ws.id, "stop").await;
}
