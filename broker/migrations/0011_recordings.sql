-- 0011: session recordings. A recording is one viewer's display stream, opened when the broker
-- mints a ticket that policy records. Its chunks are files in the recordings folder; each is
-- kept here by its SHA-256 and its link in the recording's hash chain (`head` is the last
-- link), so a chunk changed, removed or reordered in the folder shows. `keys` lists the
-- chunk's key frames as JSON [[t_ms, offset], ...]. `input` is 0 or 1; `state` is
-- `recording`, `complete` or `incomplete`.
CREATE TABLE recordings (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    desktop_id    TEXT NOT NULL,
    username      TEXT NOT NULL,
    pool          TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    vm_id         TEXT NOT NULL,
    input         BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    ended_at      BIGINT,
    state         TEXT NOT NULL,
    chunks        BIGINT NOT NULL DEFAULT 0,
    bytes         BIGINT NOT NULL DEFAULT 0,
    duration_ms   BIGINT NOT NULL DEFAULT 0,
    head          TEXT NOT NULL
);
CREATE INDEX recordings_started ON recordings (started_at);
CREATE INDEX recordings_user ON recordings (username, started_at);
CREATE TABLE recording_chunks (
    recording_id  TEXT NOT NULL,
    n             BIGINT NOT NULL,
    t_first       BIGINT NOT NULL,
    t_last        BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    link          TEXT NOT NULL,
    keys          TEXT NOT NULL,
    PRIMARY KEY (recording_id, n)
);
