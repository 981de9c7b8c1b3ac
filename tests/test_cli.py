import json
import subprocess
import sys

import pytest

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


def test_doctor_output_is_text_without_nul_bytes():
    # MPI's library version string ends in a NUL: grep then called doctor's (and the demo's) output binary
    p = subprocess.run([sys.executable, "-m", "hpctrain.cli", "doctor"], capture_output=True, timeout=180)
    assert b"\0" not in p.stdout and p.stdout.count(b"\n") >= 10, p.stdout
    assert p.returncode == 0, p.stdout


def test_doctor_slurm_row_is_not_ok_when_sbatch_cannot_run(monkeypatch):
    from hpctrain import doctor

    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(doctor, "_run", lambda argv, timeout=10.0: (
        1, "sbatch: error: ClusterName needs to be specified\nsbatch: fatal: Unable to process configuration file"))
    c = doctor.check_slurm_commands()
    assert not c.ok and "Unable to process configuration file" in c.detail and "SLURM_CONF" in c.fix
    monkeypatch.setattr(doctor, "_run", lambda argv, timeout=10.0: (0, "slurm-wlm 22.05.8"))
    c = doctor.check_slurm_commands()
    assert c.ok and c.detail == "slurm-wlm 22.05.8"
    table = doctor.format_table([doctor.Check("mpi4py", True, "Open MPI v4.1.4\0\x07")])
    assert "\0" not in table and "\x07" not in table and "Open MPI v4.1.4" in table


# ------------------------------------------------------------------ bad input: exit 2 and a message that says why

def _main(capsys, *argv):
    from hpctrain.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_errors_name_the_subcommand_even_with_a_command_positional(capsys):
    rc, _, err = _main(capsys, "launch", "-n", "0", "--", "true")
    assert rc == 2 and err.startswith("hpctrain launch: error: -n must be at least 1"), err


def test_launch_says_what_a_bad_mpirun_path_is(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("")
    rc, _, err = _main(capsys, "launch", "-n", "1", "--mpirun", str(tmp_path), "--", "true")
    assert rc == 2 and f"--mpirun '{tmp_path}' is a directory, not the mpirun program" in err
    rc, _, err = _main(capsys, "launch", "-n", "1", "--mpirun", str(afile), "--", "true")
    assert rc == 2 and f"--mpirun '{afile}' is a file without execute permission" in err
    rc, _, err = _main(capsys, "launch", "-n", "1", "--mpirun", str(tmp_path / "nope"), "--", "true")
    assert rc == 2 and "does not exist" in err and "PATH" not in err


def _sweep_cfg(tmp_path, **data):
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"name": "t", "dir": str(tmp_path / "run")},
                                   "data": {"dir": str(tmp_path / "shards"), **data}}))
    return str(cfg)


@pytest.mark.parametrize("axis, fragments", [
    (["--grid", "optimizer.lrr=1,2"],
     ["trial 0 (optimizer.lrr=1); trial 1 (optimizer.lrr=2): unknown key 'optimizer.lrr'. Did you mean 'lr'?"]),
    (["--grid", "data.batch_size=16,abc"],
     ["trial 1 (data.batch_size='abc'): data.batch_size: got 'abc' (str), expected an integer"]),
    (["--grid", "optimizer.lr=-1,0.01"], ["trial 0 (optimizer.lr=-1): optimizer.lr: got -1.0"]),
    (["--random", "model.dropout=uniform(0,1.5)", "--trials", "2"],
     ["model.dropout=1.5 (a bound of uniform(0, 1.5)): model.dropout: got 1.5"]),
    (["--bayes", "optimizer.name=choice(adamw,sgdd)", "--trials", "2"],
     ["optimizer.name='sgdd' (one of its choice() values)", "did you mean 'sgd'?"]),
])
def test_sweep_validates_every_trial_config_before_submitting(tmp_path, capsys, axis, fragments):
    rc, out, err = _main(capsys, "sweep", _sweep_cfg(tmp_path), "--dry-run", *axis)
    assert rc == 2 and "nothing was submitted" in err and out == "", err
    for f in fragments:
        assert f in err, err


def test_sweep_with_good_trials_still_prints_the_array_script(tmp_path, capsys):
    rc, out, err = _main(capsys, "sweep", _sweep_cfg(tmp_path), "--dry-run", "--grid", "optimizer.lr=1e-3,1e-2",
                         "--grid", "model.dropout=0,0.5")
    assert rc == 0 and "#SBATCH --array=0-3%4" in out, err


def test_sweep_trials_are_capped(tmp_path, capsys):
    rc, out, err = _main(capsys, "sweep", _sweep_cfg(tmp_path), "--dry-run", "--random",
                         "optimizer.lr=uniform(0.001,0.01)", "--trials", "10001")
    assert rc == 2 and "--trials 10001 asks for 10001 trials; a sweep has at most 10000" in err and out == ""
    many = ",".join(str(i) for i in range(1, 102))
    rc, _, err = _main(capsys, "sweep", _sweep_cfg(tmp_path), "--dry-run", "--grid", f"data.batch_size={many}",
                       "--grid", f"run.epochs={many}")
    assert rc == 2 and "the grid (101 x 101 values) asks for 10201 trials" in err


def test_sweep_refuses_more_trials_than_the_cluster_array_allows(tmp_path, capsys):
    from hpctrain.slurm.runner import CmdResult, use_runner

    calls = []

    def fake(argv, timeout, env):
        calls.append(list(argv))
        if list(argv[:3]) == ["scontrol", "show", "config"]:
            return CmdResult(tuple(argv), 0, "MaxArraySize            = 2\n", "")
        return CmdResult(tuple(argv), 1, "", "unexpected")

    with use_runner(fake):
        rc, _, err = _main(capsys, "sweep", "--counter", "3", "--grid", "scale=1,2,3", "--runs-dir", str(tmp_path),
                           "--no-wait")
    assert rc == 2 and "this cluster's MaxArraySize is 2" in err, err
    assert calls == [["scontrol", "show", "config"]]  # no sbatch
    assert not (tmp_path / "counter-sweep" / "sweep.json").exists()


def test_sweep_metric_must_be_one_the_trials_report(tmp_path, capsys):
    cfg = _sweep_cfg(tmp_path)
    rc, _, err = _main(capsys, "sweep", cfg, "--dry-run", "--grid", "optimizer.lr=1e-3,1e-2", "--metric", "nosuch")
    assert rc == 2 and "--metric 'nosuch'" in err and "val_loss" in err
    rc, _, err = _main(capsys, "sweep", cfg, "--dry-run", "--grid", "optimizer.lr=1e-3", "--metric", "val_acc")
    assert rc == 2 and "Did you mean 'val_accuracy'?" in err
    rc, _, err = _main(capsys, "sweep", "--counter", "3", "--grid", "scale=1,2", "--dry-run", "--runs-dir",
                       str(tmp_path), "--metric", "val_loss")
    assert rc == 2 and "reports loss" in err
    rc, _, err = _main(capsys, "sweep", cfg, "--dry-run", "--grid", "optimizer.lr=1e-3", "--metric", "val_accuracy")
    assert rc == 0, err
    novalcfg = _sweep_cfg(tmp_path, val_split=None)
    rc, _, err = _main(capsys, "sweep", novalcfg, "--dry-run", "--grid", "optimizer.lr=1e-3")
    assert rc == 0 and "warning: data.val_split is null" in err


def test_sweep_wait_timeout_must_be_finite(tmp_path, capsys):
    rc, _, err = _main(capsys, "sweep", _sweep_cfg(tmp_path), "--dry-run", "--grid", "optimizer.lr=1e-3",
                       "--wait-timeout", "nan")
    assert rc == 2 and "--wait-timeout must be a number of seconds > 0, got nan" in err


@pytest.mark.parametrize("flag", ["--retry-backoff", "--counter-step-s"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_submit_seconds_must_be_finite(tmp_path, capsys, flag, value):
    rc, out, err = _main(capsys, "submit", "--counter", "2", "--dry-run", "--runs-dir", str(tmp_path), flag, value)
    assert rc == 2 and f"{flag} must be a finite number of seconds >= 0, got {value}" in err and out == ""


def _finished_run(base, name="done", state="completed"):
    from hpctrain.slurm import journal

    d = base / name
    journal.record(d, "submitted", job_id="local-1", fresh=True)
    journal.record(d, "started", job_id="local-1")
    journal.record(d, state, job_id="local-1")
    return d


def test_status_with_a_runs_dir_that_is_not_a_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPCTRAIN_RUNS", raising=False)
    rc, out, err = _main(capsys, "status", "--runs-dir", str(tmp_path / "nope"), "--no-live")
    assert rc == 2 and f"--runs-dir '{tmp_path / 'nope'}' does not exist" in err and "no runs" not in out
    afile = tmp_path / "ok.csv"
    afile.write_text("a\n")
    monkeypatch.setenv("HPCTRAIN_RUNS", str(afile))
    rc, out, err = _main(capsys, "status", "--no-live")
    assert rc == 2 and f"HPCTRAIN_RUNS='{afile}' is not a directory" in err
    monkeypatch.delenv("HPCTRAIN_RUNS")
    monkeypatch.chdir(tmp_path)  # nothing submitted here yet: the default runs/ is simply empty
    rc, out, err = _main(capsys, "status", "--no-live")
    assert rc == 0 and "no runs under 'runs'" in out


def test_negative_line_counts_are_refused(tmp_path, capsys):
    d = _finished_run(tmp_path)
    (d / "logs").mkdir()
    (d / "logs" / "rank-0.log").write_text("a\nb\n")
    rc, out, err = _main(capsys, "logs", str(d), "-n", "-5")
    assert rc == 2 and "-n/--lines must be >= 0" in err and out == ""
    rc, out, err = _main(capsys, "status", str(d), "--lines", "-5", "--no-live")
    assert rc == 2 and "--lines must be >= 0" in err


def test_cancel_of_a_completed_run_leaves_it_completed(tmp_path, capsys):
    from hpctrain.slurm import journal

    d = _finished_run(tmp_path)
    rc, out, err = _main(capsys, "cancel", str(d))
    assert rc == 0 and "run 'done' has already ended (COMPLETED); nothing to cancel" in out, err
    assert "cancelled" not in [e["event"] for e in journal.read_events(d)]
    rc, out, _ = _main(capsys, "status", str(d), "--no-live")
    assert rc == 0 and "COMPLETED" in out and "CANCELLED" not in out


def test_damaged_sweep_and_spec_records(tmp_path, capsys):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{\n")
    for cmd in (["status", str(sweep), "--no-live"], ["cancel", str(sweep)]):
        rc, _, err = _main(capsys, *cmd)
        assert rc == 2 and "Traceback" not in err, err
        assert f"'{sweep / 'sweep.json'}' is not valid JSON" in err and "run the sweep again" in err
    rc, out, err = _main(capsys, "status", "--runs-dir", str(tmp_path), "--no-live")  # the listing goes on
    assert rc == 0 and "warning: sweep sw:" in err
    d = _finished_run(tmp_path)
    (d / "slurm" / "spec.json").write_text("{\n")
    rc, out, err = _main(capsys, "status", str(d), "--no-live")
    assert rc == 0 and "COMPLETED" in out
    assert f"warning: '{d / 'slurm' / 'spec.json'}' is damaged" in err
