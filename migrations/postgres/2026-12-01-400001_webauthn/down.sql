DROP TABLE passkey_ceremonies;
ALTER TABLE challenges DROP COLUMN ceremony;
DROP TABLE webauthn_handles;
DROP TABLE webauthn_credentials;
