-- Latchkey schema (Postgres). Timestamps are Unix milliseconds (BIGINT); ids are UUIDv7 text;
-- tokens and codes are stored only as keyed hashes (BYTEA); secrets only sealed (BYTEA).
CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    two_factor_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    methods_admin INTEGER NOT NULL DEFAULT 3,
    methods_supervisor INTEGER NOT NULL DEFAULT 3,
    methods_agent INTEGER NOT NULL DEFAULT 3,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    preferred_method TEXT,
    otp_failures INTEGER NOT NULL DEFAULT 0,
    otp_blocked_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE signin_failures (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    failures INTEGER NOT NULL,
    window_started_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);

CREATE TABLE enrollments (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    secret_sealed BYTEA,
    last_step BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, method)
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    second_factor_at BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_tenant ON sessions (tenant_id);

CREATE TABLE challenges (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    next_action TEXT NOT NULL,
    methods INTEGER NOT NULL,
    session_id TEXT,
    pending_secret BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX challenges_user ON challenges (user_id);
CREATE INDEX challenges_tenant_open ON challenges (tenant_id, ended_at);

CREATE TABLE email_codes (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    challenge_id TEXT NOT NULL,
    code_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    voided_at BIGINT
);
CREATE INDEX email_codes_user ON email_codes (user_id, created_at);
CREATE INDEX email_codes_challenge ON email_codes (challenge_id);

CREATE TABLE reset_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    voided_at BIGINT
);
CREATE INDEX reset_tokens_user ON reset_tokens (user_id, created_at);

CREATE TABLE mail_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE recovery_requests (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    ip TEXT,
    user_agent TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT
);
CREATE INDEX recovery_requests_tenant ON recovery_requests (tenant_id, status, id);
CREATE UNIQUE INDEX recovery_requests_one_pending ON recovery_requests (user_id) WHERE status = 'pending';

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor_id TEXT,
    subject_id TEXT,
    kind TEXT NOT NULL,
    ip TEXT,
    user_agent TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
