"""A job submitted through submitit to the real local Slurm runs, and its result is read back."""

import pytest

from hpctrain.selftest import job_facts


@pytest.mark.slurm
def test_submitit_job_runs_on_local_cluster(tmp_path):
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    ex.update_parameters(timeout_min=2, slurm_partition="debug", cpus_per_task=1, tasks_per_node=1, nodes=1,
                         name="hpctrain-foundation")
    job = ex.submit(job_facts, 2, 40)
    try:
        out = job.result()  # polls squeue/scontrol; accounting (sacct) is absent on this cluster
    finally:
        if not job.done():
            job.cancel()
    assert out["sum"] == 42
    assert out["job_id"] == str(job.job_id) and out["ntasks"] == "1" and out["launcher"] == "slurm"
