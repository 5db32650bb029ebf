//! lumie-webhook: the mutating and validating admission webhook that guards `lumie-dev`.
//!
//! Pure logic over contract types ([`policy`], [`mutate`], [`validate`], [`isolation`],
//! [`review`]) is kept apart from I/O at the edges ([`server`], [`tls`], [`watch`], [`cli`],
//! [`check`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod check;
pub mod cli;
pub mod client;
pub mod error;
pub mod isolation;
pub mod metrics;
pub mod mutate;
pub mod podview;
pub mod policy;
pub mod policy_file;
pub mod review;
pub mod server;
pub mod tls;
pub mod validate;
pub mod watch;

pub use error::{Error, Result};
