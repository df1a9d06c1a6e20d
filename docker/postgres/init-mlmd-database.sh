#!/usr/bin/env bash
# Creates ML Metadata's database and its own login role on the platform's PostgreSQL server.
#
# The postgres image runs this once, when it initialises an empty data volume (as a
# /docker-entrypoint-initdb.d script); Airflow's database comes from POSTGRES_DB. MLMD gets a
# separate role, with no access to Airflow's database (least privilege for MLMD's clients).
# The script is idempotent, and it sets the role's password each time; to create the database on
# a volume made before this script existed, or to rotate MLMD_DB_PASSWORD, run
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-mlmd-database.sh
set -euo pipefail

: "${POSTGRES_USER:?POSTGRES_USER is not set: run this inside the postgres container}"
: "${MLMD_DB_PASSWORD:?MLMD_DB_PASSWORD is not set: add it to .env (see .env.example)}"
mlmd_user="${MLMD_DB_USER:-mlmd}"
mlmd_db="${MLMD_DB_NAME:-mlmd}"

# Values travel as psql variables and are quoted by format(%I/%L), never spliced into SQL text,
# so a password with quotes or backslashes cannot break (or inject into) the statements.
psql --no-psqlrc -v ON_ERROR_STOP=1 \
  --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
  --set=mlmd_user="$mlmd_user" --set=mlmd_password="$MLMD_DB_PASSWORD" --set=mlmd_db="$mlmd_db" \
  --set=airflow_db="${POSTGRES_DB:-$POSTGRES_USER}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'mlmd_user', :'mlmd_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'mlmd_user')\gexec
-- Always (re)set: running the script again after changing MLMD_DB_PASSWORD rotates it.
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'mlmd_user', :'mlmd_password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'mlmd_db', :'mlmd_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'mlmd_db')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'mlmd_db')\gexec
SELECT format('GRANT ALL ON DATABASE %I TO %I', :'mlmd_db', :'mlmd_user')\gexec
-- Airflow's database: its owner only, so MLMD's credentials cannot even connect to it.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'airflow_db')\gexec
SQL
echo "init-mlmd-database: database '$mlmd_db' owned by role '$mlmd_user' is ready"
