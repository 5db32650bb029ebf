//! The `workspace_log_*` tables: script output per workspace start, each agent batch stored
//! once ((start, seq) is its key), at most [`MAX_LOG_BYTES_PER_START`] per start (the oldest
//! lines dropped and counted: [`drop_cutoff`], with what the agent itself dropped), the latest
//! [`KEEP_STARTS`] starts per workspace.

use lumie_contract::agent_api::{LogLine, LogStream, MAX_LOG_BYTES_PER_START};
use sqlx::Row;

use super::{Db, bad_value};
use crate::error::Result;
use crate::model::now_ms;

/// Starts kept per workspace; older ones go when a new one begins.
pub const KEEP_STARTS: i64 = 5;
/// Lines per `INSERT` statement (7 parameters each, well within both databases' limits).
const INSERT_ROWS: usize = 500;

/// One start of a workspace, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStart {
    /// The agent's start id.
    pub start_id: String,
    /// First batch received, ms.
    pub created_at: i64,
    /// Last batch received, ms.
    pub updated_at: i64,
    /// Bytes of line text kept.
    pub bytes: i64,
    /// Lines dropped to keep within the bound.
    pub dropped_lines: i64,
    /// Bytes dropped.
    pub dropped_bytes: i64,
}

/// A stored line and its id (ids grow in the order lines were stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLine {
    /// Row id.
    pub id: i64,
    /// The line.
    pub line: LogLine,
}

/// Which of the oldest lines (`(id, bytes)`, oldest first) to drop so that `total` bytes fit
/// in `max`: the id to delete up to (inclusive), and how many lines and bytes go. `None` when
/// it fits already.
pub fn drop_cutoff(oldest: &[(i64, i64)], total: i64, max: i64) -> Option<(i64, i64, i64)> {
    if total <= max {
        return None;
    }
    let (mut lines, mut bytes) = (0i64, 0i64);
    for &(id, b) in oldest {
        lines += 1;
        bytes += b;
        if total - bytes <= max {
            return Some((id, lines, bytes));
        }
    }
    oldest.last().map(|&(id, _)| (id, lines, bytes))
}

impl Db {
    /// Stores one batch of a start's lines; `None` when this batch was stored before (a retry).
    /// Drops the start's oldest lines beyond the bound, and a new start's arrival prunes the
    /// workspace's oldest starts.
    pub async fn append_logs(
        &self,
        workspace_id: &str,
        start_id: &str,
        seq: u64,
        lines: &[LogLine],
        agent_dropped: (u64, u64),
    ) -> Result<Option<u64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let new_start = sqlx::query(
            "INSERT INTO workspace_log_starts (workspace_id, start_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (workspace_id, start_id) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(start_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let fresh = sqlx::query(
            "INSERT INTO workspace_log_batches (workspace_id, start_id, seq, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (workspace_id, start_id, seq) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(start_id)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.commit().await?;
            return Ok(None);
        }
        let mut added = 0i64;
        for chunk in lines.chunks(INSERT_ROWS) {
            let mut sql = String::from(
                "INSERT INTO workspace_logs (workspace_id, start_id, at_ms, stream, text, bytes) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                let b = 2 + i * 4;
                sql.push_str(&format!(
                    "($1, $2, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4
                ));
            }
            let mut q = sqlx::query(&sql).bind(workspace_id).bind(start_id);
            for l in chunk {
                let bytes = l.text.len() as i64;
                added += bytes;
                q = q
                    .bind(l.at_ms)
                    .bind(l.stream.as_str())
                    .bind(l.text.as_str())
                    .bind(bytes);
            }
            q.execute(&mut *tx).await?;
        }
        let total: i64 = sqlx::query(
            "UPDATE workspace_log_starts SET bytes = bytes + $3, updated_at = $4, \
             dropped_lines = dropped_lines + $5, dropped_bytes = dropped_bytes + $6 \
             WHERE workspace_id = $1 AND start_id = $2 RETURNING bytes",
        )
        .bind(workspace_id)
        .bind(start_id)
        .bind(added)
        .bind(now)
        .bind(i64::try_from(agent_dropped.0).unwrap_or(i64::MAX))
        .bind(i64::try_from(agent_dropped.1).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?
        .try_get("bytes")?;
        let max = MAX_LOG_BYTES_PER_START as i64;
        if total > max {
            // Enough of the oldest lines to cover the excess (each line is at most 4 KiB, so
            // the excess plus a batch is what is read, not the whole start).
            let rows = sqlx::query(
                "SELECT id, bytes FROM workspace_logs WHERE workspace_id = $1 AND start_id = $2 \
                 ORDER BY id LIMIT $3",
            )
            .bind(workspace_id)
            .bind(start_id)
            .bind(i64::try_from(lines.len()).unwrap_or(0) + 2 * INSERT_ROWS as i64 + 1)
            .fetch_all(&mut *tx)
            .await?;
            let oldest: Vec<(i64, i64)> = rows
                .iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("bytes")?)))
                .collect::<Result<_>>()?;
            if let Some((cut, n, b)) = drop_cutoff(&oldest, total, max) {
                sqlx::query(
                    "DELETE FROM workspace_logs WHERE workspace_id = $1 AND start_id = $2 AND id <= $3",
                )
                .bind(workspace_id)
                .bind(start_id)
                .bind(cut)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE workspace_log_starts SET bytes = bytes - $3, \
                     dropped_lines = dropped_lines + $4, dropped_bytes = dropped_bytes + $3 \
                     WHERE workspace_id = $1 AND start_id = $2",
                )
                .bind(workspace_id)
                .bind(start_id)
                .bind(b)
                .bind(n)
                .execute(&mut *tx)
                .await?;
            }
        }
        if new_start {
            let old = sqlx::query(
                "SELECT start_id FROM workspace_log_starts WHERE workspace_id = $1 \
                 ORDER BY created_at DESC, start_id DESC LIMIT 1000 OFFSET $2",
            )
            .bind(workspace_id)
            .bind(KEEP_STARTS)
            .fetch_all(&mut *tx)
            .await?;
            for r in old {
                let id: String = r.try_get("start_id")?;
                for table in [
                    "workspace_logs",
                    "workspace_log_batches",
                    "workspace_log_starts",
                ] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE workspace_id = $1 AND start_id = $2"
                    ))
                    .bind(workspace_id)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(Some(lines.len() as u64))
    }

    /// The workspace's starts, latest first.
    pub async fn log_starts(&self, workspace_id: &str) -> Result<Vec<LogStart>> {
        let rows = sqlx::query(
            "SELECT start_id, created_at, updated_at, bytes, dropped_lines, dropped_bytes \
             FROM workspace_log_starts WHERE workspace_id = $1 \
             ORDER BY created_at DESC, start_id DESC",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogStart {
                    start_id: r.try_get("start_id")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    bytes: r.try_get("bytes")?,
                    dropped_lines: r.try_get("dropped_lines")?,
                    dropped_bytes: r.try_get("dropped_bytes")?,
                })
            })
            .collect()
    }

    /// Lines of a start stored after line id `after` (0: from the first), oldest first, at
    /// most `limit`.
    pub async fn log_lines(
        &self,
        workspace_id: &str,
        start_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredLine>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, stream, text FROM workspace_logs \
             WHERE workspace_id = $1 AND start_id = $2 AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(workspace_id)
        .bind(start_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let stream: String = r.try_get("stream")?;
                Ok(StoredLine {
                    id: r.try_get("id")?,
                    line: LogLine {
                        at_ms: r.try_get("at_ms")?,
                        stream: LogStream::parse(&stream)
                            .ok_or_else(|| bad_value("stream", &stream))?,
                        text: r.try_get("text")?,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_cutoff_table() {
        let rows = [(1, 100), (2, 100), (3, 100), (4, 100)];
        #[rustfmt::skip]
        let cases = [
            ("fits", 400, 400, None),
            ("one over", 401, 400, Some((1, 1, 100))),
            ("exactly two lines over", 600, 400, Some((2, 2, 200))),
            ("more than the rows read: all of them", 1000, 400, Some((4, 4, 400))),
        ];
        for (name, total, max, want) in cases {
            assert_eq!(drop_cutoff(&rows, total, max), want, "{name}");
        }
        assert_eq!(drop_cutoff(&[], 10, 5), None);
    }

    fn line(i: usize, len: usize) -> LogLine {
        LogLine {
            at_ms: i as i64,
            stream: LogStream::Stdout,
            text: format!("{i:08}{}", "x".repeat(len.saturating_sub(8))),
        }
    }

    async fn db_with_workspace() -> (tempfile::TempDir, Db, String) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&crate::config::DatabaseConfig::Sqlite(
            dir.path().join("lumie.db"),
        ))
        .await
        .unwrap();
        let user = db.create_user("alice", "", false).await.unwrap();
        let ws = db
            .create_workspace(&user, "dev", "coder-alice-dev", None)
            .await
            .unwrap()
            .workspace
            .id;
        (dir, db, ws)
    }

    #[tokio::test]
    async fn batches_are_stored_once_in_order_and_bounded() {
        let (_dir, db, ws) = db_with_workspace().await;
        let batch: Vec<LogLine> = (0..10).map(|i| line(i, 20)).collect();
        assert_eq!(
            db.append_logs(&ws, "s1", 1, &batch, (0, 0)).await.unwrap(),
            Some(10)
        );
        assert_eq!(
            db.append_logs(&ws, "s1", 1, &batch, (0, 0)).await.unwrap(),
            None,
            "a retried batch is not stored again"
        );
        let got = db.log_lines(&ws, "s1", 0, 100).await.unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].line, batch[0]);
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
        // 3 MiB more in 4 KiB lines: the start keeps the newest 1 MiB and counts the rest.
        let mut next = 10;
        for seq in 2..=4 {
            let b: Vec<LogLine> = (0..256).map(|k| line(next + k, 4096)).collect();
            next += 256;
            db.append_logs(&ws, "s1", seq, &b, (0, 0)).await.unwrap();
        }
        let start = &db.log_starts(&ws).await.unwrap()[0];
        assert!(start.bytes <= MAX_LOG_BYTES_PER_START as i64, "{start:?}");
        assert!(
            start.bytes > MAX_LOG_BYTES_PER_START as i64 - 4096 * 2,
            "{start:?}"
        );
        assert_eq!(
            start.bytes + start.dropped_bytes,
            10 * 20 + 3 * 256 * 4096,
            "kept + dropped = sent"
        );
        let kept = db.log_lines(&ws, "s1", 0, 10_000).await.unwrap();
        assert_eq!(kept.len() as i64 + start.dropped_lines, 10 + 3 * 256);
        assert_eq!(
            kept.last().unwrap().line.text[..8],
            format!("{:08}", next - 1),
            "the newest line is kept"
        );
        // What the agent dropped itself is counted with the rest.
        let before = db.log_starts(&ws).await.unwrap()[0].clone();
        db.append_logs(&ws, "s1", 5, &[line(next, 10)], (7, 700))
            .await
            .unwrap();
        let after = &db.log_starts(&ws).await.unwrap()[0];
        assert!(after.dropped_lines >= before.dropped_lines + 7);
        assert!(after.dropped_bytes >= before.dropped_bytes + 700);
    }

    #[tokio::test]
    async fn only_the_latest_starts_are_kept() {
        let (_dir, db, ws) = db_with_workspace().await;
        for i in 0..(KEEP_STARTS + 2) {
            db.append_logs(&ws, &format!("start-{i}"), 1, &[line(0, 10)], (0, 0))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let starts = db.log_starts(&ws).await.unwrap();
        assert_eq!(starts.len() as i64, KEEP_STARTS);
        assert_eq!(starts[0].start_id, format!("start-{}", KEEP_STARTS + 1));
        assert!(
            db.log_lines(&ws, "start-0", 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
