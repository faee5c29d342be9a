#!/usr/bin/env bash
# serve and the sidecar at an older commit against the working tree, in one run, interleaved:
#   bash benchmarks/programs/ab.sh BASE_REV [NEW_REV] [RUNS]     (NEW_REV "." or absent: the working tree)
#   HOP_ONLY=1 bash benchmarks/programs/ab.sh BASE_REV . 10     (the hop points alone)
# Each process runs from its own tree (its working directory is that tree, so `python -m` imports
# that tree's packages and no other). Points: serve c=64 (hey); each sidecar in front of the current
# serve at c=64 and c=1 (hey); and the hop alone, each sidecar in front of a no-op upstream at
# 1000 req/s over 16 connections (sidecar_bench.py's open-loop load generator, µs resolution),
# beside the no-op upstream direct. Needs the project's .venv and hey; prints one line a run and
# the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
base_rev=${1:?usage: ab.sh BASE_REV [NEW_REV] [RUNS]}
new_rev=${2:-.}
runs=${3:-3}
work=$(mktemp -d)
pids=()
declare -A pid_of  # a sidecar's listening port -> its process
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; wait; rm -rf "$work"' EXIT
mkdir -p "$work/base"
git archive "$base_rev" | tar -x -C "$work/base"
tree=$root  # the tree measured against the base
if [ "$new_rev" != "." ]; then mkdir -p "$work/new"; git archive "$new_rev" | tar -x -C "$work/new"; tree=$work/new; fi
py=$root/.venv/bin/python
bench=$root/benchmarks/sidecar_bench.py
$py -c 'import json; print(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32",
  "shape": [1, 64], "data": [0.1] * 64}]}))' > "$work/body.json"

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 120); do curl -sf "localhost:$1/v2/health/ready" >/dev/null && return; sleep 0.5; done; echo "port $1 not ready" >&2; exit 1; }
serve() { # $1: source root, $2: port
  (cd "$1" && exec env PYTHONPATH="$1" "$py" -m serving --model-repository "$root/examples/models" --http-port "$2" \
    --grpc-port 0 --metrics-port 0 --cpu-threads 1) >"$work/serve-$2.log" 2>&1 & pids+=($!); pid_of[$2]=$!
}
sidecar() { # $1: source root, $2: port, $3: primary port
  (cd "$1" && exec env PYTHONPATH="$1" "$py" -m sidecar --listen "127.0.0.1:$2" --grpc-listen off \
    --primary "http://127.0.0.1:$3" --metrics-port 0 --admin-listen off --drain-timeout-secs 0) \
    >"$work/sidecar-$2.log" 2>&1 & pids+=($!); pid_of[$2]=$!
}
origin() { # which tree a process imported: its log names the file it started from
  (cd "$1" && env PYTHONPATH="$1" "$py" -c 'import sidecar, serving; print(sidecar.__file__, serving.__file__)')
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system time, in clock ticks
load() { # $1: label, $2: port, $3: concurrency, $4: seconds; and the CPU of the process behind the port
  printf '%-34s ' "$1"
  local pid=${pid_of[$2]} before
  before=$(cpu_ticks "$pid")
  hey -z "$4s" -c "$3" -m POST -D "$work/body.json" "http://127.0.0.1:$2/v2/models/classifier/infer" > "$work/hey.txt"
  awk -v ticks=$(( $(cpu_ticks "$pid") - before )) -v hz="$(getconf CLK_TCK)" -v secs="$4" \
    '/Requests\/sec/ {rps=$2} /50%/ {p50=$3} /99%/ {p99=$3}
     END {printf "%8.0f req/s  p50 %.3f ms  p99 %.3f ms  CPU %.0f us/request\n", rps, p50*1000, p99*1000, ticks/hz*1e6/(rps*secs)}' \
    "$work/hey.txt"
}
hop() { # $1: label, $2: port: open loop, 1000 req/s over 16 connections, 5 s after 1 s of warm-up
  # Besides the client's latencies: the CPU the process behind the port spent per request
  # (warm-up included), which the machine's noise moves far less than a percentile.
  printf '%-34s ' "$1"
  local pid=${pid_of[$2]:-} before=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  $py "$bench" load --port "$2" --body "$work/body.json" --concurrency 16 --duration 5 --warmup 1 --rate 1000 \
    > "$work/hop.json"
  local used=0
  [ -n "$pid" ] && used=$(( $(cpu_ticks "$pid") - before ))
  $py -c 'import json, os, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
cpu = "" if sys.argv[2] == "-" else "  CPU %.0f us/request" % (int(sys.argv[2]) / os.sysconf("SC_CLK_TCK") * 1e6 / (r["rps"] * 6))
print("%8.0f req/s  p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  failed %d%s" % (r["rps"], r["p50"], r["p90"], r["p99"], r["failures"], cpu))' \
    "$work/hop.json" "$([ -n "$pid" ] && echo "$used" || echo -)"
}

echo "base $base_rev: $(origin "$work/base")"
echo "now ($new_rev): $(origin "$tree")"
echo "load average before: $(cat /proc/loadavg)"
old=$(free_port); new=$(free_port); serve "$work/base" "$old"; serve "$tree" "$new"
noop=$(free_port); $py "$bench" stub --port "$noop" >"$work/noop.log" 2>&1 & pids+=($!)
wait_ready "$old"; wait_ready "$new"; wait_ready "$noop"
side_old=$(free_port); side_new=$(free_port); sidecar "$work/base" "$side_old" "$new"; sidecar "$tree" "$side_new" "$new"
hop_old=$(free_port); hop_new=$(free_port); sidecar "$work/base" "$hop_old" "$noop"; sidecar "$tree" "$hop_new" "$noop"
for port in "$side_old" "$side_new" "$hop_old" "$hop_new"; do wait_ready "$port"; done
for port in "$old" "$new" "$side_old" "$side_new" "$hop_old" "$hop_new"; do  # warm-up
  hey -n 3000 -c 16 -m POST -D "$work/body.json" "http://127.0.0.1:$port/v2/models/classifier/infer" >/dev/null
done
pair() { # $1: run, $2: what, $3: base port, $4: current port, then the measure and its arguments
  local run=$1 what=$2 old_port=$3 new_port=$4; shift 4
  local measure=$1; shift
  if (( run % 2 )); then  # the order alternates, so neither side always goes first
    "$measure" "$what $base_rev #$run" "$old_port" "$@"; "$measure" "$what now #$run" "$new_port" "$@"
  else
    "$measure" "$what now #$run" "$new_port" "$@"; "$measure" "$what $base_rev #$run" "$old_port" "$@"
  fi
}
for run in $(seq "$runs"); do
  if [ -z "${HOP_ONLY:-}" ]; then
    pair "$run" "serve c=64" "$old" "$new" load 64 5
    pair "$run" "sidecar c=64" "$side_old" "$side_new" load 64 5
    pair "$run" "sidecar c=1" "$side_old" "$side_new" load 1 3
  fi
  hop "no-op direct 1000/s #$run" "$noop"
  pair "$run" "hop 1000/s" "$hop_old" "$hop_new" hop
done
echo "load average after: $(cat /proc/loadavg)"
