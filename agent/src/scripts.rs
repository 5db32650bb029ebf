//! The template's startup and shutdown scripts: what environment they get (the agent's, never
//! its token: [`script_env`]), whom they run as ([`run_as`]), what their exit means for the
//! lifecycle ([`exit_reason`], [`gate_open`]), and the thin process plumbing: `sh -c` in the home
//! directory, in a process group of its own (so stopping it stops what it started), stdout and
//! stderr read line by line into the [`LogSink`].

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumie_contract::agent_api::{LogStream, StartupBehavior};
use lumie_contract::workspace;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::logs::{LineSplitter, LogSink};

/// Lines of output the failure reason quotes.
pub const REASON_LINES: usize = 2;
/// Longest failure reason, bytes.
pub const REASON_MAX: usize = 300;
/// How long output may still arrive after a script exits before its reason is written.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Which script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The startup script.
    Startup,
    /// The shutdown script.
    Shutdown,
}

impl Which {
    /// `startup script` / `shutdown script`.
    pub fn name(self) -> &'static str {
        match self {
            Which::Startup => "startup script",
            Which::Shutdown => "shutdown script",
        }
    }
}

/// Where the startup script is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptState {
    /// Not known yet: waiting for the first heartbeat and the manifest.
    Pending,
    /// The template has none.
    None,
    /// Running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited otherwise; the reason.
    Failed(String),
}

/// Whether the startup script lets the agent be `ready` (the apps decide the rest): with
/// `non-blocking` as soon as the manifest is in; with `blocking` once the script has exited
/// successfully (or there is none).
pub fn gate_open(behavior: StartupBehavior, script: &ScriptState) -> bool {
    match behavior {
        StartupBehavior::NonBlocking if *script != ScriptState::Pending => true,
        _ => matches!(script, ScriptState::None | ScriptState::Succeeded),
    }
}

/// Why the startup script holds the agent back at the start deadline (`after` the start), if it
/// does: a blocking script still running, or no manifest yet.
pub fn holds_start(
    behavior: StartupBehavior,
    script: &ScriptState,
    after: Duration,
) -> Option<String> {
    match (behavior, script) {
        (_, ScriptState::Pending) => Some(format!(
            "no manifest from the control plane after {}s, so the startup script has not run",
            after.as_secs()
        )),
        (StartupBehavior::Blocking, ScriptState::Running) => Some(still_running_reason(after)),
        _ => None,
    }
}

/// Environment variable names that carry or point at credentials: never given to scripts.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    name == workspace::ENV_AGENT_TOKEN
        || name == workspace::ENV_AGENT_TOKEN_FILE
        || ["TOKEN", "SECRET", "PASSWORD"]
            .iter()
            .any(|w| upper.contains(w))
}

/// The scripts' environment: the agent's, without anything token-like (by name, or by value:
/// a variable holding one of `secrets`).
pub fn script_env(
    vars: impl IntoIterator<Item = (String, String)>,
    secrets: &[String],
) -> Vec<(String, String)> {
    vars.into_iter()
        .filter(|(k, v)| {
            !is_secret_name(k)
                && !secrets
                    .iter()
                    .any(|s| !s.is_empty() && v.contains(s.as_str()))
        })
        .collect()
}

/// A user from `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Looks `user` up in passwd-format `text`.
pub fn passwd_lookup(text: &str, user: &str) -> Option<PasswdEntry> {
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then_some(())?;
        let _password = f.next()?;
        Some(PasswdEntry {
            uid: f.next()?.parse().ok()?,
            gid: f.next()?.parse().ok()?,
        })
    })
}

/// How to run as `user` when the agent runs as `agent_uid`: `Ok(None)` as the agent itself,
/// `Ok(Some(entry))` switching to it (only root can), or why not.
pub fn run_as(
    user: Option<&str>,
    agent_uid: u32,
    passwd: &str,
) -> Result<Option<PasswdEntry>, String> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let Some(entry) = passwd_lookup(passwd, user) else {
        return Err(format!(
            "the script user {user:?} does not exist in /etc/passwd"
        ));
    };
    if entry.uid == agent_uid {
        return Ok(None);
    }
    if agent_uid != 0 {
        return Err(format!(
            "cannot run the scripts as {user:?} (uid {}): the agent runs as uid {agent_uid}, not root",
            entry.uid
        ));
    }
    Ok(Some(entry))
}

/// How a script ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    fn from_status(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }

    /// Exited 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// A shell's prefix on its own messages (`sh: 1: `, `sh: line 3: `, `bash: `), which says
/// nothing to a developer reading the reason.
fn strip_shell_prefix(line: &str) -> &str {
    for shell in ["sh: ", "bash: ", "dash: "] {
        if let Some(rest) = line.strip_prefix(shell) {
            let rest = rest.strip_prefix("line ").unwrap_or(rest);
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits > 0
                && let Some(after) = rest[digits..].strip_prefix(": ")
            {
                return after;
            }
            return rest;
        }
    }
    line
}

/// The one-sentence reason of a failed script: `startup script exited 127: code-server: not
/// found`, quoting its last lines of output (at most [`REASON_LINES`], [`REASON_MAX`] bytes).
pub fn exit_reason(which: Which, exit: Exit, last_lines: &[String]) -> String {
    let head = match exit {
        Exit::Code(c) => format!("{} exited {c}", which.name()),
        Exit::Signal(s) => format!("{} was killed by signal {s}", which.name()),
    };
    let quoted: Vec<&str> = last_lines
        .iter()
        .map(|l| strip_shell_prefix(l.trim()))
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &quoted[quoted.len().saturating_sub(REASON_LINES)..];
    if tail.is_empty() {
        return format!("{head} (no output)");
    }
    let mut reason = format!("{head}: {}", tail.join(" / "));
    if reason.len() > REASON_MAX {
        reason = lumie_contract::agent_api::cut_line(&reason, REASON_MAX);
    }
    reason
}

/// The reason of a startup script still running at the start deadline.
pub fn still_running_reason(after: Duration) -> String {
    format!(
        "startup script still running after {}s (startup behavior blocking)",
        after.as_secs()
    )
}

/// The last few non-empty lines a script printed, per stream: a failure's reason quotes its
/// standard error when it wrote any (where `sh` and most tools say what went wrong), else its
/// standard output.
#[derive(Debug, Default)]
pub struct LastLines {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
}

impl LastLines {
    /// Remembers a line of `stream`.
    pub fn push(&mut self, stream: LogStream, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let q = match stream {
            LogStream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        };
        if q.len() == REASON_LINES {
            q.pop_front();
        }
        q.push_back(line.to_string());
    }

    /// The lines to quote, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let q = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        q.iter().cloned().collect()
    }
}

/// What a script runs with.
#[derive(Clone, Debug)]
pub struct ScriptSettings {
    /// Working directory (the home volume).
    pub home: std::path::PathBuf,
    /// Environment ([`script_env`]).
    pub env: Vec<(String, String)>,
    /// The user to switch to ([`run_as`]).
    pub user: Option<PasswdEntry>,
}

/// A started script.
pub struct RunningScript {
    which: Which,
    child: tokio::process::Child,
    pgid: Option<u32>,
    readers: Vec<JoinHandle<()>>,
    last: Arc<Mutex<LastLines>>,
}

/// Starts `script` with `sh -c`, its output going to `sink`.
pub fn start(
    which: Which,
    script: &str,
    settings: &ScriptSettings,
    sink: &LogSink,
) -> std::io::Result<RunningScript> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(existing_dir(&settings.home))
        .env_clear()
        .envs(settings.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(u) = &settings.user {
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    let last = Arc::new(Mutex::new(LastLines::default()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            out,
            LogStream::Stdout,
            sink.clone(),
            last.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            err,
            LogStream::Stderr,
            sink.clone(),
            last.clone(),
        )));
    }
    sink.line(
        LogStream::Agent,
        &format!("{} started (pid {})", which.name(), pgid.unwrap_or(0)),
    );
    Ok(RunningScript {
        which,
        child,
        pgid,
        readers,
        last,
    })
}

fn existing_dir(home: &Path) -> &Path {
    if home.is_dir() { home } else { Path::new("/") }
}

async fn read_lines(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: LogStream,
    sink: LogSink,
    last: Arc<Mutex<LastLines>>,
) {
    let mut splitter = LineSplitter::new(lumie_contract::agent_api::MAX_LOG_LINE_BYTES);
    let mut buf = vec![0u8; 8192];
    let emit = |line: String| {
        last.lock().expect("last lines lock").push(stream, &line);
        sink.line(stream, &line);
    };
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.feed(&buf[..n]).into_iter().for_each(emit),
        }
    }
    if let Some(line) = splitter.flush() {
        emit(line);
    }
}

impl RunningScript {
    /// Waits for the script to exit, then (briefly) for its output; writes how it ended to the
    /// log and returns it with the last lines it printed.
    pub async fn wait(&mut self, sink: &LogSink) -> (Exit, Vec<String>) {
        let exit = match self.child.wait().await {
            Ok(status) => Exit::from_status(status),
            Err(_) => Exit::Code(-1),
        };
        let drain = async {
            for r in &mut self.readers {
                let _ = r.await;
            }
        };
        // Children it left running may hold the pipes open: do not wait for them.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
        let lines = self.last.lock().expect("last lines lock").lines();
        let note = match exit {
            Exit::Code(c) => format!("{} exited {c}", self.which.name()),
            Exit::Signal(s) => format!("{} was killed by signal {s}", self.which.name()),
        };
        sink.line(LogStream::Agent, &note);
        (exit, lines)
    }

    /// Signals the script's whole process group (what it started included).
    pub fn signal_group(&self, signal: rustix::process::Signal) {
        signal_group(self.pgid, signal);
    }
}

/// Signals process group `pgid` (a script's), if any is left.
pub fn signal_group(pgid: Option<u32>, signal: rustix::process::Signal) {
    if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

impl RunningScript {
    /// The process group id.
    pub fn pgid(&self) -> Option<u32> {
        self.pgid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_table() {
        use StartupBehavior::{Blocking as B, NonBlocking as N};
        let failed = ScriptState::Failed("x".into());
        let running = "startup script still running after 300s (startup behavior blocking)";
        let pending = "no manifest from the control plane after 300s";
        #[rustfmt::skip]
        let cases = [
            (B, ScriptState::Pending, false, Some(pending)),
            (B, ScriptState::None, true, None),
            (B, ScriptState::Running, false, Some(running)),
            (B, ScriptState::Succeeded, true, None),
            (B, failed.clone(), false, None),
            (N, ScriptState::Pending, false, Some(pending)),
            (N, ScriptState::None, true, None),
            (N, ScriptState::Running, true, None),
            (N, ScriptState::Succeeded, true, None),
            (N, failed, true, None),
        ];
        for (behavior, state, open, holds) in cases {
            assert_eq!(gate_open(behavior, &state), open, "{behavior} {state:?}");
            let got = holds_start(behavior, &state, Duration::from_secs(300));
            match holds {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(w)),
                    "{behavior} {state:?}: {got:?}"
                ),
                None => assert_eq!(got, None, "{behavior} {state:?}"),
            }
        }
    }

    #[test]
    fn exit_reason_table() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        #[rustfmt::skip]
        let cases = [
            (Which::Startup, Exit::Code(127), l(&["sh: 1: code-server: not found"]), "startup script exited 127: code-server: not found"),
            (Which::Startup, Exit::Code(127), l(&["sh: line 3: tilt: command not found"]), "startup script exited 127: tilt: command not found"),
            (Which::Startup, Exit::Code(1), l(&["building", "error: no Tiltfile"]), "startup script exited 1: building / error: no Tiltfile"),
            (Which::Startup, Exit::Code(2), l(&[]), "startup script exited 2 (no output)"),
            (Which::Shutdown, Exit::Signal(9), l(&["bye"]), "shutdown script was killed by signal 9: bye"),
            (Which::Startup, Exit::Code(1), l(&["bash: oops"]), "startup script exited 1: oops"),
        ];
        for (which, exit, lines, want) in cases {
            assert_eq!(exit_reason(which, exit, &lines), want);
        }
        let long = exit_reason(Which::Startup, Exit::Code(1), &["x".repeat(5000)]);
        assert!(long.len() <= REASON_MAX, "{}", long.len());
    }

    #[test]
    fn last_lines_keep_the_newest_non_empty_preferring_stderr() {
        let mut l = LastLines::default();
        for s in ["a", "", "b", "  ", "c"] {
            l.push(LogStream::Stdout, s);
        }
        assert_eq!(l.lines(), vec!["b".to_string(), "c".to_string()]);
        l.push(LogStream::Stderr, "sh: 1: code-server: not found");
        l.push(LogStream::Stdout, "d");
        assert_eq!(l.lines(), vec!["sh: 1: code-server: not found".to_string()]);
    }

    #[test]
    fn script_env_drops_tokens_by_name_and_value() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("CODER_AGENT_TOKEN_FILE", "/var/run/secrets/x/token"),
            ("CODER_AGENT_TOKEN", "abc"),
            ("GITHUB_TOKEN", "ghp_x"),
            ("DB_PASSWORD", "p"),
            ("CODER_AGENT_URL", "http://cp"),
            ("INNOCENT", "holds eyJ.the.token inside"),
            ("HOME", "/home/coder"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let got: Vec<String> = script_env(vars, &["eyJ.the.token".into()])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, ["PATH", "CODER_AGENT_URL", "HOME"]);
    }

    #[test]
    fn run_as_table() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ncoder:x:1000:1000::/home/coder:/bin/bash\nbroken:x:zz:1::/:/bin/sh\n";
        #[rustfmt::skip]
        /// (user, the agent's uid, (uid, gid) switched to or the error part)
        type Case<'a> = (Option<&'a str>, u32, Result<Option<(u32, u32)>, &'a str>);
        let cases: Vec<Case> = vec![
            (None, 1000, Ok(None)),
            (Some(""), 1000, Ok(None)),
            (Some("coder"), 1000, Ok(None)),
            (Some("coder"), 0, Ok(Some((1000, 1000)))),
            (Some("root"), 1000, Err("not root")),
            (Some("nobody"), 0, Err("does not exist")),
            (Some("broken"), 0, Err("does not exist")),
        ];
        for (user, uid, want) in cases {
            let got = run_as(user, uid, passwd).map(|o| o.map(|e| (e.uid, e.gid)));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{user:?} as {uid}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{user:?} as {uid}: {e}"),
                (g, w) => panic!("{user:?} as {uid}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_script_runs_in_its_group_with_its_output_logged() {
        let home = tempfile::tempdir().unwrap();
        let sink = LogSink::new(1 << 20);
        let settings = ScriptSettings {
            home: home.path().into(),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap())],
            user: None,
        };
        let mut s = start(
            Which::Startup,
            "pwd; echo oops >&2; [ -z \"$CODER_AGENT_TOKEN_FILE\" ] && echo no-token; exit 3",
            &settings,
            &sink,
        )
        .unwrap();
        let (exit, last) = s.wait(&sink).await;
        assert_eq!(exit, Exit::Code(3));
        assert_eq!(last, vec!["oops".to_string()], "standard error is quoted");
        let mut buf = sink.buffer.lock().unwrap();
        let texts: Vec<(LogStream, String)> = buf
            .take_batch(100, 1 << 20)
            .lines
            .into_iter()
            .map(|l| (l.stream, l.text))
            .collect();
        let home_line = home.path().canonicalize().unwrap().display().to_string();
        assert!(texts.contains(&(LogStream::Stdout, home_line)), "{texts:?}");
        assert!(
            texts.contains(&(LogStream::Stderr, "oops".into())),
            "{texts:?}"
        );
        assert_eq!(
            texts.last().unwrap(),
            &(LogStream::Agent, "startup script exited 3".into())
        );
    }

    #[tokio::test]
    async fn signalling_the_group_stops_what_the_script_started() {
        let home = tempfile::tempdir().unwrap();
        let sink = LogSink::new(1 << 20);
        let settings = ScriptSettings {
            home: home.path().into(),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap())],
            user: None,
        };
        let mut s = start(
            Which::Startup,
            "sleep 600 & echo $!; wait",
            &settings,
            &sink,
        )
        .unwrap();
        // The background sleep's pid is the first stdout line.
        let pid = loop {
            let line = sink
                .buffer
                .lock()
                .unwrap()
                .take_batch(10, 1 << 20)
                .lines
                .into_iter()
                .find(|l| l.stream == LogStream::Stdout);
            if let Some(l) = line {
                break l.text.trim().parse::<u32>().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        s.signal_group(rustix::process::Signal::KILL);
        let (exit, _) = s.wait(&sink).await;
        assert_eq!(exit, Exit::Signal(9));
        // The grandchild got the signal too (it may linger briefly as a zombie of sh's reaper).
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the script's background child survived the group signal");
    }
}
