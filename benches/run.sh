#!/usr/bin/env bash
# Runs the load tests of BENCHMARKS.md and this machine's ceilings, writing every report to
# benches/results/. Usage: bash benches/run.sh [100k|1m|saturation|callback|readyz|ceilings|all]
# (release build of the workspace needed: cargo build --release --workspace, which also builds
# tokenwarden-loadtest). Every request goes to loopback; every run is bounded in time.
# BIN and OUT may be overridden (e.g. to measure an older build into another directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release/tokenwarden}
OUT=${OUT:-benches/results}
PG=${PG_URL:-postgres://postgres@127.0.0.1:5432}
mkdir -p "$OUT"
what=${1:-all}

fresh_pg() {
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tw_loadtest WITH (FORCE)"
    psql "$PG/postgres" -qc "CREATE DATABASE tw_loadtest"
    echo "$PG/tw_loadtest"
}

# run NAME USERS LIFETIME LEAD DURATION DATABASE_URL|sqlite [extra flags...]
run() {
    local name=$1 users=$2 lifetime=$3 lead=$4 duration=$5 db=$6
    shift 6
    local dbflag=()
    [ "$db" != sqlite ] && dbflag=(--database-url "$db")
    echo "=== $name"
    timeout 3600 "$BIN" loadtest --users "$users" --token-lifetime-secs "$lifetime" \
        --refresh-lead-secs "$lead" --duration-secs "$duration" "${dbflag[@]}" \
        --report "$OUT/$name.json" --chart "$OUT/$name.svg" --quiet "$@" | tee "$OUT/$name.txt"
}

ceilings() {
    echo "=== pgbench: single-row updates per second on the same PostgreSQL"
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tw_pgbench WITH (FORCE)"
    psql "$PG/postgres" -qc "CREATE DATABASE tw_pgbench"
    pgbench -q -i -s 10 "$PG/tw_pgbench" >/dev/null 2>&1
    printf '\\set aid random(1, 1000000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' > /tmp/tw-update.sql
    pgbench -n -c 16 -j 2 -T 20 -f /tmp/tw-update.sql "$PG/tw_pgbench" | tee "$OUT/pgbench.txt"
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tw_pgbench WITH (FORCE)"
    echo "=== wrk: loopback HTTP requests per second against the sandbox"
    "$BIN" sandbox-google --listen 127.0.0.1:4199 >/dev/null 2>&1 &
    local pid=$!
    sleep 1
    timeout 60 wrk -t 2 -c 64 -d 15s http://127.0.0.1:4199/sandbox/stats | tee "$OUT/wrk.txt"
    kill "$pid"
}

case "$what" in
    saturation)
        # Tokens live 80 s and refresh 60 s early: 100k users need 5,000 refreshes/s.
        run sqlite-100k-saturation 100000 80 60 40 sqlite
        run postgres-100k-saturation 100000 80 60 40 "$(fresh_pg)"
        ;;
    100k)
        # 100k users due every 200 s: 500 refreshes/s, within this machine's capacity.
        run sqlite-100k 100000 260 60 90 sqlite
        run postgres-100k 100000 260 60 90 "$(fresh_pg)"
        ;;
    1m)
        # 1M users due every 1,440 s: about 700 refreshes/s.
        run sqlite-1m 1000000 1500 60 120 sqlite
        run postgres-1m 1000000 1500 60 120 "$(fresh_pg)"
        ;;
    callback)
        # 200 connects/s through the real consent path, 100k users held, microservice 5 s slow.
        run callback-100k 100000 3600 300 30 sqlite --connect-users 6000 --connect-rate 200 --microservice-latency-ms 5000
        ;;
    readyz)
        # Issue 14: a 10k-user saturation run on SQLite (tokens live 62 s and are refreshed
        # 60 s early), alone, then with /readyz probed 1,000 times a second during its run.
        run sqlite-10k-saturation 10000 62 60 20 sqlite
        run sqlite-10k-saturation-readyz 10000 62 60 20 sqlite &
        python3 benches/readyz-hammer.py $! 1000 25 | tee "$OUT/readyz-hammer.txt"
        wait
        ;;
    ceilings) ceilings ;;
    all)
        ceilings
        "$0" saturation
        "$0" 100k
        "$0" callback
        "$0" 1m
        ;;
esac
