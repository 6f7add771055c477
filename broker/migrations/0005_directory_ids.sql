-- 0005: users are their directory entry, not their name. The entry's stable id
-- (`ldap.id_attribute`: entryUUID, objectGUID, ...) is kept with the user, with each sign-in
-- session, and with each desktop (and so its home disk): a username deleted and re-created in
-- the directory names a new entry, which gets none of the old one's desktops or sessions.
-- Sessions made before this have no id and are no longer honoured (users sign in again);
-- desktops assigned before it go to the first entry that signs in with their owner's name.
ALTER TABLE users ADD COLUMN directory_id TEXT;
ALTER TABLE login_sessions ADD COLUMN user_id TEXT;
ALTER TABLE desktops ADD COLUMN owner_id TEXT;
-- One desktop per entry and pool (it was per username, which two entries can have in turn).
DROP INDEX desktops_user_pool;
CREATE UNIQUE INDEX desktops_owner_pool ON desktops (owner_id, pool_id) WHERE owner_id IS NOT NULL AND state <> 'destroying';
-- Desktops from before ids, found by name at their owner's next sign-in.
CREATE INDEX desktops_unowned ON desktops (username) WHERE owner_id IS NULL;
