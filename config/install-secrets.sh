#!/bin/sh
# Copy the compose secrets into the "bridge-secrets" volume, each 0400 and owned by the image's
# user 10001 (the bridges, the publisher and the ingest server run as it). Compose mounts a
# file secret as it is on the host (its uid, gid and mode are not applied to file secrets), so
# this one-shot service, run as root, makes the copy the service user can read and no one else.
set -eu
out=${1:-/bridge-secrets}
from=${2:-/run/secrets}
for name in hmac_secret redis_password; do
  if [ ! -s "$from/$name" ]; then
    echo "install-secrets: config/secrets/$name is missing or empty (see docker-compose.yml)" >&2
    exit 1
  fi
  install -m 0400 -o 10001 -g 10001 "$from/$name" "$out/$name"
done
