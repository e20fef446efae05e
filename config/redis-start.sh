#!/bin/sh
# Start Redis with a password from the compose secret "redis_password", never on a command line
# or in an environment variable: it goes into an ACL file (0600, owned by the redis user) that
# redis-server reads at start. Extra arguments are passed to redis-server.
set -eu
password=$(cat /run/secrets/redis_password)
case "$password" in
  "" | *[[:space:]]*)
    echo "redis-start: config/secrets/redis_password must be non-empty, without spaces" >&2
    exit 1
    ;;
esac
umask 077
printf 'user default on >%s ~* &* +@all\n' "$password" > /tmp/users.acl
chown redis:redis /tmp/users.acl
exec docker-entrypoint.sh redis-server --aclfile /tmp/users.acl "$@"
