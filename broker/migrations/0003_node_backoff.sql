-- 0003: a node that refuses to create a VM is left alone for a while (a back-off that grows
-- with each refusal in a row, reset by the next VM it accepts), so a full node costs one
-- refusal and a pause, not a provisioning loop.
ALTER TABLE nodes ADD COLUMN refusals BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN refused_until BIGINT NOT NULL DEFAULT 0;
