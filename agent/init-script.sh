#!/bin/sh
# lumie-agent init script: the `dev` container's entry. Downloads lumie-agent from the control
# plane's in-cluster URL, verifies it, and execs it (same PID, so SIGTERM reaches the agent).
#
# Served and embedded VERBATIM: there are no placeholders to fill. Everything comes from the
# environment:
#   CODER_AGENT_URL          required; control plane URL as seen from the pod
#                            (http://coder.coder.svc.cluster.local)
#   CODER_AGENT_TOKEN_FILE   required by the agent (passed on through exec with the rest of
#                            the environment); the pod's projected ServiceAccount token,
#                            audience lumie-coder-agent, kept current by the kubelet
#   LUMIE_AGENT_OS           default linux  } downloads $CODER_AGENT_URL/bin/lumie-agent-$OS-$ARCH
#   LUMIE_AGENT_ARCH         default from `uname -m`: x86_64/amd64 -> amd64,
#                            aarch64/arm64 -> arm64; any other machine is named and refused
#                            (lumie-agent is built for amd64 and arm64)
#   LUMIE_AGENT_CA_BUNDLE    optional PEM file of a private CA (curl --cacert, wget
#                            --ca-certificate; the agent reads the same variable)
#   LUMIE_AGENT_BIN_DIR      where the agent is stored, default ${TMPDIR:-/tmp}/lumie-agent
#   LUMIE_INIT_RETRY_DELAY   seconds between attempts, default 5
#   LUMIE_INIT_DOWNLOADER    curl, wget or busybox; default: curl, else wget, else busybox wget
#
# The expected sha256 is the X-Lumie-Agent-Sha256 header of the download response, so the
# script stays right when the server is upgraded with a new agent. An answer without that header
# (a proxy's or captive portal's page) is refused, so is a checksum mismatch, a file that is not
# an executable (ELF or #!), and one whose `--version` does not answer `lumie-agent …`. Nothing is
# executed before the checksum matches.
#
# It retries forever with a fixed delay and prints one line per attempt saying what failed (DNS,
# connect, TLS, HTTP status, checksum, …). The container stays up meanwhile, so one can
# `kubectl exec` into it; the script prints how.
set -u

log() { printf 'lumie-init: %s\n' "$*" >&2; }

url="${CODER_AGENT_URL:-}"
url="${url%/}"
os="${LUMIE_AGENT_OS:-linux}"
arch="${LUMIE_AGENT_ARCH:-}"
ca="${LUMIE_AGENT_CA_BUNDLE:-}"
delay="${LUMIE_INIT_RETRY_DELAY:-5}"
dir="${LUMIE_AGENT_BIN_DIR:-${TMPDIR:-/tmp}/lumie-agent}"
bin="$dir/lumie-agent"
tmp="$bin.download"
hdr="$dir/response"
fail=""

# Which tool downloads: curl, gnu-wget or busybox (BusyBox's wget, as `wget` or `busybox wget`).
pick_downloader() {
  case "${LUMIE_INIT_DOWNLOADER:-auto}" in
    curl) command -v curl >/dev/null 2>&1 && dl=curl ;;
    wget) command -v wget >/dev/null 2>&1 && dl=wget ;;
    busybox) command -v busybox >/dev/null 2>&1 && dl=busybox ;;
    *)
      if command -v curl >/dev/null 2>&1; then dl=curl
      elif command -v wget >/dev/null 2>&1; then dl=wget
      elif command -v busybox >/dev/null 2>&1; then dl=busybox
      fi ;;
  esac
  if [ "${dl:-}" = wget ] && wget --help 2>&1 | grep -qi busybox; then dl=busybox-applet; fi
  [ -n "${dl:-}" ]
}

# What went wrong, from a wget's output in $1: an HTTP status when an answer came, else the
# kind of network failure.
classify() {
  status=$(grep -o 'HTTP/[0-9.]* [0-9][0-9][0-9]' "$1" | tail -n 1)
  text=$(tr '\r\n' '  ' <"$1")
  if [ -n "$status" ]; then
    what="HTTP status ${status#HTTP/* } from $src"
  else
    case "$text" in
      *"resolve"*|*"bad address"*|*"Name or service not known"*|*"name resolution"*)
        what="DNS: cannot resolve the host of $src" ;;
      *SSL*|*TLS*|*ssl*|*tls*|*certificate*|*handshake*)
        what="TLS: secure connection to $src failed" ;;
      *"refused"*|*"can't connect"*|*"unreachable"*|*"No route"*|*"Failed to connect"*)
        what="connect: cannot connect to $src" ;;
      *"timed out"*|*"Timeout"*|*"timeout"*)
        what="timeout: no answer from $src" ;;
      *) what="download of $src failed" ;;
    esac
  fi
  detail=$(grep -v '^ ' "$1" | grep -v '^ *$' | tail -n 1 | tr -d '\r')
  fail="$what${detail:+ ($detail)}"
}

# Downloads $src to $tmp and its response headers to $hdr; sets $fail and returns 1 on error.
download() {
  rm -f "$tmp" "$hdr" "$dir/stderr"
  case "$dl" in
    curl)
      set -- -sS -L --connect-timeout 15 --max-time 600 -D "$hdr" -o "$tmp" -w '%{http_code}'
      [ -n "$ca" ] && set -- "$@" --cacert "$ca"
      code=$(curl "$@" "$src" 2>"$dir/stderr")
      rc=$?
      if [ "$rc" -ne 0 ]; then
        case "$rc" in
          6) fail="DNS: cannot resolve the host of $src" ;;
          7) fail="connect: cannot connect to $src" ;;
          28) fail="timeout: no answer from $src" ;;
          35|51|53|54|58|59|60|64|66|77|80|82|83|90|91) fail="TLS: secure connection to $src failed" ;;
          *) fail="curl exit $rc" ;;
        esac
        detail=$(tail -n 1 "$dir/stderr")
        fail="$fail${detail:+ ($detail)}"
        return 1
      fi
      case "$code" in
        2??) return 0 ;;
        *) fail="HTTP status $code from $src"; return 1 ;;
      esac ;;
    wget)
      set -- -nv -S -O "$tmp" --timeout=15 --tries=1
      [ -n "$ca" ] && set -- "$@" "--ca-certificate=$ca"
      wget "$@" "$src" 2>"$hdr" ;;
    busybox|busybox-applet)
      [ -n "$ca" ] && log "note: BusyBox wget cannot use LUMIE_AGENT_CA_BUNDLE; TLS is not verified"
      # No -T: Debian's BusyBox 1.35 wget crashes with it.
      if [ "$dl" = busybox ]; then busybox wget -S -O "$tmp" "$src" 2>"$hdr"
      else wget -S -O "$tmp" "$src" 2>"$hdr"; fi ;;
  esac
  rc=$?
  # wget: a failure, or a final status that is not 2xx, is an error.
  status=$(grep -o 'HTTP/[0-9.]* [0-9][0-9][0-9]' "$hdr" | tail -n 1)
  case "$rc:${status#HTTP/* }" in
    0:2??) return 0 ;;
  esac
  classify "$hdr"
  return 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d ' ' -f 1
  elif command -v busybox >/dev/null 2>&1; then busybox sha256sum "$1" | cut -d ' ' -f 1
  elif command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d ' ' -f 1
  else return 1
  fi
}

# One attempt: download and verify. Sets $fail and returns 1 on error.
attempt() {
  if [ -z "$url" ]; then fail="CODER_AGENT_URL is not set"; return 1; fi
  if ! mkdir -p "$dir" 2>/dev/null; then fail="cannot create $dir (set LUMIE_AGENT_BIN_DIR)"; return 1; fi
  if ! pick_downloader; then fail="no downloader: install curl or wget, or BusyBox"; return 1; fi
  download || return 1
  want=$(tr -d '\r' <"$hdr" | grep -i '^ *x-lumie-agent-sha256:' | tail -n 1 | cut -d : -f 2 | tr -d ' \t' | tr 'A-F' 'a-f')
  if [ -z "$want" ]; then
    fail="no X-Lumie-Agent-Sha256 header: the answer did not come from lumie-server (a proxy page?)"
    return 1
  fi
  if ! got=$(sha256_of "$tmp") || [ -z "$got" ]; then fail="no sha256 tool (sha256sum, busybox, openssl or shasum)"; return 1; fi
  if [ "$got" != "$want" ]; then
    fail="checksum mismatch: expected $want, downloaded $(wc -c <"$tmp" | tr -d ' ') bytes with $got"
    return 1
  fi
  magic=$(od -An -tx1 -N4 "$tmp" | tr -d ' \n')
  case "$magic" in
    7f454c46|2321*) ;;
    *) fail="not an executable (first bytes $magic): refusing to run it"; return 1 ;;
  esac
  chmod 0755 "$tmp" || { fail="cannot chmod $tmp"; return 1; }
  if command -v timeout >/dev/null 2>&1; then
    version=$(timeout 10 "$tmp" --version 2>&1 | head -n 1)
  else
    version=$("$tmp" --version 2>&1 | head -n 1)
  fi
  case "$version" in
    "lumie-agent "*) ;;
    *)
      fail="--version did not answer as lumie-agent (got: ${version:-nothing})"
      case "$version" in
        ""|*"ermission denied"*) fail="$fail; is $dir mounted noexec? (set LUMIE_AGENT_BIN_DIR)" ;;
      esac
      return 1 ;;
  esac
  mv -f "$tmp" "$bin" || { fail="cannot move the agent to $bin"; return 1; }
  return 0
}

# The agent's architecture from the kernel's machine name, unless LUMIE_AGENT_ARCH says.
# An unknown machine is not retried: no download will ever fit it.
if [ -z "$arch" ]; then
  machine=$(uname -m 2>/dev/null || echo unknown)
  case "$machine" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *)
      log "unsupported architecture: $machine (uname -m); lumie-agent is built for amd64 and arm64 (set LUMIE_AGENT_ARCH to override)"
      log "the agent cannot start; this container stays up. To look inside: kubectl exec -it -n ${POD_NAMESPACE:-lumie-dev} ${HOSTNAME:-<pod>} -c dev -- sh"
      # The same PID sleeps on, so SIGTERM still ends the container at once.
      exec sleep 2147483647 ;;
  esac
fi
src="$url/bin/lumie-agent-$os-$arch"

n=0
while :; do
  n=$((n + 1))
  if attempt; then
    log "attempt $n: $version verified (sha256 $got, via $dl); starting it"
    exec "$bin" "$@"
  fi
  log "attempt $n: $fail; retrying in ${delay}s"
  if [ "$n" -eq 3 ] || [ $((n % 20)) -eq 0 ]; then
    log "the agent is not running yet; this container stays up. To look inside: kubectl exec -it -n ${POD_NAMESPACE:-lumie-dev} ${HOSTNAME:-<pod>} -c dev -- sh"
  fi
  sleep "$delay"
done
