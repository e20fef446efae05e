#!/bin/sh
# Make a private CA and a server certificate for the compose network's "ingest" host.
# Runs once in the compose "certs" service; the bridges trust only this CA (OUTBOUND_CA_BUNDLE).
set -eu
out=${1:-/certs}
[ -f "$out/ingest.pem" ] && exit 0
command -v openssl >/dev/null 2>&1 || apk add --no-cache openssl >/dev/null
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=signal-bridge compose CA" \
  -keyout ca-key.pem -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj "/CN=ingest" -keyout ingest-key.pem -out ingest.csr
printf 'subjectAltName=DNS:ingest,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in ingest.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
  -extfile ext.cnf -out ingest.pem
rm -f ingest.csr ext.cnf ca-key.pem
chmod 0644 ca.pem ingest.pem ingest-key.pem
