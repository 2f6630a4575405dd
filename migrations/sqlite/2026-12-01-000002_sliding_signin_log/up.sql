-- Password attempts become a sliding log: the instants (Unix ms, comma-separated) of the
-- latest attempts, at most the limit of them (DESIGN.md "Accounts": the window slides). One
-- row per subject, keyed by a keyed hash of what is counted: a user of a tenant, an unknown
-- address of a tenant, or an unknown tenant slug and address (tenant_id NULL), so that all
-- of them hold across processes and restarts and unknown tenants answer like known ones.
-- The counts of the old fixed windows are dropped: they lasted at most one window.
DROP TABLE signin_failures;
CREATE TABLE signin_attempts (
    key_hash BLOB PRIMARY KEY NOT NULL,
    tenant_id TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    attempts TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX signin_attempts_updated ON signin_attempts (updated_at);
