-- 0009: API tokens for automation. An administrator creates a named token with a scope (`read`:
-- the admin API's reads; `admin`: all of it) and an expiry; it is shown once and kept only as
-- the SHA-256 of its secret part. Revoked tokens are kept (their uses stay in the audit log).
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    scope         TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);
