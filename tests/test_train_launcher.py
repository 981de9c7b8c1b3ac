"""'hpctrain train' as users run it: 2 ranks under mpirun, bad configs, and fail-fast when a
rank dies or raises. These tests start mpirun themselves (marker: launcher)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launch_helpers import HPCTRAIN, alive, mpirun, rank_pid, start_training, without_mpi_vars

pytestmark = pytest.mark.launcher


@pytest.fixture
def clean_env(mpi_env) -> dict:
    return without_mpi_vars(mpi_env)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from hpctrain.data.sources import write_shards

    d = tmp_path_factory.mktemp("digits") / "shards"
    write_shards("sklearn:digits", d, shards=4, val_fraction=0.2)
    return d


def write_cfg(path: Path, data: Path, run_dir: Path, epochs: int, backend: str = "horovod") -> Path:
    path.write_text(textwrap.dedent(f"""\
        run: {{name: l, dir: '{run_dir}', epochs: {epochs}}}
        data: {{dir: '{data}', batch_size: 32}}
        model: {{kind: cnn, channels: [8, 16]}}
        optimizer: {{name: adamw, lr: 0.003}}
        logging: {{every_steps: 5, progress: false}}
        comm: {{backend: {backend}, timeout_s: 30}}
        """))
    return path


def test_two_ranks_through_horovod(tmp_path, digits, clean_env):
    cfg = write_cfg(tmp_path / "c.yaml", digits, tmp_path / "run", epochs=4)
    p = subprocess.run(mpirun(2, [*HPCTRAIN, "train", str(cfg)]), env=clean_env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("hpctrain train:")]
    assert len(last) == 1 and "val macro F1" in last[0]  # rank 0 only
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "completed" and res["metrics"]["val_macro_f1"] > 0.85
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # one writer
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["plan"]["world_size"] == 2 and resolved["cluster"]["launcher"] == "openmpi"
    ranks = resolved["cluster"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and sorted(r["local_rank"] for r in ranks) == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2 and resolved["cluster"]["nodes"] == [ranks[0]["node"]]
    assert [r["device"] for r in ranks] == ["cpu", "cpu"]
    assert f"2 ranks on 1 node: {ranks[0]['node']} (ranks 0-1)" in p.stderr
    assert resolved["plan"]["peak_lr"] == pytest.approx(0.006)
    assert (tmp_path / "run" / "plots" / "confusion.png").is_file()


def test_horovod_autotune_logs_its_search_in_the_run_dir(tmp_path, digits, clean_env):
    cfg = write_cfg(tmp_path / "c.yaml", digits, tmp_path / "run", epochs=3)
    # Horovod scores a setting every 5 samples of 10 steps after 3 warm-up scores (200 steps);
    # these make it score every 10 steps so a 54-step run logs several
    env = {**clean_env, "HOROVOD_AUTOTUNE_WARMUP_SAMPLES": "0", "HOROVOD_AUTOTUNE_STEPS_PER_SAMPLE": "2"}
    p = subprocess.run(mpirun(2, [*HPCTRAIN, "train", str(cfg), "--set", "comm.horovod_autotune=true"]),
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    log = tmp_path / "run" / "monitor" / "horovod_autotune.csv"
    rows = [ln for ln in log.read_text().splitlines() if ln.strip()]
    # Horovod's own log: a header naming the tuned parameters, then one scored sample per line
    assert "cycle_time_ms" in rows[0] and "score" in rows[0], rows[:2]
    assert len(rows) >= 2, rows


def test_bad_config_fails_on_every_rank_before_training(tmp_path, digits, clean_env):
    cfg = write_cfg(tmp_path / "c.yaml", digits, tmp_path / "run", epochs=1)
    # the timeout only guards against a hang; the behaviour is what the assertions check
    p = subprocess.run(mpirun(2, [*HPCTRAIN, "train", str(cfg), "--set", "optimizer.lr=-1"]), env=clean_env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    # Every rank checks before training; rank 0 reports, and mpirun ends rank 1 while it waits.
    assert p.stderr.count("optimizer.lr: got -1") == 1, p.stderr
    assert not (tmp_path / "run").exists()


# ids: a bare "mpi" id would become a keyword that pytest-mpi reads as its marker and skips
@pytest.mark.parametrize("backend", ["horovod", "torch", "mpi"], ids=["horovod", "torch", "mpi-backend"])
def test_killing_one_rank_ends_the_job(tmp_path, digits, clean_env, backend):
    cfg = write_cfg(tmp_path / "c.yaml", digits, tmp_path / "run", epochs=500, backend=backend)
    proc = start_training(mpirun(2, [*HPCTRAIN, "train", str(cfg)]), clean_env, tmp_path / "run")
    try:
        victim, survivor = rank_pid(proc.pid, 1), rank_pid(proc.pid, 0)
        assert victim is not None and survivor is not None
        os.kill(victim, signal.SIGKILL)
        # the job ends by itself (the wait's timeout only guards against a hang): 500 epochs
        # would take far longer than that
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0
    assert not alive(survivor), "the surviving rank outlived the job"
    assert not (tmp_path / "run" / "result.json").exists(), "the survivor went on to finish the run"


def test_exception_on_one_rank_aborts_all_with_its_traceback(tmp_path, clean_env):
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        from hpctrain.comm import init_comm
        from hpctrain.comm.failfast import install_excepthook

        comm = init_comm("horovod", timeout_s=30)
        install_excepthook(comm.rank)
        if comm.rank == 1:
            raise ValueError("rank one broke")
        comm.allreduce(np.zeros(1))  # rank 0 waits here for a peer that is gone
        print("UNREACHABLE")
        """))
    p = subprocess.run(mpirun(2, [sys.executable, str(script)]), env=clean_env, capture_output=True, text=True,
                       timeout=120)  # a hang guard: rank 0 would otherwise wait in its allreduce
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "[rank 1] ValueError: rank one broke" in out and "Traceback" in out
    assert "[rank 1] hpctrain: aborting all ranks after an error on this rank" in out
    assert out.count("ValueError: rank one broke") == 1  # one report, from the rank that failed
    assert "UNREACHABLE" not in out


@pytest.mark.slurm
@pytest.mark.parametrize("backend,mpi", [("horovod", "pmix"), ("torch", "none")])
def test_under_srun(tmp_path, digits, backend, mpi):
    """The same command under srun: ranks from Slurm/PMIx; torch's rendezvous from Slurm when there is no MPI."""
    cfg = write_cfg(tmp_path / "c.yaml", digits, tmp_path / "run", epochs=2, backend=backend)
    env = without_mpi_vars(dict(os.environ))
    p = subprocess.run(["srun", "-n", "2", f"--mpi={mpi}", "--kill-on-bad-exit=1", "-t", "3", *HPCTRAIN, "train",
                        str(cfg)], capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["plan"]["world_size"] == 2
    assert resolved["cluster"]["launcher"] == ("slurm" if mpi == "none" else "pmix")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "completed"
