//! The server library's two error types, one per reader:
//! - [`StartupError`]: what an operator reads when the server (or the doctor) cannot start,
//!   printed as ONE line that names the setting, Secret or permission at fault and what to check;
//!   never an HTTP answer;
//! - [`Error`]: what goes wrong while serving: API errors carry a status code and a Coder-like
//!   JSON body, background tasks log them.
//!
//! The database being unreachable at run time (down, restarting, network) is a 503 naming the
//! database and what to check, answered within the pool's acquire timeout ([`crate::db`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the server library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed at run time.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A kube API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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

/// What a request answers while the database cannot be reached.
/// A pool timeout is also what an overloaded pool (every connection busy) gives, so it says so.
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable (no connection within the \
     acquire timeout: down, unreachable or overloaded): check that PostgreSQL is running and \
     reachable at the host/port in CODER_PG_CONNECTION_URL (Secret coder-db-secret), or with \
     the embedded SQLite that the data volume (LUMIE_DATA_DIR) is healthy; retry shortly";

/// Why the server (or the doctor) cannot start: one line for an operator.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
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
    Database(String),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The kube API cannot be reached or used at start.
    #[error("kubernetes: {0}")]
    Kube(String),
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
    /// Identity settings (OIDC, trusted proxy, access URL) that cannot work.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Something failed while starting that is not a setting (a first query, a first write).
    #[error(transparent)]
    Run(#[from] Error),
}

impl StartupError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StartupError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of a start-up step.
pub type StartupResult<T> = std::result::Result<T, StartupError>;

/// Seconds a client is told to wait before retrying while the database is unavailable.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

/// Result with the server [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is the database being unreachable (no connection within the acquire
    /// timeout, the connection failed or the pool is closed), not a statement that failed.
    pub fn is_database_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            )
        )
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            e if e.is_database_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
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
        if self.is_database_unavailable() {
            let mut response = (
                status,
                Json(ErrorBody {
                    message: DATABASE_UNAVAILABLE.to_string(),
                    detail: self.to_string(),
                }),
            )
                .into_response();
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(DATABASE_RETRY_AFTER_SECS),
            );
            return response;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_unreachable_is_a_503_naming_the_database_other_database_errors_500() {
        let cases: Vec<(&str, sqlx::Error, StatusCode)> = vec![
            (
                "pool timeout",
                sqlx::Error::PoolTimedOut,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                "connection refused",
                sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                "pool closed",
                sqlx::Error::PoolClosed,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                "no row",
                sqlx::Error::RowNotFound,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                "bad column",
                sqlx::Error::ColumnNotFound("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (name, e, want) in cases {
            let e = Error::from(e);
            assert_eq!(e.status(), want, "{name}");
            let response = e.into_response();
            assert_eq!(response.status(), want, "{name}");
            let retry = response.headers().get(axum::http::header::RETRY_AFTER);
            assert_eq!(
                retry.is_some(),
                want == StatusCode::SERVICE_UNAVAILABLE,
                "{name}: Retry-After only when unavailable"
            );
        }
        assert!(DATABASE_UNAVAILABLE.contains("CODER_PG_CONNECTION_URL"));
        assert!(DATABASE_UNAVAILABLE.contains(crate::config::DB_SECRET));
    }
}
