#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on a free loopback port and prints its connection URL
# (the last line of stdout; progress goes to stderr).
#
#   scripts/start-postgres.sh [--watch-pid PID]
#
# - Installs the Debian `postgresql` package when `initdb` is missing (apt-get update first).
# - initdb refuses to run as root: as root it runs as the `postgres` user (runuser).
# - The cluster lives in a temp dir; with --watch-pid, a detached watchdog stops the server and
#   removes the dir once PID exits (how test binaries clean up at exit). Without it, stop with
#   `pg_ctl stop -D <dir>` (the dir is printed to stderr).
# - Auth is scram-sha-256 with a random password for user `lumie`, database `lumie`.
set -euo pipefail

watch_pid=""
if [ "${1:-}" = "--watch-pid" ]; then watch_pid=${2:?--watch-pid needs a pid}; fi
log() { echo "start-postgres: $*" >&2; }

find_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] && echo "$found"
}

if [ -z "$(find_bin initdb || true)" ]; then
  log "initdb missing: installing the Debian postgresql package"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi
initdb=$(find_bin initdb)
pg_ctl=$(find_bin pg_ctl)
psql=$(find_bin psql)

as_pg() { "$@"; }
run_user=$(id -un)
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home /nonexistent --shell /usr/sbin/nologin postgres
  run_user=postgres
  as_pg() { runuser -u postgres -- "$@"; }
fi

dir=$(mktemp -d /tmp/lumie-pg.XXXXXX)
chmod 755 "$dir"
password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)
printf '%s\n' "$password" > "$dir/pwfile"
chown -R "$run_user" "$dir"
log "initdb in $dir (as $run_user)"
as_pg "$initdb" -D "$dir/data" -U lumie --pwfile="$dir/pwfile" --auth=scram-sha-256 \
  --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pwfile"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
started=""
for _ in $(seq 1 20); do
  port=$(( 20000 + RANDOM % 40000 ))
  port_free "$port" || continue
  if as_pg "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >&2; then
    started=1; break
  fi
done
[ -n "$started" ] || { log "could not start postgres"; cat "$dir/server.log" >&2 || true; exit 1; }

PGPASSWORD=$password "$psql" -h 127.0.0.1 -p "$port" -U lumie -d postgres -qAt \
  -c "CREATE DATABASE lumie" >&2

if [ -n "$watch_pid" ]; then
  # Detached watchdog: stops the server and removes the dir when the watched process is gone.
  setsid nohup bash -c "
    while kill -0 $watch_pid 2>/dev/null; do sleep 1; done
    if [ \"\$(id -u)\" = 0 ]; then runuser -u postgres -- '$pg_ctl' -D '$dir/data' -m immediate stop; else '$pg_ctl' -D '$dir/data' -m immediate stop; fi
    rm -rf '$dir'
  " >/dev/null 2>&1 < /dev/null &
fi
log "running on 127.0.0.1:$port, data in $dir (stop: pg_ctl stop -D $dir/data)"
echo "postgres://lumie:$password@127.0.0.1:$port/lumie"
