//! The one error type at the library boundary.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::certs::CertError;

/// What can go wrong in lumie-webhook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The AdmissionReview could not be read (HTTP 400, CLI exit 2).
    #[error("bad AdmissionReview: {0}")]
    BadRequest(String),
    /// A policy file or object that cannot be put in force.
    #[error("WorkspacePolicy {name:?} is invalid: {}", problems.join("; "))]
    InvalidPolicy {
        /// Object or file name.
        name: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A file that could not be parsed (policy, manifest, certificate).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding a listening socket.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS configuration (certificate and key).
    #[error("TLS: {0}")]
    Tls(String),
    /// Generating certificates.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Talking to the Kubernetes API.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
