//! The command line: clap types with an environment variable on every flag, turned into the
//! plain [`Config`] the commands run with (tests build a `Config` directly).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::WorkspaceName;
use crate::credentials::default_config_dir;
use crate::error::{Error, Result};
use crate::output::Format;
use crate::port_forward::{Forward, parse_forward};
use crate::progress::parse_duration;

/// lumie: your lumie-coder workspaces from the terminal.
#[derive(Debug, Parser)]
#[command(name = "lumie", version = lumie_build_info::VERSION, about, long_about = None)]
pub struct Cli {
    /// The server (access) URL; overrides the one `lumie login` stored.
    #[arg(long, env = "LUMIE_URL", global = true)]
    pub url: Option<String>,
    /// A session (API) token; overrides the one `lumie login` stored.
    #[arg(
        long,
        env = "LUMIE_SESSION_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Where the login is stored [default: $XDG_CONFIG_HOME/lumie or ~/.config/lumie].
    #[arg(long, env = "LUMIE_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Sign in to a server: paste a token (or give --token), checked before it is stored.
    Login {
        /// The server URL (default: --url / LUMIE_URL).
        url: Option<String>,
        /// Do not try to open the token page in a browser.
        #[arg(long, env = "LUMIE_NO_OPEN")]
        no_open: bool,
    },
    /// Forget the stored login.
    Logout,
    /// Your workspaces.
    #[command(alias = "ls")]
    List {
        /// Every workspace you may see (admins: everyone's).
        #[arg(short, long, env = "LUMIE_LIST_ALL")]
        all: bool,
        /// Table or JSON.
        #[arg(short, long, env = "LUMIE_OUTPUT", value_enum, default_value = "table")]
        output: Format,
    },
    /// One workspace: status and why, agent, latest build, apps.
    Show {
        /// NAME or OWNER/NAME.
        workspace: String,
        /// Table or JSON.
        #[arg(short, long, env = "LUMIE_OUTPUT", value_enum, default_value = "table")]
        output: Format,
    },
    /// Create a workspace and wait until it runs.
    Create {
        /// NAME or OWNER/NAME.
        workspace: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a stopped workspace and wait until it runs.
    Start {
        /// NAME or OWNER/NAME.
        workspace: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a workspace (its home volume is kept) and wait until it is stopped.
    Stop {
        /// NAME or OWNER/NAME.
        workspace: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a workspace with its home volume; asks first unless --yes.
    Delete {
        /// NAME or OWNER/NAME.
        workspace: String,
        /// Do not ask.
        #[arg(short, long, env = "LUMIE_YES")]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print a workspace app's URL (or the workspace page's) and open it in a browser.
    Open {
        /// NAME or OWNER/NAME.
        workspace: String,
        /// The app's slug (tilt, code-server, agents); none: the workspace's dashboard page.
        app: Option<String>,
        /// Only print the URL.
        #[arg(long, env = "LUMIE_NO_OPEN")]
        no_open: bool,
    },
    /// A shell or a command in a workspace, over SSH through the server.
    Ssh {
        /// NAME or OWNER/NAME.
        workspace: String,
        /// Carry the raw SSH stream on stdin/stdout (OpenSSH ProxyCommand, see config-ssh).
        #[arg(long, env = "LUMIE_SSH_STDIO")]
        stdio: bool,
        /// The command to run (after `--`); none: the login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Add `Host lumie.WS` entries for your workspaces to your OpenSSH config.
    ConfigSsh {
        /// The OpenSSH config file [default: ~/.ssh/config].
        #[arg(long, env = "LUMIE_SSH_CONFIG_FILE")]
        ssh_config_file: Option<PathBuf>,
        /// Take the lumie block out instead.
        #[arg(long, env = "LUMIE_CONFIG_SSH_REMOVE")]
        remove: bool,
        /// Show what would change, write nothing.
        #[arg(long, env = "LUMIE_DRY_RUN")]
        dry_run: bool,
    },
    /// Forward local TCP ports to ports inside a workspace.
    PortForward {
        /// NAME or OWNER/NAME.
        workspace: String,
        /// LOCAL:REMOTE (or PORT for both), repeatable or comma-separated.
        #[arg(
            long = "tcp",
            env = "LUMIE_PORT_FORWARD_TCP",
            value_delimiter = ',',
            required = true
        )]
        tcp: Vec<String>,
    },
}

/// Waiting for a build.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Return once the server has the request.
    #[arg(long, env = "LUMIE_NO_WAIT")]
    pub no_wait: bool,
    /// Give up waiting after this long (90s, 10m, 1h; 0: never).
    #[arg(long, env = "LUMIE_WAIT_TIMEOUT", default_value = "15m")]
    pub timeout: String,
}

/// What a command waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// Whether to wait at all.
    pub wait: bool,
    /// How long at most (`None`: no limit).
    pub timeout: Option<Duration>,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// No subcommand: help and whether you are signed in.
    Help(String),
    /// `login`.
    Login {
        /// URL, when given.
        url: Option<String>,
        /// Open the browser.
        open: bool,
    },
    /// `logout`.
    Logout,
    /// `list`.
    List {
        /// Everyone's.
        all: bool,
        /// Format.
        output: Format,
    },
    /// `show`.
    Show {
        /// Which.
        workspace: WorkspaceName,
        /// Format.
        output: Format,
    },
    /// `create`.
    Create {
        /// Which.
        workspace: WorkspaceName,
        /// Waiting.
        wait: Wait,
    },
    /// `start`.
    Start {
        /// Which.
        workspace: WorkspaceName,
        /// Waiting.
        wait: Wait,
    },
    /// `stop`.
    Stop {
        /// Which.
        workspace: WorkspaceName,
        /// Waiting.
        wait: Wait,
    },
    /// `delete`.
    Delete {
        /// Which.
        workspace: WorkspaceName,
        /// Confirmed already.
        yes: bool,
        /// Waiting.
        wait: Wait,
    },
    /// `open`.
    Open {
        /// Which.
        workspace: WorkspaceName,
        /// App slug.
        app: Option<String>,
        /// Open the browser.
        open: bool,
    },
    /// `ssh`.
    Ssh {
        /// Which.
        workspace: WorkspaceName,
        /// ProxyCommand mode.
        stdio: bool,
        /// Command words.
        command: Vec<String>,
    },
    /// `config-ssh`.
    ConfigSsh {
        /// The file.
        file: PathBuf,
        /// Remove instead.
        remove: bool,
        /// Only show.
        dry_run: bool,
    },
    /// `port-forward`.
    PortForward {
        /// Which.
        workspace: WorkspaceName,
        /// Forwards.
        forwards: Vec<Forward>,
    },
}

/// Everything a command runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `--url`, overriding the stored one.
    pub url: Option<String>,
    /// `--token`, overriding the stored one.
    pub token: Option<String>,
    /// Where the login is stored.
    pub config_dir: PathBuf,
    /// What to do.
    pub command: Command,
}

impl Cli {
    /// The plain config, with defaults from `XDG_CONFIG_HOME` and `HOME`.
    pub fn into_config(self, xdg_config_home: Option<&str>, home: Option<&str>) -> Result<Config> {
        let config_dir = match self.config_dir {
            Some(d) => d,
            None => default_config_dir(xdg_config_home, home).ok_or_else(|| {
                Error::Usage("neither HOME nor XDG_CONFIG_HOME is set: pass --config-dir".into())
            })?,
        };
        let wait = |w: WaitArgs| -> Result<Wait> {
            let d =
                parse_duration(&w.timeout).map_err(|e| Error::Usage(format!("--timeout: {e}")))?;
            Ok(Wait {
                wait: !w.no_wait,
                timeout: (!d.is_zero()).then_some(d),
            })
        };
        let ws = |s: &str| WorkspaceName::parse(s);
        let command = match self.command {
            None => {
                use clap::CommandFactory;
                Command::Help(Cli::command().render_help().to_string())
            }
            Some(Cmd::Login { url, no_open }) => Command::Login {
                url: url.or(self.url.clone()),
                open: !no_open,
            },
            Some(Cmd::Logout) => Command::Logout,
            Some(Cmd::List { all, output }) => Command::List { all, output },
            Some(Cmd::Show { workspace, output }) => Command::Show {
                workspace: ws(&workspace)?,
                output,
            },
            Some(Cmd::Create { workspace, wait: w }) => Command::Create {
                workspace: ws(&workspace)?,
                wait: wait(w)?,
            },
            Some(Cmd::Start { workspace, wait: w }) => Command::Start {
                workspace: ws(&workspace)?,
                wait: wait(w)?,
            },
            Some(Cmd::Stop { workspace, wait: w }) => Command::Stop {
                workspace: ws(&workspace)?,
                wait: wait(w)?,
            },
            Some(Cmd::Delete {
                workspace,
                yes,
                wait: w,
            }) => Command::Delete {
                workspace: ws(&workspace)?,
                yes,
                wait: wait(w)?,
            },
            Some(Cmd::Open {
                workspace,
                app,
                no_open,
            }) => Command::Open {
                workspace: ws(&workspace)?,
                app,
                open: !no_open,
            },
            Some(Cmd::Ssh {
                workspace,
                stdio,
                command,
            }) => {
                if stdio && !command.is_empty() {
                    return Err(Error::Usage(
                        "--stdio carries the SSH stream itself: it takes no command".into(),
                    ));
                }
                Command::Ssh {
                    workspace: ws(&workspace)?,
                    stdio,
                    command,
                }
            }
            Some(Cmd::ConfigSsh {
                ssh_config_file,
                remove,
                dry_run,
            }) => Command::ConfigSsh {
                file: match ssh_config_file {
                    Some(f) => f,
                    None => PathBuf::from(home.filter(|h| !h.is_empty()).ok_or_else(|| {
                        Error::Usage("HOME is not set: pass --ssh-config-file".into())
                    })?)
                    .join(".ssh/config"),
                },
                remove,
                dry_run,
            },
            Some(Cmd::PortForward { workspace, tcp }) => Command::PortForward {
                workspace: ws(&workspace)?,
                forwards: tcp
                    .iter()
                    .map(|s| parse_forward(s))
                    .collect::<Result<Vec<_>>>()?,
            },
        };
        Ok(Config {
            url: self.url,
            token: self.token,
            config_dir,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("lumie").chain(args.iter().copied()))
            .map_err(|e| Error::Usage(e.to_string()))?;
        cli.into_config(None, Some("/home/a"))
    }

    #[test]
    fn command_lines_become_configs() {
        let c = parse(&["ssh", "bob/dev", "--", "sh", "-c", "echo hi"]).unwrap();
        assert_eq!(
            c.command,
            Command::Ssh {
                workspace: WorkspaceName::parse("bob/dev").unwrap(),
                stdio: false,
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            }
        );
        assert_eq!(c.config_dir, PathBuf::from("/home/a/.config/lumie"));
        let c = parse(&[
            "--url",
            "http://x",
            "port-forward",
            "dev",
            "--tcp",
            "8080:80,9000",
            "--tcp",
            "5",
        ])
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://x"));
        let Command::PortForward { forwards, .. } = c.command else {
            panic!()
        };
        assert_eq!(
            forwards,
            [
                Forward {
                    local: 8080,
                    remote: 80
                },
                Forward {
                    local: 9000,
                    remote: 9000
                },
                Forward {
                    local: 5,
                    remote: 5
                }
            ]
        );
        let c = parse(&["create", "dev", "--no-wait", "--timeout", "0"]).unwrap();
        assert_eq!(
            c.command,
            Command::Create {
                workspace: WorkspaceName::parse("dev").unwrap(),
                wait: Wait {
                    wait: false,
                    timeout: None
                }
            }
        );
        let c = parse(&["config-ssh"]).unwrap();
        assert!(
            matches!(c.command, Command::ConfigSsh { ref file, .. } if file == &PathBuf::from("/home/a/.ssh/config"))
        );
        let c = parse(&["login", "https://coder.example", "--no-open"]).unwrap();
        assert_eq!(
            c.command,
            Command::Login {
                url: Some("https://coder.example".into()),
                open: false
            }
        );
        assert!(matches!(parse(&[]).unwrap().command, Command::Help(h) if h.contains("login")));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["ssh", "dev", "--stdio", "--", "ls"][..],
            &["show", "a/b/c"],
            &["port-forward", "dev"],
            &["port-forward", "dev", "--tcp", "x"],
            &["create", "dev", "--timeout", "5 days"],
            &["list", "--output", "yaml"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_env().is_some(), "{path} --{id} has no env");
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "lumie");
    }
}
