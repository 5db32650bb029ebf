//! The local Kubernetes harness for lumie-coder's end-to-end tests and the demo.
//!
//! Real control-plane binaries on loopback, the way controller-runtime's envtest does it, plus the
//! scheduler: etcd, kube-apiserver (RBAC, ServiceAccount admission, a static token file with one
//! identity per actor) and kube-scheduler. There is no kubelet and no kube-controller-manager, so
//! the harness plays the parts of them the tests need: fake nodes, a node simulator that runs
//! bound pods, a token controller for ServiceAccounts, a PV binder and the RBAC aggregation of
//! the `admin`/`edit`/`view` roles.
//!
//! - [`cluster`]: starting, stopping and reaching the control plane ([`Cluster`], [`Identity`]);
//! - [`admission`]: registering lumie-webhook with the apiserver;
//! - [`balancer`]: haproxy in front of several lumie-server processes;
//! - [`control_plane`]: running lumie-server against the harness, in process or as the binary;
//! - [`bootstrap`]: what a real cluster would have before lumie-coder is installed;
//! - [`nodes`]: fake nodes, cordoning and filling workers;
//! - [`simulator`]: the kubelet, token-controller and PV-binder stand-ins;
//! - [`stack`]: the stacks the end-to-end tests share (PostgreSQL, the server with real agents, a
//!   workspace API client that waits for a state);
//! - [`static_bins`]: the static agent and CLI of `scripts/build-static.sh`, and what runs them elsewhere;
//! - [`tools`]: the repository root and the helm/kubectl the project installs;
//! - [`workspace_pods`]: running a workspace pod's `dev` entry for real, stand-in apps, the agent binary;
//! - [`ws`]: WebSocket clients of the session routes (byte pipes, an SSH client over one).
#![forbid(unsafe_code)]

pub mod admission;
pub mod balancer;
pub mod bootstrap;
pub mod cluster;
pub mod control_plane;
pub mod nodes;
pub mod simulator;
pub mod stack;
pub mod static_bins;
pub mod tools;
pub mod workspace_pods;
pub mod ws;

pub use cluster::{Cluster, HarnessError, Identity, io_error};
pub use simulator::{PodAction, PodContext};
