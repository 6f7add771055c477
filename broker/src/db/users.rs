//! The user cache: directory attributes as of the last sign-in.

use sqlx::Row;

use super::{Db, DbError, DbResult, col};
use crate::ldap::DirectoryUser;

/// A user as the broker last saw them in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedUser {
    pub username: String,
    /// The directory entry's stable id, as of the last sign-in (`None` before the broker kept
    /// ids).
    pub directory_id: Option<String>,
    pub dn: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub uid_number: Option<u32>,
    pub gid_number: Option<u32>,
    pub groups: Vec<String>,
    pub last_login_at: i64,
}

impl From<(&DirectoryUser, i64)> for CachedUser {
    fn from((u, now): (&DirectoryUser, i64)) -> Self {
        Self {
            username: u.username.clone(),
            directory_id: Some(u.id.clone()),
            dn: u.dn.clone(),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            uid_number: u.uid_number,
            gid_number: u.gid_number,
            groups: u.groups.clone(),
            last_login_at: now,
        }
    }
}

/// A user as administrators see them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct UserSummary {
    pub username: String,
    /// The directory entry's stable id (`oidc:...` for a user the identity provider alone
    /// knows).
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub last_login_at: i64,
    /// When the directory entry was last read (sign-in, or checked again while signed in).
    pub validated_at: i64,
    /// Sign-in sessions active now.
    pub active_sessions: i64,
}

impl Db {
    /// Users signed in now whose directory entry was last read before `before`, longest
    /// unchecked first (at most `limit`). Users the identity provider alone knows (no DN) are
    /// not among them.
    pub async fn users_to_revalidate(
        &self,
        before: i64,
        now: i64,
        limit: i64,
    ) -> DbResult<Vec<CachedUser>> {
        let rows = sqlx::query(
            "SELECT u.* FROM users u WHERE u.validated_at < $1 AND u.dn <> '' AND u.directory_id IS NOT NULL
               AND EXISTS (SELECT 1 FROM login_sessions s WHERE s.user_id = u.directory_id
                           AND s.revoked_at IS NULL AND s.expires_at > $2)
             ORDER BY u.validated_at LIMIT $3",
        )
        .bind(before)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Stores a user's entry as read again now (same name and id).
    pub async fn refresh_user(&self, u: &CachedUser, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE users SET dn = $3, display_name = $4, email = $5, uid_number = $6, gid_number = $7,
               groups_json = $8, validated_at = $9 WHERE username = $1 AND directory_id = $2",
        )
        .bind(&u.username)
        .bind(&u.directory_id)
        .bind(&u.dn)
        .bind(&u.display_name)
        .bind(&u.email)
        .bind(u.uid_number.map(i64::from))
        .bind(u.gid_number.map(i64::from))
        .bind(serde_json::to_string(&u.groups).expect("strings serialize"))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Sets when a user's entry counts as last read (to check them again sooner or later).
    pub async fn set_validated_at(&self, username: &str, at: i64) -> DbResult<()> {
        sqlx::query("UPDATE users SET validated_at = $2 WHERE username = $1")
            .bind(username)
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Users whose name starts with `prefix`, with their active sessions, by name; letters
    /// match in any case as the database lowers them (SQLite: ASCII letters only).
    pub async fn list_users(
        &self,
        prefix: &str,
        now: i64,
        limit: i64,
    ) -> DbResult<Vec<UserSummary>> {
        let like =
            format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let rows = sqlx::query(
            "SELECT u.*, (SELECT COUNT(*) FROM login_sessions s WHERE s.user_id = u.directory_id
                          AND s.revoked_at IS NULL AND s.expires_at > $2) AS active_sessions
             FROM users u WHERE LOWER(u.username) LIKE LOWER($1) ESCAPE '\\' ORDER BY u.username LIMIT $3",
        )
        .bind(like)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// One user by exact name, with their active sessions.
    pub async fn user_summary(&self, username: &str, now: i64) -> DbResult<Option<UserSummary>> {
        let row = sqlx::query(
            "SELECT u.*, (SELECT COUNT(*) FROM login_sessions s WHERE s.user_id = u.directory_id
                          AND s.revoked_at IS NULL AND s.expires_at > $2) AS active_sessions
             FROM users u WHERE u.username = $1",
        )
        .bind(username)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(summary_from_row).transpose()
    }

    pub async fn get_user(&self, username: &str) -> DbResult<Option<CachedUser>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }
}

/// A [`UserSummary`] from a row with the `users` columns and `active_sessions`.
fn summary_from_row(r: &sqlx::any::AnyRow) -> DbResult<UserSummary> {
    let u = user_from_row(r)?;
    Ok(UserSummary {
        username: u.username,
        id: u.directory_id,
        display_name: u.display_name,
        email: u.email,
        groups: u.groups,
        last_login_at: u.last_login_at,
        validated_at: col(r, "validated_at")?,
        active_sessions: col(r, "active_sessions")?,
    })
}

/// A [`CachedUser`] from a row with the `users` columns.
pub(crate) fn user_from_row(r: &sqlx::any::AnyRow) -> DbResult<CachedUser> {
    let groups: String = col(r, "groups_json")?;
    let opt_u32 = |name: &str| -> DbResult<Option<u32>> {
        let v: Option<i64> = r.try_get(name)?;
        Ok(v.and_then(|v| u32::try_from(v).ok()))
    };
    Ok(CachedUser {
        username: col(r, "username")?,
        directory_id: col(r, "directory_id")?,
        dn: col(r, "dn")?,
        display_name: col(r, "display_name")?,
        email: col(r, "email")?,
        uid_number: opt_u32("uid_number")?,
        gid_number: opt_u32("gid_number")?,
        groups: serde_json::from_str(&groups)
            .map_err(|e| DbError::Corrupt(format!("groups_json: {e}")))?,
        last_login_at: col(r, "last_login_at")?,
    })
}
