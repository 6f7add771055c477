//! Sign-in sessions and failed sign-in counters.

use super::{AuditEvent, CachedUser, Db, DbError, DbResult, col};

/// A sign-in session (the session cookie carries its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    pub id: String,
    pub username: String,
    /// The directory entry signed in (its stable id); `None` for sessions made before the
    /// broker kept it, which are no longer honoured.
    pub user_id: Option<String>,
    pub client_addr: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
    pub revoked_at: Option<i64>,
    /// How the user proved who they are.
    pub method: SignInMethod,
    /// Where the session stands with the second factor.
    pub mfa: super::MfaState,
}

/// How a sign-in session was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    /// The directory checked the user's password.
    Password,
    /// An OpenID provider vouched for the user.
    Oidc,
    /// Not a person: an API token (never stored as a sign-in session).
    ApiToken,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Oidc => "oidc",
            Self::ApiToken => "token",
        }
    }

    fn parse(s: &str) -> DbResult<Self> {
        match s {
            "password" => Ok(Self::Password),
            "oidc" => Ok(Self::Oidc),
            other => Err(DbError::Corrupt(format!("login_sessions.method {other:?}"))),
        }
    }
}

impl LoginSession {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A [`LoginSession`] from a row with the `login_sessions` columns.
fn session_from_row(r: &sqlx::any::AnyRow) -> DbResult<LoginSession> {
    Ok(LoginSession {
        id: col(r, "id")?,
        username: col(r, "username")?,
        user_id: col(r, "user_id")?,
        client_addr: col(r, "client_addr")?,
        created_at: col(r, "created_at")?,
        expires_at: col(r, "expires_at")?,
        last_seen_at: col(r, "last_seen_at")?,
        revoked_at: col(r, "revoked_at")?,
        method: SignInMethod::parse(&col::<String>(r, "method")?)?,
        mfa: super::MfaState::parse(&col::<String>(r, "mfa")?),
    })
}

impl Db {
    pub async fn get_login_session(&self, id: &str) -> DbResult<Option<LoginSession>> {
        let row = sqlx::query("SELECT * FROM login_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// A sign-in session and its user's cached attributes, in one query.
    pub async fn get_login_with_user(
        &self,
        id: &str,
    ) -> DbResult<Option<(LoginSession, CachedUser)>> {
        let row = sqlx::query(
            "SELECT s.id, s.username, s.user_id, s.client_addr, s.created_at, s.expires_at, s.last_seen_at, s.revoked_at, s.method, s.mfa,
               u.directory_id, u.dn, u.display_name, u.email, u.uid_number, u.gid_number, u.groups_json, u.last_login_at
             FROM login_sessions s JOIN users u ON u.username = s.username WHERE s.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let session = session_from_row(&r)?;
            let user = crate::db::users::user_from_row(&r)?;
            Ok((session, user))
        })
        .transpose()
    }

    pub async fn touch_login_session(&self, id: &str, now: i64) -> DbResult<()> {
        sqlx::query("UPDATE login_sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Revokes every active sign-in session of the entry `user_id`; their ids.
    pub async fn revoke_user_sessions(&self, user_id: &str, now: i64) -> DbResult<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT id FROM login_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let ids = rows.iter().map(|r| col::<String>(r, "id")).collect::<DbResult<Vec<_>>>()?;
        sqlx::query(
            "UPDATE login_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The active sign-in sessions of the entry `user_id`, newest first.
    pub async fn active_login_sessions(
        &self,
        user_id: &str,
        now: i64,
    ) -> DbResult<Vec<LoginSession>> {
        let rows = sqlx::query(
            "SELECT * FROM login_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
             ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Revokes a sign-in session; returns whether it was active.
    pub async fn revoke_login_session(&self, id: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE login_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The failure counters of `keys` in one query: when the latest lockout among them ends (if
    /// one is in force now), and which keys have a counter at all.
    pub async fn login_failure_state(
        &self,
        keys: &[&str],
        now: i64,
    ) -> DbResult<(Option<i64>, Vec<String>)> {
        let sql = format!(
            "SELECT key, locked_until FROM login_failures WHERE key IN ({})",
            (1..=keys.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in keys {
            q = q.bind(*k);
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut locked: Option<i64> = None;
        let mut present = Vec::new();
        for r in &rows {
            let until: i64 = col(r, "locked_until")?;
            if until > now {
                locked = Some(locked.map_or(until, |l| l.max(until)));
            }
            present.push(col(r, "key")?);
        }
        Ok((locked, present))
    }

    /// Forgets the failure counter of `key` (not a lockout in force).
    pub async fn clear_login_failures(&self, key: &str, now: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1 AND locked_until <= $2")
            .bind(key)
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Counts a failed sign-in against `key`; locks it for `lockout_ms` once `limit` failures fall
    /// within `window_ms`. Returns whether the key is now locked.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        window_ms: i64,
        limit: u32,
        lockout_ms: i64,
    ) -> DbResult<bool> {
        // One atomic upsert counts the failure, so concurrent failures (on any replica) never
        // overwrite each other's count; a count that reaches the limit locks the key and starts
        // over.
        let row = sqlx::query(
            "INSERT INTO login_failures (key, failures, window_start, locked_until) VALUES ($1, 1, $2, 0)
             ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN $2 - login_failures.window_start > $3 THEN 1 ELSE login_failures.failures + 1 END,
               window_start = CASE WHEN $2 - login_failures.window_start > $3 THEN $2 ELSE login_failures.window_start END
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(window_ms)
        .fetch_one(self.pool())
        .await?;
        let failures: i64 = col(&row, "failures")?;
        if failures < i64::from(limit) {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE login_failures SET failures = 0, window_start = $2,
               locked_until = CASE WHEN locked_until > $3 THEN locked_until ELSE $3 END
             WHERE key = $1",
        )
        .bind(key)
        .bind(now)
        .bind(now + lockout_ms)
        .execute(self.pool())
        .await?;
        Ok(true)
    }

    /// Writes the records of several successful sign-ins in one transaction, with one
    /// multi-row statement per table (group commit: concurrent sign-ins share the cost).
    pub async fn write_logins(&self, batch: &[LoginRecord]) -> DbResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Users: one row per username (the last sign-in wins), as ON CONFLICT may touch a row once.
        let mut users: Vec<(&CachedUser, i64)> = Vec::new();
        for r in batch {
            match users.iter_mut().find(|(u, _)| u.username == r.user.username) {
                Some(u) => *u = (&r.user, r.validated_at),
                None => users.push((&r.user, r.validated_at)),
            }
        }
        let sql = format!(
            "INSERT INTO users (username, directory_id, dn, display_name, email, uid_number, gid_number, groups_json, last_login_at, validated_at) VALUES {}
             ON CONFLICT (username) DO UPDATE SET directory_id = excluded.directory_id, dn = excluded.dn,
               display_name = excluded.display_name, email = excluded.email, uid_number = excluded.uid_number,
               gid_number = excluded.gid_number, groups_json = excluded.groups_json, last_login_at = excluded.last_login_at,
               validated_at = excluded.validated_at",
            placeholders(users.len(), 10)
        );
        // A name now given to another entry (deleted and re-created in the directory): the
        // former entry's sign-in sessions end. Its desktops stay its own (they belong to its
        // id) until an administrator removes them. Desktops assigned before the broker kept
        // ids go to the first entry that signs in with their name. Only names whose entry is
        // new to the broker cost anything here: one read for the batch, then nothing.
        let known = format!(
            "SELECT username, directory_id FROM users WHERE username IN ({})",
            (1..=users.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(known));
        for (u, _) in &users {
            q = q.bind(&u.username);
        }
        let mut stored: Vec<(String, Option<String>)> = Vec::new();
        for r in q.fetch_all(&mut *tx).await? {
            stored.push((col(&r, "username")?, col(&r, "directory_id")?));
        }
        for (u, _) in &users {
            let Some(id) = &u.directory_id else { continue };
            let before = stored.iter().find(|(n, _)| *n == u.username).map(|(_, i)| i.as_ref());
            match before {
                Some(Some(old)) if old == id => continue,
                // A first sign-in: no sessions to end, but maybe desktops from before ids.
                None => {}
                // Before ids (None) or another entry: the sessions not of this entry end.
                Some(_) => {
                    sqlx::query(
                        "UPDATE login_sessions SET revoked_at = $3
                         WHERE username = $1 AND revoked_at IS NULL AND (user_id IS NULL OR user_id <> $2)",
                    )
                    .bind(&u.username)
                    .bind(id)
                    .bind(u.last_login_at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // Desktops from before ids belong to directory users; a single sign-on subject
            // never takes them by name.
            if id.starts_with("oidc:") {
                continue;
            }
            // Not where the entry has a desktop of that pool already (one per entry and pool).
            sqlx::query(
                "UPDATE desktops SET owner_id = $2 WHERE username = $1 AND owner_id IS NULL
                   AND NOT EXISTS (SELECT 1 FROM desktops o WHERE o.owner_id = $2
                     AND o.pool_id = desktops.pool_id AND o.state <> 'destroying')",
            )
            .bind(&u.username)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (u, validated_at) in &users {
            q = q
                .bind(&u.username)
                .bind(&u.directory_id)
                .bind(&u.dn)
                .bind(&u.display_name)
                .bind(&u.email)
                .bind(u.uid_number.map(i64::from))
                .bind(u.gid_number.map(i64::from))
                .bind(serde_json::to_string(&u.groups).expect("strings serialize"))
                .bind(u.last_login_at)
                .bind(*validated_at);
        }
        q.execute(&mut *tx).await?;

        let sql = format!(
            "INSERT INTO login_sessions (id, username, user_id, client_addr, created_at, expires_at, last_seen_at, method, mfa, revoked_at) VALUES {}",
            placeholders_with_null(batch.len(), 9)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in batch {
            let s = &r.session;
            q = q
                .bind(&s.id)
                .bind(&s.username)
                .bind(&s.user_id)
                .bind(&s.client_addr)
                .bind(s.created_at)
                .bind(s.expires_at)
                .bind(s.last_seen_at)
                .bind(s.method.as_str())
                .bind(s.mfa.as_str());
        }
        q.execute(&mut *tx).await?;

        let sql = format!(
            "INSERT INTO audit_events (id, at, actor, action, target, outcome, client_addr, details) VALUES {}",
            placeholders(batch.len(), 8)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in batch {
            let e = &r.audit;
            q = q
                .bind(&e.id)
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.target)
                .bind(&e.outcome)
                .bind(&e.client_addr)
                .bind(&e.details);
        }
        q.execute(&mut *tx).await?;

        // Failure counters of the users who signed in are forgotten (not lockouts in force).
        for r in batch {
            if let Some(key) = &r.clear_failures {
                sqlx::query("DELETE FROM login_failures WHERE key = $1 AND locked_until <= $2")
                    .bind(key)
                    .bind(r.session.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets what no longer matters: failure counters whose window and lockout have both
    /// passed (every refused sign-in of a new name or address adds one), and sign-in sessions
    /// expired before `sessions_before`. Returns how many rows went.
    pub async fn prune_logins(
        &self,
        now: i64,
        window_ms: i64,
        sessions_before: i64,
    ) -> DbResult<u64> {
        let mut tx = self.begin_write().await?;
        let failures = sqlx::query(
            "DELETE FROM login_failures WHERE window_start < $1 AND locked_until <= $2",
        )
        .bind(now.saturating_sub(window_ms))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let sessions = sqlx::query("DELETE FROM login_sessions WHERE expires_at < $1")
            .bind(sessions_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(failures.rows_affected() + sessions.rows_affected())
    }
}

/// What a successful sign-in writes.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user: CachedUser,
    pub session: LoginSession,
    pub audit: AuditEvent,
    /// A failure counter to forget.
    pub clear_failures: Option<String>,
    /// When the user's entry counts as read (earlier than the sign-in when it came from the
    /// directory client's cache): revalidation goes from there.
    pub validated_at: i64,
}

/// `($1, $2, ...), ($n+1, ...)` for `rows` rows of `cols` values.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            format!(
                "({})",
                (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Like [`placeholders`], with a trailing `NULL` column in each row.
fn placeholders_with_null(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            format!(
                "({}, NULL)",
                (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Group commit of sign-ins: concurrent sign-ins queue their records, and one task writes
/// whatever has queued in a single transaction. A sign-in returns once its batch committed.
#[derive(Debug, Clone)]
pub struct LoginWriter {
    tx: tokio::sync::mpsc::Sender<(LoginRecord, tokio::sync::oneshot::Sender<Result<(), String>>)>,
}

/// Most sign-ins written in one transaction.
const BATCH_MAX: usize = 128;

impl LoginWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(db: Db) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(
            LoginRecord,
            tokio::sync::oneshot::Sender<Result<(), String>>,
        )>(4096);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let records: Vec<LoginRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
                let result = db.write_logins(&records).await.map_err(|e| e.to_string());
                for (_, done) in batch {
                    let _ = done.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Queues a sign-in's records and waits until they are committed.
    pub async fn write(&self, record: LoginRecord) -> DbResult<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send((record, done))
            .await
            .map_err(|_| DbError::Corrupt("the sign-in writer stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DbError::Corrupt(format!("writing the sign-in: {e}"))),
            Err(_) => Err(DbError::Corrupt("the sign-in writer stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders_with_null(1, 2), "($1, $2, NULL)");
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[tokio::test]
    async fn failures_count_up_to_a_lockout() {
        let dir = std::env::temp_dir().join(format!("atrium-lf-{}", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}/b.db", dir.display()), 4).await.unwrap();
        let keys = ["user:x", "addr:1.2.3.4"];
        for i in 1..=3 {
            let locked =
                db.record_login_failure("addr:1.2.3.4", 1000 + i, 60_000, 4, 60_000).await.unwrap();
            assert!(!locked, "locked after {i}");
        }
        assert!(db.record_login_failure("addr:1.2.3.4", 1004, 60_000, 4, 60_000).await.unwrap());
        let (locked, present) = db.login_failure_state(&keys, 1005).await.unwrap();
        assert_eq!(locked, Some(61_004));
        assert_eq!(present, vec!["addr:1.2.3.4".to_owned()]);
        // A new window starts over.
        assert!(!db.record_login_failure("user:x", 1000, 10, 2, 60_000).await.unwrap());
        assert!(!db.record_login_failure("user:x", 2000, 10, 2, 60_000).await.unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn counters_out_of_their_window_and_lockout_are_pruned() {
        let dir = std::env::temp_dir().join(format!("atrium-lf-{}", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}/b.db", dir.display()), 4).await.unwrap();
        let keys = ["user:old", "addr:9.9.9.9"];
        // A failure long ago, and a lockout still in force from a failure just as old.
        db.record_login_failure("user:old", 1000, 60_000, 5, 600_000).await.unwrap();
        assert!(db.record_login_failure("addr:9.9.9.9", 1000, 60_000, 1, 600_000).await.unwrap());
        let now = 200_000;
        assert_eq!(db.prune_logins(now, 60_000, 0).await.unwrap(), 1, "the stale counter only");
        let (locked, present) = db.login_failure_state(&keys, now).await.unwrap();
        assert_eq!(locked, Some(601_000), "the lockout in force stays");
        assert_eq!(present, vec!["addr:9.9.9.9".to_owned()]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn record(username: &str, id: &str, sid: &str, now: i64) -> LoginRecord {
        let user = CachedUser {
            username: username.into(),
            directory_id: Some(id.into()),
            dn: format!("uid={username},dc=x"),
            display_name: None,
            email: None,
            uid_number: None,
            gid_number: None,
            groups: Vec::new(),
            last_login_at: now,
        };
        let session = LoginSession {
            id: sid.into(),
            username: username.into(),
            user_id: Some(id.into()),
            client_addr: "127.0.0.1".into(),
            created_at: now,
            expires_at: now + 60_000,
            last_seen_at: now,
            revoked_at: None,
            method: SignInMethod::Password,
            mfa: crate::db::MfaState::None,
        };
        let audit = AuditEvent::now(
            username,
            "login",
            username,
            "success",
            "127.0.0.1".into(),
            &serde_json::json!({}),
        );
        LoginRecord { user, session, audit, clear_failures: None, validated_at: now }
    }

    async fn desktop(db: &Db, id: &str, username: &str, owner: Option<&str>) {
        sqlx::query(
            "INSERT INTO desktops (id, pool_id, state, username, owner_id, memory_mib, vcpus, created_at,
               last_active_at, state_changed_at) VALUES ($1, 'p', 'stopped', $2, $3, 512, 1, 0, 0, 0)",
        )
        .bind(id)
        .bind(username)
        .bind(owner)
        .execute(db.pool())
        .await
        .unwrap();
    }

    async fn owner(db: &Db, id: &str) -> Option<String> {
        db.get_desktop(id).await.unwrap().unwrap().owner_id
    }

    #[tokio::test]
    async fn a_name_taken_by_another_entry_ends_the_old_sessions_and_keeps_its_desktops() {
        let dir = std::env::temp_dir().join(format!("atrium-id-{}", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}/b.db", dir.display()), 4).await.unwrap();
        // From before the broker kept ids: a desktop with a name and no owner.
        desktop(&db, "d-legacy", "alice", None).await;
        db.write_logins(&[record("alice", "id-1", "s-1", 1000)]).await.unwrap();
        assert_eq!(owner(&db, "d-legacy").await.as_deref(), Some("id-1"), "adopted at sign-in");
        assert!(db.get_login_session("s-1").await.unwrap().unwrap().is_active(1001));

        // The entry is deleted and the name given to another: its first sign-in ends the old
        // entry's sessions, and the old entry's desktop stays the old entry's.
        db.write_logins(&[record("alice", "id-2", "s-2", 2000)]).await.unwrap();
        assert!(!db.get_login_session("s-1").await.unwrap().unwrap().is_active(2001));
        assert!(db.get_login_session("s-2").await.unwrap().unwrap().is_active(2001));
        assert_eq!(owner(&db, "d-legacy").await.as_deref(), Some("id-1"));
        assert!(db.user_desktops("id-2").await.unwrap().is_empty());
        assert_eq!(db.user_desktops("id-1").await.unwrap().len(), 1);
        let (_, user) = db.get_login_with_user("s-2").await.unwrap().unwrap();
        assert_eq!(user.directory_id.as_deref(), Some("id-2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
