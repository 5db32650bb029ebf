//! The CLI's one error type: every variant's message says what failed and, where there is one,
//! what to do next (`run lumie login <url>`, `run lumie start WS`), because it is printed as is.

use std::path::PathBuf;

/// Everything that can go wrong in a `lumie` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No stored login and no `--url`/`--token`.
    #[error("not signed in: run `lumie login <url>` (or set LUMIE_URL and LUMIE_SESSION_TOKEN)")]
    NotSignedIn,
    /// A URL without a token or the other way round.
    #[error("{0}")]
    IncompleteCredentials(String),
    /// The server could not be reached at all.
    #[error(
        "cannot reach the lumie server at {url}: {cause}; check the URL and your network \
         (`lumie login <url>` changes the stored one)"
    )]
    Unreachable {
        /// The server URL.
        url: String,
        /// The transport's own words.
        cause: String,
    },
    /// The server refused the token.
    #[error(
        "the server at {url} refused the session token ({message}): run `lumie login {url}` again"
    )]
    Unauthorized {
        /// The server URL.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The workspace does not exist or is not the caller's.
    #[error("no workspace {name}: {message} (`lumie list` shows yours)")]
    NoSuchWorkspace {
        /// As typed.
        name: String,
        /// The server's message.
        message: String,
    },
    /// The workspace is stopped, so nothing inside it can be reached.
    #[error("workspace {name} is not running ({message}): run `lumie start {name}`")]
    WorkspaceStopped {
        /// As typed.
        name: String,
        /// The server's message.
        message: String,
    },
    /// The workspace runs but its agent is not connected.
    #[error(
        "workspace {name}'s agent is not connected ({message}): wait until `lumie show {name}` \
         says running, or restart it with `lumie stop {name}` and `lumie start {name}`"
    )]
    AgentNotConnected {
        /// As typed.
        name: String,
        /// The server's message.
        message: String,
    },
    /// Any other answer the server gave: its status and its own sentence.
    #[error("{what}: the server answered {status}: {message}")]
    Api {
        /// What was being done.
        what: String,
        /// HTTP status.
        status: u16,
        /// The server's message (its JSON `message`, or the body).
        message: String,
    },
    /// The server answered something that is not what its API returns.
    #[error("{what}: unexpected answer from the server: {cause}")]
    Protocol {
        /// What was being done.
        what: String,
        /// What was wrong with it.
        cause: String,
    },
    /// A command-line value that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A destructive command without a confirmation.
    #[error("{0}")]
    NotConfirmed(String),
    /// Waiting for a workspace ended badly (failed, or took too long).
    #[error("{0}")]
    Wait(String),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done (`reading`, `writing`…).
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Other local I/O (terminal, listening socket, standard streams).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The SSH session through the tunnel failed.
    #[error("ssh to {name}: {cause}")]
    Ssh {
        /// The workspace.
        name: String,
        /// What went wrong.
        cause: String,
    },
}

impl Error {
    /// An [`Error::Io`] with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// An [`Error::File`] for `path`.
    pub fn file(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::File { what, path, source }
    }
}

/// Result with the CLI [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
