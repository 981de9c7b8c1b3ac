"""The ``horovod`` backend (the default): Horovod's allreduce over MPI on flat gradient buckets.

MPI is initialised by mpi4py first and handed to ``hvd.init(comm)``, so the fail-fast
abort hook and the control plane use the same world as Horovod.

The gradient exchange is :class:`~hpctrain.comm.base.BucketExchange` with Horovod underneath
(not ``hvd.DistributedOptimizer``): gradients live in flat buckets, so each bucket is one tensor
that Horovod reduces in place (no copy into its fusion buffer); its ``hvd.allreduce_async_``
starts from the gradient hook once the bucket's last gradient is in, and the loss is pre-scaled
by 1/world so a SUM is already the average. The same exchange as the mpi and torch backends,
so clipping, fp16 scaling and accumulation behave alike on all three. Horovod's background
thread runs with the ``comm.horovod_*`` settings; what each lever did, measured with
scripts/bench_comm.py, is in docs/benchmarks.md ("Horovod tuning").
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from hpctrain.comm.base import BucketExchange, GradientExchange
from hpctrain.comm.horovod_knobs import HorovodKnobs, horovod_env
from hpctrain.comm.mpi import MpiComm
from hpctrain.errors import HpctrainError

__all__ = ["HorovodComm", "HorovodKnobs", "horovod_env", "import_horovod"]


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

    def __init__(self, timeout_s: int = 60, knobs: HorovodKnobs | None = None):
        self.knobs = knobs or HorovodKnobs()
        for k, v in horovod_env(timeout_s, self.knobs).items():
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
        return _HorovodBuckets(self, model, optimizer, compression, size=self.size,
                               backward_passes_per_step=backward_passes_per_step, bucket_mb=bucket_mb)

    def wait(self, handle) -> Any:
        """``hvd.synchronize(handle)``; with ``poll_us`` > 0 sleeping between polls first."""
        pause = self.knobs.poll_us * 1e-6
        if pause > 0:
            while not self.hvd.poll(handle):
                time.sleep(pause)
        return self.hvd.synchronize(handle)

    def allreduce_mean_(self, tensor) -> None:
        self.wait(self.hvd.allreduce_async_(tensor, op=self.hvd.Average, name="hpctrain.bench"))

    def shutdown(self) -> None:
        self.hvd.shutdown()


_SERIALS = itertools.count(1)


class _HorovodBuckets(BucketExchange):
    # Buckets not started by a hook are all submitted before the first wait, so Horovod can
    # negotiate (and fuse) them in one cycle instead of one cycle each.
    start_all_first = True

    def __init__(self, comm: HorovodComm, model, optimizer, compression: bool, **kw):
        self.c = comm
        self.compression = compression
        super().__init__(model, optimizer, **kw)
        # Horovod matches tensors across ranks by name; bucket b has the same name on every rank
        # because every rank builds the same buckets from the same model, and the exchanges of
        # one process in the same order. The serial keeps two exchanges apart (a train() run
        # again in the same process).
        serial = next(_SERIALS)
        self._names = {id(f): f"hpctrain.grad{serial}.b{b}" for b, f in enumerate(self.flat)}

    def _start(self, flat):
        if self.c.size == 1:
            return None
        hvd = self.c.hvd
        name = self._names[id(flat)]
        if self.compression:
            half = flat.half()
            return half, hvd.allreduce_async_(half, op=hvd.Sum, name=name)
        return None, hvd.allreduce_async_(flat, op=hvd.Sum, name=name)

    def _wait(self, handle, flat) -> None:
        if handle is None:
            return
        half, h = handle
        self.c.wait(h)
        if half is not None:
            flat.copy_(half)
