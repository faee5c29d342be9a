#!/usr/bin/env bash
# The GPU check, in one go, on a GPU host without internet (under 8 minutes on one GPU):
#
#   bash benchmarks/gpu_check.sh --wheels DIR [--write] [--save DIR]
#   bash benchmarks/gpu_check.sh --wheels DIR --cpu-smoke      # the same flow on a CPU-only machine
#
# 1. installs the wheels in DIR (tritonclient and the project's other dependencies that the
#    host lacks; benchmarks/README.md says how to prepare DIR) into a temporary directory, not
#    into the system: pip install --no-index --no-deps --target, then PYTHONPATH;
# 2. prints the GPUs (nvidia-smi -L) and the torch / CUDA versions;
# 3. runs the GPU tests: python -m pytest -m gpu tests/test_gpu.py tests/test_gpu_staging.py -q (time-boxed);
# 4. runs benchmarks/gpu_bench.py (time-boxed), which prints two Markdown tables (ResNet, the compute-bound MLP).
#
# The project runs from source (PYTHONPATH=repository root); nothing is installed for good.
# --write rewrites the GPU section of benchmarks/RESULTS.md; --save DIR copies the log, the
# table (gpu_results.md) and, with --write, RESULTS.md into DIR. --cpu-smoke runs the tests
# (they skip without CUDA, but are collected and imported) and gpu_bench.py --device cpu --quick.
# PYTHON picks the interpreter (default python3). The exit status is 0 only if every step passed.
set -uo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

WHEELS="" SAVE="" WRITE="" SMOKE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
        --save) SAVE="${2:?--save needs a directory}"; shift 2 ;;
        --write) WRITE=1; shift ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
done

if [ -n "$WRITE" ] && [ -n "$SMOKE" ]; then echo "--write records GPU runs only; drop it with --cpu-smoke" >&2; exit 2; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PYTEST_LIMIT=200  # seconds; the tests should take about a minute on one GPU
BENCH_LIMIT=270   # seconds; the benchmark (two tables) should take about three minutes on one GPU
cd "$ROOT" || exit 1
[ -n "$WHEELS" ] && WHEELS="$(cd "$WHEELS" && pwd)"
[ -n "$SAVE" ] && { mkdir -p "$SAVE" && SAVE="$(cd "$SAVE" && pwd)" || exit 1; }

SITE="$(mktemp -d -t shadowserve-site.XXXXXX)"
RESULT_MD="$SITE/gpu_results.md"
LOG="$SITE/gpu_check.log"
finish() {
    exec 1>&- 2>&-  # let tee write the end of the log
    wait "$TEE" 2>/dev/null
    if [ -n "$SAVE" ]; then
        cp "$LOG" "$SAVE/gpu_check.log" 2>/dev/null
        [ -s "$RESULT_MD" ] && cp "$RESULT_MD" "$SAVE/gpu_results.md"
        [ -n "$WRITE" ] && cp benchmarks/RESULTS.md "$SAVE/RESULTS.md"
    fi
    rm -rf "$SITE"
}
trap finish EXIT
exec > >(tee "$LOG") 2>&1
TEE=$!

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
STATUS=0
declare -a SUMMARY=()
record() {  # record NAME EXIT_STATUS
    if [ "$2" -eq 0 ]; then SUMMARY+=("ok      $1")
    elif [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; then SUMMARY+=("TIMEOUT $1"); STATUS=1
    else SUMMARY+=("FAILED  $1 (exit status $2)"); STATUS=1; fi
}

step "dependencies"
"$PYTHON" -c 'import sys; print("python", sys.version.split()[0], "at", sys.executable)'
if [ -n "$WHEELS" ]; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then echo "no wheels in $WHEELS"; exit 1; fi
    echo "installing ${#wheels[@]} wheel(s) from $WHEELS into a temporary directory"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "$SITE/site" "${wheels[@]}"; then
        echo "pip could not install the wheels: were they downloaded for this Python (see above) and platform?"
        exit 1
    fi
    export PYTHONPATH="$SITE/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no --wheels: using what $PYTHON already has"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ! "$PYTHON" - <<'EOF'
import importlib, importlib.metadata as md
missing = []
for module in ("torch", "numpy", "aiohttp", "grpc", "google.protobuf", "prometheus_client", "scipy", "pytest",
               "tritonclient.grpc.aio", "tritonclient.http", "tritonclient.http.aio", "orjson", "uvloop", "pynvml",
               "grpc_health.v1.health", "serving.app"):
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{module} ({type(exc).__name__}: {exc})")
names = ("torch", "numpy", "aiohttp", "grpcio", "protobuf", "tritonclient", "orjson", "uvloop", "nvidia-ml-py",
         "grpcio-health-checking", "pytest", "pytest-timeout")
versions = []
for name in names:
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        versions.append(f"{name} -")
print(", ".join(versions))
if missing:
    raise SystemExit("cannot import: " + "; ".join(missing))
EOF
then
    echo "missing Python packages: pass --wheels DIR (benchmarks/README.md, 'GPU check', says how to make it)"
    exit 1
fi

step "GPU and torch"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda,
"| cuDNN", torch.backends.cudnn.version(), "| cuda available:", torch.cuda.is_available(),
"| devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
if [ -z "$SMOKE" ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "torch sees no CUDA device; run with --cpu-smoke on a machine without a GPU"
    exit 1
fi

step "GPU tests: pytest -m gpu tests/test_gpu.py tests/test_gpu_staging.py (at most ${PYTEST_LIMIT}s)"
timeout -k 15 "$PYTEST_LIMIT" "$PYTHON" -m pytest -m gpu tests/test_gpu.py tests/test_gpu_staging.py -q -p no:cacheprovider
record "pytest -m gpu tests/test_gpu.py tests/test_gpu_staging.py" $?

step "benchmark: gpu_bench.py (at most ${BENCH_LIMIT}s)"
bench=("$PYTHON" benchmarks/gpu_bench.py --markdown "$RESULT_MD")
if [ -n "$SMOKE" ]; then bench+=(--device cpu --quick); fi
if [ -n "$WRITE" ]; then bench+=(--write); fi
timeout -k 15 "$BENCH_LIMIT" "${bench[@]}"
record "${bench[*]:1}" $?

step "summary"
printf '%s\n' "${SUMMARY[@]}"
exit $STATUS
