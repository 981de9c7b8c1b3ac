#!/usr/bin/env bash
# GPU check for hpctrain's numba CUDA kernels: one self-contained call on a machine with an
# NVIDIA GPU. Installs nothing from the network. Needs a Python with numpy, numba and
# numba-cuda (plus scikit-learn and pytest for the tests; torch with CUDA enables the
# torch-tensor tests): the project venv if it has numba, else python3 (or $PYTHON).
# If that Python cannot import hpctrain.kernels (a bare checkout: kernels/ is mapped into
# hpctrain only by the install), hpctrain/ and kernels/ are staged as one package under a
# scratch directory put on PYTHONPATH; nothing is built or fetched.
# Steps, normally well under 5 minutes:
#   1. the gpu-marked tests (real device; CUDA vs scikit-learn and vs the CPU kernels);
#      a skipped test counts as a failure here;
#   2. the CUDA kernel benchmarks (bench_kernels.py --gpu-only), then the CPU rows
#      (set GPU_CHECK_CPU=0 to skip those);
#   3. a short training run with run.device=cuda (digits CNN, 1 rank);
#   4. one table: GB/s per CUDA kernel and as a fraction of the device's measured
#      device-to-device copy bandwidth (numba.cuda copy of 1 GiB; read + write bytes).
# Usage: scripts/gpu-check.sh [--simulate] [OUTDIR]   (OUTDIR, default $OUT or /tmp/hpctrain-gpu-check,
#        gets gpu-tests.log, bench-gpu.log, bench-gpu.json, bench-cpu.log, bench-cpu.json, train.log)
#   --simulate  a rehearsal on the numba CUDA simulator, with tiny sizes and no CPU rows: every
#               step and the table run (the figures mean nothing), so the one call on a lent
#               device is not this script's first run. CI runs it (tests/test_gpu_check_script.py).
#               The torch-tensor tests need torch with CUDA and may skip here.
# Exit status: 0 all passed, 1 a test or benchmark failed, 2 no usable CUDA device.
set -uo pipefail

SIMULATE=0
if [ "${1:-}" = "--simulate" ]; then
    SIMULATE=1
    shift
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-${OUT:-/tmp/hpctrain-gpu-check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONUNBUFFERED=1
BENCH_ARGS=()
if [ "$SIMULATE" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1 HPCTRAIN_GPU_TESTS_ON_SIM=1
    BENCH_ARGS=(--gpu-rows 256 --images 4 --copy-mib 1 --repeat 1)
    GPU_CHECK_CPU=0
    echo "# REHEARSAL on the numba CUDA simulator: checks that every step runs; its figures mean nothing"
else
    unset NUMBA_ENABLE_CUDASIM  # a real device, never the simulator
fi

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c 'import numba' 2>/dev/null; then
    PY=$REPO/.venv/bin/python
else
    PY=$(command -v python3)
fi

# Run from a scratch directory: the repo root on sys.path would shadow a staged hpctrain
# with the repo's hpctrain/, which lacks kernels/.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hpctrain-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 2
if [ "${GPU_CHECK_STAGE:-0}" = 1 ] || ! "$PY" -c 'import hpctrain.kernels' 2>/dev/null; then
    mkdir -p "$WORK/site"
    cp -r "$REPO/hpctrain" "$WORK/site/hpctrain"
    cp -r "$REPO/kernels" "$WORK/site/hpctrain/kernels"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    echo "# staged hpctrain (+ kernels) from $REPO under $WORK/site"
fi
echo "# python: $PY"

echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" - <<'EOF'
import sys
try:
    import hpctrain.kernels  # noqa: F401
    from numba import cuda
except Exception as e:  # noqa: BLE001
    sys.exit(f"cannot import hpctrain.kernels / numba.cuda ({type(e).__name__}: {e}); "
             "this Python needs numpy, numba and numba-cuda")
if not cuda.is_available():
    sys.exit("numba sees no CUDA device (driver? CUDA_VISIBLE_DEVICES? numba-cuda missing?)")
from numba import config
if config.ENABLE_CUDASIM:
    sys.exit(print("numba.cuda device: the numba CUDA simulator (a rehearsal)"))
d = cuda.get_current_device()
print(f"numba.cuda device: {d.name.decode() if isinstance(d.name, bytes) else d.name}, cc {d.compute_capability}")
EOF
then
    echo "gpu-check: no usable CUDA device; nothing was checked" >&2
    exit 2
fi

echo "== 1/4 gpu-marked tests"
timeout 180 "$PY" -m pytest -m gpu "$REPO/tests/test_kernels_gpu.py" -q -rs -p no:cacheprovider \
    2>&1 | tee "$OUTDIR/gpu-tests.log"
rc_tests=${PIPESTATUS[0]}
if [ "$rc_tests" -eq 0 ] && tail -n 3 "$OUTDIR/gpu-tests.log" | grep -q "skipped"; then
    if [ "$SIMULATE" = 1 ] && ! grep "^SKIPPED" "$OUTDIR/gpu-tests.log" | grep -qv "torch has no CUDA device"; then
        echo "gpu-check: (rehearsal) the torch-tensor tests skipped: this torch has no CUDA"
    else
        echo "gpu-check: some gpu tests were skipped (see the reasons above); a skip is not a pass"
        rc_tests=1
    fi
fi

echo "== 2/4 CUDA kernel benchmarks (--gpu-only)"
timeout 150 "$PY" "$REPO/scripts/bench_kernels.py" --gpu-only "${BENCH_ARGS[@]}" --json "$OUTDIR/bench-gpu.json" \
    2>&1 | tee "$OUTDIR/bench-gpu.log"
rc_bench=${PIPESTATUS[0]}
if [ "${GPU_CHECK_CPU:-1}" = 1 ]; then
    echo "== 2b/4 CPU kernel benchmarks (side by side with scikit-learn, numpy, torch)"
    timeout 150 "$PY" "$REPO/scripts/bench_kernels.py" --json "$OUTDIR/bench-cpu.json" \
        2>&1 | tee "$OUTDIR/bench-cpu.log"
    rc_cpu=${PIPESTATUS[0]}
    [ "$rc_cpu" -eq 0 ] || echo "gpu-check: the CPU benchmark failed (rc=$rc_cpu); it does not change the result"
fi

echo "== 3/4 training on the device: digits CNN (imputation and augmentation on the host), 1 rank"
# The trainer's CUDA path (device placement, pinned-memory host-to-device batches, the
# placement record) is otherwise untested without a GPU. Rehearsal: on the CPU.
train_dev=cuda
[ "$SIMULATE" = 1 ] && train_dev=cpu
T=$WORK/train
{
    timeout 60 "$PY" -m hpctrain shard sklearn:digits --out "$T/digits" --val-fraction 0.2 &&
    timeout 60 "$PY" -m hpctrain impute fit "$T/digits" &&
    timeout 240 "$PY" -m hpctrain train "$REPO/docs/examples/digits_cnn.yaml" --set "data.dir=$T/digits" \
        --set "imputation.imputer=$T/digits/imputer.json" --set "run.dir=$T/run" --set "run.device=$train_dev" \
        --set comm.backend=torch --set run.epochs=3 --set logging.plots=false &&
    "$PY" - "$T/run" "$train_dev" <<'EOF'
import json, sys
run, dev = sys.argv[1], sys.argv[2]
res = json.load(open(f"{run}/result.json"))
ranks = json.load(open(f"{run}/config.resolved.json"))["cluster"]["ranks"]
f1 = res["metrics"].get("val_macro_f1", float("nan"))
print(f"training: {res['status']} at step {res['step']}, val macro F1 {f1:.3f}, rank 0 on {ranks[0]['device']}")
ok = res["status"] == "completed" and ranks[0]["device"].startswith(dev)
sys.exit(0 if ok else f"gpu-check: training did not complete on {dev}")
EOF
} 2>&1 | tee "$OUTDIR/train.log"
rc_train=${PIPESTATUS[0]}

echo "== 4/4 CUDA kernels: achieved bandwidth vs device-to-device copy"
if [ -s "$OUTDIR/bench-gpu.json" ]; then
    "$PY" - "$OUTDIR/bench-gpu.json" <<'EOF' || rc_bench=1
import json, sys
r = json.load(open(sys.argv[1]))["gpu"]
mismatch = False
print(f"device: {r['device']}   device-to-device copy: {r['copy_GB_s']:.0f} GB/s (read + write)")
print(f"{'kernel':<32}{'ms':>9}{'GB/s':>9}{'of copy':>10}{'target':>9}")
for k in r["kernels"]:
    target = "50%" if k["kernel"].startswith(("impute", "augment noise")) else ""
    flag = "" if not target or k["fraction_of_copy"] >= 0.5 else "  BELOW TARGET"
    if k.get("equal_to_cpu") is False:
        flag += "  MISMATCH vs CPU"
        mismatch = True
    print(f"{k['kernel']:<32}{k['seconds'] * 1e3:>9.3f}{k['GB_s']:>9.0f}{k['fraction_of_copy']:>9.0%}{target:>9}{flag}")
sys.exit("gpu-check: a device result differs from the CPU kernel's" if mismatch else 0)
EOF
else
    echo "no benchmark figures (the benchmark failed; see $OUTDIR/bench-gpu.log)"
    rc_bench=1
fi
echo "gpu-check: tests rc=$rc_tests, gpu bench rc=$rc_bench, training rc=$rc_train (logs in $OUTDIR)"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ] && [ "$rc_train" -eq 0 ] && exit 0
exit 1
