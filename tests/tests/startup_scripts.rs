//! Startup and shutdown scripts end to end (issue 12): the server's template carries the scripts,
//! the node simulator runs each workspace pod's init script, which downloads the real agent; the
//! agent fetches the manifest and runs the script in the workspace, ships its output, and the
//! server stores it and serves it through `GET /api/v2/workspaces/{id}/logs`.
//!
//! One server for the whole binary, with one template whose script does what the workspace's
//! name says: `apps*` starts the stand-in apps inside the workspace (no stand-ins on the host),
//! `fail*` runs a code-server that is not installed, `hang*` never finishes, `flood*` prints
//! 50 MiB, `token*` goes looking for the agent token. Only `apps*` binds the contract ports, so
//! the scenarios run side by side.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lumie_server::api::WorkspaceJson;
use lumie_server::model::WorkspaceStatus;
use lumie_server::startup_logs::WorkspaceLogsJson;
use lumie_tests::workspace_pods::{self, DevContainerRunner};
use lumie_tests::{Cluster, admission, control_plane};
use serde_json::{Value, json};

/// The budget the agent's peak RSS stays within while a script prints 50 MiB (a debug build
/// peaks at about 15 MiB).
const AGENT_RSS_BUDGET: u64 = 32 * 1024 * 1024;
/// What the flood scenario prints.
const FLOOD_BYTES: u64 = 50 * 1024 * 1024;
/// The template's start timeout (the `hang*` scenario waits it out).
const START_TIMEOUT_SECS: u64 = 20;

struct Stack {
    url: String,
    token: String,
    pods: std::path::PathBuf,
    /// Where the apps listen in this binary's workspaces.
    app_host: std::net::IpAddr,
}

static STACK: OnceLock<Stack> = OnceLock::new();

fn template(stand_in: &std::path::Path) -> Value {
    let apps = workspace_pods::stand_in_apps_script(stand_in);
    let script = format!(
        r#"echo "startup script for $CODER_WORKSPACE_NAME in $(pwd)"
case "$CODER_WORKSPACE_NAME" in
  apps*)
{apps}    ;;
  fail*)
    echo "about to start code-server"
    code-server --auth none --bind-addr 127.0.0.1:13337
    ;;
  hang*)
    echo "waiting for something that never comes"
    # Hangs as long as the agent lives (a killed test process leaves nothing behind).
    while kill -0 "$PPID" 2>/dev/null; do sleep 1; done
    ;;
  flood*)
    head -c {FLOOD_BYTES} /dev/zero | tr '\0' 'y' | fold -w 100
    echo
    echo flood-done
    ;;
  token*)
    f=$(tr '\0' '\n' < /proc/$PPID/environ | sed -n 's/^CODER_AGENT_TOKEN_FILE=//p')
    echo "token file: $f"
    echo "token: $(cat "$f")"
    env | sort
    echo env-done
    ;;
esac
"#
    );
    json!({
        "startupScript": script,
        "shutdownScript": "echo \"shutdown script ran for $CODER_WORKSPACE_NAME\"\n",
        "startupBehavior": "blocking",
        "startTimeoutSeconds": START_TIMEOUT_SECS,
        "shutdownTimeoutSeconds": 8,
    })
}

/// The webhook, the server (with the template above) and the dev-container runner, started
/// once on a runtime of their own.
fn stack() -> &'static Stack {
    STACK.get_or_init(|| {
        let cluster = Cluster::shared();
        control_plane::start_shared(move || async move {
            let work = tempfile::tempdir().unwrap().keep();
            let admin = cluster.client().await;
            let webhook = admission::start_registered_webhook(cluster, &work)
                .await
                .unwrap();
            workspace_pods::install_stable_service(&admin)
                .await
                .unwrap();
            let stand_in = std::path::PathBuf::from(env!("CARGO_BIN_EXE_lumie-stand-in-apps"));
            let template_file = work.join("template.yaml");
            std::fs::write(
                &template_file,
                serde_yaml::to_string(&template(&stand_in)).unwrap(),
            )
            .unwrap();
            let mut config = control_plane::server_config(&work.join("server")).unwrap();
            config.template_file = Some(template_file);
            config.agent_binary_dir = workspace_pods::agent_binary_dir(&work).unwrap();
            config.agent_report_interval = Duration::from_secs(1);
            let url = config.access_url.clone();
            let server = control_plane::start_server(cluster, config).await.unwrap();
            let app_host = workspace_pods::private_app_host();
            let mut runner = DevContainerRunner::new(work.join("pods"));
            std::fs::create_dir_all(&runner.work_dir).unwrap();
            runner.extra_env.extend([
                (
                    "LUMIE_AGENT_HEALTH_INTERVAL".to_string(),
                    "200ms".to_string(),
                ),
                ("LUMIE_AGENT_HEALTH_THRESHOLD".to_string(), "2".to_string()),
                ("LUMIE_AGENT_APP_HOST".to_string(), app_host.to_string()),
            ]);
            let pods = runner.work_dir.clone();
            cluster.set_pod_action(Arc::new(runner));
            (
                Stack {
                    url,
                    token: server.first_admin_token.clone().unwrap(),
                    pods,
                    app_host,
                },
                (server, webhook),
            )
        })
    })
}

impl Stack {
    fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http()
            .request(method, format!("{}{path}", self.url))
            .header("Coder-Session-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create(&self, name: &str) -> WorkspaceJson {
        let (status, body) = self
            .call(
                &self.token,
                reqwest::Method::POST,
                "/api/v2/users/admin/workspaces",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn workspace(&self, id: &str) -> WorkspaceJson {
        let (status, body) = self
            .call(
                &self.token,
                reqwest::Method::GET,
                &format!("/api/v2/workspaces/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn logs(&self, id: &str) -> WorkspaceLogsJson {
        let (status, body) = self
            .call(
                &self.token,
                reqwest::Method::GET,
                &format!("/api/v2/workspaces/{id}/logs"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Stops the workspace and waits until it is stopped, so its agent has shut down cleanly
    /// (and stopped its scripts' process groups) before the test process ends.
    async fn stop(&self, ws: &WorkspaceJson) {
        self.build(&ws.id, "stop").await;
        self.wait_for("stopped", ws, 120, |w| w.status == WorkspaceStatus::Stopped)
            .await;
    }

    async fn build(&self, id: &str, transition: &str) {
        let (status, body) = self
            .call(
                &self.token,
                reqwest::Method::POST,
                &format!("/api/v2/workspaces/{id}/builds"),
                Some(json!({ "transition": transition })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    fn pod_log(&self, ws: &WorkspaceJson) -> String {
        std::fs::read_to_string(self.pods.join(format!("{}.log", ws.pod_name))).unwrap_or_default()
    }

    /// Polls until `check` holds; panics with the workspace, its stored log and the pod's log.
    async fn wait_for(
        &self,
        what: &str,
        ws: &WorkspaceJson,
        secs: u64,
        check: impl Fn(&WorkspaceJson) -> bool,
    ) -> WorkspaceJson {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.workspace(&ws.id).await;
            if check(&now) {
                return now;
            }
            if Instant::now() > deadline {
                let logs = texts(&self.logs(&ws.id).await);
                let tail: Vec<_> = logs.iter().rev().take(20).rev().collect();
                panic!(
                    "timed out waiting for {what}: {now:#?}\n--- stored log (tail) ---\n{tail:#?}\n--- dev container ---\n{}",
                    self.pod_log(ws)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls the stored log until a line satisfies `pred`.
    async fn wait_for_line(
        &self,
        ws: &WorkspaceJson,
        secs: u64,
        pred: impl Fn(&str) -> bool,
    ) -> WorkspaceLogsJson {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let logs = self.logs(&ws.id).await;
            if logs.lines.iter().any(|l| pred(&l.text)) {
                return logs;
            }
            if Instant::now() > deadline {
                let t = texts(&logs);
                let tail: Vec<_> = t.iter().rev().take(20).rev().collect();
                panic!(
                    "the log line never came: {tail:#?}\n--- dev container ---\n{}",
                    self.pod_log(ws)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn texts(logs: &WorkspaceLogsJson) -> Vec<String> {
    logs.lines.iter().map(|l| l.text.clone()).collect()
}

/// The agent process of a pod: the binary the init script put in the pod's folder.
fn agent_pid(pods: &std::path::Path, pod_name: &str) -> Option<u32> {
    let bin = pods.join(pod_name).join("bin").join("lumie-agent");
    let want = bin.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmd.split(|b| *b == 0).next()?;
        (argv0 == want.as_bytes()).then_some(pid)
    })
}

/// `VmHWM` (peak resident set) of a process, bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_starts_the_apps_inside_the_workspace_and_the_shutdown_script_runs_on_stop() {
    let s = stack();
    let ws = s.create("apps-1").await;
    let ws = s
        .wait_for("running", &ws, 180, |w| {
            w.status == WorkspaceStatus::Running
        })
        .await;
    assert_eq!(ws.agent.as_ref().unwrap().lifecycle_state, "ready");
    // The app proxy reaches the stand-in the workspace's own script started.
    let body = s
        .http()
        .get(format!("{}/@admin/apps-1/apps/code-server/x", s.url))
        .header("Coder-Session-Token", &s.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "code-server stand-in: /x");
    let logs = s
        .wait_for_line(&ws, 30, |l| {
            l == format!("code-server stand-in listening on {}", s.app_host)
        })
        .await;
    let t = texts(&logs);
    assert!(
        t.iter()
            .any(|l| l.starts_with("startup script for apps-1 in ")),
        "{t:#?}"
    );
    assert!(
        t.contains(&"starting the stand-in apps".to_string()),
        "{t:#?}"
    );
    // Its exit is noted once its output is drained (the stand-ins keep the pipes open, so that
    // waits out the drain time) and shipped with the next batch.
    s.wait_for_line(&ws, 30, |l| l == "startup script exited 0")
        .await;

    // Follow the log, stop the workspace: the shutdown script's line arrives live, then `end`.
    let resp = s
        .http()
        .get(format!("{}/api/v2/workspaces/{}/logs?follow", s.url, ws.id))
        .header("Coder-Session-Token", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = resp.bytes_stream();
    s.build(&ws.id, "stop").await;
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(chunk) = events.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: end") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ended.ok(), Some(true), "the follow ended cleanly: {seen}");
    assert!(seen.contains("shutdown script ran for apps-1"), "{seen}");
    assert!(seen.contains("shutdown script exited 0"), "{seen}");
    let end = seen.find("event: end").unwrap();
    assert!(seen.find("shutdown script ran for apps-1").unwrap() < end);
    // Kept: the stopped workspace's log still has the shutdown output, after the startup's.
    let t = texts(&s.logs(&ws.id).await);
    let pos = |want: &str| {
        t.iter()
            .position(|l| l == want)
            .unwrap_or_else(|| panic!("{want:?} missing: {t:#?}"))
    };
    assert!(pos("startup script exited 0") < pos("shutdown script ran for apps-1"));
    // The stand-ins went with the workspace's process group: the port is free again.
    let mut free = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect((s.app_host, 13337))
            .await
            .is_err()
        {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free, "the stand-in code-server outlived the workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_is_a_failed_start_saying_why_with_the_full_output_in_the_log() {
    let s = stack();
    let ws = s.create("fail-1").await;
    let ws = s
        .wait_for("failed", &ws, 180, |w| w.status == WorkspaceStatus::Failed)
        .await;
    // One sentence, from the script itself; nothing about kubectl.
    assert!(
        ws.status_reason
            .starts_with("startup script exited 127: code-server:"),
        "{}",
        ws.status_reason
    );
    assert!(
        !ws.status_reason.contains("about to start"),
        "standard error is quoted, not the chatter before it: {}",
        ws.status_reason
    );
    assert!(
        ws.status_reason.contains("not found"),
        "{}",
        ws.status_reason
    );
    assert!(
        !ws.status_reason.contains("kubectl"),
        "{}",
        ws.status_reason
    );
    assert_eq!(ws.agent.as_ref().unwrap().lifecycle_state, "start_error");
    let logs = s
        .wait_for_line(&ws, 30, |l| l == "startup script exited 127")
        .await;
    let t = texts(&logs);
    assert!(
        t.contains(&"about to start code-server".to_string()),
        "{t:#?}"
    );
    assert!(
        logs.lines
            .iter()
            .any(|l| l.stream == lumie_contract::agent_api::LogStream::Stderr
                && l.text.contains("code-server")
                && l.text.contains("not found")),
        "{t:#?}"
    );
    assert_eq!(logs.starts.len(), 1);

    // Someone else's workspace: not found, like the workspace itself.
    let (status, body) = s
        .call(
            &s.token,
            reqwest::Method::POST,
            "/api/v2/users",
            Some(json!({"username": "bob"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, key) = s
        .call(
            &s.token,
            reqwest::Method::POST,
            "/api/v2/users/bob/keys",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let bob = key["key"].as_str().unwrap();
    let (status, body) = s
        .call(
            bob,
            reqwest::Method::GET,
            &format!("/api/v2/workspaces/{}/logs", ws.id),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s
        .call(
            &s.token,
            reqwest::Method::GET,
            &format!("/api/v2/workspaces/{}/logs?follow=maybe", ws.id),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop(&ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_blocking_script_is_a_start_timeout() {
    let s = stack();
    let ws = s.create("hang-1").await;
    let ws = s
        .wait_for("failed", &ws, 180, |w| w.status == WorkspaceStatus::Failed)
        .await;
    // The script is named; the apps (nobody starts them here) may be named after it.
    let want = format!(
        "startup script still running after {START_TIMEOUT_SECS}s (startup behavior blocking)"
    );
    assert!(ws.status_reason.starts_with(&want), "{}", ws.status_reason);
    assert_eq!(ws.agent.as_ref().unwrap().lifecycle_state, "start_timeout");
    let t = texts(&s.logs(&ws.id).await);
    assert!(
        t.contains(&"waiting for something that never comes".to_string()),
        "{t:#?}"
    );
    s.stop(&ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_of_output_keeps_the_log_and_the_agent_within_bounds() {
    let s = stack();
    let ws = s.create("flood-1").await;
    let logs = s.wait_for_line(&ws, 300, |l| l == "flood-done").await;
    let kept: usize = logs.lines.iter().map(|l| l.text.len()).sum();
    assert!(
        kept <= lumie_contract::agent_api::MAX_LOG_BYTES_PER_START + 4096,
        "{kept} bytes kept"
    );
    assert!(
        logs.lines[0].text.contains("earlier lines") && logs.lines[0].text.contains("were dropped"),
        "one marker first: {:?}",
        logs.lines[0]
    );
    let markers = logs
        .lines
        .iter()
        .filter(|l| l.text.contains("were dropped"))
        .count();
    assert_eq!(markers, 1, "one marker line");
    assert!(logs.starts[0].dropped_lines > 0, "{:?}", logs.starts[0]);
    let pid = agent_pid(&s.pods, &ws.pod_name).expect("the agent process");
    let peak = peak_rss(pid).expect("the agent's VmHWM");
    println!("agent peak RSS with a 50 MiB script: {} KiB", peak / 1024);
    assert!(peak < AGENT_RSS_BUDGET, "agent peak RSS {peak} bytes");
    s.stop(&ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_never_reaches_the_stored_log() {
    let s = stack();
    let ws = s.create("token-1").await;
    let logs = s.wait_for_line(&ws, 180, |l| l == "env-done").await;
    let t = texts(&logs);
    let file = t
        .iter()
        .find_map(|l| l.strip_prefix("token file: "))
        .unwrap_or_else(|| panic!("{t:#?}"));
    assert!(!file.is_empty(), "the script found the agent's token file");
    let token = std::fs::read_to_string(file).unwrap();
    let token = token.trim();
    assert!(token.len() > 100, "a projected token");
    assert!(
        t.iter().all(|l| !l.contains(token)),
        "the token is in the log"
    );
    assert!(
        t.contains(&"token: [agent token redacted]".to_string()),
        "{t:#?}"
    );
    assert!(
        t.iter().all(|l| !l.starts_with("CODER_AGENT_TOKEN")),
        "the scripts' env has no token variables: {t:#?}"
    );
    assert!(
        t.iter()
            .any(|l| l.starts_with("CODER_WORKSPACE_NAME=token-1")),
        "{t:#?}"
    );
    s.stop(&ws).await;
}
