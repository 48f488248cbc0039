-- sandboxctl schema, version 1. Times are Unix seconds (UTC).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    password_hash TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    is_byoc    INTEGER NOT NULL DEFAULT 0,
    deleted_at INTEGER,
    created_at INTEGER NOT NULL
);

CREATE TABLE memberships (
    team_id    TEXT NOT NULL REFERENCES teams(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    is_default INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    team_id      TEXT NOT NULL REFERENCES teams(id),
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_by   TEXT NOT NULL REFERENCES users(id),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE oauth_identities (
    provider         TEXT NOT NULL,
    provider_user_id TEXT NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users(id),
    email            TEXT,
    PRIMARY KEY (provider, provider_user_id)
);

CREATE TABLE hosts (
    id                TEXT PRIMARY KEY,
    type              TEXT NOT NULL CHECK (type IN ('regular', 'byoc')),
    team_id           TEXT REFERENCES teams(id),
    name              TEXT,
    provider          TEXT,
    zone              TEXT,
    arch              TEXT,
    cpu_cores         INTEGER,
    memory_mb         INTEGER,
    disk_gb           INTEGER,
    address           TEXT,
    accel             TEXT,
    accel_reason      TEXT,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'online', 'unreachable', 'draining')),
    last_heartbeat_at INTEGER,
    running_vms       INTEGER,
    used_memory_mb    INTEGER,
    used_vcpus        INTEGER,
    created_by        TEXT REFERENCES users(id),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    CHECK ((type = 'byoc') = (team_id IS NOT NULL))
);

CREATE TABLE host_tags (
    host_id TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (host_id, tag)
);

CREATE TABLE host_registration_tokens (
    id         TEXT PRIMARY KEY,
    host_id    TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    created_by TEXT REFERENCES users(id),
    created_at INTEGER NOT NULL
);

CREATE TABLE host_refresh_tokens (
    id            TEXT PRIMARY KEY,
    host_id       TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    family_id     TEXT NOT NULL,
    parent_id     TEXT,
    token_hash    TEXT NOT NULL UNIQUE,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    superseded_at INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX host_refresh_tokens_family ON host_refresh_tokens(family_id);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY,
    team_id        TEXT NOT NULL REFERENCES teams(id),
    host_id        TEXT REFERENCES hosts(id) ON DELETE SET NULL,
    template       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'starting', 'running', 'paused', 'stopped', 'error', 'missing')),
    vcpus          INTEGER NOT NULL,
    memory_mb      INTEGER NOT NULL,
    timeout_sec    INTEGER NOT NULL,
    network        INTEGER NOT NULL DEFAULT 1,
    metadata       TEXT NOT NULL DEFAULT '{}',
    env            TEXT NOT NULL DEFAULT '{}',
    boot_ms        INTEGER,
    created_by     TEXT,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    last_active_at INTEGER,
    ended_at       INTEGER,
    error          TEXT
);
CREATE INDEX sandboxes_team ON sandboxes(team_id, created_at);
CREATE INDEX sandboxes_host ON sandboxes(host_id, status);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT REFERENCES teams(id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('base', 'snapshot')),
    host_id    TEXT REFERENCES hosts(id) ON DELETE CASCADE,
    vcpus      INTEGER,
    memory_mb  INTEGER,
    size_bytes INTEGER,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX templates_name ON templates(ifnull(team_id, ''), name);

CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    actor      TEXT,
    action     TEXT NOT NULL,
    target     TEXT,
    detail     TEXT,
    created_at INTEGER NOT NULL
);
