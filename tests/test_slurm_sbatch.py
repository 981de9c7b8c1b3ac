"""The sbatch script is a pure function of the JobSpec: golden files pin it, including
hostile run dirs and names (spaces, quotes, %, $) and arrays. Regenerate on purpose with
HPCTRAIN_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpctrain.errors import ConfigError
from hpctrain.slurm.sbatch import JobSpec, render_sbatch, sbatch_value, slurm_name

GOLDEN = Path(__file__).parent / "golden"
PY = "/opt/venv/bin/python"

SPECS = {
    "slurm_basic.sbatch": dict(name="mnist", run_dir="/scratch/runs/mnist", time="30"),
    "slurm_full.sbatch": dict(name="big", run_dir="/scratch/runs/big", nodes=2, ntasks_per_node=4, gpus_per_node=4,
                              cpus_per_task=8, mem="64G", time="1-00:00:00", partition="gpu", account="proj01",
                              qos="high", constraint="a100&ib", exclusive=True, signal="USR2", signal_delay_s=120,
                              setup=["module load cuda/12.1", "source /opt/venv/bin/activate"], mpi="pmix"),
    "slurm_hostile.sbatch": dict(name="it's a \"run\" $HOME; rm -rf /",
                                 run_dir="/scratch/my runs/it's a \"run\" 100%/$HOME `x`", time="10"),
    "slurm_array.sbatch": dict(name="sweep", run_dir="/scratch/runs/sweep 1", time="10", array_size=4,
                               array_parallelism=2, array_offset=4),
    # issue 18: site options without a typed flag, passed through (a switch, a quoted value)
    "slurm_site.sbatch": dict(name="site", run_dir="/scratch/runs/site", time="30",
                              sbatch=["--reservation=maint", "gres=gpu:a100:4", "dependency=afterok:123",
                                      "mail_type=END,FAIL", "mail-user=a b@example.org", "nice=10", "hold"]),
}


def spec_of(name: str) -> JobSpec:
    return JobSpec(python=PY, **SPECS[name])


@pytest.mark.parametrize("golden", sorted(SPECS))
def test_sbatch_text_matches_golden(golden):
    text = render_sbatch(spec_of(golden))
    path = GOLDEN / golden
    if os.environ.get("HPCTRAIN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{golden} changed; inspect and regenerate with HPCTRAIN_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("golden", sorted(SPECS))
def test_script_is_valid_bash_and_words_round_trip(golden, tmp_path):
    text = render_sbatch(spec_of(golden))
    p = tmp_path / "job.sh"
    p.write_text(text)
    assert subprocess.run(["bash", "-n", str(p)], capture_output=True, timeout=30).returncode == 0
    # run the script's assignments with echo in place of srun/python: bash must see the exact run dir
    spec = spec_of(golden)
    probe = "\n".join(ln for ln in text.splitlines() if ln.startswith("run_dir="))
    out = subprocess.run(["bash", "-c", f"SLURM_ARRAY_TASK_ID=5\n{probe}\nprintf %s \"$run_dir\""],
                         capture_output=True, text=True, timeout=30).stdout
    want = str(spec.run_dir / "trials" / "trial-5") if spec.array_size else str(spec.run_dir)
    assert out == want


def test_hostile_sbatch_value_quotes_like_sbatch():
    assert sbatch_value("plain/path-1.log") == "plain/path-1.log"
    assert sbatch_value('a b"c') == '"a b\\"c"'
    assert sbatch_value("it's") == '"it\'s"'


def test_job_name_is_slurm_safe():
    assert slurm_name("it's a \"run\"; rm") == "it_s_a__run___rm"
    assert slurm_name("''") == "hpctrain"


def test_percent_in_run_dir_is_escaped_for_slurm_patterns():
    text = render_sbatch(JobSpec(name="p", run_dir="/x/100%/r", python=PY))
    assert "--output=/x/100%%/r/logs/batch.log" in text
    assert "--output=/x/100%%/r/logs/rank-%t.log" in text
    assert "run_dir=/x/100%/r" in text  # bash sees the real path


@pytest.mark.parametrize("kwargs, match", [
    (dict(run_dir="relative/run"), "must be absolute"),
    (dict(run_dir="/a\nb"), "newline"),
    (dict(run_dir="/a\\b"), "backslash"),
    (dict(time="1", signal_delay_s=90), "not longer than --signal-delay"),
    (dict(time="soon"), "not a Slurm duration"),
    (dict(mem="lots"), "not a Slurm size"),
    (dict(nodes=0), "--nodes must be >= 1"),
    (dict(signal="USR1"), "NCCL"),
    (dict(partition="a\nb"), "newline"),
    (dict(mpi="pmix; rm"), "srun MPI plugin"),
    (dict(setup=["module load x\nrm -rf /"]), "newline"),
    # --sbatch: unknown, owned, typed or contradicting options are refused before anything is queued
    (dict(sbatch=["ntasks=4"]), "--ntasks has a typed flag in hpctrain; use --nodes and --ntasks-per-node"),
    (dict(sbatch=["time=10"]), "--time has a typed flag in hpctrain; use --time"),
    (dict(sbatch=["reservaton=x"]), "sbatch has no option --reservaton \\(did you mean 'reservation'\\?\\)"),
    (dict(sbatch=["N=2"]), "short option"),
    (dict(sbatch=["output=/tmp/x"]), "--output is not passed through"),
    (dict(sbatch=["signal=USR1@60"]), "use --signal and --signal-delay"),
    (dict(sbatch=["reservation"]), "--reservation needs a value"),
    (dict(sbatch=["hold=yes"]), "--hold is a switch"),
    (dict(sbatch=["reservation=a", "reservation=b"]), "given twice"),
    (dict(sbatch=["comment=a\nb"]), "newline"),
    (dict(sbatch=["gres=gpu:a100:4"], gpus_per_node=2), "both ask for GPUs"),
    (dict(sbatch=["mem-per-cpu=2G"], mem="8G"), "both set the memory"),
])
def test_bad_specs_are_clear_errors(kwargs, match):
    base = dict(name="r", run_dir="/scratch/r", python=PY)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        JobSpec(**base)


def test_dry_run_prints_exactly_the_rendered_script(tmp_path, capsys):
    import sys

    from hpctrain.cli import main

    runs = tmp_path / "my runs"
    rc = main(["submit", "--counter", "10", "--name", "dry 'run'", "--runs-dir", str(runs), "--time", "20",
               "--partition", "debug", "--ntasks-per-node", "2", "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    want = render_sbatch(JobSpec(name="dry 'run'", run_dir=(runs / "dry 'run'").resolve(), time="20",
                                 partition="debug", ntasks_per_node=2, python=sys.executable))
    assert out == want
    assert not runs.exists(), "--dry-run must not create the run dir or submit anything"


def test_submit_with_a_bad_config_fails_before_submitting(tmp_path, capsys):
    pytest.importorskip("hpctrain.train.config")
    from hpctrain.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("run: {name: x}\noptimiser: {lr: 0.1}\n")
    assert main(["submit", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "optimiser" in err and "optimizer" in err


def test_sbatch_env_drops_job_facts_but_keeps_the_client_config(monkeypatch):
    from hpctrain.slurm.submit import _sbatch_env

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.setenv("SBATCH_PARTITION", "old")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_CONF", "/site/slurm.conf")  # which cluster: the user's choice, kept
    env = _sbatch_env()
    assert env["SLURM_CONF"] == "/site/slurm.conf"
    assert not {"SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SBATCH_PARTITION", "SUBMITIT_EXECUTOR"} & set(env)
    assert env["PATH"] == os.environ["PATH"]


def test_sbatch_options_are_written_in_one_spelling():
    spec = JobSpec(name="r", run_dir="/scratch/r", python=PY, sbatch=["--mail_type=END", "hold", "gres=gpu:2"])
    assert spec.sbatch == ["mail-type=END", "hold", "gres=gpu:2"]  # gres without --gpus-per-node: fine


def test_sbatch_options_from_the_config_and_the_command_line(tmp_path, capsys):
    # issue 18: a slurm: section in the config, --sbatch adds to it and wins on the same key; both
    # are checked and shown in --dry-run
    import yaml

    from hpctrain.cli import main

    cfg = tmp_path / "c.yaml"
    data = {"run": {"name": "s", "dir": str(tmp_path / "run")}, "data": {"dir": str(tmp_path)},
            "comm": {"backend": "torch"}, "slurm": {"sbatch": {"reservation": "maint", "mail-type": "END"}}}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["submit", str(cfg), "--dry-run", "--sbatch", "reservation=other", "--sbatch",
                 "dependency=afterok:7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if ln.startswith("#SBATCH --") and ln.split("=")[0] in (
        "#SBATCH --reservation", "#SBATCH --mail-type", "#SBATCH --dependency")] == [
        "#SBATCH --reservation=other", "#SBATCH --mail-type=END", "#SBATCH --dependency=afterok:7"]
    assert main(["submit", str(cfg), "--dry-run", "--sbatch", "ntasks=4"]) == 2
    assert "--ntasks has a typed flag" in capsys.readouterr().err
    data["slurm"]["sbatch"]["partition"] = "x"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["train", str(cfg), "--check"]) == 2  # a bad slurm: section fails the config check too
    assert "slurm.sbatch.partition: --partition has a typed flag in hpctrain; use --partition" in \
        capsys.readouterr().err


def test_a_resubmitted_job_drops_the_met_dependency(tmp_path, monkeypatch):
    from hpctrain.slurm import submit as submit_mod

    seen = []

    class Exec:
        def submit(self, job):
            return type("J", (), {"job_id": "9"})()

    def fake_executor(spec):
        seen.append(spec)
        return Exec()
    sub = submit_mod.Submission(spec=JobSpec(name="r", run_dir=tmp_path, python=PY,
                                             sbatch=["dependency=afterok:1", "reservation=m"]),
                                job=None, retry=None, cluster="slurm")
    monkeypatch.setattr(submit_mod, "load_submission", lambda run_dir: sub)
    monkeypatch.setattr(submit_mod, "make_slurm_executor", fake_executor)
    assert submit_mod.resubmit(tmp_path, delay_s=0, reason="x") == "9"
    assert seen[0].sbatch == ["reservation=m"]
