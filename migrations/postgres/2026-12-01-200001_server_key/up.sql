-- The check value of the server key (DESIGN.md 5.8): one row, written on the first start.
-- check_value = HMAC-SHA256 of a fixed label under the key; fingerprint = hex of its first
-- 8 bytes (also the key id in sealed values). A process whose key gives another check value
-- refuses to start; a rotation (the stored key given as a previous key) moves the row to the
-- new key.
CREATE TABLE server_key (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    check_value BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
