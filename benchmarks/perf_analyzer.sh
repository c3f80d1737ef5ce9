#!/usr/bin/env bash
# Triton's perf_analyzer against the agent's OIP gRPC endpoint.
#
# perf_analyzer comes from the tritonclient[grpc]==2.51.0 wheel (the last x86_64 build that runs on Debian 12's
# glibc). That wheel pins protobuf<5 and numpy<2, so it lives in its own venv (.venv-pa, set up once, idempotent),
# with libcudart from PyPI's nvidia-cuda-runtime-cu12 (loaded at start-up; no GPU is needed) and Debian's libb64-0d.
#
# The script builds benchmarks/serving.py's model repository, starts `xpud agent --standalone` on it (loopback,
# ephemeral ports), runs perf_analyzer over a concurrency range against MODEL and prints its output, then the
# per-concurrency CSV. If perf_analyzer fails, its exit status, its output and the agent's log are printed.
#
# Usage:  bash benchmarks/perf_analyzer.sh [extra perf_analyzer arguments]
# Env:    MODEL (mlp)  CONCURRENCY (1:8:1)  INTERVAL_MS (1500)  MAX_TRIALS (8)  STABILITY (20, percent)
#         PA_TIMEOUT_S (300)
#         QUEUE_DELAY_US (passed to serving.py --queue-delay-us; default: serving.py's)
#         PA_VENV (.venv-pa)  PYTHON (.venv/bin/python)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PA_VENV=${PA_VENV:-$ROOT/.venv-pa}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MODEL=${MODEL:-mlp}
CONCURRENCY=${CONCURRENCY:-1:8:1}
INTERVAL_MS=${INTERVAL_MS:-1500}
MAX_TRIALS=${MAX_TRIALS:-8}
# perf_analyzer's default 10 % often fails to settle at c >= 4 on a shared 2-core VM ("Failed to obtain stable
# measurement ..."), and it then stops the sweep there
STABILITY=${STABILITY:-20}
PA_TIMEOUT_S=${PA_TIMEOUT_S:-300}

# -- perf_analyzer's own venv (idempotent) ------------------------------------------------------------------
CUDART_DIR=$PA_VENV/lib/python3.11/site-packages/nvidia/cuda_runtime/lib
if [ ! -x "$PA_VENV/bin/perf_analyzer" ] || [ ! -e "$CUDART_DIR/libcudart.so.12" ]; then
    echo "setting up $PA_VENV (tritonclient[grpc]==2.51.0, nvidia-cuda-runtime-cu12)" >&2
    [ -x "$PA_VENV/bin/python" ] || python3 -m venv "$PA_VENV"
    "$PA_VENV/bin/pip" install -q "tritonclient[grpc]==2.51.0" nvidia-cuda-runtime-cu12 >&2
fi
if [ ! -e "$CUDART_DIR/libcudart.so.12" ]; then
    CUDART_DIR=$(dirname "$(find "$PA_VENV/lib" -name 'libcudart.so.12' -print -quit)")
fi
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    echo "installing Debian's libb64-0d" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >&2 && apt-get install -y -qq libb64-0d >&2
    else
        echo "perf_analyzer needs libb64.so.0d: run 'sudo apt-get install -y libb64-0d'" >&2
        exit 1
    fi
fi
export LD_LIBRARY_PATH=$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PA=$PA_VENV/bin/perf_analyzer
"$PA" --version >&2

# -- the agent on serving.py's model repository -------------------------------------------------------------
TMP=$(mktemp -d -t xpud-pa-XXXXXX)
AGENT_PID=""
cleanup() {
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

BUILD_ARGS=(--only-build-repo "$TMP/repo" --models "$MODEL")
[ -n "${QUEUE_DELAY_US:-}" ] && BUILD_ARGS+=(--queue-delay-us "$QUEUE_DELAY_US")
"$PYTHON" benchmarks/serving.py "${BUILD_ARGS[@]}" >&2
echo "--- $MODEL/config.pbtxt" >&2
cat "$TMP/repo/$MODEL/config.pbtxt" >&2

"$PYTHON" -m xpud agent --standalone --model-repo "$TMP/repo" --grpc-host 127.0.0.1 --grpc-port 0 \
    --metrics-host 127.0.0.1 --metrics-port 0 >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 600); do
    grep -q 'models ready:' "$TMP/agent.log" && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent exited:" >&2; cat "$TMP/agent.log" >&2; exit 1; }
    sleep 0.1
done
grep -q 'models ready:' "$TMP/agent.log" || { echo "agent not ready in 60 s:" >&2; cat "$TMP/agent.log" >&2; exit 1; }
PORT=$(grep -oE 'inference endpoint \(OIP gRPC\) at 127\.0\.0\.1:[0-9]+' "$TMP/agent.log" | grep -oE '[0-9]+$')
echo "agent pid $AGENT_PID, OIP gRPC at 127.0.0.1:$PORT" >&2

# -- perf_analyzer --------------------------------------------------------------------------------------------
CMD=("$PA" -m "$MODEL" -u "127.0.0.1:$PORT" -i grpc --concurrency-range "$CONCURRENCY"
     --measurement-interval "$INTERVAL_MS" --max-trials "$MAX_TRIALS" --stability-percentage "$STABILITY"
     -f "$TMP/pa.csv" "$@")
echo "+ ${CMD[*]}"
set +e
timeout "$PA_TIMEOUT_S" "${CMD[@]}" 2>&1 | tee "$TMP/pa.out"
RC=${PIPESTATUS[0]}
set -e
if [ "$RC" -ne 0 ]; then
    echo "perf_analyzer FAILED: exit status $RC (124: killed after ${PA_TIMEOUT_S}s)"
    echo "--- agent log (last 60 lines)"
    tail -n 60 "$TMP/agent.log"
    exit "$RC"
fi
echo "--- per-concurrency CSV"
cat "$TMP/pa.csv"
if grep -q 'Failed to obtain stable measurement' "$TMP/pa.out"; then
    echo "(perf_analyzer stopped the sweep early: unstable measurement; raise INTERVAL_MS or STABILITY)"
fi
grep -iE 'warn|error|exception' "$TMP/agent.log" && echo "(the agent logged the lines above)" || true
