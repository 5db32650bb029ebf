//! `make demo`: the local demo stack. Starts a real local Kubernetes (etcd, kube-apiserver,
//! kube-scheduler, fake nodes, the node simulator), the webhook registered with the apiserver,
//! the control plane with SQLite, and one workspace whose startup script (the template's) starts
//! the stand-in apps inside the workspace; prints its status as it moves to running and its
//! startup log, then serves until Ctrl-C and cleans up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lumie_server::api::WorkspaceJson;
use lumie_server::startup_logs::WorkspaceLogsJson;
use lumie_tests::workspace_pods::{self, DevContainerRunner};
use lumie_tests::{Cluster, Identity, admission, control_plane};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: &str| println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());

    say(
        "starting the local cluster (etcd, kube-apiserver, kube-scheduler, 1 control-plane + 3 worker nodes)",
    );
    let cluster = Cluster::start()
        .await
        .context("starting the local cluster")?;
    let admin = cluster.client().await;
    let work = tempfile::tempdir().context("creating the demo temp dir")?;

    say("starting lumie-webhook and registering it for lumie-dev");
    let webhook = admission::start_registered_webhook(&cluster, work.path()).await?;
    workspace_pods::install_stable_service(&admin).await?;

    say("starting lumie-server (SQLite) as system:serviceaccount:coder:coder");
    let mut config = control_plane::server_config(&work.path().join("server"))?;
    let url = config.access_url.clone();
    // The template's startup script starts the stand-in apps inside the workspace, as a real
    // template starts code-server and Tilt.
    let template = work.path().join("template.yaml");
    let script = workspace_pods::stand_in_apps_script(&workspace_pods::stand_in_apps_binary()?);
    std::fs::write(
        &template,
        serde_yaml::to_string(&serde_json::json!({
            "startupScript": script,
            "shutdownScript": "echo \"stopping $CODER_WORKSPACE_NAME\"\n",
        }))?,
    )?;
    config.template_file = Some(template);
    config.agent_binary_dir = workspace_pods::agent_binary_dir(work.path())?;
    // The static agents (any dev image, arm64 nodes) when scripts/build-static.sh built them;
    // else the glibc agent `make demo` just built, which runs here.
    let served = lumie_tests::static_bins::serve_built(&config.agent_binary_dir)?;
    if !served.is_empty() {
        say(&format!("serving the static builds: {}", served.join(", ")));
    }
    config.agent_report_interval = Duration::from_secs(5);
    let server = control_plane::start_server(&cluster, config).await?;
    let token = server
        .first_admin_token
        .clone()
        .context("the server did not create its first admin")?;

    let mut runner = DevContainerRunner::new(work.path().join("pods"));
    // The apps on a loopback address of the demo's own (the proxy reaches them through the
    // agent as ever), so another stack on this machine holding 127.0.0.1:3000 does not matter.
    runner.extra_env.insert(
        "LUMIE_AGENT_APP_HOST".into(),
        workspace_pods::private_app_host().to_string(),
    );
    std::fs::create_dir_all(&runner.work_dir)?;
    cluster.set_pod_action(Arc::new(runner));

    let http = reqwest::Client::new();
    let created: WorkspaceJson = http
        .post(format!("{url}/api/v2/users/admin/workspaces"))
        .header("Coder-Session-Token", &token)
        .json(&serde_json::json!({"name": "demo"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    say(&format!(
        "created workspace admin/demo ({}); pod {} in lumie-dev",
        created.id, created.pod_name
    ));

    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ws: WorkspaceJson = http
            .get(format!("{url}/api/v2/workspaces/{}", created.id))
            .header("Coder-Session-Token", &token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let agent = ws
            .agent
            .as_ref()
            .map(|a| format!(", agent {} and {}", a.lifecycle_state, a.status))
            .unwrap_or_default();
        let reason = if ws.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", ws.status_reason)
        };
        let line = format!("workspace {}{reason}{agent}", ws.status);
        if line != last {
            say(&line);
            last = line;
        }
        if ws.status == lumie_server::model::WorkspaceStatus::Running {
            break;
        }
        if Instant::now() > deadline {
            bail!("the workspace did not reach running within 3 minutes: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The last batch of output may still be on its way (the agent batches for 200 ms).
    let mut logs: WorkspaceLogsJson;
    let logs_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        logs = http
            .get(format!("{url}/api/v2/workspaces/{}/logs", created.id))
            .header("Coder-Session-Token", &token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let done = logs
            .lines
            .iter()
            .any(|l| l.text == "startup script exited 0");
        if done || Instant::now() > logs_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(&format!(
        "startup log ({} lines, GET /api/v2/workspaces/{}/logs):",
        logs.lines.len(),
        created.id
    ));
    for l in &logs.lines {
        println!("  [{}] {}", l.stream, l.text);
    }

    for app in lumie_contract::apps::ALL {
        let app_url = format!("{url}/@admin/demo/apps/{}/", app.slug);
        let body = http
            .get(&app_url)
            .header("Coder-Session-Token", &token)
            .send()
            .await?
            .text()
            .await?;
        let first_line = body.lines().next().unwrap_or_default().trim();
        say(&format!(
            "{} through the app proxy: {app_url} answers \"{first_line}\"",
            app.display_name
        ));
    }
    say("the stack is running. Next:");
    println!("  - open {url}/login in a browser and sign in with the admin token:");
    println!("      {token}");
    println!(
        "    (your workspace admin/demo is on the list; its page opens Tilt, code-server and the agents UI)"
    );
    println!("  - or use the API: curl -H 'Coder-Session-Token: {token}' {url}/api/v2/workspaces");
    let lumie = std::env::current_exe()?.with_file_name("lumie");
    if lumie.exists() {
        println!(
            "  - or the CLI: {cli} login {url} --token {token}; then {cli} ssh demo, {cli} list",
            cli = lumie.display()
        );
    }
    println!(
        "  - or look at the cluster: KUBECONFIG={} kubectl -n lumie-dev get pods",
        cluster.kubeconfig(Identity::Admin).display()
    );
    println!("  Ctrl-C stops everything (the workspace is deleted first).");
    tokio::signal::ctrl_c().await?;

    say("deleting the workspace and stopping everything");
    let _ = http
        .post(format!("{url}/api/v2/workspaces/{}/builds", created.id))
        .header("Coder-Session-Token", &token)
        .json(&serde_json::json!({"transition": "delete"}))
        .send()
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.shutdown().await;
    webhook.shutdown().await;
    drop(cluster);
    Ok(())
}
