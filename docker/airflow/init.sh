#!/usr/bin/env bash
# One-shot set-up of the Airflow database and login, run by the `airflow-init` service on every
# `docker compose up` (through the image's entrypoint, which first waits for the database).
# Both steps are idempotent: a migrated database is left as it is, and the admin password is
# rewritten from the environment, which is how it is rotated.
set -euo pipefail

echo "airflow-init: migrating the Airflow database"
airflow db migrate

echo "airflow-init: writing the password of '${AIRFLOW_ADMIN_USER:-admin}' for the simple auth manager"
python /opt/airflow/project/docker/airflow/write_auth_passwords.py

airflow version
