"""`hpctrain explain` under `hpctrain launch -n 2`: the samples and the permutation rows are
split over the ranks, gathered on rank 0, and explain.json holds the numbers of one rank;
bad input ends both ranks with the one-line error (marker: launcher, it starts mpirun)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("captum")

from test_explain import planted_shards, train_run  # noqa: E402

pytestmark = pytest.mark.launcher
HPCTRAIN = [sys.executable, "-m", "hpctrain"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("explain launch")
    data = planted_shards(base / "data")
    return base, train_run(base / "mlp", data, {"kind": "mlp", "hidden": [16]}, epochs=2)


def _numbers(path):
    rec = json.loads(path.read_text())
    assert rec.pop("out") != "" and rec.pop("ranks") in (1, 2)
    return rec


def test_two_ranks_give_the_numbers_of_one(run, mpi_env):
    base, rundir = run
    argv = ["explain", str(rundir), "--samples", "20", "--repeats", "3", "--steps", "32"]
    one = subprocess.run([*HPCTRAIN, *argv, "--out", str(base / "one")], capture_output=True, text=True,
                         timeout=300, env=mpi_env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*HPCTRAIN, "launch", "-n", "2", "--", *HPCTRAIN, *argv, "--out", str(base / "two")],
                         capture_output=True, text=True, timeout=300, env=mpi_env)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "on 2 rank(s)" in two.stdout and two.stdout.count("explained 20 sample(s)") == 1  # rank 0 reports
    a, b = _numbers(base / "one" / "explain.json"), _numbers(base / "two" / "explain.json")
    assert json.loads((base / "two" / "explain.json").read_text())["ranks"] == 2
    # 20 samples are 3 chunks and 600 rows 3 chunks: both ranks did part of the work
    assert len(a["samples"]) == 20 and a["permutation"]["rows"] == 600
    assert a == b
    assert sorted(p.name for p in (base / "two").iterdir()) == sorted(p.name for p in (base / "one").iterdir())


def test_bad_input_ends_both_ranks_with_one_line(run, mpi_env, tmp_path):
    _, rundir = run
    p = subprocess.run([*HPCTRAIN, "launch", "-n", "2", "--", *HPCTRAIN, "explain", str(rundir), "--out",
                        str(tmp_path / "o"), "--split", "train", "--shards", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=300, env=mpi_env)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if "error:" in line]
    assert lines and all("--shards" in line for line in lines), p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()
