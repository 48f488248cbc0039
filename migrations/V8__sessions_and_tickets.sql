-- Sessions behind user tokens (revocable), and one-time tickets (download links, the OAuth
-- hand-off) that work once.

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    -- How the session began: 'password', 'signup' or 'github'.
    method       TEXT NOT NULL,
    user_agent   TEXT,
    ip           TEXT
);
CREATE INDEX sessions_user ON sessions(user_id, ended_at);

CREATE TABLE tickets (
    ticket_hash TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL CHECK (purpose IN ('download', 'oauth_handoff')),
    user_id     TEXT NOT NULL REFERENCES users(id),
    -- The session that asked (a download link); the OAuth hand-off starts one when redeemed.
    session_id  TEXT REFERENCES sessions(id),
    team_id     TEXT,
    sandbox_id  TEXT,
    path        TEXT,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX tickets_expiry ON tickets(expires_at);
