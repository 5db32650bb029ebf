//! Claims → role and user profile. Pure: the OIDC client hands over verified claims, this decides
//! what the user is called and whether they are `admin` or `member`, at every login (so removing
//! someone from the admin group takes effect at their next login).

use lumie_contract::naming::owner_name_for_login;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::IdentityError;

/// Default claim the groups are read from (Keycloak's group membership mapper).
pub const DEFAULT_ROLE_CLAIM: &str = "groups";
/// Default group whose members are admins.
pub const DEFAULT_ADMIN_GROUP: &str = "platform-admins";

/// What a user may do: `member` their own workspaces, `admin` everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: other users' workspaces, users, audit log, policy.
    Admin,
    /// Own workspaces only.
    Member,
}

impl Role {
    /// `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(format!("unknown role {other:?} (admin or member)")),
        }
    }
}

/// Which claim carries the groups and which group makes an admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMapping {
    /// Claim name; a dotted path (`realm_access.roles`) reaches into nested objects.
    pub claim: String,
    /// Group (or role) name that maps to [`Role::Admin`].
    pub admin_group: String,
}

impl Default for RoleMapping {
    fn default() -> Self {
        RoleMapping {
            claim: DEFAULT_ROLE_CLAIM.into(),
            admin_group: DEFAULT_ADMIN_GROUP.into(),
        }
    }
}

impl RoleMapping {
    /// The role the claims give: admin when the claim lists the admin group, member otherwise
    /// (also when the claim is absent or of an unexpected type).
    ///
    /// The claim may be a list or a single string. Keycloak's "full group path" form
    /// (`/platform-admins`) counts as the top-level group of that name; a nested group of the same
    /// name (`/teams/platform-admins`) does not.
    pub fn role_for(&self, claims: &Map<String, Value>) -> Role {
        let is_admin_group = |v: &Value| {
            v.as_str().is_some_and(|g| {
                let g = g.trim();
                g == self.admin_group || g.strip_prefix('/') == Some(self.admin_group.as_str())
            })
        };
        match lookup(claims, &self.claim) {
            Some(Value::Array(items)) if items.iter().any(is_admin_group) => Role::Admin,
            Some(v @ Value::String(_)) if is_admin_group(v) => Role::Admin,
            _ => Role::Member,
        }
    }
}

/// A claim by name, or by dotted path when no top-level claim has that name.
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Who logged in, from the verified ID token: what the user store keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    /// Issuer URL (users are keyed by issuer and subject).
    pub issuer: String,
    /// `sub`: stable across renames.
    pub subject: String,
    /// `preferred_username` as the provider sends it.
    pub login: String,
    /// DNS-1123 owner name derived from the login (used in pod and PVC names).
    pub owner_name: String,
    /// `email`, when sent.
    pub email: Option<String>,
    /// `name`, when sent.
    pub name: Option<String>,
    /// Role from the groups claim.
    pub role: Role,
}

/// The claims of a verified ID token, as plain values (what [`UserProfile::from_claims`] reads).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifiedClaims {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `preferred_username`.
    pub preferred_username: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// Every other claim (the groups claim among them).
    pub other: Map<String, Value>,
}

impl UserProfile {
    /// Builds the profile; `preferred_username` is required (Keycloak always sends it).
    pub fn from_claims(
        claims: &VerifiedClaims,
        mapping: &RoleMapping,
    ) -> Result<Self, IdentityError> {
        let login = claims
            .preferred_username
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(IdentityError::MissingClaim {
                claim: "preferred_username",
            })?
            .to_string();
        let non_blank = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        Ok(UserProfile {
            issuer: claims.issuer.clone(),
            subject: claims.subject.clone(),
            owner_name: owner_name_for_login(&login),
            login,
            email: non_blank(&claims.email),
            name: non_blank(&claims.name),
            role: mapping.role_for(&claims.other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn role_table() {
        let default = RoleMapping::default();
        let custom = RoleMapping {
            claim: "realm_access.roles".into(),
            admin_group: "coder-admin".into(),
        };
        let cases: &[(&RoleMapping, Value, Role)] = &[
            (
                &default,
                json!({"groups": ["developers", "platform-admins"]}),
                Role::Admin,
            ),
            (&default, json!({"groups": ["developers"]}), Role::Member),
            (&default, json!({"groups": []}), Role::Member),
            (&default, json!({}), Role::Member),
            (&default, json!({"groups": "platform-admins"}), Role::Admin),
            (
                &default,
                json!({"groups": ["/platform-admins"]}),
                Role::Admin,
            ),
            (
                &default,
                json!({"groups": ["/teams/platform-admins"]}),
                Role::Member,
            ),
            (
                &default,
                json!({"groups": ["Platform-Admins"]}),
                Role::Member,
            ),
            (
                &default,
                json!({"groups": ["platform-admins-x"]}),
                Role::Member,
            ),
            (&default, json!({"groups": [42, null]}), Role::Member),
            (
                &default,
                json!({"groups": {"platform-admins": true}}),
                Role::Member,
            ),
            (
                &default,
                json!({"roles": ["platform-admins"]}),
                Role::Member,
            ),
            (
                &custom,
                json!({"realm_access": {"roles": ["coder-admin"]}}),
                Role::Admin,
            ),
            (
                &custom,
                json!({"realm_access": {"roles": ["offline_access"]}}),
                Role::Member,
            ),
            (
                &custom,
                json!({"realm_access": "coder-admin"}),
                Role::Member,
            ),
            (
                &custom,
                json!({"realm_access.roles": ["coder-admin"]}),
                Role::Admin,
            ),
        ];
        for (i, (mapping, claims, want)) in cases.iter().enumerate() {
            assert_eq!(
                mapping.role_for(&map(claims.clone())),
                *want,
                "case {i}: {claims}"
            );
        }
    }

    #[test]
    fn role_round_trips_as_text() {
        for role in [Role::Admin, Role::Member] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn profile_from_claims() {
        let claims = VerifiedClaims {
            issuer: "http://kc/realms/infra".into(),
            subject: "3f1c".into(),
            preferred_username: Some("Jane.Doe".into()),
            email: Some("jane@lumie-edu.com".into()),
            name: Some("  ".into()),
            other: map(json!({"groups": ["platform-admins"]})),
        };
        let p = UserProfile::from_claims(&claims, &RoleMapping::default()).unwrap();
        assert_eq!(p.login, "Jane.Doe");
        assert_eq!(p.owner_name, owner_name_for_login("Jane.Doe"));
        assert!(p.owner_name.starts_with("jane-doe-"));
        assert_eq!(p.email.as_deref(), Some("jane@lumie-edu.com"));
        assert_eq!(p.name, None, "blank name is no name");
        assert_eq!(p.role, Role::Admin);

        let plain = VerifiedClaims {
            preferred_username: Some("bob".into()),
            ..claims.clone()
        };
        assert_eq!(
            UserProfile::from_claims(&plain, &RoleMapping::default())
                .unwrap()
                .owner_name,
            "bob"
        );

        for missing in [None, Some(" ".to_string())] {
            let c = VerifiedClaims {
                preferred_username: missing,
                ..claims.clone()
            };
            let err = UserProfile::from_claims(&c, &RoleMapping::default()).unwrap_err();
            assert!(err.to_string().contains("preferred_username"), "{err}");
        }
    }
}
