-- Host JWTs carry the host's token generation; bumping it (on refresh-token reuse) voids them all.
ALTER TABLE hosts ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
