"""hpctrain: an MPI/HPC batch toolkit for training AI models on Slurm clusters.

Importing this package is cheap on purpose: nothing heavy (torch, horovod, mpi4py,
h5py, numba) is imported here, so ``import hpctrain`` works on a login node with
none of them installed.
"""

__version__ = "0.1.0"

from hpctrain.errors import HpctrainError  # noqa: E402,F401
# the session API for a user's own training loop (hpctrain/userloop.py: light to import)
from hpctrain.userloop import Preempted, session  # noqa: E402,F401
