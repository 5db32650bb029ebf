//! Kubernetes object names for a workspace.
//!
//! Owner and workspace names are DNS-1123 labels. Object names are `coder-<owner>-<workspace>`
//! (pod), `…-home` (PVC) and `…-agent` (Secret). Every name is kept within 63 characters so it
//! also fits a label value and a pod hostname: a name that would be longer is cut and given a
//! hash of the full (owner, workspace) pair, so two different pairs never shorten to one name.
//!
//! The unshortened form is ambiguous when names contain `-` (`a-b`/`c` and `a`/`b-c` both give
//! `coder-a-b-c`); the control plane keeps the pod name unique in its database for that reason.

use sha2::{Digest, Sha256};

/// Longest DNS-1123 label and label value.
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain.
pub const MAX_SUBDOMAIN: usize = 253;
/// Hex characters of hash appended when a name is shortened.
const HASH_LEN: usize = 10;

/// Why a name is not a DNS-1123 label or subdomain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("must be at most {max} characters (got {len})")]
    TooLong {
        /// Length of the name, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name has a character outside `a-z`, `0-9`, `-` (and `.` for subdomains).
    #[error("has invalid character {0:?}: use lowercase letters, digits and '-'")]
    InvalidChar(char),
    /// The name starts or ends with something other than a letter or digit.
    #[error("must start and end with a lowercase letter or digit")]
    BadEdge,
}

/// Checks a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters).
pub fn validate_dns_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::InvalidChar(c));
    }
    if name.len() > MAX_LABEL {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_LABEL,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn validate_dns_subdomain(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_SUBDOMAIN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_SUBDOMAIN,
        });
    }
    name.split('.')
        .try_for_each(|part| match validate_dns_label(part) {
            Err(NameError::Empty) => Err(NameError::BadEdge),
            other => other,
        })
}

/// The names of the Kubernetes objects of one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceNames {
    /// Owner name (validated label).
    pub owner: String,
    /// Workspace name (validated label).
    pub workspace: String,
    /// Pod name, `coder-<owner>-<workspace>`.
    pub pod: String,
    /// Home PVC name, `coder-<owner>-<workspace>-home`.
    pub home_pvc: String,
    /// Agent-token Secret name, `coder-<owner>-<workspace>-agent`.
    pub agent_secret: String,
}

impl WorkspaceNames {
    /// Validates both names and derives the object names.
    pub fn new(owner: &str, workspace: &str) -> Result<Self, InvalidWorkspaceName> {
        validate_dns_label(owner).map_err(|e| InvalidWorkspaceName::Owner(owner.to_string(), e))?;
        validate_dns_label(workspace)
            .map_err(|e| InvalidWorkspaceName::Workspace(workspace.to_string(), e))?;
        let base = format!("coder-{owner}-{workspace}");
        let key = format!("{owner}/{workspace}");
        Ok(WorkspaceNames {
            owner: owner.to_string(),
            workspace: workspace.to_string(),
            pod: fit(&base, "", &key),
            home_pvc: fit(&base, "-home", &key),
            agent_secret: fit(&base, "-agent", &key),
        })
    }
}

/// A workspace or owner name that is not a DNS-1123 label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWorkspaceName {
    /// The owner name is invalid.
    #[error("owner name {0:?} {1}")]
    Owner(String, NameError),
    /// The workspace name is invalid.
    #[error("workspace name {0:?} {1}")]
    Workspace(String, NameError),
}

/// `base + suffix` when it fits in 63 characters, else `base` cut short, a hash of `key`, and `suffix`.
fn fit(base: &str, suffix: &str, key: &str) -> String {
    if base.len() + suffix.len() <= MAX_LABEL {
        return format!("{base}{suffix}");
    }
    let keep = MAX_LABEL - suffix.len() - 1 - HASH_LEN;
    // `base` is ASCII (validated), so byte slicing is char slicing.
    let cut = base[..keep].trim_end_matches('-');
    format!("{cut}-{}{suffix}", short_hash(key))
}

fn short_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..HASH_LEN / 2])
}

/// A DNS-1123 label for a login name (`Jane.Doe@corp` → `jane-doe-corp-<hash>`).
///
/// A name that is already a label is kept as is; any other is lowercased, cleaned and given a
/// hash of the original, so two different logins never map to one owner name.
pub fn owner_name_for_login(login: &str) -> String {
    if validate_dns_label(login).is_ok() {
        return login.to_string();
    }
    let mut slug = String::with_capacity(login.len());
    for c in login.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (slug.is_empty() || slug.ends_with('-'))) {
            slug.push(c);
        }
    }
    let hash = short_hash(login);
    let max = MAX_LABEL - 1 - HASH_LEN;
    let slug = slug[..slug.len().min(max)].trim_matches('-');
    if slug.is_empty() {
        format!("u{}", &hash[1..])
    } else {
        format!("{slug}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_validation_table() {
        let long = "a".repeat(300);
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("alice", Ok(())),
            ("a", Ok(())),
            ("my-ws-2", Ok(())),
            ("0day", Ok(())),
            (&long[..63], Ok(())),
            (&long[..64], Err(NameError::TooLong { len: 64, max: 63 })),
            (&long, Err(NameError::TooLong { len: 300, max: 63 })),
            ("", Err(NameError::Empty)),
            ("Alice", Err(NameError::InvalidChar('A'))),
            ("jane.doe", Err(NameError::InvalidChar('.'))),
            ("under_score", Err(NameError::InvalidChar('_'))),
            ("émile", Err(NameError::InvalidChar('é'))),
            ("日本", Err(NameError::InvalidChar('日'))),
            ("-lead", Err(NameError::BadEdge)),
            ("trail-", Err(NameError::BadEdge)),
            ("sp ace", Err(NameError::InvalidChar(' '))),
            ("a/b", Err(NameError::InvalidChar('/'))),
        ];
        for (input, want) in cases {
            assert_eq!(&validate_dns_label(input), want, "{input:?}");
        }
    }

    #[test]
    fn subdomain_validation() {
        assert_eq!(validate_dns_subdomain("node-role.kubernetes.io"), Ok(()));
        assert_eq!(validate_dns_subdomain("a..b"), Err(NameError::BadEdge));
        assert_eq!(validate_dns_subdomain(".a"), Err(NameError::BadEdge));
        assert!(validate_dns_subdomain(&"a.".repeat(130)).is_err());
    }

    #[test]
    fn names_for_ordinary_workspaces() {
        let n = WorkspaceNames::new("alice", "dev").unwrap();
        assert_eq!(n.pod, "coder-alice-dev");
        assert_eq!(n.home_pvc, "coder-alice-dev-home");
        assert_eq!(n.agent_secret, "coder-alice-dev-agent");
    }

    #[test]
    fn invalid_names_are_refused_with_the_field() {
        let e = WorkspaceNames::new("Alice", "dev").unwrap_err();
        assert_eq!(
            e.to_string(),
            "owner name \"Alice\" has invalid character 'A': use lowercase letters, digits and '-'"
        );
        let e = WorkspaceNames::new("alice", "").unwrap_err();
        assert!(matches!(
            e,
            InvalidWorkspaceName::Workspace(_, NameError::Empty)
        ));
        assert!(WorkspaceNames::new(&"x".repeat(300), "dev").is_err());
        assert!(WorkspaceNames::new("alice", "my.ws").is_err());
    }

    #[test]
    fn long_names_are_shortened_deterministically_and_never_collide() {
        let owner = "o".repeat(63);
        let a = WorkspaceNames::new(&owner, &"w".repeat(63)).unwrap();
        let b = WorkspaceNames::new(&owner, &"w".repeat(62)).unwrap();
        let a2 = WorkspaceNames::new(&owner, &"w".repeat(63)).unwrap();
        assert_eq!(a, a2, "deterministic");
        for n in [&a, &b] {
            for name in [&n.pod, &n.home_pvc, &n.agent_secret] {
                assert!(name.len() <= MAX_LABEL, "{name} is {} long", name.len());
                assert_eq!(validate_dns_label(name), Ok(()), "{name}");
            }
            assert!(n.home_pvc.ends_with("-home"));
            assert!(n.agent_secret.ends_with("-agent"));
            assert!(n.pod.starts_with("coder-ooo"));
        }
        assert_ne!(a.pod, b.pod);
        assert_ne!(a.home_pvc, b.home_pvc);
        assert_ne!(a.agent_secret, b.agent_secret);
        // Cut points that would leave a trailing '-' in the kept part are trimmed.
        let c = WorkspaceNames::new(&format!("{}-x", "a".repeat(50)), &"b".repeat(40)).unwrap();
        assert!(!c.pod.contains("--"), "{}", c.pod);
    }

    #[test]
    fn login_names_become_labels() {
        assert_eq!(owner_name_for_login("alice"), "alice");
        let cases = [
            "Jane.Doe",
            "jane.doe",
            "jane_doe",
            "JANE DOE",
            "émile@corp",
            "日本",
            "",
            &"Z".repeat(300),
        ];
        let mut seen = std::collections::HashSet::new();
        for login in cases {
            let owner = owner_name_for_login(login);
            assert_eq!(validate_dns_label(&owner), Ok(()), "{login:?} -> {owner:?}");
            assert!(seen.insert(owner.clone()), "{login:?} collided as {owner}");
            assert_eq!(owner, owner_name_for_login(login), "deterministic");
        }
        assert!(owner_name_for_login("Jane.Doe").starts_with("jane-doe-"));
    }
}
