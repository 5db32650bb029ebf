//! Running lumie-server against the harness, one way for every test, benchmark and the demo:
//! a [`Config`] on a free loopback port whose access and agent URLs name that port (the Host
//! guard accepts only the access URL's host, so the port must be known before start), and a
//! start as the control plane's own identity (`system:serviceaccount:coder:coder`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use lumie_server::config::Config;
use lumie_server::serve::Running;

use crate::{Cluster, HarnessError, Identity, io_error};

/// A loopback address with a port nobody listens on right now.
pub fn free_loopback_addr() -> Result<SocketAddr, HarnessError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(io_error("picking a free loopback port"))
}

/// The server's test settings (`Config::for_tests`, SQLite in `data_dir`, which is created)
/// listening on a free loopback port, with the access and agent URLs pointing at it.
pub fn server_config(data_dir: &Path) -> Result<Config, HarnessError> {
    std::fs::create_dir_all(data_dir)
        .map_err(io_error(format!("creating {}", data_dir.display())))?;
    let mut config = Config::for_tests(data_dir.to_path_buf());
    listen_on(&mut config, free_loopback_addr()?);
    Ok(config)
}

/// Points a config's listener, access URL and agent URL at `addr`.
pub fn listen_on(config: &mut Config, addr: SocketAddr) {
    config.listen = addr;
    config.access_url = format!("http://{addr}");
    config.agent_url = config.access_url.clone();
}

/// Starts lumie-server on `cluster` as the control plane.
pub async fn start_server(
    cluster: &Cluster,
    config: Config,
) -> lumie_server::error::StartupResult<Running> {
    lumie_server::serve::start(config, cluster.client_as(Identity::ControlPlane).await).await
}

/// A member the admin made, with an API token of their own.
pub struct Member {
    /// The user's id.
    pub id: String,
    /// Their API token (`Coder-Session-Token`).
    pub token: String,
}

/// Makes the member `username` and a token of theirs through the API, as the admin
/// (`admin_token`) of the server at `url`. Panics with the server's answer when it refuses:
/// this is test set-up.
pub async fn member(url: &str, admin_token: &str, username: &str) -> Member {
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let req = http
            .post(format!("{url}{path}"))
            .header("Coder-Session-Token", admin_token)
            .json(&body);
        async move {
            let resp = req.send().await.expect("the server answers");
            let status = resp.status();
            let json: serde_json::Value = resp.json().await.expect("a JSON answer");
            assert!(status.is_success(), "POST {path}: {status} {json}");
            json
        }
    };
    let user = post(
        "/api/v2/users".into(),
        serde_json::json!({ "username": username }),
    )
    .await;
    let id = user["id"].as_str().expect("a user id").to_string();
    let key = post(format!("/api/v2/users/{id}/keys"), serde_json::json!({})).await;
    let token = key["key"].as_str().expect("a token").to_string();
    Member { id, token }
}

/// Starts a per-test-binary shared stack (webhook, server, runners) on a runtime of its own, on
/// a thread that lives as long as the test process, and returns what `start` hands back; what
/// it keeps (the second value: servers, webhooks) lives as long as the process too. Each
/// `#[tokio::test]` has its own runtime that ends with it: a server started on one would die
/// with the first test. Wrap the call in a `OnceLock` so the stack starts once.
pub fn start_shared<T, K, F, Fut>(start: F) -> T
where
    T: Send + 'static,
    K: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (T, K)>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the shared stack");
        rt.block_on(async move {
            let (shared, _keep) = start().await;
            if tx.send(shared).is_ok() {
                std::future::pending::<()>().await;
            }
        });
    });
    rx.recv().expect("the shared stack starts")
}
