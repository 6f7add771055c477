-- 0001: the broker's initial schema. Portable SQL: it runs unchanged on SQLite and PostgreSQL.
-- Times are milliseconds since the Unix epoch (BIGINT); ids are UUID strings; flags are BIGINT 0/1.

-- A cache of directory attributes, refreshed at each sign-in. The directory stays the authority.
CREATE TABLE users (
    username        TEXT PRIMARY KEY,
    dn              TEXT NOT NULL,
    display_name    TEXT,
    email           TEXT,
    uid_number      BIGINT,
    gid_number      BIGINT,
    groups_json     TEXT NOT NULL,
    last_login_at   BIGINT NOT NULL
);

-- Desktop pools: what a desktop is made of and how many are kept.
CREATE TABLE pools (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    description         TEXT NOT NULL,
    image               TEXT NOT NULL,
    vcpus               BIGINT NOT NULL,
    memory_mib          BIGINT NOT NULL,
    display             TEXT NOT NULL,
    runtime             TEXT,
    kind                TEXT NOT NULL CHECK (kind IN ('floating', 'dedicated')),
    min_ready           BIGINT NOT NULL,
    max_size            BIGINT NOT NULL,
    idle_timeout_secs   BIGINT NOT NULL,
    max_session_secs    BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- Node agents, registered by heartbeat.
CREATE TABLE nodes (
    id                  TEXT PRIMARY KEY,
    api_url             TEXT NOT NULL,
    display_url         TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('up', 'lost')),
    draining            BIGINT NOT NULL DEFAULT 0,
    capacity_json       TEXT NOT NULL,
    registered_at       BIGINT NOT NULL,
    last_heartbeat_at   BIGINT NOT NULL
);

-- Desktops: one VM each (vm_id is set once the node accepted it).
-- state: provisioning (asked of a node), starting (VM booting), ready, stopped (dedicated,
-- VM gone, disk kept), failed, destroying (being removed from its node).
CREATE TABLE desktops (
    id                  TEXT PRIMARY KEY,
    pool_id             TEXT NOT NULL,
    node_id             TEXT,
    vm_id               TEXT,
    state               TEXT NOT NULL CHECK (state IN ('provisioning', 'starting', 'ready', 'stopped', 'failed', 'destroying')),
    username            TEXT,
    persistent_disk     TEXT,
    -- The user the guest agent was last told about (sent when an assigned desktop is ready).
    agent_user          TEXT,
    memory_mib          BIGINT NOT NULL,
    vcpus               BIGINT NOT NULL,
    error               TEXT,
    created_at          BIGINT NOT NULL,
    ready_at            BIGINT,
    assigned_at         BIGINT,
    last_active_at      BIGINT NOT NULL,
    state_changed_at    BIGINT NOT NULL
);
CREATE INDEX desktops_pool_state ON desktops (pool_id, state);
CREATE INDEX desktops_node ON desktops (node_id);
-- One desktop per user per pool: a second assignment of the same user fails on this index.
CREATE UNIQUE INDEX desktops_user_pool ON desktops (username, pool_id) WHERE username IS NOT NULL AND state <> 'destroying';
-- One VM is never two desktops.
CREATE UNIQUE INDEX desktops_vm ON desktops (node_id, vm_id) WHERE vm_id IS NOT NULL;

-- Sign-in sessions (the session cookie names one). Revoked at sign-out.
CREATE TABLE login_sessions (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    client_addr     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    revoked_at      BIGINT
);
CREATE INDEX login_sessions_user ON login_sessions (username);

-- Desktop sessions: a user using a desktop, from connect to its end.
CREATE TABLE desktop_sessions (
    id                  TEXT PRIMARY KEY,
    desktop_id          TEXT NOT NULL,
    login_session_id    TEXT NOT NULL,
    username            TEXT NOT NULL,
    pool_id             TEXT NOT NULL,
    node_id             TEXT,
    client_addr         TEXT NOT NULL,
    started_at          BIGINT NOT NULL,
    last_active_at      BIGINT NOT NULL,
    ended_at            BIGINT,
    end_reason          TEXT
);
CREATE INDEX desktop_sessions_open ON desktop_sessions (ended_at, desktop_id);
CREATE INDEX desktop_sessions_user ON desktop_sessions (username);

-- Failed sign-ins, per username (key 'user:<name>') and per client address ('addr:<ip>').
CREATE TABLE login_failures (
    key             TEXT PRIMARY KEY,
    failures        BIGINT NOT NULL,
    window_start    BIGINT NOT NULL,
    locked_until    BIGINT NOT NULL
);

-- Audit log: who did what, when, from where. Append-only.
CREATE TABLE audit_events (
    id              TEXT PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    client_addr     TEXT NOT NULL,
    details         TEXT NOT NULL
);
CREATE INDEX audit_at ON audit_events (at);
CREATE INDEX audit_actor ON audit_events (actor, at);
CREATE INDEX audit_action ON audit_events (action, at);
