//! The startup-log tables (migration 0006) against SQLite and a real PostgreSQL alike: each batch
//! stored once, in order, bounded per start with what was dropped counted, and only the latest
//! starts kept.

mod common;

use lumie_contract::agent_api::{LogLine, LogStream, MAX_LOG_BYTES_PER_START};
use lumie_server::db::{Db, KEEP_STARTS};

fn line(i: usize, len: usize) -> LogLine {
    LogLine {
        at_ms: 1_700_000_000_000 + i as i64,
        stream: if i % 2 == 0 {
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
            (if seq == 5 { (3, 300) } else { (0, 0) }),
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
