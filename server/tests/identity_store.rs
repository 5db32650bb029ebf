//! What an OIDC login writes to the database and how the server's one authenticator reads it
//! back, on SQLite and on a real PostgreSQL: users keyed by issuer and subject, roles
//! re-evaluated and audited, owner names unique across accounts, sessions hashed in
//! `api_tokens` with expiry and revocation, recognised by [`AuthChain`] like API tokens.

mod common;

use std::time::Duration;

use lumie_server::Error;
use lumie_server::caller::{AuthChain, AuthMethod, SESSION_COOKIE};
use lumie_server::db::{AuditFilter, Db, OIDC_SESSION_TOKEN_NAME, hash_token};
use lumie_server::identity::sessions::new_session;
use lumie_server::identity::{IdentityError, Role, SessionToken, UserProfile};

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

/// A request head presenting `header: value`.
fn request(header: &str, value: &str) -> http::request::Parts {
    http::Request::builder()
        .header(header, value)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn with_cookie(token: &str) -> http::request::Parts {
    request("cookie", &format!("a=1; {SESSION_COOKIE}={token}"))
}

/// What the authenticator answers for a refused token.
fn assert_refused(r: Result<lumie_server::caller::Principal, Error>) {
    match r {
        Err(Error::Unauthorized(m)) => assert_eq!(m, "invalid or expired session token"),
        other => panic!("expected 401, got {other:?}"),
    }
}

async fn users_and_roles(db: Db, url: String) {
    let ip = Some("203.0.113.9".parse().unwrap());
    let first = db
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
    let again = db
        .upsert_oidc_user(&profile("s1", "Jane.Doe", Role::Admin), ip)
        .await
        .unwrap();
    assert_eq!(again, first);
    // Removed from the admin group: member at the next login, audited with before/after.
    let demoted = db
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

    // What is stored is what the login said.
    let found = db.user_by_id(&first.id).await.unwrap().unwrap();
    assert_eq!(found.username, demoted.owner_name);
    assert_eq!(Some(found.email), demoted.email);
    assert!(!found.is_admin);
    assert_eq!(
        common::stored_oidc_names(&url, &first.id).await,
        ("Jane.Doe".to_string(), "Jane.Doe Name".to_string())
    );
    assert!(db.user_by_id("nope").await.unwrap().is_none());

    // Another account whose login maps to a taken owner name: refused, nothing changed; the
    // login page names it as a store failure.
    let e = db
        .upsert_oidc_user(&profile("s2", "Jane.Doe", Role::Member), ip)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let e = IdentityError::from(e);
    assert_eq!(e.kind(), "store");
    assert!(e.to_string().contains("another account"), "{e}");
    assert_eq!(db.list_users().await.unwrap().len(), 1);
    // A token user (created by an admin) owns a name an OIDC login would take: refused too.
    db.create_user("bob", "", false).await.unwrap();
    let e = db
        .upsert_oidc_user(&profile("s3", "bob", Role::Member), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"bob\""), "{e}");
}

async fn sessions(db: Db, url: String) {
    let auth = AuthChain::api_tokens(db.clone());
    let user = db.create_user("sam", "", false).await.unwrap();
    let now = chrono::Utc::now();
    let (token, record) = new_session(
        &user.id,
        Duration::from_secs(3600),
        now,
        Some("198.51.100.1".parse().unwrap()),
    );
    assert_eq!(record.token_hash, hash_token(token.expose()));
    db.create_session(&record).await.unwrap();
    // Only the hash is stored, with the user, the expiry and the client address.
    let stored = common::stored_sessions(&url).await;
    assert_eq!(
        stored,
        [common::StoredSession {
            token_hash: token.hash(),
            user_id: user.id.clone(),
            expires_at: record.expires_at.timestamp_millis(),
            client_ip: Some("198.51.100.1".into()),
        }]
    );
    // The session cookie is recognised by the server's authenticator, as a session.
    let p = auth
        .authenticate(&with_cookie(token.expose()))
        .await
        .unwrap();
    assert_eq!(p.user.id, user.id);
    assert_eq!(p.method, AuthMethod::OidcSession);
    let (owner, name) = db.token_owner(token.expose()).await.unwrap().unwrap();
    assert_eq!(owner.id, user.id);
    assert_eq!(name, OIDC_SESSION_TOKEN_NAME);
    // The hash itself is no credential; neither is a token nobody issued.
    assert_refused(auth.authenticate(&with_cookie(&token.hash())).await);
    assert_refused(
        auth.authenticate(&with_cookie(SessionToken::generate().expose()))
            .await,
    );

    // API tokens are not sessions: logout cannot revoke them.
    let api_token = db.create_api_token(&user.id, "api").await.unwrap();
    assert!(!db.revoke_session(&hash_token(&api_token)).await.unwrap());
    let p = auth
        .authenticate(&request("authorization", &format!("Bearer {api_token}")))
        .await
        .unwrap();
    assert_eq!(
        (p.user.id.as_str(), p.method),
        (user.id.as_str(), AuthMethod::ApiToken)
    );
    assert_eq!(common::stored_sessions(&url).await.len(), 1);

    // Revoked: gone, refused, and revoking again finds nothing.
    assert!(db.revoke_session(&token.hash()).await.unwrap());
    assert!(common::stored_sessions(&url).await.is_empty());
    assert!(db.token_owner(token.expose()).await.unwrap().is_none());
    assert_refused(auth.authenticate(&with_cookie(token.expose())).await);
    assert!(!db.revoke_session(&token.hash()).await.unwrap());
    assert!(db.token_owner(&api_token).await.unwrap().is_some());

    // Expired: the row is still there, the authenticator refuses it.
    let (old, record) = new_session(
        &user.id,
        Duration::from_secs(60),
        now - chrono::Duration::hours(2),
        None,
    );
    db.create_session(&record).await.unwrap();
    let stored = common::stored_sessions(&url).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].token_hash, old.hash());
    assert!(db.token_owner(old.expose()).await.unwrap().is_none());
    assert_refused(auth.authenticate(&with_cookie(old.expose())).await);
}

#[tokio::test]
async fn sqlite_users_and_roles() {
    let (db, dir) = common::sqlite_db().await;
    users_and_roles(db, common::sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_users_and_roles() {
    let (db, url) = common::pg_db_with_url().await;
    users_and_roles(db, url).await;
}

#[tokio::test]
async fn sqlite_sessions() {
    let (db, dir) = common::sqlite_db().await;
    sessions(db, common::sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_sessions() {
    let (db, url) = common::pg_db_with_url().await;
    sessions(db, url).await;
}
