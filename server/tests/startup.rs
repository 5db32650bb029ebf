//! The real binary fails fast with one line naming what to fix.

mod common;

use std::process::Command;

/// Runs `lumie-server` with only `env`, returning (exit code, stderr).
fn run(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lumie-server"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run lumie-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_one_line(stderr: &str, want: &[&str]) {
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("lumie-server: "), "{stderr}");
    for w in want {
        assert!(lines[0].contains(w), "{w:?} missing from: {stderr}");
    }
}

#[test]
fn missing_access_url() {
    let (code, err) = run(&[("RUST_LOG", "off")]);
    assert_ne!(code, 0);
    assert_one_line(&err, &["CODER_ACCESS_URL"]);
}

#[test]
fn unreachable_database_names_the_secret() {
    let url = format!("postgres://coder:pw@127.0.0.1:{}/coder", closed_port());
    let (code, err) = run(&[
        ("RUST_LOG", "off"),
        ("CODER_ACCESS_URL", "https://coder.example.com"),
        ("CODER_PG_CONNECTION_URL", &url),
    ]);
    assert_ne!(code, 0);
    assert_one_line(
        &err,
        &["CODER_PG_CONNECTION_URL", "coder-db-secret", "unreachable"],
    );
    assert!(
        !err.contains(":pw@"),
        "the password is never printed: {err}"
    );
}

#[test]
fn wrong_database_password_names_the_secret() {
    let base = common::pg_base_url();
    let (userinfo, rest) = base
        .trim_start_matches("postgres://")
        .split_once('@')
        .unwrap();
    let user = userinfo.split(':').next().unwrap();
    let url = format!("postgres://{user}:wrong@{rest}");
    let (code, err) = run(&[
        ("RUST_LOG", "off"),
        ("CODER_ACCESS_URL", "https://coder.example.com"),
        ("CODER_PG_CONNECTION_URL", &url),
    ]);
    assert_ne!(code, 0);
    assert_one_line(&err, &["rejected the credentials", "coder-db-secret"]);
}

#[test]
fn unreachable_kube_api() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
            closed_port()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (code, err) = run(&[
        ("RUST_LOG", "off"),
        ("CODER_ACCESS_URL", "https://coder.example.com"),
        ("LUMIE_DATA_DIR", data.to_str().unwrap()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ]);
    assert_ne!(code, 0);
    assert_one_line(&err, &["kube API unreachable", "KUBECONFIG"]);
    assert!(
        data.join("lumie-coder.db").exists(),
        "the database was opened first"
    );
}
