#!/usr/bin/env bash
# The whole hpctrain test suite, from a fresh clone on a fresh Debian machine (as root):
#   1. setup (idempotent) and ruff
#   2. unit tests (one process; includes tests that start mpirun themselves: marker 'launcher')
#   3. MPI tests on 2 ranks (mpirun -np 2 python -m pytest --with-mpi -m mpi)
#   4. numba CUDA-simulator tests (NUMBA_ENABLE_CUDASIM=1, own process), including a
#      rehearsal of scripts/gpu-check.sh on the simulator
#   5. every CUDA kernel compiled for sm_90 by numba-cuda + NVVM (no GPU needed; own cached venv)
#   6. start the local Slurm cluster and run the Slurm tests; stop it
#   7. start the 2-node local cluster (network namespaces) and run the multi-node tests; stop it
#      (both clusters are stopped on any exit)
# Exits non-zero on any failure. A step that collects no test (pytest exit 5) fails too.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
results=$(mktemp -d)
started_cluster=0
started_multinode=0
cleanup() {
    if [ "$started_cluster" = 1 ]; then scripts/local-cluster.sh stop || true; fi
    if [ "$started_multinode" = 1 ]; then scripts/local-cluster.sh stop --nodes 2 || true; fi
    rm -rf "$results"
}
trap cleanup EXIT

banner() { printf '\n\033[1m==== %s ====\033[0m\n' "$*"; }
t_start=$SECONDS

banner "1/7 setup"
scripts/setup.sh || { echo "test.sh: setup failed" >&2; exit 1; }
# shellcheck disable=SC1091
source .venv/bin/activate
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# One BLAS/torch thread per process: the MPI steps run 2 ranks on 2 cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
banner "ruff"
ruff check . || { echo "test.sh: ruff found problems (run: ruff check --fix .)" >&2; exit 1; }

failed=()
step() {  # name, then the command; records pass/fail, treats 'no tests' (5) as failure
    local name=$1; shift
    local t0=$SECONDS rc
    "$@"
    rc=$?
    case $rc in
        0) echo "[test.sh] step '$name' passed in $((SECONDS - t0)) s" ;;
        5) echo "[test.sh] step '$name' collected NO tests: failing" >&2; failed+=("$name (no tests)") ;;
        *) echo "[test.sh] step '$name' FAILED (exit $rc) in $((SECONDS - t0)) s" >&2; failed+=("$name") ;;
    esac
}

banner "2/7 unit tests"
step unit python -m pytest -m "not mpi and not slurm and not multinode and not cudasim" --junitxml="$results/unit.xml" -q

banner "3/7 MPI tests (2 ranks)"
# Both ranks run the same tests and both must pass for mpirun to exit 0; only rank 0's
# report is counted in the summary.
export HPCTRAIN_TEST_RESULTS=$results
step mpi mpirun -np 2 --bind-to none bash -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then j=$HPCTRAIN_TEST_RESULTS/mpi.xml; else j=$HPCTRAIN_TEST_RESULTS/rank$OMPI_COMM_WORLD_RANK.junit; fi
     exec python -m pytest --with-mpi -m mpi -q --junitxml="$j"' 
banner "4/7 CUDA-simulator tests"
step cudasim env NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cudasim --junitxml="$results/cudasim.xml" -q

banner "5/7 CUDA kernels compiled for sm_90 (numba-cuda + NVVM, no GPU)"
step cuda-compile scripts/cuda-compile-check.sh --junitxml "$results/cuda-compile.xml"

banner "6/7 Slurm tests (local cluster)"
if scripts/local-cluster.sh start; then
    started_cluster=1
    step slurm python -m pytest -m slurm --junitxml="$results/slurm.xml" -q
else
    failed+=("slurm (cluster did not start)")
fi
scripts/local-cluster.sh stop; started_cluster=0

banner "7/7 multi-node Slurm tests (2-node local cluster)"
if scripts/local-cluster.sh start --nodes 2; then
    started_multinode=1
    step multinode python -m pytest -m multinode --junitxml="$results/multinode.xml" -q
else
    failed+=("multinode (2-node cluster did not start)")
fi
scripts/local-cluster.sh stop --nodes 2; started_multinode=0

banner "summary"
python - "$results" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    for s in ET.parse(f).getroot().iter("testsuite"):
        for k in tot:
            tot[k] += int(s.get(k, 0))
passed = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
print(f"total: {passed} passed, {tot['failures'] + tot['errors']} failed, {tot['skipped']} skipped")
PY
echo "[test.sh] wall time $((SECONDS - t_start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "[test.sh] FAILED steps: ${failed[*]}" >&2
    exit 1
fi
echo "[test.sh] all steps passed"
