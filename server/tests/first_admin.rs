//! The first admin's token on the real binary against the harness's kube-apiserver, as the
//! control plane's ServiceAccount: written to the Secret `LUMIE_FIRST_ADMIN_SECRET` names
//! (with the chart's create-only grant), never to the process output; refused up front when the
//! grant is missing; and without a Secret not printed when stdout is not a terminal (a pod's).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use lumie_contract::workspace;
use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use lumie_tests::{Cluster, Identity, control_plane};
use serde_json::json;

const SECRET: &str = "lumie-first-admin";

/// The binary's output so far, line by line, as it comes (stdout and stderr alike).
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    base: String,
}

impl Server {
    fn spawn(cluster: &Cluster, data: &Path, extra: &[(&str, &str)]) -> Server {
        let addr = control_plane::free_loopback_addr().unwrap();
        let base = format!("http://{addr}");
        let kubeconfig = cluster.kubeconfig(Identity::ControlPlane);
        let mut child = Command::new(env!("CARGO_BIN_EXE_lumie-server"))
            .env_clear()
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("CODER_ACCESS_URL", &base)
            .env("LUMIE_LISTEN_ADDR", addr.to_string())
            .env("LUMIE_DATA_DIR", data)
            .env("LUMIE_WORKSPACE_NAMESPACE", workspace::NAMESPACE)
            .env("KUBECONFIG", kubeconfig)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lumie-server");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Server {
            child,
            lines,
            seen: vec![],
            base,
        }
    }

    /// Waits (bounded) for a line containing `needle`; panics with the output so far.
    fn wait_for(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no {needle:?} in the output:\n{}", self.seen.join("\n"));
    }

    /// Stops the process and returns everything it wrote.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader threads end at EOF, closing the channel.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Exit code and output of a process that is expected to exit by itself.
    fn wait_exit(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

async fn user_count(data: &Path) -> i64 {
    let db = Db::connect(&DatabaseConfig::Sqlite(data.join("lumie-coder.db")))
        .await
        .unwrap();
    let n = db.count_users().await.unwrap();
    db.close().await;
    n
}

/// The chart's grant (`server-rbac.yaml`, Role lumie-coder-first-admin): create on Secrets in
/// the server's own namespace, nothing else.
async fn grant_create_secrets(admin: &kube::Client) {
    let ns = workspace::CONTROL_PLANE_NAMESPACE;
    let pp = PatchParams::apply("first-admin-test");
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "lumie-coder-first-admin", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    });
    Api::<Role>::namespaced(admin.clone(), ns)
        .patch("lumie-coder-first-admin", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "lumie-coder-first-admin", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lumie-coder-first-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "coder", "namespace": ns}]
    });
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .patch("lumie-coder-first-admin", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}

#[tokio::test]
async fn first_admin_token_goes_to_the_secret_and_never_to_the_output() {
    let cluster = Cluster::shared();
    let admin = cluster.client_as(Identity::Admin).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), workspace::CONTROL_PLANE_NAMESPACE);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let with_secret = [("LUMIE_FIRST_ADMIN_SECRET", SECRET)];

    // Without the grant the start stops before any admin (and token) exists, naming the fix.
    let (code, out) = Server::spawn(cluster, &data, &with_secret).wait_exit();
    assert_ne!(code, 0, "{out}");
    for w in [
        "coder/lumie-first-admin",
        "LUMIE_FIRST_ADMIN_SECRET",
        "`create` on secrets",
    ] {
        assert!(out.contains(w), "{w:?} in {out}");
    }
    assert_eq!(
        user_count(&data).await,
        0,
        "no admin without a way to hand its token over"
    );

    // With the chart's create-only grant: the Secret holds the token, the output does not.
    grant_create_secrets(&admin).await;
    let mut server = Server::spawn(cluster, &data, &with_secret);
    let created = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(secrets.clone(), SECRET, |s: Option<&Secret>| s.is_some()),
    )
    .await
    .expect("the Secret within 60 s")
    .unwrap()
    .unwrap();
    server.wait_for("lumie-server listening");
    assert_eq!(created.immutable, Some(true));
    let data_map = created.data.unwrap();
    let token = String::from_utf8(data_map["token"].0.clone()).unwrap();
    assert_eq!(String::from_utf8_lossy(&data_map["username"].0), "admin");
    assert!(token.len() >= 20, "a real token: {token:?}");
    let me: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v2/users/me", server.base))
        .header("Coder-Session-Token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "admin", "{me}");
    let out = server.stop();
    assert!(
        !out.contains(&token),
        "the token is not in the output:\n{out}"
    );
    assert!(
        out.contains("kubectl -n coder get secret lumie-first-admin -o jsonpath='{.data.token}'"),
        "the output says how to read it:\n{out}"
    );

    // A restart (the Secret exists, so does the admin) starts normally.
    let mut again = Server::spawn(cluster, &data, &with_secret);
    again.wait_for("lumie-server listening");
    let out = again.stop();
    assert!(!out.contains(&token), "{out}");

    // No Secret configured and stdout not a terminal (as in a pod): the token is not printed.
    let other = dir.path().join("other");
    let mut plain = Server::spawn(cluster, &other, &[]);
    plain.wait_for("its API token is not shown");
    let out = plain.stop();
    assert!(!out.contains("shown only now"), "{out}");
    assert_eq!(user_count(&other).await, 1, "the admin exists all the same");
}
