#!/bin/sh
# The official postgres image's start, for the stand-in image
# (standins.Containerfile): a cluster made on first start from POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB, password auth over TCP, PostgreSQL in
# the foreground as the postgres user.
set -eu
user=${POSTGRES_USER:-postgres}
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
    as_pg initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pw --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pw
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        as_pg pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
        as_pg psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
        as_pg pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses='*' "$@"
