//! The database as the identity module's `UserStore` and `SessionStore`, on SQLite and on a
//! real PostgreSQL: users keyed by issuer and subject, roles re-evaluated and audited, owner
//! names unique across accounts, sessions hashed in `api_tokens` with expiry and revocation.

mod common;

use std::time::Duration;

use lumie_server::db::{AuditFilter, Db, OIDC_SESSION_TOKEN_NAME};
use lumie_server::identity::sessions::new_session;
use lumie_server::identity::{Role, SessionStore, UserProfile, UserStore};

fn profile(subject: &str, login: &str, role: Role) -> UserProfile {
    UserProfile {
        issuer: "http://kc/realms/infra".into(),
        subject: subject.into(),
        login: login.into(),
        owner_name: lumie_contract::naming::owner_name_for_login(login),
        email: Some(format!("{}@lumie-edu.com", login.to_lowercase())),
        name: Some(format!("{login} Name")),
        role,
    }
}

async fn users_and_roles(db: Db) {
    let ip = Some("203.0.113.9".parse().unwrap());
    let users: &dyn UserStore = &db;
    let first = users
        .upsert_oidc_user(&profile("s1", "Jane.Doe", Role::Admin), ip)
        .await
        .unwrap();
    assert_eq!(first.role, Role::Admin);
    assert!(first.owner_name.starts_with("jane-doe-"), "{first:?}");
    let stored = db.user_by_id(&first.id).await.unwrap().unwrap();
    assert!(stored.is_admin);
    assert_eq!(stored.login_type, "oidc");
    assert_eq!(stored.username, first.owner_name);

    // Same login again, same role: same id, no new audit line.
    let again = users
        .upsert_oidc_user(&profile("s1", "Jane.Doe", Role::Admin), ip)
        .await
        .unwrap();
    assert_eq!(again, first);
    // Removed from the admin group: member at the next login, audited with before/after.
    let demoted = users
        .upsert_oidc_user(&profile("s1", "Jane.Doe", Role::Member), ip)
        .await
        .unwrap();
    assert_eq!(demoted.id, first.id);
    assert_eq!(demoted.role, Role::Member);
    assert!(!db.user_by_id(&first.id).await.unwrap().unwrap().is_admin);
    let log = db
        .audit_query(&AuditFilter {
            user: Some(first.id.clone()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.role", "user.create"]);
    assert_eq!(log[0].before.as_deref(), Some("admin"));
    assert_eq!(log[0].after.as_deref(), Some("member"));
    assert_eq!(log[0].client_ip.as_deref(), Some("203.0.113.9"));

    let found = users.user_by_id(&first.id).await.unwrap().unwrap();
    assert_eq!(found, demoted);
    assert_eq!(found.login, "Jane.Doe");
    assert_eq!(found.name.as_deref(), Some("Jane.Doe Name"));
    assert!(users.user_by_id("nope").await.unwrap().is_none());

    // Another account whose login maps to a taken owner name: refused, nothing changed.
    let e = users
        .upsert_oidc_user(&profile("s2", "Jane.Doe", Role::Member), ip)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "store");
    assert!(e.to_string().contains("another account"), "{e}");
    // A token user (created by an admin) owns a name an OIDC login would take: refused too.
    db.create_user("bob", "", false).await.unwrap();
    let e = users
        .upsert_oidc_user(&profile("s3", "bob", Role::Member), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"bob\""), "{e}");
}

async fn sessions(db: Db) {
    let user = db.create_user("sam", "", false).await.unwrap();
    let store: &dyn SessionStore = &db;
    let now = chrono::Utc::now();
    let (token, record) = new_session(
        &user.id,
        Duration::from_secs(3600),
        now,
        Some("198.51.100.1".parse().unwrap()),
    );
    store.create_session(record.clone()).await.unwrap();
    let found = store.find_session(&token.hash()).await.unwrap().unwrap();
    assert_eq!(found.user_id, user.id);
    assert_eq!(found.client_ip, record.client_ip);
    assert_eq!(
        found.expires_at.timestamp_millis(),
        record.expires_at.timestamp_millis()
    );
    // The API-token authenticator's lookup recognises it as a session.
    let (owner, name) = db.token_owner(token.expose()).await.unwrap().unwrap();
    assert_eq!(owner.id, user.id);
    assert_eq!(name, OIDC_SESSION_TOKEN_NAME);
    // API tokens are not sessions: logout cannot revoke them through the session store.
    let api_token = db.create_api_token(&user.id, "api").await.unwrap();
    assert!(
        store
            .find_session(&lumie_server::db::hash_token(&api_token))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !store
            .revoke_session(&lumie_server::db::hash_token(&api_token))
            .await
            .unwrap()
    );
    assert!(db.token_owner(&api_token).await.unwrap().is_some());

    assert!(store.revoke_session(&token.hash()).await.unwrap());
    assert!(store.find_session(&token.hash()).await.unwrap().is_none());
    assert!(db.token_owner(token.expose()).await.unwrap().is_none());
    assert!(!store.revoke_session(&token.hash()).await.unwrap());

    // Expired: still found by the store (so it can say "expired"), refused by the authenticator.
    let (old, record) = new_session(
        &user.id,
        Duration::from_secs(60),
        now - chrono::Duration::hours(2),
        None,
    );
    store.create_session(record).await.unwrap();
    assert!(store.find_session(&old.hash()).await.unwrap().is_some());
    assert!(db.token_owner(old.expose()).await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_users_and_roles() {
    let (db, _dir) = common::sqlite_db().await;
    users_and_roles(db).await;
}

#[tokio::test]
async fn postgres_users_and_roles() {
    users_and_roles(common::pg_db().await).await;
}

#[tokio::test]
async fn sqlite_sessions() {
    let (db, _dir) = common::sqlite_db().await;
    sessions(db).await;
}

#[tokio::test]
async fn postgres_sessions() {
    sessions(common::pg_db().await).await;
}
