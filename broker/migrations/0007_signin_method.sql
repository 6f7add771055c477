-- 0007: how a sign-in session was made: `password` (the directory checked a password) or
-- `oidc` (an OpenID provider vouched for the user). Sign-out of an `oidc` session can also end
-- the user's session at the provider.
ALTER TABLE login_sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'password';
