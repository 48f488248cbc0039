#!/usr/bin/env bash
# sandboxctl installer for Debian/Ubuntu. Idempotent: run it again to update.
#
#   ./install.sh            install packages, the guest kernel and the sandboxctl binary (built
#                           here as a static binary: needs Rust)
#   ./install.sh --run      the same, then start a server with a local agent (the quick start)
#   ./install.sh --deps     only packages and the guest kernel, plus what the tests need (Chromium,
#                           Node.js and web/tests' node modules for the dashboard's browser test,
#                           schemathesis for the API fuzz test, the E2B SDKs for the E2B tests: a
#                           Python venv at /opt/sandboxctl/e2b-venv and tests/e2b-js' node modules)
#   ./install.sh --test     those, then the checks (cargo fmt, clippy, ESLint), the static release
#                           binary and the whole test suite (cargo test)
#
# Options (with the install or --run):
#   --binary PATH           install this sandboxctl binary instead of building one (hosts need no
#                           Rust: copy the static binary over and pass it here)
#   --service server|agent  also install and enable the systemd unit sandboxctl-ROLE.service, with
#                           its flags in /etc/sandboxctl/ROLE.env (repeat for both roles)
#   --root DIR              write the files (binary, units, environment files) under DIR instead of
#                           /, without packages, kernel or starting anything: for images and tests
#
# Environment: SANDBOXCTL_DATA_DIR (default /var/lib/sandboxctl), SANDBOXCTL_KERNEL_DIR
# (default $SANDBOXCTL_DATA_DIR/kernel), PREFIX (default /usr/local).
set -euo pipefail

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

mode=install
BINARY=""
ROOT=""
SERVICES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --run) mode=run ;;
    --deps) mode=deps ;;
    --test) mode=test ;;
    --binary|--service|--root)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "install.sh: $1 needs a value (try --help)" >&2; exit 2; }
      case "$1" in
        --binary) BINARY=$2 ;;
        --service) SERVICES+=("$2") ;;
        --root) ROOT=$2 ;;
      esac
      shift ;;
    --binary=*) BINARY=${1#*=} ;;
    --service=*) SERVICES+=("${1#*=}") ;;
    --root=*) ROOT=${1#*=} ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in "${SERVICES[@]}"; do
  case "$s" in
    server|agent) ;;
    *) echo "install.sh: --service takes server or agent, not '$s'" >&2; exit 2 ;;
  esac
done
if [ "$mode" = deps ] || [ "$mode" = test ]; then
  [ -z "$BINARY$ROOT" ] && [ ${#SERVICES[@]} -eq 0 ] \
    || { echo "install.sh: --binary, --service and --root go with an install, not --$mode" >&2; exit 2; }
fi
if [ "$mode" = run ] && { [ -n "$ROOT" ] || [ ${#SERVICES[@]} -gt 0 ]; }; then
  echo "install.sh: --run starts a server in this terminal; with --service the unit runs it instead" >&2
  exit 2
fi
if [ -n "$BINARY" ]; then
  [ -f "$BINARY" ] || die "--binary $BINARY: no such file"
  BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")
fi
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT" || die "--root $ROOT: cannot make it"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi

DATA_DIR=${SANDBOXCTL_DATA_DIR:-/var/lib/sandboxctl}
KERNEL_DIR=${SANDBOXCTL_KERNEL_DIR:-$DATA_DIR/kernel}
PREFIX=${PREFIX:-/usr/local}
here=$(cd "$(dirname "$0")" && pwd)

SUDO=""
if [ "$(id -u)" -ne 0 ] && [ -z "$ROOT" ]; then
  command -v sudo >/dev/null || die "run as root or install sudo"
  SUDO=sudo
fi

install_packages() {
  local pkgs=(qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs ca-certificates debootstrap debian-archive-keyring iproute2 nftables)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "packages already installed"
    return
  fi
  say "installing packages: ${missing[*]}"
  $SUDO apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/tmp/sandboxctl-apt.log 2>&1; then
    # A newer qemu-utils (e.g. from backports) breaks the distribution's qemu-system-x86:
    # pin qemu-utils to the same version as qemu-system-x86.
    local ver
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate/{print $2}')
    say "retrying with qemu-utils=$ver to match qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --allow-downgrades --no-install-recommends \
      qemu-system-x86 "qemu-utils=$ver" busybox-static cpio e2fsprogs ca-certificates debootstrap debian-archive-keyring iproute2 nftables \
      >/tmp/sandboxctl-apt.log 2>&1 || { tail -20 /tmp/sandboxctl-apt.log; die "apt-get install failed"; }
  fi
}

# The dashboard's browser test (tests/it/web.rs): Chromium, Node.js and web/tests' node modules.
install_test_deps() {
  local missing=()
  dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed' || missing+=(chromium)
  command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing for the browser test: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/tmp/sandboxctl-apt.log 2>&1 \
      || { tail -20 /tmp/sandboxctl-apt.log; die "apt-get install ${missing[*]} failed"; }
  fi
  # The API fuzz test (tests/it/openapi_fuzz.rs) runs schemathesis against openapi.yaml.
  if ! command -v schemathesis >/dev/null; then
    command -v pip3 >/dev/null || {
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/tmp/sandboxctl-apt.log 2>&1 \
        || { tail -20 /tmp/sandboxctl-apt.log; die "apt-get install python3-pip failed"; }
    }
    say "installing schemathesis for the API fuzz test (pip)"
    pip3 install -q schemathesis 2>/dev/null || pip3 install -q --break-system-packages schemathesis \
      || die "pip3 install schemathesis failed"
  fi
  # The metrics test (tests/it/prometheus.rs) reads /metrics with Prometheus' Python parser.
  if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    say "installing prometheus-client for the metrics test (pip)"
    pip3 install -q prometheus-client 2>/dev/null || pip3 install -q --break-system-packages prometheus-client \
      || die "pip3 install prometheus-client failed"
  fi
  install_e2b_sdks
  local tests="$here/web/tests"
  if [ ! -d "$tests/node_modules/playwright-core" ] || [ "$tests/package-lock.json" -nt "$tests/node_modules/.package-lock.json" ]; then
    say "installing the browser test's node modules (npm ci in web/tests)"
    (cd "$tests" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in web/tests failed"
  fi
}

# The E2B SDK tests (tests/it/e2b): the Python SDK, pinned, in a venv of its own, and the JS SDK
# pinned by tests/e2b-js/package-lock.json.
E2B_PY_VERSION=2.63.0
E2B_VENV=/opt/sandboxctl/e2b-venv
install_e2b_sdks() {
  if ! "$E2B_VENV/bin/python" -c "import e2b, importlib.metadata as m; assert m.version('e2b') == '$E2B_PY_VERSION'" 2>/dev/null; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || {
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/tmp/sandboxctl-apt.log 2>&1 \
        || { tail -20 /tmp/sandboxctl-apt.log; die "apt-get install python3-venv failed"; }
    }
    say "installing the E2B Python SDK (e2b==$E2B_PY_VERSION) into $E2B_VENV"
    $SUDO mkdir -p "$(dirname "$E2B_VENV")"
    $SUDO python3 -m venv "$E2B_VENV" || die "python3 -m venv $E2B_VENV failed"
    $SUDO "$E2B_VENV/bin/pip" install -q "e2b==$E2B_PY_VERSION" || die "pip install e2b==$E2B_PY_VERSION failed"
  fi
  local js="$here/tests/e2b-js"
  if [ ! -f "$js/node_modules/e2b/package.json" ] || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
    say "installing the E2B JS SDK (npm ci in tests/e2b-js)"
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/e2b-js failed"
  fi
}

install_kernel() {
  if [ -f "$KERNEL_DIR/vmlinuz" ] && [ -d "$KERNEL_DIR/modules" ]; then
    say "guest kernel present in $KERNEL_DIR ($(cat "$KERNEL_DIR/version" 2>/dev/null))"
    return
  fi
  say "fetching the guest kernel (Debian cloud kernel) into $KERNEL_DIR"
  local tmp meta real
  # A private folder (mktemp -d makes it 0700), removed however the script ends. apt would drop to
  # its `_apt` user to download, which cannot write here: as root, it downloads as root instead.
  tmp=$(mktemp -d)
  KERNEL_TMP=$tmp
  trap 'rm -rf "${KERNEL_TMP:-}"' EXIT
  local download=(apt-get -o APT::Sandbox::User=root download)
  (cd "$tmp" && "${download[@]}" linux-image-cloud-amd64 >/dev/null 2>&1) \
    || { $SUDO apt-get update -qq; (cd "$tmp" && "${download[@]}" linux-image-cloud-amd64 >/dev/null 2>&1); } \
    || die "could not download linux-image-cloud-amd64"
  meta=$(ls "$tmp"/linux-image-cloud-amd64_*.deb)
  real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*cloud-amd64' | head -1)
  [ -n "$real" ] || die "cannot tell which kernel linux-image-cloud-amd64 depends on"
  (cd "$tmp" && "${download[@]}" "$real" >/dev/null 2>&1) || die "could not download $real"
  mkdir -p "$tmp/x"
  dpkg-deb -x "$tmp"/"$real"_*.deb "$tmp/x"
  local ver=${real#linux-image-}
  $SUDO mkdir -p "$KERNEL_DIR.new"
  $SUDO cp "$tmp/x/boot/vmlinuz-$ver" "$KERNEL_DIR.new/vmlinuz"
  $SUDO mkdir -p "$KERNEL_DIR.new/modules"
  $SUDO cp -a "$tmp/x/lib/modules/$ver/kernel" "$KERNEL_DIR.new/modules/"
  echo "$ver" | $SUDO tee "$KERNEL_DIR.new/version" >/dev/null
  $SUDO rm -rf "$KERNEL_DIR"
  $SUDO mv "$KERNEL_DIR.new" "$KERNEL_DIR"
  rm -rf "$tmp"
  KERNEL_TMP=""
  say "guest kernel $ver installed"
}

# The static binary: musl (x86_64-unknown-linux-musl, its C parts built with musl-gcc), or, where
# that target cannot be added, glibc linked statically (+crt-static). Sets STATIC_BIN.
STATIC_BIN=""
build_static() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first, or pass --binary PATH"
  local target=x86_64-unknown-linux-musl flags=""
  if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ] \
    && ! { command -v rustup >/dev/null && rustup target add "$target" >/dev/null 2>&1; }; then
    say "the $target target cannot be added here: linking glibc statically instead"
    target=x86_64-unknown-linux-gnu
    flags="-C target-feature=+crt-static"
  fi
  if [ "$target" = x86_64-unknown-linux-musl ] && ! command -v musl-gcc >/dev/null; then
    say "installing musl-tools (musl-gcc builds SQLite and the TLS library for musl)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends musl-tools \
      >/tmp/sandboxctl-apt.log 2>&1 || { tail -20 /tmp/sandboxctl-apt.log; die "apt-get install musl-tools failed"; }
  fi
  local tdir=${CARGO_TARGET_DIR:-target}
  case "$tdir" in /*) ;; *) tdir=$here/$tdir ;; esac
  say "building the static sandboxctl (release, $target, LTO; several minutes on 2 cores)"
  local t0=$SECONDS
  if [ -n "$flags" ]; then
    (cd "$here" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$flags" cargo build --release --locked --target "$target") \
      || die "cargo build failed"
  else
    (cd "$here" && cargo build --release --locked --target "$target") || die "cargo build failed"
  fi
  STATIC_BIN=$tdir/$target/release/sandboxctl
  say "built $STATIC_BIN ($(du -h "$STATIC_BIN" | cut -f1), $((SECONDS - t0)) s)"
}

install_binary() {
  local src=$BINARY version
  if [ -z "$src" ]; then
    build_static
    src=$STATIC_BIN
  fi
  version=$("$src" --version 2>/dev/null) || die "$src does not run on this machine (is it sandboxctl for x86_64 Linux?)"
  case "$version" in "sandboxctl "*) ;; *) die "$src is not sandboxctl (its --version says '$version')" ;; esac
  $SUDO install -D -m 0755 "$src" "$ROOT$PREFIX/bin/sandboxctl"
  say "installed $ROOT$PREFIX/bin/sandboxctl ($version)"
}

# The unit and the environment file of one role (server or agent).
write_unit() {
  local role=$1 desc data cmd unit_extra="" restart_sec
  case "$role" in
    server)
      desc="sandboxctl server (REST API, dashboard, scheduler, host monitor)"
      data=$DATA_DIR
      cmd="server"
      restart_sec=2s ;;
    agent)
      desc="sandboxctl agent (runs this host's microVMs)"
      data=$DATA_DIR/agent
      cmd="agent run"
      restart_sec=5s
      unit_extra="# Only a registered host starts: \`sandboxctl agent register\` writes the credentials.
ConditionPathExists=$data/credentials.json
# Never give up: the agent itself rides out a server outage (heartbeats retry), systemd a crash.
StartLimitIntervalSec=0" ;;
  esac
  local unit=sandboxctl-$role.service
  $SUDO mkdir -p "$ROOT/etc/systemd/system" "$ROOT/etc/sandboxctl"
  local unit_file
  unit_file=$(cat <<EOF
# Installed by sandboxctl's install.sh; settings go in /etc/sandboxctl/$role.env.
[Unit]
Description=$desc
Wants=network-online.target
After=network-online.target
$unit_extra

[Service]
Type=exec
Environment=SANDBOXCTL_DATA_DIR=$data SANDBOXCTL_KERNEL_DIR=$KERNEL_DIR
EnvironmentFile=/etc/sandboxctl/$role.env
ExecStart=$PREFIX/bin/sandboxctl $cmd
Restart=on-failure
RestartSec=$restart_sec
# The server drains for --shutdown-timeout (10 s) on SIGTERM; the agent exits at once.
TimeoutStopSec=30s
# QEMU processes outlive a stop or restart of this process: the next one takes its VMs back
# (running ones running, paused ones paused); a VM out of memory does not stop the service.
KillMode=process
OOMPolicy=continue
TasksMax=infinity
LimitNOFILE=1048576
StandardOutput=journal
StandardError=journal
SyslogIdentifier=sandboxctl-$role

[Install]
WantedBy=multi-user.target
EOF
)
  printf '%s\n' "$unit_file" | cat -s | $SUDO tee "$ROOT/etc/systemd/system/$unit" >/dev/null
  $SUDO chmod 0644 "$ROOT/etc/systemd/system/$unit"
  say "wrote $ROOT/etc/systemd/system/$unit"

  local env_file=$ROOT/etc/sandboxctl/$role.env
  if [ -e "$env_file" ]; then
    say "kept $env_file (yours)"
    return
  fi
  local body
  if [ "$role" = server ]; then
    body="SANDBOXCTL_DATA_DIR=$data
SANDBOXCTL_KERNEL_DIR=$KERNEL_DIR
SANDBOXCTL_LISTEN=127.0.0.1:8080
# The address people and agents reach this server at (a reverse proxy's, say).
#SANDBOXCTL_PUBLIC_URL=https://sbx.example.com
# Also run an agent for this machine inside the server (a one-machine install).
#SANDBOXCTL_LOCAL_AGENT=true
#SANDBOXCTL_SIGNUP=invite
#SANDBOXCTL_LOG_FORMAT=json"
  else
    body="SANDBOXCTL_DATA_DIR=$data
SANDBOXCTL_KERNEL_DIR=$KERNEL_DIR
# Overrides the listen address stored at registration.
#SANDBOXCTL_AGENT_LISTEN=0.0.0.0:9090
#SANDBOXCTL_ACCEL=auto
#SANDBOXCTL_LOG_FORMAT=json"
  fi
  printf '# Settings of sandboxctl-%s.service: every flag of `sandboxctl %s --help` has its\n# SANDBOXCTL_ variable. After a change: systemctl restart sandboxctl-%s\n%s\n' \
    "$role" "$cmd" "$role" "$body" \
    | $SUDO tee "$env_file" >/dev/null
  $SUDO chmod 0640 "$env_file"
  say "wrote $env_file"
}

install_service() {
  local role=$1 unit=sandboxctl-$1.service
  write_unit "$role"
  if [ -n "$ROOT" ]; then
    if command -v systemctl >/dev/null; then
      systemctl --root="$ROOT" enable "$unit" >/dev/null 2>&1 || die "systemctl --root $ROOT enable $unit failed"
    else
      mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
      ln -sfn "/etc/systemd/system/$unit" "$ROOT/etc/systemd/system/multi-user.target.wants/$unit"
    fi
    say "enabled $unit under $ROOT"
    return
  fi
  command -v systemctl >/dev/null || die "systemctl not found: --service needs systemd"
  if [ ! -d /run/systemd/system ]; then
    $SUDO systemctl enable "$unit" >/dev/null 2>&1 || die "systemctl enable $unit failed"
    say "enabled $unit; systemd is not running here, so it starts at the next boot"
    return
  fi
  $SUDO systemctl daemon-reload
  $SUDO systemctl enable "$unit" >/dev/null 2>&1 || die "systemctl enable $unit failed"
  if [ "$role" = agent ] && ! $SUDO test -f "$DATA_DIR/agent/credentials.json"; then
    say "enabled $unit; register this host first (the command \`sandboxctl host create\` prints), then: systemctl start $unit"
    return
  fi
  $SUDO systemctl restart "$unit"
  say "started $unit (logs: journalctl -u $unit -f)"
}

if [ -z "$ROOT" ]; then
  install_packages
  install_kernel
fi
case "$mode" in deps|test) install_test_deps ;; esac
[ "$mode" = deps ] && exit 0
if [ "$mode" = test ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  cd "$here"
  say "checking the code: cargo fmt, cargo clippy, the dashboard's JavaScript (ESLint)"
  cargo fmt --check || die "cargo fmt --check: run 'cargo fmt'"
  cargo clippy --locked --all-targets -- -D warnings || die "cargo clippy found warnings"
  (cd web/tests && npm run --silent lint) || die "ESLint found problems in the dashboard's JavaScript"
  # tests/it/static_binary.rs checks this binary (static, runs alone in an empty chroot, as agent and guest).
  build_static
  say "running the test suite (real server, agents and microVMs under QEMU)"
  exec env SANDBOXCTL_KERNEL_DIR="$KERNEL_DIR" SANDBOXCTL_STATIC_BINARY="$STATIC_BIN" cargo test --locked
fi
install_binary
$SUDO mkdir -p "$ROOT$DATA_DIR"
for role in "${SERVICES[@]}"; do
  install_service "$role"
done
if [ "$mode" = run ]; then
  say "starting sandboxctl server with a local agent (Ctrl-C stops it)"
  exec $SUDO env SANDBOXCTL_KERNEL_DIR="$KERNEL_DIR" "$PREFIX/bin/sandboxctl" server --local-agent --data-dir "$DATA_DIR"
fi
if [ ${#SERVICES[@]} -eq 0 ]; then
  say "done. Start it with: sandboxctl server --local-agent --data-dir $DATA_DIR"
  say "or as a service: ./install.sh --binary $PREFIX/bin/sandboxctl --service server"
else
  say "done"
fi
