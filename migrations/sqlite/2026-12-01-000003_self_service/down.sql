ALTER TABLE enrollments DROP COLUMN last_used_at;
ALTER TABLE users DROP COLUMN preferred_chosen;
ALTER TABLE users DROP COLUMN enroll_asked_at;
DROP TABLE trusted_devices;
DROP TABLE recovery_codes;
