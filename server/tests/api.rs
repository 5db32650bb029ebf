//! The HTTP API in-process (`router(state)` + `oneshot`), on a real SQLite database; the agent
//! API and app proxy against real sockets where upgrades need them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use lumie_contract::agent_api::{AppHealth, HeartbeatRequest, LifecycleState};
use lumie_server::api::{BuildJson, KeyJson, ReadyJson, UserJson, WorkspaceJson, WorkspacesJson};
use lumie_server::config::Config;
use lumie_server::db::Db;
use lumie_server::model::{AgentRecord, WorkspaceStatus};
use lumie_server::state::AppState;
use lumie_server::status::{ClusterView, PodObservation};
use lumie_server::template::Template;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

struct Api {
    state: AppState,
    /// The agents the agent API knows (no cluster here to review their tokens).
    agents: std::sync::Arc<lumie_server::agent_api::FixedAgents>,
    admin_token: String,
    _dir: tempfile::TempDir,
}

async fn api_with(db: Db, dir: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> Api {
    let mut config = Config::for_tests(dir.path().to_path_buf());
    edit(&mut config);
    let (_, admin_token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    let agents = std::sync::Arc::new(lumie_server::agent_api::FixedAgents::new(
        state.agent_auth.expected_username(),
    ));
    state.agent_auth.install(agents.clone(), agents.clone());
    Api {
        state,
        agents,
        admin_token,
        _dir: dir,
    }
}

async fn api() -> Api {
    let (db, dir) = common::sqlite_db().await;
    api_with(db, dir, |_| {}).await
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("Coder-Session-Token", t);
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        let resp = lumie_server::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
        want: StatusCode,
    ) -> T {
        let (status, _, bytes) = self.call(method, path, Some(token), body).await;
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes)))
    }

    /// Creates a user and returns it with a token of its own.
    async fn user(&self, name: &str) -> (UserJson, String) {
        let u: UserJson = self
            .json(
                "POST",
                "/api/v2/users",
                &self.admin_token,
                Some(serde_json::json!({"username": name})),
                StatusCode::CREATED,
            )
            .await;
        let k: KeyJson = self
            .json(
                "POST",
                &format!("/api/v2/users/{name}/keys"),
                &self.admin_token,
                None,
                StatusCode::CREATED,
            )
            .await;
        (u, k.key)
    }
}

fn message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn authentication_header_bearer_and_errors() {
    let api = api().await;
    let (s, _, b) = api.call("GET", "/api/v2/users/me", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        message(&b).contains("Coder-Session-Token"),
        "{}",
        message(&b)
    );
    let (s, _, b) = api
        .call("GET", "/api/v2/users/me", Some("bogus"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(message(&b).contains("invalid"));
    let me: UserJson = api
        .json(
            "GET",
            "/api/v2/users/me",
            &api.admin_token,
            None,
            StatusCode::OK,
        )
        .await;
    assert!(me.is_admin);
    let req = Request::get("/api/v2/users/me")
        .header("Authorization", format!("Bearer {}", api.admin_token))
        .body(Body::empty())
        .unwrap();
    let resp = lumie_server::router(api.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn workspaces_create_list_get_and_permissions() {
    let api = api().await;
    let (alice, alice_tok) = api.user("alice").await;
    let (_bob, bob_tok) = api.user("bob").await;

    // Users create their own; admins create for anyone; others get 403.
    let ws: WorkspaceJson = api
        .json(
            "POST",
            "/api/v2/users/me/workspaces",
            &alice_tok,
            Some(serde_json::json!({"name": "dev"})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(ws.owner_name, "alice");
    assert_eq!(ws.pod_name, "coder-alice-dev");
    assert_eq!(ws.status, WorkspaceStatus::Pending);
    assert!(!ws.status_reason.is_empty());
    let b = ws.latest_build.as_ref().unwrap();
    assert_eq!((b.build_number, b.transition.as_str()), (1, "start"));
    assert_eq!(ws.apps.len(), 3);
    assert_eq!(ws.apps[0].url, "http://127.0.0.1/@alice/dev/apps/tilt/");
    let _: WorkspaceJson = api
        .json(
            "POST",
            "/api/v2/users/alice/workspaces",
            &api.admin_token,
            Some(serde_json::json!({"name": "second"})),
            StatusCode::CREATED,
        )
        .await;
    let (s, _, _) = api
        .call(
            "POST",
            "/api/v2/users/alice/workspaces",
            Some(&bob_tok),
            Some(serde_json::json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = api
        .call(
            "POST",
            "/api/v2/users/me/workspaces",
            Some(&alice_tok),
            Some(serde_json::json!({"name": "Bad_Name"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&b).contains("workspace name"), "{}", message(&b));
    let (s, _, b) = api
        .call(
            "POST",
            "/api/v2/users/me/workspaces",
            Some(&alice_tok),
            Some(serde_json::json!({"name": "dev"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(message(&b), "workspace alice/dev already exists");

    // Lists: own for users, all for admins.
    let own: WorkspacesJson = api
        .json(
            "GET",
            "/api/v2/workspaces",
            &alice_tok,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(own.count, 2);
    let theirs: WorkspacesJson = api
        .json("GET", "/api/v2/workspaces", &bob_tok, None, StatusCode::OK)
        .await;
    assert_eq!(theirs.count, 0);
    let all: WorkspacesJson = api
        .json(
            "GET",
            "/api/v2/workspaces",
            &api.admin_token,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(all.count, 2);
    assert!(
        all.workspaces
            .iter()
            .all(|w| w.latest_build.is_some() && w.owner_id == alice.id)
    );

    // Get: owner and admin; anyone else sees nothing.
    let path = format!("/api/v2/workspaces/{}", ws.id);
    let got: WorkspaceJson = api
        .json("GET", &path, &alice_tok, None, StatusCode::OK)
        .await;
    assert_eq!(got.id, ws.id);
    let _: WorkspaceJson = api
        .json("GET", &path, &api.admin_token, None, StatusCode::OK)
        .await;
    let (s, _, _) = api.call("GET", &path, Some(&bob_tok), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let by_name: WorkspaceJson = api
        .json(
            "GET",
            "/api/v2/users/alice/workspace/dev",
            &alice_tok,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(by_name.id, ws.id);

    // Builds: one in flight at a time, clear 409.
    let (s, _, b) = api
        .call(
            "POST",
            &format!("{path}/builds"),
            Some(&alice_tok),
            Some(serde_json::json!({"transition": "stop"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(message(&b).contains("already in progress"));
    let (s, _, _) = api
        .call(
            "POST",
            &format!("{path}/builds"),
            Some(&alice_tok),
            Some(serde_json::json!({"transition": "explode"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let builds: Vec<BuildJson> = api
        .json(
            "GET",
            &format!("{path}/builds"),
            &alice_tok,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(builds.len(), 1);

    // Only admins read the audit log and create users.
    let (s, _, _) = api
        .call("GET", "/api/v2/audit", Some(&alice_tok), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let audit: Vec<serde_json::Value> = api
        .json(
            "GET",
            "/api/v2/audit",
            &api.admin_token,
            None,
            StatusCode::OK,
        )
        .await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "workspace.create" && e["actor_name"] == "alice")
    );
    let (s, _, _) = api
        .call(
            "POST",
            "/api/v2/users",
            Some(&alice_tok),
            Some(serde_json::json!({"username": "mallory"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn watch_streams_status_changes_as_sse() {
    let api = api().await;
    let (_, tok) = api.user("carol").await;
    let ws: WorkspaceJson = api
        .json(
            "POST",
            "/api/v2/users/me/workspaces",
            &tok,
            Some(serde_json::json!({"name": "dev"})),
            StatusCode::CREATED,
        )
        .await;
    let req = Request::get(format!("/api/v2/workspaces/{}/watch", ws.id))
        .header("Coder-Session-Token", &tok)
        .body(Body::empty())
        .unwrap();
    let resp = lumie_server::router(api.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let mut buf = String::new();
    let mut next_event = async || -> WorkspaceJson {
        loop {
            if let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                if let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("an event within 5s")
                .unwrap()
                .unwrap();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    assert_eq!(next_event().await.status, WorkspaceStatus::Pending);
    // A change is written and published (what the reconciler does).
    for (status, reason) in [
        (
            WorkspaceStatus::Starting,
            "waiting for the agent to connect",
        ),
        (WorkspaceStatus::Running, ""),
    ] {
        assert!(
            api.state
                .db
                .set_workspace_status(&ws.id, status, reason)
                .await
                .unwrap()
        );
        api.state
            .events
            .publish(lumie_server::events::WorkspaceEvent {
                workspace_id: ws.id.clone(),
                status,
                reason: reason.into(),
            });
        let ev = next_event().await;
        assert_eq!((ev.status, ev.status_reason.as_str()), (status, reason));
    }
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let api = api().await;
    let (s, _, b) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"ok"[..]));
    let (s, _, b) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let r: ReadyJson = serde_json::from_slice(&b).unwrap();
    assert!(r.database && !r.kube && !r.ready);
    let (s, h, b) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().contains("openmetrics"));
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(
        text.contains("# TYPE lumie_agent_heartbeat_duration_seconds histogram"),
        "{text}"
    );
    let (s, _, b) = api.call("GET", "/api/v2/nope", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(message(&b).contains("no route"));
}

#[tokio::test]
async fn buildinfo_names_the_version_and_the_git_revision() {
    let api = api().await;
    let (s, _, b) = api.call("GET", "/api/v2/buildinfo", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["revision"], lumie_build_info::REVISION);
    assert!(!lumie_build_info::REVISION.is_empty());
}

/// Makes the agent of a workspace known with `token`, as a start build and its pod do.
async fn give_agent_token(api: &Api, workspace_id: &str, token: &str) -> AgentRecord {
    let agent = api
        .state
        .db
        .agent_for_workspace(workspace_id)
        .await
        .unwrap()
        .unwrap();
    api.state.agents.restart(workspace_id).await.unwrap();
    api.agents.add(token, workspace_id);
    let fresh = api
        .state
        .db
        .agent_for_workspace(workspace_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fresh.id, agent.id,
        "restart keeps the agent, resets its pod"
    );
    fresh
}

#[tokio::test]
async fn heartbeats_authenticate_update_memory_and_batch_writes() {
    let api = api().await;
    let (_, tok) = api.user("dan").await;
    let mut ids = vec![];
    for name in ["a", "b"] {
        let ws: WorkspaceJson = api
            .json(
                "POST",
                "/api/v2/users/me/workspaces",
                &tok,
                Some(serde_json::json!({"name": name})),
                StatusCode::CREATED,
            )
            .await;
        give_agent_token(&api, &ws.id, &format!("agent-{name}")).await;
        ids.push(ws.id);
    }
    let hb = HeartbeatRequest {
        lifecycle: LifecycleState::Ready,
        apps: BTreeMap::from([("tilt".into(), AppHealth::Healthy)]),
        version: "9.9.9".into(),
        ..Default::default()
    };
    let body = serde_json::to_value(&hb).unwrap();
    let (s, _, b) = api
        .call(
            "POST",
            "/api/v2/workspaceagents/me/heartbeat",
            Some("agent-a"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r: lumie_contract::agent_api::HeartbeatResponse = serde_json::from_slice(&b).unwrap();
    assert_eq!(r.report_interval_seconds, 15);
    // A user's API token is no agent token, and an unknown token is refused.
    for bad in [tok.as_str(), "agent-zzz"] {
        let (s, _, _) = api
            .call(
                "POST",
                "/api/v2/workspaceagents/me/heartbeat",
                Some(bad),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Memory at once; the token only ever touched workspace a.
    let a = api.state.agents.view(&ids[0]).unwrap();
    assert_eq!(a.lifecycle, LifecycleState::Ready);
    assert_eq!(
        api.state.agents.view(&ids[1]).unwrap().lifecycle,
        LifecycleState::Created
    );
    let ws: WorkspaceJson = api
        .json(
            "GET",
            &format!("/api/v2/workspaces/{}", ids[0]),
            &tok,
            None,
            StatusCode::OK,
        )
        .await;
    let agent = ws.agent.unwrap();
    assert_eq!(
        (agent.lifecycle_state.as_str(), agent.status.as_str()),
        ("ready", "connected")
    );
    assert_eq!(ws.apps[0].health, AppHealth::Healthy);
    // The database after one flush: both heartbeats of agent a collapse into one row write.
    api.call(
        "POST",
        "/api/v2/workspaceagents/me/heartbeat",
        Some("agent-a"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(api.state.agents.flush().await.unwrap(), 1);
    assert_eq!(
        api.state.agents.flush().await.unwrap(),
        0,
        "nothing pending"
    );
    let row = api
        .state
        .db
        .agent_for_workspace(&ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.lifecycle, row.version.as_str()),
        (LifecycleState::Ready, "9.9.9")
    );
    // Metrics after a sweep.
    api.state
        .agents
        .sweep(lumie_server::model::now_ms())
        .await
        .unwrap();
    let (_, _, m) = api.call("GET", "/metrics", None, None).await;
    let m = String::from_utf8(m.to_vec()).unwrap();
    assert!(
        m.contains(r#"lumie_agents{connection="connected",lifecycle="ready"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"lumie_agents{connection="connecting",lifecycle="created"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"lumie_agent_apps{app="tilt",health="healthy"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("lumie_agent_heartbeat_duration_seconds_count 4"),
        "{m}"
    );
}

#[tokio::test]
async fn heartbeat_apps_are_the_templates_and_bounded() {
    let api = api().await;
    let (_, tok) = api.user("fay").await;
    let ws: WorkspaceJson = api
        .json(
            "POST",
            "/api/v2/users/me/workspaces",
            &tok,
            Some(serde_json::json!({"name": "w"})),
            StatusCode::CREATED,
        )
        .await;
    give_agent_token(&api, &ws.id, "agent-w").await;
    let send = |apps: BTreeMap<String, AppHealth>| {
        let body = serde_json::to_value(HeartbeatRequest {
            lifecycle: LifecycleState::Ready,
            apps,
            ..Default::default()
        })
        .unwrap();
        api.call(
            "POST",
            "/api/v2/workspaceagents/me/heartbeat",
            Some("agent-w"),
            Some(body),
        )
    };

    // Slugs the template has no app for are dropped (and counted); the known one is kept.
    let (s, _, b) = send(BTreeMap::from([
        ("tilt".into(), AppHealth::Healthy),
        ("grafana".into(), AppHealth::Healthy),
        ("x-1".into(), AppHealth::Unhealthy),
    ]))
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let agent = api.state.agents.view(&ws.id).unwrap();
    assert_eq!(
        agent.apps,
        BTreeMap::from([("tilt".to_string(), AppHealth::Healthy)])
    );
    assert_eq!(api.state.agents.flush().await.unwrap(), 1);
    let row = api
        .state
        .db
        .agent_for_workspace(&ws.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.apps, agent.apps, "only the template's apps are stored");
    api.state
        .agents
        .sweep(lumie_server::model::now_ms())
        .await
        .unwrap();
    let (_, _, m) = api.call("GET", "/metrics", None, None).await;
    let m = String::from_utf8(m.to_vec()).unwrap();
    assert!(
        m.contains("lumie_agent_heartbeat_unknown_apps_total 2"),
        "{m}"
    );
    assert!(!m.contains("grafana"), "no label for an unknown app: {m}");

    // Too many entries, or a slug too long: 400 naming the limit; memory keeps the last good one.
    let many: BTreeMap<String, AppHealth> = (0..=lumie_server::agents::MAX_HEARTBEAT_APPS)
        .map(|i| (format!("app-{i}"), AppHealth::Healthy))
        .collect();
    let long = BTreeMap::from([("a".repeat(64), AppHealth::Healthy)]);
    for (apps, words) in [
        (many, ["17 apps", "at most 16"]),
        (long, ["64 bytes", "at most 63"]),
    ] {
        let (s, _, b) = send(apps).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&b)
        );
        let msg = message(&b);
        for w in words {
            assert!(msg.contains(w), "{w:?} in {msg}");
        }
    }
    assert_eq!(api.state.agents.view(&ws.id).unwrap().apps, agent.apps);
}

#[tokio::test]
async fn agent_binary_and_init_script() {
    let (db, dir) = common::sqlite_db().await;
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::write(
        bin_dir.join("lumie-agent-linux-amd64"),
        b"\x7fELF fake agent",
    )
    .unwrap();
    std::fs::write(bin_dir.join("README"), b"not a binary").unwrap();
    let api = api_with(db, dir, |c| c.agent_binary_dir = bin_dir.clone()).await;
    let (s, h, b) = api
        .call("GET", "/bin/lumie-agent-linux-amd64", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&b[..], b"\x7fELF fake agent");
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"\x7fELF fake agent",
    ));
    assert_eq!(h["x-lumie-agent-sha256"], want.as_str());
    let (s, h, b) = api
        .call("HEAD", "/bin/lumie-agent-linux-amd64", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-lumie-agent-sha256"], want.as_str());
    assert!(b.is_empty());
    for missing in ["/bin/lumie-agent-darwin-arm64", "/bin/lumie-agent-..-x"] {
        let (s, _, b) = api.call("GET", missing, None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(
            text.contains("available: lumie-agent-linux-amd64"),
            "{text}"
        );
        assert!(!text.contains("README"));
    }
    let (s, h, b) = api
        .call("GET", "/api/v2/init-script/linux/amd64", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().contains("shellscript"));
    assert!(b.starts_with(b"#!/bin/sh"));
    assert_eq!(&b[..], lumie_server::template::INIT_SCRIPT.as_bytes());
    let (s, _, _) = api
        .call("GET", "/api/v2/init-script/windows/amd64", None, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A tiny upstream app on a loopback address: echoes the path it saw and speaks WebSocket-ish
/// raw upgrade (after `101`, it echoes bytes back upper-cased).
async fn upstream_app(ip: &str, port: u16) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let line = text.lines().next().unwrap().to_string();
                let path = line.split(' ').nth(1).unwrap().to_string();
                let has_token = text.to_lowercase().contains("coder_session_token")
                    || text.to_lowercase().contains("coder-session-token");
                if text.to_lowercase().contains("upgrade: websocket") {
                    s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let up = buf[..n].to_ascii_uppercase();
                        s.write_all(&up).await.unwrap();
                    }
                }
                let body = format!("path={path} token_leaked={has_token}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    })
}

#[tokio::test]
async fn app_proxy_http_websocket_permissions_and_stopped_page() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = api().await;
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let ws: WorkspaceJson = api
        .json(
            "POST",
            "/api/v2/users/me/workspaces",
            &alice,
            Some(serde_json::json!({"name": "dev"})),
            StatusCode::CREATED,
        )
        .await;
    // A pod IP nobody else uses, with a stand-in Tilt on the contract's port.
    let ip = format!(
        "127.{}.{}.{}",
        100 + rand_byte() % 100,
        rand_byte(),
        1 + rand_byte() % 250
    );
    let _app = upstream_app(&ip, lumie_contract::apps::TILT.port).await;

    // Not running yet: a page that says so, not a 502.
    let (s, h, b) = api
        .call("GET", "/@alice/dev/apps/tilt/", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&b).contains("Workspace alice/dev is pending"));

    api.state
        .db
        .set_workspace_status(&ws.id, WorkspaceStatus::Running, "")
        .await
        .unwrap();
    api.state.cluster.replace(std::collections::HashMap::from([(
        ws.id.clone(),
        ClusterView {
            pod: Some(PodObservation {
                phase: "Running".into(),
                node: Some("worker-1".into()),
                pod_ip: Some(ip.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )]));
    let (s, _, b) = api
        .call("GET", "/@alice/dev/apps/tilt/r/x?y=1", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(&b[..], b"path=/r/x?y=1 token_leaked=false");
    let (s, h, _) = api
        .call("GET", "/@alice/dev/apps/tilt", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(h["location"], "/@alice/dev/apps/tilt/");
    // Path-based apps are their owner's only: another member and (without the dangerous
    // setting, see tests/app_proxy.rs) an admin get "not found".
    let (s, _, _) = api
        .call("GET", "/@alice/dev/apps/tilt/", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(
            "GET",
            "/@alice/dev/apps/tilt/",
            Some(&api.admin_token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "admins may not by default");
    let (s, _, _) = api.call("GET", "/@alice/dev/apps/tilt/", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // code-server is not listening: a clear 502 page naming the app.
    let (s, _, b) = api
        .call("GET", "/@alice/dev/apps/code-server/", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&b).contains("code-server is not answering"));

    // WebSocket (raw upgrade) through a real socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = lumie_server::router(api.state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET /@alice/dev/apps/tilt/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCoder-Session-Token: {alice}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in ["hello", "through the proxy"] {
        c.write_all(msg.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, msg.to_uppercase().as_bytes());
    }

    // Stopped: the clear page again.
    api.state
        .db
        .create_build(&ws.id, lumie_server::model::Transition::Stop, None)
        .await
        .unwrap_err();
    api.state
        .db
        .set_workspace_status(
            &ws.id,
            WorkspaceStatus::Stopped,
            "stopped; the home volume is kept",
        )
        .await
        .unwrap();
    let (s, _, b) = api
        .call("GET", "/@alice/dev/apps/tilt/", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let page = String::from_utf8_lossy(&b);
    assert!(
        page.contains("is stopped") && page.contains("Start it"),
        "{page}"
    );
}

fn rand_byte() -> u8 {
    use rand::Rng;
    rand::rng().random()
}

/// Framework rejections answer in the API's JSON error shape, and the 413 names the limit.
#[tokio::test]
async fn framework_rejections_are_json_errors() {
    let api = api().await;
    let raw = |content_type: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder()
            .method("POST")
            .uri("/api/v2/users/admin/workspaces")
            .header("Coder-Session-Token", &api.admin_token);
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        b.body(Body::from(body)).unwrap()
    };
    let json = Some("application/json");
    let cases = [
        (
            "missing field",
            raw(json, b"{}".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `name`",
        ),
        (
            "not JSON",
            raw(json, b"{name".to_vec()),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "no content type",
            raw(None, b"{\"name\":\"x\"}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
        (
            "too large",
            raw(
                json,
                vec![b' '; lumie_server::rejections::BODY_LIMIT_BYTES + 1],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "the limit is 2 MiB",
        ),
    ];
    for (name, req, want_status, want_text) in cases {
        let resp = lumie_server::router(api.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), want_status, "{name}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{name}: {ct}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(want_text), "{name}: {message}");
    }
}
