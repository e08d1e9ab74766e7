#!/usr/bin/env bash
# busgate's request path beside its floors, in one run on one machine (the method is in
# BENCHMARKS.md, where this script writes its figures between the compare.sh markers):
#
#   benches/compare.sh                 # everything, about 10 minutes on 2 cores
#   CONNS="64" DURATION=3 benches/compare.sh --no-write   # a quick look, BENCHMARKS.md untouched
#
# Configurations, each behind `GET /hello.example/hello?name=w` (nginx and the bridge answer the
# same text): busgate all-in-one on NATS with telemetry on (the default) and off, and with the
# short circuit off (MICROBUS_SHORT_CIRCUIT=0: the ingress's calls to the examples beside it go
# through NATS as they would between processes, instead of in memory); busgate split
# into `busgate ingress` and `busgate examples`; busgate on its in-process bus (no NATS); the
# bare bridge (axum -> one async-nats request/reply -> a responder process, benches/bridge.rs);
# nginx -> nginx (one worker each, upstream keep-alive); an axum hello world.
# For each, at 1, 64 and 256 connections (wrk -t2): req/s, p50, p99, CPU microseconds per
# request of each side and of nats-server (utime + stime from /proc), peak RSS. Then: a 16 MB
# POST through the ingress (MB/s), idle RSS, RSS with 10,000 open keep-alive connections, the
# goals' ratios from interleaved rounds at 64 connections (ROUNDS, default 7), and callgrind
# instructions per request of busgate and of the bridge.
#
# Needs: wrk, nginx, valgrind, curl, python3 (Debian packages; installed when run as root),
# nats-server (NATS_SERVER_BIN, else the Go-built one of scripts/go-tools, else PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-"1 64 256"}
HELD_CONNECTIONS=${HELD_CONNECTIONS:-10000}
write=1
[ "${1:-}" = "--no-write" ] && write=0

missing=()
for tool in wrk:wrk nginx:nginx valgrind:valgrind curl:curl python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "compare.sh: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "compare.sh: missing ${missing[*]}; install the Debian packages: ${missing[*]}" >&2
    exit 1
  fi
fi
nats_server=${NATS_SERVER_BIN:-$HOME/.cache/busgate/tools/nats-server}
[ -x "$nats_server" ] || nats_server=$(command -v nats-server || true)
[ -x "$nats_server" ] || { echo "compare.sh: no nats-server (run scripts/go-tools or set NATS_SERVER_BIN)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "compare.sh: building (release)" >&2
cargo build --release --quiet --bin busgate
bridge_bin=$(cargo bench --bench bridge --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bridge" and m.get("executable"):
        print(m["executable"])')
busgate=${CARGO_TARGET_DIR:-$root/target}/release/busgate

work=$(mktemp -d /tmp/busgate-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
nats_url=nats://127.0.0.1:$nats_port
"$nats_server" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$nats_port) 2>/dev/null && break; sleep 0.1; done
nats_version=$("$nats_server" --version 2>&1 | head -1)

path='/hello.example/hello?name=w'
wait_ok() { # url expected-body-prefix
  for _ in $(seq 150); do
    body=$(curl -fs --max-time 2 "$1" 2>/dev/null || true)
    case "$body" in "$2"*) return 0 ;; esac
    sleep 0.2
  done
  echo "compare.sh: $1 never answered '$2'" >&2
  exit 1
}
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sum_kb() { local f=$1 t=0 p; shift; for p in "$@"; do t=$((t + $(status_kb "$p" "$f"))); done; echo $t; }
to_ms() { # wrk latency text (us, ms, s) -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
tick=$(getconf CLK_TCK)
# CPU time the hypervisor took from this machine (all CPUs, ms; the steal column of
# /proc/stat). On the VMs these figures were taken on it comes in 100 ms quanta, and one such
# quantum during a 3 s turn is a 100 ms stall of whatever ran on that CPU: wrk's correction for
# coordinated omission spreads it over ~1.5% of the samples, which is the whole p99.
steal_ms() { awk -v t="$tick" '$1 == "cpu" {printf "%d", $9 * 1000 / t}' /proc/stat; }
results=$work/results.tsv
: >"$results"
rss=$work/rss.tsv
: >"$rss"

# Non-2xx responses and socket errors in wrk's output on stdin.
wrk_errors() { awk '/Non-2xx|Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END {print s + 0}'; }

# measure NAME URL "GATEWAY PIDS" "SERVICE PIDS" (service pids may be empty: same process)
measure() {
  local name=$1 url=$2 gw=$3 svc=$4 c
  wrk -t2 -c64 -d${WARMUP}s "$url" >/dev/null
  for c in $CONNS; do
    local threads=2
    [ "$c" -lt 2 ] && threads=1
    local g0 s0 n0 st0 g1 s1 n1 st1 out
    g0=$(ticks $gw); s0=$(ticks $svc); n0=$(ticks $nats_pid); st0=$(steal_ms)
    out=$(wrk -t$threads -c"$c" -d${DURATION}s --latency "$url")
    g1=$(ticks $gw); s1=$(ticks $svc); n1=$(ticks $nats_pid); st1=$(steal_ms)
    local requests rps p50 p99 errors
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
    errors=$(echo "$out" | wrk_errors)
    awk -v name="$name" -v c="$c" -v n="$requests" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v e="$errors" \
        -v g=$((g1 - g0)) -v s=$((s1 - s0)) -v nt=$((n1 - n0)) -v svc="$svc" -v t="$tick" -v st=$((st1 - st0)) \
      'BEGIN { us = 1e6 / t / n; printf "%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%.1f\t%d\n", name, c, rps, p50, p99, e, g * us, (svc == "" ? "-" : sprintf("%.1f", s * us)), nt * us, st }' \
      >>"$results"
    tail -1 "$results" >&2
  done
  printf "%s\t%s\n" "$name" "$(( $(sum_kb VmHWM $gw $svc) / 1024 ))" >>"$rss"
}

busgate_env=(env MICROBUS_PLANE=bench$RANDOM)
start_busgate() { # NAME ENV... -- ARGS...: starts and records its pid in $last_pid
  local log=$work/$1.log; shift
  # Each its own SMTP port: busgates running side by side would otherwise share one, bound
  # only by whichever started first.
  local envs=(BUSGATE_SMTP_INGRESS_PORT="$(free_port)")
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  "${busgate_env[@]}" "${envs[@]}" "$busgate" "$@" >"$log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}

run_busgate_all_in_one() { # NAME ENV...
  local name=$1; shift
  local port admin
  port=$(free_port) admin=$(free_port)
  start_busgate "$name" MICROBUS_NATS="$nats_url" "$@" -- --ports "$port" --admin-addr "127.0.0.1:$admin"
  wait_ok "http://127.0.0.1:$port$path" "Hello, w!"
  measure "$name" "http://127.0.0.1:$port$path" "$last_pid" ""
  stop_all
}

echo "compare.sh: busgate all-in-one on NATS" >&2
run_busgate_all_in_one "busgate, NATS, telemetry on"
run_busgate_all_in_one "busgate, NATS, telemetry off" BUSGATE_TELEMETRY=off
run_busgate_all_in_one "busgate, NATS, short circuit off" MICROBUS_SHORT_CIRCUIT=0

echo "compare.sh: busgate split" >&2
port=$(free_port)
start_busgate split-ingress MICROBUS_NATS="$nats_url" -- ingress --ports "$port" --admin-addr "127.0.0.1:$(free_port)"
ingress_pid=$last_pid
start_busgate split-examples MICROBUS_NATS="$nats_url" -- examples --admin-addr "127.0.0.1:$(free_port)"
examples_pid=$last_pid
wait_ok "http://127.0.0.1:$port$path" "Hello, w!"
measure "busgate split (ingress + examples)" "http://127.0.0.1:$port$path" "$ingress_pid" "$examples_pid"
stop_all

echo "compare.sh: busgate in-process" >&2
port=$(free_port)
start_busgate inproc -- --ports "$port" --admin-addr "127.0.0.1:$(free_port)"
wait_ok "http://127.0.0.1:$port$path" "Hello, w!"
measure "busgate, in-process bus" "http://127.0.0.1:$port$path" "$last_pid" ""
stop_all

start_bridge() { # NAME PORT: the responder and the bridge on subject NAME.hello
  "$bridge_bin" responder "$nats_url" "$1.hello" >"$work/$1-responder.log" 2>&1 &
  responder_pid=$!; pids+=("$responder_pid")
  "$bridge_bin" bridge "127.0.0.1:$2" "$nats_url" "$1.hello" >"$work/$1-bridge.log" 2>&1 &
  bridge_pid=$!; pids+=("$bridge_pid")
}

echo "compare.sh: bare bridge" >&2
port=$(free_port)
start_bridge bench "$port"
wait_ok "http://127.0.0.1:$port$path" "Hello, w!"
measure "bare bridge (axum -> async-nats -> responder)" "http://127.0.0.1:$port$path" "$bridge_pid" "$responder_pid"
stop_all

nginx_conf() { # NAME PORT LOCATION-BODY
  mkdir -p "$work/nginx-$1"
  cat >"$work/nginx-$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $work/nginx-$1/nginx.pid;
error_log $work/nginx-$1/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $work/nginx-$1/body;
  proxy_temp_path $work/nginx-$1/proxy;
  fastcgi_temp_path $work/nginx-$1/fastcgi;
  uwsgi_temp_path $work/nginx-$1/uwsgi;
  scgi_temp_path $work/nginx-$1/scgi;
  client_max_body_size 64m;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:${4:-1}; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / { $3 }
  }
}
EOF
  nginx -c "$work/nginx-$1/nginx.conf" -p "$work/nginx-$1" -e "$work/nginx-$1/error.log" >"$work/nginx-$1.log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}
nginx_workers() { pgrep -P "$1" | tr '\n' ' '; }
start_nginx_pair() { # PREFIX FRONT-PORT: an upstream answering the hello, a front proxying to it
  local up
  up=$(free_port)
  nginx_conf "$1upstream" "$up" 'default_type text/plain; return 200 "Hello, w!";'
  upstream_pid=$last_pid
  nginx_conf "$1front" "$2" 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";' "$up"
  front_pid=$last_pid
}

echo "compare.sh: nginx -> nginx" >&2
front=$(free_port)
start_nginx_pair "" "$front"
wait_ok "http://127.0.0.1:$front$path" "Hello, w!"
measure "nginx -> nginx" "http://127.0.0.1:$front$path" "$front_pid $(nginx_workers "$front_pid")" "$upstream_pid $(nginx_workers "$upstream_pid")"
nginx_front_url="http://127.0.0.1:$front$path"

echo "compare.sh: axum hello world" >&2
port=$(free_port)
"$bridge_bin" hello "127.0.0.1:$port" >"$work/hello.log" 2>&1 &
hello_pid=$!; pids+=("$hello_pid")
wait_ok "http://127.0.0.1:$port$path" "Hello, World!"
measure "axum hello world" "http://127.0.0.1:$port$path" "$hello_pid" ""
kill "$hello_pid"

# --- Bodies and memory ---------------------------------------------------------------------
head -c $((16 << 20)) /dev/urandom >"$work/16m"
post_mbps() { # URL: median MB/s of 5 POSTs of 16 MB
  local i t code speeds=()
  for i in 1 2 3 4 5; do
    read -r code t < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 60 \
      -H 'Content-Type: application/octet-stream' --data-binary @"$work/16m" "$1")
    [ "$code" = 200 ] || { echo "compare.sh: 16 MB POST to $1 answered $code" >&2; echo "failed ($code)"; return; }
    speeds+=("$(awk -v t="$t" 'BEGIN { printf "%.0f", 16 / t }')")
  done
  printf '%s\n' "${speeds[@]}" | sort -n | sed -n 3p
}
nginx_post=$(post_mbps "$nginx_front_url")
stop_all

echo "compare.sh: bodies and memory (busgate all-in-one, NATS, telemetry on)" >&2
port=$(free_port)
mem_admin=$(free_port)
start_busgate memory MICROBUS_NATS="$nats_url" -- --ports "$port" --admin-addr "127.0.0.1:$mem_admin"
mem_pid=$last_pid
wait_ok "http://127.0.0.1:$port$path" "Hello, w!"
sleep 1
idle_rss=$(( $(status_kb "$mem_pid" VmRSS) / 1024 ))
busgate_post=$(post_mbps "http://127.0.0.1:$port$path")
python3 "$root/benches/hold_connections.py" 127.0.0.1 "$port" "$path" "$HELD_CONNECTIONS" 15 >"$work/held.log" 2>&1 &
holder=$!
for _ in $(seq 600); do grep -q "held open" "$work/held.log" && break; sleep 0.1; done
held_line=$(cat "$work/held.log")
opened_rss=$(( $(status_kb "$mem_pid" VmRSS) / 1024 ))
# Idle keep-alive connections park one to two PARK_AFTER (250 ms) after their last request.
sleep 1
held_rss=$(( $(status_kb "$mem_pid" VmRSS) / 1024 ))
parked=$(curl -s "http://127.0.0.1:$mem_admin/metrics" | awk '/^busgate_ingress_parked_connections/ {n += $2} END {print n + 0}')
# Another client is still served while the connections are held.
served=$(curl -s -o /dev/null -w '%{http_code} in %{time_total} s' --max-time 10 "http://127.0.0.1:$port$path" || echo "no answer")
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
stop_all

# --- Interleaved rounds --------------------------------------------------------------------
# The rows above run one after another: a neighbour's load that comes and goes moves one
# configuration's req/s and not the next one's. Here the configurations with a goal run side
# by side (idle when not measured) and take turns at 64 connections, in a new random order each
# round (a rotation kept each configuration behind the same one every round); each round gives
# its ratios, reported as the median of the rounds and their range.
ROUNDS=${ROUNDS:-7}
echo "compare.sh: $ROUNDS interleaved rounds at 64 connections" >&2
turn_names=(on off nats split inproc bridge nginx)
declare -A turn_url
p=$(free_port)
start_busgate il-on MICROBUS_PLANE=ilon$RANDOM MICROBUS_NATS="$nats_url" -- --ports "$p" --admin-addr "127.0.0.1:$(free_port)"
turn_url[on]=http://127.0.0.1:$p$path
p=$(free_port)
start_busgate il-off MICROBUS_PLANE=iloff$RANDOM MICROBUS_NATS="$nats_url" BUSGATE_TELEMETRY=off -- --ports "$p" --admin-addr "127.0.0.1:$(free_port)"
turn_url[off]=http://127.0.0.1:$p$path
p=$(free_port)
start_busgate il-nats MICROBUS_PLANE=ilnats$RANDOM MICROBUS_NATS="$nats_url" MICROBUS_SHORT_CIRCUIT=0 -- --ports "$p" --admin-addr "127.0.0.1:$(free_port)"
turn_url[nats]=http://127.0.0.1:$p$path
p=$(free_port)
split_plane=ilsplit$RANDOM
start_busgate il-split-ingress MICROBUS_PLANE=$split_plane MICROBUS_NATS="$nats_url" -- ingress --ports "$p" --admin-addr "127.0.0.1:$(free_port)"
start_busgate il-split-examples MICROBUS_PLANE=$split_plane MICROBUS_NATS="$nats_url" -- examples --admin-addr "127.0.0.1:$(free_port)"
turn_url[split]=http://127.0.0.1:$p$path
p=$(free_port)
start_busgate il-inproc -- --ports "$p" --admin-addr "127.0.0.1:$(free_port)"
turn_url[inproc]=http://127.0.0.1:$p$path
p=$(free_port)
start_bridge il "$p"
turn_url[bridge]=http://127.0.0.1:$p$path
front=$(free_port)
start_nginx_pair il- "$front"
turn_url[nginx]=http://127.0.0.1:$front$path
for name in "${turn_names[@]}"; do wait_ok "${turn_url[$name]}" "Hello, w!"; done
rounds=$work/rounds.tsv
: >"$rounds"
for round in $(seq "$ROUNDS"); do
  for name in $(shuf -e "${turn_names[@]}"); do
    wrk -t2 -c64 -d1s "${turn_url[$name]}" >/dev/null
    st0=$(steal_ms)
    out=$(wrk -t2 -c64 -d3s --latency "${turn_url[$name]}")
    st1=$(steal_ms)
    errors=$(echo "$out" | wrk_errors)
    printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$round" "$name" "$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')" \
      "$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")" "$errors" "$((st1 - st0))" >>"$rounds"
  done
done
stop_all
interleaved=$(python3 - "$rounds" <<'EOF'
import statistics, sys
# A turn during which the hypervisor took 50 ms or more (one 100 ms quantum, as it comes on
# these VMs) has a stall in its p99 that is the machine's, not the configuration's.
STOLEN_MS = 50
runs, errors, stolen = {}, {}, {}
for line in open(sys.argv[1]):
    fields = line.rstrip("\n").split("\t")
    rnd, name = int(fields[0]), fields[1]
    rps, p99, err, steal = (float(f) if f.strip() else 0.0 for f in fields[2:6])
    runs.setdefault(rnd, {})[name] = (rps, p99, steal)
    errors[name] = errors.get(name, 0) + int(err)
    stolen[name] = stolen.get(name, 0) + (steal >= STOLEN_MS)
def spread(label, values):
    if not values:
        return f"{label} -"
    values = sorted(values)
    return f"{label} {statistics.median(values):.2f} ({values[0]:.2f}-{values[-1]:.2f})"
def ratio(label, f, clean_of=None):
    # A round where a denominator is zero (wrk printed nothing) says nothing.
    values, clean = [], []
    for r in runs.values():
        try:
            v = f(r)
        except ZeroDivisionError:
            continue
        values.append(v)
        if clean_of and all(r[n][2] < STOLEN_MS for n in clean_of):
            clean.append(v)
    text = spread(label, values)
    if clean_of:
        text += ", " + spread(f"in the {len(clean)} rounds without host steal in either turn", clean)
    return text
parts = [
    ratio("all-in-one on NATS, telemetry on ×bridge", lambda r: r["on"][0] / r["bridge"][0]),
    ratio("×nginx", lambda r: r["on"][0] / r["nginx"][0]),
    ratio("p99 ×nginx", lambda r: r["on"][1] / r["nginx"][1], ("on", "nginx")),
    ratio("telemetry on ÷ off", lambda r: r["on"][0] / r["off"][0]),
    ratio("short circuit off ×bridge", lambda r: r["nats"][0] / r["bridge"][0]),
    ratio("×nginx", lambda r: r["nats"][0] / r["nginx"][0]),
    ratio("p99 ×nginx", lambda r: r["nats"][1] / r["nginx"][1], ("nats", "nginx")),
    ratio("split ×bridge", lambda r: r["split"][0] / r["bridge"][0]),
    ratio("in-process bus ×nginx", lambda r: r["inproc"][0] / r["nginx"][0]),
    ratio("p99 ×nginx", lambda r: r["inproc"][1] / r["nginx"][1], ("inproc", "nginx")),
]
names = ["on", "off", "nats", "split", "inproc", "bridge", "nginx"]
medians = {n: statistics.median(r[n][0] for r in runs.values()) for n in names}
print(f"Interleaved at 64 connections ({len(runs)} rounds of 3 s per configuration, side by side, "
      "in a random order each round; the median ratio of the rounds, their range in brackets): "
      + "; ".join(parts) + ". Median req/s: "
      + ", ".join(f"{n} {medians[n]:,.0f}" for n in names) + ". Errors: "
      + (", ".join(f"{n} {e}" for n, e in errors.items() if e) or "none")
      + f". Turns during which the hypervisor took {STOLEN_MS} ms or more (host steal, /proc/stat): "
      + ", ".join(f"{n} {stolen.get(n, 0)} of {len(runs)}" for n in names) + ".")
EOF
)
echo "$interleaved" >&2

# --- Instructions per request (callgrind) --------------------------------------------------
callgrind() { # NAME URL then the commands to run under valgrind, one per argument (words split)
  local name=$1 url=$2; shift 2
  local vpids=() i=0 cmd
  for cmd in "$@"; do
    i=$((i + 1))
    # `env A=b prog args`: the variables go before valgrind, so that valgrind runs prog itself
    # (under valgrind, env would exec prog uninstrumented).
    local words envs=()
    read -ra words <<<"$cmd"
    [ "${words[0]}" = env ] && words=("${words[@]:1}")
    while [[ "${words[0]}" == *=* ]]; do envs+=("${words[0]}"); words=("${words[@]:1}"); done
    env "${envs[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.$name.p$i" \
      "${words[@]}" >"$work/valgrind-$name-$i.log" 2>&1 &
    vpids+=($!); pids+=($!)
  done
  wait_ok "$url" "Hello"
  wrk -t1 -c4 -d3s "$url" >/dev/null
  for p in "${vpids[@]}"; do callgrind_control -i on "$p" >/dev/null 2>&1; done
  local out
  out=$(wrk -t1 -c4 -d10s "$url")
  for p in "${vpids[@]}"; do callgrind_control -i off "$p" >/dev/null 2>&1; callgrind_control -d "$p" >/dev/null 2>&1; done
  local requests
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  stop_all
  cat "$work"/cg."$name".p* 2>/dev/null | awk -v n="$requests" '/^totals:/ {s += $2} END {printf "%.0f", s / n}'
}
echo "compare.sh: callgrind" >&2
port=$(free_port)
cg_busgate=$(callgrind busgate "http://127.0.0.1:$port$path" \
  "env MICROBUS_PLANE=cg$RANDOM MICROBUS_NATS=$nats_url BUSGATE_SMTP_INGRESS_PORT=$(free_port) $busgate --ports $port --admin-addr 127.0.0.1:$(free_port)")
port=$(free_port)
cg_nats=$(callgrind busgate-nats "http://127.0.0.1:$port$path" \
  "env MICROBUS_PLANE=cg$RANDOM MICROBUS_NATS=$nats_url MICROBUS_SHORT_CIRCUIT=0 BUSGATE_SMTP_INGRESS_PORT=$(free_port) $busgate --ports $port --admin-addr 127.0.0.1:$(free_port)")
port=$(free_port)
cg_bridge=$(callgrind bridge "http://127.0.0.1:$port$path" \
  "$bridge_bin responder $nats_url cg.hello" "$bridge_bin bridge 127.0.0.1:$port $nats_url cg.hello")

# --- Report --------------------------------------------------------------------------------
report=$work/report.md
python3 - "$results" "$rss" >"$report" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
rss = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip())
BRIDGE, NGINX = "bare bridge (axum -> async-nats -> responder)", "nginx -> nginx"
by = {(r[0], r[1]): r for r in rows}
print("| configuration | conns | req/s | p50 ms | p99 ms | errors | CPU µs/req: gateway | service | nats-server | ×bridge | ×nginx | p99 ×nginx | host steal ms | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, c, rps, p50, p99, err, gw, svc, nats, steal in rows:
    b, n = by.get((BRIDGE, c)), by.get((NGINX, c))
    xb = f"{int(rps) / int(b[2]):.2f}" if b and int(b[2]) else "-"
    xn = f"{int(rps) / int(n[2]):.2f}" if n and int(n[2]) else "-"
    p99n = f"{float(p99) / float(n[4]):.2f}" if n and float(n[4]) else "-"
    bold = "**" if name.startswith("busgate, NATS, telemetry on") and c == "64" else ""
    print(f"| {name} | {c} | {bold}{int(rps):,}{bold} | {p50} | {p99} | {err} | {gw} | {svc} | {nats} | {bold}{xb}{bold} | {bold}{xn}{bold} | {p99n} | {steal} | {rss.get(name, '-')} |")
EOF
{
  echo
  echo "16 MB POST (median of 5, curl, MB/s): busgate all-in-one on NATS ${busgate_post}, nginx -> nginx ${nginx_post}."
  echo
  echo "busgate all-in-one on NATS, telemetry on: idle RSS ${idle_rss} MB; with ${HELD_CONNECTIONS} keep-alive connections open ${held_rss} MB, ${parked} of them parked (${opened_rss} MB as the last opened; ${held_line}); meanwhile another request: ${served}."
  echo
  echo "$interleaved"
  echo
  echo "Instructions per request (callgrind, wrk -t1 -c4 for 10 s): busgate all-in-one on NATS ${cg_busgate}; the same with the short circuit off ${cg_nats}; bare bridge + responder ${cg_bridge} (ratios $(awk -v a="$cg_busgate" -v c="$cg_nats" -v b="$cg_bridge" 'BEGIN { printf "%.2f and %.2f", a / b, c / b }'))."
} >>"$report"
cpu=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')
header="Run of $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml || echo ' (with uncommitted changes)'); $(nproc) cores ($cpu), kernel $(uname -r), $nats_version, $(nginx -v 2>&1 | sed 's/.*: //'), wrk -t2 for ${DURATION} s per row after ${WARMUP} s of warm-up at 64 connections."
echo
echo "$header"
echo
cat "$report"
if [ "$write" = 1 ]; then
  python3 - "$root/BENCHMARKS.md" "$header" "$report" <<'EOF'
import sys
path, header, report = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
text = open(path).read()
begin, end = "<!-- compare.sh:begin -->", "<!-- compare.sh:end -->"
i, j = text.index(begin) + len(begin), text.index(end)
open(path, "w").write(text[:i] + "\n" + header + "\n\n" + report.strip() + "\n" + text[j:])
EOF
  echo "compare.sh: figures written to BENCHMARKS.md" >&2
fi
