//! MFA enrolments and recovery codes, and a sign-in session's second-factor state.

use super::{Db, DbResult, col};

/// A user's TOTP enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaEnrolment {
    pub user_id: String,
    /// The secret in force (`None` until a first one was confirmed).
    pub secret_sealed: Option<String>,
    pub confirmed_at: Option<i64>,
    pub last_step: i64,
    /// A secret being set up, until its first code confirms it.
    pub pending_sealed: Option<String>,
}

impl MfaEnrolment {
    /// A confirmed secret is in force.
    pub fn enrolled(&self) -> bool {
        self.secret_sealed.is_some() && self.confirmed_at.is_some()
    }
}

/// Where a sign-in session stands with the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaState {
    /// Policy did not ask for it at sign-in.
    None,
    /// Asked for and not passed yet: only the MFA endpoints answer.
    Pending,
    /// Passed.
    Verified,
}

impl MfaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Verified => "verified",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "verified" => Self::Verified,
            "none" => Self::None,
            // Anything unknown is treated as not passed.
            _ => Self::Pending,
        }
    }
}

impl Db {
    pub async fn get_mfa(&self, user_id: &str) -> DbResult<Option<MfaEnrolment>> {
        let row = sqlx::query("SELECT * FROM mfa_enrolments WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(MfaEnrolment {
                user_id: col(&r, "user_id")?,
                secret_sealed: col(&r, "secret_sealed")?,
                confirmed_at: col(&r, "confirmed_at")?,
                last_step: col(&r, "last_step")?,
                pending_sealed: col(&r, "pending_sealed")?,
            })
        })
        .transpose()
    }

    /// Puts a secret being set up beside the one in force (replacing one being set up before).
    /// Whoever calls it decides who may: the user's first secret, or a replacement by a session
    /// that passed the second factor.
    pub async fn start_mfa(&self, user_id: &str, sealed: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO mfa_enrolments (user_id, pending_sealed, pending_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET pending_sealed = excluded.pending_sealed,
               pending_at = excluded.pending_at",
        )
        .bind(user_id)
        .bind(sealed)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Puts in force the secret being set up, if it still is `sealed` (the one the first code
    /// was checked against), with the step of that code and new recovery codes' hashes;
    /// `false` when it was replaced meanwhile or there was nothing to confirm.
    pub async fn confirm_mfa(
        &self,
        user_id: &str,
        sealed: &str,
        step: i64,
        recovery_hashes: &[String],
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE mfa_enrolments SET secret_sealed = pending_sealed, confirmed_at = $3,
               last_step = $4, pending_sealed = NULL, pending_at = NULL
             WHERE user_id = $1 AND pending_sealed = $2",
        )
        .bind(user_id)
        .bind(sealed)
        .bind(now)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for h in recovery_hashes {
            sqlx::query("INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Takes time step `step` for the user: `true` only the first time a step later than any
    /// used before is taken (so a code is used once, on every replica).
    pub async fn take_mfa_step(&self, user_id: &str, step: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE mfa_enrolments SET last_step = $2
             WHERE user_id = $1 AND secret_sealed IS NOT NULL AND last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Uses a recovery code: `true` when it was one of the user's (it is gone now).
    pub async fn take_recovery_code(&self, user_id: &str, hash: &str) -> DbResult<bool> {
        let r = sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1 AND code_hash = $2")
            .bind(user_id)
            .bind(hash)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Recovery codes the user has left.
    pub async fn recovery_codes_left(&self, user_id: &str) -> DbResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(self.pool())
            .await?;
        col(&row, "n")
    }

    /// Removes the user's enrolment and recovery codes; whether there was one.
    pub async fn reset_mfa(&self, user_id: &str) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("DELETE FROM mfa_enrolments WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records that sign-in session `sid` passed its second factor. A sign-in that owed it
    /// (`pending`, which lasts only the window to pass it) now lasts `lifetime_ms` from its
    /// start. `None` when the session has ended meanwhile (expired or revoked): it passes
    /// nothing. Else the session's end.
    pub async fn pass_session_mfa(
        &self,
        sid: &str,
        now: i64,
        lifetime_ms: i64,
    ) -> DbResult<Option<i64>> {
        let row = sqlx::query(
            "UPDATE login_sessions SET mfa = 'verified',
               expires_at = CASE WHEN mfa = 'pending' THEN created_at + $3 ELSE expires_at END
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2
             RETURNING expires_at",
        )
        .bind(sid)
        .bind(now)
        .bind(lifetime_ms)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| col(&r, "expires_at")).transpose()
    }
}
