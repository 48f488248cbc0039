-- What an idle sandbox does when its timeout passes: 'pause' (default) or 'kill'.
ALTER TABLE sandboxes ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'pause' CHECK (on_timeout IN ('pause', 'kill'));
-- The base templates an agent reported in its last heartbeat (JSON array of names).
ALTER TABLE hosts ADD COLUMN templates TEXT NOT NULL DEFAULT '[]';
-- Snapshot and uploaded templates: where the sandbox came from.
ALTER TABLE templates ADD COLUMN source_sandbox_id TEXT;
ALTER TABLE templates ADD COLUMN created_by TEXT;
-- How the sandbox's VM started: 'cold' or 'snapshot'.
ALTER TABLE sandboxes ADD COLUMN boot_kind TEXT;
