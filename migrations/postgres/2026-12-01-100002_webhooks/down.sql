DROP INDEX deliveries_webhook_event;
DROP TABLE webhooks;
