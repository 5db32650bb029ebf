#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-scheduler for the test harness in one cache folder and
# prints that folder. Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it holds all three (the envtest convention);
#   2. the warm cache (~/.cache/lumie-coder/k8s-bin, or $LUMIE_CACHE_DIR/k8s-bin);
#   3. Debian 12: etcd from `etcd-server`, the other two built from Debian's `kubernetes`
#      source package (1.20.5+really1.20.2, vendors all Go dependencies). About 5 minutes on 2 cores.
# Progress goes to stderr; stdout is only the folder, so callers can `dir=$(install-binaries.sh)`.
set -euo pipefail

want=(etcd kube-apiserver kube-scheduler)
cache_root="${LUMIE_CACHE_DIR:-$HOME/.cache/lumie-coder}"
bin_dir="$cache_root/k8s-bin"
log() { echo "install-binaries: $*" >&2; }

has_all() { local d=$1; for b in "${want[@]}"; do [ -x "$d/$b" ] || return 1; done; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && has_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi
if has_all "$bin_dir" && [ -f "$bin_dir/.complete" ]; then
  echo "$bin_dir"; exit 0
fi

mkdir -p "$bin_dir"
# One builder at a time: parallel test binaries may all call this on a cold cache.
exec 9>"$cache_root/k8s-bin.lock"
flock 9
if has_all "$bin_dir" && [ -f "$bin_dir/.complete" ]; then echo "$bin_dir"; exit 0; fi

apt_ready=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_ready -eq 0 ]; then apt-get update -qq >&2; apt_ready=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# etcd
if [ ! -x "$bin_dir/etcd" ]; then
  apt_install etcd-server
  cp /usr/bin/etcd "$bin_dir/etcd"
fi

# kube-apiserver and kube-scheduler from Debian's source package.
if [ ! -x "$bin_dir/kube-apiserver" ] || [ ! -x "$bin_dir/kube-scheduler" ]; then
  src_list=/etc/apt/sources.list.d/lumie-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding a deb-src entry ($src_list)"
    cat > "$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_ready=0
  fi
  apt_install golang-go golang-github-modern-go-reflect2-dev dpkg-dev make rsync
  [ $apt_ready -eq 1 ] || { apt-get update -qq >&2; apt_ready=1; }

  work="$cache_root/k8s-src"
  rm -rf "$work"; mkdir -p "$work"
  log "fetching the kubernetes source package"
  (cd "$work" && apt-get source -qq --download-only kubernetes >&2 && dpkg-source -x --skip-patches kubernetes_*.dsc src >&2) \
    || (cd "$work" && rm -rf src && dpkg-source -x kubernetes_*.dsc src >&2)
  tree="$work/src"

  # vendored reflect2 v1.0.1 segfaults under Go >= 1.18 when a mutating webhook returns a patch.
  log "replacing vendored modern-go/reflect2 with v1.0.2"
  r2=$(dirname "$(find /usr/share/gocode/src/github.com/modern-go/reflect2 -name reflect2.go | head -1)")
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
  find "$r2" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp {} "$tree/vendor/github.com/modern-go/reflect2/" \;
  sed -i 's#^\(\# github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#' "$tree/vendor/modules.txt"
  sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' "$tree/go.mod" "$tree"/staging/src/k8s.io/*/go.mod 2>/dev/null || true
  grep -q 'modern-go/reflect2 v1.0.2' "$tree/vendor/modules.txt" || { log "could not bump reflect2 in vendor/modules.txt"; exit 1; }

  gopath="$work/.go"
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
  log "building kube-apiserver and kube-scheduler (about 5 minutes on 2 cores the first time)"
  (
    cd "$gopath/src/k8s.io/kubernetes"
    export GOPATH="$gopath" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$cache_root/go-build"
    # The release scripts need version info; the source package has no git history.
    export KUBE_GIT_VERSION="v1.20.2" KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian
    make WHAT="cmd/kube-apiserver cmd/kube-scheduler" >&2
  )
  out="$tree/_output/local/bin/linux/amd64"
  [ -x "$out/kube-apiserver" ] || out="$tree/_output/bin"
  cp "$out/kube-apiserver" "$out/kube-scheduler" "$bin_dir/"
  rm -rf "$work"
fi

has_all "$bin_dir" || { log "missing binaries in $bin_dir"; exit 1; }
touch "$bin_dir/.complete"
echo "$bin_dir"
