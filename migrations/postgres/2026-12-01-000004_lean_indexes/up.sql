-- Issue 17: ending a challenge is a HOT update (no index holds ended_at); sessions keep
-- only the indexes their queries need (token hash, user, expiry).
DROP INDEX challenges_tenant_open;
CREATE INDEX challenges_expiry ON challenges (expires_at);
-- Room on each page for the one update a challenge gets, so that it stays on its page.
ALTER TABLE challenges SET (fillfactor = 80);
DROP INDEX sessions_tenant;
CREATE INDEX sessions_expiry ON sessions (expires_at);
