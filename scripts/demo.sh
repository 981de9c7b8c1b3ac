#!/usr/bin/env bash
# The main hpctrain job, end to end, on built-in data and the local Slurm cluster.
#
#   1. doctor: is the stack complete?
#   2. a 2-rank Horovod allreduce through 'hpctrain launch'
#   3. shard sklearn's digits with injected missing values (5%) and class imbalance (5x)
#   4. data quality: profile the training shards; drift between the training split and a
#      deliberately shifted holdout (exit 3 = drift)
#   5. fit the imputer (exact median, from the shards)
#   6. train the CNN on 2 ranks through Horovod, imputation and augmentation in-process;
#      evaluate on the held-out split, print macro F1 and write the plots
#  6b. explain the CNN on 2 ranks: saliency, integrated gradients, occlusion, permutation
#      importance (hpctrain explain; pictures in explain.html)
#   7. the same training as a Slurm job on the local cluster via 'hpctrain submit'
#   8. compress the model (int8), serve it over HTTP and send it a few requests
#
# Everything lands under $HPCTRAIN_DEMO_DIR (default runs/demo). Takes a few minutes on 2 cores.
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
t0=$SECONDS

stage "1. hpctrain doctor"
hpctrain doctor

stage "2. 2-rank Horovod allreduce (hpctrain launch -n 2)"
hpctrain launch -n 2 -- python -m hpctrain.selftest allreduce --elements 4194304

stage "3. shard sklearn:digits with 5% missing values and 5x class imbalance"
data=$out/shards/digits
hpctrain shard 'sklearn:digits?missing=0.05&imbalance=5&seed=0' --out "$data" --val-fraction 0.2 --shards 4 --force
hpctrain shard info "$data"

stage "4. data quality: profile, and drift against a shifted holdout"
hpctrain profile "$data" --split train --out "$out/profile"
python - "$data" "$out/shards/holdout-shifted" <<'PY'
# A holdout whose pixels drifted (sensor gain): the val split scaled by 1.5 plus 2.
import sys
from hpctrain.data.shards import Manifest, ShardWriter, iter_arrays
m = Manifest.load(sys.argv[1])
with ShardWriter(sys.argv[2], feature_names=m.schema.feature_names, sample_shape=m.schema.sample_shape,
                 classes=m.schema.classes, overwrite=True) as w:
    for _, x, y in iter_arrays(m, "val"):
        w.add(x * 1.5 + 2.0, y, split="val")
PY
rc=0
hpctrain drift "$data" "$data" --ref-split train --cur-split val --out "$out/drift-val" || rc=$?
echo "train vs val: drift exit $rc (0 = no drift)"
rc=0
hpctrain drift "$data" "$out/shards/holdout-shifted" --ref-split train --out "$out/drift-shifted" || rc=$?
echo "train vs shifted holdout: drift exit $rc (3 = drift)"
[ "$rc" = 3 ] || { echo "demo: expected the shifted holdout to drift" >&2; exit 1; }

stage "5. fit the imputer (median, exact, from the shards)"
hpctrain impute fit "$data" --strategy median

stage "6. train the CNN on 2 ranks (Horovod), imputation + augmentation in-process"
run=$out/runs/digits_cnn
data_args=(--set "data.dir=$data" --set "imputation.imputer=$data/imputer.json")
hpctrain launch -n 2 -- hpctrain train docs/examples/digits_cnn.yaml "${data_args[@]}" --set "run.dir=$run"
python - "$run" <<'PY'
import json, sys
res = json.load(open(sys.argv[1] + "/result.json"))
f1 = res["metrics"].get("val_macro_f1")
print(f"held-out macro F1: {f1:.4f} (target >= 0.95); plots in {sys.argv[1]}/plots")
sys.exit(0 if f1 is not None and f1 >= 0.95 else 1)
PY
# per-rank resource use of that training: table, alerts, one PNG timeline per rank
hpctrain monitor "$run"

stage "6b. explain the CNN on 2 ranks: IG, saliency, occlusion (Captum), permutation importance"
hpctrain launch -n 2 -- hpctrain explain "$run" --out "$out/explain"

stage "7. the same training as a Slurm job (hpctrain submit: 2 ranks via srun --mpi=pmix, chosen from srun --mpi=list)"
started=0
if ! scontrol ping >/dev/null 2>&1; then scripts/local-cluster.sh start; started=1; fi
trap '[ "$started" = 1 ] && scripts/local-cluster.sh stop' EXIT
srun_run=$out/runs/digits_cnn_slurm
rm -rf "$srun_run"  # a fresh run each demo (a finished run would just exit at once)
# --wait blocks until the run has really finished (through any requeue) and prints each state
# change: exit 0 COMPLETED, 1 FAILED/CANCELLED, 124 when --wait-timeout passes first (12 min: the
# job's 10-minute limit plus time in the queue)
rc=0
hpctrain submit docs/examples/digits_cnn.yaml --ntasks-per-node 2 --time 10 --partition debug \
    "${data_args[@]}" --set "run.name=digits_cnn_slurm" --set "run.dir=$srun_run" \
    --wait --poll 2 --wait-timeout 720 || rc=$?
hpctrain status "$srun_run" || true
if [ "$rc" = 124 ]; then hpctrain cancel "$srun_run" || true; fi  # waiting never cancels; the demo cleans up
[ "$rc" = 0 ] || { echo "demo: the Slurm job did not complete (hpctrain submit --wait exit $rc)" >&2; exit 1; }

stage "8. compress the CNN (static int8, guarded by macro F1), serve it, send it a few requests"
model=$out/models/digits-int8
hpctrain compress "$run" --out "$model" --force
port=${HPCTRAIN_DEMO_PORT:-8765}
hpctrain serve "$model" --port "$port" > "$out/serve.log" 2>&1 &
serve_pid=$!
trap '[ "$started" = 1 ] && scripts/local-cluster.sh stop; kill -TERM "$serve_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do  # up to 30 s for the model to load
    curl -sf "localhost:$port/ready" >/dev/null 2>&1 && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$out/serve.log" >&2; echo "demo: the server exited" >&2; exit 1; }
    sleep 0.1
done
body=$(python - "$data" <<'PY'
# three validation digits as the request body; null marks a missing pixel (imputed by the server)
import json, math, sys
from hpctrain.data.shards import iter_arrays
_, x, y = next(iter(iter_arrays(sys.argv[1], "val")))
rows = [[None if math.isnan(v) else float(v) for v in r.reshape(-1)] for r in x[:3]]
print(json.dumps({"instances": rows}))
PY
)
echo "$body" > "$out/request.json"
curl -sf "localhost:$port/predict" -H 'Content-Type: application/json' -d @"$out/request.json" | python -c '
import json, sys
r = json.load(sys.stdin)
print("predicted digits:", r["labels"], "with probability", [round(max(p), 3) for p in r["probabilities"]])'
curl -sf "localhost:$port/metrics" | grep -E '^hpctrain_requests_total' || true
kill -TERM "$serve_pid"; wait "$serve_pid" || true
echo "serve it yourself:  hpctrain serve $model --port $port"
echo "and ask it:         curl -s localhost:$port/predict -H 'Content-Type: application/json' -d @$out/request.json"

stage "done in $((SECONDS - t0)) s"
echo "profile report: $out/profile/report.html"
echo "drift report:   $out/drift-shifted/drift.html"
echo "training plots: $run/plots/"
echo "monitoring:     $run/monitor/plots/ (hpctrain monitor $run)"
echo "explanation:    $out/explain/explain.html (pictures: $out/explain/*.png)"
