//! The repository's own tool installs that tests share: where the repository is, the `helm`
//! and `kubectl` that `scripts/install-helm.sh` installs (cached across runs), and running helm.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (the harness crate sits in `tests/`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
}

/// The folder holding `helm` and `kubectl`, installed once per test process.
pub fn helm_tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/install-helm.sh"))
            .output()
            .expect("running scripts/install-helm.sh");
        assert!(
            out.status.success(),
            "scripts/install-helm.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(dir.join("helm").is_file(), "no helm in {}", dir.display());
        assert!(
            dir.join("kubectl").is_file(),
            "no kubectl in {}",
            dir.display()
        );
        dir
    })
}

/// Runs helm from the repository root with its caches and config kept away from the user's;
/// Ok(stdout) or Err(stderr).
pub fn helm(args: &[&str]) -> Result<String, String> {
    let home = std::env::temp_dir().join("lumie-helm");
    let out = Command::new(helm_tools().join("helm"))
        .args(args)
        .current_dir(repo_root())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
