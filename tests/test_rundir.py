"""hpctrain.rundir: the one owner of a run dir's layout and of its files' readers and writers."""

import json

import pytest

from hpctrain.errors import ConfigError
from hpctrain.rundir import (ResultError, RunDir, is_completed, is_run_dir, is_sweep_dir, load_sweep, read_result,
                             save_sweep, trial_dir, trial_name)


def test_paths_are_pure_and_name_the_layout(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.result == tmp_path / "r" / "result.json" and run.metrics.name == "metrics.jsonl"
    assert run.events == tmp_path / "r" / "slurm" / "events.jsonl"
    assert run.submission == tmp_path / "r" / "slurm" / "submission.pkl"
    assert run.rank_log(3) == tmp_path / "r" / "logs" / "rank-3.log"
    assert run.final_checkpoint == tmp_path / "r" / "checkpoints" / "final.pt"
    assert run.trial(2).path == trial_dir(tmp_path / "r", 2) == tmp_path / "r" / "trials" / "trial-2"
    assert trial_name("%a") == "trial-%a"
    assert RunDir(run) == run and not (tmp_path / "r").exists()  # no property touched the disk


def test_result_round_trip_and_completion(tmp_path):
    run = RunDir(tmp_path / "r")
    assert read_result(run.path) is None and not is_completed(run.path)
    run.path.mkdir()
    run.write_result({"status": "completed", "step": 4})
    assert run.read_result() == {"status": "completed", "step": 4} and run.is_completed()
    run.write_result({"status": "running"})
    assert not run.is_completed()


@pytest.mark.parametrize("content,missing,needle", [
    (None, True, "has no result.json: the run has not completed"),
    ("{not json", False, "is unreadable"),
    ("[1, 2]", False, "holds a list, not the JSON object"),
])
def test_load_result_says_why(tmp_path, content, missing, needle):
    run = RunDir(tmp_path)
    if content is not None:
        run.result.write_text(content)
    with pytest.raises(ResultError, match=needle) as e:
        run.load_result()
    assert e.value.missing is missing
    assert run.read_result() is None


def test_placement_and_kinds_of_dir(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.placement() is None and not is_run_dir(run.path)
    run.path.mkdir()
    run.write_resolved({"cluster": {"ranks": [{"node": "n1"}]}})
    assert run.placement() == [{"node": "n1"}]
    run.events.parent.mkdir()
    run.events.write_text(json.dumps({"event": "submitted"}) + "\n")
    assert is_run_dir(run.path) and not is_sweep_dir(run.path)


def test_sweep_record_round_trip_and_damage(tmp_path):
    meta = {"name": "s", "kind": "grid", "metric": "loss", "mode": "min", "job_ids": ["1"],
            "trials": [{"index": 0, "params": {"a": 1}}]}
    save_sweep(tmp_path, meta)
    assert is_sweep_dir(tmp_path) and is_run_dir(tmp_path) and load_sweep(tmp_path) == meta
    RunDir(tmp_path).sweep.write_text('{"trials": 3}')
    with pytest.raises(ConfigError, match="is not a sweep record"):
        load_sweep(tmp_path)
