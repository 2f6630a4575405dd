ALTER TABLE tenants DROP COLUMN settings;
