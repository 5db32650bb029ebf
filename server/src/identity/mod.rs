//! Identity and access at the edge: who the caller is and whether the request came the way it
//! should (through Teleport, to the access URL).
//!
//! The rest of the server plugs it in through one router over the database ([`crate::db::Db`]
//! keeps users and sessions); requests after the login are authenticated by [`crate::caller`].
//! - [`oidc`]: the OpenID Connect client (discovery, JWKS cache with refresh on an unknown `kid`,
//!   authorization-code flow with PKCE, `state` and `nonce`, ID token verification) on the
//!   `openidconnect` crate;
//! - [`roles`]: claims → [`roles::Role`] and the user's profile (pure);
//! - [`sessions`]: opaque session tokens stored hashed, the session cookie;
//! - [`trusted_proxy`]: the access URL, trusted proxy headers → client IP, `Host` and WebSocket `Origin`
//!   checks (pure), plus the axum middleware that applies them;
//! - [`routes`]: `GET /api/v2/users/oidc/login`, `GET /api/v2/users/oidc/callback`,
//!   `POST /api/v2/users/logout`;
//! - [`IdentityError`]: every way identity can fail, each worded for the person who must act.

pub mod oidc;
pub mod roles;
pub mod routes;
pub mod sessions;
pub mod trusted_proxy;

mod error;

pub use error::IdentityError;
pub use oidc::{OidcClient, OidcSettings};
pub use roles::{Role, RoleMapping, UserProfile};
pub use routes::{IdentityOptions, IdentityState, UserRecord, routes};
pub use sessions::{CookieSettings, SessionRecord, SessionToken};
pub use trusted_proxy::{AccessUrl, ClientIp, HostGuard, TrustedProxy};
