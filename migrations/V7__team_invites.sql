-- Team invites (SPEC §15): a one-time link a team's owner or admin (or a platform admin) makes; the
-- person who accepts it, signing up or already signed in, joins the team with its role. Only the
-- token's SHA-256 is kept. An invite is pending until used, revoked or past expires_at.
CREATE TABLE team_invites (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_by TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by TEXT REFERENCES users(id),
    used_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX team_invites_team ON team_invites(team_id);
