"""The one small interface every gradient-exchange backend implements.

A backend does two jobs:

* the *control plane*: the small collectives of :class:`hpctrain.comm.collective.Collective`
  (agree on a stop flag, broadcast a checkpoint name, gather RNG states for a checkpoint);
* the *data plane*: averaging gradients over ranks, wrapped as a :class:`GradientExchange`
  whose ``step()`` leaves every rank with the same averaged gradients and then steps.

The mpi and torch backends share :class:`BucketExchange`: gradients live in flat buckets
(``p.grad`` are views into them, so nothing is copied), and a bucket's allreduce starts
from a gradient hook as soon as its last gradient is accumulated, overlapping backward.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

from hpctrain.comm.collective import Collective

BACKENDS = ("horovod", "torch", "mpi")


class Comm(Collective):
    """A gradient-exchange backend: the control plane is :class:`Collective`'s four
    operations (agree on a stop flag, broadcast a checkpoint name, gather RNG states)."""

    name: str = "?"
    local_rank: int = 0

    # -- data plane ----------------------------------------------------------------------
    @abc.abstractmethod
    def broadcast_model(self, model, optimizer=None, root: int = 0) -> None:
        """Make every rank's parameters, buffers (and optimizer state) equal to ``root``'s."""

    @abc.abstractmethod
    def gradient_exchange(self, model, optimizer, *, compression: bool = False,
                          backward_passes_per_step: int = 1, bucket_mb: float = 4.0) -> GradientExchange: ...

    def allreduce_mean_(self, tensor) -> None:
        """In-place average of a CPU float tensor over ranks (used by the benchmark)."""
        raise NotImplementedError

    def shutdown(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        pass


class GradientExchange(abc.ABC):
    """Wraps an optimizer: ``zero_grad()``, backward x k, ``step()``."""

    optimizer: Any

    @abc.abstractmethod
    def step(self) -> None: ...

    @abc.abstractmethod
    def zero_grad(self) -> None: ...

    def backward(self, loss) -> None:
        """``loss.backward()``, letting the exchange fold its averaging into the backward pass.
        Plain ``loss.backward()`` stays correct too; this is the fast path the trainer uses."""
        loss.backward()

    def close(self) -> None:  # noqa: B027 - optional for exchanges without hooks
        pass


class BucketExchange(GradientExchange):
    """Flat-bucket averaging with hooks; subclasses only start and wait for one bucket's allreduce."""

    # False: a bucket no hook started is reduced with the blocking call, one after another (MPI's
    # blocking Allreduce is faster than Iallreduce + wait). True: every such bucket is started
    # before the first wait (a backend that batches what is pending, like Horovod's cycle).
    start_all_first: bool = False

    def __init__(self, model, optimizer, *, size: int, backward_passes_per_step: int = 1,
                 bucket_mb: float = 4.0):
        import torch

        self.optimizer = optimizer
        self.size = size
        self.passes = backward_passes_per_step
        params = [p for p in model.parameters() if p.requires_grad]
        # Hooks fire roughly in reverse registration order, so buckets are cut from the end:
        # the last layers' bucket can start while earlier layers are still in backward.
        params = params[::-1]
        cap = max(1, int(bucket_mb * (1 << 20)))
        self.buckets: list[list] = []
        cur: list = []
        cur_bytes = 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if cur and (cur_bytes + nbytes > cap or p.dtype != cur[0].dtype or p.device != cur[0].device):
                self.buckets.append(cur)
                cur, cur_bytes = [], 0
            cur.append(p)
            cur_bytes += nbytes
        if cur:
            self.buckets.append(cur)
        self.flat = []
        self._where: dict[int, int] = {}
        for b, ps in enumerate(self.buckets):
            flat = torch.zeros(sum(p.numel() for p in ps), dtype=ps[0].dtype, device=ps[0].device)
            self.flat.append(flat)
            for p in ps:
                self._where[id(p)] = b
        self._counts: dict[int, int] = {}
        # True while every backward pass of this step ran through backward() with the loss
        # pre-multiplied by 1/size: the allreduce SUM is then already the average, and the
        # averaging pass over the buckets (a full extra read+write of every gradient) is skipped.
        self._scaled_passes = 0
        self._ready = [0] * len(self.buckets)
        self._handles: list[Any] = [None] * len(self.buckets)
        self._hooks = []
        self._attach_views()
        for p in params:
            self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook()))

    def _attach_views(self) -> None:
        self._views = []
        for flat, ps in zip(self.flat, self.buckets):
            off = 0
            for p in ps:
                n = p.numel()
                p.grad = flat[off:off + n].view_as(p)
                self._views.append((p, p.grad))
                off += n

    def _make_hook(self) -> Callable:
        def hook(p):
            key = id(p)
            c = self._counts.get(key, 0) + 1
            self._counts[key] = c
            if c == self.passes:
                b = self._where[key]
                self._ready[b] += 1
                if self._ready[b] == len(self.buckets[b]) and self._handles[b] is None:
                    self._handles[b] = self._start(self.flat[b])
        return hook

    def backward(self, loss) -> None:
        if self.size > 1:
            # Scaling the scalar loss is free and scales every gradient by the same factor before
            # accumulation; for a power-of-two world it is exact (the same bits as a later divide).
            loss = loss * (1.0 / self.size)
        self._scaled_passes += 1
        loss.backward()

    def _prescaled(self) -> bool:
        if not self._scaled_passes:
            return False
        seen = max(self._counts.values(), default=self._scaled_passes)
        if seen != self._scaled_passes:
            raise RuntimeError(f"{seen} backward passes accumulated but {self._scaled_passes} went through "
                               "exchange.backward(); use either exchange.backward(loss) or loss.backward() "
                               "for every pass of a step")
        return True

    def _views_intact(self) -> bool:
        # Identity, not storage pointers: this runs every step, and anything that replaced p.grad
        # (zero_grad(set_to_none=True), a hand-set tensor) leaves a different object there.
        return all(p.grad is v for p, v in self._views)

    def synchronize(self) -> None:
        if not self._views_intact():
            # Someone replaced p.grad (e.g. optimizer.zero_grad(set_to_none=True)); copy back into the buckets.
            for flat, ps in zip(self.flat, self.buckets):
                off = 0
                for p in ps:
                    n = p.numel()
                    if p.grad is not None:
                        flat[off:off + n].copy_(p.grad.reshape(-1))
                    else:
                        flat[off:off + n].zero_()
                    off += n
                self._handles = [None] * len(self.buckets)
            self._attach_views()
        prescaled = self._prescaled()
        if self.start_all_first:
            for b, flat in enumerate(self.flat):
                if self._handles[b] is None:
                    self._handles[b] = self._start(flat)
        for b, flat in enumerate(self.flat):
            if self._handles[b] is None:
                # Not started by a hook (grads set by hand, or unused parameters): nothing is
                # left to overlap with, so the blocking collective (often the faster one) runs.
                self._blocking(flat)
            else:
                self._wait(self._handles[b], flat)
            if self.size > 1 and not prescaled:
                flat.div_(self.size)
        self._handles = [None] * len(self.buckets)
        self._ready = [0] * len(self.buckets)
        self._counts.clear()
        self._scaled_passes = 0

    def step(self) -> None:
        self.synchronize()
        self.optimizer.step()

    def zero_grad(self) -> None:
        for flat in self.flat:
            flat.zero_()
        if not self._views_intact():
            self._attach_views()
        self._counts.clear()
        self._ready = [0] * len(self.buckets)
        self._scaled_passes = 0

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    @abc.abstractmethod
    def _start(self, flat) -> Any: ...

    def _blocking(self, flat) -> None:
        self._wait(self._start(flat), flat)

    @abc.abstractmethod
    def _wait(self, handle: Any, flat) -> None: ...


def state_tensors(model) -> Sequence:
    """Parameters and buffers in a fixed order (what a broadcast must cover)."""
    return [t for _, t in model.state_dict(keep_vars=True).items()]
