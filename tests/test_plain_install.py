"""A plain `pip install .` (no extras) in a fresh virtual environment: every command either
works or names the extra it needs in one line, never a ModuleNotFoundError traceback.

Fast: the new venv sees this environment's packages (torch, Horovod, h5py, ...) through a
directory of links that leaves out every optional dependency (scikit-learn, SciPy, Optuna,
pyarrow, TensorBoard, the [serve] packages, and the test oracles pandas and imbalanced-learn), and the project is
installed from this checkout with --no-deps --no-index; `pip check` then proves that the
core requirements are met without the extras.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# distributions (normalised, as in site-packages names) that only extras or tests bring
OPTIONAL = {"sklearn", "scikit_learn", "scipy", "optuna", "pyarrow", "tensorboard", "tensorboard_data_server",
            "pandas", "imblearn", "imbalanced_learn", "safetensors", "uvicorn", "starlette", "prometheus_client",
            "httptools", "uvloop", "captum", "cryptography", "pynvml", "nvidia_ml_py", "hpctrain", "__editable__",
            "__editable___hpctrain"}

pytestmark = pytest.mark.slow


def _top(name: str) -> str:
    base = re.split(r"[-.]", name, maxsplit=1)[0]
    return base.lower().replace("-", "_")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain install")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    outer = Path(sysconfig.get_paths()["purelib"])
    view = root / "outer-site"
    view.mkdir()
    for entry in outer.iterdir():
        top = _top(entry.name)
        if top in OPTIONAL or entry.name.startswith("__editable__") or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_outer.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", str(REPO)], check=True,
                   timeout=600, cwd=root)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    unmet = [line for line in check.stdout.splitlines() if line.lower().startswith("hpctrain ")]
    assert not unmet, "a plain install lacks core requirements: " + "; ".join(unmet)
    probe = subprocess.run([str(py), "-c", "import hpctrain, importlib.util as u; print(hpctrain.__file__); "
                            "print([m for m in ('sklearn', 'scipy', 'optuna', 'pyarrow', 'tensorboard', 'safetensors', "
                            "'uvicorn', 'starlette', 'prometheus_client', 'captum', 'cryptography') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True, cwd=root)
    where, present = probe.stdout.splitlines()
    assert str(venv) in where, where  # the installed copy, not this checkout
    assert present == "[]", f"optional packages leaked into the plain venv: {present}"
    work = root / "work"
    work.mkdir()
    return venv, work


def _run(plain, *args, ok=(0,), timeout=300):
    venv, work = plain
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["HPCTRAIN_RUNS"] = str(work / "runs")
    p = subprocess.run([str(venv / "bin" / "hpctrain"), *args], capture_output=True, text=True, cwd=work,
                       timeout=timeout, env=env)
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "ModuleNotFoundError" not in out, out
    assert p.returncode in ok, f"hpctrain {' '.join(args)} exited {p.returncode}:\n{out}"
    return out


def _needs_extra(plain, extra, *args):
    """The command fails with exit 2 and one line that names the extra to install."""
    out = _run(plain, *args, ok=(2,))
    lines = [line for line in out.splitlines() if f"pip install 'hpctrain[{extra}]'" in line]
    assert len(lines) == 1 and len(out.strip().splitlines()) == 1, out


def test_every_command_works_or_names_its_extra(plain):
    venv, work = plain
    assert "hpctrain" in _run(plain, "--version")
    _run(plain, "doctor", ok=(0, 1))
    for name in ("shard", "keygen", "impute", "profile", "drift", "clean", "balance", "farm", "predict", "train",
                 "submit", "sweep", "status", "logs", "cancel", "launch", "doctor", "export", "compress", "serve",
                 "update", "explain"):
        _run(plain, name, "--help")

    # core: shards, imputation, training, prediction, submission, status, logs, farm, launch
    _run(plain, "shard", "synthetic:classification?rows=600&features=6&classes=3&missing=0.05&seed=0", "--out",
         "s", "--val-fraction", "0.2", "--shards", "2")
    _run(plain, "impute", "fit", "s")
    cfg = work / "t.yaml"
    cfg.write_text("run: {name: plain, epochs: 1}\ndata: {dir: s, batch_size: 32}\nmodel: {kind: mlp}\n"
                   "comm: {backend: torch}\nimputation: {imputer: s/imputer.json}\n")
    _run(plain, "train", str(cfg))
    assert json.loads((work / "runs" / "plain" / "result.json").read_text())["status"] == "completed"
    assert list((work / "runs" / "plain").glob("*.png")) or list((work / "runs" / "plain").rglob("*.png"))
    _run(plain, "predict", "runs/plain", "s", "--out", "p.npz")
    _run(plain, "submit", "--counter", "3", "--counter-step-s", "0", "--cluster", "local", "--name", "c")
    _run(plain, "status", "runs/c")
    _run(plain, "logs", "runs/c")
    (work / "tasks.jsonl").write_text(json.dumps({"id": "a", "cmd": ["true"]}) + "\n")
    _run(plain, "launch", "-n", "2", "--oversubscribe", "--", "hpctrain", "farm", "tasks.jsonl", "--out", "farm",
         "--no-progress")
    _run(plain, "cancel", "runs/c", ok=(0, 1, 2))  # already finished: refused in one line, or a no-op

    # extras: each names the one to install
    _needs_extra(plain, "quality", "profile", "s", "--out", "prof")
    _needs_extra(plain, "quality", "drift", "s", "s")
    _needs_extra(plain, "quality", "clean", "s", "--out", "c1", "--drop-label-noise")
    _needs_extra(plain, "quality", "balance", "s", "--out", "b1", "--method", "smote")
    _needs_extra(plain, "quality", "shard", "sklearn:iris", "--out", "iris")
    (work / "x.parquet").write_bytes(b"PAR1")
    _needs_extra(plain, "parquet", "shard", "x.parquet", "--out", "pq")
    _needs_extra(plain, "tensorboard", "train", str(cfg), "--set", "logging.tensorboard=true", "--set",
                 "run.name=tb")
    # key files and masking are stdlib; only encryption needs the [secure] extra
    _run(plain, "keygen", "k")
    _run(plain, "shard", "synthetic:classification?rows=300&features=4&classes=2", "--out", "masked", "--mask",
         "f0:hash", "--mask-key", "k")
    _needs_extra(plain, "secure", "shard", "synthetic:classification?rows=300&features=4&classes=2", "--out", "enc",
                 "--encrypt", "k")
    assert not (work / "enc").exists()
    _needs_extra(plain, "serve", "export", "runs/plain", "--out", "m")
    _needs_extra(plain, "explain", "explain", "runs/plain", "--out", "ex")
    assert not (work / "ex").exists()
    # permutation importance needs no attribution library
    _run(plain, "explain", "runs/plain", "--out", "ex", "--method", "permutation", "--repeats", "1")
    assert json.loads((work / "ex" / "explain.json").read_text())["permutation"]["rows"] > 0
    _needs_extra(plain, "serve", "compress", "runs/plain", "--out", "m")
    _needs_extra(plain, "serve", "serve", "runs/plain", "--port", "0")
    assert not (work / "m").exists()
    # an online update trains and scores a run dir: no artifact, so no extra
    _run(plain, "update", "runs/plain", "s", "--out", "runs/upd", "--epochs", "1")
    assert json.loads((work / "runs" / "upd" / "result.json").read_text())["status"] == "completed"
    _needs_extra(plain, "sweep", "sweep", str(cfg), "--bayes", "optimizer.lr=loguniform(1e-4,1e-1)", "--trials",
                 "2", "--name", "bayes")
