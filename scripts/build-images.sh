#!/usr/bin/env bash
# Builds the OCI images lumie-server and lumie-webhook from scratch, with no daemon and no
# registry (Debian's umoci lays out and configures the image, skopeo packs it): every file comes
# from the list in images/<name>.files (the static binaries scripts/build-static.sh put under
# ${CARGO_TARGET_DIR:-target}/static/, Debian's CA bundle, a passwd with uid 65532), the config
# from images/<name>.config, labels from the chart and git. Writes, per image, under
# ${CARGO_TARGET_DIR:-target}/images/:
#   <name>.tar       OCI archive tagged ghcr.io/lumie-infra/<name>:<chart appVersion>
#   <name>.cdx.json  CycloneDX SBOM of the crates linked into the image's binaries
#   <name>.digest    the manifest digest (sha256:…), for pinning (image.digest in values.yaml)
# and prints each image's digest and sizes. Reproducible: every mtime and the created time is
# SOURCE_DATE_EPOCH (default: the commit time), so the same commit gives the same digest.
# Usage: scripts/build-images.sh [server] [webhook]   (default: both). Run as root (the tree
# holds files owned by 0 and by 65532).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
out="$target/images"
log() { echo "build-images: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the image tree holds files owned by root and by 65532"
for tool in umoci skopeo jq python3; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done

registry=ghcr.io/lumie-infra
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$here/charts/lumie-coder/Chart.yaml")"
[ -n "$version" ] || die "no appVersion in charts/lumie-coder/Chart.yaml"
source_url="$(sed -n 's/^repository *= *"\(.*\)"$/\1/p' "$here/Cargo.toml" | head -1)"
revision="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"

# The manifest's lines without comments and blanks: `src dst mode owner`.
entries() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/images/$1.files"; }
# The config's values for `key` (one a line).
config() { sed -n "s/^$2 //p" "$here/images/$1.config"; }

# Lays out the manifest's tree in `root` (empty), every mtime at the epoch.
populate() {
  local name=$1 root=$2 src dst mode owner from
  while read -r src dst mode owner; do
    [ -n "$owner" ] || die "images/$name.files: '$src $dst' needs a mode and an owner"
    if [ "$src" = - ]; then
      mkdir -p "$root$dst"
    else
      case "$src" in
        '$TARGET'/*) from="$target/${src#\$TARGET/}" ;;
        /*) from="$src" ;;
        *) from="$here/$src" ;;
      esac
      [ -f "$from" ] || die "images/$name.files: $from is missing (run scripts/build-static.sh?)"
      mkdir -p "$(dirname "$root$dst")"
      cp "$from" "$root$dst"
    fi
    chmod "$mode" "$root$dst"
    chown "$owner" "$root$dst"
  done < <(entries "$name")
  find "$root" -exec touch -h -d "@$epoch" {} +
}

build() {
  local short=$1 name="lumie-$1" image="$registry/lumie-$1:$version" work oci rootfs
  work="$(mktemp -d "$out/.work-$name.XXXXXX")"
  oci="$work/oci:$version"
  umoci init --layout "$work/oci"
  umoci new --image "$oci"
  umoci unpack --image "$oci" "$work/bundle" >/dev/null
  rootfs="$work/bundle/rootfs"
  # umoci new leaves an empty root; nothing of it is kept but the directory itself.
  find "$rootfs" -mindepth 1 -delete
  chmod 0755 "$rootfs"
  populate "$short" "$rootfs"
  umoci repack --image "$oci" --history.created "$created" \
    --history.created_by "scripts/build-images.sh: images/$short.files" "$work/bundle"

  local args=(--config.user "$(config "$short" user)" --created "$created"
    --architecture amd64 --os linux --no-history --clear config.env --clear config.labels
    --config.label "org.opencontainers.image.source=$source_url"
    --config.label "org.opencontainers.image.version=$version"
    --config.label "org.opencontainers.image.revision=$revision"
    --config.label "org.opencontainers.image.created=$created"
    --config.label "org.opencontainers.image.title=$(config "$short" title)"
    --config.label "org.opencontainers.image.description=$(config "$short" description)"
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
    --config.entrypoint "$(config "$short" entrypoint)")
  local e c
  while read -r e; do args+=(--config.env "$e"); done < <(config "$short" env)
  while read -r c; do [ -n "$c" ] && args+=(--config.cmd "$c"); done < <(config "$short" cmd)
  [ -n "$(config "$short" cmd)" ] || args+=(--clear config.cmd)
  umoci config --image "$oci" "${args[@]}"
  umoci gc --layout "$work/oci"

  rm -f "$out/$name.tar"
  skopeo --insecure-policy copy --quiet "oci:$oci" "oci-archive:$out/$name.tar:$image"
  rm -rf "$work"

  local manifest digest layers total
  # The digest a registry keeps after `skopeo copy oci-archive:… docker://…` (no conversion).
  digest="$(tar -xOf "$out/$name.tar" index.json | jq -r '.manifests[0].digest')"
  manifest="$(tar -xOf "$out/$name.tar" "blobs/sha256/${digest#sha256:}")"
  layers="$(jq '[.layers[].size] | add' <<<"$manifest")"
  total="$(jq '.config.size + ([.layers[].size] | add)' <<<"$manifest")"
  echo "$digest" >"$out/$name.digest"
  python3 "$here/scripts/sbom.py" "$short" "$version" "$revision" "$created" "$digest" >"$out/$name.cdx.json"
  printf '%s %s@%s\n  layers %s bytes compressed (%s MB), total %s bytes (config + layers), archive %s bytes\n' \
    "$image" "$registry/$name" "$digest" "$layers" "$(awk "BEGIN{printf \"%.1f\", $layers/1000000}")" \
    "$total" "$(stat -c %s "$out/$name.tar")"
}

mkdir -p "$out"
trap 'rm -rf "$out"/.work-*' EXIT
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(server webhook)
for n in "${names[@]}"; do
  case "$n" in
    server | webhook) build "$n" ;;
    *) die "unknown image '$n' (server, webhook)" ;;
  esac
done
