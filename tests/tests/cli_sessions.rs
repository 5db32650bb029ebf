//! Getting into a workspace with the `lumie` CLI, end to end: the real binary, lumie-server's
//! session routes (`/api/v2/workspaces/{id}/sessions/ssh` and `…/tcp/{port}`), and the real
//! agent (downloaded by the pod's init script, as in `agent_e2e.rs`) with its SSH server, on
//! the harness behind the real webhook.
//!
//! - `lumie ssh WS -- CMD`: exec without a PTY, stdout/stderr apart, the exit status;
//! - an interactive `lumie ssh WS` in tmux: a prompt, a command, a resize, exit;
//! - Debian's OpenSSH with the `lumie config-ssh` block: `ssh lumie.WS true`, `scp` of 10 MiB
//!   both ways;
//! - `lumie port-forward`: 100 MiB with a matching checksum, 200 concurrent connections;
//! - a member is refused another member's workspace (CLI and route), a stopped workspace's route
//!   answers 409.
//!
//! One server and one running workspace (`mia/dev`) for the binary, on a runtime of its own:
//! the stand-in apps the agent checks listen on the contract's fixed ports of 127.0.0.1. In the
//! harness a pod shares the host's network, so "port P inside the workspace" is 127.0.0.1:P here.

mod cli_common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cli_common::{User, free_port, lumie_binary, member, workspace};
use lumie_tests::workspace_pods::{self, DevContainerRunner, StandInApps};
use lumie_tests::{Cluster, admission, control_plane};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Stack {
    url: String,
    admin_token: String,
    mia_token: String,
    /// Per-pod folders: the dev container's log is `pods/<pod>.log`.
    pods: PathBuf,
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        control_plane::start_shared(move || async move {
            let cluster = Cluster::shared();
            let admin = cluster.client().await;
            let work = tempfile::tempdir().unwrap().keep();
            let webhook = admission::start_registered_webhook(cluster, &work)
                .await
                .unwrap();
            workspace_pods::install_stable_service(&admin)
                .await
                .unwrap();
            let mut config = control_plane::server_config(&work.join("server")).unwrap();
            config.agent_binary_dir = workspace_pods::agent_binary_dir(&work).unwrap();
            config.agent_report_interval = Duration::from_secs(1);
            let url = config.access_url.clone();
            let server = control_plane::start_server(cluster, config)
                .await
                .expect("lumie-server starts");
            let admin_token = server.first_admin_token.clone().unwrap();
            let apps = StandInApps::start(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .await
                .unwrap();
            let pods = work.join("pods");
            let mut runner = DevContainerRunner::new(&pods);
            std::fs::create_dir_all(&runner.work_dir).unwrap();
            runner.extra_env.extend([(
                "LUMIE_AGENT_HEALTH_INTERVAL".to_string(),
                "500ms".to_string(),
            )]);
            cluster.set_pod_action(Arc::new(runner));
            let mia_token = member(&url, &admin_token, "mia").await;
            (
                Stack {
                    url,
                    admin_token,
                    mia_token,
                    pods,
                },
                (server, webhook, apps),
            )
        })
    })
}

/// A user signed in with `token`.
async fn signed_in(token: &str) -> User {
    let user = User::new();
    user.run(&["login", &stack().url, "--token", token])
        .await
        .ok();
    user
}

/// mia, with `mia/dev` running (created once, by the first test to get here).
async fn mia() -> User {
    static CREATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let s = stack();
    let user = signed_in(&s.mia_token).await;
    CREATED
        .get_or_init(|| async {
            let out = user.run(&["create", "dev", "--timeout", "3m"]).await;
            if out.code != Some(0) {
                let logs: String = std::fs::read_dir(&s.pods)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                panic!("mia/dev did not start: {out:#?}\n--- pod logs ---\n{logs}");
            }
        })
        .await;
    user
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes that do not repeat in short runs.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_a_command_with_its_exit_status_and_separate_streams() {
    let user = mia().await;
    let out = user
        .run(&["ssh", "dev", "--", "sh", "-c", "echo $((6*7)); exit 3"])
        .await;
    assert_eq!(out.stdout, "42\n", "{out:#?}");
    assert_eq!(out.code, Some(3), "{out:#?}");
    let out = user
        .run(&["ssh", "dev", "--", "sh", "-c", "echo out; echo err >&2"])
        .await
        .ok();
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{out:#?}");
    assert!(!out.stdout.contains("err"));
    // Standard input reaches the remote command, and its end is the remote's end of input.
    let out = user
        .run_with_stdin(&["ssh", "dev", "--", "wc -c"], Some(&[b'x'; 5000]))
        .await
        .ok();
    assert_eq!(out.stdout.trim(), "5000");
}

/// tmux's view of a pane.
fn capture(session: &str) -> String {
    let out = std::process::Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .expect("tmux is installed: scripts/install-deps.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tmux(args: &[&str]) {
    let ok = std::process::Command::new("tmux")
        .args(args)
        .status()
        .expect("tmux runs")
        .success();
    assert!(ok, "tmux {args:?}");
}

async fn until_pane(session: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pane = capture(session);
        if check(&pane) {
            return pane;
        }
        assert!(Instant::now() < deadline, "no {what} in the pane:\n{pane}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_ssh_in_a_terminal_prompt_command_resize_exit() {
    let user = mia().await;
    let session = format!("lumie-cli-{}", std::process::id());
    let status_file = user.home.path().join("status");
    let command = format!(
        "env -i PATH=\"$PATH\" HOME='{home}' TERM=xterm-256color '{lumie}' ssh dev; echo \"exit=$?\" > '{status}'; sleep 30",
        home = user.home.path().display(),
        lumie = lumie_binary().display(),
        status = status_file.display(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    let _cleanup = KillSession(session.clone());
    until_pane(&session, "prompt", |p| {
        p.lines().any(|l| {
            let l = l.trim_end();
            l.ends_with('$') || l.ends_with('#') || l.ends_with('>')
        })
    })
    .await;
    tmux(&["send-keys", "-t", &session, "echo hello-$((40+2))", "Enter"]);
    until_pane(&session, "command output", |p| p.contains("hello-42")).await;
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "40"]);
    tmux(&["send-keys", "-t", &session, "stty size", "Enter"]);
    until_pane(&session, "the new size", |p| p.contains("40 120")).await;
    tmux(&["send-keys", "-t", &session, "exit 7", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&status_file)
        .unwrap_or_default()
        .trim()
        != "exit=7"
    {
        assert!(
            Instant::now() < deadline,
            "lumie ssh did not end with the shell's status:\n{}",
            capture(&session)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_with_the_config_ssh_block_runs_true_and_copies_10_mib_both_ways() {
    let user = mia().await;
    let config = user.home.path().join(".ssh/config");
    user.run(&["config-ssh"]).await.ok();
    let ssh = |args: &[&str]| {
        let mut c = std::process::Command::new("ssh");
        c.arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes"])
            .args(args);
        c.env("HOME", user.home.path());
        c
    };
    let out = ssh(&["lumie.dev", "true"])
        .output()
        .expect("ssh (openssh-client) is installed");
    assert!(out.status.success(), "ssh lumie.dev true: {out:?}");

    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.bin");
    let payload = data(10 << 20, 7);
    std::fs::write(&up, &payload).unwrap();
    let remote = dir.path().join("remote.bin");
    let scp = |from: String, to: String| {
        let out = std::process::Command::new("scp")
            .arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes", "-q", &from, &to])
            .env("HOME", user.home.path())
            .output()
            .expect("scp runs");
        assert!(out.status.success(), "scp {from} {to}: {out:?}");
    };
    scp(
        up.display().to_string(),
        format!("lumie.dev:{}", remote.display()),
    );
    // The workspace's own view of what arrived.
    let out = ssh(&["lumie.dev", &format!("sha256sum '{}'", remote.display())])
        .output()
        .unwrap();
    let remote_sum = String::from_utf8_lossy(&out.stdout);
    assert!(remote_sum.starts_with(&sha256(&payload)), "{remote_sum}");
    let down = dir.path().join("down.bin");
    scp(
        format!("lumie.dev:{}", remote.display()),
        down.display().to_string(),
    );
    assert_eq!(sha256(&std::fs::read(&down).unwrap()), sha256(&payload));
}

/// An echo server on 127.0.0.1 ("inside the workspace" in the harness).
async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Sends `payload` through `port` and reads as many bytes back.
async fn round_trip(port: u16, payload: Arc<Vec<u8>>) -> Vec<u8> {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let len = payload.len();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w
    });
    let mut got = vec![0u8; len];
    r.read_exact(&mut got).await.unwrap();
    drop(writer.await.unwrap());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_100_mib_and_200_concurrent_connections() {
    let user = mia().await;
    let remote = echo_server().await;
    let local = free_port();
    let mut child = user
        .command(&["port-forward", "dev", "--tcp", &format!("{local}:{remote}")])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("port-forward starts")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        first,
        format!("Forwarding 127.0.0.1:{local} → dev:{remote}")
    );

    let payload = Arc::new(data(100 << 20, 1));
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(300), round_trip(local, payload.clone()))
        .await
        .expect("100 MiB within 5 minutes");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(sha256(&got), sha256(&payload));
    println!("100 MiB each way through port-forward in {secs:.1} s");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        tasks.spawn(async move {
            let p = Arc::new(data(16 << 10, i + 100));
            let got = round_trip(local, p.clone()).await;
            assert_eq!(got, *p, "connection {i}");
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("200 concurrent connections within 2 minutes");
    assert_eq!(all, 200);
    child.kill().await.ok();
}

/// Opens a session route directly: the HTTP status before (or of) the upgrade, and the body.
async fn route_status(path: &str, token: &str) -> (u16, String) {
    let url = format!("{}{path}", stack().url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Coder-Session-Token", token.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, resp)) => {
            ws.close(None).await.ok();
            (resp.status().as_u16(), String::new())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_refused_another_members_workspace_and_a_stopped_one_says_so() {
    let _ = mia().await;
    let s = stack();
    let dev = workspace(&s.url, &s.mia_token, "me", "dev").await;
    let id = dev["id"].as_str().unwrap();
    // mia herself is let in (so the refusals below are not a missing route).
    let (status, body) = route_status(
        &format!("/api/v2/workspaces/{id}/sessions/ssh"),
        &s.mia_token,
    )
    .await;
    assert_eq!(status, 101, "{body}");

    let max_token = member(&s.url, &s.admin_token, "max").await;
    let max = signed_in(&max_token).await;
    for args in [
        &["ssh", "mia/dev", "--", "true"][..],
        &["ssh", "mia/dev", "--stdio"],
        &["port-forward", "mia/dev", "--tcp", "0:80"],
    ] {
        let e = max.run(args).await.failed();
        assert!(e.contains("no workspace mia/dev"), "{args:?}: {e}");
    }
    for route in ["ssh", "tcp/22", "terminal?rows=24&cols=80"] {
        let (status, body) = route_status(
            &format!("/api/v2/workspaces/{id}/sessions/{route}"),
            &max_token,
        )
        .await;
        assert_eq!(status, 404, "{route}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("the JSON error shape");
        assert!(json["message"].is_string(), "{body}");
    }

    // A stopped workspace of max's own: the route answers 409, the CLI says how to start it.
    max.run(&["create", "parked", "--timeout", "3m"]).await.ok();
    max.run(&["stop", "parked"]).await.ok();
    let parked = workspace(&s.url, &max_token, "me", "parked").await;
    let (status, body) = route_status(
        &format!(
            "/api/v2/workspaces/{}/sessions/ssh",
            parked["id"].as_str().unwrap()
        ),
        &max_token,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let e = max.run(&["ssh", "parked", "--", "true"]).await.failed();
    assert!(e.contains("run `lumie start parked`"), "{e}");
}
