DROP INDEX sessions_expiry;
CREATE INDEX sessions_tenant ON sessions (tenant_id);
DROP INDEX challenges_expiry;
CREATE INDEX challenges_tenant_open ON challenges (tenant_id, ended_at);
