#!/usr/bin/env bash
# sandboxctl installer for Debian/Ubuntu. Idempotent: run it again to update.
#
#   ./install.sh            install packages, the guest kernel and the sandboxctl binary
#   ./install.sh --run      the same, then start a server with a local agent (the quick start)
#   ./install.sh --deps     only packages and the guest kernel, plus what the tests need (Chromium,
#                           Node.js and web/tests' node modules for the dashboard's browser test,
#                           schemathesis for the API fuzz test, the E2B SDKs for the E2B tests: a
#                           Python venv at /opt/sandboxctl/e2b-venv and tests/e2b-js' node modules)
#   ./install.sh --test     those, then the checks (cargo fmt, clippy, ESLint) and the whole test
#                           suite (cargo test)
#
# Environment: SANDBOXCTL_DATA_DIR (default /var/lib/sandboxctl), SANDBOXCTL_KERNEL_DIR
# (default $SANDBOXCTL_DATA_DIR/kernel), PREFIX (default /usr/local).
set -euo pipefail

mode=install
case "${1:-}" in
  --run) mode=run ;;
  --deps) mode=deps ;;
  --test) mode=test ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

DATA_DIR=${SANDBOXCTL_DATA_DIR:-/var/lib/sandboxctl}
KERNEL_DIR=${SANDBOXCTL_KERNEL_DIR:-$DATA_DIR/kernel}
PREFIX=${PREFIX:-/usr/local}
here=$(cd "$(dirname "$0")" && pwd)

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
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

install_binary() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  say "building sandboxctl (release; a few minutes on 2 cores)"
  (cd "$here" && cargo build --release --locked)
  $SUDO install -m 0755 "$here/target/release/sandboxctl" "$PREFIX/bin/sandboxctl"
  say "installed $PREFIX/bin/sandboxctl"
}

install_packages
install_kernel
case "$mode" in deps|test) install_test_deps ;; esac
[ "$mode" = deps ] && exit 0
if [ "$mode" = test ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  cd "$here"
  say "checking the code: cargo fmt, cargo clippy, the dashboard's JavaScript (ESLint)"
  cargo fmt --check || die "cargo fmt --check: run 'cargo fmt'"
  cargo clippy --locked --all-targets -- -D warnings || die "cargo clippy found warnings"
  (cd web/tests && npm run --silent lint) || die "ESLint found problems in the dashboard's JavaScript"
  say "running the test suite (real server, agents and microVMs under QEMU)"
  exec env SANDBOXCTL_KERNEL_DIR="$KERNEL_DIR" cargo test --locked
fi
install_binary
$SUDO mkdir -p "$DATA_DIR"
if [ "$mode" = run ]; then
  say "starting sandboxctl server with a local agent (Ctrl-C stops it)"
  exec $SUDO env SANDBOXCTL_KERNEL_DIR="$KERNEL_DIR" "$PREFIX/bin/sandboxctl" server --local-agent --data-dir "$DATA_DIR"
fi
say "done. Start it with: sandboxctl server --local-agent --data-dir $DATA_DIR"
