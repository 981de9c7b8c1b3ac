import json
import subprocess
import sys

import hpctrain
from hpctrain.cli import COMMANDS


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hpctrain", *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"hpctrain {hpctrain.__version__}"


def test_help_lists_every_subcommand():
    p = run("--help")
    assert p.returncode == 0
    for name in COMMANDS:
        assert name.replace("_", "-") in p.stdout


def test_import_is_light():
    code = ("import sys, hpctrain, hpctrain.cli; hpctrain.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'horovod', 'mpi4py', 'h5py', 'numba', 'submitit', 'scipy', 'sklearn', "
            "'matplotlib', 'pandas') if m in sys.modules]; print(heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_unknown_subcommand_is_usage_error():
    p = run("no-such-command")
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_doctor_reports_horovod_with_mpi():
    p = run("doctor", "--json", timeout=180)
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["horovod"]["ok"], rows["horovod"]
    assert "MPI yes" in rows["horovod"]["detail"]
    for name in ("torch", "mpi4py", "mpirun", "h5py", "numba"):
        assert rows[name]["ok"], rows[name]
    assert p.returncode == 0, p.stdout


def test_doctor_table_has_fix_for_missing(monkeypatch):
    from hpctrain import doctor

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "PROBES", [doctor.check_python, broken])
    checks = doctor.run_checks()
    assert not doctor.healthy(checks)
    table = doctor.format_table(checks)
    assert "MISSING" in table and "probe crashed: RuntimeError: boom" in table and "fix:" in table
