#!/usr/bin/env bash
# Regenerates every measured section of BENCHMARKS.md in one run, on a release build:
#
#   scripts/benchmarks.sh                 # all three: bench, bench --density, bench server
#   DENSITY=30 scripts/benchmarks.sh      # density target (default 100: the issue's target)
#   ONLY=server scripts/benchmarks.sh     # one of: bench, density, server
#
# It builds `cargo build --release` (unless BIN=path is given), starts a server with a local agent
# on a temporary data dir and free ports (127.0.0.1), logs in as its admin, runs the benches
# against it, and stops it; `bench server` starts its own server. Needs the guest kernel and QEMU
# (`./install.sh --deps`) for `bench` and `bench --density`. Text outside the generated
# sections (between `<!-- NAME:begin -->` and `<!-- NAME:end -->`) is kept.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$here/BENCHMARKS.md}
density=${DENSITY:-100}
only=${ONLY:-}
case "$only" in ""|bench|density|server) ;; *) echo "benchmarks.sh: ONLY must be bench, density or server" >&2; exit 2;; esac

if [ -z "${BIN:-}" ]; then
  (cd "$here" && cargo build --release --quiet)
  BIN=$here/target/release/sandboxctl
fi
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

if want bench || want density; then
  work=$(mktemp -d)
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  api=$(port); agent=$(port)
  # The density target (100 idle 256 MB sandboxes on 2 cores and 24 GiB) needs the scheduler to
  # promise more vCPUs and memory than the host has (idle sandboxes share their template's pages).
  "$BIN" server --listen "127.0.0.1:$api" --data-dir "$work/data" --local-agent \
    --local-agent-listen "127.0.0.1:$agent" --vcpu-overcommit 64 --memory-overcommit 150 \
    >"$work/server.log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
  export SANDBOXCTL_CONFIG=$work/cli.toml
  for _ in $(seq 120); do
    [ -s "$work/data/admin-password" ] && curl -fsS "http://127.0.0.1:$api/healthz" >/dev/null 2>&1 && break
    sleep 1
  done
  "$BIN" login --server "http://127.0.0.1:$api" --email admin@sandboxctl.local --password-stdin \
    <"$work/data/admin-password"
  # The local agent is ready once it is online with the `minimal` template built.
  for _ in $(seq 600); do
    "$BIN" host list --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if any(h["status"] == "online" and "minimal" in h.get("templates", []) for h in json.load(sys.stdin)) else 1)' && break
    sleep 1
  done
  if want bench; then
    "$BIN" bench --runs 10 --concurrency 10 --agent-data-dir "$work/data/agent" --out "$out"
  fi
  if want density; then
    "$BIN" bench --density "$density" --out "$out"
  fi
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$work"; trap - EXIT
fi

if want server; then
  "$BIN" bench server --hosts 1000 --sandboxes 10000 --rate 2000 --duration 60 --out "$out"
fi
echo "benchmarks.sh: $out regenerated"
