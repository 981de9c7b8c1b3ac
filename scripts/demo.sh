#!/usr/bin/env bash
# The main hpctrain job, end to end, on built-in data and the local cluster:
#   1. doctor: is the stack complete?
#   2. a 2-rank Horovod allreduce through 'hpctrain launch'
#   3. one submitit job on the local Slurm cluster
# Later stages (shards, training, quality, Slurm submission) are added as they land.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
out=${HPCTRAIN_DEMO_DIR:-$here/runs/demo}
mkdir -p "$out"
stage() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }

stage "1. hpctrain doctor"
hpctrain doctor

stage "2. 2-rank Horovod allreduce (hpctrain launch -n 2)"
hpctrain launch -n 2 -- python -m hpctrain.selftest allreduce --elements 4194304

stage "3. one submitit job on the local Slurm cluster"
started=0
if ! scontrol ping >/dev/null 2>&1; then scripts/local-cluster.sh start; started=1; fi
trap '[ "$started" = 1 ] && scripts/local-cluster.sh stop' EXIT
python - "$out" <<'PY'
import sys, time, submitit
from hpctrain.selftest import job_facts
folder = sys.argv[1] + "/submitit"
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(timeout_min=2, slurm_partition="debug", cpus_per_task=1, name="hpctrain-demo")
t0 = time.time()
job = ex.submit(job_facts, 40, 2)
print(f"submitted job {job.job_id}; logs in {folder}")
res = job.result()
print(f"job {job.job_id} returned {res} after {time.time() - t0:.1f} s")
assert res["sum"] == 42 and res["job_id"] == str(job.job_id), res
PY
stage "done"
