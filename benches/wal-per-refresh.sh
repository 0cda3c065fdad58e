#!/usr/bin/env bash
# Measures a running load test's WAL from the outside, as `tokenwarden loadtest` does inside
# (tools/loadtest/src/dbcost.rs), for builds whose load test predates that: waits until the
# first refresh is saved in DB_URL, then for SECONDS reads every 2 s the WAL records that name
# a block of that database (pg_walinspect), and prints their bytes without full-page images,
# the images' bytes, and the refreshes saved meanwhile (sum of users.refresh_count).
# Usage: bash benches/wal-per-refresh.sh postgres://postgres@127.0.0.1:5432/tw_issue24 30
set -euo pipefail
url=$1
seconds=${2:-30}
q() { psql "$url" -Atqc "$1"; }
# WAL is read from the server's postgres database: a long read in the measured database would
# hold back the pruning of its pages (see tools/loadtest/src/dbcost.rs).
server() { psql "${url%/*}/postgres" -Atqc "$1"; }
for _ in $(seq 1 600); do
    # The database may not exist yet, or be seeding: wait through errors.
    [ "$(q "SELECT COALESCE(sum(refresh_count), 0) FROM users" 2>/dev/null || echo 0)" != 0 ] && break
    sleep 0.5
done
server "CREATE EXTENSION IF NOT EXISTS pg_walinspect"
oid=$(q "SELECT oid FROM pg_database WHERE datname = current_database()")
# A temporary replication slot, held by a session of its own for the measurement, keeps the
# segments not yet read from being removed by a checkpoint; it goes with the session.
psql "${url%/*}/postgres" -Atqc "SELECT pg_create_physical_replication_slot('tw_walscript_' \
    || pg_backend_pid(), true, true); SELECT pg_sleep($seconds + 10)" >/dev/null &
holder=$!
sleep 0.5
from=$(server "SELECT pg_current_wal_flush_lsn()")
refreshes_start=$(q "SELECT sum(refresh_count) FROM users")
records=0 bytes=0 fpi=0
end=$((SECONDS + seconds))
while [ "$SECONDS" -lt "$end" ]; do
    sleep 2
    IFS='|' read -r r b f upto < <(server "SELECT count(r.*), COALESCE(sum(record_length - fpi_length), 0), \
        COALESCE(sum(fpi_length), 0), max(e.at) FROM (SELECT pg_current_wal_flush_lsn() AS at) e \
        LEFT JOIN pg_get_wal_records_info('$from'::pg_lsn, (SELECT pg_current_wal_flush_lsn())) r \
        ON r.block_ref LIKE '% rel %/$oid/%'")
    records=$((records + r)) bytes=$((bytes + b)) fpi=$((fpi + f)) from=$upto
done
refreshes=$(( $(q "SELECT sum(refresh_count) FROM users") - refreshes_start ))
kill "$holder" 2>/dev/null || true
echo "refreshes $refreshes records $records bytes $bytes fpi_bytes $fpi"
echo "per refresh: $((bytes / (refreshes > 0 ? refreshes : 1))) B without page images, $(awk "BEGIN {printf \"%.2f\", $records / ($refreshes > 0 ? $refreshes : 1)}") records"
