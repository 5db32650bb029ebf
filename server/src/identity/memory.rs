//! In-memory [`UserStore`] and [`SessionStore`]: for tests, and the reference behaviour the
//! database implementations follow (users keyed by issuer and subject, owner names unique,
//! sessions keyed by token hash, revoked sessions forgotten).

use std::collections::HashMap;
use std::sync::Mutex;

use super::roles::UserProfile;
use super::routes::{UserRecord, UserStore};
use super::sessions::{SessionRecord, SessionStore};
use super::{BoxFuture, IdentityError};

#[derive(Clone, Debug)]
struct StoredUser {
    issuer: String,
    subject: String,
    record: UserRecord,
}

/// Users in memory.
#[derive(Debug, Default)]
pub struct MemoryUserStore {
    users: Mutex<Vec<StoredUser>>,
}

impl MemoryUserStore {
    /// All users, in creation order.
    pub fn users(&self) -> Vec<UserRecord> {
        lock(&self.users).iter().map(|u| u.record.clone()).collect()
    }
}

impl UserStore for MemoryUserStore {
    fn upsert_oidc_user<'a>(
        &'a self,
        profile: &'a UserProfile,
        _client_ip: Option<std::net::IpAddr>,
    ) -> BoxFuture<'a, Result<UserRecord, IdentityError>> {
        Box::pin(async move {
            let mut users = lock(&self.users);
            if users.iter().any(|u| {
                u.record.owner_name == profile.owner_name
                    && (u.issuer != profile.issuer || u.subject != profile.subject)
            }) {
                return Err(IdentityError::Store(format!(
                    "owner name {:?} already belongs to another account",
                    profile.owner_name
                )));
            }
            let fields = |id: String| UserRecord {
                id,
                login: profile.login.clone(),
                owner_name: profile.owner_name.clone(),
                email: profile.email.clone(),
                name: profile.name.clone(),
                role: profile.role,
            };
            if let Some(u) = users
                .iter_mut()
                .find(|u| u.issuer == profile.issuer && u.subject == profile.subject)
            {
                u.record = fields(u.record.id.clone());
                return Ok(u.record.clone());
            }
            let record = fields(uuid::Uuid::new_v4().to_string());
            users.push(StoredUser {
                issuer: profile.issuer.clone(),
                subject: profile.subject.clone(),
                record: record.clone(),
            });
            Ok(record)
        })
    }

    fn user_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserRecord>, IdentityError>> {
        Box::pin(async move {
            Ok(lock(&self.users)
                .iter()
                .find(|u| u.record.id == id)
                .map(|u| u.record.clone()))
        })
    }
}

/// Sessions in memory, keyed by token hash.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<String, SessionRecord>>,
}

impl MemorySessionStore {
    /// All stored sessions.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        lock(&self.sessions).values().cloned().collect()
    }
}

impl SessionStore for MemorySessionStore {
    fn create_session(&self, record: SessionRecord) -> BoxFuture<'_, Result<(), IdentityError>> {
        Box::pin(async move {
            lock(&self.sessions).insert(record.token_hash.clone(), record);
            Ok(())
        })
    }

    fn find_session<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, IdentityError>> {
        Box::pin(async move { Ok(lock(&self.sessions).get(token_hash).cloned()) })
    }

    fn revoke_session<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<bool, IdentityError>> {
        Box::pin(async move { Ok(lock(&self.sessions).remove(token_hash).is_some()) })
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::roles::Role;

    fn profile(subject: &str, login: &str, role: Role) -> UserProfile {
        UserProfile {
            issuer: "http://kc/realms/infra".into(),
            subject: subject.into(),
            login: login.into(),
            owner_name: lumie_contract::naming::owner_name_for_login(login),
            email: Some(format!("{login}@lumie-edu.com")),
            name: None,
            role,
        }
    }

    #[tokio::test]
    async fn upsert_creates_then_updates_role_and_keeps_the_id() {
        let store = MemoryUserStore::default();
        let first = store
            .upsert_oidc_user(&profile("s1", "alice", Role::Admin), None)
            .await
            .unwrap();
        let again = store
            .upsert_oidc_user(&profile("s1", "alice", Role::Member), None)
            .await
            .unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(again.role, Role::Member, "roles re-evaluated at each login");
        assert_eq!(store.users().len(), 1);
        let found = store.user_by_id(&first.id).await.unwrap().unwrap();
        assert_eq!(found.role, Role::Member);
        assert!(store.user_by_id("nope").await.unwrap().is_none());
        let e = store
            .upsert_oidc_user(&profile("s2", "alice", Role::Member), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another account"), "{e}");
    }
}
