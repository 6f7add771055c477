-- 0008: when each user's directory entry was last read (at sign-in, or checked again while
-- they are signed in, at most every `ldap.revalidate_secs`). Users whose entry was deleted,
-- disabled or replaced lose their sessions; users whose groups changed lose what the groups
-- granted.
ALTER TABLE users ADD COLUMN validated_at BIGINT NOT NULL DEFAULT 0;
UPDATE users SET validated_at = last_login_at;
CREATE INDEX users_validated ON users (validated_at);
