-- Instant clones: a pool's desktops may start as clones of a node's template (no boot), and
-- each desktop records the image version its VM runs and whether it was cloned.
ALTER TABLE pools ADD COLUMN clone_desktops BIGINT NOT NULL DEFAULT 0;
ALTER TABLE desktops ADD COLUMN image TEXT;
ALTER TABLE desktops ADD COLUMN cloned BIGINT NOT NULL DEFAULT 0;
