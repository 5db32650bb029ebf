//! The repository's own tool installs that tests share: where the repository is, and the `helm`
//! and `kubectl` that `scripts/install-helm.sh` installs (cached across runs).

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
