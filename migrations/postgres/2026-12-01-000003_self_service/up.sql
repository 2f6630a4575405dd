-- Self-service second factors (DESIGN.md 5.2-5.5).

-- Recovery codes: one row per code of the user's current set, stored only as a keyed hash of
-- the normalised code bound to the user; a new set replaces the old one.
CREATE TABLE recovery_codes (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE UNIQUE INDEX recovery_codes_user_hash ON recovery_codes (user_id, code_hash);

-- Trusted devices ("remember this device"): a token per device, stored only as a keyed hash.
CREATE TABLE trusted_devices (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    user_agent TEXT,
    ip TEXT
);
CREATE INDEX trusted_devices_user ON trusted_devices (user_id);
CREATE INDEX trusted_devices_tenant ON trusted_devices (tenant_id);

-- When the user was first asked to enroll (the start of his grace period), and whether his
-- preferred method is his own choice (then a verification with another method keeps it).
ALTER TABLE users ADD COLUMN enroll_asked_at BIGINT;
ALTER TABLE users ADD COLUMN preferred_chosen BOOLEAN NOT NULL DEFAULT FALSE;

-- When a method was last used to verify.
ALTER TABLE enrollments ADD COLUMN last_used_at BIGINT;
