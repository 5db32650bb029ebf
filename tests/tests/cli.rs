//! The `lumie` CLI end to end: the real binary, run as a fresh user would (own HOME, no
//! terminal), against lumie-server on the harness cluster behind the real webhook, with a
//! stand-in agent in each workspace pod so workspaces reach `running` on their own.
//!
//! One server for the whole binary (every server reconciles `lumie-dev`, so two would fight over
//! its pods), on a runtime of its own; each test uses its own users and workspace names. The
//! test that cordons every worker takes [`NODES`] for writing, the others that need a pod
//! scheduled take it for reading.
//!
//! What needs a session into a workspace (ssh, scp, port-forward) is in `cli_sessions.rs`.

mod cli_common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cli_common::{User, free_port, lumie_binary, member};
use lumie_tests::workspace_pods::{self, StandInAgent};
use lumie_tests::{Cluster, admission, control_plane, nodes};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::sync::RwLock;

static NODES: RwLock<()> = RwLock::const_new(());

struct Stack {
    url: String,
    admin_token: String,
}

/// The shared stack, started once.
fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        control_plane::start_shared(move || async move {
            let cluster = Cluster::shared();
            let admin = cluster.client().await;
            let work = tempfile::tempdir().unwrap().keep();
            let _webhook = admission::start_registered_webhook(cluster, &work)
                .await
                .unwrap();
            workspace_pods::install_stable_service(&admin)
                .await
                .unwrap();
            cluster.set_pod_action(Arc::new(StandInAgent {
                apps_json: r#"{"tilt":"healthy","code-server":"healthy","agents":"healthy"}"#,
                first_after_secs: 1,
            }));
            let mut config = control_plane::server_config(&work.join("server")).unwrap();
            // The download folder, with the CLI in it (no agent: the stand-in needs none).
            let bin_dir = work.join("bin");
            std::fs::create_dir_all(&bin_dir).unwrap();
            std::fs::copy(lumie_binary(), bin_dir.join("lumie-linux-amd64")).unwrap();
            config.agent_binary_dir = bin_dir;
            let url = config.access_url.clone();
            let server = control_plane::start_server(cluster, config)
                .await
                .expect("lumie-server starts");
            (
                Stack {
                    url,
                    admin_token: server.first_admin_token.clone().unwrap(),
                },
                (server, _webhook),
            )
        })
    })
}

/// A member signed in with `lumie login URL --token …`.
async fn signed_in(name: &str) -> (User, String) {
    let s = stack();
    let token = member(&s.url, &s.admin_token, name).await;
    let user = User::new();
    user.run(&["login", &s.url, "--token", &token]).await.ok();
    (user, token)
}

/// Splits a table line into cells (columns are two or more spaces apart).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_it_says_how_to_log_in_then_login_stores_a_private_credential() {
    let s = stack();
    let user = User::new();
    let e = user.run(&["list"]).await.failed();
    assert!(e.contains("not signed in: run `lumie login <url>`"), "{e}");
    let bare = user.run(&[]).await.ok();
    assert!(bare.stdout.contains("lumie login <url>"), "{}", bare.stdout);
    assert!(bare.stdout.contains("Usage:"), "{}", bare.stdout);

    let token = member(&s.url, &s.admin_token, "lena").await;
    // A wrong token is refused before anything is stored.
    let e = user
        .run(&["login", &s.url, "--token", "not-a-token"])
        .await
        .failed();
    assert!(
        e.contains("does not accept that token") && e.contains("/cli-auth"),
        "{e}"
    );
    assert!(!user.credential_file().exists());
    // Without --token and without a terminal, the token is read from standard input.
    let out = user
        .run_with_stdin(
            &["login", &format!("{}/", s.url)],
            Some(format!("{token}\n").as_bytes()),
        )
        .await
        .ok();
    assert!(
        out.stdout
            .contains(&format!("Signed in to {} as lena", s.url)),
        "{}",
        out.stdout
    );
    let file = user.credential_file();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["url"], s.url.as_str());
    assert_eq!(stored["token"], token.as_str());
    let list = user.run(&["list"]).await.ok();
    assert!(
        list.stdout.contains("lumie create"),
        "no workspaces yet: {}",
        list.stdout
    );

    // LUMIE_URL and LUMIE_SESSION_TOKEN override the stored login (here: the admin's).
    let mut as_admin = User::new();
    as_admin.env = vec![
        ("LUMIE_URL".into(), s.url.clone()),
        ("LUMIE_SESSION_TOKEN".into(), s.admin_token.clone()),
    ];
    as_admin.run(&["list", "--all"]).await.ok();

    let out = user.run(&["logout"]).await.ok();
    assert!(out.stdout.contains("Signed out"), "{}", out.stdout);
    assert!(!file.exists());
    let e = user.run(&["list"]).await.failed();
    assert!(e.contains("lumie login"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut user = User::new();
    let e = user.run(&["login", &url, "--token", "x"]).await.failed();
    assert!(
        e.contains(&format!("cannot reach the lumie server at {url}")),
        "{e}"
    );
    user.env = vec![
        ("LUMIE_URL".into(), url.clone()),
        ("LUMIE_SESSION_TOKEN".into(), "x".into()),
    ];
    let e = user.run(&["list"]).await.failed();
    assert!(
        e.contains(&format!("cannot reach the lumie server at {url}")),
        "{e}"
    );
    assert!(e.contains("refused"), "the cause is given: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_table_and_json_agree_and_show_and_admin_names() {
    let _nodes = NODES.read().await;
    let s = stack();
    let (user, _) = signed_in("tara").await;
    for ws in ["alpha", "beta"] {
        let out = user.run(&["create", ws]).await.ok();
        assert!(
            out.stdout.contains(&format!("Workspace {ws} is running")),
            "{}",
            out.stdout
        );
    }
    let table = user.run(&["list"]).await.ok().stdout;
    let json = user.run(&["list", "--output", "json"]).await.ok().stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        cells(lines[0]),
        [
            "WORKSPACE",
            "STATUS",
            "AGENT",
            "HEALTHY APPS",
            "SINCE",
            "REASON"
        ]
    );
    assert_eq!(lines.len() - 1, rows.len(), "{table}");
    assert_eq!(rows.len(), 2, "{json}");
    let keys = [
        "workspace",
        "status",
        "agent",
        "healthy_apps",
        "since",
        "reason",
    ];
    // Same order in both.
    for (line, row) in lines[1..].iter().zip(&rows) {
        let want: Vec<String> = keys
            .iter()
            .map(|k| row[*k].as_str().unwrap().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells(line), want, "table line vs JSON row");
        assert_eq!(row.as_object().unwrap().len(), keys.len());
    }
    let alpha = rows
        .iter()
        .find(|r| r["workspace"] == "tara/alpha")
        .expect("tara/alpha is listed");
    assert_eq!(alpha["status"], "running");
    assert_eq!(alpha["agent"], "ready/connected");
    assert_eq!(alpha["healthy_apps"], "3/3");

    let show = user.run(&["show", "alpha"]).await.ok().stdout;
    assert!(
        show.contains("tara/alpha") && show.contains("running"),
        "{show}"
    );
    let detail: serde_json::Value =
        serde_json::from_str(&user.run(&["show", "alpha", "-o", "json"]).await.ok().stdout)
            .unwrap();
    assert_eq!(detail["apps"].as_array().unwrap().len(), 3);
    assert!(show.contains(detail["id"].as_str().unwrap()), "{show}");

    // Another member does not see it; an admin names it owner/name.
    let (other, _) = signed_in("omar").await;
    let e = other.run(&["show", "tara/alpha"]).await.failed();
    assert!(e.contains("no workspace tara/alpha"), "{e}");
    let e = other
        .run(&["ssh", "tara/alpha", "--", "true"])
        .await
        .failed();
    assert!(e.contains("no workspace tara/alpha"), "{e}");
    let mut admin = User::new();
    admin.env = vec![
        ("LUMIE_URL".into(), s.url.clone()),
        ("LUMIE_SESSION_TOKEN".into(), s.admin_token.clone()),
    ];
    let shown = admin
        .run(&["show", "tara/alpha", "-o", "json"])
        .await
        .ok()
        .stdout;
    assert!(shown.contains("\"tara/alpha\""), "{shown}");
    let all = admin
        .run(&["list", "--all", "-o", "json"])
        .await
        .ok()
        .stdout;
    assert!(all.contains("tara/beta"), "{all}");
    let mine = admin.run(&["list", "-o", "json"]).await.ok().stdout;
    assert!(
        !mine.contains("tara/beta"),
        "without --all only the admin's own: {mine}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_progress_creating_pending_with_the_schedulers_reason_running() {
    let _nodes = NODES.write().await;
    let admin = Cluster::shared().client().await;
    let (user, _) = signed_in("pia").await;
    nodes::cordon_workers(&admin, true).await.unwrap();
    let mut child = user.command(&["create", "slow"]).spawn().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    let pending = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("] pending: ") && line.contains("nodes are available") {
                return line;
            }
        }
        panic!("lumie create ended before pending: {seen:?}");
    })
    .await
    .expect("pending with the scheduler's reason within 90 s");
    nodes::cordon_workers(&admin, false).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(120), async {
        let mut rest = vec![];
        while let Some(line) = stdout.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("lumie create ends");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{seen:?} {rest:?}");
    assert_eq!(seen[0], "Creating workspace slow…", "{seen:?}");
    // The reason is the scheduler's, verbatim (the pod's PodScheduled message starts `0/`).
    assert!(pending.contains("pending: 0/"), "{pending}");
    assert!(rest.iter().any(|l| l.ends_with("] running")), "{rest:?}");
    assert_eq!(
        rest.last().unwrap(),
        "Workspace slow is running: `lumie ssh slow` for a shell, `lumie open slow` for its apps."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_delete_and_delete_refuses_without_a_terminal() {
    let _nodes = NODES.read().await;
    let (user, _) = signed_in("sam").await;
    let out = user.run(&["create", "box", "--no-wait"]).await.ok();
    assert!(out.stdout.contains("`lumie show box`"), "{}", out.stdout);
    let out = user.run(&["start", "box"]).await.ok();
    assert!(
        out.stdout.contains("Workspace box is running"),
        "{}",
        out.stdout
    );
    let out = user.run(&["stop", "box"]).await.ok();
    assert!(out.stdout.contains("] stopped"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Workspace box is stopped"),
        "{}",
        out.stdout
    );
    // Stopped: getting in says how to start it.
    let e = user.run(&["ssh", "box", "--", "true"]).await.failed();
    assert!(e.contains("run `lumie start box`"), "{e}");
    let e = user
        .run(&["port-forward", "box", "--tcp", "0:80"])
        .await
        .failed();
    assert!(e.contains("run `lumie start box`"), "{e}");
    let out = user.run(&["start", "box"]).await.ok();
    assert!(out.stdout.contains("] running"), "{}", out.stdout);

    let e = user.run(&["delete", "box"]).await.failed();
    assert!(e.contains("no terminal to ask on; pass --yes"), "{e}");
    user.run(&["show", "box"]).await.ok();
    let out = user.run(&["delete", "box", "--yes"]).await.ok();
    assert!(
        out.stdout.contains("Workspace box is deleted"),
        "{}",
        out.stdout
    );
    let e = user.run(&["show", "box"]).await.failed();
    assert!(e.contains("no workspace box"), "{e}");
    let e = user.run(&["start", "nothing-here"]).await.failed();
    assert!(
        e.contains("no workspace nothing-here") && e.contains("lumie list"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_ssh_is_idempotent_removable_and_read_by_openssh() {
    let (user, _) = signed_in("cora").await;
    for ws in ["one", "two"] {
        user.run(&["create", ws, "--no-wait"]).await.ok();
    }
    let ssh_dir = user.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let file = ssh_dir.join("config");
    let original = "Host *\n  ServerAliveInterval 30\n\nHost work\n  HostName 10.0.0.1\n";
    std::fs::write(&file, original).unwrap();

    let out = user.run(&["config-ssh", "--dry-run"]).await.ok();
    assert!(out.stdout.contains("+ Host lumie.one"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "a dry run writes nothing"
    );
    let out = user.run(&["config-ssh"]).await.ok();
    assert!(
        out.stdout.contains("+ Host lumie.one") && out.stdout.contains("+ Host lumie.two"),
        "{}",
        out.stdout
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.starts_with(original),
        "the user's config is kept: {written}"
    );
    let lumie = std::fs::canonicalize(lumie_binary()).unwrap();
    let config_dir = user.home.path().join(".config/lumie");
    assert!(
        written.contains(&format!(
            "Host lumie.one\n  ProxyCommand {} --config-dir {} ssh --stdio one\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            lumie.display(),
            std::fs::canonicalize(&config_dir).unwrap().display()
        )),
        "{written}"
    );
    // Again: nothing changes.
    let out = user.run(&["config-ssh"]).await.ok();
    assert!(
        out.stdout.contains("is up to date (2 lumie host(s))"),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    // Debian's OpenSSH client reads it as intended.
    let g = std::process::Command::new("ssh")
        .args(["-F"])
        .arg(&file)
        .args(["-G", "lumie.two"])
        .output()
        .expect("ssh (openssh-client) is installed: scripts/install-deps.sh");
    let g = String::from_utf8_lossy(&g.stdout);
    assert!(
        g.contains(&format!("proxycommand {} --config-dir", lumie.display())),
        "{g}"
    );
    assert!(g.contains("ssh --stdio two"), "{g}");
    assert!(g.contains("userknownhostsfile /dev/null"), "{g}");
    // A new workspace is added, the rest kept.
    user.run(&["create", "three", "--no-wait"]).await.ok();
    let out = user.run(&["config-ssh"]).await.ok();
    assert_eq!(
        out.stdout.lines().next(),
        Some("+ Host lumie.three"),
        "{}",
        out.stdout
    );
    // Removed: the file is the user's own again.
    let out = user.run(&["config-ssh", "--remove"]).await.ok();
    assert!(
        out.stdout.contains("Removed the lumie block"),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    let out = user.run(&["config-ssh", "--remove"]).await.ok();
    assert!(out.stdout.contains("nothing to remove"), "{}", out.stdout);
    // --ssh-config-file points elsewhere (created 0600).
    let other = user.home.path().join("elsewhere/config");
    user.run(&["config-ssh", "--ssh-config-file", other.to_str().unwrap()])
        .await
        .ok();
    let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_prints_the_app_url_and_opens_it() {
    let s = stack();
    let (mut user, _) = signed_in("otto").await;
    user.run(&["create", "web", "--no-wait"]).await.ok();
    let opened = user.home.path().join("opened");
    let browser = user.home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    user.env
        .push(("BROWSER".into(), browser.display().to_string()));
    let out = user.run(&["open", "web", "code-server"]).await.ok();
    let want = format!("{}/@otto/web/apps/code-server/", s.url);
    assert_eq!(out.stdout.trim(), want);
    // The browser is started, not waited for: wait for what it writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&opened).unwrap_or_default().trim() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the browser was not started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = user.run(&["open", "web", "--no-open"]).await.ok();
    assert_eq!(out.stdout.trim(), format!("{}/@otto/web", s.url));
    let e = user.run(&["open", "web", "nope"]).await.failed();
    assert!(
        e.contains("no app \"nope\"") && e.contains("code-server"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_auth_page_makes_a_token_by_post_from_its_own_page_only() {
    let s = stack();
    let token = member(&s.url, &s.admin_token, "cleo").await;
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Signed out: to the sign-in page, which comes back here.
    let r = http
        .get(format!("{}/cli-auth", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{r:?}");
    assert_eq!(r.headers()["location"], "/login?redirect=%2Fcli-auth");
    // Sign in through the dashboard's token form (a browser session cookie).
    let r = http
        .post(format!("{}/login", s.url))
        .header("Origin", &s.url)
        .form(&[("token", token.as_str()), ("redirect", "/cli-auth")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/cli-auth", "{r:?}");
    let count = || async {
        reqwest::Client::new()
            .get(format!("{}/api/v2/users/me/keys", s.url))
            .header("Coder-Session-Token", &token)
            .send()
            .await
            .unwrap()
            .json::<Vec<serde_json::Value>>()
            .await
            .unwrap()
            .len()
    };
    let before = count().await;
    let page = http
        .get(format!("{}/cli-auth", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("Create a token for the CLI"), "{body}");
    assert_eq!(count().await, before, "a GET makes no token");
    // A POST from elsewhere (or with no Origin) is refused.
    for origin in [Some("https://evil.example"), None] {
        let mut req = http.post(format!("{}/cli-auth", s.url));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        assert_eq!(req.send().await.unwrap().status(), 403, "{origin:?}");
    }
    assert_eq!(count().await, before);
    let r = http
        .post(format!("{}/cli-auth", s.url))
        .header("Origin", &s.url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let at = body.find("id=\"cli-token\"").expect("the token is shown");
    let value = &body[at..];
    let start = value.find("value=\"").unwrap() + 7;
    let cli_token = &value[start..start + value[start..].find('"').unwrap()];
    assert_eq!(count().await, before + 1);
    let user = User::new();
    let out = user
        .run(&["login", &s.url, "--token", cli_token])
        .await
        .ok();
    assert!(out.stdout.contains("as cleo"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_cli_binary_with_its_checksum() {
    let s = stack();
    let r = reqwest::get(format!("{}/bin/lumie-linux-amd64", s.url))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let sum = r.headers()["x-lumie-agent-sha256"]
        .to_str()
        .unwrap()
        .to_string();
    let body = r.bytes().await.unwrap();
    let local = std::fs::read(lumie_binary()).unwrap();
    assert_eq!(body.len(), local.len());
    assert_eq!(sum, hex::encode(Sha256::digest(&local)));
    let r = reqwest::get(format!("{}/bin/lumie-linux-riscv64", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no CLI binary lumie-linux-riscv64")
    );
}
