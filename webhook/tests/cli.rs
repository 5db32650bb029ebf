//! The `lumie-webhook` binary's offline commands, run as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use lumie_webhook::policy::PolicySet;
use lumie_webhook::review::{Endpoint, review};
use serde_json::{Value, json};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lumie-webhook"));
    // The developer's environment must not change the defaults under test.
    for var in [
        "LUMIE_WEBHOOK_POLICY_FILE",
        "LUMIE_WEBHOOK_CHECK_USER",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn admission_review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b6a4c2a8-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "lumie-dev",
            "operation": "CREATE",
            "userInfo": {"username": "bob"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                "spec": {"hostPID": true, "containers": [{"name": "c", "image": "i"}]}}
        }
    }))
    .unwrap()
}

#[test]
fn review_answers_exactly_what_the_endpoint_would() {
    let mut cmd = bin();
    cmd.args(["review", "--endpoint", "validate"]);
    let out = run_with_stdin(cmd, &admission_review());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = review(
        &PolicySet::builtin(),
        Endpoint::Validate,
        &admission_review(),
    )
    .unwrap()
    .body;
    assert_eq!(out.stdout.strip_suffix(b"\n").unwrap(), expected.as_slice());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["allowed"], false, "a denial is still exit 0");
}

#[test]
fn review_with_a_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: coder.lumie-infra.com/v1alpha1\nkind: WorkspacePolicy\n\
         metadata: {name: audit-only}\nspec:\n  mode: Audit\n  \
         breakGlass: {reason: INC-5, expires: \"2999-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    let mut cmd = bin();
    cmd.args(["review", "--endpoint", "validate", "--policy"])
        .arg(&policy);
    let out = run_with_stdin(cmd, &admission_review());
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(
        v["response"]["auditAnnotations"]["violations"]
            .as_str()
            .unwrap()
            .contains(r#"WorkspacePolicy "audit-only""#)
    );
}

#[test]
fn review_of_unreadable_input_exits_2() {
    for (input, want) in [
        (&b"hello"[..], "body is not JSON"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"group":"","kind":"Pod"},"operation":"CREATE"}}"#,
            "request.uid is missing",
        ),
    ] {
        let mut cmd = bin();
        cmd.args(["review", "--endpoint", "mutate"]);
        let out = run_with_stdin(cmd, input);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty(), "nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: coder-alice-main
  labels: {app.kubernetes.io/name: dev-workspace}
spec:
  containers:
  - {name: dev, image: "ghcr.io/lumie-infra/dev:1"}
  - {name: agents, image: "ghcr.io/lumie-infra/agents:1"}
  - name: dind
    image: docker:27-dind
    securityContext: {privileged: true}
---
apiVersion: v1
kind: Service
metadata: {name: dev-workspace}
spec: {ports: [{port: 80}]}
---
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape", "namespace": "lumie-dev"},
 "spec": {"hostPID": true, "containers": [{"name": "sh", "image": "alpine",
   "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}]}}
"#;

#[test]
fn check_prints_a_verdict_per_pod_and_fails_on_a_denial() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pods.yaml");
    std::fs::write(&file, MANIFESTS).unwrap();
    let out = bin().arg("check").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PASS lumie-dev/coder-alice-main") && text.contains("mutation patch"),
        "{text}"
    );
    assert!(
        text.contains("SKIP") && text.contains("Service \"dev-workspace\""),
        "{text}"
    );
    assert!(text.contains("FAIL lumie-dev/escape"), "{text}");
    for v in [
        "spec.hostPID=true",
        "securityContext.privileged=true",
        r#"securityContext.capabilities.add=["SYS_ADMIN"]"#,
    ] {
        let line = text.lines().find(|l| l.contains(v));
        assert!(
            line.is_some_and(|l| l.starts_with("  deny: ")),
            "{v}: {text}"
        );
    }
    assert!(text.contains("2 pods checked, some denied"), "{text}");

    // The same workspace pod created by a developer loses the privileged exception.
    let out = bin()
        .args(["check", "--user", "alice"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL lumie-dev/coder-alice-main"), "{text}");
}

#[test]
fn check_passes_when_every_pod_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.json");
    std::fs::write(
        &file,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"ok"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
    )
    .unwrap();
    let out = bin().arg("check").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 pods checked, all allowed"));
}

#[test]
fn certs_generate_writes_the_four_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "certs",
            "generate",
            "--service",
            "lumie-webhook",
            "--namespace",
            "coder",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "tls.crt", "tls.key", "ca-bundle.b64"] {
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(len > 0, "{f} is empty");
    }
}

#[test]
fn version_names_the_upstream_baseline_release() {
    let out = bin().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let release = lumie_webhook::validate::BASELINE_KUBERNETES_RELEASE;
    assert!(
        text.contains(&format!("Pod Security baseline of Kubernetes {release}")),
        "{text}"
    );
}

#[test]
fn check_says_what_makes_a_workspace_pod_when_dind_is_not_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dind.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: my-dind, labels: {app: my-dind}}
spec:
  containers:
  - name: dind
    image: docker:27-dind
    securityContext: {privileged: true}
"#,
    )
    .unwrap();
    let out = bin()
        .args(["check", "--user", "alice"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("does not match workspaceSelector"),
        "the denial keeps its shape: {text}"
    );
    let hint = text
        .lines()
        .find(|l| l.starts_with("  hint: "))
        .unwrap_or_else(|| panic!("no hint: {text}"));
    for part in [
        "app.kubernetes.io/name=dev-workspace",
        r#"service account "dev-workspace""#,
        "workspaceCreators: system:serviceaccount:coder:coder",
        r#"checked as "alice"; --user"#,
    ] {
        assert!(hint.contains(part), "{part}: {hint}");
    }
}
