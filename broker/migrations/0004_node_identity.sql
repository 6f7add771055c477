-- 0004: each node has its own identity. An administrator creates a one-time, expiring
-- enrolment token (only its SHA-256 is kept); a node enrols with it once and binds its id to
-- its own Ed25519 public key, which then checks every heartbeat. The capacity the node had at
-- enrolment (or what the token allowed) caps what placement believes it has later.
CREATE TABLE node_enrolments (
    id              TEXT PRIMARY KEY,
    token_hash      TEXT NOT NULL UNIQUE,
    node_id         TEXT,
    max_vcpus       BIGINT,
    max_memory_mib  BIGINT,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    used_by         TEXT
);

CREATE TABLE node_credentials (
    node_id         TEXT PRIMARY KEY,
    public_key      TEXT NOT NULL,
    max_vcpus       BIGINT NOT NULL,
    max_memory_mib  BIGINT NOT NULL,
    enrolment_id    TEXT NOT NULL,
    enrolled_at     BIGINT NOT NULL
);
