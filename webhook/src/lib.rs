//! lumie-webhook: the mutating and validating admission webhook that guards `lumie-dev`.
//!
//! Pure logic over contract types ([`policy`], [`mutate`], [`validate`], [`review`]) is kept
//! apart from I/O at the edges ([`server`], [`tls`], [`watch`], [`cli`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod error;
pub mod metrics;
pub mod mutate;
pub mod policy;
pub mod review;
pub mod validate;

pub use error::{Error, Result};
