#!/usr/bin/env bash
# Soak: busgate all-in-one on a real nats-server at moderate load for SOAK_SECONDS (default
# 600), sampling every SOAK_SAMPLE seconds (default 30) its RSS, open files, threads, tokio tasks, NATS
# connections, and the errors so far (non-2xx answers of the load, ERROR/WARN log lines).
# Reports the samples and start-versus-end; writes them into BENCHMARKS.md between the
# `soak.sh` markers unless SOAK_WRITE=0. Goal: no growth beyond noise, zero errors.
#   benches/soak.sh                  # 10 minutes
#   SOAK_SECONDS=60 SOAK_WRITE=0 benches/soak.sh
# Needs wrk, curl, python3 (benches/compare.sh installs wrk from Debian) and nats-server
# (NATS_SERVER_BIN, else the Go-built one of scripts/go-tools, else PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${SOAK_SECONDS:-600}
sample=${SOAK_SAMPLE:-30}
write=${SOAK_WRITE:-1}
conns=${SOAK_CONNECTIONS:-8}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "soak.sh: missing $tool (apt-get install $tool)" >&2; exit 1; }
done
nats_server=${NATS_SERVER_BIN:-$HOME/.cache/busgate/tools/nats-server}
[ -x "$nats_server" ] || nats_server=$(command -v nats-server || true)
[ -x "$nats_server" ] || { echo "soak.sh: no nats-server (run scripts/go-tools or set NATS_SERVER_BIN)" >&2; exit 1; }

echo "soak.sh: building (release)" >&2
cargo build --release --quiet --bin busgate
busgate=${CARGO_TARGET_DIR:-$root/target}/release/busgate

work=$(mktemp -d /tmp/busgate-soak.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nats_port=$(free_port) monitor=$(free_port)
"$nats_server" -a 127.0.0.1 -p "$nats_port" -m "$monitor" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$nats_port) 2>/dev/null && break; sleep 0.1; done

port=$(free_port) admin=$(free_port)
MICROBUS_NATS=nats://127.0.0.1:$nats_port BUSGATE_SMTP_INGRESS_PORT=$(free_port) \
  "$busgate" --ports "$port" --admin-addr "127.0.0.1:$admin" >"$work/busgate.log" 2>&1 &
gw=$!
pids+=("$gw")
url="http://127.0.0.1:$port/hello.example/hello?name=soak"
for _ in $(seq 150); do curl -fs --max-time 2 "$url" >/dev/null 2>&1 && break; sleep 0.2; done

# The load: wrk with a Lua counter of non-2xx answers, for the whole soak.
cat >"$work/count.lua" <<'EOF'
bad = 0
response = function(status, headers, body) if status >= 300 then bad = bad + 1 end end
done = function(summary, latency, requests)
  io.write(string.format("requests %d non2xx %d errors %d\n", summary.requests, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
wrk -t1 -c"$conns" -d"${seconds}s" -s "$work/count.lua" "$url" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")

snapshot() { # elapsed
  local rss fds threads tasks nats_conns errors
  rss=$(awk '$1 == "VmRSS:" {print int($2 / 1024)}' "/proc/$gw/status")
  fds=$(ls "/proc/$gw/fd" | wc -l)
  threads=$(ls "/proc/$gw/task" | wc -l)
  tasks=$(curl -fs "http://127.0.0.1:$admin/metrics" | awk '$1 == "busgate_runtime_alive_tasks" {print $2}')
  nats_conns=$(curl -fs "http://127.0.0.1:$monitor/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])')
  errors=$(grep -cE ' (ERROR|WARN) ' "$work/busgate.log" || true)
  printf "| %s | %s | %s | %s | %s | %s | %s |\n" "$1" "$rss" "$fds" "$threads" "${tasks:-?}" "$nats_conns" "$errors"
}
table=$work/table
{
  echo "| elapsed s | RSS MB | open files | threads | tokio tasks | NATS connections | ERROR/WARN log lines |"
  echo "|---|---|---|---|---|---|---|"
} >"$table"
sleep 5
start=$(date +%s)
snapshot 0 | tee -a "$table" >&2
while kill -0 "$wrk_pid" 2>/dev/null; do
  sleep "$sample"
  kill -0 "$wrk_pid" 2>/dev/null || break
  snapshot $(( $(date +%s) - start )) | tee -a "$table" >&2
done
wait "$wrk_pid" || true
sleep 2
snapshot "end (load stopped)" | tee -a "$table" >&2
load=$(grep '^requests' "$work/wrk.out" || echo "requests ? non2xx ? errors ?")
rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")

first=$(sed -n 3p "$table") last=$(sed -n '$p' "$table")
header="Run of $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD); busgate all-in-one on NATS (telemetry on), wrk -t1 -c$conns for $seconds s: $load (${rate} req/s), sampled every $sample s."
summary=$(python3 - "$first" "$last" <<'EOF'
import sys
a = [c.strip() for c in sys.argv[1].strip('|').split('|')]
b = [c.strip() for c in sys.argv[2].strip('|').split('|')]
print(f"Start → end: RSS {a[1]} → {b[1]} MB, open files {a[2]} → {b[2]}, threads {a[3]} → {b[3]}, "
      f"tokio tasks {a[4]} → {b[4]}, NATS connections {a[5]} → {b[5]}, ERROR/WARN log lines {a[6]} → {b[6]}.")
EOF
)
echo
echo "$header"
echo
cat "$table"
echo
echo "$summary"
if [ "$write" = 1 ]; then
  python3 - "$root/BENCHMARKS.md" "$header" "$table" "$summary" <<'EOF'
import sys
path, header, table, summary = sys.argv[1], sys.argv[2], open(sys.argv[3]).read(), sys.argv[4]
text = open(path).read()
begin, end = "<!-- soak.sh:begin -->", "<!-- soak.sh:end -->"
if begin not in text:
    text += "\n## Soak (benches/soak.sh)\n\n" + begin + "\n" + end + "\n"
i, j = text.index(begin) + len(begin), text.index(end)
open(path, "w").write(text[:i] + "\n" + header + "\n\n" + table.strip() + "\n\n" + summary + "\n" + text[j:])
EOF
  echo "soak.sh: figures written to BENCHMARKS.md" >&2
fi
