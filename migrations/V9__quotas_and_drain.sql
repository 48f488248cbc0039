-- Per-team quota overrides set by a platform admin (SPEC §15). A NULL column keeps the server's
-- default (--team-quota) for that resource.
CREATE TABLE team_quotas (
    team_id    TEXT PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
    sandboxes  INTEGER CHECK (sandboxes IS NULL OR sandboxes >= 0),
    vcpus      INTEGER CHECK (vcpus IS NULL OR vcpus >= 0),
    memory_mb  INTEGER CHECK (memory_mb IS NULL OR memory_mb >= 0),
    updated_by TEXT REFERENCES users(id),
    updated_at INTEGER NOT NULL
);

-- The operator's wish that a host take no new sandboxes, kept apart from its status: a draining
-- host whose heartbeats stop becomes unreachable like any other, and comes back draining.
ALTER TABLE hosts ADD COLUMN drain INTEGER NOT NULL DEFAULT 0;
UPDATE hosts SET drain = 1 WHERE status = 'draining';
