#!/usr/bin/env bash
# Instructions the busgate process executes per request, counted by valgrind's callgrind: unlike
# req/s or CPU time this is repeatable on a shared, noisy machine, so telemetry on versus off
# can be compared to the percent. Needs a release build, valgrind, nats-server on
# 127.0.0.1:4222 and wrk.
#   cargo build --release && benches/instructions_per_request.sh off PROD && benches/instructions_per_request.sh on PROD http://127.0.0.1:4318/v1/traces
# REQUEST_PATH=/calculator.example/arithmetic?x=3\&op=*\&y=4 counts another request.
# The callgrind profile stays in target/callgrind.<telemetry>.<deployment> for callgrind_annotate.
set -euo pipefail
telemetry=${1:-on}
deployment=${2:-LOCAL}
endpoint=${3:-}
requests_seconds=${SECONDS_UNDER_LOAD:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/callgrind.$telemetry.$deployment"
export MICROBUS_NATS=${MICROBUS_NATS:-nats://127.0.0.1:4222} MICROBUS_PLANE=ir$RANDOM RUST_LOG=warn
export BUSGATE_TELEMETRY=$telemetry MICROBUS_DEPLOYMENT=$deployment
[ -n "$endpoint" ] && export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=$endpoint
port=18383 admin=19393
rm -f "$out" "$out".[0-9]*
# CACHE_SIM=1 also simulates the caches: last-level misses show memory traffic that an
# instruction count misses (PROD's tail buffer).
cache_sim=no
[ "${CACHE_SIM:-0}" = 1 ] && cache_sim=yes
valgrind --tool=callgrind --cache-sim=$cache_sim --instr-atstart=no --callgrind-out-file="$out" \
  "${CARGO_TARGET_DIR:-$root/target}/release/busgate" --ports $port --admin-addr 127.0.0.1:$admin >/dev/null 2>"$out-valgrind.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
# BENCHMARKS.md's table of steps counts compare.sh's hello request; the calculator path adds a
# query parse and a JSON body.
path=${REQUEST_PATH:-/hello.example/hello?name=w}
url="http://127.0.0.1:$port$path"
wrk -t1 -c4 -d3s "$url" >/dev/null
callgrind_control -i on $pid >/dev/null 2>&1
result=$(wrk -t1 -c4 -d${requests_seconds}s "$url")
callgrind_control -i off $pid >/dev/null 2>&1
callgrind_control -d $pid >/dev/null 2>&1
kill $pid; wait $pid 2>/dev/null || true
trap - EXIT
requests=$(echo "$result" | awk '/requests in/ {print $1}')
errors=$(echo "$result" | grep -cE "Non-2xx|Socket errors" || true)
# totals: Ir [Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw]
read -r total dlmr < <(cat "$out" "$out".[0-9]* 2>/dev/null | awk '/^totals:/ {s += $2; m += $9 + $10} END {print s, m}')
awk -v i="$total" -v m="$dlmr" -v n="$requests" -v e="$errors" -v sim="$cache_sim" -v label="$telemetry $deployment" \
  'BEGIN { printf "%s: %d requests (%s error lines), %.0f instructions per request", label, n, e, i/n;
           if (sim == "yes") printf ", %.0f last-level data cache misses per request", m/n; printf "\n" }'
