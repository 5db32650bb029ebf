//! Script output on its way to the control plane: lines cut out of the pipes ([`LineSplitter`],
//! bounded per line), held in a bounded buffer ([`LogBuffer`]: the oldest unsent lines go first,
//! counted in the next batch so the server's one "dropped" marker says how much), redacted of the agent token ([`redact`]), and shipped in
//! numbered batches ([`ship`]) that are retried, unchanged, until the server takes them, so a
//! control-plane outage loses nothing that fits the buffer and nothing is stored twice.
//!
//! Memory stays bounded whatever a script prints: the splitter holds at most one line, the
//! buffer at most [`BUFFER_BYTES`], the batch in flight at most
//! [`lumie_contract::agent_api::MAX_LOG_BATCH_BYTES`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumie_contract::agent_api::{
    LogBatch, LogLine, LogStream, MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES, MAX_LOG_LINE_BYTES,
    cut_line,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::{self, Backoff};
use crate::heartbeat::HeartbeatClient;

/// Most bytes of unsent lines the agent holds (the server keeps as much per start).
pub const BUFFER_BYTES: usize = lumie_contract::agent_api::MAX_LOG_BYTES_PER_START;
/// How long lines wait to be batched with later ones.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// What replaces the agent token wherever it shows up in output.
pub const REDACTED: &str = "[agent token redacted]";

/// Bytes a line counts for in the bounds (its text plus a little for the rest).
pub fn line_cost(line: &LogLine) -> usize {
    line.text.len() + 16
}

/// Cuts a byte stream into lines of at most `max` bytes. A longer line is cut, and the rest of
/// it up to its newline is skipped (counted in the cut note), so nothing grows with the input.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    skipped: usize,
}

impl LineSplitter {
    /// A splitter cutting lines at `max` bytes.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            max,
            partial: Vec::new(),
            skipped: 0,
        }
    }

    /// Feeds bytes; returns the lines completed by them (without newlines, lossy UTF-8).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.take(&rest[..i]);
                    out.push(self.finish());
                    rest = &rest[i + 1..];
                }
                None => {
                    self.take(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    /// The last line when the stream ends without a newline.
    pub fn flush(&mut self) -> Option<String> {
        (!self.partial.is_empty() || self.skipped > 0).then(|| self.finish())
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.partial.len());
        let n = room.min(bytes.len());
        self.partial.extend_from_slice(&bytes[..n]);
        self.skipped += bytes.len() - n;
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.partial);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let line = if self.skipped > 0 {
            let kept = cut_line(text, self.max.saturating_sub(40));
            format!("{kept} [cut: {} more bytes]", self.skipped)
        } else {
            cut_line(text, self.max)
        };
        self.partial.clear();
        self.skipped = 0;
        line
    }
}

/// `text` with every non-empty secret replaced by [`REDACTED`].
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// Unsent lines, oldest first, within a byte bound; what had to be dropped is counted and
/// handed over with the next batch.
#[derive(Debug)]
pub struct LogBuffer {
    max_bytes: usize,
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    closed: bool,
}

impl LogBuffer {
    /// An empty buffer holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        LogBuffer {
            max_bytes,
            lines: VecDeque::new(),
            bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            closed: false,
        }
    }

    /// Adds a line, dropping the oldest unsent lines when over the bound.
    pub fn push(&mut self, line: LogLine) {
        self.bytes += line_cost(&line);
        self.lines.push_back(line);
        while self.bytes > self.max_bytes {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= line_cost(&old);
            self.dropped_lines += 1;
            self.dropped_bytes += old.text.len() as u64;
        }
    }

    /// Unsent lines now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Nothing unsent (not even a drop marker).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped_lines == 0
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// No more lines will come (the shipper sends what is left, then ends).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes the next batch: the oldest lines, within `max_lines` and `max_bytes` (at least
    /// one line), and the lines and bytes dropped since the last batch.
    pub fn take_batch(&mut self, max_lines: usize, max_bytes: usize) -> Batch {
        let mut out = Batch {
            lines: Vec::new(),
            dropped_lines: std::mem::take(&mut self.dropped_lines),
            dropped_bytes: std::mem::take(&mut self.dropped_bytes),
        };
        let mut bytes = 0;
        while let Some(next) = self.lines.front() {
            let cost = line_cost(next);
            if !out.lines.is_empty() && (out.lines.len() >= max_lines || bytes + cost > max_bytes) {
                break;
            }
            bytes += cost;
            self.bytes -= cost;
            out.lines
                .push(self.lines.pop_front().expect("front exists"));
        }
        out
    }
}

/// What [`LogBuffer::take_batch`] hands over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines dropped before them.
    pub dropped_lines: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
}

impl Batch {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped_lines == 0
    }
}

/// The buffer the script readers write to and the shipper reads from.
#[derive(Clone, Debug)]
pub struct LogSink {
    pub(crate) buffer: Arc<Mutex<LogBuffer>>,
    wake: Arc<Notify>,
}

impl Default for LogSink {
    fn default() -> Self {
        LogSink::new(BUFFER_BYTES)
    }
}

impl LogSink {
    /// A sink buffering at most `max_bytes` unsent.
    pub fn new(max_bytes: usize) -> Self {
        LogSink {
            buffer: Arc::new(Mutex::new(LogBuffer::new(max_bytes))),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Adds a line (cut to [`MAX_LOG_LINE_BYTES`]) read now.
    pub fn line(&self, stream: LogStream, text: &str) {
        let line = LogLine {
            at_ms: now_ms(),
            stream,
            text: cut_line(text, MAX_LOG_LINE_BYTES),
        };
        self.buffer.lock().expect("log buffer lock").push(line);
        self.wake.notify_one();
    }

    /// No more lines; the shipper ends once the rest is sent.
    pub fn close(&self) {
        self.buffer.lock().expect("log buffer lock").close();
        self.wake.notify_one();
    }

    /// Bytes waiting now.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.lock().expect("log buffer lock").bytes()
    }

    fn take(&self) -> (Batch, bool) {
        let mut b = self.buffer.lock().expect("log buffer lock");
        let closed = b.is_closed();
        (
            b.take_batch(MAX_LOG_BATCH_LINES, MAX_LOG_BATCH_BYTES / 2),
            closed,
        )
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random id for this agent lifetime.
pub fn new_start_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Sends the sink's lines in batches `start_id`/1, 2, …: each batch retried unchanged (with
/// backoff) until the server takes it, then the next. Ends when the sink is closed and empty,
/// or at `deadline` once one is set through `stop_by` (what is left then is lost, and said).
pub async fn ship(
    client: HeartbeatClient,
    sink: LogSink,
    start_id: String,
    mut stop_by: tokio::sync::watch::Receiver<Option<Instant>>,
) {
    let mut seq = 0u64;
    let mut in_flight: Option<LogBatch> = None;
    let mut backoff = Backoff::default();
    loop {
        let deadline = *stop_by.borrow();
        if in_flight.is_none() {
            let (batch, closed) = sink.take();
            if batch.is_empty() {
                if closed {
                    return;
                }
                tokio::select! {
                    () = sink.wake.notified() => {}
                    _ = stop_by.changed() => {}
                    () = sleep_until_opt(deadline) => return,
                }
                // Let a burst collect into one batch.
                tokio::time::sleep(BATCH_DELAY).await;
                continue;
            }
            seq += 1;
            let secrets = client.secrets();
            in_flight = Some(LogBatch {
                start_id: start_id.clone(),
                seq,
                dropped_lines: batch.dropped_lines,
                dropped_bytes: batch.dropped_bytes,
                lines: batch
                    .lines
                    .into_iter()
                    .map(|mut l| {
                        l.text = redact(&l.text, &secrets);
                        l
                    })
                    .collect(),
            });
        }
        let batch = in_flight.as_ref().expect("a batch in flight");
        match client.send_logs(batch).await {
            Ok(_) => {
                if backoff.attempt() > 0 {
                    tracing::info!(
                        seq = batch.seq,
                        "log batch delivered after {} failed attempts",
                        backoff.attempt()
                    );
                }
                backoff.reset();
                in_flight = None;
            }
            Err(e) => {
                let delay = backoff.next_delay(backoff::random());
                if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                    tracing::warn!(
                        "log batch {} not delivered before the shutdown timeout: {e}; {} bytes of output are lost",
                        batch.seq,
                        sink.pending_bytes()
                    );
                    return;
                }
                tracing::warn!(
                    seq = batch.seq,
                    attempt = backoff.attempt(),
                    "sending script output failed: {e}; retrying in {delay:?}"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = sleep_until_opt(deadline) => {}
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            at_ms: 0,
            stream: LogStream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn splitter_table() {
        #[rustfmt::skip]
        /// (name, reads, max line, lines, the unterminated rest)
        type Case<'a> = (&'a str, Vec<&'a [u8]>, usize, Vec<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("one line", vec![b"hello\n"], 100, vec!["hello"], None),
            (
                "split across reads",
                vec![b"hel", b"lo\nwor", b"ld\n"],
                100,
                vec!["hello", "world"],
                None,
            ),
            ("no final newline", vec![b"a\nb"], 100, vec!["a"], Some("b")),
            ("crlf", vec![b"a\r\n"], 100, vec!["a"], None),
            ("empty lines kept", vec![b"\n\n"], 100, vec!["", ""], None),
            (
                "invalid utf-8 is replaced",
                vec![b"\xff\n"],
                100,
                vec!["\u{fffd}"],
                None,
            ),
        ];
        for (name, reads, max, want, tail) in cases {
            let mut s = LineSplitter::new(max);
            let got: Vec<String> = reads.iter().flat_map(|r| s.feed(r)).collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(s.flush().as_deref(), tail, "{name}");
        }
    }

    #[test]
    fn splitter_bounds_an_endless_line() {
        let mut s = LineSplitter::new(100);
        let chunk = vec![b'x'; 8192];
        for _ in 0..1000 {
            assert!(s.feed(&chunk).is_empty());
            assert!(s.partial.len() <= 100, "holds at most one cut line");
        }
        let got = s.feed(b"\nnext\n");
        assert_eq!(got.len(), 2);
        assert!(got[0].len() <= 100 + 40, "{}", got[0].len());
        assert!(got[0].contains("more bytes]"), "{}", got[0]);
        assert_eq!(got[1], "next");
    }

    #[test]
    fn buffer_drops_the_oldest_and_counts_them() {
        let mut b = LogBuffer::new(10 * line_cost(&line("0123456789")));
        for i in 0..25 {
            b.push(line(&format!("{i:010}")));
        }
        assert_eq!(b.len(), 10, "the newest ten stay");
        assert!(b.bytes() <= 10 * line_cost(&line("0123456789")));
        let batch = b.take_batch(1000, 1 << 20);
        assert_eq!((batch.dropped_lines, batch.dropped_bytes), (15, 150));
        assert_eq!(batch.lines[0].text, "0000000015");
        assert_eq!(batch.lines.last().unwrap().text, "0000000024");
        assert_eq!(batch.lines.len(), 10);
        assert!(b.is_empty());
        assert_eq!(
            b.take_batch(1000, 1 << 20),
            Batch::default(),
            "counted once"
        );
    }

    #[test]
    fn batches_respect_line_and_byte_limits_in_order() {
        let mut b = LogBuffer::new(1 << 20);
        for i in 0..25 {
            b.push(line(&format!("line {i}")));
        }
        let cost = line_cost(&line("line 10"));
        #[rustfmt::skip]
        let cases = [
            ("by lines", 10, 1 << 20, 10),
            ("by bytes", 1000, 3 * cost, 3),
            ("always at least one", 1000, 1, 1),
        ];
        let mut next = 0;
        for (name, max_lines, max_bytes, want) in cases {
            let got = b.take_batch(max_lines, max_bytes).lines;
            assert_eq!(got.len(), want, "{name}");
            for l in got {
                assert_eq!(l.text, format!("line {next}"), "{name}: in order");
                next += 1;
            }
        }
        assert_eq!(b.len(), 25 - next);
    }

    #[test]
    fn redaction_table() {
        let token = "eyJhbGciOiJSUzI1NiJ9.payload.signature".to_string();
        let cases = [
            ("clean", "hello", "hello".to_string()),
            (
                "the token",
                "token=eyJhbGciOiJSUzI1NiJ9.payload.signature!",
                format!("token={REDACTED}!"),
            ),
            (
                "twice",
                "eyJhbGciOiJSUzI1NiJ9.payload.signature eyJhbGciOiJSUzI1NiJ9.payload.signature",
                format!("{REDACTED} {REDACTED}"),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(
                redact(text, &[token.clone(), String::new()]),
                want,
                "{name}"
            );
        }
        assert_eq!(
            redact("short abc", &["abc".into()]),
            "short abc",
            "too short to be a token"
        );
    }
}
