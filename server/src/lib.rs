//! lumie-server: the lumie-coder control plane.
//!
//! - [`config`]: flags and environment → [`config::Config`];
//! - [`db`]: the repository over PostgreSQL or SQLite; [`model`]: its records and states;
//! - [`preflight`]: start-up checks of the kube API.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod error;
pub mod model;
pub mod preflight;

pub use error::{Error, Result};
