-- 0006: a node's signed requests are spent once. The broker keeps the id (`jti`) of every
-- request a node signed until the request has expired; the same request again (a heartbeat
-- captured and replayed) is refused, whichever replica it reaches.
CREATE TABLE node_request_ids (
    node_id     TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (node_id, jti)
);
CREATE INDEX node_request_ids_expiry ON node_request_ids (expires_at);
