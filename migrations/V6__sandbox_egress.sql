-- A sandbox's egress policy (SPEC §13) as JSON {internet, allow_out, deny_out}; NULL for
-- sandboxes without a network device and for those made before policies existed (default policy).
ALTER TABLE sandboxes ADD COLUMN egress TEXT;
