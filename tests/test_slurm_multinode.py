"""Jobs across two Slurm nodes (scripts/local-cluster.sh start --nodes 2): each slurmd in a
network and UTS namespace of its own, so each node has its own address and hostname, and the
processes of a job really are split between two "machines" that talk over TCP.

Everything a job reads or writes lives under the cluster's directory (the shared file
system), as it would on a real cluster, where /tmp is node-local.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import multinode_conf
from slurm_helpers import drive, events, job_of, make_blobs, wait_for, write_cfg

from hpctrain.cli import main as cli

pytestmark = pytest.mark.multinode

PARTITION = os.environ.get("HPCTRAIN_TEST_PARTITION", "debug")


@pytest.fixture(scope="module")
def shared_dir():
    base = multinode_conf().parent / "test-runs" / uuid.uuid4().hex[:8]
    base.mkdir(parents=True)
    yield base
    if not os.environ.get("HPCTRAIN_KEEP_TEST_RUNS"):  # set it to look at the run dirs afterwards
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def blobs(shared_dir):
    pytest.importorskip("torch")
    return make_blobs(shared_dir / "blobs")


@pytest.fixture
def runs(shared_dir, monkeypatch):
    """A runs dir on the shared file system; SLURM_CONF names the 2-node cluster for every
    client this test starts (hpctrain's sbatch, scontrol, scancel)."""
    base = shared_dir / uuid.uuid4().hex[:6]
    base.mkdir()
    monkeypatch.setenv("SLURM_CONF", str(multinode_conf()))
    monkeypatch.setenv("HPCTRAIN_RUNS", str(base))
    monkeypatch.chdir(base)
    yield base
    ids = {e["job_id"] for f in base.rglob("events.jsonl") for e in map(json.loads, f.read_text().splitlines())
           if e.get("job_id")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


def submit(cfg: Path, name: str, *args: str) -> Path:
    assert cli(["submit", str(cfg), "--partition", PARTITION, "--time", "10", "--nodes", "2",
                "--ntasks-per-node", "1", "--name", name, *args]) == 0
    return Path.cwd() / "runs" / name  # a training config's run.dir defaults to runs/<run name>


def test_steps_land_on_two_nodes_with_their_own_names_and_addresses(runs):
    script = runs / "where.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -N 2\n#SBATCH --ntasks-per-node=1\n"
                      f"#SBATCH -o {runs}/where.out\n"
                      "srun bash -c 'echo $SLURM_PROCID $SLURMD_NODENAME $(hostname) $(hostname -I)'\n")
    p = subprocess.run(["sbatch", "--wait", "-p", PARTITION, "-t", "2", str(script)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = sorted((runs / "where.out").read_text().split("\n"))
    rows = [ln.split() for ln in lines if ln.strip()]
    # rank r on node n(r+1), whose hostname is its node name and whose only address is its own
    assert rows == [["0", "n1", "n1", "10.213.0.11"], ["1", "n2", "n2", "10.213.0.12"]], lines


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_two_node_training_completes_and_records_where_each_rank_ran(runs, blobs, backend, capsys):
    # horovod: srun --mpi=pmix (chosen by submit), MPI over TCP between the nodes;
    # torch: gloo, rendezvous at the first node of the allocation (n1), found by name
    pytest.importorskip("hpctrain.train.trainer")
    cfg = write_cfg(runs / "c.yaml", blobs, "mn", comm={"backend": backend})
    run_dir = submit(cfg, f"two-nodes-{backend}")
    assert drive(run_dir, 180) == "COMPLETED"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["metrics"]["val_accuracy"] > 0.9
    cluster = json.loads((run_dir / "config.resolved.json").read_text())["cluster"]
    assert cluster["world_size"] == 2 and cluster["nodes"] == ["n1", "n2"]
    assert [(r["rank"], r["node"], r["local_rank"]) for r in cluster["ranks"]] == [(0, "n1", 0), (1, "n2", 0)]
    assert [e["ntasks"] for e in events(run_dir, "started")] == [2]
    assert cli(["status", str(run_dir)]) == 0
    assert "placement  2 ranks on 2 nodes: n1 (rank 0), n2 (rank 1)" in capsys.readouterr().out


def test_two_node_preemption_resumes_to_the_uninterrupted_parameters(runs, blobs):
    # USR2 reaches both ranks on their own nodes; they agree at a step boundary, checkpoint
    # together, rank 0 requeues; the restart on two nodes continues to the same parameters.
    pytest.importorskip("hpctrain.train.trainer")
    import torch

    from hpctrain.train.checkpoint import load

    cfg = write_cfg(runs / "p.yaml", blobs, "mnp", run={"epochs": 10}, data={"batch_size": 4},
                    checkpoint={"every_steps": 100}, comm={"backend": "horovod"})
    ref, pre = submit(cfg, "mn-ref"), submit(cfg, "mn-pre")

    def progressed():
        m = pre / "metrics.jsonl"
        return m.is_file() and len(m.read_text().splitlines()) >= 2
    wait_for(progressed, 120, "the 2-node run to progress")
    subprocess.run(["scancel", "--signal=USR2", job_of(pre)], check=True, timeout=30)
    assert drive(pre, 240) == "COMPLETED"
    assert drive(ref, 240) == "COMPLETED"
    assert [e["kind"] for e in events(pre, "requeue")] == ["preemption"]
    assert len({e["job_id"] for e in events(pre, "started")}) == 2  # resubmitted as a new job
    got, want = load(pre / "checkpoints" / "final.pt"), load(ref / "checkpoints" / "final.pt")
    assert got["step"] == want["step"] == 10 * 60
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k


def test_two_stage_pipeline_runs_one_stage_per_node(runs, blobs):
    # parallel.pipeline_stages=2 on 2 nodes x 1 task: stage 0 on n1, stage 1 on n2; activations and
    # their gradients cross the nodes over gloo (TCP), and rank 0 writes the whole model
    pytest.importorskip("hpctrain.train.trainer")
    from hpctrain.train.checkpoint import load

    cfg = write_cfg(runs / "pp.yaml", blobs, "mnpipe", model={"kind": "mlp", "hidden": [16, 8]},
                    comm={"backend": "torch"}, parallel={"pipeline_stages": 2, "microbatches": 4})
    run_dir = submit(cfg, "two-node-pipeline")
    assert drive(run_dir, 180) == "COMPLETED"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["metrics"]["val_accuracy"] > 0.9
    resolved = json.loads((run_dir / "config.resolved.json").read_text())
    assert resolved["plan"]["pipeline_stages"] == 2 and resolved["plan"]["replicas"] == 1
    assert [(r["rank"], r["node"]) for r in resolved["cluster"]["ranks"]] == [(0, "n1"), (1, "n2")]
    final = load(run_dir / "checkpoints" / "final.pt")
    assert final["pipeline"]["stages"] == 2 and "head.weight" in final["model"]
