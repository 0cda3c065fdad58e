#!/usr/bin/env bash
# Issue 24's runs: refresh saturation on SQLite (100k users) and PostgreSQL (50k users), and
# connect saturation on SQLite, each with the machine's floor measured first by the load test.
# Usage: BIN_DIR=<dir holding tokenwarden and tokenwarden-loadtest> TAG=<before|after>
#        bash benches/issue24.sh [sqlite|postgres|connect|1m|all]
# Reports go to benches/results/issue24/<run>-<tag>.{json,txt,svg}. Every run is bounded in time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN_DIR=${BIN_DIR:-target/release}
TAG=${TAG:-after}
OUT=benches/results/issue24
PG=${PG_URL:-postgres://postgres@127.0.0.1:5432}
mkdir -p "$OUT"
what=${1:-all}

fresh_pg() {
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tw_issue24 WITH (FORCE)" >/dev/null
    psql "$PG/postgres" -qc "CREATE DATABASE tw_issue24" >/dev/null
    echo "$PG/tw_issue24"
}

run() {
    local name=$1
    shift
    echo "=== $name-$TAG"
    timeout 1800 "$BIN_DIR/tokenwarden-loadtest" "$@" --quiet \
        --report "$OUT/$name-$TAG.json" --chart "$OUT/$name-$TAG.svg" | tee "$OUT/$name-$TAG.txt"
}

sqlite() { run sqlite-100k-saturation --users 100000 --token-lifetime-secs 80 --refresh-lead-secs 60 --duration-secs 40; }
postgres() { run postgres-50k-saturation --users 50000 --token-lifetime-secs 80 --refresh-lead-secs 60 --duration-secs 30 --database-url "$(fresh_pg)"; }
connect() { run sqlite-connect-saturation --users 0 --connect-users 30000 --connect-rate 0 --connect-workers 32 --token-lifetime-secs 3600 --duration-secs 30; }
onem() { run sqlite-1m --users 1000000 --token-lifetime-secs 1500 --refresh-lead-secs 60 --duration-secs 60; }

case "$what" in
    sqlite) sqlite ;;
    postgres) postgres ;;
    connect) connect ;;
    1m) onem ;;
    all) sqlite; postgres; connect ;;
esac
