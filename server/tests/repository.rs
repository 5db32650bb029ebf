//! The repository test suite, run against SQLite and a real PostgreSQL server alike.

mod common;

use std::collections::BTreeMap;

use lumie_contract::agent_api::{AppHealth, ConnectionStatus, LifecycleState};
use lumie_server::Error;
use lumie_server::config::DatabaseConfig;
use lumie_server::db::{AuditFilter, Db, HeartbeatWrite, hash_token};
use lumie_server::model::*;

/// Every case of the suite: each takes a fresh database.
mod suite {
    use super::*;

    pub async fn users_and_first_admin(db: Db) {
        assert_eq!(db.count_users().await.unwrap(), 0);
        let (admin, token) = db
            .bootstrap_admin("admin")
            .await
            .unwrap()
            .expect("first start");
        assert!(admin.is_admin);
        assert!(
            db.bootstrap_admin("admin").await.unwrap().is_none(),
            "only once"
        );
        let alice = db.create_user("alice", "alice@x", false).await.unwrap();
        assert!(!alice.is_admin);
        let e = db.create_user("alice", "", false).await.unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m.contains("already exists")),
            "{e}"
        );
        assert_eq!(
            db.user_by_name("alice").await.unwrap().unwrap().id,
            alice.id
        );
        assert_eq!(
            db.user_by_id(&alice.id).await.unwrap().unwrap().username,
            "alice"
        );
        assert_eq!(db.list_users().await.unwrap().len(), 2);
        let (owner, name) = db.token_owner(&token).await.unwrap().unwrap();
        assert_eq!((owner.id, name.as_str()), (admin.id, "first admin"));
    }

    pub async fn api_tokens_are_stored_hashed(db: Db) {
        let u = db.create_user("bob", "", false).await.unwrap();
        let token = db.create_api_token(&u.id, "cli").await.unwrap();
        assert!(token.len() > 30, "{token}");
        let (owner, name) = db.token_owner(&token).await.unwrap().unwrap();
        assert_eq!((owner.id, name.as_str()), (u.id, "cli"));
        assert!(db.token_owner("nope").await.unwrap().is_none());
        // The hash is what is stored: presenting the hash itself must not authenticate.
        assert!(db.token_owner(&hash_token(&token)).await.unwrap().is_none());
    }

    pub async fn workspaces_unique_by_owner_name_and_pod_name(db: Db) {
        let a_b = db.create_user("a-b", "", false).await.unwrap();
        let a = db.create_user("a", "", false).await.unwrap();
        let created = db
            .create_workspace(&a_b, "c", "coder-a-b-c", Some(&a_b))
            .await
            .unwrap();
        assert_eq!(created.workspace.status, WorkspaceStatus::Pending);
        assert_eq!(created.build.transition, Transition::Start);
        assert_eq!(created.build.number, 1);
        let e = db
            .create_workspace(&a_b, "c", "coder-a-b-c", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m == "workspace a-b/c already exists"),
            "{e}"
        );
        let e = db
            .create_workspace(&a, "b-c", "coder-a-b-c", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m.contains("pod name coder-a-b-c")),
            "{e}"
        );
        let got = db.workspace(&created.workspace.id).await.unwrap().unwrap();
        assert_eq!(got, created.workspace);
        assert_eq!(
            db.workspace_by_owner_and_name(&a_b.id, "c")
                .await
                .unwrap()
                .unwrap()
                .id,
            got.id
        );
        db.create_workspace(&a, "other", "coder-a-other", None)
            .await
            .unwrap();
        assert_eq!(db.list_workspaces(Some(&a.id)).await.unwrap().len(), 1);
        let all = db.list_workspaces(None).await.unwrap();
        assert_eq!(
            all.iter()
                .map(|w| format!("{}/{}", w.owner_name, w.name))
                .collect::<Vec<_>>(),
            ["a/other", "a-b/c"]
        );
    }

    pub async fn status_writes_only_on_change(db: Db) {
        let u = db.create_user("carol", "", false).await.unwrap();
        let ws = db
            .create_workspace(&u, "dev", "coder-carol-dev", None)
            .await
            .unwrap()
            .workspace;
        assert!(
            db.set_workspace_status(&ws.id, WorkspaceStatus::Starting, "waiting for agent")
                .await
                .unwrap()
        );
        assert!(
            !db.set_workspace_status(&ws.id, WorkspaceStatus::Starting, "waiting for agent")
                .await
                .unwrap()
        );
        assert!(
            db.set_workspace_status(&ws.id, WorkspaceStatus::Starting, "other reason")
                .await
                .unwrap()
        );
        let got = db.workspace(&ws.id).await.unwrap().unwrap();
        assert_eq!(got.status, WorkspaceStatus::Starting);
        assert_eq!(got.status_reason, "other reason");
    }

    pub async fn builds_one_in_flight_and_delete_frees_the_name(db: Db) {
        let u = db.create_user("dave", "", false).await.unwrap();
        let created = db
            .create_workspace(&u, "dev", "coder-dave-dev", Some(&u))
            .await
            .unwrap();
        let ws = created.workspace;
        let e = db
            .create_build(&ws.id, Transition::Stop, Some(&u))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m.contains("already in progress")),
            "{e}"
        );
        assert_eq!(db.active_builds().await.unwrap().len(), 1);
        db.start_build(&created.build.id).await.unwrap();
        let b = db.build(&created.build.id).await.unwrap().unwrap();
        assert_eq!(b.status, BuildStatus::Running);
        assert!(b.started_at.is_some());
        db.finish_build(&b.id, BuildStatus::Succeeded, None)
            .await
            .unwrap();
        // Finishing twice does not overwrite the outcome.
        db.finish_build(&b.id, BuildStatus::Failed, Some("late"))
            .await
            .unwrap();
        let b = db.build(&b.id).await.unwrap().unwrap();
        assert_eq!(b.status, BuildStatus::Succeeded);
        assert_eq!(b.error, None);
        assert!(db.active_builds().await.unwrap().is_empty());

        let stop = db
            .create_build(&ws.id, Transition::Stop, Some(&u))
            .await
            .unwrap();
        assert_eq!(stop.number, 2);
        assert_eq!(
            db.workspace(&ws.id).await.unwrap().unwrap().desired_state,
            DesiredState::Stopped
        );
        db.finish_build(&stop.id, BuildStatus::Failed, Some("boom"))
            .await
            .unwrap();
        let latest = db.latest_build(&ws.id).await.unwrap().unwrap();
        assert_eq!((latest.number, latest.error.as_deref()), (2, Some("boom")));
        assert_eq!(db.latest_builds(None).await.unwrap()[&ws.id].number, 2);
        assert_eq!(db.latest_builds(Some(&u.id)).await.unwrap().len(), 1);
        assert!(
            db.latest_builds(Some("someone-else"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(db.list_builds(&ws.id).await.unwrap().len(), 2);

        let del = db
            .create_build(&ws.id, Transition::Delete, None)
            .await
            .unwrap();
        db.finish_build(&del.id, BuildStatus::Succeeded, None)
            .await
            .unwrap();
        let e = db
            .create_build(&ws.id, Transition::Start, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        db.mark_workspace_deleted(&ws.id).await.unwrap();
        assert!(db.list_workspaces(None).await.unwrap().is_empty());
        assert_eq!(
            db.workspace(&ws.id).await.unwrap().unwrap().status,
            WorkspaceStatus::Deleted
        );
        db.create_workspace(&u, "dev", "coder-dave-dev", None)
            .await
            .expect("the name is free again");
        let log = db
            .audit_query(&AuditFilter {
                workspace_id: Some(ws.id.clone()),
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["build.delete", "build.stop", "workspace.create"]);
        assert_eq!(log[0].actor_name, "system");
        assert_eq!(log[2].actor_name, "dave");
    }

    pub async fn agents_token_and_batched_heartbeats(db: Db) {
        let u = db.create_user("erin", "", false).await.unwrap();
        let mut ids = vec![];
        for name in ["one", "two"] {
            let c = db
                .create_workspace(&u, name, &format!("coder-erin-{name}"), None)
                .await
                .unwrap();
            db.reset_agent(&c.agent_id, Some(&hash_token(&format!("tok-{name}"))))
                .await
                .unwrap();
            ids.push((c.workspace.id, c.agent_id));
        }
        // The server looks agents up by token hash among the live agents it loads at start.
        let a = live_agent_with_token(&db, "tok-one").await.unwrap();
        assert_eq!(a.workspace_id, ids[0].0);
        assert_eq!(a.lifecycle, LifecycleState::Created);
        assert_eq!(a.connection, ConnectionStatus::Connecting);
        assert!(live_agent_with_token(&db, "tok-x").await.is_none());
        let apps = BTreeMap::from([("tilt".to_string(), AppHealth::Healthy)]);
        let writes: Vec<_> = ids
            .iter()
            .map(|(_, agent)| agent.clone())
            .chain(["no-such-agent".to_string()])
            .enumerate()
            .map(|(i, agent_id)| HeartbeatWrite {
                agent_id,
                lifecycle: LifecycleState::Ready,
                lifecycle_reason: String::new(),
                first_connected_at: 1_000,
                last_contact_at: 2_000 + i as i64,
                apps_json: serde_json::to_string(&apps).unwrap(),
                stats_json: (i == 0).then(|| r#"{"cpu_cores":0.5,"memory_used_bytes":1,"memory_total_bytes":2,"disk_used_bytes":3,"disk_total_bytes":4,"network_rx_bytes":5,"network_tx_bytes":6,"forwarded_connections_open":7,"forwarded_connections_total":8,"forwarded_bytes":9}"#.to_string()),
                version: "0.1.0".into(),
            })
            .collect();
        db.write_heartbeats(&writes).await.unwrap();
        let live = db.live_agents().await.unwrap();
        assert_eq!(live.len(), 2, "the unknown agent was not created");
        let one = db.agent_for_workspace(&ids[0].0).await.unwrap().unwrap();
        assert_eq!(one.lifecycle, LifecycleState::Ready);
        assert_eq!(one.connection, ConnectionStatus::Connected);
        assert_eq!(one.last_contact_at, Some(2_000));
        assert_eq!(one.apps, apps);
        assert_eq!(one.stats.unwrap().forwarded_bytes, 9);
        assert_eq!(one.version, "0.1.0");
        let two = db.agent_for_workspace(&ids[1].0).await.unwrap().unwrap();
        assert_eq!((two.last_contact_at, two.stats), (Some(2_001), None));

        db.set_agent_connections(&[(ids[1].1.clone(), ConnectionStatus::Disconnected)])
            .await
            .unwrap();
        let two = db.agent_for_workspace(&ids[1].0).await.unwrap().unwrap();
        assert_eq!(two.connection, ConnectionStatus::Disconnected);

        // A new pod: same agent row, new token, fresh state.
        db.reset_agent(&ids[0].1, Some(&hash_token("tok-one-b")))
            .await
            .unwrap();
        assert!(live_agent_with_token(&db, "tok-one").await.is_none());
        assert!(live_agent_with_token(&db, "tok-one-b").await.is_some());
        let one = db.agent_for_workspace(&ids[0].0).await.unwrap().unwrap();
        assert_eq!(
            (one.lifecycle, one.connection, one.last_contact_at),
            (LifecycleState::Created, ConnectionStatus::Connecting, None)
        );
    }

    /// The live agent whose token hash is that of `token`.
    async fn live_agent_with_token(db: &Db, token: &str) -> Option<AgentRecord> {
        let hash = hash_token(token);
        db.live_agents()
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.token_hash == hash)
    }

    pub async fn heartbeat_batches_larger_than_one_statement(db: Db) {
        let u = db.create_user("fred", "", false).await.unwrap();
        let mut writes = vec![];
        for i in 0..(lumie_server::db::HEARTBEAT_BATCH_ROWS + 7) {
            let c = db
                .create_workspace(&u, &format!("w{i}"), &format!("coder-fred-w{i}"), None)
                .await
                .unwrap();
            writes.push(HeartbeatWrite {
                agent_id: c.agent_id,
                lifecycle: LifecycleState::Starting,
                lifecycle_reason: String::new(),
                first_connected_at: 5,
                last_contact_at: 6,
                apps_json: "{}".into(),
                stats_json: None,
                version: String::new(),
            });
        }
        db.write_heartbeats(&writes).await.unwrap();
        let live = db.live_agents().await.unwrap();
        assert!(
            live.iter()
                .all(|a| a.lifecycle == LifecycleState::Starting && a.last_contact_at == Some(6)),
            "every row of both statements written"
        );
    }

    pub async fn concurrent_creates_one_duplicate(db: Db) {
        let u = db.create_user("gina", "", false).await.unwrap();
        let mut tasks = vec![];
        for i in 0..20 {
            let (db, u) = (db.clone(), u.clone());
            let name = if i == 19 {
                "w0".to_string()
            } else {
                format!("w{i}")
            };
            tasks.push(tokio::spawn(async move {
                db.create_workspace(&u, &name, &format!("coder-gina-{name}"), None)
                    .await
            }));
        }
        let mut ok = 0;
        let mut conflicts = vec![];
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(Error::Conflict(m)) => conflicts.push(m),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(ok, 19);
        assert_eq!(conflicts, ["workspace gina/w0 already exists"]);
        assert_eq!(db.list_workspaces(Some(&u.id)).await.unwrap().len(), 19);
        assert_eq!(db.active_builds().await.unwrap().len(), 19);
    }

    pub async fn migrations_are_recorded(db: Db) {
        assert!(db.is_migrated().await.unwrap());
        db.migrate()
            .await
            .expect("re-running migrations is a no-op");
    }
}

macro_rules! run_suite_on {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            run_suite_on!(@cases $make;
                users_and_first_admin,
                api_tokens_are_stored_hashed,
                workspaces_unique_by_owner_name_and_pod_name,
                status_writes_only_on_change,
                builds_one_in_flight_and_delete_frees_the_name,
                agents_token_and_batched_heartbeats,
                heartbeat_batches_larger_than_one_statement,
                concurrent_creates_one_duplicate,
                migrations_are_recorded
            );
        }
    };
    (@cases $make:expr; $($case:ident),+) => {
        $(
            #[tokio::test]
            async fn $case() {
                #[allow(unused_variables)]
                let (db, guard) = $make;
                suite::$case(db).await;
            }
        )+
    };
}

run_suite_on!(sqlite, common::sqlite_db().await);
run_suite_on!(postgres, (common::pg_db().await, ()));

#[tokio::test]
async fn wrong_postgres_password_names_the_secret() {
    let base = common::pg_base_url();
    let (userinfo, rest) = base
        .trim_start_matches("postgres://")
        .split_once('@')
        .unwrap();
    let user = userinfo.split(':').next().unwrap();
    let url = format!("postgres://{user}:wrong@{rest}");
    let e = Db::connect(&DatabaseConfig::Postgres(url))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("rejected the credentials"), "{e}");
    assert!(e.contains("coder-db-secret"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[tokio::test]
async fn unreachable_postgres_names_the_setting() {
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://u:p@127.0.0.1:{port}/db");
    let e = Db::connect(&DatabaseConfig::Postgres(url))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unreachable"), "{e}");
    assert!(e.contains("CODER_PG_CONNECTION_URL"), "{e}");
}

#[tokio::test]
async fn sqlite_in_an_unwritable_place_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    // A data dir below a regular file cannot be created.
    let e = Db::connect(&DatabaseConfig::Sqlite(file.join("sub/lumie.db")))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("LUMIE_DATA_DIR"), "{e}");
}
