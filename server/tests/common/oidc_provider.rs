//! The real OpenID provider (`tests/oidc/provider.js`, the npm package `oidc-provider`) for the
//! server's identity tests, configured like the Keycloak realm `infra`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The client secret the provider is started with.
pub const SECRET: &str = "s3cret-from-coder-oidc-secret";

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

/// `npm ci` once when `tests/oidc/node_modules` is missing (install-deps.sh normally did it).
fn ensure_node_modules() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = oidc_dir();
        if dir.join("node_modules/oidc-provider").is_dir() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm not found: run scripts/install-deps.sh (installs Node.js and npm)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    });
}

/// The provider process; killed when dropped.
pub struct Provider {
    /// The issuer URL (`…/realms/infra`).
    pub issuer: String,
    /// Base URL of its test-only admin endpoints (key rotation, clock offset).
    pub admin: String,
    _child: Child,
    _stdin: ChildStdin,
}

impl Provider {
    /// Starts it with `redirect_uri` allowed and extra environment.
    pub async fn start(redirect_uri: &str, env: &[(&str, &str)]) -> Provider {
        ensure_node_modules();
        let mut cmd = Command::new("node");
        cmd.arg("provider.js")
            .current_dir(oidc_dir())
            .env("OIDC_CLIENT_SECRET", SECRET)
            .env("OIDC_REDIRECT_URIS", redirect_uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("node not found: run scripts/install-deps.sh");
        let stdin = child.stdin.take().expect("piped stdin");
        // Pass its log on, minus the start-up warnings it prints every time (Node version,
        // in-memory adapter), which are expected here.
        let mut errors = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                if !line.starts_with("oidc-provider WARNING") {
                    eprintln!("provider.js: {line}");
                }
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let pid = child.id();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                // Say where it is stuck: a stall inside node (like the old key export deadlock)
                // looks different from one that never got the CPU.
                let wchan = pid
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok())
                    .unwrap_or_else(|| "unknown".into());
                panic!("provider.js (pid {pid:?}) did not start within 30s; it waits in {wchan}")
            })
            .expect("reading provider.js stdout")
            .expect("provider.js exited before printing its address");
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        Provider {
            issuer: ready["issuer"].as_str().expect("issuer").to_string(),
            admin: ready["admin"].as_str().expect("admin").to_string(),
            _child: child,
            _stdin: stdin,
        }
    }

    /// Calls one of its admin endpoints.
    pub async fn admin(&self, path: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("provider admin endpoint");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.expect("admin JSON")
    }
}

/// Fills in and submits the provider's login form, whose page `form_page` served `html`;
/// returns the form's action URL and the provider's answer (a redirect to resume the login).
pub async fn submit_login_form(
    http: &reqwest::Client,
    form_page: &reqwest::Url,
    html: &str,
    user: &str,
    password: &str,
) -> (reqwest::Url, reqwest::Response) {
    let action = html
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no login form in {html}"));
    let action = form_page.join(action).unwrap();
    let r = http
        .post(action.clone())
        .form(&[("username", user), ("password", password)])
        .send()
        .await
        .unwrap();
    (action, r)
}
