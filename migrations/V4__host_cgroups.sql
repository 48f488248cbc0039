-- How the host's agent puts VMs in cgroups ("v2 PATH: cpu memory pids" or "none: why").
ALTER TABLE hosts ADD COLUMN cgroups TEXT;
