//! The dashboard in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/dashboard.test.mjs`, `node --test`) against lumie-server on the harness
//! cluster behind the real webhook, with a stand-in agent in each workspace pod so statuses move on their own. The
//! script signs in with tokens, creates workspaces, watches them change live, opens one, makes
//! and revokes a token, checks what a member sees, stops and deletes (confirmed) a workspace, and
//! saves screenshots (360 px and 1280 px, member and admin) into `target/screenshots/`.

use std::process::Command;
use std::sync::Arc;

use lumie_server::api::{KeyJson, UserJson};

use lumie_tests::workspace_pods::{self, StandInAgent};
use lumie_tests::{Cluster, admission, control_plane};

fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "run scripts/install-deps.sh (npm ci in tests/browser)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "run scripts/install-deps.sh (apt chromium)"
    );
    let cluster = Cluster::shared();
    let admin = cluster.client().await;
    let work = tempfile::tempdir().unwrap();
    // The real webhook: it stamps the server's pods, which the server trusts only then.
    let _webhook = admission::start_registered_webhook(cluster, work.path())
        .await
        .unwrap();
    workspace_pods::install_stable_service(&admin)
        .await
        .unwrap();
    cluster.set_pod_action(Arc::new(StandInAgent {
        apps_json: r#"{"tilt":"healthy","code-server":"healthy","agents":"initializing"}"#,
        first_after_secs: 2,
    }));
    let config = control_plane::server_config(&work.path().join("server")).unwrap();
    let url = config.access_url.clone();
    let server = control_plane::start_server(cluster, config)
        .await
        .expect("lumie-server starts");
    let token = server.first_admin_token.clone().unwrap();

    // A member with a token of their own.
    let http = reqwest::Client::new();
    let member: UserJson = http
        .post(format!("{url}/api/v2/users"))
        .header("Coder-Session-Token", &token)
        .json(&serde_json::json!({ "username": "mia" }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let member_token: KeyJson = http
        .post(format!("{url}/api/v2/users/{}/keys", member.id))
        .header("Coder-Session-Token", &token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let profile = work.path().join("chromium-profile");
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--test")
            .arg("--test-reporter=spec")
            .arg("dashboard.test.mjs")
            .current_dir(&browser_dir)
            .env("LUMIE_URL", url2)
            .env("LUMIE_ADMIN_TOKEN", token)
            .env("LUMIE_MEMBER_TOKEN", member_token.key)
            .env("LUMIE_SCREENSHOTS", &shots)
            .env("LUMIE_PROFILE_DIR", profile)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    cluster.clear_pod_action();
    assert!(
        out.status.success(),
        "the browser test failed: {}",
        out.status
    );
    drop(server);
    let _ = url;
}
