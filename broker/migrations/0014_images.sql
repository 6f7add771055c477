-- 0014: the image library. An administrator uploads a disk image; its bytes are a file in the
-- images folder (`file`, a name unique to this upload), kept here with its SHA-256 and the
-- settings every node imports it with. `secure_boot`, `tpm` and `agent` are 0 or 1; `format`
-- is NULL when the nodes read it from the file. A removed image keeps its row (`deleted_at`
-- set, its file gone), so its name and version are never given to other bytes: nodes know an
-- image by them.
CREATE TABLE images (
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    file            TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    format          TEXT,
    firmware        TEXT NOT NULL,
    secure_boot     BIGINT NOT NULL,
    tpm             BIGINT NOT NULL,
    agent           BIGINT NOT NULL,
    min_memory_mib  BIGINT NOT NULL,
    uploaded_by     TEXT NOT NULL,
    uploaded_at     BIGINT NOT NULL,
    deleted_at      BIGINT,
    PRIMARY KEY (name, version)
);
