//! What `cli.rs` and `cli_sessions.rs` share: the built `lumie` binary, running it as a fresh
//! user would (its own HOME, no terminal, nothing from the test's environment but PATH), and
//! the API calls that set a stack up (members and their tokens).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The `lumie` binary of this build (same profile and target folder as the running test),
/// built once per test process so it is never stale.
pub fn lumie_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable");
        let mut profile_dir = exe.parent().expect("deps folder").to_path_buf();
        if profile_dir.ends_with("deps") {
            profile_dir.pop();
        }
        let target_dir = profile_dir.parent().expect("target folder").to_path_buf();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "--quiet", "-p", "lumie-cli", "--bin", "lumie"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .stdout(Stdio::null());
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("running cargo build -p lumie-cli");
        let bin = profile_dir.join("lumie");
        assert!(
            status.success() && bin.is_file(),
            "cargo build -p lumie-cli: {status}, expected {}",
            bin.display()
        );
        bin
    })
}

/// What a `lumie` run gave.
#[derive(Debug)]
pub struct Out {
    /// Exit status (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Panics with both streams unless it exited 0.
    pub fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "lumie failed: {self:#?}");
        self
    }

    /// Panics unless it failed, and returns stderr.
    pub fn failed(self) -> String {
        assert_ne!(self.code, Some(0), "lumie should have failed: {self:#?}");
        self.stderr
    }
}

/// A user of the CLI: their own HOME (so their own `~/.config/lumie` and `~/.ssh`).
pub struct User {
    /// The home folder.
    pub home: tempfile::TempDir,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl User {
    /// A user with an empty home.
    pub fn new() -> User {
        User {
            home: tempfile::tempdir().expect("a home folder"),
            env: vec![],
        }
    }

    /// Where `lumie login` stores the credential for this user.
    pub fn credential_file(&self) -> PathBuf {
        self.home.path().join(".config/lumie/session.json")
    }

    /// The command, ready to run: cleared environment, HOME, PATH, no terminal on stdin.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(lumie_binary());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `lumie ARGS` to the end (at most two minutes).
    pub async fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None).await
    }

    /// Runs `lumie ARGS` with `input` on standard input (a pipe).
    pub async fn run_with_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Out {
        let mut c = self.command(args);
        if input.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().expect("lumie starts");
        if let Some(bytes) = input {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(bytes).await.unwrap();
            drop(stdin);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("lumie {args:?} did not finish within 2 minutes"))
            .expect("lumie runs");
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A member named `name` and a token of theirs, made by the admin.
pub async fn member(url: &str, admin_token: &str, name: &str) -> String {
    lumie_tests::control_plane::member(url, admin_token, name)
        .await
        .token
}

/// A workspace as the API shows it.
pub async fn workspace(url: &str, token: &str, owner: &str, name: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{url}/api/v2/users/{owner}/workspace/{name}"))
        .header("Coder-Session-Token", token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
