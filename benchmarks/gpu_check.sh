#!/usr/bin/env bash
# The GPU checks of BENCHMARKS.md, run on a machine with an NVIDIA GPU and driver.
# Needs: python3 with nvidia-ml-py, psutil, prometheus-client, pytest; xpud installed (or its wheel on
# PYTHONPATH with PYTHONSAFEPATH=1, so that the repo's own xpud/ folder does not shadow the package).
# Writes its results under ${OUT:-./gpu-check-out}.
set -u
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  echo "## nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id,mig.mode.current --format=csv
  echo "## xpud devices"; $PY -m xpud devices
} 2>&1 | tee "$OUT/devices.txt"
$PY -m xpud devices --json > "$OUT/devices.json" 2> "$OUT/devices.err"
echo "## nvidia plugin tests (the gpu-marked one runs against the real driver)"
$PY -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_nvidia_plugin.py 2>&1 | tail -5 | tee "$OUT/pytest.txt"
echo "## agent /metrics against the real GPU"
$PY -m xpud agent --standalone --metrics-host 127.0.0.1 --metrics-port 18002 > "$OUT/agent.log" 2>&1 &
agent=$!
sleep 4
$PY - "$OUT/metrics.txt" <<'PYEOF'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:18002/metrics", timeout=10).read().decode()
open(sys.argv[1], "w").write(text)
for line in text.splitlines():
    if line.startswith(("hw_gpu_utilization", "hw_gpu_memory", "hw_power", "hw_temperature", "hw_status{", "xpud_plugin")):
        if 'hw_id="nvidia' in line or line.startswith("xpud_plugin"):
            print(line[:220])
PYEOF
kill -TERM $agent; wait $agent; echo "agent exit code: $?"
echo "## telemetry tick cost with the real GPU + 8 sim GPUs + cpu"
$PY benchmarks/telemetry_tick.py --duration 20 --sim 8 --scrape-every 5 > "$OUT/telemetry_tick.json" 2>&1
cat "$OUT/telemetry_tick.json"
