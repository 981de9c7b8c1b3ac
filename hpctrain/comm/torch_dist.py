"""The ``torch`` backend: torch.distributed (gloo on CPU, nccl on GPUs).

The rendezvous address never comes from a hand-set variable: under Slurm it is the first
node of the allocation and a port derived from the job id; under an MPI launcher rank 0
picks a free port and broadcasts ``host:port`` with mpi4py. Every collective has the
``comm.timeout_s`` timeout, so a dead peer raises instead of waiting for a watchdog.
"""

from __future__ import annotations

import datetime
import re
import socket
from typing import Any, Mapping

import numpy as np

from hpctrain.comm.base import BucketExchange, Comm, GradientExchange, state_tensors
from hpctrain.env import RankInfo
from hpctrain.errors import HpctrainError


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'n[03-05,9],m1' -> 'n03'. Pure."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist.strip())
    if not m or not m.group(1):
        raise HpctrainError(f"SLURM_JOB_NODELIST={nodelist!r} is not a node list Slurm writes")
    prefix, ranges, suffix = m.groups()
    if not ranges:
        return prefix + suffix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first + suffix


def slurm_port(job_id: str, base: int = 20000, span: int = 20000) -> int:
    """A port every task of a job derives alike, distinct between concurrent jobs on a node."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return base + int(digits) % span


def rendezvous(info: RankInfo, env: Mapping[str, str]) -> str:
    """``tcp://host:port`` agreed by all ranks."""
    if info.launcher == "slurm":
        host = first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or info.node)
        # SLURM_JOB_ID, not the array's job id: array tasks running side by side on one
        # node each need their own port (rank_info().job_id names the whole array).
        return f"tcp://{host}:{slurm_port(env.get('SLURM_JOB_ID') or info.job_id or '0')}"
    if info.world_size == 1:
        return f"tcp://127.0.0.1:{_free_port()}"
    from mpi4py import MPI

    url = None
    if MPI.COMM_WORLD.Get_rank() == 0:
        url = f"tcp://{_own_address()}:{_free_port()}"
    return MPI.COMM_WORLD.bcast(url, root=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _own_address() -> str:
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return "127.0.0.1"


class TorchComm(Comm):
    name = "torch"

    def __init__(self, info: RankInfo, env: Mapping[str, str], *, backend: str = "auto", timeout_s: int = 60):
        import torch
        import torch.distributed as dist

        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl" and not torch.cuda.is_available():
            raise HpctrainError("comm.torch_backend=nccl needs CUDA devices; use gloo on CPU")
        self.dist = dist
        self.rank, self.size, self.local_rank = info.rank, info.world_size, info.local_rank
        url = rendezvous(info, env)
        dist.init_process_group(backend=backend, init_method=url, rank=self.rank, world_size=self.size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        self.backend = backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        # Object collectives and small control messages go over a gloo group even with nccl.
        self.cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        import torch

        t = torch.from_numpy(np.array(a, copy=True))
        ops = {"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX, "min": self.dist.ReduceOp.MIN}
        self.dist.all_reduce(t, op=ops[op], group=self.cpu_group)
        return t.numpy()

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=root, group=self.cpu_group)
        return box[0]

    def gather(self, obj: Any, root: int = 0):
        out = [None] * self.size if self.rank == root else None
        self.dist.gather_object(obj, out, dst=root, group=self.cpu_group)
        return out

    def barrier(self) -> None:
        self.allreduce(np.zeros(1))

    def broadcast_model(self, model, optimizer=None, root: int = 0) -> None:
        if self.size == 1:
            return
        for t in state_tensors(model):
            self.dist.broadcast(t.data, src=root)
        if optimizer is not None:
            optimizer.load_state_dict(self.broadcast(optimizer.state_dict() if self.rank == root else None,
                                                            root))

    def gradient_exchange(self, model, optimizer, *, compression: bool = False,
                          backward_passes_per_step: int = 1, bucket_mb: float = 4.0) -> GradientExchange:
        return _TorchBuckets(self, model, optimizer, compression, size=self.size,
                             backward_passes_per_step=backward_passes_per_step, bucket_mb=bucket_mb)

    def allreduce_mean_(self, tensor) -> None:
        self.dist.all_reduce(tensor)
        tensor.div_(self.size)

    def shutdown(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class _TorchBuckets(BucketExchange):
    def __init__(self, comm: TorchComm, model, optimizer, compression: bool, **kw):
        self.c = comm
        self.compression = compression
        super().__init__(model, optimizer, **kw)

    def _start(self, flat):
        if self.c.size == 1:
            return None
        if self.compression:
            half = flat.half()
            return (half, self.c.dist.all_reduce(half, async_op=True))
        return (None, self.c.dist.all_reduce(flat, async_op=True))

    def _wait(self, handle, flat) -> None:
        if handle is None:
            return
        half, work = handle
        work.wait()
        if half is not None:
            flat.copy_(half)
