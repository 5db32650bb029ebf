#!/usr/bin/env bash
# What `make bench-agent` compares the agent's forwarding with: haproxy (TCP mode) and nginx's
# stream module, from Debian's packages. Installs only; never leaves a service running (the
# packages' own init scripts would start nginx on port 80 and haproxy on its default config).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
stream_module() { ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; }

if have haproxy && have nginx && stream_module; then
  echo "bench deps: haproxy and nginx (stream) already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

# Keep the packages' services from starting during the install.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
pkgs=(haproxy nginx libnginx-mod-stream)
if ! $sudo apt-get install -y --no-install-recommends "${pkgs[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${pkgs[@]}"
fi
# Where an init system started them anyway, stop them: the benchmark runs its own instances.
for svc in nginx haproxy; do
  if have systemctl && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $sudo systemctl stop "$svc" || true
  elif [ -x "/etc/init.d/$svc" ]; then
    $sudo "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
done
haproxy -v | head -1
nginx -v
