//! The real `lumie-agent` binary: `--version`, configuration from the environment, and SIGTERM
//! reported as `shutting_down` then `off` before it exits.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{App, Recorder, StandIn};
use lumie_contract::agent_api::LifecycleState as S;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_lumie-agent");

fn agent() -> Command {
    let mut c = Command::new(AGENT);
    for var in ["CODER_AGENT_URL", "CODER_AGENT_TOKEN", "POD_IP"] {
        c.env_remove(var);
    }
    c.kill_on_drop(true);
    c
}

#[tokio::test]
async fn version_answers_without_any_configuration() {
    let out = agent().arg("--version").output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("lumie-agent {}\n", lumie_build_info::VERSION)
    );
}

#[tokio::test]
async fn missing_url_is_named() {
    let out = agent().output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("CODER_AGENT_URL"), "{err}");
}

#[tokio::test]
async fn sigterm_reports_shutting_down_and_off_then_exits() {
    let cp = StandIn::start(Recorder::new(15)).await;
    let rec = cp.rec.clone();
    let apps = [
        App::start("tilt").await,
        App::start("code-server").await,
        App::start("agents").await,
    ];
    let mut child = agent()
        .env("CODER_AGENT_URL", cp.url().as_str())
        .env("CODER_AGENT_TOKEN", "secret-token")
        .env("POD_IP", "127.77.3.1")
        .env(
            "LUMIE_AGENT_APP_PORTS",
            format!(
                "tilt={},code-server={},agents={}",
                apps[0].port, apps[1].port, apps[2].port
            ),
        )
        .env("LUMIE_AGENT_HEALTH_INTERVAL", "100ms")
        .env("LUMIE_AGENT_HOME_DIR", std::env::temp_dir())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = rec.wait_for_state(S::Ready, Duration::from_secs(10)).await;
    assert_eq!(ready.token.as_deref(), Some("secret-token"));

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within its shutdown timeout")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let states = rec.states();
    assert_eq!(
        &states[states.len() - 2..],
        [S::ShuttingDown, S::Off],
        "{states:?}"
    );

    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("reported off"), "{log}");
    assert!(!log.contains("secret-token"), "the token is never logged");
    cp.stop().await;
}
