-- Sandbox ports (SPEC §13): private by default (the sandbox's access token or a team credential
-- is needed); `public_ports` at create opens them to anyone who knows the address.
ALTER TABLE sandboxes ADD COLUMN public_ports INTEGER NOT NULL DEFAULT 0;
