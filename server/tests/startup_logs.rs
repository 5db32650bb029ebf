//! The startup-log tables (migration 0006) against SQLite and a real PostgreSQL alike: each batch
//! stored once, in order, bounded per start with what was dropped counted, and only the latest
//! starts kept. Then the HTTP side in-process: the agent's manifest and log routes, the logs API
//! (JSON and `?follow`) and the dashboard's Startup log section.

mod common;

use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use lumie_contract::agent_api::{
    LOGS_PATH, LogLine, LogStream, MANIFEST_PATH, MAX_LOG_BYTES_PER_START, Manifest,
};
use lumie_server::config::Config;
use lumie_server::db::{Db, KEEP_STARTS};
use lumie_server::startup_logs::WorkspaceLogsJson;
use lumie_server::state::AppState;
use lumie_server::template::Template;
use tower::ServiceExt;

fn line(i: usize, len: usize) -> LogLine {
    LogLine {
        at_ms: 1_700_000_000_000 + i as i64,
        stream: if i.is_multiple_of(2) {
            LogStream::Stdout
        } else {
            LogStream::Stderr
        },
        text: format!("{i:08}{}", "é".repeat(len.saturating_sub(8) / 2)),
    }
}

async fn workspace(db: &Db) -> String {
    let user = db.create_user("alice", "", false).await.unwrap();
    db.create_workspace(&user, "dev", "coder-alice-dev", None)
        .await
        .unwrap()
        .workspace
        .id
}

async fn suite(db: Db) {
    let ws = workspace(&db).await;
    assert!(db.log_starts(&ws).await.unwrap().is_empty());
    let first: Vec<LogLine> = (0..600).map(|i| line(i, 30)).collect();
    assert_eq!(
        db.append_logs(&ws, "start-a", 1, &first, (0, 0))
            .await
            .unwrap(),
        Some(600),
        "more lines than one INSERT holds"
    );
    assert_eq!(
        db.append_logs(&ws, "start-a", 1, &first, (0, 0))
            .await
            .unwrap(),
        None,
        "a retry is stored once"
    );
    let got = db.log_lines(&ws, "start-a", 0, 10_000).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.line.clone()).collect::<Vec<_>>(),
        first,
        "in order, streams and text (UTF-8) intact"
    );
    let after = db.log_lines(&ws, "start-a", got[99].id, 10).await.unwrap();
    assert_eq!(after[0].line, first[100], "paging by id");

    // 2 MiB more in 4 KiB lines, with drops the agent reports: the start keeps the newest 1 MiB.
    let mut next = 600;
    for seq in 2..=9 {
        let b: Vec<LogLine> = (0..64).map(|k| line(next + k, 4096)).collect();
        next += 64;
        db.append_logs(
            &ws,
            "start-a",
            seq,
            &b,
            if seq == 5 { (3, 300) } else { (0, 0) },
        )
        .await
        .unwrap();
    }
    let start = db.log_starts(&ws).await.unwrap().remove(0);
    let kept = db.log_lines(&ws, "start-a", 0, 100_000).await.unwrap();
    let kept_bytes: i64 = kept.iter().map(|s| s.line.text.len() as i64).sum();
    assert_eq!(kept_bytes, start.bytes);
    assert!(start.bytes <= MAX_LOG_BYTES_PER_START as i64, "{start:?}");
    assert_eq!(
        kept.len() as i64 + start.dropped_lines,
        (next + 3) as i64,
        "kept + dropped (by the server and the agent) = sent"
    );
    assert_eq!(kept.last().unwrap().line, line(next - 1, 4096));

    // New starts: only the latest few are kept, the oldest go with their lines.
    for i in 0..KEEP_STARTS {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        db.append_logs(&ws, &format!("start-{i}"), 1, &[line(0, 10)], (0, 0))
            .await
            .unwrap();
    }
    let starts = db.log_starts(&ws).await.unwrap();
    assert_eq!(starts.len() as i64, KEEP_STARTS);
    assert!(starts.iter().all(|s| s.start_id != "start-a"));
    assert!(
        db.log_lines(&ws, "start-a", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.append_logs(&ws, "start-a", 1, &first[..1], (0, 0))
            .await
            .unwrap(),
        Some(1),
        "a pruned start's batch ids went with it"
    );
}

#[tokio::test]
async fn sqlite() {
    let (db, _dir) = common::sqlite_db().await;
    suite(db).await;
}

#[tokio::test]
async fn postgres() {
    suite(common::pg_db().await).await;
}

async fn send(
    state: &AppState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, String) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("Coder-Session-Token", t);
    }
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v)),
        None => b.body(Body::empty()),
    }
    .unwrap();
    let resp = lumie_server::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn agent_routes_logs_api_and_dashboard_section() {
    let (db, dir) = common::sqlite_db().await;
    let (admin, admin_token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let ws = db
        .create_workspace(&admin, "dev", "coder-admin-dev", None)
        .await
        .unwrap()
        .workspace
        .id;
    let bob = db.create_user("bob", "", false).await.unwrap();
    let bob_token = db.create_api_token(&bob.id, "t").await.unwrap();
    let template = Template {
        startup_script: "echo hi".into(),
        shutdown_script: "echo bye".into(),
        ..Template::default()
    };
    let state = AppState::new(
        Config::for_tests(dir.path().to_path_buf()),
        db,
        template,
        None,
    )
    .await
    .unwrap();
    let agents = std::sync::Arc::new(lumie_server::agent_api::FixedAgents::new(
        state.agent_auth.expected_username(),
    ));
    state.agent_auth.install(agents.clone(), agents.clone());
    let agent = "agent-token-of-dev-0123456789";
    agents.add(agent, &ws);

    // The manifest: the template's scripts, for the agent token only.
    let (status, body) = send(&state, "GET", MANIFEST_PATH, Some(agent), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m: Manifest = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (m.startup_script.as_str(), m.shutdown_script.as_str()),
        ("echo hi", "echo bye")
    );
    let (status, _) = send(&state, "GET", MANIFEST_PATH, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Log batches: stored once; malformed ones a 400 in the JSON error shape.
    let batch = |seq: u64, text: &str| {
        serde_json::json!({"start_id": "s1", "seq": seq, "lines": [
            {"at_ms": 1_700_000_000_000i64, "stream": "stderr", "text": text}
        ]})
        .to_string()
    };
    let evil = format!("<script>alert(1)</script> {agent}");
    let (status, body) = send(
        &state,
        "POST",
        LOGS_PATH,
        Some(agent),
        Some(batch(1, &evil)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, r#"{"stored":1,"duplicate":false}"#);
    let (_, body) = send(
        &state,
        "POST",
        LOGS_PATH,
        Some(agent),
        Some(batch(1, &evil)),
    )
    .await;
    assert_eq!(body, r#"{"stored":0,"duplicate":true}"#);
    for (what, b, want) in [
        ("not JSON", "{".to_string(), "not a log batch"),
        (
            "bad start id",
            batch(2, "x").replace("\"s1\"", "\"../x\""),
            "start_id",
        ),
        ("seq 0", batch(0, "x"), "seq starts at 1"),
        (
            "unknown stream",
            batch(2, "x").replace("stderr", "stdin"),
            "not a log batch",
        ),
    ] {
        let (status, body) = send(&state, "POST", LOGS_PATH, Some(agent), Some(b)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert!(
            v["message"].as_str().unwrap_or_default().contains(want),
            "{what}: {body}"
        );
    }
    let (status, _) = send(
        &state,
        "POST",
        LOGS_PATH,
        Some("someone-else-entirely"),
        Some(batch(3, "x")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The logs API: the owner sees the line (the token redacted), others get 404.
    let path = format!("/api/v2/workspaces/{ws}/logs");
    let (status, body) = send(&state, "GET", &path, Some(&admin_token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let logs: WorkspaceLogsJson = serde_json::from_str(&body).unwrap();
    assert_eq!(logs.start_id.as_deref(), Some("s1"));
    assert_eq!(logs.lines.len(), 1);
    assert_eq!(logs.lines[0].stream, LogStream::Stderr);
    assert_eq!(
        logs.lines[0].text,
        "<script>alert(1)</script> [agent token redacted]"
    );
    let (status, _) = send(&state, "GET", &path, Some(&bob_token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &state,
        "GET",
        &format!("{path}?start=nope"),
        Some(&admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Following: what is there, then what comes.
    let req = Request::builder()
        .uri(format!("{path}?follow"))
        .header("Coder-Session-Token", &admin_token)
        .body(Body::empty())
        .unwrap();
    let resp = lumie_server::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.into_body().into_data_stream();
    let mut seen = String::new();
    while !seen.contains("alert(1)") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("the stored line")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: line"), "{seen}");
    let (status, _) = send(
        &state,
        "POST",
        LOGS_PATH,
        Some(agent),
        Some(batch(2, "second line")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    while !seen.contains("second line") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("the new line, live")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    // The dashboard's section shows the text escaped.
    let (status, page) = send(&state, "GET", "/@admin/dev", Some(&admin_token), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Startup log"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; [agent token redacted]"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "escaped");
    assert!(
        page.contains(&format!(
            "data-follow=\"/api/v2/workspaces/{ws}/logs?follow\""
        )),
        "{page}"
    );
}

#[tokio::test]
async fn readyz_says_when_there_is_no_agent_binary_to_serve() {
    let (db, dir) = common::sqlite_db().await;
    let bin_dir = dir.path().join("agent-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.agent_binary_dir = bin_dir.clone();
    let state = AppState::new(config, db, Template::default(), None)
        .await
        .unwrap();
    let ready =
        |body: &str| -> lumie_server::api::ReadyJson { serde_json::from_str(body).unwrap() };
    let (_, body) = send(&state, "GET", "/readyz", None, None).await;
    let r = ready(&body);
    assert!(r.agent_binaries.is_empty());
    assert!(
        r.warnings.iter().any(|w| w.contains("no agent binary to serve")
            && w.contains("LUMIE_AGENT_BINARY_DIR")),
        "{body}"
    );
    std::fs::write(bin_dir.join("lumie-agent-linux-amd64"), b"#!/bin/sh\n").unwrap();
    let (_, body) = send(&state, "GET", "/readyz", None, None).await;
    let r = ready(&body);
    assert_eq!(r.agent_binaries, ["lumie-agent-linux-amd64"]);
    assert!(
        r.warnings.iter().all(|w| !w.contains("agent binary")),
        "{body}"
    );
}
