//! Sessions into a workspace end to end (issue 13): the real webhook and server on the shared
//! harness, a workspace whose pod runs the real agent (downloaded by its init script) on its
//! pod IP, and clients of the server's session routes as the CLI is one: the WebSocket with the
//! `Coder-Session-Token` header and no `Origin`.
//!
//! - SSH: a Rust SSH client (russh) over the `ssh` route runs `sh -c 'echo $((6*7)); exit 3'`
//!   and gets `42` and exit status 3 (stderr apart); Debian's OpenSSH client, with a pipe to the
//!   route as its `ProxyCommand`, runs commands and `scp` (SFTP) copies 10 MiB both ways;
//! - terminal: a prompt, a command, a resize (`stty size`), `exit 5` → the `exit` message;
//! - TCP: 100 MiB echoed through the `tcp` route with matching SHA-256, and 200 connections at
//!   once;
//! - refusals: another member's workspace is 404 on every route; a bad port 400; a stopped
//!   workspace 409; a direct connection to the agent's session port with no ticket, an expired
//!   one, a replayed one or another workspace's is refused;
//! - every session is audited with its bytes and counted in the metrics, and marks the
//!   workspace used;
//! - the dashboard's terminal tab in Debian's chromium (`tests/browser/terminal.test.mjs`).
//!
//! One test, in order, on one workspace.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use lumie_contract::sessions::{SessionKind, SessionRequest, TerminalControl};
use lumie_contract::workspace::SESSION_PORT;
use lumie_server::api::{KeyJson, WorkspaceJson};
use lumie_tests::stack::{AgentStack, WorkspaceClient, agent_connected};
use lumie_tests::workspace_pods::{self, DevContainerRunner};
use lumie_tests::{Cluster, ws};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> T {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("Coder-Session-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    async fn member(&self, admin: &str, name: &str) -> String {
        let _: serde_json::Value = self
            .json(
                reqwest::Method::POST,
                "/api/v2/users",
                admin,
                Some(serde_json::json!({ "username": name })),
            )
            .await;
        let key: KeyJson = self
            .json(
                reqwest::Method::POST,
                &format!("/api/v2/users/{name}/keys"),
                admin,
                None,
            )
            .await;
        key.key
    }
}

/// A direct connection to the agent's session port, as another pod could make: the request
/// line, and the answer line.
async fn direct(addr: SocketAddr, line: &str) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut answer))
        .await
        .expect("the agent answers")
        .unwrap();
    answer.trim_end().to_string()
}

fn request(ticket: String, kind: SessionKind, port: Option<u16>) -> String {
    serde_json::to_string(&SessionRequest {
        ticket,
        kind,
        port,
        rows: None,
        cols: None,
    })
    .unwrap()
}

/// Reads terminal output until `want` appears (or panics with what came).
async fn read_until(socket: &mut ws::Socket, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => panic!("control message before {want:?}: {t}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("terminal ended before {want:?} ({other:?}); saw: {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_ssh_and_tcp_through_the_control_plane() {
    let cluster = Cluster::shared();
    let work = tempfile::tempdir().unwrap();
    let agents = workspace_pods::agent_binary_dir(work.path()).unwrap();
    let AgentStack {
        webhook,
        server,
        api: admin_api,
        ..
    } = AgentStack::start(cluster, work.path(), agents)
        .await
        .unwrap();
    let (url, admin) = (admin_api.url, admin_api.token);

    // The agent's apps are not checked: sessions need the agent, not the apps.
    let runner = DevContainerRunner::created(work.path().join("pods"))
        .unwrap()
        .with_env(
            "LUMIE_AGENT_APP_HEALTH",
            "tilt=disabled,code-server=disabled,agents=disabled",
        );
    cluster.set_pod_action(Arc::new(runner));

    let api = Api {
        url: url.clone(),
        http: reqwest::Client::new(),
    };
    let alice = api.member(&admin, "alice").await;
    let bob = api.member(&admin, "bob").await;
    let created: WorkspaceJson = api
        .json(
            reqwest::Method::POST,
            "/api/v2/users/me/workspaces",
            &alice,
            Some(serde_json::json!({"name": "sess"})),
        )
        .await;
    let id = created.id.clone();
    let log = work
        .path()
        .join("pods")
        .join(format!("{}.log", created.pod_name));
    WorkspaceClient::new(&url, &alice)
        .wait_for(
            "the workspace to run with its agent",
            &id,
            Duration::from_secs(120),
            &log,
            |ws| agent_connected(ws) && serde_json::to_value(ws.status).unwrap() == "running",
        )
        .await;
    let base = format!("{url}/api/v2/workspaces/{id}/sessions");

    // SSH through the route: exec with the exit status, stdout and stderr apart.
    let socket = ws::connect(&format!("{base}/ssh"), &alice).await.unwrap();
    let ssh = ws::ssh(socket, "coder").await.unwrap();
    let out = ws::exec(&ssh, "sh -c 'echo $((6*7)); exit 3'")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{out:?}");
    assert_eq!(out.status, Some(3), "{out:?}");
    let out = ws::exec(&ssh, "echo out; echo err >&2; echo $HOME")
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.starts_with("out\n"), "{out:?}");
    assert!(stdout.contains("/home"), "HOME is the workspace's: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status, Some(0));
    // An interactive shell on a PTY: the size from pty-req, window-change, the exit status.
    let mut shell = ssh.channel_open_session().await.unwrap();
    shell
        .request_pty(true, "xterm-256color", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    shell.request_shell(true).await.unwrap();
    let mut screen = String::new();
    let mut status = None;
    let mut expect =
        async |shell: &mut russh::Channel<russh::client::Msg>, screen: &mut String, want: &str| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !screen.contains(want) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, shell.wait()).await {
                    Ok(Some(russh::ChannelMsg::Data { data })) => {
                        screen.push_str(&String::from_utf8_lossy(&data))
                    }
                    Ok(Some(russh::ChannelMsg::ExitStatus { exit_status })) => {
                        status = Some(exit_status)
                    }
                    Ok(Some(_)) => {}
                    other => panic!("shell ended before {want:?} ({other:?}): {screen:?}"),
                }
            }
        };
    shell.data(&b"stty size\r"[..]).await.unwrap();
    expect(&mut shell, &mut screen, "24 80").await;
    shell.window_change(100, 40, 0, 0).await.unwrap();
    shell.data(&b"stty size\r"[..]).await.unwrap();
    expect(&mut shell, &mut screen, "40 100").await;
    shell.data(&b"exit 6\r"[..]).await.unwrap();
    while let Some(msg) = shell.wait().await {
        if let russh::ChannelMsg::ExitStatus { exit_status } = msg {
            status = Some(exit_status);
        }
    }
    assert_eq!(status, Some(6), "{screen:?}");
    let _ = ssh
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;

    // Debian's OpenSSH client, the route as its ProxyCommand (the CLI's `ssh --stdio` role).
    let home = work.path().join("ssh-home");
    std::fs::create_dir_all(&home).unwrap();
    let pipe = env!("CARGO_BIN_EXE_lumie-ws-pipe");
    let ssh_args = |cmd: &str| {
        let mut c = std::process::Command::new(cmd);
        c.env("HOME", &home)
            .env("LUMIE_SESSION_TOKEN", &alice)
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("ProxyCommand={pipe} {base}/ssh"))
            .stdin(Stdio::null());
        c
    };
    let run =
        |mut c: std::process::Command| tokio::task::spawn_blocking(move || c.output().unwrap());
    let o = run({
        let mut c = ssh_args("ssh");
        c.args(["lumie.sess", "true"]);
        c
    })
    .await
    .unwrap();
    assert!(o.status.success(), "ssh true: {o:?}");
    let o = run({
        let mut c = ssh_args("ssh");
        c.args(["lumie.sess", "echo hi; exit 7"]);
        c
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    // scp (SFTP since OpenSSH 9): 10 MiB up, then down, same checksum.
    let local = work.path().join("ten-mib");
    let data: Vec<u8> = (0..10 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let o = run({
        let mut c = ssh_args("scp");
        c.arg(&local).arg("lumie.sess:uploaded.bin");
        c
    })
    .await
    .unwrap();
    assert!(o.status.success(), "scp up: {o:?}");
    let back = work.path().join("back");
    let o = run({
        let mut c = ssh_args("scp");
        c.arg("lumie.sess:uploaded.bin").arg(&back);
        c
    })
    .await
    .unwrap();
    assert!(o.status.success(), "scp down: {o:?}");
    assert_eq!(
        Sha256::digest(std::fs::read(&back).unwrap()),
        Sha256::digest(&data),
        "10 MiB round trip through scp"
    );

    // The terminal: a prompt, a command, a resize, the exit code.
    let mut term = ws::connect(&format!("{base}/terminal?rows=24&cols=80"), &alice)
        .await
        .unwrap();
    let mut seen = String::new();
    term.send(Message::Binary(
        b"PS1='lumie> '; export PS1\r".to_vec().into(),
    ))
    .await
    .unwrap();
    read_until(&mut term, &mut seen, "lumie> ").await;
    term.send(Message::Binary(b"echo $((6*7))\r".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut term, &mut seen, "42\r\n").await;
    term.send(Message::Text(
        serde_json::to_string(&TerminalControl::Resize {
            rows: 40,
            cols: 100,
        })
        .unwrap()
        .into(),
    ))
    .await
    .unwrap();
    term.send(Message::Binary(b"stty size\r".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut term, &mut seen, "40 100").await;
    term.send(Message::Binary(b"exit 5\r".to_vec().into()))
        .await
        .unwrap();
    let exit = loop {
        match tokio::time::timeout(Duration::from_secs(10), term.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                break serde_json::from_str::<TerminalControl>(&t).unwrap();
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no exit message: {other:?}"),
        }
    };
    assert_eq!(exit, TerminalControl::Exit { code: 5 });
    match tokio::time::timeout(Duration::from_secs(5), term.next()).await {
        Ok(None) | Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) => {}
        other => panic!("the server closes after the exit message: {other:?}"),
    }

    // TCP: an echo server in the "pod" (the agent's app host, 127.0.0.1).
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let socket = ws::connect(&format!("{base}/tcp/{echo_port}"), &alice)
        .await
        .unwrap();
    let (mut tx, mut rx) = socket.split();
    const TOTAL: usize = 100 << 20;
    let send = async {
        let mut sent = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        for i in 0..TOTAL / chunk.len() {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i * 31 + j * 7) as u8;
            }
            sent.update(&chunk);
            tx.send(Message::Binary(chunk.clone().into()))
                .await
                .unwrap();
        }
        (sent.finalize(), tx)
    };
    let receive = async {
        let mut got = Sha256::new();
        let mut n = 0;
        while n < TOTAL {
            match rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    n += b.len();
                    got.update(&b);
                }
                Some(Ok(_)) => {}
                other => panic!("echo ended after {n} bytes: {other:?}"),
            }
        }
        got.finalize()
    };
    let ((sent, mut tx), got) = tokio::join!(send, receive);
    assert_eq!(sent, got, "100 MiB echoed through server and agent");
    tx.send(Message::Close(None)).await.unwrap();

    // 200 connections at once.
    let conns = futures::future::join_all((0..200).map(|i| {
        let (url, token) = (format!("{base}/tcp/{echo_port}"), alice.clone());
        async move {
            let mut s = ws::connect(&url, &token)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let msg = format!("connection {i}");
            s.send(Message::Binary(msg.clone().into_bytes().into()))
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < msg.len() {
                match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
                    other => panic!("connection {i}: {other:?}"),
                }
            }
            assert_eq!(got, msg.as_bytes());
            s
        }
    }))
    .await;
    assert_eq!(conns.len(), 200);
    for mut s in conns {
        let _ = s.close(None).await;
    }
    // Nothing listens there: a clear refusal before the upgrade, not a hang.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = ws::connect(&format!("{base}/tcp/{closed}"), &alice)
        .await
        .unwrap_err();
    let (status, body) = ws::refusal(&e).expect("an HTTP answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("port {closed}")), "{body}");

    // Refusals before the upgrade, in the API's JSON error shape.
    for route in ["ssh", "terminal", "tcp/8080"] {
        let e = ws::connect(&format!("{base}/{route}"), &bob)
            .await
            .unwrap_err();
        let (status, body) = ws::refusal(&e).expect("an HTTP answer");
        assert_eq!(status, 404, "bob on alice's {route}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["message"].as_str().unwrap().contains("not found"),
            "{body}"
        );
    }
    for port in ["0", "65536", "http"] {
        let e = ws::connect(&format!("{base}/tcp/{port}"), &alice)
            .await
            .unwrap_err();
        assert_eq!(ws::refusal(&e).unwrap().0, 400, "port {port}");
    }
    let e = ws::connect(&format!("{base}/ssh"), "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(ws::refusal(&e).unwrap().0, 401);

    // Straight to the agent's session port, as another pod could: refused and logged.
    let pod_ip = server.state.cluster.pod_ip(&id).expect("pod IP");
    let agent: SocketAddr = format!("{pod_ip}:{SESSION_PORT}").parse().unwrap();
    let keys = &server.state.sessions.keys;
    let now = chrono::Utc::now().timestamp();
    for (what, line, want) in [
        (
            "no ticket",
            request(String::new(), SessionKind::Ssh, None),
            "malformed ticket",
        ),
        ("not JSON", "hello".to_string(), "malformed request"),
        (
            "expired",
            request(
                keys.mint_expiring(&id, SessionKind::Ssh, None, now - 120),
                SessionKind::Ssh,
                None,
            ),
            "expired ticket",
        ),
        (
            "another workspace",
            request(
                keys.mint("another-workspace", SessionKind::Ssh, None),
                SessionKind::Ssh,
                None,
            ),
            "ticket for another workspace",
        ),
        (
            "another port",
            request(
                keys.mint(&id, SessionKind::Tcp, Some(22)),
                SessionKind::Tcp,
                Some(echo_port),
            ),
            "ticket for another port",
        ),
    ] {
        let answer = direct(agent, &line).await;
        assert!(
            answer.starts_with(&format!("error: {want}")),
            "{what}: {answer}"
        );
    }
    let ticket = keys.mint(&id, SessionKind::Tcp, Some(echo_port));
    let line = request(ticket, SessionKind::Tcp, Some(echo_port));
    assert_eq!(direct(agent, &line).await, "ok", "a valid ticket, once");
    assert_eq!(
        direct(agent, &line).await,
        "error: ticket already used",
        "replayed"
    );
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(agent_log.contains("session refused"), "refusals are logged");
    assert!(
        !agent_log.contains(&line[..40]),
        "the log never holds a ticket"
    );

    // Audited with bytes, counted, and the workspace marked used.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (entries, ends) = loop {
        let entries: Vec<serde_json::Value> = api
            .json(
                reqwest::Method::GET,
                &format!("/api/v2/audit?action=session.*&workspace_id={id}&limit=1000"),
                &admin,
                None,
            )
            .await;
        let ends: Vec<serde_json::Value> = entries
            .iter()
            .filter(|e| e["action"] == "session.end")
            .cloned()
            .collect();
        if ends.len() >= 207 || Instant::now() > deadline {
            break (entries, ends);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        ends.len() >= 207,
        "every session's end is audited: {}",
        ends.len()
    );
    let big = ends
        .iter()
        .filter_map(|e| e["after"].as_str())
        .filter_map(|a| serde_json::from_str::<serde_json::Value>(a).ok())
        .find(|a| a["bytes_to_workspace"].as_u64() == Some(TOTAL as u64))
        .expect("the 100 MiB session's bytes are in its audit entry");
    assert_eq!(big["kind"], "tcp");
    assert_eq!(big["port"], echo_port);
    assert_eq!(big["bytes_from_workspace"].as_u64(), Some(TOTAL as u64));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "session.start" && e["actor_name"] == "alice")
    );
    let metrics = api
        .http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "lumie_sessions_total{kind=\"ssh\",outcome=\"opened\"}",
        "lumie_sessions_total{kind=\"terminal\",outcome=\"opened\"}",
        "lumie_sessions_total{kind=\"tcp\",outcome=\"refused\"}",
        "lumie_session_bytes_total{kind=\"tcp\",direction=\"to_workspace\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    let ws_now: WorkspaceJson = api
        .json(
            reqwest::Method::GET,
            &format!("/api/v2/workspaces/{id}"),
            &alice,
            None,
        )
        .await;
    assert!(
        ws_now.last_used_at.is_some(),
        "sessions mark the workspace used"
    );

    // The dashboard's terminal tab in a real browser (xterm.js over the same route).
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "run scripts/install-deps.sh (npm ci in tests/browser)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "run scripts/install-deps.sh (apt chromium)"
    );
    let shots = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = {
        let (url, token, profile) = (url.clone(), alice.clone(), work.path().join("chromium"));
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .args(["--test", "--test-reporter=spec", "terminal.test.mjs"])
                .current_dir(&browser_dir)
                .env("LUMIE_URL", url)
                .env("LUMIE_TOKEN", token)
                .env("LUMIE_WORKSPACE_PATH", "/@alice/sess")
                .env("LUMIE_SCREENSHOTS", &shots)
                .env("LUMIE_PROFILE_DIR", profile)
                .output()
                .expect("node runs")
        })
        .await
        .unwrap()
    };
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the terminal browser test failed: {}",
        out.status
    );

    // Stopped: 409 with what to do, at once.
    let _: serde_json::Value = api
        .json(
            reqwest::Method::POST,
            &format!("/api/v2/workspaces/{id}/builds"),
            &alice,
            Some(serde_json::json!({"transition": "stop"})),
        )
        .await;
    let started = Instant::now();
    let e = ws::connect(&format!("{base}/terminal"), &alice)
        .await
        .unwrap_err();
    let (status, body) = ws::refusal(&e).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("is stopped: start it first") || body.contains("is stopping: start it first"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    cluster.clear_pod_action();
    drop(webhook);
    server.shutdown().await;
}
