//! Agent distribution: `GET/HEAD /bin/lumie-agent-{os}-{arch}` from `LUMIE_AGENT_BINARY_DIR`
//! with its sha256 in [`SHA256_HEADER`], and the init script at
//! `GET /api/v2/init-script/{os}/{arch}`; [`missing_binary_warning`] is what `/readyz` says
//! when there is nothing to serve (every new workspace pod would wait for its agent forever).
//! The developer CLI is served beside it from the same folder, `GET /bin/lumie-{os}-{arch}` ([`CLI_PREFIX`]), with the same checksum header.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::state::AppState;
use crate::template::INIT_SCRIPT;

/// Response header carrying the binary's sha256 (hex).
pub const SHA256_HEADER: &str = "X-Lumie-Agent-Sha256";
/// Binary name prefix.
pub const BINARY_PREFIX: &str = "lumie-agent-";
/// The CLI's binary name prefix (`lumie-linux-amd64`).
pub const CLI_PREFIX: &str = "lumie-";

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/bin/{file}", get(binary))
        .route("/api/v2/init-script/{os}/{arch}", get(init_script))
}

type ShaKey = (PathBuf, SystemTime, u64);
static SHA_CACHE: LazyLock<Mutex<HashMap<PathBuf, (ShaKey, String)>>> =
    LazyLock::new(Default::default);

/// Whether `name` is `lumie-agent-<os>-<arch>` with plain lowercase parts (no path tricks).
pub fn valid_binary_name(name: &str) -> bool {
    valid_name(name, BINARY_PREFIX)
}

/// Whether `name` is the CLI's `lumie-<os>-<arch>` (never an agent name: its arch would
/// contain a `-`).
pub fn valid_cli_name(name: &str) -> bool {
    valid_name(name, CLI_PREFIX)
}

fn valid_name(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some((os, arch)) = rest.split_once('-') else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    part(os) && part(arch)
}

/// Binaries available in `dir`, sorted.
pub fn available(dir: &FsPath) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| valid_binary_name(n))
        .collect();
    names.sort();
    names
}

/// The pods download this one (the init script asks for linux/amd64 on an amd64 node).
pub const POD_BINARY: &str = "lumie-agent-linux-amd64";
/// Every architecture the init script picks from `uname -m`, with the binary it downloads
/// (`scripts/build-static.sh` builds both; the server image ships both).
pub const POD_BINARIES: [(&str, &str); 2] = [
    ("amd64", "lumie-agent-linux-amd64"),
    ("arm64", "lumie-agent-linux-arm64"),
];

/// What `/readyz` and `doctor` say about the binaries in `dir`: nothing when every pod
/// architecture's binary is there, else which architectures are missing and what is there
/// instead.
pub fn missing_binary_warning(dir: &FsPath, available: &[String]) -> Option<String> {
    let missing: Vec<(&str, &str)> = POD_BINARIES
        .into_iter()
        .filter(|(_, name)| !available.iter().any(|n| n == name))
        .collect();
    if missing.is_empty() {
        return None;
    }
    if available.is_empty() {
        return Some(format!(
            "no agent binary to serve: {} (LUMIE_AGENT_BINARY_DIR) holds no {BINARY_PREFIX}<os>-<arch> file, so new workspace pods cannot download their agent",
            dir.display()
        ));
    }
    let names: Vec<&str> = missing.iter().map(|(_, n)| *n).collect();
    let arches: Vec<&str> = missing.iter().map(|(a, _)| *a).collect();
    Some(format!(
        "no {} in {} (LUMIE_AGENT_BINARY_DIR; it has {}), so workspace pods on {} nodes cannot download their agent",
        names.join(" or "),
        dir.display(),
        available.join(", "),
        arches.join(" and "),
    ))
}

async fn sha256_of(path: &FsPath, bytes: &[u8], modified: SystemTime) -> String {
    let key = (path.to_path_buf(), modified, bytes.len() as u64);
    if let Some((k, sum)) = SHA_CACHE.lock().expect("sha cache").get(path)
        && *k == key
    {
        return sum.clone();
    }
    let sum = hex::encode(Sha256::digest(bytes));
    SHA_CACHE
        .lock()
        .expect("sha cache")
        .insert(path.to_path_buf(), (key, sum.clone()));
    sum
}

fn not_found(dir: &FsPath, what: &str) -> Response {
    let list = available(dir);
    let body = if list.is_empty() {
        format!(
            "no agent binary {what}: none available in {} (LUMIE_AGENT_BINARY_DIR)\n",
            dir.display()
        )
    } else {
        format!("no agent binary {what}; available: {}\n", list.join(", "))
    };
    (StatusCode::NOT_FOUND, body).into_response()
}

async fn binary(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let dir = state.config.agent_binary_dir.clone();
    if !valid_binary_name(&file) && !valid_cli_name(&file) {
        return not_found(&dir, &file);
    }
    let path = dir.join(&file);
    let (bytes, meta) = match (tokio::fs::read(&path).await, std::fs::metadata(&path)) {
        (Ok(b), Ok(m)) => (b, m),
        _ if valid_cli_name(&file) => {
            let body = format!(
                "no CLI binary {file} in {} (LUMIE_AGENT_BINARY_DIR)\n",
                dir.display()
            );
            return (StatusCode::NOT_FOUND, body).into_response();
        }
        _ => return not_found(&dir, &file),
    };
    let sum = sha256_of(
        &path,
        &bytes,
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    )
    .await;
    (
        [
            (
                http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (http::header::CACHE_CONTROL, "no-cache".to_string()),
            (http::HeaderName::from_static("x-lumie-agent-sha256"), sum),
        ],
        bytes,
    )
        .into_response()
}

async fn init_script(
    State(state): State<AppState>,
    Path((os, arch)): Path<(String, String)>,
) -> Response {
    let name = format!("{BINARY_PREFIX}{os}-{arch}");
    if os != "linux" || !valid_binary_name(&name) {
        return (
            StatusCode::NOT_FOUND,
            format!("no init script for {os}/{arch}; available: linux/amd64, linux/arm64\n"),
        )
            .into_response();
    }
    let _ = state;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/x-shellscript; charset=utf-8",
        )],
        INIT_SCRIPT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_table() {
        let dir = FsPath::new("/opt/lumie/agent");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        #[rustfmt::skip]
        let cases = [
            // An amd64-only folder was fine before arm64 builds existed; now arm64 pods lack theirs.
            (names(&["lumie-agent-linux-amd64"]), Some("no lumie-agent-linux-arm64 in /opt/lumie/agent (LUMIE_AGENT_BINARY_DIR; it has lumie-agent-linux-amd64), so workspace pods on arm64 nodes cannot")),
            (names(&["lumie-agent-linux-amd64", "lumie-agent-linux-arm64"]), None),
            (names(&[]), Some("no agent binary to serve: /opt/lumie/agent (LUMIE_AGENT_BINARY_DIR)")),
            (names(&["lumie-agent-linux-arm64"]), Some("no lumie-agent-linux-amd64 in /opt/lumie/agent (LUMIE_AGENT_BINARY_DIR; it has lumie-agent-linux-arm64), so workspace pods on amd64 nodes cannot")),
            (names(&["lumie-agent-darwin-arm64"]), Some("no lumie-agent-linux-amd64 or lumie-agent-linux-arm64 in /opt/lumie/agent (LUMIE_AGENT_BINARY_DIR; it has lumie-agent-darwin-arm64), so workspace pods on amd64 and arm64 nodes cannot")),
        ];
        for (list, want) in cases {
            let got = missing_binary_warning(dir, &list);
            match want {
                None => assert_eq!(got, None, "{list:?}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(w)),
                    "{list:?}: {got:?}"
                ),
            }
        }
        // A missing directory reads as empty.
        let gone = FsPath::new("/nonexistent/lumie-agent-dir");
        assert!(available(gone).is_empty());
        assert!(missing_binary_warning(gone, &available(gone)).is_some());
    }

    #[test]
    fn binary_names() {
        for ok in [
            "lumie-agent-linux-amd64",
            "lumie-agent-linux-arm64",
            "lumie-agent-darwin-x86_64",
        ] {
            assert!(valid_binary_name(ok), "{ok}");
        }
        for bad in [
            "lumie-agent-linux",
            "lumie-agent-../etc-passwd",
            "lumie-agent-linux-amd64/x",
            "other-linux-amd64",
            "lumie-agent--amd64",
            "lumie-agent-Linux-amd64",
        ] {
            assert!(!valid_binary_name(bad), "{bad}");
        }
        for ok in ["lumie-linux-amd64", "lumie-darwin-arm64"] {
            assert!(valid_cli_name(ok) && !valid_binary_name(ok), "{ok}");
        }
        for bad in [
            "lumie-agent-linux-amd64",
            "lumie-linux",
            "lumie-../x-y",
            "lumie-linux-amd64.exe",
        ] {
            assert!(!valid_cli_name(bad), "{bad}");
        }
    }
}
