-- 0010: a second factor. Each user (by the directory entry's stable id) may have one TOTP
-- enrolment: its secret sealed with a key outside the database, when it was confirmed, and the
-- last time step used (a code is taken once). Recovery codes are kept as SHA-256 hashes, each
-- deleted when used. A sign-in session records whether it passed the second factor: `none`
-- (not asked), `pending` (asked, not passed yet: only the MFA endpoints answer), `verified`.
CREATE TABLE mfa_enrolments (
    user_id        TEXT PRIMARY KEY,
    secret_sealed  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    confirmed_at   BIGINT,
    last_step      BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE mfa_recovery_codes (
    user_id    TEXT NOT NULL,
    code_hash  TEXT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
ALTER TABLE login_sessions ADD COLUMN mfa TEXT NOT NULL DEFAULT 'none';
