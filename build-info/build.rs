//! Stamps the git revision into `LUMIE_BUILD_REVISION` for `src/lib.rs`.
//!
//! `LUMIE_GIT_REVISION` (set by `scripts/build-static.sh` and image builds, which know whether
//! the tree is dirty) wins; otherwise `git rev-parse --short HEAD`, or `unknown` without git or
//! a repository (a source tarball). This script reruns only when HEAD moves (a commit, a
//! checkout) or the variable changes, never on an edit: the four binary packages depend on this
//! crate and rebuild when its output changes, and nothing else does (not `contract`). That is
//! also why a plain `cargo build` does not say `-dirty`: knowing it would mean rerunning on
//! every edit.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LUMIE_GIT_REVISION");
    let revision = match std::env::var("LUMIE_GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => {
            // HEAD (a checkout), its reflog (every commit, reset or checkout appends to it) and
            // the branch it points at; a worktree's HEAD and reflog are in its own git dir.
            // Only files that exist: Cargo reruns on every build for a missing one.
            let mut watch = vec![
                git(&["rev-parse", "--git-path", "HEAD"]),
                git(&["rev-parse", "--git-path", "logs/HEAD"]),
            ];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &r]));
            }
            for p in watch.into_iter().flatten() {
                let p = PathBuf::from(p);
                // --git-path may answer relative to the current directory.
                let p = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir().unwrap().join(p)
                };
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            git(&["rev-parse", "--short=7", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=LUMIE_BUILD_REVISION={revision}");
}
