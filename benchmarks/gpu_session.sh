#!/usr/bin/env bash
# Everything a lent GPU is needed for, in one call that fits a short device session: the
# full benchmark, the CUDA tests of the launch shortcut, the replay, offsets past 2^31
# elements and the custom ops, and where a forward+backward's time goes (at most 550 s of
# phases by default, in that order). Every report lands in $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh                 # on the GPU machine, from the repo root
#
# Liger-Kernel (a peer) is used when importable; the GPU machine has no network, so fetch
# its wheel here first and carry it:  pip download liger-kernel==0.8.5 --no-deps -d .whl
# (the script installs any wheel in .whl/ into a private folder, without dependencies).
#
# PHASES picks the steps (default: launchtest diagnose bench), run in this order: bench
# (gpu_kernels.py, BENCH_BUDGET_S default 90, BENCH_S 200), launchtest
# (tests/kernels/test_launch.py, test_offsets.py and test_compile.py: the launch shortcut,
# replay (offloading and checkpointing included), int64 offsets, and the custom ops under
# torch.compile, CUDA graphs of mode="reduce-overhead" included; LAUNCHTEST_S 180),
# diagnose (gpu_diagnose.py at DIAG_SHAPES, default 32768x4096, with DIAG_ARGS default
# --compiled: the reduce-overhead table, which compiles six steps; DIAG_S 170), host
# (host_overhead.py), pytest (all of tests/kernels: over
# 150 s, compiling every small variant). Reports go to
# $OUT/work and come back packed in $OUT/session.tgz (the device tool returns at most 8
# files); the tables are also printed. Compiled kernels are cached in .cache/ (Triton's and
# Inductor's caches, packed in $OUT/cache.tgz): unpack that here and carry .cache to skip
# compiling again in the next call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PHASES=${PHASES:-launchtest diagnose bench}
W="$OUT/work"
rm -rf "$W"          # a kept folder of an earlier call must not pass its files off as this one's
mkdir -p "$W" .cache/triton .cache/inductor
export TRITON_CACHE_DIR=$PWD/.cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor
PY=${PYTHON:-python3}
site=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl \
        > "$W/pip.txt" 2>&1 || echo "wheel install failed: see pip.txt"
fi
export PYTHONPATH="src:$site${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv \
    > "$W/nvidia-smi.csv" 2>&1
lscpu > "$W/lscpu.txt" 2>&1; uptime >> "$W/lscpu.txt" 2>&1

step() {  # name, timeout in seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$W/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s"
}
has() { [[ " $PHASES " == *" $1 "* ]]; }
# the benchmark first: it checks ours against the reference at every shape itself, and its
# targets are what a short session is for; then the CUDA tests of the launch path, then the
# diagnosis (the longest to compile, the first to give up if time runs short)
has bench && step gpu-kernels ${BENCH_S:-200} $PY benchmarks/gpu_kernels.py \
    --out "$W/gpu_results.md" --budget-s ${BENCH_BUDGET_S:-90}
has launchtest && step pytest-launch ${LAUNCHTEST_S:-180} $PY -m pytest -q --durations=8 \
    tests/kernels/test_launch.py tests/kernels/test_offsets.py tests/kernels/test_compile.py
if has diagnose; then
    for shape in ${DIAG_SHAPES:-32768x4096}; do
        step diagnose-$shape ${DIAG_S:-170} $PY benchmarks/gpu_diagnose.py --shape $shape \
            --out "$W/diagnose-$shape.md" --trace "$W/traces" ${DIAG_ARGS---compiled}
    done
fi
has host && step host-overhead 40 $PY benchmarks/host_overhead.py --steps 300
has pytest && step pytest-kernels ${PYTEST_S:-240} $PY -m pytest -q tests/kernels
tail -n 3 "$W"/*.log
tar czf "$OUT/session.tgz" -C "$W" .
tar czf "$OUT/cache.tgz" .cache
ls -la "$OUT"
# the tables themselves, so they are in the call's output even if the files do not come back
cat "$W"/diagnose-*.md "$W/host-overhead.log" 2>/dev/null
grep -A 12 "## Targets" "$W/gpu_results.md" 2>/dev/null
rm -rf "$W"
