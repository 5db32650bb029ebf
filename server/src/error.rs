//! The server library's one error type, and how each variant reads in a log line and an HTTP answer.
//!
//! Start-up errors are written to be printed as ONE line that names the setting or Secret at
//! fault and what to check; API errors carry a status code and a Coder-like JSON body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the server library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required setting is missing.
    #[error("missing setting {setting}: {hint}")]
    MissingSetting {
        /// Environment variable (and flag).
        setting: &'static str,
        /// What to put there.
        hint: &'static str,
    },
    /// A setting has a value that cannot work.
    #[error("invalid setting {setting}: {message}")]
    InvalidSetting {
        /// Environment variable.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The database cannot be reached or used at start.
    #[error("database: {0}")]
    DatabaseStartup(String),
    /// The database failed at run time.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The kube API cannot be reached or used at start.
    #[error("kubernetes: {0}")]
    KubeStartup(String),
    /// A kube API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The workspace template config is unusable.
    #[error("template {path}: {message}")]
    Template {
        /// File (or `built-in`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// No credentials, or unknown ones.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The thing asked for does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state (duplicate name, build in progress).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A dependency the request needs is not available (for example no kube client).
    #[error("{0}")]
    Unavailable(String),
    /// A broken invariant in the server's own data (a stored row that cannot be what it is):
    /// never the caller's fault, so never a 4xx.
    #[error("internal error: {0}")]
    Internal(String),
    /// Identity and access (OIDC settings and login, sessions, Host/Origin checks).
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// Result with the server [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Identity(e) => e.status(),
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Coder's error body: `{"message": …, "detail": …}`.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct ErrorBody {
    /// Human message.
    pub message: String,
    /// More detail, when any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        // Internal errors keep their cause in `detail`; a 503 names what is unavailable.
        let hidden = status.is_server_error() && !matches!(self, Error::Unavailable(_));
        let message = if hidden {
            "internal error".to_string()
        } else {
            self.to_string()
        };
        let detail = if hidden {
            self.to_string()
        } else {
            String::new()
        };
        (status, Json(ErrorBody { message, detail })).into_response()
    }
}
