#!/bin/sh
# PLACEHOLDER until agent/init-script.sh lands (written by the agent engineer): the server's own
# minimal agent bootstrap. Downloads the agent from $CODER_AGENT_URL, checks it answers
# --version, and execs it; retries forever with a line per attempt.
set -u
url="${CODER_AGENT_URL%/}/bin/lumie-agent-linux-amd64"
dir="${TMPDIR:-/tmp}/lumie-agent.$$"
mkdir -p "$dir"
bin="$dir/lumie-agent"
attempt=0
while :; do
  attempt=$((attempt + 1))
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o "$bin" "$url" && ok=1 || ok=0
  else
    wget -q -O "$bin" "$url" && ok=1 || ok=0
  fi
  if [ "$ok" = 1 ]; then
    chmod +x "$bin"
    if "$bin" --version >/dev/null 2>&1; then
      exec "$bin"
    fi
    echo "lumie-init: attempt $attempt: downloaded file from $url is not a runnable agent" >&2
  else
    echo "lumie-init: attempt $attempt: download of $url failed" >&2
  fi
  sleep 5
done
