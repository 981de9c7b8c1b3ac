import pytest

from hpctrain.env import rank_info
from hpctrain.errors import HpctrainError


def test_single_process():
    info = rank_info({})
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (0, 0, 1, "single")
    assert info.is_root and not info.distributed


def test_openmpi_wins_over_slurm_batch_step():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "77",
           "SLURMD_NODENAME": "n2"}
    info = rank_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.local_size) == (3, 1, 4, 2)
    assert info.launcher == "openmpi" and info.node == "n2" and info.job_id == "77"


def test_slurm_srun():
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "4(x2)",
           "SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "2", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "3"}
    info = rank_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.local_size) == (5, 1, 8, 4)
    assert info.restart_count == 2 and info.job_id == "8" and info.array_task_id == "3"


def test_mpich():
    info = rank_info({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (1, 2, 1, "mpich")


def test_inconsistent_rank_names_the_fix():
    with pytest.raises(HpctrainError, match="HINT"):
        rank_info({"SLURM_PROCID": "4", "SLURM_NTASKS": "2"})


def test_non_integer_variable():
    with pytest.raises(HpctrainError, match="OMPI_COMM_WORLD_RANK"):
        rank_info({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})
