-- Webhook endpoints of a tenant (DESIGN.md 5.6). events: '*' or ',kind,kind,' (a kind is
-- found as ',kind,'). secret_sealed: the signing secret, sealed under the server key (AAD
-- "webhook-secret:<id>"); shown only at creation and rotation.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    secret_sealed BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, id);
-- One delivery per (audit event, endpoint); the endpoint's delivery list, newest event first.
CREATE UNIQUE INDEX deliveries_webhook_event ON deliveries (webhook_id, event_id);
