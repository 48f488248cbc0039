-- Team templates may also be images made from an uploaded root filesystem ('image'): SQLite
-- cannot change a CHECK constraint, so the table is rebuilt with the same rows.
CREATE TABLE templates_new (
    id         TEXT PRIMARY KEY,
    team_id    TEXT REFERENCES teams(id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('base', 'snapshot', 'image')),
    host_id    TEXT REFERENCES hosts(id) ON DELETE CASCADE,
    vcpus      INTEGER,
    memory_mb  INTEGER,
    size_bytes INTEGER,
    created_at INTEGER NOT NULL,
    source_sandbox_id TEXT,
    created_by TEXT
);
INSERT INTO templates_new (id, team_id, name, kind, host_id, vcpus, memory_mb, size_bytes, created_at, source_sandbox_id, created_by)
    SELECT id, team_id, name, kind, host_id, vcpus, memory_mb, size_bytes, created_at, source_sandbox_id, created_by FROM templates;
DROP TABLE templates;
ALTER TABLE templates_new RENAME TO templates;
CREATE UNIQUE INDEX templates_name ON templates(ifnull(team_id, ''), name);
