-- Session time limits that mean what users think.
-- A pool's disconnect time: how long a desktop is kept for its user while nobody is connected
-- to it (the tab closed, the user disconnected or went idle) before it is logged off (a
-- floating desktop recycled, a dedicated one stopped with its disk kept).
ALTER TABLE pools ADD COLUMN disconnect_timeout_secs BIGINT NOT NULL DEFAULT 1800;
-- Since when the display proxy has said that none of the session user's viewers is connected
-- (NULL: connected, or not known). A session's last_active_at is now its last keyboard or
-- pointer input as the proxy saw it (or its connect).
ALTER TABLE desktop_sessions ADD COLUMN disconnected_at BIGINT;
