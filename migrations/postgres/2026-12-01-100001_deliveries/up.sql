-- The record of what is owed (DESIGN.md 5.8 "queue loss"): one row per email (code, reset link,
-- notice) and per webhook delivery, written in the transaction of what it announces. The job
-- queue only carries delivery ids; a sweep re-queues rows that are due and not in flight.
-- A mail row keeps its message sealed (payload, AEAD under the server key, AAD
-- "delivery:<id>"); a webhook row points at its audit event and endpoint instead.
-- Replaces mail_deliveries (its rows carried no message and cannot be delivered any more).
DROP TABLE mail_deliveries;

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    payload BYTEA,
    expires_at BIGINT,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    webhook_id TEXT,
    event_id TEXT,
    last_status INTEGER,
    last_error TEXT,
    delivered_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- The sweep's question: which open deliveries are due?
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX deliveries_finished ON deliveries (updated_at) WHERE state IN ('sent', 'dropped', 'failed');
