-- An absolute deadline beside the idle timeout (E2B's `timeout` is an end time, not idleness):
-- when `end_at` (Unix seconds) passes, a running sandbox is paused or killed as its `on_timeout`
-- says. NULL: no deadline.
ALTER TABLE sandboxes ADD COLUMN end_at INTEGER;
CREATE INDEX sandboxes_end_at ON sandboxes (end_at) WHERE end_at IS NOT NULL;
