//! PostgreSQL going away under a running server: requests are answered 503 naming the database
//! within about the pool's acquire timeout (not 500 after 10 s), and heartbeats queued while it
//! is away are written once it is back.
//!
//! The outage is real from the server's side: its pool talks to the test binary's PostgreSQL
//! through a loopback TCP relay ([`Relay`]) that this test stops (every relayed connection
//! closed, the port then refusing connections) and starts again on the same port. Stopping the
//! PostgreSQL server itself would take the other tests of the binary down with it.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::relay::{Relay, host_port};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use lumie_contract::agent_api::{HeartbeatRequest, LifecycleState};
use lumie_server::api::WorkspaceJson;
use lumie_server::config::{Config, DatabaseConfig};
use lumie_server::db::Db;
use lumie_server::state::AppState;
use lumie_server::template::Template;
use tower::ServiceExt;

struct Outage {
    relay: Relay,
    state: AppState,
    admin: String,
    /// The same database, directly (not through the relay), to read what was written.
    direct: Db,
    _dir: tempfile::TempDir,
}

async fn outage() -> Outage {
    let (direct, url) = common::pg_db_with_url().await;
    let relay = Relay::start(host_port(&url));
    let relayed = url.replace(&host_port(&url).to_string(), &relay.addr.to_string());
    let db = Db::connect(&DatabaseConfig::Postgres(relayed))
        .await
        .expect("connect through the relay");
    let (_, admin) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(
        Config::for_tests(dir.path().to_path_buf()),
        db,
        Template::default(),
        None,
    )
    .await
    .unwrap();
    Outage {
        relay,
        state,
        admin,
        direct,
        _dir: dir,
    }
}

impl Outage {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header("Coder-Session-Token", &self.admin);
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
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    /// A heartbeat of the agent of `workspace_id`, as the agent API hands it over once the pod's
    /// token is reviewed (authentication is not what this test is about).
    async fn heartbeat(&self, workspace_id: &str, lifecycle: LifecycleState, version: &str) {
        let hb = HeartbeatRequest {
            lifecycle,
            version: version.into(),
            ..Default::default()
        };
        self.state
            .agents
            .heartbeat(workspace_id, hb)
            .expect("heartbeats are answered from memory");
    }
}

#[tokio::test]
async fn database_down_is_a_fast_503_naming_it_and_back_up_serves_again() {
    let o = outage().await;
    let (s, _, _) = o.call("GET", "/api/v2/users/me", None).await;
    assert_eq!(s, StatusCode::OK);

    o.relay.stop().await;
    for path in ["/api/v2/users/me", "/api/v2/workspaces"] {
        let started = Instant::now();
        let (s, headers, body) = o.call("GET", path, None).await;
        let took = started.elapsed();
        eprintln!("{path}: {s} after {took:?}");
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(
            took < Duration::from_secs(2),
            "{path}: answered after {took:?}"
        );
        let message = body["message"].as_str().unwrap();
        for w in [
            "database is unavailable",
            "PostgreSQL",
            "CODER_PG_CONNECTION_URL",
        ] {
            assert!(message.contains(w), "{w:?} in {message}");
        }
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
        assert_eq!(headers["retry-after"], "5");
    }

    o.relay.restart();
    let (s, _, body) = o.call("GET", "/api/v2/users/me", None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "served again once the database is back: {body}"
    );
}

#[tokio::test]
async fn heartbeats_queued_during_an_outage_are_written_once_the_database_is_back() {
    let o = outage().await;
    let mut workspaces = vec![];
    for name in ["a", "b"] {
        let (s, _, body) = o
            .call(
                "POST",
                "/api/v2/users/me/workspaces",
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let ws: WorkspaceJson = serde_json::from_value(body).unwrap();
        o.state.agents.restart(&ws.id).await.unwrap();
        workspaces.push(ws.id);
    }
    let (a, b) = (workspaces[0].clone(), workspaces[1].clone());
    o.heartbeat(&a, LifecycleState::Starting, "1.0.0").await;
    o.heartbeat(&b, LifecycleState::Ready, "1.0.0").await;

    o.relay.stop().await;
    assert!(o.state.agents.flush().await.is_err(), "the write fails");
    // A newer heartbeat of agent a arrives while the database is away; b's stays queued.
    o.heartbeat(&a, LifecycleState::Ready, "1.0.1").await;
    assert!(o.state.agents.flush().await.is_err(), "still down");

    o.relay.restart();
    assert_eq!(
        o.state.agents.flush().await.unwrap(),
        2,
        "both agents' latest heartbeats, once each"
    );
    assert_eq!(o.state.agents.flush().await.unwrap(), 0, "nothing left");
    let rows: Vec<(LifecycleState, String)> =
        futures::future::join_all(workspaces.iter().map(|ws| o.direct.agent_for_workspace(ws)))
            .await
            .into_iter()
            .map(|r| {
                let r = r.unwrap().unwrap();
                (r.lifecycle, r.version)
            })
            .collect();
    assert_eq!(
        rows,
        vec![
            (LifecycleState::Ready, "1.0.1".to_string()),
            (LifecycleState::Ready, "1.0.0".to_string()),
        ],
        "the newest heartbeat of a (not the one queued before it), and b's"
    );
}
