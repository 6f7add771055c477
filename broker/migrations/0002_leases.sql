-- 0002: leases. Shared work that must be done by one broker replica at a time (the reconcile
-- loop) is done by the replica holding its lease. A holder renews its lease on every pass; a
-- lease not renewed by its expiry (the holder died or lost the database) may be taken by
-- another replica.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
