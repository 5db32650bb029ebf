//! The agent end to end (issue 5): the server creates a workspace; the node simulator runs the
//! `dev` container's init script as a local process with the pod's environment; the script
//! downloads the agent from the server; the agent reports `ready` once three stand-in apps
//! answer and the workspace turns `running`; HTTP and WebSocket through the app proxy reach the
//! stand-ins; a killed stand-in turns its app unhealthy within its threshold; a restarted server
//! is reconnected to; stopping the workspace stops the agent, which reports `off`.
//!
//! The agent authenticates with its pod's projected token (the node simulator requests and
//! writes it as the kubelet does; the server checks it with a TokenReview): tokens of another
//! audience, of no pod, of another pod, or the developer identity's own are refused, and a pod
//! posing as the workspace is refused by the webhook or, admitted without it, deleted by the
//! reconciler and never routed to.
//!
//! One test, in order: the stand-in apps listen on the contract's fixed ports on 127.0.0.1, so
//! only one workspace with a live agent runs at a time in this binary.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use lumie_contract::agent_api::{AppHealth, HEARTBEAT_PATH};
use lumie_contract::{labels, workspace};
use lumie_server::api::WorkspaceJson;
use lumie_server::config::Config;
use lumie_server::serve::Running;
use lumie_tests::simulator::request_token;
use lumie_tests::stack::AgentStack;
use lumie_tests::workspace_pods::{self, DevContainerRunner, StandInApps};
use lumie_tests::{Cluster, Identity, admission, control_plane};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

fn is(status: &WorkspaceJson, want: &str) -> bool {
    serde_json::to_value(status.status).unwrap() == want
}

fn app_health(ws: &WorkspaceJson, slug: &str) -> Option<AppHealth> {
    ws.agent.as_ref()?.apps.get(slug).copied()
}

async fn start_server(cluster: &Cluster, config: Config) -> Running {
    control_plane::start_server(cluster, config)
        .await
        .expect("lumie-server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_downloads_reports_ready_forwards_and_shuts_down() {
    let cluster = Cluster::shared();
    let admin = cluster.client().await;
    let work = tempfile::tempdir().unwrap();

    // The real webhook, registered with the real apiserver, and the server, with a short
    // report interval so connection changes show quickly.
    let agents = workspace_pods::agent_binary_dir(work.path()).unwrap();
    let AgentStack {
        webhook,
        server,
        config,
        api: stack,
    } = AgentStack::start(cluster, work.path(), agents)
        .await
        .unwrap();
    let (url, token) = (stack.url.clone(), stack.token.clone());

    let apps = StandInApps::start(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let runner = DevContainerRunner::created(work.path().join("pods"))
        .unwrap()
        .with_env("LUMIE_AGENT_HEALTH_INTERVAL", "200ms")
        .with_env("LUMIE_AGENT_HEALTH_THRESHOLD", "2")
        .with_env("LUMIE_AGENT_LOG", "debug");
    cluster.set_pod_action(Arc::new(runner));

    let created = stack.create("admin", "agent-e2e").await;
    let id = created.id.clone();
    let log = work
        .path()
        .join("pods")
        .join(format!("{}.log", created.pod_name));

    // Download, heartbeat, ready → running.
    let ws = stack
        .wait_for(
            "the workspace to run",
            &id,
            Duration::from_secs(120),
            &log,
            |w| is(w, "running"),
        )
        .await;
    let agent = ws.agent.clone().expect("agent shown");
    assert_eq!(agent.lifecycle_state, "ready");
    assert_eq!(agent.status, "connected");
    for app in lumie_contract::apps::ALL {
        assert_eq!(
            app_health(&ws, app.slug),
            Some(AppHealth::Healthy),
            "{}",
            app.slug
        );
    }
    let script_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        script_log.contains("lumie-init"),
        "the init script ran: {script_log}"
    );

    // HTTP through the app proxy reaches the stand-in (prefix stripped, as the contract says).
    let body = stack
        .http
        .get(format!("{url}/@admin/agent-e2e/apps/tilt/some/path"))
        .header("Coder-Session-Token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "tilt stand-in: /some/path");
    // Without a token the proxy refuses.
    let anon = stack
        .http
        .get(format!("{url}/@admin/agent-e2e/apps/tilt/"))
        .send()
        .await
        .unwrap();
    assert!(
        anon.status() == 401 || anon.status() == 403 || anon.status().is_redirection(),
        "{}",
        anon.status()
    );

    // WebSocket through the app proxy, both ways.
    let mut req = format!(
        "{}/@admin/agent-e2e/apps/code-server/socket",
        url.replacen("http://", "ws://", 1)
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("Coder-Session-Token", token.parse().unwrap());
    req.headers_mut().insert("Origin", url.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the proxy");
    for text in ["hello", "through the proxy"] {
        socket.send(Message::Text(text.into())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.ok();

    // Only the workspace pod's own projected token heartbeats for it. Every workspace holds the
    // same `dev-workspace` account, so the account alone proves nothing.
    let ns = workspace::NAMESPACE;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let pod = pods.get(&created.pod_name).await.unwrap();
    let (pod_name, pod_uid) = (pod.name_any(), pod.uid().unwrap());
    assert_eq!(
        server.state.agent_auth.reviews(),
        1,
        "every heartbeat so far rode one TokenReview of the agent's token"
    );
    let heartbeats_so_far = server.state.metrics.heartbeats.get();
    assert!(heartbeats_so_far >= 2, "{heartbeats_so_far}");
    let heartbeat = |token: String| {
        let (http, url) = (stack.http.clone(), format!("{url}{HEARTBEAT_PATH}"));
        async move {
            let r = http
                .post(url)
                .header("Coder-Session-Token", token)
                .json(&serde_json::json!({
                    "lifecycle": "ready", "version": "agent-e2e",
                    "apps": {"tilt": "healthy", "code-server": "healthy", "agents": "healthy"}
                }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let aud = workspace::AGENT_TOKEN_AUDIENCE;
    let sa = "dev-workspace";
    let own = request_token(&admin, ns, sa, aud, 600, Some((&pod_name, &pod_uid)))
        .await
        .unwrap();
    assert_eq!(heartbeat(own).await.0, 200, "control: the pod's own token");
    let wrong_audience = request_token(
        &admin,
        ns,
        sa,
        "https://kubernetes.default.svc.cluster.local",
        600,
        Some((&pod_name, &pod_uid)),
    )
    .await
    .unwrap();
    let unbound = request_token(&admin, ns, sa, aud, 600, None).await.unwrap();
    // A pod the developer may create (no workspace labels), running as the same account.
    let plain: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "plain-dev-pod"},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "sh", "image": "busybox",
                 "securityContext": {"allowPrivilegeEscalation": false}}]}
    }))
    .unwrap();
    let developer: Api<Pod> = Api::namespaced(cluster.client_as(Identity::Developer).await, ns);
    let plain = developer
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let other_pod = request_token(
        &admin,
        ns,
        sa,
        aud,
        600,
        Some((&plain.name_any(), &plain.uid().unwrap())),
    )
    .await
    .unwrap();
    for (what, token, reason) in [
        (
            "a token of another audience",
            wrong_audience,
            "not valid for audience",
        ),
        (
            "the account's token bound to no pod",
            unbound,
            "not bound to a pod",
        ),
        (
            "the developer identity's own token",
            cluster.token(Identity::Developer).to_string(),
            "not valid for audience",
        ),
        (
            "another (non-workspace) pod's token",
            other_pod,
            "plain-dev-pod is not a workspace pod the control plane created",
        ),
        ("no token at all", String::new(), "agent token missing"),
    ] {
        let (status, body) = heartbeat(token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
    }
    developer
        .delete("plain-dev-pod", &Default::default())
        .await
        .unwrap();

    // Posing as the workspace with a pod of one's own: the webhook refuses the labels to
    // anyone but the control plane...
    let impostor = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {
                labels::MANAGED_BY: labels::MANAGED_BY_LUMIE, labels::OWNER: "admin",
                labels::WORKSPACE: "agent-e2e", labels::WORKSPACE_ID: id}},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "sh", "image": "busybox",
                     "securityContext": {"allowPrivilegeEscalation": false}}]}
        }))
        .unwrap()
    };
    let err = developer
        .create(&PostParams::default(), &impostor("posing-pod"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only the control plane"), "{err}");
    // ...and one admitted anyway (here: while the webhook does not guard the namespace, as
    // before it was installed) is never taken for the workspace's pod: the reconciler deletes
    // it, and the proxy keeps reaching the real one.
    admission::register_webhooks(
        &admin,
        &format!("https://127.0.0.1:{}", webhook.addr.port()),
        cluster.ca().cert_pem(),
        &["lumie-e2e-unguarded"],
    )
    .await
    .unwrap();
    let admitted = pods
        .create(&PostParams::default(), &impostor("posing-pod"))
        .await;
    admission::register_webhooks(
        &admin,
        &format!("https://127.0.0.1:{}", webhook.addr.port()),
        cluster.ca().cert_pem(),
        &[],
    )
    .await
    .unwrap();
    let admitted = admitted.unwrap();
    assert!(
        admitted.annotations().get(labels::CREATED_BY).is_none(),
        "admitted without the webhook's stamp"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            server.state.cluster.pod_ip(&id),
            pods.get(&created.pod_name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.pod_ip),
            "the workspace's view keeps the real pod"
        );
        match pods.get_opt("posing-pod").await.unwrap() {
            Some(p) if p.metadata.deletion_timestamp.is_none() => {}
            _ => break,
        }
        assert!(
            Instant::now() < deadline,
            "the impostor pod was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = stack
        .http
        .get(format!("{url}/@admin/agent-e2e/apps/tilt/after-impostor"))
        .header("Coder-Session-Token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "tilt stand-in: /after-impostor");
    // One review per distinct token: the agent's, the control's, and the four refused ones
    // (an absent token costs none).
    assert_eq!(server.state.agent_auth.reviews(), 6);

    // A stand-in killed → its app unhealthy within the threshold (2 × 200 ms, reported at once).
    apps.stop_one("agents");
    let killed = Instant::now();
    stack
        .wait_for(
            "the agents app to turn unhealthy",
            &id,
            Duration::from_secs(10),
            &log,
            |w| app_health(w, "agents") == Some(AppHealth::Unhealthy),
        )
        .await;
    println!(
        "agents app unhealthy {:?} after its stand-in stopped",
        killed.elapsed()
    );
    apps.start_one("agents").await.unwrap();
    stack
        .wait_for(
            "the agents app to recover",
            &id,
            Duration::from_secs(10),
            &log,
            |w| app_health(w, "agents") == Some(AppHealth::Healthy),
        )
        .await;

    // Server restarted (killed, not drained) → the agent reconnects.
    server.abort();
    drop(server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    let server = start_server(cluster, config).await;
    // The agent shows as connected as soon as its heartbeat lands; the workspace status follows
    // once the restarted reconciler has listed the cluster and recomputed it, so wait for both.
    let ws = stack
        .wait_for(
            "the agent to reconnect after the restart and the workspace to run again",
            &id,
            Duration::from_secs(60),
            &log,
            |w| {
                w.status_reason.is_empty()
                    && w.agent.as_ref().is_some_and(|a| {
                        a.status == "connected"
                            && a.last_connected_at.as_deref().is_some_and(|t| {
                                chrono::DateTime::parse_from_rfc3339(t).is_ok_and(|t| {
                                    t.timestamp_millis()
                                        > chrono::Utc::now().timestamp_millis()
                                            - restarted.elapsed().as_millis() as i64
                                })
                            })
                    })
            },
        )
        .await;
    assert_eq!(ws.status_reason, "", "{ws:#?}");

    // Stop → the pod is deleted, the simulator sends SIGTERM, the agent reports `off`.
    stack.build(&id, "stop").await;
    stack
        .wait_for(
            "the agent to report off",
            &id,
            Duration::from_secs(60),
            &log,
            |w| w.agent.as_ref().is_some_and(|a| a.lifecycle_state == "off"),
        )
        .await;
    stack
        .wait_for(
            "the workspace to stop",
            &id,
            Duration::from_secs(60),
            &log,
            |w| is(w, "stopped"),
        )
        .await;

    // The restarted server saw the agent's heartbeats until `off`, for one TokenReview.
    let (beats, reviews) = (
        server.state.metrics.heartbeats.get(),
        server.state.agent_auth.reviews(),
    );
    println!("restarted server: {beats} heartbeats, {reviews} TokenReview(s)");
    assert!(beats >= 3, "{beats}");
    assert_eq!(reviews, 1);

    cluster.clear_pod_action();
    server.shutdown().await;
    webhook.shutdown().await;
}
