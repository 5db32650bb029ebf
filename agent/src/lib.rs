//! lumie-agent: the process that turns a scheduled workspace pod into a usable workspace.
//!
//! It reports to the control plane (heartbeats with lifecycle, app health and resource stats),
//! checks the workspace apps from the contract (Tilt, code-server, agents UI), forwards their
//! ports from the pod IP to localhost, and runs the template's startup and shutdown scripts
//! (which start the apps), shipping their output to the control plane. Modules:
//! - [`config`]: command line and the plain [`Config`];
//! - [`lifecycle`]: the lifecycle state machine (pure);
//! - [`scripts`]: the template's startup and shutdown scripts (decisions pure, plumbing thin);
//! - [`logs`]: their output, bounded, batched and shipped to the control plane;
//! - [`health`]: failure thresholds (pure) and the app checks;
//! - [`backoff`]: retry and schedule jitter (pure);
//! - [`heartbeat`]: the heartbeat client and loop;
//! - [`stats`]: resource usage;
//! - [`forward`]: port forwarding;
//! - [`session`]: terminal, SSH and TCP sessions opened by the control plane with a ticket;
//! - [`agent`]: wiring it together and the shutdown sequence ([`run`]).

pub mod agent;
pub mod backoff;
pub mod config;
pub mod forward;
pub mod health;
pub mod heartbeat;
pub mod lifecycle;
pub mod logs;
pub mod scripts;
pub mod session;
pub mod stats;

use std::path::PathBuf;

pub use agent::run;
pub use config::{Cli, Config};

/// The agent's version, as `--version` prints it and heartbeats carry it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What can go wrong at the library boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The CA bundle cannot be read.
    #[error("reading CA bundle {path}: {source}")]
    CaBundle {
        /// The bundle's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file cannot be read.
    #[error("reading the agent token file {path}: {source}")]
    Token {
        /// The file's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client cannot be built.
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The control plane did not answer (DNS, connect, TLS, timeout).
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// The control plane answered with an error status.
    #[error("control plane answered HTTP {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The control plane's answer is not a heartbeat response.
    #[error("control plane answer is not a heartbeat response: {0}")]
    BadAnswer(String),
}

pub(crate) use lumie_contract::diagnostics::error_chain;
