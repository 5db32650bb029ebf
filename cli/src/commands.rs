//! Each subcommand: which calls it makes, what it prints (results on stdout, questions and
//! warnings on stderr), and its exit status.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::{Command, Config, Wait};
use crate::client::{Client, WorkspaceName};
use crate::credentials::{self, Credentials, normalize_url};
use crate::error::{Error, Result};
use crate::output::{self, WorkspaceDetail, WorkspaceRow};
use crate::progress::{self, Goal, Step};
use crate::tunnel::{self, Route};
use crate::wire::{Build, Workspace};
use crate::{port_forward, ssh, ssh_config, terminal};

/// The page of the dashboard that issues a token for the CLI.
pub const CLI_AUTH_PATH: &str = "/cli-auth";

/// The credentials a command uses: `--url`/`--token` over the stored login.
pub fn credentials(config: &Config) -> Result<Credentials> {
    let stored = credentials::load(&config.config_dir)?;
    let url = config.url.as_deref().map(normalize_url).transpose()?;
    match (url, config.token.clone(), stored) {
        (Some(url), Some(token), _) => Ok(Credentials {
            url,
            token,
            username: String::new(),
        }),
        (Some(url), None, Some(s)) if s.url == url => Ok(s),
        (Some(url), None, _) => Err(Error::IncompleteCredentials(format!(
            "not signed in to {url}: run `lumie login {url}` (or set LUMIE_SESSION_TOKEN as well)"
        ))),
        (None, Some(token), Some(s)) => Ok(Credentials {
            token,
            username: String::new(),
            ..s
        }),
        (None, Some(_), None) => Err(Error::IncompleteCredentials(
            "a session token is set (--token or LUMIE_SESSION_TOKEN) but no server: set LUMIE_URL \
             as well, or run `lumie login <url>`"
                .into(),
        )),
        (None, None, Some(s)) => Ok(s),
        (None, None, None) => Err(Error::NotSignedIn),
    }
}

/// Runs a parsed command.
pub async fn run(config: Config) -> Result<u8> {
    match config.command.clone() {
        Command::Help(help) => {
            print!("{help}");
            match credentials(&config) {
                Ok(c) => println!("\nSigned in to {}.", c.url),
                Err(e) => println!("\n{e}"),
            }
            Ok(0)
        }
        Command::Login { url, open } => login(&config, url, open).await,
        Command::Logout => logout(&config),
        Command::ConfigSsh {
            file,
            remove: true,
            dry_run,
        } => config_ssh(&config, None, &file, dry_run).await,
        command => {
            let client = Client::new(credentials(&config)?)?;
            match command {
                Command::List { all, output } => {
                    let rows: Vec<WorkspaceRow> = client
                        .workspaces(all)
                        .await?
                        .iter()
                        .map(WorkspaceRow::of)
                        .collect();
                    print!("{}", output::render_list(&rows, output));
                    Ok(0)
                }
                Command::Show { workspace, output } => {
                    let ws = client.workspace(&workspace).await?;
                    print!(
                        "{}",
                        output::render_detail(&WorkspaceDetail::of(&ws), output)
                    );
                    Ok(0)
                }
                Command::Create { workspace, wait } => create(&client, &workspace, &wait).await,
                Command::Start { workspace, wait } => {
                    transition(&client, &workspace, "start", Goal::Running, &wait).await
                }
                Command::Stop { workspace, wait } => {
                    transition(&client, &workspace, "stop", Goal::Stopped, &wait).await
                }
                Command::Delete {
                    workspace,
                    yes,
                    wait,
                } => delete(&client, &workspace, yes, &wait).await,
                Command::Open {
                    workspace,
                    app,
                    open,
                } => open_app(&client, &workspace, app.as_deref(), open).await,
                Command::Ssh {
                    workspace,
                    stdio,
                    command,
                } => ssh_command(&client, &workspace, stdio, &command).await,
                Command::ConfigSsh {
                    file,
                    remove: false,
                    dry_run,
                } => config_ssh(&config, Some(&client), &file, dry_run).await,
                Command::PortForward {
                    workspace,
                    forwards,
                } => port_forward_command(&client, &workspace, &forwards).await,
                Command::Help(_)
                | Command::Login { .. }
                | Command::Logout
                | Command::ConfigSsh { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

async fn login(config: &Config, url: Option<String>, open: bool) -> Result<u8> {
    let url = normalize_url(&url.ok_or_else(|| {
        Error::Usage("which server? give its URL: `lumie login https://coder.example.com`".into())
    })?)?;
    let token = match config.token.clone() {
        Some(t) => t,
        None => {
            if terminal::stdin_is_tty() {
                let page = format!("{url}{CLI_AUTH_PATH}");
                println!("Open {page} in your browser, sign in, and paste the token it shows.");
                if open && terminal::open_browser(&page) {
                    println!("(Opening it in your browser.)");
                }
                terminal::read_secret("Token: ")?
            } else {
                // A pipe: `lumie login URL < token-file`.
                terminal::read_secret("")?
            }
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Error::Usage(format!(
            "no token given: paste the one {url}{CLI_AUTH_PATH} shows, or pass --token"
        )));
    }
    let client = Client::new(Credentials {
        url: url.clone(),
        token: token.clone(),
        username: String::new(),
    })?;
    let me = client.me().await.map_err(|e| match e {
        Error::Unauthorized { url, message } => Error::Usage(format!(
            "{url} does not accept that token ({message}): get a new one at {url}{CLI_AUTH_PATH}"
        )),
        e => e,
    })?;
    let path = credentials::save(
        &config.config_dir,
        &Credentials {
            url: url.clone(),
            token,
            username: me.username.clone(),
        },
    )?;
    println!(
        "Signed in to {url} as {}{}. The login is stored in {}.",
        me.username,
        if me.is_admin { " (admin)" } else { "" },
        path.display()
    );
    Ok(0)
}

fn logout(config: &Config) -> Result<u8> {
    let stored = credentials::load(&config.config_dir)?;
    if credentials::remove(&config.config_dir)? {
        let url = stored.map(|c| c.url).unwrap_or_default();
        println!(
            "Signed out of {url}. The token itself works until it expires or you revoke it at \
             {url}/settings/tokens."
        );
    } else {
        println!("Not signed in; nothing to forget.");
    }
    Ok(0)
}

async fn create(client: &Client, name: &WorkspaceName, wait: &Wait) -> Result<u8> {
    println!("Creating workspace {name}…");
    let ws = client.create(name).await?;
    let build = ws.latest_build.clone().ok_or_else(|| Error::Protocol {
        what: format!("creating {name}"),
        cause: "the new workspace has no build".into(),
    })?;
    finish(client, name, &ws.id, &build, Goal::Running, wait).await
}

async fn transition(
    client: &Client,
    name: &WorkspaceName,
    transition: &str,
    goal: Goal,
    wait: &Wait,
) -> Result<u8> {
    let ws = client.workspace(name).await?;
    let verb = match goal {
        Goal::Running => "Starting",
        Goal::Stopped => "Stopping",
        Goal::Deleted => "Deleting",
    };
    println!("{verb} workspace {name}…");
    let build = build_when_free(client, &ws, name, transition, wait).await?;
    finish(client, name, &ws.id, &build, goal, wait).await
}

/// Asks for a build; while another one is in flight (the server answers 409 "in progress"),
/// waits for it and asks again, within the wait's limit (not at all with `--no-wait`).
async fn build_when_free(
    client: &Client,
    ws: &Workspace,
    name: &WorkspaceName,
    transition: &str,
    wait: &Wait,
) -> Result<Build> {
    let deadline = wait.timeout.map(|t| Instant::now() + t);
    let mut said = false;
    loop {
        match client.build(ws, name, transition).await {
            Err(Error::Api {
                status: 409,
                message,
                ..
            }) if wait.wait
                && message.contains("in progress")
                && deadline.is_none_or(|d| Instant::now() < d) =>
            {
                if !said {
                    println!("Waiting for the build in progress to finish…");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

async fn delete(client: &Client, name: &WorkspaceName, yes: bool, wait: &Wait) -> Result<u8> {
    let ws = client.workspace(name).await?;
    if !yes {
        if !terminal::stdin_is_tty() {
            return Err(Error::NotConfirmed(format!(
                "refusing to delete {name} without a confirmation: there is no terminal to ask \
                 on; pass --yes (LUMIE_YES=1) to delete it and its home volume"
            )));
        }
        let q = format!(
            "Delete workspace {}/{} and its home volume (every file in it)?",
            ws.owner_name, ws.name
        );
        if !terminal::confirm(&q)? {
            return Err(Error::NotConfirmed(format!("{name} was not deleted")));
        }
    }
    println!("Deleting workspace {name}…");
    let build = build_when_free(client, &ws, name, "delete", wait).await?;
    finish(client, name, &ws.id, &build, Goal::Deleted, wait).await
}

/// Waits (or not) and says where the workspace is.
async fn finish(
    client: &Client,
    name: &WorkspaceName,
    id: &str,
    build: &Build,
    goal: Goal,
    wait: &Wait,
) -> Result<u8> {
    if !wait.wait {
        println!(
            "The server has it (build #{} {}): `lumie show {name}` says where it is.",
            build.build_number, build.transition
        );
        return Ok(0);
    }
    wait_for(client, name, id, build, goal, wait.timeout).await?;
    match goal {
        Goal::Running => println!(
            "Workspace {name} is running: `lumie ssh {name}` for a shell, `lumie open {name}` for \
             its apps."
        ),
        Goal::Stopped => println!(
            "Workspace {name} is stopped; its home volume is kept. `lumie start {name}` starts it \
             again."
        ),
        Goal::Deleted => println!("Workspace {name} is deleted."),
    }
    Ok(0)
}

/// Follows the workspace's watch, printing a line per change, until the goal or a failure.
async fn wait_for(
    client: &Client,
    name: &WorkspaceName,
    id: &str,
    build: &Build,
    goal: Goal,
    timeout: Option<Duration>,
) -> Result<()> {
    let started = Instant::now();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last: Option<(String, String)> = None;
    let too_long = |last: &Option<(String, String)>| {
        let (status, reason) = last.clone().unwrap_or_default();
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        Error::Wait(format!(
            "{name} is still {status}{reason} after {}s; the server goes on with it: `lumie show \
             {name}` says where it is",
            started.elapsed().as_secs()
        ))
    };
    loop {
        let mut watch = match client.watch(id).await {
            Ok(w) => w,
            Err(Error::Api { status: 404, .. }) if goal == Goal::Deleted => return Ok(()),
            Err(e) => return Err(e),
        };
        loop {
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, watch.next())
                    .await
                    .map_err(|_| too_long(&last))?,
                None => watch.next().await,
            }?;
            let Some(ws) = next else { break };
            if let Some(line) = progress::line(last.as_ref(), &ws, started.elapsed()) {
                println!("{line}");
            }
            last = Some((ws.status.clone(), ws.status_reason.clone()));
            match progress::step(goal, &build.id, build.build_number, &ws) {
                Step::Done => return Ok(()),
                Step::Failed(why) => return Err(Error::Wait(format!("{name}: {why}"))),
                Step::Wait => {}
            }
        }
        // The stream ended (a server restart, a proxy's timeout): look again, then re-watch.
        if goal == Goal::Deleted && client.workspace_by_id(id).await?.is_none() {
            return Ok(());
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(too_long(&last));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A workspace whose status means nothing inside it can be reached.
fn not_running(name: &WorkspaceName, ws: &Workspace) -> Option<Error> {
    matches!(
        ws.status.as_str(),
        "stopped" | "stopping" | "deleting" | "deleted"
    )
    .then(|| Error::WorkspaceStopped {
        name: name.to_string(),
        message: format!("it is {}", ws.status),
    })
}

async fn open_app(
    client: &Client,
    name: &WorkspaceName,
    app: Option<&str>,
    open: bool,
) -> Result<u8> {
    let ws = client.workspace(name).await?;
    let url = match app {
        None => format!(
            "{}/@{}/{}",
            client.credentials().url,
            ws.owner_name,
            ws.name
        ),
        Some(slug) => match ws.apps.iter().find(|a| a.slug == slug) {
            Some(a) => a.url.clone(),
            None => {
                let names: Vec<&str> = ws.apps.iter().map(|a| a.slug.as_str()).collect();
                return Err(Error::Usage(format!(
                    "{name} has no app {slug:?}; its apps: {}",
                    names.join(", ")
                )));
            }
        },
    };
    if ws.status != "running" && app.is_some() {
        eprintln!(
            "note: {name} is {}: its apps answer once it runs (`lumie start {name}`)",
            ws.status
        );
    }
    println!("{url}");
    if open && !terminal::open_browser(&url) {
        eprintln!("(No browser could be started: open the URL yourself.)");
    }
    Ok(0)
}

async fn ssh_command(
    client: &Client,
    name: &WorkspaceName,
    stdio: bool,
    command: &[String],
) -> Result<u8> {
    let ws = client.workspace(name).await?;
    if let Some(e) = not_running(name, &ws) {
        return Err(e);
    }
    let shown = name.to_string();
    let tunnel = tunnel::open(client.credentials(), &shown, &ws.id, Route::Ssh).await?;
    if stdio {
        ssh::stdio(tunnel).await?;
        return Ok(0);
    }
    let handle = ssh::connect(tunnel, &shown, &ws.owner_name).await?;
    ssh::run(handle, &shown, ssh::mode(command, terminal::stdin_is_tty())).await
}

async fn port_forward_command(
    client: &Client,
    name: &WorkspaceName,
    forwards: &[port_forward::Forward],
) -> Result<u8> {
    let ws = client.workspace(name).await?;
    if let Some(e) = not_running(name, &ws) {
        return Err(e);
    }
    let listeners = port_forward::bind(forwards).await?;
    for (f, l) in &listeners {
        let local = l
            .local_addr()
            .map_err(Error::io("reading the listening address"))?;
        println!("Forwarding {local} → {name}:{}", f.remote);
    }
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        () = port_forward::serve(client.credentials().clone(), name.to_string(), ws.id.clone(), listeners) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        }
    })
}

async fn config_ssh(
    config: &Config,
    client: Option<&Client>,
    file: &Path,
    dry_run: bool,
) -> Result<u8> {
    let text = ssh_config::read(file)?;
    let bad = |e: String| Error::Usage(format!("{}: {e}", file.display()));
    let (_, old, _) = ssh_config::split(&text).map_err(bad)?;
    let old = old.map(str::to_string);
    let block = match client {
        None => None,
        Some(client) => {
            let me = client.me().await?;
            let names: Vec<String> = client
                .workspaces(false)
                .await?
                .into_iter()
                .filter(|w| w.owner_name == me.username && w.status != "deleted")
                .map(|w| w.name)
                .collect();
            let exe = std::env::current_exe().map_err(Error::io("locating the lumie binary"))?;
            Some(ssh_config::render_block(
                &absolute(&exe),
                &absolute(&config.config_dir),
                &names,
            ))
        }
    };
    let new_text = ssh_config::apply(&text, block.as_deref()).map_err(bad)?;
    if new_text == text {
        match &block {
            Some(b) => println!(
                "{} is up to date ({} lumie host(s)).",
                file.display(),
                ssh_config::hosts(b).len()
            ),
            None => println!("{} has no lumie block; nothing to remove.", file.display()),
        }
        return Ok(0);
    }
    for line in ssh_config::summary(old.as_deref(), block.as_deref()) {
        println!("{line}");
    }
    if dry_run {
        println!("(Dry run: {} not written.)", file.display());
        return Ok(0);
    }
    let written = ssh_config::write(file, &new_text)?;
    match &block {
        Some(b) => {
            let hosts = ssh_config::hosts(b);
            println!(
                "Wrote {} host{} to {}{}",
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" },
                written.display(),
                match hosts.first() {
                    Some(h) => format!(": `ssh {h}` gets you in."),
                    None => ".".into(),
                }
            );
        }
        None => println!("Removed the lumie block from {}.", written.display()),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, url: Option<&str>, token: Option<&str>) -> Config {
        Config {
            url: url.map(String::from),
            token: token.map(String::from),
            config_dir: dir.to_path_buf(),
            command: Command::Logout,
        }
    }

    #[test]
    fn flags_override_the_stored_login() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none");
        let e = credentials(&config(&none, None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run `lumie login <url>`"), "{e}");
        let e = credentials(&config(&none, Some("http://h:1"), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lumie login http://h:1"), "{e}");
        let e = credentials(&config(&none, None, Some("t")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LUMIE_URL"), "{e}");
        let both = credentials(&config(&none, Some("http://h:1/"), Some("t"))).unwrap();
        assert_eq!(
            (both.url.as_str(), both.token.as_str()),
            ("http://h:1", "t")
        );

        let stored = dir.path().join("stored");
        credentials::save(
            &stored,
            &Credentials {
                url: "https://a.example".into(),
                token: "s".into(),
                username: "alice".into(),
            },
        )
        .unwrap();
        assert_eq!(
            credentials(&config(&stored, None, None)).unwrap().token,
            "s"
        );
        assert_eq!(
            credentials(&config(&stored, None, Some("t")))
                .unwrap()
                .token,
            "t"
        );
        assert_eq!(
            credentials(&config(&stored, Some("https://a.example/"), None))
                .unwrap()
                .token,
            "s",
            "the stored token goes with its own URL"
        );
        assert!(credentials(&config(&stored, Some("https://b.example"), None)).is_err());
    }
}
