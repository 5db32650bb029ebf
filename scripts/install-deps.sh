#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian 12 machine (as root), each
# step cached so a warm machine skips it: the Rust components (rustfmt, clippy), the harness's
# etcd/kube-apiserver/kube-scheduler, PostgreSQL, Node.js packages for the OpenID provider,
# and real helm/kubectl. Safe to run again at any time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "install-deps: $*" >&2; }

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >&2
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >&2
fi

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then apt-get update -qq >&2; apt_updated=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Tools the tests call: curl/wget/busybox for the agent init script, unzip for helm, psql for PostgreSQL.
apt_install curl wget busybox unzip ca-certificates postgresql postgresql-client
# The replica tests' load balancer (tests/src/balancer.rs).
apt_install haproxy
command -v node >/dev/null 2>&1 || apt_install nodejs npm

log "cluster binaries: $(bash "$here/tests/cluster/install-binaries.sh")"
[ -f "$here/scripts/install-helm.sh" ] && log "helm and kubectl: $(bash "$here/scripts/install-helm.sh")"
if [ -f "$here/tests/oidc/package.json" ] && [ ! -d "$here/tests/oidc/node_modules" ]; then
  log "npm packages for the OpenID provider"
  (cd "$here/tests/oidc" && npm ci --no-audit --no-fund >&2 2>/dev/null || npm install --no-audit --no-fund >&2)
fi
# The dashboard's browser tests: Debian's chromium (Playwright never downloads a browser) and
# playwright-core, cached like the OpenID provider's packages.
apt_install chromium
if [ -f "$here/tests/browser/package.json" ] && [ ! -d "$here/tests/browser/node_modules" ]; then
  log "npm packages for the browser tests"
  (cd "$here/tests/browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
fi
# The CLI's session tests: Debian's OpenSSH client (ssh, scp through `lumie config-ssh`) and
# tmux to drive an interactive `lumie ssh` in a terminal.
apt_install openssh-client tmux
# The static agent and CLI (scripts/build-static.sh) and their tests: musl targets, cargo-zigbuild,
# qemu-user-static, busybox-static, a Debian 11 root.
bash "$here/scripts/install-static-deps.sh"
# Release tooling (issue 14): Debian's umoci and skopeo build and pack the OCI images without a
# daemon or a registry (`make images`), python3 writes the
# images' SBOMs; cargo-deny (`make lint`) from crates.io, built once into a cache outside the
# work tree so CI does not rebuild it every run.
apt_install umoci skopeo python3 jq
cargo_deny_version=0.20.2
cargo_tools="${HOME:-/root}/.cache/lumie-coder/cargo-tools"
if ! "$cargo_tools/bin/cargo-deny" --version 2>/dev/null | grep -qx "cargo-deny $cargo_deny_version"; then
  log "cargo install cargo-deny $cargo_deny_version into $cargo_tools (once)"
  env -u CARGO_TARGET_DIR cargo install --locked --quiet --root "$cargo_tools" --version "$cargo_deny_version" cargo-deny >&2
fi
exit 0
