//! The static (musl) executables of `scripts/build-static.sh` for the tests and the demo: building
//! them (once per process, only the binaries asked for), where they land
//! (`<target>/static/linux-<arch>/`), the tools that run them elsewhere (`qemu-aarch64-static`,
//! busybox-static, the Debian 11 root tarball, all from `scripts/install-static-deps.sh`), and an
//! agent-binary folder serving them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::tools::repo_root;
use crate::{HarnessError, io_error};

/// The two architectures the agent and the CLI are built for.
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// What `scripts/build-static.sh` builds by default, and what ships: every binary for amd64,
/// the agent and the CLI for arm64. Tests ask for this set rather than fewer binaries: cargo
/// unifies features across the packages of one invocation, so another set is another build of
/// the whole dependency graph (minutes in CI), and this one is what the images carry (the amd64
/// agent is 7.1 MiB built with the server, 6.4 MiB alone).
pub const SHIPPED: &str = "agent,cli,server,webhook";

/// The cargo target folder the running test or demo executable was built in
/// (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`).
pub fn target_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(io_error("locating the current executable"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    Ok(dir)
}

/// `<target>/static/linux-<arch>/<bin>`, built or not.
pub fn path(arch: &str, bin: &str) -> Result<PathBuf, HarnessError> {
    Ok(target_dir()?
        .join("static")
        .join(format!("linux-{arch}"))
        .join(bin))
}

/// Builds `only` (build-static.sh words: agent, cli, server, webhook) for both architectures
/// (arm64 only has agent and cli), once per process and set of binaries, with the real release
/// profile; the `<target>/static/` folder. A failed build, or missing tools, is an error naming
/// what to install.
pub fn build(only: &str) -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Mutex<BTreeMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry(only.to_string())
        .or_insert_with(|| run_build(only).map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

fn run_build(only: &str) -> Result<PathBuf, HarnessError> {
    let target = target_dir()?;
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-static.sh"))
        .args(["--only", only])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .map_err(io_error("running scripts/build-static.sh"))?;
    if !out.status.success() {
        return Err(HarnessError::Build(format!(
            "scripts/build-static.sh --only {only} failed ({}); scripts/install-deps.sh installs what it needs:\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 40)
        )));
    }
    // What it printed (sizes, build time) is worth seeing in a test log.
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(target.join("static"))
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The cache of `scripts/install-static-deps.sh` (`LUMIE_CACHE_DIR`, default
/// `~/.cache/lumie-coder`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LUMIE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/lumie-coder")
        })
}

fn installed(path: PathBuf, what: &str) -> Result<PathBuf, HarnessError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::Build(format!(
            "{what} is not installed ({} is missing): run scripts/install-deps.sh",
            path.display()
        )))
    }
}

/// Debian's statically linked busybox (package busybox-static, unpacked into the cache).
pub fn busybox_static() -> Result<PathBuf, HarnessError> {
    installed(
        cache_dir().join("busybox-static/bin/busybox"),
        "busybox-static",
    )
}

/// The Debian 11 (bullseye, glibc 2.31) minbase root, as a tarball made by debootstrap.
pub fn debian11_tarball() -> Result<PathBuf, HarnessError> {
    installed(
        cache_dir().join("debian11-minbase.tar.gz"),
        "the Debian 11 root (debootstrap)",
    )
}

/// `qemu-aarch64-static` (package qemu-user-static), or `qemu-aarch64` (qemu-user).
pub fn qemu_aarch64() -> Result<PathBuf, HarnessError> {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        for name in ["qemu-aarch64-static", "qemu-aarch64"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(HarnessError::Build(
        "qemu-aarch64 is not installed (Debian package qemu-user-static): run scripts/install-deps.sh"
            .into(),
    ))
}

/// A folder laid out like the server's `LUMIE_AGENT_BINARY_DIR` with the static agents
/// (`lumie-agent-linux-amd64`, `-arm64`) and CLIs (`lumie-linux-amd64`, `-arm64`) that exist
/// under `static_dir`: what the server image carries.
pub fn agent_binary_dir(static_dir: &Path, under: &Path) -> Result<PathBuf, HarnessError> {
    let dir = under.join("agent-bin-static");
    std::fs::create_dir_all(&dir).map_err(io_error("creating the agent binary dir"))?;
    copy_into(static_dir, &dir)?;
    Ok(dir)
}

/// Copies the static agents and CLIs already built under `<target>/static/` into `dir` (an
/// agent-binary folder), replacing what is there; the names copied. Builds nothing: the demo
/// serves them when `scripts/build-static.sh` ran, and keeps its glibc agent otherwise.
pub fn serve_built(dir: &Path) -> Result<Vec<String>, HarnessError> {
    copy_into(&target_dir()?.join("static"), dir)
}

fn copy_into(static_dir: &Path, dir: &Path) -> Result<Vec<String>, HarnessError> {
    let mut copied = Vec::new();
    for arch in ARCHES {
        for bin in ["lumie-agent", "lumie"] {
            let src = static_dir.join(format!("linux-{arch}")).join(bin);
            if src.is_file() {
                let name = format!("{bin}-linux-{arch}");
                std::fs::copy(&src, dir.join(&name))
                    .map_err(io_error(format!("copying {}", src.display())))?;
                copied.push(name);
            }
        }
    }
    Ok(copied)
}
