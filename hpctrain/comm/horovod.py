"""The ``horovod`` backend (the default): ``hvd.DistributedOptimizer`` over MPI.

MPI is initialised by mpi4py first and handed to ``hvd.init(comm)``, so the fail-fast
abort hook and the control plane use the same world as Horovod.
"""

from __future__ import annotations

import os


from hpctrain.comm.base import GradientExchange
from hpctrain.comm.mpi import MpiComm
from hpctrain.errors import HpctrainError

# Horovod's background thread fuses small tensors into one buffer every cycle. The stall
# inspector only shuts down when HOROVOD_STALL_SHUTDOWN_TIME_SECONDS is set (default: warn
# forever), and the shutdown time must exceed the check time to be honoured.


def horovod_env(timeout_s: int) -> dict[str, str]:
    """The Horovod variables fail-fast needs (pure; applied with setdefault before hvd.init)."""
    check = max(5, timeout_s // 3)
    return {
        "HOROVOD_STALL_CHECK_TIME_SECONDS": str(check),
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(max(check + 1, timeout_s // 2)),
    }


def import_horovod():
    try:
        import horovod.torch as hvd
    except Exception as e:  # noqa: BLE001 - ImportError or a broken build alike
        raise HpctrainError(f"comm.backend=horovod: cannot import horovod.torch ({str(e).splitlines()[0]}); "
                            "build it with scripts/setup.sh, or use --set comm.backend=mpi") from e
    return hvd


class HorovodComm(MpiComm):
    # The control plane (allreduce, broadcast/gather of objects, barrier) is MpiComm's:
    # mpi4py carries those tiny messages without a Horovod negotiation round.
    name = "horovod"

    def __init__(self, timeout_s: int = 60):
        for k, v in horovod_env(timeout_s).items():
            os.environ.setdefault(k, v)
        from mpi4py import MPI

        hvd = import_horovod()
        if not hvd.mpi_built():
            raise HpctrainError("comm.backend=horovod: this Horovod was built without MPI; rebuild with "
                                "HOROVOD_WITH_MPI=1 (scripts/setup.sh) or use --set comm.backend=mpi")
        hvd.init(comm=MPI.COMM_WORLD)
        self.hvd = hvd
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()

    def broadcast_model(self, model, optimizer=None, root: int = 0) -> None:
        if self.size == 1:
            return
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=root)
        if optimizer is not None:
            # A pickled state dict rather than hvd.broadcast_optimizer_state: that one builds
            # state with a dummy step first, which would move an optimizer's step counters.
            state = self.comm.bcast(optimizer.state_dict() if self.rank == root else None, root=root)
            optimizer.load_state_dict(state)

    def gradient_exchange(self, model, optimizer, *, compression: bool = False,
                          backward_passes_per_step: int = 1, bucket_mb: float = 4.0) -> GradientExchange:
        return _HorovodExchange(self.hvd, model, optimizer, compression, backward_passes_per_step)

    def allreduce_mean_(self, tensor) -> None:
        self.hvd.allreduce_(tensor, op=self.hvd.Average, name="bench")

    def shutdown(self) -> None:
        self.hvd.shutdown()


class _HorovodExchange(GradientExchange):
    def __init__(self, hvd, model, optimizer, compression: bool, passes: int):
        self.inner = optimizer
        comp = hvd.Compression.fp16 if compression else hvd.Compression.none
        self.optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=list(model.named_parameters()),
                                                  compression=comp, backward_passes_per_step=passes)

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
