//! lumie-server: the lumie-coder control plane.
//!
//! - [`config`]: flags and environment → [`config::Config`]; [`preflight`]: start-up checks;
//! - [`db`]: the repository over PostgreSQL or SQLite; [`model`]: its records and states;
//! - [`caller`]: who is calling ([`caller::Principal`], pluggable authenticators);
//! - [`api`]: the HTTP router ([`rejections`]: framework errors in its JSON shape); [`distribution`]: agent binary and init script;
//!   [`app_proxy`]: the app proxy; [`agent_api`]: the agent's routes; [`agents`]: the agent table;
//!   [`startup_logs`]: startup-script output (stored per start, `GET …/logs`, followed live);
//!   [`sessions`]: terminal, SSH and TCP sessions into workspaces (WebSocket → agent);
//! - [`template`]: the workspace Secret, PVC and Pod; [`status`]: status derivation;
//! - [`spawner`]: kube actions (server-side apply, deletes); [`builds`]: the build executor;
//! - [`reconcile`]: watchers, status writes, and the pure plan (desired vs actual, orphans) it
//!   carries out; [`events`]: status changes and dirty marks ([`bus`]: carried to the other
//!   replicas over PostgreSQL `LISTEN/NOTIFY`); [`drift`]: the
//!   `dev-workspace` ServiceAccount/Service contract check;
//! - [`identity`]: OIDC login, roles, sessions, trusted proxy and Host/Origin checks;
//!   [`edge`]: identity wired in front of every route ([`edge::app`]: the router with the login
//!   routes and the edge middleware);
//! - [`policy_api`]: `GET`/`PUT /api/v2/policy`, the cluster `WorkspacePolicy` for admins;
//! - [`serve`]: start-up and the running server;
//! - [`state`]: the composition root handlers share; [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod agent_api;
pub mod agents;
pub mod api;
pub mod app_proxy;
pub mod builds;
pub mod bus;
pub mod caller;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod distribution;
pub mod drift;
pub mod edge;
pub mod error;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod policy_api;
pub mod preflight;
pub mod reconcile;
pub mod rejections;
pub mod serve;
pub mod sessions;
pub mod spawner;
pub mod startup_logs;
pub mod state;
pub mod status;
pub mod template;

pub use api::router;
pub use error::{Error, Result, StartupError, StartupResult};
pub mod doctor;
pub mod identity;
