#!/usr/bin/env bash
# CPU time the busgate process spends per request (user and system, from /proc), which is far
# less noisy than req/s on a shared machine. Needs a release build, nats-server on
# 127.0.0.1:4222 and wrk.
#   cargo build --release && benches/cpu_per_request.sh off LOCAL && benches/cpu_per_request.sh on PROD
set -euo pipefail
telemetry=${1:-on}
deployment=${2:-LOCAL}
endpoint=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
export MICROBUS_NATS=${MICROBUS_NATS:-nats://127.0.0.1:4222} MICROBUS_PLANE=cpu$RANDOM RUST_LOG=warn
export BUSGATE_TELEMETRY=$telemetry MICROBUS_DEPLOYMENT=$deployment
[ -n "$endpoint" ] && export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=$endpoint
"${CARGO_TARGET_DIR:-$root/target}/release/busgate" --ports 18282 --admin-addr 127.0.0.1:19292 >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 1.5
url='http://127.0.0.1:18282/calculator.example/arithmetic?x=3&op=*&y=4'
wrk -t2 -c64 -d3s "$url" >/dev/null
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
out=$(wrk -t2 -c64 -d6s "$url")
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
requests=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
tick=$(getconf CLK_TCK)
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$requests" -v t="$tick" -v r="$rps" -v label="$telemetry $deployment" \
  'BEGIN { printf "%s: %d requests, %.0f req/s, busgate CPU %.1f us user + %.1f us system per request\n", label, n, r, 1e6*u/t/n, 1e6*s/t/n }'
