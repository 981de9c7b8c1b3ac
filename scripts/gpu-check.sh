#!/usr/bin/env bash
# GPU check for hpctrain's numba CUDA kernels. Needs an NVIDIA GPU, its driver, and the
# project venv with the 'gpu' extra (numba-cuda); torch with CUDA enables the torch-tensor tests.
# Takes under 5 minutes:
#   1. the gpu-marked tests (real device; CUDA vs scikit-learn and vs the CPU kernels);
#   2. the kernel benchmarks with --gpu (CPU rows as usual, then the CUDA kernels);
#   3. one table: GB/s per CUDA kernel and as a fraction of the device's measured
#      device-to-device copy bandwidth (numba.cuda copy of 1 GiB; read + write bytes).
# Usage: scripts/gpu-check.sh [OUTDIR]      (OUTDIR gets gpu-tests.log, bench.log, bench-gpu.json)
set -uo pipefail

cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/hpctrain-gpu-check}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
unset NUMBA_ENABLE_CUDASIM  # a real device, never the simulator

echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" - <<'EOF'
import sys
try:
    from numba import cuda
except Exception as e:  # noqa: BLE001
    sys.exit(f"numba.cuda cannot be imported ({e}); install the gpu extra: pip install -e '.[gpu]'")
if not cuda.is_available():
    sys.exit("numba sees no CUDA device (driver? CUDA_VISIBLE_DEVICES?); install numba-cuda: pip install -e '.[gpu]'")
d = cuda.get_current_device()
print(f"numba.cuda device: {d.name.decode() if isinstance(d.name, bytes) else d.name}, cc {d.compute_capability}")
EOF
then
    echo "gpu-check: no usable CUDA device; nothing was checked" >&2
    exit 2
fi

echo "== 1/3 gpu-marked tests"
timeout 200 "$PY" -m pytest -m gpu tests/test_kernels_gpu.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUTDIR/gpu-tests.log"
rc_tests=${PIPESTATUS[0]}

echo "== 2/3 kernel benchmarks (--gpu)"
timeout 240 "$PY" scripts/bench_kernels.py --gpu --json "$OUTDIR/bench-gpu.json" 2>&1 | tee "$OUTDIR/bench.log"
rc_bench=${PIPESTATUS[0]}

echo "== 3/3 CUDA kernels: achieved bandwidth vs device-to-device copy"
if [ -s "$OUTDIR/bench-gpu.json" ]; then
    "$PY" - "$OUTDIR/bench-gpu.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["gpu"]
print(f"device: {r['device']}   device-to-device copy: {r['copy_GB_s']:.0f} GB/s (read + write)")
print(f"{'kernel':<32}{'GB/s':>9}{'of copy':>10}{'target':>9}")
for k in r["kernels"]:
    target = "50%" if k["kernel"].startswith(("impute", "augment noise")) else ""
    flag = "" if not target or k["fraction_of_copy"] >= 0.5 else "  BELOW TARGET"
    print(f"{k['kernel']:<32}{k['GB_s']:>9.0f}{k['fraction_of_copy']:>9.0%}{target:>9}{flag}")
EOF
else
    echo "no benchmark figures (the benchmark failed; see $OUTDIR/bench.log)"
fi
echo "tests rc=$rc_tests bench rc=$rc_bench (logs in $OUTDIR)"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
