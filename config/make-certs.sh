#!/bin/sh
# Make a private CA and a server certificate for the compose network's "ingest" host.
# Runs once in the compose "certs" service (as root). The CA certificate goes to $1 (mounted
# read-only into the bridges, which trust only it: OUTBOUND_CA_BUNDLE); the server certificate
# and its private key go to $2, mounted only into the ingest server. The key is 0600 and owned
# by the image's user 10001, the one user that needs it; the CA's own key is deleted.
set -eu
ca_dir=${1:-/ca}
tls_dir=${2:-/ingest-tls}
if [ ! -f "$tls_dir/ingest.pem" ] || [ ! -f "$ca_dir/ca.pem" ]; then
  command -v openssl >/dev/null 2>&1 || apk add --no-cache openssl >/dev/null
  work=$(mktemp -d)
  cd "$work"
  umask 077
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=signal-bridge compose CA" \
    -keyout ca-key.pem -out ca.pem
  openssl req -newkey rsa:2048 -nodes -subj "/CN=ingest" -keyout ingest-key.pem -out ingest.csr
  printf 'subjectAltName=DNS:ingest,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf
  openssl x509 -req -in ingest.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile ext.cnf -out ingest.pem
  cp ca.pem "$ca_dir/ca.pem"
  cp ingest.pem ingest-key.pem "$tls_dir/"
  cd /
  rm -rf "$work"
fi
# Applied on every start, so a volume made by an older version is fixed too.
chown 0:0 "$ca_dir/ca.pem" "$tls_dir/ingest.pem"
chmod 0644 "$ca_dir/ca.pem" "$tls_dir/ingest.pem"
chown 10001:10001 "$tls_dir/ingest-key.pem"
chmod 0600 "$tls_dir/ingest-key.pem"
rm -f "$ca_dir/ca-key.pem" "$ca_dir/ingest-key.pem"
