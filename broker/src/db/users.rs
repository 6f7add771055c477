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

impl Db {
    pub async fn get_user(&self, username: &str) -> DbResult<Option<CachedUser>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }
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
