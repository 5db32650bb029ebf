//! `lumie`, the developer CLI of lumie-coder: sign in to the control plane, manage your
//! workspaces, and get into them (SSH, OpenSSH config, port forwarding) through the server's one
//! port; nothing in the cluster has to be reachable but the server.
//!
//! - [`args`]: the command line (clap, an environment variable on every flag) → [`Config`];
//! - [`credentials`]: the stored login (mode 0600) and URL rules;
//! - [`client`]: the REST calls and the workspace watch; [`wire`]: the JSON shapes read;
//! - [`output`]: table and JSON from the same rows; [`progress`]: waiting for a build;
//! - [`tunnel`]: the WebSocket session routes and the byte pump;
//! - [`ssh`]: the SSH client over a tunnel; [`port_forward`]: local listeners;
//! - [`ssh_config`]: the `~/.ssh/config` block; [`terminal`]: TTY, raw mode, browser;
//! - [`commands`]: each subcommand, wiring the above.
#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod commands;
pub mod credentials;
pub mod error;
pub mod output;
pub mod port_forward;
pub mod progress;
pub mod ssh;
pub mod ssh_config;
pub mod terminal;
pub mod tunnel;
pub mod wire;

pub use args::{Cli, Command, Config};
pub use error::{Error, Result};

/// Runs one command; the process's exit status (the remote command's for `ssh`).
pub async fn run(config: Config) -> Result<u8> {
    commands::run(config).await
}
