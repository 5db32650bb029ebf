//! The apps a workspace serves and the ports they listen on.
//!
//! The stable `dev-workspace` Service, the agent's port forwarding, the server's app proxy and
//! the webhook all read these; a port drifting between them is a contract violation.

/// One app served inside the workspace pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkspaceApp {
    /// URL slug and port name (`/@owner/ws/apps/<slug>/`), also the Service port name.
    pub slug: &'static str,
    /// Human name for pages and logs.
    pub display_name: &'static str,
    /// TCP port the app listens on inside the pod (and the Service port).
    pub port: u16,
    /// Whether the app expects the `/@owner/ws/apps/<slug>` prefix stripped before it sees the path.
    pub strip_prefix: bool,
}

/// Tilt UI.
pub const TILT: WorkspaceApp = WorkspaceApp {
    slug: "tilt",
    display_name: "Tilt",
    port: 10350,
    strip_prefix: true,
};
/// code-server (VS Code in the browser).
pub const CODE_SERVER: WorkspaceApp = WorkspaceApp {
    slug: "code-server",
    display_name: "code-server",
    port: 13337,
    strip_prefix: true,
};
/// The agents browser UI.
pub const AGENTS: WorkspaceApp = WorkspaceApp {
    slug: "agents",
    display_name: "Agents UI",
    port: 3000,
    strip_prefix: true,
};

/// Every workspace app, in a stable order.
pub const ALL: [WorkspaceApp; 3] = [TILT, CODE_SERVER, AGENTS];

/// Looks an app up by its slug.
pub fn by_slug(slug: &str) -> Option<WorkspaceApp> {
    ALL.into_iter().find(|a| a.slug == slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_ports_are_unique_and_valid_port_names() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(
                a.slug.len() <= 15,
                "Service port names are at most 15 characters"
            );
            for b in &ALL[i + 1..] {
                assert_ne!(a.slug, b.slug);
                assert_ne!(a.port, b.port);
            }
            assert_eq!(by_slug(a.slug), Some(*a));
        }
        assert_eq!(by_slug("nope"), None);
    }
}
