#!/bin/sh
# Prepares the named volumes that containers running as different users share.
#
# Docker creates a new named volume owned by root. Airflow and the gateway run as
# ${MLOPS_UID}:0 (the official Airflow image's convention), TF Serving as root, so the owner
# and group-write bits are set here, once, before anything else starts. Only the top of each
# volume is changed: existing files keep their owners, and nothing is ever deleted.
# VOLUMES_ROOT (empty in the container) lets the tests run this against a temporary folder.
set -eu

uid="${MLOPS_UID:-50000}"
root="${VOLUMES_ROOT:-}"
seed="${MODELS_SEED_CONFIG:-/init/models.seed.config}"
case "$uid" in
  '' | *[!0-9]*) echo "init-volumes: MLOPS_UID must be a numeric user id, got '$uid'" >&2; exit 1 ;;
esac

for dir in /models /logs /data/pipeline /opt/airflow/logs /opt/airflow/auth /var/lib/mlops-gateway; do
  mkdir -p "$root$dir"
  chown "$uid:0" "$root$dir"
  chmod 0775 "$root$dir"
done
# The Airflow admin's password file lives here: no access for other users.
chmod 0770 "$root/opt/airflow/auth"

# TF Serving will not start without its --model_config_file. Seed an empty model list once;
# after that the file belongs to the pipeline's push/rollout steps and is never overwritten.
config="$root/models/models.config"
if [ ! -e "$config" ]; then
  tmp="$root/models/.models.config.seed.$$"
  cp "$seed" "$tmp"
  chown "$uid:0" "$tmp"
  chmod 0664 "$tmp"
  mv "$tmp" "$config"
  echo "init-volumes: seeded /models/models.config with an empty model list"
fi
echo "init-volumes: volumes ready for uid $uid"
