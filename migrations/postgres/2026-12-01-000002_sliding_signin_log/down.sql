DROP TABLE signin_attempts;
CREATE TABLE signin_failures (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    failures INTEGER NOT NULL,
    window_started_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
