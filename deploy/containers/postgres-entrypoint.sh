#!/bin/sh
# The atrium-postgres image's entrypoint. On the first start (an empty $PGDATA) it creates the
# cluster with the superuser `atrium`, whose password is the first line of
# $POSTGRES_PASSWORD_FILE, password (scram-sha-256) sign-in over TCP from anywhere, and the
# database `atrium`. Then it runs the server in the foreground, on TCP only (no Unix socket,
# so no writable /run is needed). Stop it with SIGINT, a fast shutdown (the image's stop
# signal); SIGTERM is PostgreSQL's smart shutdown, which waits for every client to leave.
#
#   POSTGRES_PASSWORD_FILE  required on the first start
#   POSTGRES_PORT           default 5432
#   POSTGRES_LISTEN         default * (all addresses)
set -eu
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE must name the superuser password file}
  [ -s "$pwfile" ] || { echo "postgres-entrypoint: $pwfile is empty" >&2; exit 1; }
  echo "postgres-entrypoint: initialising $PGDATA"
  # (The image has no coreutils: initdb makes the folder, mode 0700.)
  initdb -D "$PGDATA" -U atrium --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=trust \
    -E UTF8 --locale=C --no-instructions
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
    >>"$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE atrium" | postgres --single -D "$PGDATA" -c unix_socket_directories= postgres >/dev/null
fi
exec postgres -D "$PGDATA" -c "listen_addresses=${POSTGRES_LISTEN:-*}" -c "port=${POSTGRES_PORT:-5432}" \
  -c unix_socket_directories= "$@"
