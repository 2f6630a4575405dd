-- Version-2 tenant settings (DESIGN.md 5.8) as one JSON document; a missing field reads as its default.
ALTER TABLE tenants ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
