"""slurm/examples/serve-model.sbatch on the real local cluster: the server runs as a Slurm job,
binds the node's address (as the script asks), answers over the network, and stops cleanly on
scancel."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_helpers import wait_for

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
PARTITION = os.environ.get("HPCTRAIN_TEST_PARTITION", "debug")


def _clean_env() -> dict:
    # sbatch passes this environment to the job; an MPI singleton's variables (from in-process
    # training elsewhere in this pytest process) must not reach it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "OPAL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the job finds this hpctrain
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_serve_sbatch_example(tmp_path):
    pytest.importorskip("uvicorn")
    env = _clean_env()
    # the model is made in child processes, so this process never becomes an MPI singleton
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
            "from serve_helpers import train_tiny_run; train_tiny_run(Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, check=True, timeout=300,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "hpctrain", "export", str(tmp_path / "run"), "--out",
                    str(tmp_path / "model")], env=env, check=True, timeout=120, capture_output=True)
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    out = subprocess.run(["sbatch", "--parsable", "--partition", PARTITION, "--cpus-per-task", "1",
                          "--time", "00:05:00", "--chdir", str(tmp_path), "--output", str(tmp_path / "serve-%j.log"),
                          str(REPO / "slurm" / "examples" / "serve-model.sbatch"), str(tmp_path / "model"), str(port)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = tmp_path / f"serve-{job}.log"
    try:
        line = wait_for(lambda: log.is_file() and re.search(r"serving .* on (\S+) \((\S+)\) port (\d+)",
                                                              log.read_text()), 120, "the job's first line")
        addr = line.group(2)
        assert int(line.group(3)) == port and addr

        def ready():
            try:
                c = http.client.HTTPConnection(addr, port, timeout=5)
                c.request("GET", "/ready")
                return c.getresponse().status == 200
            except OSError:
                return False

        wait_for(ready, 120, f"the server on {addr}:{port} to be ready", poll=0.5)
        c = http.client.HTTPConnection(addr, port, timeout=30)
        c.request("POST", "/predict", body=json.dumps({"instances": [[1, None, 3, 4]]}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["predictions"][0] in (2, 5, 9)
        c.request("GET", "/metadata")
        meta = json.loads(c.getresponse().read())
        assert meta["server"]["workers"] == 2 and meta["server"]["watch"] is True
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)

    def gone():
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30)
        return q.returncode != 0 or not q.stdout.strip()

    wait_for(gone, 120, f"job {job} to end after scancel")
    assert "Traceback" not in log.read_text()


def test_update_prepared_then_submitted(tmp_path):
    """'hpctrain update --prepare-only' + 'hpctrain submit NEW_RUN/update.yaml' + '--report':
    the update as a Slurm job through the same machinery as any training run."""
    env = _clean_env()
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
            "from serve_helpers import train_tiny_run; from test_update import shifted; "
            "root = Path(sys.argv[1]); train_tiny_run(root); shifted(root)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, check=True, timeout=300,
                   capture_output=True)
    new_run = tmp_path / "updated run"
    hp = [sys.executable, "-m", "hpctrain"]
    p = subprocess.run([*hp, "update", str(tmp_path / "run"), str(tmp_path / "shifted"), "--out", str(new_run),
                        "--prepare-only", "--epochs", "3", "--set", "logging.progress=false"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    try:
        # the tiny run trains with comm.backend=mpi: MPI_Init under srun needs the PMIx plugin
        # even for one rank (submit picks it by itself only for several ranks)
        p = subprocess.run([*hp, "submit", str(new_run / "update.yaml"), "--partition", PARTITION, "--time", "5",
                            "--mpi", "pmix", "--wait", "--poll", "1", "--wait-timeout", "300"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=400)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    finally:
        subprocess.run([*hp, "cancel", str(new_run)], env=env, capture_output=True, timeout=60)
    assert json.loads((new_run / "result.json").read_text())["status"] == "completed"
    p = subprocess.run([*hp, "update", str(tmp_path / "run"), str(tmp_path / "shifted"), "--out", str(new_run),
                        "--report"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rep = json.loads((new_run / "update.json").read_text())
    assert rep["parent"]["parent_run"] == str((tmp_path / "run").resolve())
    assert rep["after"]["new_macro_f1"] > rep["before"]["new_macro_f1"]
