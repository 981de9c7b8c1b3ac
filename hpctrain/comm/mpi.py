"""The ``mpi`` backend: mpi4py Allreduce on flat gradient buckets.

The bucket tensors are CPU tensors whose ``.numpy()`` shares memory, so the reduction runs
in place on the very memory the gradients were accumulated into: no packing copy, no
background thread, no negotiation round. Its cost is raw ``MPI_Allreduce`` plus one
averaging pass (see scripts/bench_comm.py and docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpctrain.comm.base import BucketExchange, Comm, GradientExchange, state_tensors


def _mpi():
    from mpi4py import MPI

    return MPI


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


class MpiComm(Comm):
    name = "mpi"

    def __init__(self, comm=None, local_rank: int = 0):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local_rank = local_rank

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        self.comm.Allreduce(a, out, op=getattr(self.MPI, _OPS[op]))
        return out

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0):
        return self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_model(self, model, optimizer=None, root: int = 0) -> None:
        import torch

        if self.size == 1:
            return
        with torch.no_grad():
            for t in state_tensors(model):
                if t.device.type != "cpu" or not t.is_contiguous():
                    buf = t.detach().cpu().contiguous()
                    self.comm.Bcast(buf.numpy(), root=root)
                    t.copy_(buf)
                else:
                    self.comm.Bcast(t.detach().numpy(), root=root)
        if optimizer is not None:
            state = self.comm.bcast(optimizer.state_dict() if self.rank == root else None, root=root)
            optimizer.load_state_dict(state)

    def gradient_exchange(self, model, optimizer, *, compression: bool = False,
                          backward_passes_per_step: int = 1, bucket_mb: float = 4.0) -> GradientExchange:
        if compression:
            from hpctrain.errors import ConfigError

            raise ConfigError("comm.fp16_compression: MPI has no float16 reduction; use comm.backend=horovod or torch")
        return _MpiBuckets(self, model, optimizer, size=self.size,
                           backward_passes_per_step=backward_passes_per_step, bucket_mb=bucket_mb)

    def allreduce_mean_(self, tensor) -> None:
        flat = tensor.view(-1).numpy()
        step = (4 << 20) // flat.itemsize
        for i in range(0, flat.size, step):
            self.comm.Allreduce(self.MPI.IN_PLACE, flat[i:i + step], op=self.MPI.SUM)
        tensor.div_(self.size)


class _MpiBuckets(BucketExchange):
    """Each bucket is reduced in messages of at most ``bucket_mb``, so a single huge tensor
    still becomes several requests that a Waitall can progress, and a device bucket's host
    copy is bounded per message."""

    def __init__(self, comm: MpiComm, model, optimizer, **kw):
        self.c = comm
        self.chunk = max(1024, int(kw.get("bucket_mb", 4.0) * (1 << 20)))
        self._cut: dict[int, list[np.ndarray]] = {}
        super().__init__(model, optimizer, **kw)

    def _chunks(self, host, flat):
        # A CPU bucket is persistent, so its message views are cut once, not every step (a device
        # bucket's host copy is new each step and is cut afresh).
        key = id(flat)
        got = self._cut.get(key) if host is flat else None
        if got is None:
            a = host.numpy()
            step = max(1, self.chunk // a.itemsize)
            got = [a[i:i + step] for i in range(0, a.size, step)]
            if host is flat:
                self._cut[key] = got
        return got

    def _host(self, flat):
        # Device buffers go through host memory; CUDA-aware MPI is not assumed.
        return flat.detach().cpu() if flat.device.type != "cpu" else flat

    def _start(self, flat):
        if self.c.size == 1:
            return None
        host = self._host(flat)
        reqs = [self.c.comm.Iallreduce(self.c.MPI.IN_PLACE, part, op=self.c.MPI.SUM)
                for part in self._chunks(host, flat)]
        return host, reqs

    def _blocking(self, flat) -> None:
        if self.c.size == 1:
            return
        host = self._host(flat)
        for part in self._chunks(host, flat):
            self.c.comm.Allreduce(self.c.MPI.IN_PLACE, part, op=self.c.MPI.SUM)
        if host.data_ptr() != flat.data_ptr():
            flat.copy_(host)

    def _wait(self, handle, flat) -> None:
        if handle is None:
            return
        host, reqs = handle
        self.c.MPI.Request.Waitall(reqs)
        if host.data_ptr() != flat.data_ptr():
            flat.copy_(host)
