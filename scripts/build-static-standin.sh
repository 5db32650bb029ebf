#!/usr/bin/env bash
# TEMPORARY stand-in for scripts/build-static.sh (owned by the static-binaries work, branch
# `static`): delete this file when that script lands. It fills the same folder layout the image
# build reads, the simplest way:
#   ${CARGO_TARGET_DIR:-target}/static/linux-amd64/{lumie-server,lumie-webhook,lumie-agent,lumie}
#   ${CARGO_TARGET_DIR:-target}/static/linux-arm64/{lumie-agent,lumie}   (copies of the amd64 ones)
# musl release builds with the workspace's release profile (fat LTO, as the real script, so the
# image sizes are real; LUMIE_STANDIN_FAST=1 for no LTO and 16 codegen units while iterating);
# the arm64 files are amd64 copies, so an image built from this folder is for testing only.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
out="$target/static"
cd "$here"
if [ "${LUMIE_STANDIN_FAST:-}" = 1 ]; then
  export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
cargo build --release --target x86_64-unknown-linux-musl \
  -p lumie-server -p lumie-webhook -p lumie-agent -p lumie-cli \
  --bin lumie-server --bin lumie-webhook --bin lumie-agent --bin lumie >&2
mkdir -p "$out/linux-amd64" "$out/linux-arm64"
for b in lumie-server lumie-webhook lumie-agent lumie; do
  install -m 0755 "$target/x86_64-unknown-linux-musl/release/$b" "$out/linux-amd64/$b"
done
for b in lumie-agent lumie; do
  install -m 0755 "$out/linux-amd64/$b" "$out/linux-arm64/$b"
done
echo "build-static-standin: $out" >&2
