-- Passkeys and security keys: the method `webauthn` (DESIGN.md 5.1).

-- A user's WebAuthn credentials (at most LATCHKEY_WEBAUTHN_MAX_CREDENTIALS each). The id is
-- the credential id in base64url without padding, unique within a tenant (a tenant has one
-- relying party). `credential` is webauthn-rs's record of it as JSON (public key, flags,
-- registration policy: no secret); `sign_count` is the last signature counter accepted,
-- moved only forward by a conditional update.
CREATE TABLE webauthn_credentials (
    tenant_id TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    credential TEXT NOT NULL,
    sign_count BIGINT NOT NULL,
    transports TEXT NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    PRIMARY KEY (tenant_id, credential_id)
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- The WebAuthn user handle (`user.id` of the creation options) of a user: random bytes in
-- base64url, never the email or the user id; kept across registrations and resets.
CREATE TABLE webauthn_handles (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    handle TEXT NOT NULL
);
CREATE UNIQUE INDEX webauthn_handles_tenant_handle ON webauthn_handles (tenant_id, handle);

-- The ceremony state of a registration or authentication on a challenge (webauthn-rs's
-- state, sealed with the server key, AAD webauthn-ceremony:<challenge id>); taken once.
ALTER TABLE challenges ADD COLUMN ceremony BLOB;

-- Passwordless sign-in ceremonies (POST /api/v1/auth/passkey/start): the passkey_token
-- stored only as a keyed hash, the state sealed (AAD passkey-ceremony:<id>), single-use.
CREATE TABLE passkey_ceremonies (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    state BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX passkey_ceremonies_expires ON passkey_ceremonies (expires_at);
