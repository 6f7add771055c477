//! MFA enrolments and recovery codes, and a sign-in session's second-factor state.

use super::{Db, DbResult, col};

/// A user's TOTP enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaEnrolment {
    pub user_id: String,
    pub secret_sealed: String,
    pub created_at: i64,
    /// `None` until the user typed a first code.
    pub confirmed_at: Option<i64>,
    pub last_step: i64,
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
            "pending" => Self::Pending,
            // Anything unknown is treated as not passed.
            _ => Self::None,
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
                created_at: col(&r, "created_at")?,
                confirmed_at: col(&r, "confirmed_at")?,
                last_step: col(&r, "last_step")?,
            })
        })
        .transpose()
    }

    /// Starts an enrolment (replacing one not yet confirmed); `false` when a confirmed one
    /// exists (it is replaced only after an administrator's reset or by the user who passed
    /// it: see [`Db::reset_mfa`]).
    pub async fn start_mfa(&self, user_id: &str, sealed: &str, now: i64) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mfa_enrolments WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "INSERT INTO mfa_enrolments (user_id, secret_sealed, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Confirms an enrolment with the step of its first code and stores the recovery codes'
    /// hashes; `false` when there was nothing to confirm.
    pub async fn confirm_mfa(
        &self,
        user_id: &str,
        step: i64,
        recovery_hashes: &[String],
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE mfa_enrolments SET confirmed_at = $2, last_step = $3
             WHERE user_id = $1 AND confirmed_at IS NULL",
        )
        .bind(user_id)
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
             WHERE user_id = $1 AND confirmed_at IS NOT NULL AND last_step < $2",
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

    /// Sets a sign-in session's second-factor state.
    pub async fn set_session_mfa(&self, sid: &str, state: MfaState) -> DbResult<()> {
        sqlx::query("UPDATE login_sessions SET mfa = $2 WHERE id = $1")
            .bind(sid)
            .bind(state.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
