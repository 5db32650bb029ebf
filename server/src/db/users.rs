//! Users: token users created by an admin, the first admin, and OIDC users (keyed by issuer
//! and subject, role re-evaluated and audited at each login).

use std::net::IpAddr;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::AuditEvent;
use super::{Db, is_unique_violation, new_id};
use crate::error::{Error, Result};
use crate::identity::{Role, UserProfile, UserRecord};
use crate::model::{User, now_ms};

fn role_of(is_admin: bool) -> Role {
    if is_admin { Role::Admin } else { Role::Member }
}

pub(super) fn user_from(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        login_type: row.try_get("login_type")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Db {
    /// Creates a user. A taken username is a [`Error::Conflict`].
    pub async fn create_user(&self, username: &str, email: &str, is_admin: bool) -> Result<User> {
        let now = now_ms();
        let id = new_id();
        let r = sqlx::query(
            "INSERT INTO users (id, username, email, is_admin, login_type, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'token', $5, $5)",
        )
        .bind(&id)
        .bind(username)
        .bind(email)
        .bind(i64::from(is_admin))
        .bind(now)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(User {
                id,
                username: username.into(),
                email: email.into(),
                is_admin,
                login_type: "token".into(),
                created_at: now,
            }),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("user {username:?} already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a user up by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from).collect()
    }

    /// How many users exist (zero on first start).
    pub async fn count_users(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Creates the first admin and its token when no user exists yet; `None` otherwise.
    /// Racing servers cannot both succeed: the username is unique.
    pub async fn bootstrap_admin(&self, username: &str) -> Result<Option<(User, String)>> {
        if self.count_users().await? > 0 {
            return Ok(None);
        }
        let user = match self.create_user(username, "", true).await {
            Ok(u) => u,
            Err(Error::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let token = self.create_api_token(&user.id, "first admin").await?;
        Ok(Some((user, token)))
    }

    /// Creates the user an OIDC login names, or updates it (users are keyed by issuer and
    /// subject): owner name, login, email, display name and role, re-evaluated at each login.
    /// A role change is audited with the client address. An owner name that belongs to another
    /// account is a [`Error::Conflict`].
    pub async fn upsert_oidc_user(
        &self,
        profile: &UserProfile,
        client_ip: Option<IpAddr>,
    ) -> Result<UserRecord> {
        // Two first logins of one account racing (PostgreSQL): the loser retries as an update.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upsert_oidc_user_once(profile, client_ip).await {
                Err(Error::Conflict(_))
                    if attempt == 1 && self.oidc_user_exists(profile).await? =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    async fn oidc_user_exists(&self, profile: &UserProfile) -> Result<bool> {
        Ok(
            sqlx::query("SELECT id FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2")
                .bind(&profile.issuer)
                .bind(&profile.subject)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn upsert_oidc_user_once(
        &self,
        profile: &UserProfile,
        client_ip: Option<IpAddr>,
    ) -> Result<UserRecord> {
        let now = now_ms();
        let is_admin = profile.role == Role::Admin;
        let taken = || {
            Error::Conflict(format!(
                "owner name {:?} (from login {:?}) already belongs to another account",
                profile.owner_name, profile.login
            ))
        };
        let mut tx = self.pool.begin().await?;
        let existing =
            sqlx::query("SELECT * FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2")
                .bind(&profile.issuer)
                .bind(&profile.subject)
                .fetch_optional(&mut *tx)
                .await?;
        let (id, before) = match existing {
            Some(row) => {
                let user = user_from(&row)?;
                let r = sqlx::query(
                    "UPDATE users SET username = $2, email = $3, display_name = $4, oidc_login = $5, \
                     is_admin = $6, login_type = 'oidc', updated_at = $7 WHERE id = $1",
                )
                .bind(&user.id)
                .bind(&profile.owner_name)
                .bind(profile.email.as_deref().unwrap_or(""))
                .bind(profile.name.as_deref().unwrap_or(""))
                .bind(&profile.login)
                .bind(i64::from(is_admin))
                .bind(now)
                .execute(&mut *tx)
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(taken()),
                    Err(e) => return Err(e.into()),
                }
                (user.id, Some(role_of(user.is_admin)))
            }
            None => {
                let id = new_id();
                let r = sqlx::query(
                    "INSERT INTO users (id, username, email, is_admin, login_type, oidc_subject, oidc_issuer, \
                     display_name, oidc_login, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'oidc', $5, $6, $7, $8, $9, $9)",
                )
                .bind(&id)
                .bind(&profile.owner_name)
                .bind(profile.email.as_deref().unwrap_or(""))
                .bind(i64::from(is_admin))
                .bind(&profile.subject)
                .bind(&profile.issuer)
                .bind(profile.name.as_deref().unwrap_or(""))
                .bind(&profile.login)
                .bind(now)
                .execute(&mut *tx)
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(taken()),
                    Err(e) => return Err(e.into()),
                }
                (id, None)
            }
        };
        let actor = User {
            id: id.clone(),
            username: profile.owner_name.clone(),
            email: profile.email.clone().unwrap_or_default(),
            is_admin,
            login_type: "oidc".into(),
            created_at: now,
        };
        let after = profile.role;
        if before != Some(after) {
            Self::audit_in(
                &mut tx,
                &AuditEvent {
                    actor: Some(&actor),
                    client_ip,
                    action: if before.is_none() {
                        "user.create"
                    } else {
                        "user.role"
                    },
                    workspace_id: None,
                    detail: &format!("OIDC login {:?}: role from the groups claim", profile.login),
                    before: before.map(|r| r.as_str().to_string()),
                    after: Some(after.as_str().to_string()),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(UserRecord {
            id,
            login: profile.login.clone(),
            owner_name: profile.owner_name.clone(),
            email: profile.email.clone(),
            name: profile.name.clone(),
            role: after,
        })
    }
}
