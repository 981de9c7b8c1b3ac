"""Your own training loop with hpctrain's guarantees: :func:`session`.

```python
import hpctrain

with hpctrain.session("runs/mine", checkpoint_every=50) as s:
    model, opt = s.setup(model, opt)                 # same weights everywhere, gradient exchange, device
    loader = s.loader("shards/x", batch_size=64)     # this rank's share, resumable position
    state = s.resume({"model": model, "opt": opt})   # newest valid checkpoint (RNG and loader included)
    for step, (x, y) in s.steps(loader, start=state.step, epochs=5):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        s.log(step, loss=loss.item())
        s.checkpoint_if_due(step)
```

What it does, and why it is built the way it is:

* **Ranks** come from :func:`hpctrain.env.rank_info` (mpirun / hpctrain launch / srun / one
  process); the collectives from :mod:`hpctrain.comm` (``backend``: mpi, horovod or torch).
* **Fail fast:** an exception on any rank ends every rank (MPI Abort), so peers never wait
  in a collective for a rank that is gone.
* **Preemption** (USR2 or SIGTERM) only raises a flag. :meth:`Session.steps` polls it at each
  step boundary, the ranks agree, a checkpoint is written collectively, and the program ends
  with :class:`Preempted` (exit status 3). Under ``hpctrain submit --script`` the job then
  requeues and the next start resumes from that checkpoint.
* **Checkpoints** are atomic files in ``RUN_DIR/checkpoints`` (:mod:`hpctrain.train.checkpoint`)
  written by rank 0 alone; they hold what :meth:`Session.resume` was given, every rank's RNG
  states and the loader position, so a resumed run is bit-for-bit the uninterrupted one on CPU.
* ``RUN_DIR/result.json`` says ``completed`` once the ``with`` block ends without error, so a
  job that Slurm requeues after it finished does not train again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from hpctrain.errors import ConfigError, HpctrainError

EXIT_PREEMPTED = 3
FORMAT = "session-1"


class Preempted(SystemExit):
    """Raised by :meth:`Session.steps` on every rank after the preemption checkpoint is written."""

    def __init__(self, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.step = step


@dataclass(frozen=True, slots=True)
class Resumed:
    step: int = 0  # the last completed step (0: a fresh start)
    epoch: int = 0
    path: str | None = None  # the checkpoint resumed from


@dataclass(slots=True)
class _Host:
    """Set by a job runner (``hpctrain submit --script``) around the user's script: the run dir it
    owns and the stop flag of its signal handler."""

    run_dir: Path
    stop_requested: Any
    session: Session | None = None


_HOST: _Host | None = None


class _Optimizer:
    """The user's optimizer behind the gradient exchange: ``zero_grad()`` and ``step()`` go through
    it (``step`` waits for the averaged gradients); anything else reaches the optimizer itself."""

    def __init__(self, exchange, clip_grad_norm: float | None, params):
        self._exchange = exchange
        self._clip = clip_grad_norm
        self._params = params

    def zero_grad(self, set_to_none: bool = False) -> None:  # noqa: ARG002 - the buckets own p.grad
        self._exchange.zero_grad()

    def step(self) -> None:
        from hpctrain.train.precision import apply_step

        # clipping sees the averaged gradients, the same on every rank
        apply_step(self._exchange, self._params, clip_grad_norm=self._clip)

    @property
    def optimizer(self):
        return self._exchange.optimizer

    def state_dict(self) -> dict:
        return self._exchange.optimizer.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self._exchange.optimizer.load_state_dict(d)

    def __getattr__(self, name: str):
        return getattr(self._exchange.optimizer, name)


class Session:
    """One rank's view of a run; made by :func:`session`."""

    def __init__(self, run_dir: str | os.PathLike, *, backend: str, seed: int, checkpoint_every: int, keep: int,
                 signal: str, timeout_s: int, deterministic: bool, device: str, stop_requested=None):
        from hpctrain.env import rank_info

        if checkpoint_every < 0:
            raise ConfigError(f"session: checkpoint_every={checkpoint_every}, expected >= 0 (0: only on preemption)")
        if keep < 1:
            raise ConfigError(f"session: keep={keep}, expected >= 1")
        from hpctrain.rundir import RunDir

        self.run_dir = Path(run_dir)
        self.layout = RunDir(self.run_dir)  # the owner of the run dir's file names
        self.ckpt_dir = self.layout.checkpoints
        self.info = rank_info()
        self.seed, self.checkpoint_every, self.keep = seed, checkpoint_every, keep
        self.preempted = False
        self.resumed_from: str | None = None
        self.step = 0
        self.epoch = 0
        self._objects: Mapping[str, Any] = {}
        self._loader = None
        self._positioned = False
        self._exchange = None
        self._flag = None
        if stop_requested is None:
            from hpctrain.slurm.requeue import PreemptionFlag

            self._flag = PreemptionFlag(signal).install()
            stop_requested = self._flag.is_set
        self._stop_requested = stop_requested

        import torch

        from hpctrain.comm import shared_comm

        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            # oneDNN CPU convolutions differ in the last bits between runs in one process (see
            # docs/training.md): native kernels keep a resumed run equal to an uninterrupted one
            torch.backends.mkldnn.enabled = False
        self.comm = shared_comm(backend, self.info, timeout_s=timeout_s)
        self.rank, self.world_size, self.local_rank = self.comm.rank, self.comm.size, self.info.local_rank
        self.is_root = self.rank == 0
        if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ConfigError("session: device='cuda' but torch sees no CUDA device; use device='auto'")
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif device in ("auto", "cpu"):
            self.device = torch.device("cpu")
        else:
            raise ConfigError(f"session: device={device!r}, expected 'auto', 'cpu' or 'cuda'")
        from hpctrain.train.rng import seed_all

        # the same seed everywhere until setup(): a model built now starts equal on every rank
        seed_all(seed)

    # -- building blocks -------------------------------------------------------------------------
    def setup(self, model, optimizer, *, clip_grad_norm: float | None = None, backward_passes_per_step: int = 1,
              compression: bool = False, bucket_mb: float = 4.0):
        """Move ``model`` to this rank's device, make every rank's weights rank 0's, and wrap
        ``optimizer`` so that ``step()`` applies gradients averaged over all ranks (clipped to
        ``clip_grad_norm`` if given). Returns ``(model, optimizer)``; use the returned optimizer."""
        from hpctrain.train.rng import seed_all

        if self._exchange is not None:
            raise ConfigError("session.setup: called twice; set up one model and optimizer per session")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ConfigError(f"session.setup: clip_grad_norm={clip_grad_norm!r}, expected a number > 0 or None")
        model.to(self.device)
        self.comm.broadcast_model(model, optimizer)
        self._exchange = self.comm.gradient_exchange(model, optimizer, compression=compression,
                                                     backward_passes_per_step=backward_passes_per_step,
                                                     bucket_mb=bucket_mb)
        # from here every rank draws its own stream (dropout, augmentation)
        seed_all(self.seed + 1000 * self.rank)
        params = [p for p in model.parameters() if p.requires_grad]
        return model, _Optimizer(self._exchange, clip_grad_norm, params)

    def loader(self, data_dir: str | os.PathLike, batch_size: int, *, split: str = "train", shuffle: bool = True,
               prefetch: int = 2, **kw):
        """A :class:`hpctrain.data.loader.ShardLoader` over this rank's share of ``split``; its
        position goes into every checkpoint (one loader per session)."""
        from hpctrain.data.loader import ShardLoader

        self._loader = ShardLoader(data_dir, rank=self.rank, world_size=self.world_size, batch_size=batch_size,
                                   shuffle=shuffle, seed=self.seed, drop_last=True, prefetch=prefetch, split=split,
                                   **kw)
        return self._loader

    # -- resume and checkpoints ------------------------------------------------------------------
    def resume(self, objects: Mapping[str, Any]) -> Resumed:
        """Load the newest valid checkpoint into ``objects`` (name -> anything with
        ``state_dict()``/``load_state_dict()``), with this rank's RNG states and the loader
        position. Collective. ``objects`` is also what later checkpoints save."""
        import warnings

        from hpctrain.train import checkpoint as C
        from hpctrain.train.rng import set_rng_state

        for name, obj in objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise ConfigError(f"session.resume: {name!r} is a {type(obj).__name__} without "
                                  "state_dict()/load_state_dict(); pass modules, optimizers, schedulers, ...")
        self._objects = dict(objects)
        name = None
        if self.is_root:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", C.CheckpointWarning)
                found = C.newest_valid(self.ckpt_dir)
            for w in caught:
                print(f"hpctrain session: warning: {w.message}", file=sys.stderr, flush=True)
            name = str(found[0]) if found else None
        name = self.comm.broadcast(name)
        if name is None:
            return Resumed()
        ck = C.load(Path(name))  # the run dir is on a shared file system: every rank reads it
        if ck.get("format") != FORMAT:
            raise ConfigError(f"session.resume: {name} was not written by hpctrain.session (format "
                              f"{ck.get('format')!r}); use another run_dir")
        saved = ck["objects"]
        if sorted(saved) != sorted(self._objects):
            raise ConfigError(f"session.resume: {name} holds {sorted(saved)}, this script passes "
                              f"{sorted(self._objects)}; pass the same names, or use another run_dir")
        for key, obj in self._objects.items():
            obj.load_state_dict(saved[key])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        self.resumed_from = name
        if ck.get("world_size") == self.world_size:
            set_rng_state(ck["rng"][self.rank])
            if ck.get("loader") is not None and self._loader is not None:
                self._loader.load_state_dict(ck["loader"])
                self._positioned = True
        elif self.is_root:
            print(f"hpctrain session: warning: {name} was written by {ck.get('world_size')} ranks, this run has "
                  f"{self.world_size}; resuming the state, not the exact RNG streams or loader position",
                  file=sys.stderr, flush=True)
        if self.is_root:
            self._truncate_log(self.step)
            print(f"hpctrain session: resumed from {name} (step {self.step}, epoch {self.epoch})", file=sys.stderr,
                  flush=True)
        return Resumed(self.step, self.epoch, name)

    def checkpoint(self, step: int) -> None:
        """Write the checkpoint of ``step`` (collective: call it on every rank)."""
        import torch

        from hpctrain.train import checkpoint as C
        from hpctrain.train.rng import rng_state

        rngs = self.comm.gather(rng_state())
        if self.is_root:
            epoch, loader = self.epoch, None
            if self._loader is not None:
                loader = self._loader.state_dict()
                if loader["batch"] >= len(self._loader):  # at the end of an epoch: resume at the next one
                    epoch, loader = epoch + 1, None
            objects = {k: _cpu(o.state_dict()) for k, o in self._objects.items()}
            # "model": the first module's weights, where tools that read hpctrain checkpoints look
            model = next((objects[k] for k, o in self._objects.items() if isinstance(o, torch.nn.Module)), {})
            payload = {"format": FORMAT, "step": int(step), "epoch": epoch, "world_size": self.world_size,
                       "objects": objects, "model": model, "loader": loader, "rng": rngs}
            C.save(self.ckpt_dir, int(step), payload, keep=self.keep)
        self.comm.barrier()  # nobody runs ahead of a checkpoint that may be needed to resume them

    def checkpoint_if_due(self, step: int) -> bool:
        """Checkpoint every ``checkpoint_every`` steps; True when one was written. Collective."""
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.checkpoint(step)
            return True
        return False

    # -- the loop --------------------------------------------------------------------------------
    def stop_agreed(self) -> bool:
        """True on every rank when any rank got the preemption signal. Collective."""
        return self.comm.any_true(bool(self._stop_requested()))

    def steps(self, loader, *, start: int = 0, epochs: int | None = None,
              max_steps: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(step, batch)`` with step = start + 1, start + 2, ..., epoch after epoch, until
        ``epochs`` epochs or ``max_steps`` steps. Batches are on the session's device. Before
        each step the ranks agree on the preemption flag; when it is up, the checkpoint of the
        last completed step is written and :class:`Preempted` is raised."""
        if epochs is None and max_steps is None:
            raise ConfigError("session.steps: give epochs=N or max_steps=N (or both)")
        step, epoch = int(start), self.epoch
        positioned, self._positioned = self._positioned, False
        while (epochs is None or epoch < epochs) and (max_steps is None or step < max_steps):
            if not positioned:
                loader.set_epoch(epoch)
            positioned = False
            self.epoch = epoch
            it = iter(loader)
            while True:
                # agree BEFORE drawing the next batch: the checkpoint's loader position must be
                # that of the last completed step
                if self.stop_agreed():
                    self.checkpoint(step)
                    self.preempted = True
                    if self.is_root:
                        print(f"hpctrain session: preempted; checkpoint of step {step} written", file=sys.stderr,
                              flush=True)
                    raise Preempted(step)
                batch = next(it, None)
                if batch is None:
                    break
                step += 1
                self.step = step
                yield step, tuple(self._owned(t) for t in batch)
                if max_steps is not None and step >= max_steps:
                    return
            epoch += 1
        self.epoch = epoch

    def _owned(self, t):
        # A batch that is a view into a loader buffer can be reduced in another order than a
        # fresh tensor (alignment); a fresh copy keeps resumed runs bit-for-bit equal.
        if self.device.type == "cpu":
            import torch

            return t.clone(memory_format=torch.contiguous_format)
        return t.to(self.device, non_blocking=True)

    def log(self, step: int, **values: Any) -> None:
        """Rank 0 appends ``{"step": step, **values}`` to RUN_DIR/metrics.jsonl (values as seen on rank 0)."""
        if self.is_root:
            from hpctrain.fileio import append_jsonl

            append_jsonl(self.layout.metrics, {"kind": "step", "step": int(step), **values}, fsync=False)

    def _truncate_log(self, step: int) -> None:
        # records after the checkpoint would appear twice once those steps run again
        from hpctrain.fileio import atomic_write_text
        from hpctrain.train.plots import read_metrics

        path = self.layout.metrics
        if path.exists():
            rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- end -------------------------------------------------------------------------------------
    def _complete(self) -> None:
        self.comm.barrier()
        if self.is_root:
            self.layout.write_result({"status": "completed", "step": self.step, "epoch": self.epoch})
        self._close()

    def _close(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
        if self._flag is not None:
            self._flag.uninstall()
            self._flag = None
        if self._loader is not None:
            self._loader.close()


def _cpu(obj: Any) -> Any:
    """State dicts with tensors moved to CPU (a checkpoint must load without the GPU it came from)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


@contextlib.contextmanager
def session(run_dir: str | os.PathLike | None = None, *, backend: str = "mpi", seed: int = 0,
            checkpoint_every: int = 100, keep: int = 3, signal: str = "USR2", timeout_s: int = 60,
            deterministic: bool = True, device: str = "auto") -> Iterator[Session]:
    """A training session on this rank: see the module doc.

    run_dir: where checkpoints, metrics.jsonl and result.json go (stable across restarts; under
        ``hpctrain submit --script`` the job's run dir, and passing another one is an error).
    backend: gradient exchange and collectives: ``mpi`` (mpi4py, default), ``horovod`` or ``torch``.
    seed: every rank seeds with ``seed`` until :meth:`Session.setup`, then ``seed + 1000 * rank``.
    checkpoint_every: :meth:`Session.checkpoint_if_due` writes every N steps (0: only on preemption).
    signal: the preemption signal (never USR1: NCCL uses it); SIGTERM also raises the flag.
    timeout_s: fail-fast bound of Horovod's stall check and torch's collective timeout.
    deterministic: deterministic torch algorithms and no oneDNN on CPU (bit-exact resume).
    """
    host = _HOST
    if host is not None:
        if run_dir is not None and Path(run_dir).resolve() != host.run_dir.resolve():
            raise ConfigError(f"session: run_dir={str(run_dir)!r}, but this job's run dir is {str(host.run_dir)!r}; "
                              "pass run_dir=None (or the same directory as 'hpctrain submit --run-dir')")
        run_dir = host.run_dir
    if run_dir is None:
        raise ConfigError("session: run_dir is missing; pass the directory for checkpoints, e.g. "
                          "hpctrain.session('runs/mine')")
    from hpctrain.comm.failfast import abort_on_error, install_excepthook
    from hpctrain.env import rank_info

    info = rank_info()
    if host is None and info.distributed:
        install_excepthook(info.rank)
    s = None
    # Under a job runner the exception goes back to it (it records the failure in the run's
    # journal; srun --kill-on-bad-exit then ends the other ranks); standalone, any rank's
    # exception aborts every rank at once. Preempted is agreed by all ranks: it passes the guard.
    guard = contextlib.nullcontext() if host is not None else abort_on_error(
        info.world_size, info.rank, message_only=(HpctrainError,))
    preempted = None
    with guard:
        try:
            s = Session(run_dir, backend=backend, seed=seed, checkpoint_every=checkpoint_every, keep=keep,
                        signal=signal, timeout_s=timeout_s, deterministic=deterministic, device=device,
                        stop_requested=None if host is None else host.stop_requested)
            if host is not None:
                host.session = s
            if s.is_root:
                s.run_dir.mkdir(parents=True, exist_ok=True)
            yield s
        except Preempted as p:
            s._close()
            preempted = p
        except BaseException:
            if s is not None:
                s._close()
            raise
        else:
            s._complete()
    if preempted is not None:
        raise preempted
