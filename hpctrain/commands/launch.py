"""hpctrain launch -n N -- COMMAND..."""

HELP = "run a command on N MPI ranks (mpirun with the right flags)"
DESCRIPTION = """Run COMMAND on N ranks through mpirun.

Handles running as root, oversubscription when N exceeds the cores, no core binding
(torch threads place themselves) and forwarding HPCTRAIN_/HOROVOD_/NCCL_/OMP_/PYTHON*
variables to every rank. Example:

  hpctrain launch -n 2 -- python -m hpctrain.selftest allreduce
  hpctrain launch -n 4 --print -- hpctrain train run.yaml
"""


def add_arguments(p):
    p.add_argument("-n", "--np", type=int, required=True, help="number of ranks")
    p.add_argument("--hosts", help="mpirun --host list, e.g. 'n1:2,n2:2'")
    p.add_argument("--oversubscribe", action="store_true", default=None,
                   help="allow more ranks than cores (default: automatic on one node)")
    p.add_argument("--bind-to", default="none", help="mpirun --bind-to (default: none)")
    p.add_argument("--mpirun", default="mpirun", help="the mpirun executable")
    p.add_argument("--mpi-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for mpirun (repeatable)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the mpirun command and exit")
    p.add_argument("command", nargs="+", help="the command each rank runs (after --)")


def check_mpirun_path(value: str) -> None:
    """A --mpirun given as a path must be an executable file; say what it is instead.

    A bare name is left to the PATH search of hpctrain.launch.launch.
    """
    import os
    from pathlib import Path

    from hpctrain.errors import LaunchError

    if os.sep not in value:
        return
    p = Path(value)
    if p.is_dir():
        inner = p / "bin" / "mpirun"
        hint = f"; did you mean {str(inner)!r}?" if inner.is_file() else ""
        raise LaunchError(f"--mpirun {value!r} is a directory, not the mpirun program; pass the path of the "
                          f"executable itself{hint}")
    if not p.exists():
        raise LaunchError(f"--mpirun {value!r} does not exist; pass the path of mpirun (see 'which mpirun')")
    if not p.is_file() or not os.access(p, os.X_OK):
        what = "a file without execute permission" if p.is_file() else "not a regular file"
        raise LaunchError(f"--mpirun {value!r} is {what}; pass the mpirun program itself (see 'which mpirun')")


def run(args):
    import os
    import shlex

    from hpctrain.launch import LaunchSpec, default_pass_env, launch, launch_env, mpirun_argv

    spec = LaunchSpec(np=args.np, command=args.command, hosts=args.hosts, oversubscribe=args.oversubscribe,
                      bind_to=args.bind_to, extra_mpirun_args=args.mpi_arg, mpirun=args.mpirun)
    if args.print_only:
        as_root = os.geteuid() == 0
        spec.pass_env = default_pass_env(launch_env(os.environ, as_root=as_root))
        print(shlex.join(mpirun_argv(spec, cpu_count=os.cpu_count() or 1, as_root=as_root)))
        return 0  # --print may be for another machine: its mpirun path is not checked here
    check_mpirun_path(args.mpirun)
    return launch(spec)
