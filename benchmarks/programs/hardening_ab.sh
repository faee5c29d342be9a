#!/usr/bin/env bash
# serve and the sidecar at an older commit against the working tree, with the same hey command,
# interleaved: `bash benchmarks/programs/hardening_ab.sh [BASE_REV]` (default f5d237f).
# Needs the project's .venv and hey; prints req/s, p50 and p99 of each run and the load average.
set -euo pipefail
cd "$(dirname "$0")/../.."
base_rev=${1:-f5d237f}
work=$(mktemp -d)
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; wait; rm -rf "$work"' EXIT
mkdir -p "$work/base"
git archive "$base_rev" serving sidecar | tar -x -C "$work/base"
py=.venv/bin/python
$py -c 'import json; print(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32",
  "shape": [1, 64], "data": [0.1] * 64}]}))' > "$work/body.json"

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 120); do curl -sf "localhost:$1/v2/health/ready" >/dev/null && return; sleep 0.5; done; exit 1; }
serve() { # $1: source root, $2: port
  PYTHONPATH=$1 $py -m serving --model-repository examples/models --http-port "$2" --grpc-port 0 \
    --metrics-port 0 >"$work/serve-$2.log" 2>&1 & pids+=($!)
}
sidecar() { # $1: source root, $2: port, $3: primary port
  PYTHONPATH=$1 $py -m sidecar --listen "127.0.0.1:$2" --grpc-listen 127.0.0.1:0 \
    --primary "http://127.0.0.1:$3" --metrics-port 0 --admin-listen 127.0.0.1:0 >"$work/sidecar-$2.log" 2>&1 & pids+=($!)
}
load() { # $1: label, $2: port, $3: concurrency, $4: seconds
  printf '%-28s ' "$1"
  hey -z "$4s" -c "$3" -m POST -D "$work/body.json" "http://127.0.0.1:$2/v2/models/classifier/infer" |
    awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$3} /99%/ {p99=$3} END {printf "%8.0f req/s  p50 %.4f s  p99 %.4f s\n", rps, p50, p99}'
}

echo "load average before: $(cat /proc/loadavg)"
old=$(free_port); new=$(free_port); serve "$work/base" "$old"; serve "$PWD" "$new"
wait_ready "$old"; wait_ready "$new"
side_old=$(free_port); side_new=$(free_port); sidecar "$work/base" "$side_old" "$new"; sidecar "$PWD" "$side_new" "$new"
wait_ready "$side_old"; wait_ready "$side_new"
for port in "$old" "$new" "$side_old" "$side_new"; do  # warm-up
  hey -n 3000 -c 16 -m POST -D "$work/body.json" "http://127.0.0.1:$port/v2/models/classifier/infer" >/dev/null
done
for run in 1 2 3; do
  load "serve $base_rev c=64 #$run" "$old" 64 5; load "serve now c=64 #$run" "$new" 64 5
done
for run in 1 2 3; do
  load "sidecar $base_rev c=64 #$run" "$side_old" 64 5; load "sidecar now c=64 #$run" "$side_new" 64 5
done
for run in 1 2 3; do
  load "sidecar $base_rev c=1 #$run" "$side_old" 1 3; load "sidecar now c=1 #$run" "$side_new" 1 3
done
echo "load average after: $(cat /proc/loadavg)"
