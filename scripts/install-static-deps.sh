#!/usr/bin/env bash
# What the static binaries (scripts/build-static.sh) and their tests (tests/tests/static_agent.rs)
# need, each step cached so a warm machine skips it in well under a second:
#   - the musl targets of the machine's Rust toolchain (rustup target add);
#   - cargo-zigbuild and zig (PyPI `cargo-zigbuild`, `ziglang`, by pip): zig is the C
#     cross-compiler and musl libc for both architectures, so ring and libsqlite3-sys build for
#     aarch64 as for x86_64 with one tool (Debian's musl-tools only covers amd64);
#   - qemu-user-static (runs the arm64 build) and debootstrap, from Debian;
#   - busybox-static's binary, unpacked from its .deb into the cache (the package itself
#     conflicts with the dynamically linked `busybox` install-deps.sh installs);
#   - a Debian 11 (bullseye, glibc 2.31) minbase root as a tarball, made once by debootstrap
#     (~50 MB download, minutes); the tests unpack it.
# The cache is ${LUMIE_CACHE_DIR:-~/.cache/lumie-coder}. Prints nothing on stdout.
set -euo pipefail
log() { echo "install-static-deps: $*" >&2; }
cache="${LUMIE_CACHE_DIR:-$HOME/.cache/lumie-coder}"
mkdir -p "$cache"

installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$t" <<<"$installed_targets" || { log "rustup target add $t"; rustup target add "$t" >&2; }
done

# pip puts cargo-zigbuild next to python3 (a pyenv shim here, /usr/local/bin elsewhere);
# cargo-zigbuild finds zig through `python3 -m ziglang`.
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -c 'import ziglang' 2>/dev/null; then
  log "pip install cargo-zigbuild ziglang"
  python3 -m pip install --quiet --disable-pip-version-check cargo-zigbuild ziglang >&2
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >&2 || true
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
apt_install qemu-user-static debootstrap file

if [ ! -x "$cache/busybox-static/bin/busybox" ]; then
  if [ $apt_updated -eq 0 ]; then apt-get update -qq >&2; apt_updated=1; fi
  log "busybox-static into $cache/busybox-static"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download busybox-static >&2)
  rm -rf "$cache/busybox-static.new"
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$cache/busybox-static.new"
  rm -rf "$tmp" "$cache/busybox-static"
  mv "$cache/busybox-static.new" "$cache/busybox-static"
fi

root_tar="$cache/debian11-minbase.tar.gz"
if [ ! -s "$root_tar" ]; then
  log "debootstrap bullseye (minbase) into $root_tar; this downloads ~50 MB once"
  tmp=$(mktemp -d)
  # The mirror this machine's apt already uses (LUMIE_DEBIAN_MIRROR overrides).
  mirror="${LUMIE_DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE '[a-z]+://[^ ]+' | head -n 1)}"
  [ -n "$mirror" ] || { log "no Debian mirror in /etc/apt/sources*: set LUMIE_DEBIAN_MIRROR"; exit 1; }
  debootstrap --variant=minbase bullseye "$tmp/root" "$mirror" >&2
  # The apt caches are of no use to the tests.
  rm -rf "$tmp/root/var/cache/apt/archives"/*.deb "$tmp/root/var/lib/apt/lists"/*
  tar -C "$tmp/root" -czf "$root_tar.new" .
  mv "$root_tar.new" "$root_tar"
  rm -rf "$tmp"
fi
exit 0
