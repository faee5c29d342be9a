#!/usr/bin/env bash
# serve and the sidecar at an older commit against the working tree, in one run, interleaved:
#   bash benchmarks/programs/ab.sh BASE_REV [NEW_REV] [RUNS]     (NEW_REV "." or absent: the working tree)
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
    --grpc-port 0 --metrics-port 0 --cpu-threads 1) >"$work/serve-$2.log" 2>&1 & pids+=($!)
}
sidecar() { # $1: source root, $2: port, $3: primary port
  (cd "$1" && exec env PYTHONPATH="$1" "$py" -m sidecar --listen "127.0.0.1:$2" --grpc-listen off \
    --primary "http://127.0.0.1:$3" --metrics-port 0 --admin-listen off --drain-timeout-secs 0) \
    >"$work/sidecar-$2.log" 2>&1 & pids+=($!)
}
origin() { # which tree a process imported: its log names the file it started from
  (cd "$1" && env PYTHONPATH="$1" "$py" -c 'import sidecar, serving; print(sidecar.__file__, serving.__file__)')
}
load() { # $1: label, $2: port, $3: concurrency, $4: seconds
  printf '%-34s ' "$1"
  hey -z "$4s" -c "$3" -m POST -D "$work/body.json" "http://127.0.0.1:$2/v2/models/classifier/infer" |
    awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$3} /99%/ {p99=$3} END {printf "%8.0f req/s  p50 %.3f ms  p99 %.3f ms\n", rps, p50*1000, p99*1000}'
}
hop() { # $1: label, $2: port: open loop, 1000 req/s over 16 connections, 5 s after 1 s of warm-up
  printf '%-34s ' "$1"
  $py "$bench" load --port "$2" --body "$work/body.json" --concurrency 16 --duration 5 --warmup 1 --rate 1000 |
    $py -c 'import json, sys; r = json.loads(sys.stdin.read().splitlines()[-1]); print(f"{r[\"rps\"]:8.0f} req/s  p50 {r[\"p50\"]:.3f} ms  p90 {r[\"p90\"]:.3f} ms  p99 {r[\"p99\"]:.3f} ms  failed {r[\"failures\"]}")'
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
for run in $(seq "$runs"); do
  load "serve $base_rev c=64 #$run" "$old" 64 5; load "serve now c=64 #$run" "$new" 64 5
  load "sidecar $base_rev c=64 #$run" "$side_old" 64 5; load "sidecar now c=64 #$run" "$side_new" 64 5
  load "sidecar $base_rev c=1 #$run" "$side_old" 1 3; load "sidecar now c=1 #$run" "$side_new" 1 3
  hop "no-op direct 1000/s #$run" "$noop"
  hop "hop $base_rev 1000/s #$run" "$hop_old"; hop "hop now 1000/s #$run" "$hop_new"
done
echo "load average after: $(cat /proc/loadavg)"
