-- 0010: a second factor. Each user (by the directory entry's stable id) may have one TOTP
-- secret in force (sealed with a key outside the database), confirmed with a first code, and
-- the last time step used (a code is taken once); a replacement being set up waits beside it
-- (`pending_sealed`) until its own first code, so the secret in force stays until then.
-- Recovery codes are kept as SHA-256 hashes, each deleted when used. A sign-in session records
-- whether it passed the second factor: `none` (not asked), `pending` (asked, not passed yet:
-- only the MFA endpoints answer), `verified`.
CREATE TABLE mfa_enrolments (
    user_id         TEXT PRIMARY KEY,
    secret_sealed   TEXT,
    confirmed_at    BIGINT,
    last_step       BIGINT NOT NULL DEFAULT 0,
    pending_sealed  TEXT,
    pending_at      BIGINT
);
CREATE TABLE mfa_recovery_codes (
    user_id    TEXT NOT NULL,
    code_hash  TEXT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
ALTER TABLE login_sessions ADD COLUMN mfa TEXT NOT NULL DEFAULT 'none';
