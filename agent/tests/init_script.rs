//! `agent/init-script.sh` run for real with `sh`, once per downloader (curl, GNU wget, BusyBox
//! wget), against a local server that answers an HTML error page, an HTML page without the
//! checksum header, a wrong checksum, an HTML page with a matching checksum, a script that is
//! not the agent, and finally the real `lumie-agent` binary, which the script must exec (same
//! PID: SIGTERM then reaches the agent, which reports `off`). Failures of DNS (in a network
//! namespace of its own, so no query leaves the host), connect and TLS are named.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Recorder, StandIn, free_port};
use lumie_contract::agent_api::LifecycleState as S;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/init-script.sh");
const AGENT: &str = env!("CARGO_BIN_EXE_lumie-agent");
const SHA_HEADER: &str = "x-lumie-agent-sha256";
const HTML: &str = "<html><body><h1>Proxy login</h1></body></html>\n";
const NOT_THE_AGENT: &str = "#!/bin/sh\necho 'hello from a proxy'\n";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Clone)]
struct Distribution {
    agent: Arc<Vec<u8>>,
    requests: Arc<AtomicUsize>,
}

/// Answers a different wrong thing to each of the first five downloads, then the agent.
async fn download(State(d): State<Distribution>) -> Response {
    let n = d.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let with_sha = |body: Vec<u8>, sum: String| {
        let mut h = HeaderMap::new();
        h.insert(SHA_HEADER, HeaderValue::from_str(&sum).unwrap());
        (StatusCode::OK, h, body).into_response()
    };
    match n {
        1 => (StatusCode::SERVICE_UNAVAILABLE, HTML).into_response(),
        2 => (StatusCode::OK, HTML).into_response(),
        3 => with_sha(d.agent.to_vec(), sha(b"something else")),
        4 => with_sha(HTML.into(), sha(HTML.as_bytes())),
        5 => with_sha(NOT_THE_AGENT.into(), sha(NOT_THE_AGENT.as_bytes())),
        _ => with_sha(d.agent.to_vec(), sha(&d.agent)),
    }
}

/// The script as a child process whose stderr lines are collected as they come.
struct Script {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The script's own lines (not the agent's log).
    fn script_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("lumie-init: "))
            .collect()
    }

    async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no line {what}; got {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn script(downloader: &str, url: &str, bin_dir: &Path) -> Command {
    script_in(None, downloader, url, bin_dir)
}

fn script_in(wrapper: Option<&str>, downloader: &str, url: &str, bin_dir: &Path) -> Command {
    let mut c = match wrapper {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(["-n", "sh", SCRIPT]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.arg(SCRIPT);
            c
        }
    };
    for var in [
        "CODER_AGENT_URL",
        "POD_IP",
        "LUMIE_AGENT_CA_BUNDLE",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
    ] {
        c.env_remove(var);
    }
    if !url.is_empty() {
        c.env("CODER_AGENT_URL", url);
    }
    c.env("LUMIE_INIT_DOWNLOADER", downloader)
        .env("LUMIE_INIT_RETRY_DELAY", "0")
        .env("LUMIE_AGENT_BIN_DIR", bin_dir);
    c
}

async fn refuses_everything_wrong_then_execs_the_agent(downloader: &str) {
    let tool = if downloader == "busybox" {
        "busybox"
    } else {
        downloader
    };
    assert!(
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success(),
        "{tool} is needed for this test (Debian: apt-get install {tool})"
    );
    let agent = Arc::new(std::fs::read(AGENT).unwrap());
    let dist = Distribution {
        agent,
        requests: Arc::default(),
    };
    let rec = Recorder::new(15);
    let app = common::router(rec.clone()).merge(
        axum::Router::new()
            .route("/bin/lumie-agent-linux-amd64", axum::routing::get(download))
            .with_state(dist.clone()),
    );
    let cp = StandIn::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        app,
        rec.clone(),
    );
    let bin_dir = tempfile::tempdir().unwrap();
    let mut cmd = script(downloader, cp.url().as_str(), bin_dir.path());
    cmd.env("CODER_AGENT_TOKEN", "init-token")
        .env(
            "LUMIE_AGENT_APP_HEALTH",
            "tilt=disabled,code-server=disabled,agents=disabled",
        )
        .env("LUMIE_AGENT_HOME_DIR", bin_dir.path())
        // Passed through to the agent by `exec "$bin" "$@"`.
        .args(["--report-interval", "1s"]);
    let mut run = Script::spawn(cmd);

    let ready = rec.wait_for_state(S::Ready, Duration::from_secs(60)).await;
    assert_eq!(ready.token.as_deref(), Some("init-token"));
    let lines = run.script_lines();
    let expect = [
        "attempt 1: HTTP status 503",
        "attempt 2: no X-Lumie-Agent-Sha256 header",
        "attempt 3: checksum mismatch",
        "attempt 4: not an executable",
        "attempt 5: --version did not answer as lumie-agent (got: hello from a proxy)",
        &format!(
            "attempt 6: lumie-agent {} verified",
            lumie_build_info::VERSION
        ),
    ];
    for (i, want) in expect.iter().enumerate() {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("attempt {}:", i + 1)))
            .unwrap_or_else(|| panic!("no line for attempt {}: {lines:#?}", i + 1));
        assert!(line.contains(want), "{downloader}: {line:?} lacks {want:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("kubectl exec -it -n lumie-dev")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("attempt 7")));
    assert_eq!(dist.requests.load(Ordering::SeqCst), 6);

    // exec: the script's PID now runs the downloaded agent.
    let pid = run.child.id().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, bin_dir.path().join("lumie-agent"));
    // Heartbeats every second as the passed-through flag says, not 15 s as the server does.
    let after = Instant::now();
    rec.wait_for("a second later", Duration::from_secs(5), |b| b.at > after)
        .await;

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(rec.beats().last().unwrap().body.lifecycle, S::Off);
    cp.stop().await;
}

#[tokio::test]
async fn curl_refuses_everything_wrong_then_execs_the_agent() {
    refuses_everything_wrong_then_execs_the_agent("curl").await;
}

#[tokio::test]
async fn gnu_wget_refuses_everything_wrong_then_execs_the_agent() {
    refuses_everything_wrong_then_execs_the_agent("wget").await;
}

#[tokio::test]
async fn busybox_wget_refuses_everything_wrong_then_execs_the_agent() {
    refuses_everything_wrong_then_execs_the_agent("busybox").await;
}

/// Runs the script until its first attempt line and returns it.
async fn first_failure(wrapper: Option<&str>, downloader: &str, url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let run = Script::spawn(script_in(wrapper, downloader, url, dir.path()));
    let line = run
        .wait_line("for attempt 1", |l| l.starts_with("lumie-init: attempt 1:"))
        .await;
    drop(run);
    line
}

#[tokio::test]
async fn failures_are_named() {
    // A plain HTTP server spoken to over TLS.
    let http = StandIn::start(Recorder::new(15)).await;
    let tls_url = format!("https://{}", http.addr);
    let refused_url = format!("http://127.0.0.1:{}", free_port());
    for dl in ["curl", "wget", "busybox"] {
        let line = first_failure(None, dl, &refused_url).await;
        assert!(
            line.contains("attempt 1: connect: cannot connect to"),
            "{dl}: {line}"
        );
        assert!(line.ends_with("retrying in 0s"), "{dl}: {line}");

        let line = first_failure(Some("unshare"), dl, "http://lumie-no-such-host.invalid").await;
        assert!(line.contains("attempt 1: DNS: cannot resolve the host of http://lumie-no-such-host.invalid/bin/lumie-agent-linux-amd64"), "{dl}: {line}");

        let line = first_failure(None, dl, "").await;
        assert!(
            line.contains("attempt 1: CODER_AGENT_URL is not set"),
            "{dl}: {line}"
        );
    }
    // BusyBox's TLS client differs by build; curl and GNU wget name it.
    for dl in ["curl", "wget"] {
        let line = first_failure(None, dl, &tls_url).await;
        assert!(
            line.contains("attempt 1: TLS: secure connection to"),
            "{dl}: {line}"
        );
    }
    http.stop().await;
}

/// The architecture comes from `uname -m` (a stand-in `uname` first on PATH) unless
/// `LUMIE_AGENT_ARCH` says, under the host's `sh` and BusyBox's; an unknown machine is named.
#[tokio::test]
async fn the_architecture_comes_from_uname() {
    let refused_url = format!("http://127.0.0.1:{}", free_port());
    #[rustfmt::skip]
    let cases = [
        ("x86_64", None, "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-amd64"),
        ("amd64", None, "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-amd64"),
        ("aarch64", None, "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-arm64"),
        ("arm64", None, "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-arm64"),
        ("aarch64", Some("amd64"), "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-amd64"),
        ("riscv64", Some("arm64"), "attempt 1: connect: cannot connect to {url}/bin/lumie-agent-linux-arm64"),
        ("riscv64", None, "unsupported architecture: riscv64 (uname -m); lumie-agent is built for amd64 and arm64"),
    ];
    let path = std::env::var("PATH").unwrap_or_default();
    for shell in [&["sh"][..], &["busybox", "sh"][..]] {
        for (machine, arch, want) in cases {
            let want = want.replace("{url}", &refused_url);
            let dir = tempfile::tempdir().unwrap();
            let fake = dir.path().join("fake-bin");
            std::fs::create_dir_all(&fake).unwrap();
            let uname = fake.join("uname");
            std::fs::write(&uname, format!("#!/bin/sh\necho {machine}\n")).unwrap();
            std::fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let mut c = script("curl", &refused_url, &dir.path().join("bin"));
            let mut cmd = Command::new(shell[0]);
            cmd.args(&shell[1..]).arg(SCRIPT);
            for (k, v) in c.as_std().get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            c = cmd;
            c.env("PATH", format!("{}:{path}", fake.display()));
            match arch {
                Some(a) => c.env("LUMIE_AGENT_ARCH", a),
                None => c.env_remove("LUMIE_AGENT_ARCH"),
            };
            let run = Script::spawn(c);
            let line = run
                .wait_line(&format!("naming {want:?}"), |l| l.contains(&want))
                .await;
            assert!(
                line.starts_with("lumie-init: "),
                "{shell:?} {machine}: {line}"
            );
            drop(run);
        }
    }
}

#[test]
fn the_script_is_posix_sh() {
    let out = std::process::Command::new("sh")
        .args(["-n", SCRIPT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(SCRIPT).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(
        !text.contains("{{"),
        "no placeholders: the server serves it verbatim"
    );
}
