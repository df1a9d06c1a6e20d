#!/usr/bin/env bash
# Installs the Debian packages the tests use: PostgreSQL and MariaDB (MLMD server backends), Chromium
# (reports are opened in a real headless browser) and Prometheus (the compose scrape config and the
# Grafana dashboard's queries run against the live gateway) and Redis (the CeleryExecutor's broker in
# tests/dags/test_celery_executor.py). Quick when they are already there.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
  echo "tests that need them will be skipped with that reason" >&2
  exit 0
fi
echo "== installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
