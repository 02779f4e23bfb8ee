#!/usr/bin/env bash
# Everything a lent GPU is needed for, in one call that fits a short device session
# (~5 minutes on an H200): where a forward+backward's time goes, the kernels' tests on the
# card, and the full benchmark. Every report lands in $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh                 # on the GPU machine, from the repo root
#
# Liger-Kernel (a peer) is used when importable; the GPU machine has no network, so fetch
# its wheel here first and carry it:  pip download liger-kernel==0.8.5 --no-deps -d .whl
# (the script installs any wheel in .whl/ into a private folder, without dependencies).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
site=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl \
        > "$OUT/pip.txt" 2>&1 || echo "wheel install failed: see $OUT/pip.txt"
fi
export PYTHONPATH="src:$site${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv \
    > "$OUT/nvidia-smi.csv" 2>&1
lscpu > "$OUT/lscpu.txt" 2>&1; uptime >> "$OUT/lscpu.txt" 2>&1

step() {  # name, timeout in seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s"
}
step diagnose-32768x4096 130 $PY benchmarks/gpu_diagnose.py --out "$OUT/diagnose-32768x4096.md"
step diagnose-131072x1024 100 $PY benchmarks/gpu_diagnose.py --shape 131072x1024 \
    --out "$OUT/diagnose-131072x1024.md"
step host-overhead 40 $PY benchmarks/host_overhead.py --steps 300
step pytest-kernels 120 $PY -m pytest -q tests/kernels
step gpu-kernels 200 $PY benchmarks/gpu_kernels.py --out "$OUT/gpu_results.md" --budget-s 120
tail -n 3 "$OUT"/*.log
# the tables themselves, so they are in the call's output even if the files do not come back
cat "$OUT"/diagnose-*.md "$OUT/host-overhead.log" 2>/dev/null
grep -A 12 "## Targets" "$OUT/gpu_results.md" 2>/dev/null
