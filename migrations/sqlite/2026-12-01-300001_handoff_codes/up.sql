-- Hand-off codes of the hosted sign-in (DESIGN.md 5.7): the code K the browser carries to
-- the dashboard, stored only as its keyed hash, single-use (used_at set by one conditional
-- update), short-lived, bound to the PKCE S256 challenge the dashboard sent.
CREATE TABLE handoff_codes (
    code_hash BLOB PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_challenge TEXT NOT NULL,
    second_factor_at BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX handoff_codes_expires ON handoff_codes (expires_at);
