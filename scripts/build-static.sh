#!/usr/bin/env bash
# Builds the static, stripped release executables (musl libc linked in, no dynamic loader) the
# server hands to workspace pods and the images carry:
#   ${CARGO_TARGET_DIR:-target}/static/linux-amd64/  lumie-agent lumie lumie-server lumie-webhook
#   ${CARGO_TARGET_DIR:-target}/static/linux-arm64/  lumie-agent lumie
# One cargo invocation per architecture with every package it needs (each invocation compiles
# the dependency graph for its target once; two invocations would compile it twice), through
# cargo-zigbuild: zig is the C compiler and the musl libc for both architectures, so ring and
# the server's bundled SQLite cross-compile with no per-architecture toolchain
# (scripts/install-static-deps.sh installs it).
#
# Usage: scripts/build-static.sh [--arch amd64,arm64] [--only agent,cli,server,webhook] [--quick]
#   --arch    architectures to build (default both)
#   --only    binaries to build (default all; arm64 has only agent and cli)
#   --quick   no LTO and 16 codegen units: much faster, larger binaries (for iterating; the
#             footprint budget holds only for the real release profile)
# The revision stamped into --version is LUMIE_GIT_REVISION if set, else the short commit id
# with -dirty when tracked files differ from it (see build-info/build.rs).
# Prints each file's size, and the build time of each architecture.
# LUMIE_STATIC_BUILD_DIR, if set, is cargo's target folder for these builds (the Makefile points
# it at a cache outside the work tree, so a fresh clone, CI's included, compiles the musl
# dependency graph once per machine instead of once per clone: 20+ minutes on 2 cores); the
# executables still land in ${CARGO_TARGET_DIR:-target}/static/.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "build-static: $*" >&2; }
die() { log "$*"; exit 1; }

archs="amd64,arm64"
only="agent,cli,server,webhook"
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) archs="${2:?--arch needs a value}"; shift 2 ;;
    --arch=*) archs="${1#--arch=}"; shift ;;
    --only) only="${2:?--only needs a value}"; shift 2 ;;
    --only=*) only="${1#--only=}"; shift ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

cd "$here"
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$here/$target_dir" ;; esac
build_dir="${LUMIE_STATIC_BUILD_DIR:-$target_dir}"

command -v cargo-zigbuild >/dev/null 2>&1 \
  || die "cargo-zigbuild is not installed: run scripts/install-deps.sh (or scripts/install-static-deps.sh)"

if [ -z "${LUMIE_GIT_REVISION:-}" ]; then
  if rev=$(git rev-parse --short=7 HEAD 2>/dev/null); then
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && rev="$rev-dirty"
  else
    rev=unknown
  fi
  export LUMIE_GIT_REVISION="$rev"
fi

if [ $quick -eq 1 ]; then
  export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi

# binary name and package of each --only word
pkg_of() {
  case "$1" in
    agent) echo "lumie-agent lumie-agent" ;;
    cli) echo "lumie lumie-cli" ;;
    server) echo "lumie-server lumie-server" ;;
    webhook) echo "lumie-webhook lumie-webhook" ;;
    *) die "unknown binary '$1' in --only (agent, cli, server, webhook)" ;;
  esac
}

IFS=, read -r -a want <<<"$only"
for w in "${want[@]}"; do pkg_of "$w" >/dev/null || exit 1; done
IFS=, read -r -a arch_list <<<"$archs"
for a in "${arch_list[@]}"; do
  case "$a" in
    amd64) triple=x86_64-unknown-linux-musl; allowed="agent cli server webhook" ;;
    arm64) triple=aarch64-unknown-linux-musl; allowed="agent cli" ;;
    *) die "unknown architecture '$a' (amd64, arm64)" ;;
  esac
  rustup target list --installed 2>/dev/null | grep -qx "$triple" \
    || die "the Rust target $triple is not installed: run scripts/install-deps.sh"
  args=() bins=()
  for w in "${want[@]}"; do
    read -r bin pkg <<<"$(pkg_of "$w")"
    case " $allowed " in *" $w "*) ;; *) log "$w is not built for $a (only: $allowed)"; continue ;; esac
    args+=(-p "$pkg" --bin "$bin")
    bins+=("$bin")
  done
  [ ${#bins[@]} -eq 0 ] && continue
  log "$a ($triple): ${bins[*]} at rev $LUMIE_GIT_REVISION$([ $quick -eq 1 ] && echo ', quick profile')"
  start=$(date +%s)
  CARGO_TARGET_DIR="$build_dir" cargo zigbuild --release --locked --target "$triple" "${args[@]}" >&2
  took=$(( $(date +%s) - start ))
  out="$target_dir/static/linux-$a"
  mkdir -p "$out"
  for bin in "${bins[@]}"; do
    src="$build_dir/$triple/release/$bin"
    desc=$(file -b "$src")
    case "$desc" in
      *"statically linked"*|*"static-pie linked"*) ;;
      *) die "$src is not a static executable: $desc" ;;
    esac
    case "$desc" in
      *"not stripped"*) die "$src is not stripped: $desc" ;;
    esac
    # A copy, not a link: the server and the images read these files, and the next build
    # replaces the cargo output in place.
    cp -f "$src" "$out/$bin.new" && mv -f "$out/$bin.new" "$out/$bin"
    size=$(stat -c %s "$out/$bin")
    printf '%-48s %9d bytes  %5s MiB\n' "static/linux-$a/$bin" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')"
  done
  printf '%-48s %9ss\n' "build time linux-$a" "$took"
done
