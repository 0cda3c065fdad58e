#!/usr/bin/env bash
# A flame graph of the service during a load test: starts `tokenwarden-loadtest` with the given
# flags, waits DELAY seconds (past the floor, seeding and loading, into the sampled run), then
# samples the `serve` process it started with perf for 15 s (199 Hz, DWARF call graphs) and
# draws benches/results/issue24/flame-NAME.svg with inferno (`cargo install inferno`).
# Usage: bash benches/profile.sh NAME DELAY [loadtest flags...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=$1 delay=$2
shift 2
out=benches/results/issue24
tmp=$(mktemp -d)
timeout 900 target/release/tokenwarden-loadtest "$@" --quiet --report "$tmp/report.json" \
    --chart "$tmp/chart.svg" > "$out/flame-$name.txt" 2>&1 &
loadtest=$!
sleep "$delay"
# $! is `timeout`; the load test is its child and `serve` the load test's.
serve=$(pgrep -P "$(pgrep -P "$loadtest")" -f "tokenwarden serve")
perf record -F 199 -g --call-graph dwarf -o "$tmp/perf.data" -p "$serve" -- sleep 15 2>/dev/null
wait "$loadtest"
perf script -i "$tmp/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/flame-$name.folded"
inferno-flamegraph --title "tokenwarden serve: $name" < "$out/flame-$name.folded" > "$out/flame-$name.svg"
rm -rf "$tmp"
