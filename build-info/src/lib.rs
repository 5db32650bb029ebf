//! The build's identity, in one place for the agent, the CLI, the server and the webhook: the
//! workspace version and the git revision (`build.rs` says where the revision comes from).

/// The git revision: a short commit id, `<id>-dirty` when the builder said so through
/// `LUMIE_GIT_REVISION`, or `unknown` (built without git).
pub const REVISION: &str = env!("LUMIE_BUILD_REVISION");

/// What `--version` prints after the program name: `0.1.0 (rev 17426cd)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("LUMIE_BUILD_REVISION"),
    ")"
);

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_the_crate_version_and_the_revision() {
        assert_eq!(
            super::VERSION,
            format!("{} (rev {})", env!("CARGO_PKG_VERSION"), super::REVISION)
        );
        assert!(!super::REVISION.is_empty());
    }
}
