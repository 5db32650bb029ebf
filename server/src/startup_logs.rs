//! Startup-script output: what the agent's batches must be ([`checked_batch`]), storing them
//! ([`store`], waking followers through [`LogEvents`]), and `GET /api/v2/workspaces/{id}/logs`
//! for the owner or an admin: the latest start's lines as JSON, or with `?follow` as
//! server-sent events (`line` per line, `start` when a new agent lifetime begins, `end` once the
//! workspace is stopped or deleted, after the last lines).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use lumie_contract::agent_api::{
    LogBatch, LogBatchResponse, LogLine, LogStream, MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES,
    MAX_LOG_BYTES_PER_START, MAX_LOG_LINE_BYTES, cut_line,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::caller::Principal;
use crate::db::{LogStart, StoredLine};
use crate::error::{Error, Result};
use crate::model::WorkspaceStatus;
use crate::state::AppState;

/// Longest start id accepted.
pub const MAX_START_ID_LEN: usize = 64;
/// A follower looks again this often even without news (a batch stored by another replica).
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);
/// Most lines one read returns (a start holds at most 1 MiB, so this is all of it).
pub const READ_LIMIT: i64 = 100_000;
/// What replaces a caller's agent token in stored output.
pub const REDACTED: &str = "[agent token redacted]";

/// "New lines for this workspace", for followers. Cheap to clone.
#[derive(Clone)]
pub struct LogEvents(broadcast::Sender<String>, crate::bus::Remote);

impl Default for LogEvents {
    fn default() -> Self {
        LogEvents::with_remote(crate::bus::Remote::default())
    }
}

impl LogEvents {
    /// Followers on the other replicas woken through `remote` too.
    pub fn with_remote(remote: crate::bus::Remote) -> Self {
        LogEvents(broadcast::channel(256).0, remote)
    }

    /// Lines were stored for `workspace_id` (followers here and on the other replicas).
    pub fn publish(&self, workspace_id: &str) {
        self.1.send(crate::bus::Signal::Logs {
            w: workspace_id.to_string(),
        });
        self.publish_local(workspace_id);
    }

    /// Lines were stored for `workspace_id` by another replica.
    pub fn publish_local(&self, workspace_id: &str) {
        let _ = self.0.send(workspace_id.to_string());
    }

    /// A new follower.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.0.subscribe()
    }
}

/// A batch as it will be stored, or 400 saying what is wrong: a start id of 1–64 letters,
/// digits, `-` or `_`; seq from 1; at most [`MAX_LOG_BATCH_LINES`] lines and
/// [`MAX_LOG_BATCH_BYTES`] of text. Overlong lines are cut (not refused), and `token` (the
/// caller's agent token) is redacted wherever a script printed it.
pub fn checked_batch(mut batch: LogBatch, token: &str) -> Result<LogBatch> {
    let id_ok = !batch.start_id.is_empty()
        && batch.start_id.len() <= MAX_START_ID_LEN
        && batch
            .start_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(Error::BadRequest(format!(
            "start_id must be 1 to {MAX_START_ID_LEN} letters, digits, '-' or '_'"
        )));
    }
    if batch.seq == 0 {
        return Err(Error::BadRequest("seq starts at 1".into()));
    }
    if batch.lines.len() > MAX_LOG_BATCH_LINES {
        return Err(Error::BadRequest(format!(
            "a batch holds at most {MAX_LOG_BATCH_LINES} lines; this one has {}",
            batch.lines.len()
        )));
    }
    let bytes: usize = batch.lines.iter().map(|l| l.text.len()).sum();
    if bytes > MAX_LOG_BATCH_BYTES {
        return Err(Error::BadRequest(format!(
            "a batch holds at most {MAX_LOG_BATCH_BYTES} bytes of text; this one has {bytes}"
        )));
    }
    for l in &mut batch.lines {
        if token.len() >= 8 && l.text.contains(token) {
            l.text = l.text.replace(token, REDACTED);
        }
        if l.text.len() > MAX_LOG_LINE_BYTES {
            l.text = cut_line(&l.text, MAX_LOG_LINE_BYTES);
        }
    }
    Ok(batch)
}

/// Stores a checked batch for `workspace_id` and wakes its followers.
pub async fn store(
    state: &AppState,
    workspace_id: &str,
    batch: &LogBatch,
) -> Result<LogBatchResponse> {
    let stored = state
        .db
        .append_logs(
            workspace_id,
            &batch.start_id,
            batch.seq,
            &batch.lines,
            (batch.dropped_lines, batch.dropped_bytes),
        )
        .await?;
    if stored.is_some() {
        state.log_events.publish(workspace_id);
    }
    Ok(LogBatchResponse {
        stored: stored.unwrap_or(0),
        duplicate: stored.is_none(),
    })
}

/// The one line standing for what a start dropped, if it dropped anything.
pub fn marker_line(start: &LogStart) -> Option<LogLine> {
    (start.dropped_lines > 0).then(|| LogLine {
        at_ms: start.created_at,
        stream: LogStream::Agent,
        text: format!(
            "{} earlier lines ({} bytes) were dropped: each start keeps its last {} KiB of output",
            start.dropped_lines,
            start.dropped_bytes,
            MAX_LOG_BYTES_PER_START / 1024
        ),
    })
}

/// `?follow` (bare, `true` or `1`) and `?start=<id>`.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    /// Stream as server-sent events.
    pub follow: Option<String>,
    /// Which start (default: the latest).
    pub start: Option<String>,
}

/// Whether a `follow` parameter asks to follow, or 400.
pub fn wants_follow(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(other) => Err(Error::BadRequest(format!(
            "follow={other:?}: expected true or false"
        ))),
    }
}

/// One line as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineJson {
    /// Row id (0 for the dropped-lines marker); lines come in id order.
    pub id: i64,
    /// When the agent read it, RFC 3339.
    pub at: String,
    /// `stdout`, `stderr` or `agent`.
    pub stream: LogStream,
    /// The text.
    pub text: String,
}

impl LogLineJson {
    fn new(id: i64, l: &LogLine) -> Self {
        LogLineJson {
            id,
            at: crate::model::rfc3339(l.at_ms),
            stream: l.stream,
            text: l.text.clone(),
        }
    }
}

/// One start, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStartJson {
    /// The agent's start id.
    pub start_id: String,
    /// First output, RFC 3339.
    pub created_at: String,
    /// Bytes kept.
    pub bytes: i64,
    /// Lines dropped to stay within the bound.
    pub dropped_lines: i64,
}

/// `GET /api/v2/workspaces/{id}/logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceLogsJson {
    /// The workspace.
    pub workspace_id: String,
    /// The start shown (`None`: no output yet).
    pub start_id: Option<String>,
    /// Its lines, oldest first, the dropped-lines marker first when there is one.
    pub lines: Vec<LogLineJson>,
    /// Every start kept, latest first.
    pub starts: Vec<LogStartJson>,
}

/// `GET /api/v2/workspaces/{id}/logs[?follow][&start=…]`: same visibility as the workspace.
pub async fn get_logs(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response> {
    let ws = crate::api::visible_workspace(&state, &p, &id).await?;
    let follow = wants_follow(q.follow.as_deref())?;
    let starts = state.db.log_starts(&ws.id).await?;
    let chosen = match &q.start {
        Some(s) => Some(
            starts
                .iter()
                .find(|x| &x.start_id == s)
                .cloned()
                .ok_or_else(|| {
                    Error::NotFound(format!("no start {s:?} in this workspace's logs"))
                })?,
        ),
        None => starts.first().cloned(),
    };
    if follow {
        let (tx, rx) = mpsc::channel::<Event>(64);
        tokio::spawn(follow_task(state, ws.id, chosen, q.start.is_none(), tx));
        let events = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut lines = Vec::new();
    if let Some(start) = &chosen {
        lines.extend(marker_line(start).map(|m| LogLineJson::new(0, &m)));
        for s in state
            .db
            .log_lines(&ws.id, &start.start_id, 0, READ_LIMIT)
            .await?
        {
            lines.push(LogLineJson::new(s.id, &s.line));
        }
    }
    Ok(Json(WorkspaceLogsJson {
        workspace_id: ws.id,
        start_id: chosen.map(|s| s.start_id),
        lines,
        starts: starts
            .iter()
            .map(|s| LogStartJson {
                start_id: s.start_id.clone(),
                created_at: crate::model::rfc3339(s.created_at),
                bytes: s.bytes,
                dropped_lines: s.dropped_lines,
            })
            .collect(),
    })
    .into_response())
}

fn line_event(s: &StoredLine) -> Event {
    Event::default()
        .event("line")
        .id(s.id.to_string())
        .json_data(LogLineJson::new(s.id, &s.line))
        .unwrap_or_else(|_| Event::default().event("error").data("encoding failed"))
}

/// Whether a follower is done: the workspace is gone, stopped or deleted.
pub fn follow_ends(status: Option<WorkspaceStatus>) -> bool {
    matches!(
        status,
        None | Some(WorkspaceStatus::Stopped) | Some(WorkspaceStatus::Deleted)
    )
}

/// Feeds one follower: the start's lines so far, then new ones as they are stored; switches to
/// a newer start when following the latest; ends (with an `end` event) once [`follow_ends`].
async fn follow_task(
    state: AppState,
    workspace_id: String,
    mut start: Option<LogStart>,
    latest: bool,
    tx: mpsc::Sender<Event>,
) {
    let mut news = state.log_events.subscribe();
    let mut status_news = state.events.subscribe();
    let mut after = 0i64;
    if let Some(m) = start.as_ref().and_then(marker_line) {
        let ev = Event::default()
            .event("line")
            .json_data(LogLineJson::new(0, &m))
            .unwrap_or_default();
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    loop {
        // Status first, then lines: lines stored before a stop are still sent.
        let done = follow_ends(
            state
                .db
                .workspace(&workspace_id)
                .await
                .ok()
                .flatten()
                .map(|w| w.status),
        );
        if latest
            && let Ok(starts) = state.db.log_starts(&workspace_id).await
            && let Some(newest) = starts.first()
            && start.as_ref().map(|s| &s.start_id) != Some(&newest.start_id)
        {
            // A new agent lifetime: the rest of the old one first, then the new one.
            if let Some(old) = &start
                && !send_lines(&state, &workspace_id, &old.start_id, &mut after, &tx).await
            {
                return;
            }
            start = Some(newest.clone());
            after = 0;
            let ev = Event::default()
                .event("start")
                .data(newest.start_id.clone());
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        if let Some(s) = &start
            && !send_lines(&state, &workspace_id, &s.start_id, &mut after, &tx).await
        {
            return;
        }
        if done {
            let _ = tx.send(Event::default().event("end").data("")).await;
            return;
        }
        tokio::select! {
            _ = wait_for(&mut news, &workspace_id) => {}
            _ = wait_for_status(&mut status_news, &workspace_id) => {}
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = tx.closed() => return,
        }
    }
}

async fn send_lines(
    state: &AppState,
    workspace_id: &str,
    start_id: &str,
    after: &mut i64,
    tx: &mpsc::Sender<Event>,
) -> bool {
    loop {
        let Ok(lines) = state
            .db
            .log_lines(workspace_id, start_id, *after, 1000)
            .await
        else {
            return true;
        };
        let n = lines.len();
        for l in &lines {
            *after = l.id;
            if tx.send(line_event(l)).await.is_err() {
                return false;
            }
        }
        if n < 1000 {
            return true;
        }
    }
}

async fn wait_for(rx: &mut broadcast::Receiver<String>, id: &str) {
    loop {
        match rx.recv().await {
            Ok(w) if w == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

async fn wait_for_status(rx: &mut broadcast::Receiver<crate::events::WorkspaceEvent>, id: &str) {
    loop {
        match rx.recv().await {
            Ok(e) if e.workspace_id == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(start: &str, seq: u64, texts: &[&str]) -> LogBatch {
        LogBatch {
            start_id: start.into(),
            seq,
            dropped_lines: 0,
            dropped_bytes: 0,
            lines: texts
                .iter()
                .map(|t| LogLine {
                    at_ms: 1,
                    stream: LogStream::Stdout,
                    text: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn batch_checks_table() {
        let token = "eyJhbGciOi.secret.sig";
        let long = "x".repeat(MAX_LOG_LINE_BYTES + 100);
        let many: Vec<&str> = vec!["a"; MAX_LOG_BATCH_LINES + 1];
        let big_line = "y".repeat(MAX_LOG_LINE_BYTES);
        let big: Vec<&str> = vec![big_line.as_str(); MAX_LOG_BATCH_BYTES / MAX_LOG_LINE_BYTES + 1];
        #[rustfmt::skip]
        let cases: Vec<(&str, LogBatch, std::result::Result<&str, &str>)> = vec![
            ("fine", batch("abc-123", 1, &["hello"]), Ok("hello")),
            ("token redacted", batch("abc", 1, &["t=eyJhbGciOi.secret.sig"]), Ok("t=[agent token redacted]")),
            ("long line cut", batch("abc", 1, &[long.as_str()]), Ok("[cut: ")),
            ("empty start id", batch("", 1, &["x"]), Err("start_id")),
            ("odd start id", batch("a/b", 1, &["x"]), Err("start_id")),
            ("seq 0", batch("abc", 0, &["x"]), Err("seq starts at 1")),
            ("too many lines", batch("abc", 1, &many), Err("at most 1000 lines")),
            ("too many bytes", batch("abc", 1, &big), Err("bytes of text")),
        ];
        for (name, b, want) in cases {
            match (checked_batch(b, token), want) {
                (Ok(b), Ok(w)) => {
                    assert!(b.lines[0].text.contains(w), "{name}: {}", b.lines[0].text);
                    assert!(b.lines[0].text.len() <= MAX_LOG_LINE_BYTES, "{name}");
                    assert!(!b.lines[0].text.contains(token), "{name}");
                }
                (Err(e), Err(w)) => {
                    assert!(matches!(e, Error::BadRequest(_)), "{name}");
                    assert!(e.to_string().contains(w), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn follow_parameter_and_end_table() {
        for (v, want) in [
            (None, Some(false)),
            (Some(""), Some(true)),
            (Some("true"), Some(true)),
            (Some("1"), Some(true)),
            (Some("false"), Some(false)),
            (Some("yes please"), None),
        ] {
            assert_eq!(wants_follow(v).ok(), want, "{v:?}");
        }
        use WorkspaceStatus as S;
        for (s, want) in [
            (None, true),
            (Some(S::Stopped), true),
            (Some(S::Deleted), true),
            (Some(S::Running), false),
            (Some(S::Starting), false),
            (Some(S::Failed), false),
            (Some(S::Stopping), false),
        ] {
            assert_eq!(follow_ends(s), want, "{s:?}");
        }
    }

    #[test]
    fn marker_only_when_something_was_dropped() {
        let mut s = LogStart {
            start_id: "a".into(),
            created_at: 5,
            updated_at: 5,
            bytes: 10,
            dropped_lines: 0,
            dropped_bytes: 0,
        };
        assert_eq!(marker_line(&s), None);
        s.dropped_lines = 3;
        s.dropped_bytes = 300;
        let m = marker_line(&s).unwrap();
        assert_eq!(m.stream, LogStream::Agent);
        assert!(
            m.text
                .starts_with("3 earlier lines (300 bytes) were dropped"),
            "{}",
            m.text
        );
    }
}
