//! lumie-webhook: the mutating and validating admission webhook that guards `lumie-dev`.
#![forbid(unsafe_code)]

pub mod certs;
