import shlex
import subprocess
import sys

import pytest

from hpctrain.errors import LaunchError
from hpctrain.launch import LaunchSpec, default_pass_env, launch_env, mpirun_argv


def test_argv_as_root_oversubscribed():
    spec = LaunchSpec(np=4, command=["python", "-c", "print('a b')"], pass_env=["PATH", "HPCTRAIN_X"])
    argv = mpirun_argv(spec, cpu_count=2, as_root=True)
    assert shlex.join(argv) == (
        "mpirun -np 4 --allow-run-as-root --oversubscribe --bind-to none -x PATH -x HPCTRAIN_X "
        "python -c 'print('\"'\"'a b'\"'\"')'")


def test_argv_no_oversubscribe_when_it_fits_or_hosts_given():
    argv = mpirun_argv(LaunchSpec(np=2, command=["x"]), cpu_count=2, as_root=False)
    assert argv == ["mpirun", "-np", "2", "--bind-to", "none", "x"]
    argv = mpirun_argv(LaunchSpec(np=8, command=["x"], hosts="n1:4,n2:4"), cpu_count=2, as_root=False)
    assert "--oversubscribe" not in argv and argv[argv.index("--host") + 1] == "n1:4,n2:4"


def test_hostile_arguments_pass_through_untouched():
    weird = ["/tmp/my dir/it's \"here\".yaml", "--set", "run.dir=/a b/$HOME;rm -rf /"]
    argv = mpirun_argv(LaunchSpec(np=1, command=["hpctrain", "train", *weird]), cpu_count=2, as_root=False)
    assert argv[-3:] == weird  # an argv list: no shell ever sees these


@pytest.mark.parametrize("np_", [0, -1])
def test_bad_np(np_):
    with pytest.raises(LaunchError, match="-n must be at least 1"):
        mpirun_argv(LaunchSpec(np=np_, command=["x"]), cpu_count=2, as_root=False)


def test_empty_command():
    with pytest.raises(LaunchError, match="no command"):
        mpirun_argv(LaunchSpec(np=1, command=[]), cpu_count=2, as_root=False)


def test_env_for_root_and_pass_through():
    env = launch_env({"PATH": "/bin", "HOROVOD_FUSION_THRESHOLD": "0", "SECRET": "x"}, as_root=True)
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    names = default_pass_env(env)
    assert "HOROVOD_FUSION_THRESHOLD" in names and "PATH" in names and "SECRET" not in names


def test_singleton_wiring_is_not_inherited():
    env = launch_env({"PMIX_NAMESPACE": "x", "PMIX_RANK": "0", "OMPI_MCA_ess": "singleton", "OMPI_MCA_btl": "self,tcp",
                      "OMPI_MCA_orte_launch": "1", "OMPI_COMM_WORLD_RANK": "0", "PATH": "/bin"}, as_root=False)
    assert env["OMPI_MCA_btl"] == "self,tcp" and env["PATH"] == "/bin"  # user tuning survives
    gone = {"PMIX_NAMESPACE", "PMIX_RANK", "OMPI_MCA_ess", "OMPI_MCA_orte_launch", "OMPI_COMM_WORLD_RANK"}
    assert not gone & set(env)


@pytest.mark.launcher
def test_launch_from_a_process_that_initialised_mpi(mpi_env):
    # The C environment of an MPI singleton carries PMIX_*/OMPI_MCA_ess...; launch must not
    # hand them to the new mpirun (seen here: it then exits 1 with no output).
    code = ("import subprocess, sys; from mpi4py import MPI; MPI.COMM_WORLD.Get_rank(); "
            "p = subprocess.run([sys.executable, '-m', 'hpctrain', 'launch', '-n', '2', '--', sys.executable, '-c', "
            "'import os; print(\"<size=\" + os.environ[\"OMPI_COMM_WORLD_SIZE\"] + \">\")'], capture_output=True, text=True, timeout=120); "
            "print(p.returncode, p.stdout.count('<size=2>'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=mpi_env)
    # Two ranks' lines may interleave on mpirun's stdout ("22\n\n"): count delimited markers.
    assert p.stdout.strip() == "0 2", p.stdout + p.stderr


def test_missing_mpirun_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "hpctrain", "launch", "-n", "1", "--mpirun", "no-such-mpirun", "--",
                        "true"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "'no-such-mpirun' not found on PATH" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.launcher
def test_launch_runs_two_ranks(mpi_env, tmp_path):
    # each rank writes its own file: mpirun forwards the ranks' stdout in chunks that can
    # interleave mid-line on a busy machine
    code = ("import os, sys; r = os.environ['OMPI_COMM_WORLD_RANK']; "
            "open(os.path.join(sys.argv[1], 'rank' + r), 'w').write(r + ' of ' + os.environ['OMPI_COMM_WORLD_SIZE'])")
    p = subprocess.run([sys.executable, "-m", "hpctrain", "launch", "-n", "2", "--", sys.executable, "-c", code,
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(f.read_text() for f in tmp_path.glob("rank*")) == ["0 of 2", "1 of 2"]


@pytest.mark.launcher
def test_launch_propagates_failure(mpi_env):
    code = "import os, sys; sys.exit(3 if os.environ['OMPI_COMM_WORLD_RANK'] == '1' else 0)"
    p = subprocess.run([sys.executable, "-m", "hpctrain", "launch", "-n", "2", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
