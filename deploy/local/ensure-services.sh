#!/usr/bin/env bash
# The test suite talks to a real PostgreSQL and Redis: ALIGND_TEST_POSTGRES and ALIGND_TEST_REDIS
# (URLs, as tests/conftest.py reads them), 127.0.0.1:5432 and 127.0.0.1:6379 by default.
# Start them if they are local, installed and stopped; fail clearly if they cannot be reached.
set -euo pipefail

postgres_url="${ALIGND_TEST_POSTGRES:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
redis_url="${ALIGND_TEST_REDIS:-redis://127.0.0.1:6379}"

# host and port of a URL: scheme://[user[:password]@]host[:port][/...]
host_of() { local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"; echo "${rest%%:*}"; }
port_of() {
  local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"
  if [[ "$rest" == *:* ]]; then echo "${rest##*:}"; else echo "$2"; fi
}
is_local() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 ]]; }

pg_host="$(host_of "$postgres_url")"; pg_port="$(port_of "$postgres_url" 5432)"
redis_host="$(host_of "$redis_url")"; redis_port="$(port_of "$redis_url" 6379)"

pg_up() { pg_isready -h "$pg_host" -p "$pg_port" -q 2>/dev/null; }
redis_up() { (exec 3<>"/dev/tcp/$redis_host/$redis_port" && printf 'PING\r\n' >&3 \
  && read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null; }

if ! pg_up; then
  if is_local "$pg_host" && [[ "$pg_port" == 5432 ]] && command -v pg_ctlcluster >/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 30); do pg_up && break; sleep 1; done
  pg_up || { echo "PostgreSQL is not reachable at $pg_host:$pg_port (set ALIGND_TEST_POSTGRES)" >&2; exit 1; }
fi

if ! redis_up; then
  if is_local "$redis_host" && command -v redis-server >/dev/null; then
    echo "starting Redis on port $redis_port"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  for _ in $(seq 30); do redis_up && break; sleep 1; done
  redis_up || { echo "Redis is not reachable at $redis_host:$redis_port (set ALIGND_TEST_REDIS)" >&2; exit 1; }
fi
echo "PostgreSQL ($pg_host:$pg_port) and Redis ($redis_host:$redis_port) are up"
