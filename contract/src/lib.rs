//! The workspace pod contract of lumie-coder, as types and constants.
//!
//! This crate is the document of the contract: every other crate depends on it and it depends on
//! none of them. It does no I/O. What it holds:
//! - [`policy`]: the `WorkspacePolicy` custom resource and the default policy (the contract itself);
//! - [`naming`]: Kubernetes object names for a workspace, validated and length-safe;
//! - [`labels`]: the label keys every workspace object carries;
//! - [`apps`]: the workspace apps (Tilt, code-server, agents UI) and their ports;
//! - [`workspace`]: the fixed parts of the workspace pod (namespace, containers, home volume);
//! - [`service`]: the port contract of the stable `dev-workspace` Service, as one rule;
//! - [`agent_api`]: the messages between the agent and the control plane;
//! - [`sessions`]: terminal, SSH and TCP sessions from the control plane to the agent;
//! - [`diagnostics`]: how errors are written for operators (the cause chain on one line);
//! - [`wire`]: enums that travel as strings, declared one way ([`wire_enum!`]).
#![deny(missing_docs)]

pub mod agent_api;
pub mod apps;
pub mod diagnostics;
pub mod labels;
pub mod naming;
pub mod policy;
pub mod service;
pub mod sessions;
pub mod wire;
pub mod workspace;
